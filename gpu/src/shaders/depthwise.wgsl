// Depthwise 2-D convolution (one input channel per group), OIHW weights, bias, any data
// layout (NCHW, NHWC, CHW, HWC: tract declutters depthwise convolutions to NHWC on some
// targets) through explicit strides.
// With K = KH·KW ≈ 9 there is nothing to tile: one invocation per output, weights in cache.
// p: [total, C_out, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pad_top, pad_left, bias_len,
//     C_in, mult, in strides (n, c, y, x) ×4, out strides (n, c, y, x) ×4]
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let h = i32(p[2]); let w = i32(p[3]);
    let oh = p[4]; let ow = p[5];
    let kh = p[6]; let kw = p[7];
    let ox = i % ow;
    let oy = (i / ow) % oh;
    let co = (i / (ow * oh)) % p[1];
    let n = i / (ow * oh * p[1]);
    let ci = co / p[16];
    let base = n * p[17] + ci * p[18];
    var acc: f32 = 0.0;
    if (p[14] == 1u) { acc = bias[0]; } else if (p[14] > 1u) { acc = bias[co]; }
    for (var ky = 0u; ky < kh; ky++) {
        let iy = i32(oy * p[8] + ky * p[10]) - i32(p[12]);
        if (iy < 0 || iy >= h) { continue; }
        for (var kx = 0u; kx < kw; kx++) {
            let ix = i32(ox * p[9] + kx * p[11]) - i32(p[13]);
            if (ix < 0 || ix >= w) { continue; }
            acc += x[base + u32(iy) * p[19] + u32(ix) * p[20]] * wt[(co * kh + ky) * kw + kx];
        }
    }
    y[n * p[21] + co * p[22] + oy * p[23] + ox * p[24]] = acc;
}
