//! Matrix products through tract's optimised plans, against a plain f64 product: the wasip2
//! build runs them on medinfer's own kernel (`src/wasm_mmm.rs`), which this test also checks
//! tract picked; native builds run tract's kernels on the same cases, so the oracle itself is
//! checked on every target. Shapes are whole 16×8 tiles and not multiples of them, so border
//! tiles (loaded and stored through tract's scratch) and every one of the four 4×8 register
//! tiles a tile runs as are covered, and the bias, the residual addition and the ReLU tract
//! fuses into the kernel run on both sides of the product (per row and per column).
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math;

/// A deterministic pseudo-random f32 in [-1, 1) (xorshift).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Which operand is the model's input (the other a constant, as weights are).
#[derive(Clone, Copy, Debug)]
enum Input {
    Left,
    Right,
}

/// `relu(A·B + bias [+ R])` for A `m×k`, B `k×n`, the bias per row (`m`) or per column (`n`),
/// R an `m×n` tensor (the model's second input) when `residual`.
struct Case {
    m: usize,
    k: usize,
    n: usize,
    input: Input,
    bias_per_row: bool,
    residual: bool,
}

impl Case {
    fn run(&self) -> TractResult<()> {
        let Case { m, k, n, input, bias_per_row, residual } = *self;
        let a = values(1 + (m * 31 + k) as u64, m * k);
        let b = values(2 + (k * 17 + n) as u64, k * n);
        let bias = values(3 + (m + n) as u64, if bias_per_row { m } else { n });
        let r = values(4 + (m * 7 + n) as u64, m * n);

        let mut model = TypedModel::default();
        let (a_wire, b_wire, fed) = match input {
            Input::Left => {
                let s = model.add_source("a", f32::fact([m, k]))?;
                let c = model.add_const("b", tensor1(&b).into_shape(&[k, n])?)?;
                (s, c, tensor1(&a).into_shape(&[m, k])?)
            }
            Input::Right => {
                let c = model.add_const("a", tensor1(&a).into_shape(&[m, k])?)?;
                let s = model.add_source("b", f32::fact([k, n]))?;
                (c, s, tensor1(&b).into_shape(&[k, n])?)
            }
        };
        let product = model.wire_node(
            "product",
            EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
            &[a_wire, b_wire],
        )?[0];
        let bias_shape: &[usize] = if bias_per_row { &[m, 1] } else { &[1, n] };
        let bias_wire = model.add_const("bias", tensor1(&bias).into_shape(bias_shape)?)?;
        let mut biased = model.wire_node("bias_add", math::add(), &[product, bias_wire])?[0];
        let mut inputs = tvec!(fed.into_tvalue());
        if residual {
            let r_wire = model.add_source("r", f32::fact([m, n]))?;
            biased = model.wire_node("residual", math::add(), &[biased, r_wire])?[0];
            inputs.push(tensor1(&r).into_shape(&[m, n])?.into_tvalue());
        }
        let zero = model.add_const("zero", tensor0(0f32).broadcast_into_rank(2)?)?;
        let relu = model.wire_node("relu", math::max(), &[biased, zero])?;
        model.select_output_outlets(&relu)?;

        let optimised = model.into_optimized()?;
        #[cfg(all(target_arch = "wasm32", target_os = "wasi", target_feature = "simd128"))]
        if n > 1 {
            assert_eq!(medinfer_core::wasm_mmm::registered(), (true, true), "routine, tier");
            let plan: Vec<_> = optimised.nodes().iter().map(|n| &n.op).collect();
            let plan = format!("{plan:?}");
            assert!(
                plan.contains(medinfer_core::wasm_mmm::NAME),
                "{m}×{k}×{n}: tract did not pick medinfer's kernel: {plan}"
            );
        }
        let got = optimised.into_runnable()?.run(inputs)?.remove(0);
        let got = got.to_plain_array_view::<f32>()?;

        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|l| a[i * k + l] as f64 * b[l * n + j] as f64).sum();
                let added = if residual { r[i * n + j] as f64 } else { 0.0 };
                let want = (dot + bias[if bias_per_row { i } else { j }] as f64 + added).max(0.0);
                let diff = (got[[i, j]] as f64 - want).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= 1e-4 * (1.0 + want.abs()),
                    "{m}×{k}×{n} ({input:?} fed, bias per {}, residual {residual}): [{i},{j}] = {} \
                     want {want}",
                    if bias_per_row { "row" } else { "column" },
                    got[[i, j]]
                );
            }
        }
        eprintln!("{m}×{k}×{n} {input:?} residual {residual}: max |Δ| {worst:.2e}");
        Ok(())
    }
}

#[test]
fn products_match_a_plain_product_on_tile_and_border_shapes() -> TractResult<()> {
    let shapes = [
        (4, 8, 8),
        (16, 8, 16),
        (13, 37, 29),
        (64, 147, 33),
        (37, 20, 45),
        (5, 1, 9),
        (3, 300, 2),
        (8, 64, 1),
    ];
    for (m, k, n) in shapes {
        for input in [Input::Left, Input::Right] {
            for bias_per_row in [true, false] {
                for residual in [false, true] {
                    Case { m, k, n, input, bias_per_row, residual }.run()?;
                }
            }
        }
    }
    Ok(())
}
