// Strided copy (concat slices, transposes). p: [total, in_off, out_off, shape[6],
// in_strides[6], out_strides[6]]
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    var rem = i;
    var si = p[1];
    var di = p[2];
    for (var d = 0u; d < 6u; d++) {
        let axis = 5u - d;
        let dim = p[3u + axis];
        let x = rem % dim;
        rem = rem / dim;
        si += x * p[9u + axis];
        di += x * p[15u + axis];
    }
    dst[di] = src[si];
}
