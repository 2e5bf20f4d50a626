// Preprocessing, pass 2: vertical resampling of the horizontally resampled image [H, SW, C]
// into the model's input for one image of the batch, with channel conversion (gray → RGB
// replicated, RGB → gray by ITU-R 601 luma), letterbox placement (zeros around a SW×SH
// image at (ox, oy)), scale/mean/std normalisation and the NCHW or NHWC layout.
// One invocation per input-tensor value of this image.
// p: [total = OC·OH·OW, SW, SH, C, OC, OW, OH, ox, oy, nhwc, offset, scale, mean[3], std[3]]
// (scale, mean and std as f32 bits). `tab` as in resize_h.wgsl, per output row.
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> tab: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

fn sample(y: u32, x: u32, ch: u32) -> f32 {
    let sw = p[1]; let c = p[3];
    let first = tab[3u * y];
    let taps = tab[3u * y + 1u];
    let at = tab[3u * y + 2u];
    var acc = 0.0;
    for (var k = 0u; k < taps; k++) {
        acc += bitcast<f32>(tab[at + k]) * src[((first + k) * sw + x) * c + ch];
    }
    return acc;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let sw = p[1]; let sh = p[2]; let c = p[3]; let oc = p[4]; let ow = p[5]; let oh = p[6];
    let ox = p[7]; let oy = p[8]; let nhwc = p[9] == 1u;
    var ch: u32; var x: u32; var y: u32;
    if (nhwc) {
        ch = i % oc; x = (i / oc) % ow; y = i / (oc * ow);
    } else {
        x = i % ow; y = (i / ow) % oh; ch = i / (ow * oh);
    }
    var v = 0.0;
    if (x >= ox && x < ox + sw && y >= oy && y < oy + sh) {
        let sx = x - ox; let sy = y - oy;
        if (c == oc) {
            v = sample(sy, sx, ch);
        } else if (c == 1u) {
            v = sample(sy, sx, 0u);
        } else {
            v = 0.299 * sample(sy, sx, 0u) + 0.587 * sample(sy, sx, 1u) + 0.114 * sample(sy, sx, 2u);
        }
    }
    let scale = bitcast<f32>(p[11]);
    dst[p[10] + i] = (v * scale - bitcast<f32>(p[12u + ch])) / bitcast<f32>(p[15u + ch]);
}
