// Shared by gemm and conv: register-blocked tiling. A TS×TS workgroup computes a BM×BM tile
// of outputs (R×R per invocation), staging BK-deep slices of the two operands in workgroup
// memory (As[k·BM + row], Bs[k·BM + column]). TS comes from the adapter's limits
// (substituted before compilation).
const TS: u32 = {{TS}}u;
const R: u32 = 4u; // fixed: the accumulators below are four vec4 rows
const BM: u32 = TS * R;
const BK: u32 = 16u;
const LOADS: u32 = (BM * BK) / (TS * TS);

var<workgroup> As: array<f32, BK * BM>;
var<workgroup> Bs: array<f32, BK * BM>;

// An invocation's R×R accumulators, one vec4 per row. Named fields and constant component
// indices keep them in registers: a dynamically indexed array<array<f32, R>, R> went to
// local memory on NVIDIA's Vulkan driver, and each BK step then took ~60 µs on an H100.
struct Acc { r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32> }

// acc += the staged slices' product for this invocation's outputs (rows l.y + i·TS, columns
// l.x + j·TS).
fn accumulate(acc: ptr<function, Acc>, l: vec3<u32>) {
    var c = *acc;
    for (var kk = 0u; kk < BK; kk++) {
        let ai = kk * BM + l.y;
        let bi = kk * BM + l.x;
        let a = vec4<f32>(As[ai], As[ai + TS], As[ai + 2u * TS], As[ai + 3u * TS]);
        let b = vec4<f32>(Bs[bi], Bs[bi + TS], Bs[bi + 2u * TS], Bs[bi + 3u * TS]);
        c.r0 = fma(vec4<f32>(a.x), b, c.r0);
        c.r1 = fma(vec4<f32>(a.y), b, c.r1);
        c.r2 = fma(vec4<f32>(a.z), b, c.r2);
        c.r3 = fma(vec4<f32>(a.w), b, c.r3);
    }
    *acc = c;
}

// Row i (0..R) of the accumulators.
fn acc_row(acc: Acc, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return acc.r0; }
        case 1u: { return acc.r1; }
        case 2u: { return acc.r2; }
        default: { return acc.r3; }
    }
}
