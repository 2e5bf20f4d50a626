//! Every GPU kernel against tract's own evaluation of the same op, on random data and shapes
//! chosen to hit odd sizes, strides, padding, dilation, groups and broadcasting. Tolerance:
//! max |Δ| ≤ 1e-4 × max |reference| (f32 sums in a different order).

#![allow(clippy::type_complexity)]

mod common;

use common::{Rng, all_on_gpu, check};
use medinfer_gpu::block_on;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::{
    self, DataFormat, NearestUpsample, Reduce, Reducer, Softmax, SoftmaxKind,
};

const REL: f32 = 1e-4;

fn source(model: &mut TypedModel, shape: &[usize]) -> OutletId {
    model.add_source("x", f32::fact(shape)).expect("source")
}

fn finish(mut model: TypedModel, out: OutletId) -> TypedModel {
    model.select_output_outlets(&[out]).expect("outputs");
    model
}

fn spec(
    format: DataFormat,
    k: [usize; 2],
    pad: [usize; 4],
    stride: [usize; 2],
    dil: [usize; 2],
    ci: usize,
    co: usize,
) -> PoolSpec {
    PoolSpec {
        data_format: format,
        kernel_shape: tvec![k[0], k[1]],
        padding: PaddingSpec::Explicit(tvec![pad[0], pad[1]], tvec![pad[2], pad[3]]),
        dilations: Some(tvec![dil[0], dil[1]]),
        strides: Some(tvec![stride[0], stride[1]]),
        input_channels: ci,
        output_channels: co,
    }
}

#[test]
fn convolutions_match_tract() {
    let mut rng = Rng::new(1);
    // (n, c, h, w, o, k, stride, pad, dilation, group, bias: 0 none-as-scalar-zero, 1 scalar, 2 per channel)
    let cases: &[(
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 4],
        [usize; 2],
        usize,
        u8,
    )] = &[
        (1, 3, 17, 19, 8, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, 2),
        (2, 5, 13, 11, 7, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1, 2),
        (1, 3, 31, 29, 16, [7, 7], [2, 2], [3, 3, 3, 3], [1, 1], 1, 2),
        (1, 64, 9, 9, 67, [1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1, 1),
        (2, 6, 10, 12, 9, [3, 2], [1, 2], [0, 1, 2, 0], [2, 1], 3, 2),
        (1, 12, 15, 15, 12, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 12, 2),
        (3, 8, 14, 13, 8, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 8, 2),
        (1, 4, 11, 9, 8, [5, 5], [1, 1], [2, 2, 2, 2], [1, 1], 4, 0),
        (1, 33, 7, 5, 70, [3, 3], [1, 1], [1, 1, 1, 1], [2, 2], 1, 2),
    ];
    for (i, &(n, c, h, w, o, k, stride, pad, dil, group, bias)) in cases.iter().enumerate() {
        for format in [DataFormat::NCHW, DataFormat::CHW, DataFormat::NHWC, DataFormat::HWC] {
            let channels_last = matches!(format, DataFormat::NHWC | DataFormat::HWC);
            let batchless = matches!(format, DataFormat::CHW | DataFormat::HWC);
            // Channels-last runs on the GPU for depthwise convolutions only (what tract
            // declutters to NHWC); other channels-last convolutions are checked to fall back.
            if batchless && n != 1 {
                continue;
            }
            let what = format!("conv case {i} {format:?}");
            let mut m = TypedModel::default();
            let shape: Vec<usize> = match format {
                DataFormat::NCHW => vec![n, c, h, w],
                DataFormat::NHWC => vec![n, h, w, c],
                DataFormat::CHW => vec![c, h, w],
                DataFormat::HWC => vec![h, w, c],
            };
            let x = source(&mut m, &shape);
            let kernel = m.add_const("w", rng.tensor(&[o, c / group, k[0], k[1]])).expect("w");
            let b = match bias {
                2 => rng.tensor(&[o]),
                1 => tensor0(rng.f()),
                _ => tensor0(0f32),
            };
            let b = m.add_const("b", b).expect("b");
            let op = Conv {
                pool_spec: spec(format, k, pad, stride, dil, c, o),
                kernel_fmt: KernelFormat::OIHW,
                group,
                q_params: None,
            };
            let y = m.wire_node("conv", op, &[x, kernel, b]).expect("conv")[0];
            let plan = check(&what, finish(m, y), rng.tensor(&shape), REL);
            if channels_last && c / group != 1 {
                let conv = plan.placements().iter().find(|p| p.node == "conv").expect("conv");
                assert!(matches!(conv.placement, medinfer_gpu::Placement::Cpu { .. }), "{what}");
            } else {
                all_on_gpu(&what, &plan);
            }
        }
    }
}

