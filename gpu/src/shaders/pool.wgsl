// 2-D max / sum / average pooling, NCHW. One invocation per output value.
// p: [total, mode, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pad_top, pad_left]
// mode: 0 max, 1 sum, 2 average over the whole window, 3 average over the valid cells.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let mode = p[1];
    let h = i32(p[2]); let w = i32(p[3]);
    let oh = p[4]; let ow = p[5];
    let ox = i % ow;
    let oy = (i / ow) % oh;
    let plane = i / (ow * oh);
    let base = plane * p[2] * p[3];
    var acc: f32 = 0.0;
    if (mode == 0u) { acc = bitcast<f32>(0xff7fffffu); }
    var valid = 0u;
    for (var ky = 0u; ky < p[6]; ky++) {
        let iy = i32(oy * p[8] + ky * p[10]) - i32(p[12]);
        if (iy < 0 || iy >= h) { continue; }
        for (var kx = 0u; kx < p[7]; kx++) {
            let ix = i32(ox * p[9] + kx * p[11]) - i32(p[13]);
            if (ix < 0 || ix >= w) { continue; }
            let v = x[base + u32(iy * w + ix)];
            if (mode == 0u) { acc = max(acc, v); } else { acc += v; }
            valid += 1u;
        }
    }
    if (mode == 2u) { acc = acc / f32(p[6] * p[7]); }
    if (mode == 3u) { acc = acc / f32(max(valid, 1u)); }
    y[i] = acc;
}
