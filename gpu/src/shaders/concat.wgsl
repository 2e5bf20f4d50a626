// Concatenation of up to four contiguous inputs along one axis in one dispatch (DenseNet's
// concatenations take up to 33 inputs: one dispatch each made them most of its dispatches).
// The output is viewed as [outer, D, inner]; input j as [outer, d_j, inner], landing at
// offset o_j of D. Invocation i walks the inputs' values in order.
// p: [total (Σ outer·d_j·inner), D, inner, n, outer, d_0..d_3, o_0..o_3]
@group(0) @binding(0) var<storage, read> s0: array<f32>;
@group(0) @binding(1) var<storage, read> s1: array<f32>;
@group(0) @binding(2) var<storage, read> s2: array<f32>;
@group(0) @binding(3) var<storage, read> s3: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let D = p[1]; let inner = p[2]; let n = p[3]; let outer = p[4];
    var rem = i;
    var j = 0u;
    for (; j + 1u < n; j++) {
        let size = outer * p[5u + j] * inner;
        if (rem < size) { break; }
        rem -= size;
    }
    let d = p[5u + j];
    let x = (rem / inner) % d;
    let dst = ((rem / (inner * d)) * D + p[9u + j] + x) * inner + rem % inner;
    var v: f32;
    switch j {
        case 0u: { v = s0[rem]; }
        case 1u: { v = s1[rem]; }
        case 2u: { v = s2[rem]; }
        default: { v = s3[rem]; }
    }
    y[dst] = v;
}
