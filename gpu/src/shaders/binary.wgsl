// c = a ∘ b with broadcasting. Shapes are padded to rank 6; a stride of 0 broadcasts.
// p: [total, op, out_shape[6], a_strides[6], b_strides[6]]
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 0u; d < 6u; d++) {
        let axis = 5u - d;
        let dim = p[2u + axis];
        let x = rem % dim;
        rem = rem / dim;
        ia += x * p[8u + axis];
        ib += x * p[14u + axis];
    }
    let x = a[ia];
    let y = b[ib];
    var r: f32;
    switch p[1] {
        case 0u: { r = x + y; }
        case 1u: { r = x - y; }
        case 2u: { r = y - x; }
        case 3u: { r = x * y; }
        case 4u: { r = x / y; }
        case 5u: { r = max(x, y); }
        case 6u: { r = min(x, y); }
        case 7u: { r = pow(x, y); }
        default: { r = x; }
    }
    c[i] = r;
}
