// Batched matrix product with arbitrary strides: C[z, m, n] = Σ_k A[z, m, k] · B[z, k, n] + bias.
// Tiled as in tile.wgsl (prepended at compilation).
// Split-K as in conv.wgsl: workgroup z = batch · S + split.
// p: [M, N, K, a_z, a_m, a_k, b_z, b_k, b_n, c_z, c_m, c_n, a_kfast, b_nfast, bias_mode, S,
//     k_split, part_len]
// bias_mode: 0 none, 1 one value, 2 one per row m, 3 one per column n.
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> p: array<u32>;

@compute @workgroup_size(TS, TS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let M = p[0]; let N = p[1]; let K = p[2];
    let S = p[15];
    let split = wid.z % S;
    let z = wid.z / S;
    let k_begin = split * p[16];
    let k_end = min(K, k_begin + p[16]);
    let a_base = z * p[3];
    let b_base = z * p[6];
    let c_base = z * p[9] + split * p[17];
    let m0 = wid.y * BM;
    let n0 = wid.x * BM;
    var acc = Acc();
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var t = 0u; t < LOADS; t++) {
            let e = lid + t * TS * TS;
            var mm: u32; var ka: u32;
            if (p[12] == 1u) { ka = e % BK; mm = e / BK; } else { mm = e % BM; ka = e / BM; }
            var va = 0.0;
            if (m0 + mm < M && k0 + ka < k_end) { va = a[a_base + (m0 + mm) * p[4] + (k0 + ka) * p[5]]; }
            As[ka * BM + mm] = va;
            var nn: u32; var kb: u32;
            if (p[13] == 1u) { nn = e % BM; kb = e / BM; } else { kb = e % BK; nn = e / BK; }
            var vb = 0.0;
            if (n0 + nn < N && k0 + kb < k_end) { vb = b[b_base + (k0 + kb) * p[7] + (n0 + nn) * p[8]]; }
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
        for (var j = 0u; j < R; j++) {
            let n = n0 + l.x + j * TS;
            if (n >= N) { continue; }
            var v = row[j];
            switch select(0u, p[14], split == 0u) {
                case 1u: { v += bias[0]; }
                case 2u: { v += bias[m]; }
                case 3u: { v += bias[n]; }
                default: {}
            }
            c[c_base + m * p[10] + n * p[11]] = v;
        }
    }
}
