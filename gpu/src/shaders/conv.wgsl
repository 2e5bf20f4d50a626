// 2-D convolution as an implicit GEMM (NCHW input, OIHW weights, groups, stride, dilation,
// padding): per image and group, OUT[m, n] = Σ_k W[m, k] · X̂[k, n] + bias[m], with m an output
// channel, n an output pixel and k = (input channel, ky, kx). X̂ (im2col) is never stored: the
// B tile is gathered from the input as it is staged in workgroup memory. Tiled as in tile.wgsl.
// Split-K (S > 1, for grids too small to fill the GPU): workgroup z also picks a K range of
// k_split values, and split s writes its partial sums at s·part_len (split_sum.wgsl adds them).
// p: [M=O/G, N=OH·OW, K=C/G·KH·KW, G, C, H, W, OH, OW, KH, KW, sy, sx, dy, dx, pad_top,
//     pad_left, bias_len, O, S, k_split, part_len]
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> p: array<u32>;

@compute @workgroup_size(TS, TS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let M = p[0]; let N = p[1]; let K = p[2];
    let G = p[3]; let C = p[4]; let H = p[5]; let W = p[6];
    let OW = p[8]; let KH = p[9]; let KW = p[10];
    let khw = KH * KW;
    let S = p[19];
    let split = wid.z % S;
    let img = wid.z / S / G;
    let g = (wid.z / S) % G;
    let k_begin = split * p[20];
    let k_end = min(K, k_begin + p[20]);
    let x_base = (img * C + g * (C / G)) * H * W;
    let w_base = g * M * K;
    let m0 = wid.y * BM;
    let n0 = wid.x * BM;
    var acc = Acc();
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var t = 0u; t < LOADS; t++) {
            let e = lid + t * TS * TS;
            let ka = e % BK;
            let mm = e / BK;
            var va = 0.0;
            if (m0 + mm < M && k0 + ka < k_end) { va = wt[w_base + (m0 + mm) * K + k0 + ka]; }
            As[ka * BM + mm] = va;
            let nn = e % BM;
            let kb = e / BM;
            var vb = 0.0;
            let n = n0 + nn;
            let k = k0 + kb;
            if (n < N && k < k_end) {
                let ci = k / khw;
                let r = k % khw;
                let ky = r / KW;
                let kx = r % KW;
                let oy = n / OW;
                let ox = n % OW;
                let iy = i32(oy * p[11] + ky * p[13]) - i32(p[15]);
                let ix = i32(ox * p[12] + kx * p[14]) - i32(p[16]);
                if (iy >= 0 && iy < i32(H) && ix >= 0 && ix < i32(W)) {
                    vb = x[x_base + ci * H * W + u32(iy) * W + u32(ix)];
                }
            }
            Bs[kb * BM + nn] = vb;
        }
        workgroupBarrier();
        accumulate(&acc, l);
        workgroupBarrier();
    }
    for (var i = 0u; i < R; i++) {
        let m = m0 + l.y + i * TS;
        if (m >= M) { continue; }
        let row = acc_row(acc, i);
        let o = g * M + m;
        var b = 0.0;
        if (split == 0u) {
            if (p[17] == 1u) { b = bias[0]; } else if (p[17] > 1u) { b = bias[o]; }
        }
        for (var j = 0u; j < R; j++) {
            let n = n0 + l.x + j * TS;
            if (n >= N) { continue; }
            y[split * p[21] + (img * p[18] + o) * N + n] = row[j] + b;
        }
    }
}
