// 2-D transposed convolution (ONNX ConvTranspose), NCHW, weights [O, C/G, KH, KW] (as tract
// reorders ONNX's [C, O/G, KH, KW] when it loads the model), written as
// a gather: one invocation per output value sums the input pixels whose kernel taps land on
// it (y = iy·sy + ky·dy − pad_top), so no two invocations write the same value.
// p: [total, O, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pad_top, pad_left, bias_len, C, O/G, C/G]
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
    let O = p[1]; let H = i32(p[2]); let W = i32(p[3]); let OH = p[4]; let OW = p[5];
    let KH = p[6]; let KW = p[7];
    let sy = i32(p[8]); let sx = i32(p[9]); let dy = i32(p[10]); let dx = i32(p[11]);
    let C = p[15]; let og = p[16]; let cg = p[17];
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let o = (i / (OW * OH)) % O;
    let img = i / (OW * OH * O);
    let g = o / og;
    var acc = 0.0;
    if (p[14] == 1u) { acc = bias[0]; } else if (p[14] > 1u) { acc = bias[o]; }
    for (var c = 0u; c < cg; c++) {
        let ci = g * cg + c;
        let x_base = (img * C + ci) * u32(H * W);
        let w_base = (o * cg + c) * KH * KW;
        for (var ky = 0u; ky < KH; ky++) {
            let ty = i32(oy) + i32(p[12]) - i32(ky) * dy;
            if (ty < 0 || ty % sy != 0) { continue; }
            let iy = ty / sy;
            if (iy >= H) { continue; }
            for (var kx = 0u; kx < KW; kx++) {
                let tx = i32(ox) + i32(p[13]) - i32(kx) * dx;
                if (tx < 0 || tx % sx != 0) { continue; }
                let ix = tx / sx;
                if (ix >= W) { continue; }
                acc += x[x_base + u32(iy * W + ix)] * wt[w_base + ky * KW + kx];
            }
        }
    }
    y[i] = acc;
}
