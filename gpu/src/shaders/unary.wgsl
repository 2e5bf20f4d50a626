// y = f(x), element by element. p: [total, op, alpha (f32 bits, LeakyRelu)]
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
        case 0u: { r = sigmoid(v); }
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
        case 13u: { r = select(v * bitcast<f32>(p[2]), v, v >= 0.0); } // LeakyRelu
        case 14u: { r = v * sigmoid(v); } // Silu
        case 15u: { r = erf(v); }
        case 16u: { r = 0.5 * v * (1.0 + erf(v * 0.70710678)); } // GeluExact
        case 17u: { r = sin(v); }
        case 18u: { r = cos(v); }
        case 19u: { r = sign(v) * floor(abs(v) + 0.5); } // Round: halves away from zero
        case 20u: { r = round(v); } // WGSL's round: halves to even
        default: { r = v; }
    }
    y[i] = r;
}

fn sigmoid(v: f32) -> f32 {
    // The two branches keep exp() from overflowing for large |v|.
    if (v >= 0.0) { return 1.0 / (1.0 + exp(-v)); }
    let e = exp(v);
    return e / (1.0 + e);
}

// Abramowitz & Stegun 7.1.26 with odd symmetry: |error| ≤ 1.5e-7.
fn erf(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}