#[test]
fn matrix_products_match_tract() {
    let mut rng = Rng::new(2);
    let cases: &[(&str, &[usize], &[usize])] = &[
        ("mk,kn->mn", &[1, 1], &[1, 1]),
        ("mk,kn->mn", &[37, 53], &[53, 29]),
        ("mk,nk->mn", &[70, 129], &[65, 129]),
        ("km,kn->mn", &[17, 5], &[17, 300]),
        ("bmk,bkn->bmn", &[3, 19, 23], &[3, 23, 31]),
        ("NIHW,OI->NOHW", &[2, 24, 7, 9], &[40, 24]),
        ("IHW,OI->OHW", &[96, 14, 14], &[24, 96]),
        ("mkba,nk->mn", &[2, 1024, 1, 1], &[14, 1024]),
        ("bmk,kn->bmn", &[4, 33, 20], &[20, 18]),
        ("mk,bkn->bnm", &[9, 16], &[2, 16, 67]),
    ];
    for (expr, a, b) in cases {
        let what = format!("einsum {expr} {a:?}×{b:?}");
        let mut m = TypedModel::default();
        let x = source(&mut m, a);
        let w = m.add_const("w", rng.tensor(b)).expect("w");
        let op = EinSum::new(expr.parse().expect("axes"), f32::datum_type());
        let y = m.wire_node("einsum", op, &[x, w]).expect("einsum")[0];
        let plan = check(&what, finish(m, y), rng.tensor(a), REL);
        all_on_gpu(&what, &plan);
    }
}

/// A deep product on a grid too small to fill a GPU is split along K into partial sums
/// (a second dispatch adds them): same results, two dispatches.
#[test]
fn deep_products_on_small_grids_split_k() {
    let mut rng = Rng::new(9);
    for (c, bias) in [(256, 2u8), (100, 1), (8, 2)] {
        let what = format!("split-K conv, {c} channels");
        let mut m = TypedModel::default();
        let x = source(&mut m, &[1, c, 5, 6]);
        let w = m.add_const("w", rng.tensor(&[40, c, 3, 3])).expect("w");
        let b = m.add_const("b", if bias == 2 { rng.tensor(&[40]) } else { tensor0(rng.f()) });
        let op = Conv {
            pool_spec: spec(DataFormat::NCHW, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], c, 40),
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = m.wire_node("conv", op, &[x, w, b.expect("b")]).expect("conv")[0];
        let plan = check(&what, finish(m, y), rng.tensor(&[1, c, 5, 6]), REL);
        let conv = plan.placements().iter().find(|p| p.node == "conv").expect("conv");
        // K = 9·c: 2 304 and 900 split; 72 (5 steps of 16) is too shallow to.
        let dispatches = if c == 8 { 1 } else { 2 };
        assert_eq!(conv.placement, medinfer_gpu::Placement::Gpu { dispatches }, "{what}");
    }
    let what = "split-K einsum";
    let mut m = TypedModel::default();
    let x = source(&mut m, &[2, 14, 2048]);
    let w = m.add_const("w", rng.tensor(&[2048, 3])).expect("w");
    let op = EinSum::new("bmk,kn->bmn".parse().expect("axes"), f32::datum_type());
    let y = m.wire_node("einsum", op, &[x, w]).expect("einsum")[0];
    let plan = check(what, finish(m, y), rng.tensor(&[2, 14, 2048]), REL);
    let einsum = plan.placements().iter().find(|p| p.node == "einsum").expect("einsum");
    assert_eq!(einsum.placement, medinfer_gpu::Placement::Gpu { dispatches: 2 }, "{what}");
}

#[test]
fn broadcasting_binary_ops_match_tract() {
    let mut rng = Rng::new(3);
    let ops: Vec<(&str, Box<dyn Fn() -> tract_onnx::tract_core::ops::binary::TypedBinOp>)> = vec![
        ("add", Box::new(math::add)),
        ("sub", Box::new(math::sub)),
        ("mul", Box::new(math::mul)),
        ("div", Box::new(math::div)),
        ("max", Box::new(math::max)),
        ("min", Box::new(math::min)),
    ];
    let shapes: &[(&[usize], &[usize])] = &[
        (&[2, 3, 5, 7], &[2, 3, 5, 7]),
        (&[2, 3, 5, 7], &[1, 3, 1, 1]),
        (&[2, 1, 5, 1], &[1, 3, 1, 7]),
        (&[1, 1], &[129, 257]),
        (&[4, 1, 3, 2, 5, 3], &[1, 2, 3, 1, 5, 1]),
    ];
    for (name, op) in &ops {
        for (a, b) in shapes {
            let what = format!("{name} {a:?} {b:?}");
            let mut m = TypedModel::default();
            let x = source(&mut m, a);
            // Divisors are kept away from zero.
            let t = if *name == "div" {
                rng.tensor_map(b, |v| v.signum() * (v.abs() + 0.5))
            } else {
                rng.tensor(b)
            };
            let c = m.add_const("c", t).expect("c");
            let y = m.wire_node(*name, op(), &[x, c]).expect("binop")[0];
            let plan = check(&what, finish(m, y), rng.tensor(a), REL);
            all_on_gpu(&what, &plan);
        }
    }
}

