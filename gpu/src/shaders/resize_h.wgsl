// Preprocessing, pass 1: the VOI stage of a grayscale DICOM frame (window, function,
// MONOCHROME1 inversion — as core's `Voi::apply`) on each source sample, then horizontal
// resampling of the image, [H, W, C] → [H, OW, C], with the separable triangle filter core's
// CPU path uses (its weights, computed once on the CPU per image size, are in `tab`: per
// output column [first input column, taps, weights offset], then the weights as f32 bits).
// The window clamps, so it must be applied before the filter, sample by sample.
// p: [total = H·OW·C, W, OW, C, voi function (0 none, 1 linear, 2 linear exact, 3 sigmoid),
//     window centre (f32 bits), window width (f32 bits), inverted]
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> tab: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

// PS3.3 C.11.2.1.2.1 (linear) and C.11.2.1.3 (linear exact, sigmoid).
fn voi(x: f32) -> f32 {
    let f = p[4];
    if (f == 0u) { return x; }
    let center = bitcast<f32>(p[5]);
    let width = bitcast<f32>(p[6]);
    var y: f32;
    if (f == 1u) {
        let w = max(width, 1.0);
        let lo = center - 0.5 - (w - 1.0) / 2.0;
        let hi = center - 0.5 + (w - 1.0) / 2.0;
        if (x <= lo) {
            y = 0.0;
        } else if (x > hi) {
            y = 1.0;
        } else {
            y = clamp((x - (center - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0);
        }
    } else if (f == 2u) {
        y = clamp((x - center) / max(width, 1e-30) + 0.5, 0.0, 1.0);
    } else {
        y = 1.0 / (1.0 + exp(-4.0 * (x - center) / max(width, 1e-9)));
    }
    if (p[7] != 0u) { y = 1.0 - y; }
    return y;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let w = p[1]; let ow = p[2]; let c = p[3];
    let ch = i % c;
    let x = (i / c) % ow;
    let y = i / (c * ow);
    let first = tab[3u * x];
    let taps = tab[3u * x + 1u];
    let at = tab[3u * x + 2u];
    let row = y * w * c;
    var acc = 0.0;
    for (var k = 0u; k < taps; k++) {
        acc += bitcast<f32>(tab[at + k]) * voi(src[row + (first + k) * c + ch]);
    }
    dst[i] = acc;
}
