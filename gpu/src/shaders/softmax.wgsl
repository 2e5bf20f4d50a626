// Softmax / LogSoftmax over some axes. Each invocation owns one position of the kept axes and
// walks the reduced axes three times (max, Σ exp(x − max), write), so nothing overflows.
// p: [total_kept, log, kept_shape[6], kept_strides[6], red_count, red_shape[6], red_strides[6]]
// Input and output have the same contiguous layout, so one offset addresses both.
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let base = kept_base(i);
    let count = p[14];
    var hi = bitcast<f32>(0xff7fffffu);
    for (var j = 0u; j < count; j++) { hi = max(hi, x[reduced_offset(base, j)]); }
    var sum = 0.0;
    for (var j = 0u; j < count; j++) { sum += exp(x[reduced_offset(base, j)] - hi); }
    if (p[1] == 1u) {
        let log_sum = log(sum);
        for (var j = 0u; j < count; j++) {
            let o = reduced_offset(base, j);
            y[o] = x[o] - hi - log_sum;
        }
    } else {
        let inv = 1.0 / sum;
        for (var j = 0u; j < count; j++) {
            let o = reduced_offset(base, j);
            y[o] = exp(x[o] - hi) * inv;
        }
    }
}