#[test]
fn unary_ops_match_tract() {
    let mut rng = Rng::new(4);
    let ops: Vec<(&str, tract_onnx::tract_core::ops::element_wise::ElementWiseOp)> = vec![
        ("sigmoid", nn::sigmoid()),
        ("tanh", math::tanh()),
        ("exp", math::exp()),
        ("abs", math::abs()),
        ("neg", math::neg()),
        ("square", math::square()),
        ("floor", math::floor()),
        ("leaky relu", nn::leaky_relu(0.1)),
        ("silu", nn::silu::silu()),
        ("erf", math::erf()),
        ("gelu", nn::gelu_exact::gelu_exact()),
        ("sin", math::sin()),
        ("cos", math::cos()),
        ("round", math::round()),
        ("round half to even", math::round_half_to_even()),
    ];
    for (name, op) in ops {
        let what = name.to_string();
        let mut m = TypedModel::default();
        let x = source(&mut m, &[3, 5, 67]);
        let y = m.wire_node(name, op, &[x]).expect("unary")[0];
        // Multiples of 0.25 among them, so the rounding modes meet exact halves.
        let input = rng.tensor_map(&[3, 5, 67], |v| {
            if name.starts_with("round") { (v * 32.0).round() / 4.0 } else { v * 8.0 }
        });
        let plan = check(&what, finish(m, y), input, REL);
        all_on_gpu(&what, &plan);
    }
}

#[test]
fn pools_and_reductions_match_tract() {
    let mut rng = Rng::new(5);
    let shape = [2, 5, 17, 14];
    let pools: Vec<(&str, Box<dyn TypedOp>)> = vec![
        (
            "max 3x3 s2 p1",
            Box::new(MaxPool {
                pool_spec: spec(DataFormat::NCHW, [3, 3], [1, 1, 1, 1], [2, 2], [1, 1], 5, 5),
                with_index_outputs: None,
            }),
        ),
        (
            "avg 2x2 s2",
            Box::new(SumPool {
                pool_spec: spec(DataFormat::NCHW, [2, 2], [0, 0, 0, 0], [2, 2], [1, 1], 5, 5),
                count_include_pad: false,
                normalize: true,
            }),
        ),
        (
            "avg 3x3 p1 excl pad",
            Box::new(SumPool {
                pool_spec: spec(DataFormat::NCHW, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 5, 5),
                count_include_pad: false,
                normalize: true,
            }),
        ),
        (
            "avg 3x3 p1 incl pad",
            Box::new(SumPool {
                pool_spec: spec(DataFormat::NCHW, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 5, 5),
                count_include_pad: true,
                normalize: true,
            }),
        ),
        (
            "sum 2x3 s(1,2) dil 2",
            Box::new(SumPool {
                pool_spec: spec(DataFormat::NCHW, [2, 3], [0, 1, 0, 1], [1, 2], [2, 2], 5, 5),
                count_include_pad: false,
                normalize: false,
            }),
        ),
        ("reduce sum hw", Box::new(Reduce::new(tvec![2, 3], Reducer::Sum))),
        ("reduce max c", Box::new(Reduce::new(tvec![1], Reducer::Max))),
        ("reduce min n,w", Box::new(Reduce::new(tvec![0, 3], Reducer::Min))),
        ("reduce mean of squares", Box::new(Reduce::new(tvec![1, 2], Reducer::MeanOfSquares))),
    ];
    for (name, op) in pools {
        let mut m = TypedModel::default();
        let x = source(&mut m, &shape);
        let y = m.wire_node(name, op, &[x]).expect("op")[0];
        let plan = check(name, finish(m, y), rng.tensor(&shape), REL);
        all_on_gpu(name, &plan);
    }
}

