// Reduction over some axes. Each invocation owns one output value and walks the reduced
// index space (global pools: 7×7 values, so a loop beats a tree here).
// p: [total_out, op, kept_shape[6], kept_strides[6], red_count, red_shape[6], red_strides[6]]
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let base = kept_base(i);
    let op = p[1];
    let count = p[14];
    var acc: f32;
    switch op {
        case 1u: { acc = bitcast<f32>(0xff7fffffu); }
        case 2u: { acc = bitcast<f32>(0x7f7fffffu); }
        case 3u: { acc = 1.0; }
        default: { acc = 0.0; }
    }
    for (var j = 0u; j < count; j++) {
        let v = x[reduced_offset(base, j)];
        switch op {
            case 1u: { acc = max(acc, v); }
            case 2u: { acc = min(acc, v); }
            case 3u: { acc = acc * v; }
            case 4u: { acc += v * v; }
            default: { acc += v; }
        }
    }
    if (op == 4u) { acc = acc / f32(count); }
    y[i] = acc;
}
