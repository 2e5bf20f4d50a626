// Shared by gemm and conv: register-blocked tiling. A TS×TS workgroup computes a BM×BM tile
// of outputs (R×R per invocation), staging BK-deep slices of the two operands in workgroup
// memory (As[k·BM + row], Bs[k·BM + column]). TS comes from the adapter's limits
// (substituted before compilation).
const TS: u32 = {{TS}}u;
const R: u32 = 4u;
const BM: u32 = TS * R;
const BK: u32 = 16u;
const LOADS: u32 = (BM * BK) / (TS * TS);

var<workgroup> As: array<f32, BK * BM>;
var<workgroup> Bs: array<f32, BK * BM>;

// acc += the staged slices' product for this invocation's R×R outputs (rows l.y + i·TS,
// columns l.x + j·TS).
fn accumulate(acc: ptr<function, array<array<f32, R>, R>>, l: vec3<u32>) {
    for (var kk = 0u; kk < BK; kk++) {
        var ar: array<f32, R>;
        var br: array<f32, R>;
        for (var i = 0u; i < R; i++) { ar[i] = As[kk * BM + l.y + i * TS]; }
        for (var j = 0u; j < R; j++) { br[j] = Bs[kk * BM + l.x + j * TS]; }
        for (var i = 0u; i < R; i++) {
            for (var j = 0u; j < R; j++) { (*acc)[i][j] = fma(ar[i], br[j], (*acc)[i][j]); }
        }
    }
}
