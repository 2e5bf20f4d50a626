// y = f(x), element by element. p: [total, op]
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= p[0]) { return; }
    let v = x[i];
    var r: f32;
    switch p[1] {
        // Sigmoid: the two branches keep exp() from overflowing for large |v|.
        case 0u: { if (v >= 0.0) { r = 1.0 / (1.0 + exp(-v)); } else { let e = exp(v); r = e / (1.0 + e); } }
        case 1u: { r = tanh(v); }
        case 2u: { r = exp(v); }
        case 3u: { r = abs(v); }
        case 4u: { r = -v; }
        case 5u: { r = sqrt(v); }
        case 6u: { r = inverseSqrt(v); }
        case 7u: { r = 1.0 / v; }
        case 8u: { r = log(v); }
        case 9u: { r = v * v; }
        case 10u: { r = floor(v); }
        case 11u: { r = ceil(v); }
        case 12u: { r = v * clamp(v / 6.0 + 0.5, 0.0, 1.0); } // HardSwish
        default: { r = v; }
    }
    y[i] = r;
}