#[test]
fn concat_moves_and_reshapes_match_tract() {
    let mut rng = Rng::new(6);
    let mut m = TypedModel::default();
    let x = source(&mut m, &[2, 3, 5, 7]);
    let a = m.add_const("a", rng.tensor(&[2, 4, 5, 7])).expect("a");
    let b = m.add_const("b", rng.tensor(&[2, 1, 5, 7])).expect("b");
    let y = m.wire_node("cat", TypedConcat { axis: 1 }, &[a, x, b]).expect("concat")[0];
    let y = m.wire_node("move", AxisOp::Move(1, 3), &[y]).expect("move")[0];
    let y = m.wire_node("add_axis", AxisOp::Add(0), &[y]).expect("add")[0];
    let y = m.wire_node("rm_axis", AxisOp::Rm(0), &[y]).expect("rm")[0];
    let plan = check("concat/move/reshape", finish(m, y), rng.tensor(&[2, 3, 5, 7]), REL);
    all_on_gpu("concat/move/reshape", &plan);

    // Concatenations of many inputs (DenseNet's take up to 33) go four inputs a dispatch;
    // an empty input takes none. Along the first, a middle and the last axis.
    for axis in 0..3 {
        let what = format!("concat of 10 inputs along axis {axis}");
        let mut m = TypedModel::default();
        let shape = |extent: usize| {
            let mut s = vec![3, 4, 5];
            s[axis] = extent;
            s
        };
        let x = source(&mut m, &shape(2));
        let mut parts = vec![];
        for i in 0..9 {
            let extent = [1, 3, 0, 2, 5, 1, 1, 4, 2][i];
            parts.push(m.add_const(format!("c{i}"), rng.tensor(&shape(extent))).expect("c"));
        }
        parts.insert(4, x);
        let y = m.wire_node("cat", TypedConcat { axis }, &parts).expect("concat")[0];
        let plan = check(&what, finish(m, y), rng.tensor(&shape(2)), REL);
        let cat = plan.placements().iter().find(|p| p.node == "cat").expect("cat");
        // 9 non-empty inputs: 4 + 4 + 1.
        assert_eq!(cat.placement, medinfer_gpu::Placement::Gpu { dispatches: 3 }, "{what}");
    }
}

#[test]
fn softmax_matches_tract() {
    let mut rng = Rng::new(8);
    let shape = [2, 7, 5, 3];
    let cases: &[(&[usize], SoftmaxKind)] = &[
        (&[1], SoftmaxKind::Softmax),
        (&[3], SoftmaxKind::Softmax),
        (&[2, 3], SoftmaxKind::Softmax),
        (&[1], SoftmaxKind::LogSoftmax),
    ];
    for (axes, kind) in cases {
        let what = format!("softmax {axes:?} {kind:?}");
        let mut m = TypedModel::default();
        let x = source(&mut m, &shape);
        let op =
            Softmax { axes: axes.iter().copied().collect(), quant_output_dt: None, kind: *kind };
        let y = m.wire_node("softmax", op, &[x]).expect("softmax")[0];
        // Large logits: a kernel that skipped the max subtraction would overflow.
        let plan = check(&what, finish(m, y), rng.tensor_map(&shape, |v| v * 60.0), REL);
        all_on_gpu(&what, &plan);
    }
}

#[test]
fn nearest_upsampling_matches_tract() {
    let mut rng = Rng::new(9);
    for (shape, scales) in [
        ([1, 3, 5, 7], [1, 1, 2, 2]),
        ([2, 4, 3, 6], [1, 1, 4, 4]),
        ([2, 2, 5, 3], [1, 1, 3, 1]),
        ([1, 5, 4, 3], [2, 1, 1, 2]),
    ] {
        let what = format!("upsample {shape:?} by {scales:?}");
        let mut m = TypedModel::default();
        let x = source(&mut m, &shape);
        let op = NearestUpsample { scales: scales.into_iter().collect() };
        let y = m.wire_node("up", op, &[x]).expect("upsample")[0];
        let plan = check(&what, finish(m, y), rng.tensor(&shape), REL);
        all_on_gpu(&what, &plan);
    }
}

