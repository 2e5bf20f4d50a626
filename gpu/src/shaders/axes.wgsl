// Shared by the kernels that walk some axes per position of the others (reduce, softmax),
// whose parameters start [total_kept, code, kept_shape[6], kept_strides[6], red_count,
// red_shape[6], red_strides[6]] in `p`.

// The input offset of kept position `i`.
fn kept_base(i: u32) -> u32 {
    var rem = i;
    var base = 0u;
    for (var d = 0u; d < 6u; d++) {
        let axis = 5u - d;
        let dim = p[2u + axis];
        base += (rem % dim) * p[8u + axis];
        rem = rem / dim;
    }
    return base;
}

// The input offset of the `j`-th reduced element from `base`.
fn reduced_offset(base: u32, j: u32) -> u32 {
    var r = j;
    var off = base;
    for (var d = 0u; d < 6u; d++) {
        let axis = 5u - d;
        let dim = p[15u + axis];
        off += (r % dim) * p[21u + axis];
        r = r / dim;
    }
    return off;
}
