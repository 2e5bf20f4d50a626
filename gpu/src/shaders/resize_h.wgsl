// Preprocessing, pass 1: horizontal resampling of one image, [H, W, C] → [H, OW, C], with the
// separable triangle filter core's CPU path uses (its weights, computed once on the CPU per
// image size, are in `tab`: per output column [first input column, taps, weights offset],
// then the weights as f32 bits).
// p: [total = H·OW·C, W, OW, C]
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> tab: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

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
        acc += bitcast<f32>(tab[at + k]) * src[row + (first + k) * c + ch];
    }
    dst[i] = acc;
}