#[test]
fn transposed_convolutions_match_tract() {
    let mut rng = Rng::new(10);
    // (n, c, h, w, o, k, stride, pad, dilation, adjustments, group, bias 0/1/2)
    #[allow(clippy::type_complexity)]
    let cases: &[(
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 4],
        [usize; 2],
        [usize; 2],
        usize,
        u8,
    )] = &[
        (1, 8, 5, 6, 4, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], [0, 0], 1, 2),
        (2, 6, 7, 5, 9, [4, 4], [2, 2], [1, 1, 1, 1], [1, 1], [0, 0], 3, 1),
        (1, 5, 6, 9, 7, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], [1, 1], 1, 0),
        (1, 4, 5, 5, 3, [3, 2], [1, 3], [0, 1, 2, 0], [2, 1], [0, 2], 1, 2),
        (2, 16, 9, 11, 16, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], [0, 0], 1, 2),
    ];
    for (i, &(n, c, h, w, o, k, stride, pad, dil, adj, group, bias)) in cases.iter().enumerate() {
        let what = format!("deconv case {i}");
        let mut m = TypedModel::default();
        let shape = [n, c, h, w];
        let x = source(&mut m, &shape);
        let kernel = m.add_const("w", rng.tensor(&[o, c / group, k[0], k[1]])).expect("w");
        let b = match bias {
            2 => rng.tensor(&[o]),
            1 => tensor0(rng.f()),
            _ => tensor0(0f32),
        };
        let b = m.add_const("b", b).expect("b");
        let op = Deconv {
            pool_spec: spec(DataFormat::NCHW, k, pad, stride, dil, c, o),
            kernel_format: KernelFormat::OIHW,
            adjustments: adj.into_iter().collect(),
            group,
        };
        let y = m.wire_node("deconv", op, &[x, kernel, b]).expect("deconv")[0];
        let plan = check(&what, finish(m, y), rng.tensor(&shape), REL);
        all_on_gpu(&what, &plan);
    }
}

/// An op without a kernel runs on the CPU for that node only, the plan says so, and the
/// result still matches.
#[test]
fn an_op_without_a_kernel_falls_back_to_the_cpu_visibly() {
    let mut rng = Rng::new(7);
    let mut m = TypedModel::default();
    let x = source(&mut m, &[2, 10, 6]);
    let c = m.add_const("c", rng.tensor(&[1, 10, 1])).expect("c");
    let y = m.wire_node("add", math::add(), &[x, c]).expect("add")[0];
    let y = m.wire_node("tan", math::tan(), &[y]).expect("tan")[0];
    let y = m.wire_node("sig", nn::sigmoid(), &[y]).expect("sigmoid")[0];
    let plan = check("fallback", finish(m, y), rng.tensor(&[2, 10, 6]), REL);
    let place = |name: &str| {
        plan.placements().iter().find(|p| p.node == name).expect("node").placement.clone()
    };
    assert!(matches!(place("add"), medinfer_gpu::Placement::Gpu { .. }));
    match place("tan") {
        medinfer_gpu::Placement::Cpu { reason } => assert!(reason.contains("Tan"), "{reason}"),
        other => panic!("tan should fall back, got {other:?}"),
    }
    assert!(matches!(place("sig"), medinfer_gpu::Placement::Gpu { .. }));
    let err = block_on(plan.profile(&rng.tensor(&[2, 10, 6]))).expect_err("a CPU node");
    assert!(err.to_string().contains("on the CPU"), "{err}");
}

/// A profile times every dispatch of the plan, in order, under the node it computes.
#[test]
fn a_profile_times_every_dispatch() {
    let mut rng = Rng::new(8);
    let mut m = TypedModel::default();
    let x = source(&mut m, &[1, 16, 20, 20]);
    let w = m.add_const("w", rng.tensor(&[32, 16, 3, 3])).expect("w");
    let b = m.add_const("b", rng.tensor(&[32])).expect("b");
    let op = Conv {
        pool_spec: spec(DataFormat::NCHW, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 16, 32),
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let y = m.wire_node("conv", op, &[x, w, b]).expect("conv")[0];
    let y = m.wire_node("sig", nn::sigmoid(), &[y]).expect("sigmoid")[0];
    let input = rng.tensor(&[1, 16, 20, 20]);
    let plan = check("profile", finish(m, y), input.clone(), REL);
    let result = block_on(plan.profile(&input));
    if !plan.gpu().has_timestamps() {
        let err = result.expect_err("no timestamp queries");
        assert!(err.to_string().contains("timestamp"), "{err}");
        return;
    }
    let times = result.expect("profile");
    let mut expected = vec![];
    for p in plan.placements() {
        if let medinfer_gpu::Placement::Gpu { dispatches } = p.placement {
            expected.extend(std::iter::repeat_n(p.node.as_str(), dispatches));
        }
    }
    let nodes: Vec<&str> = times.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(nodes, expected);
    assert_eq!(times[0].kernel, "Conv");
    assert!(times.iter().all(|t| t.ms.is_finite() && t.ms >= 0.0), "{times:?}");
    assert!(times.iter().map(|t| t.ms).sum::<f64>() > 0.0, "{times:?}");
}
