// The second half of a split-K product: y[i] = Σ_s part[s·len + i] over the S partial sums
// that a conv or gemm dispatch wrote to the scratch buffer (bias is in split 0's).
// p: [len, S]
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    let len = p[0];
    if (i >= len) { return; }
    var sum = 0.0;
    for (var s = 0u; s < p[1]; s++) { sum += part[s * len + i]; }
    y[i] = sum;
}
