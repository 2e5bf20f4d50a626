//! Lowering: one tract node → the dispatches that compute it on the GPU, or the reason it
//! stays on the CPU.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::{
    DataFormat, LeakyRelu, NearestUpsample, Reduce, Reducer, Softmax, SoftmaxKind,
};

use crate::kernels::{Kernel, Kernels};

/// Shapes are padded to this rank in the flat kernels' parameters.
const RANK: usize = 6;

/// A buffer a dispatch reads: one of the node's inputs, the plan's scratch buffer (a split-K
/// product's partial sums), or nothing (the binding gets the device's 16-byte spare buffer).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Read {
    Input(usize),
    Scratch,
    Nothing,
}

/// One dispatch: it reads `reads`, writes the node's output 0 — or, when `scratch` is not 0,
/// that many bytes of the plan's scratch buffer — with parameters `params`.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) kernel: Kernel,
    pub(crate) reads: Vec<Read>,
    pub(crate) params: Vec<u32>,
    pub(crate) groups: [u32; 3],
    pub(crate) scratch: u64,
}

/// How a node runs.
#[derive(Debug)]
pub(crate) enum Lowered {
    /// On the GPU, as these dispatches in order.
    Launches(Vec<Launch>),
    /// Output 0 is input 0's buffer with another shape (no work).
    View,
    /// On the CPU through tract, for this reason.
    Cpu(String),
}

/// Device facts lowering needs.
pub(crate) struct Target<'a> {
    pub(crate) kernels: &'a Kernels,
    pub(crate) max_groups: u32,
}

type Lower = std::result::Result<Vec<Launch>, String>;

pub(crate) fn lower(
    op: &dyn TypedOp,
    inputs: &[&[usize]],
    output: &[usize],
    t: &Target<'_>,
) -> Lowered {
    let result = if let Some(op) = op.downcast_ref::<TypedBinOp>() {
        binary(op, inputs, output, t)
    } else if let Some(op) = op.downcast_ref::<ElementWiseOp>() {
        unary(op, output, t)
    } else if let Some(op) = op.downcast_ref::<Conv>() {
        conv(op, inputs, output, t)
    } else if let Some(op) = op.downcast_ref::<EinSum>() {
        einsum(op, inputs, output, t)
    } else if let Some(op) = op.downcast_ref::<MaxPool>() {
        if op.with_index_outputs.is_some() {
            Err("MaxPool with index outputs".into())
        } else {
            pool(&op.pool_spec, 0, inputs[0], output, t)
        }
    } else if let Some(op) = op.downcast_ref::<SumPool>() {
        let mode = match (op.normalize, op.count_include_pad) {
            (false, _) => 1,
            (true, true) => 2,
            (true, false) => 3,
        };
        pool(&op.pool_spec, mode, inputs[0], output, t)
    } else if let Some(op) = op.downcast_ref::<Deconv>() {
        deconv(op, inputs, output, t)
    } else if let Some(op) = op.downcast_ref::<Reduce>() {
        reduce(op, inputs[0], t)
    } else if let Some(op) = op.downcast_ref::<Softmax>() {
        softmax(op, inputs[0], t)
    } else if let Some(op) = op.downcast_ref::<NearestUpsample>() {
        upsample(&op.scales, inputs[0], t)
    } else if let Some(op) = op.downcast_ref::<TypedConcat>() {
        concat(op.axis, inputs, output, t)
    } else if let Some(op) = op.downcast_ref::<AxisOp>() {
        match op {
            AxisOp::Move(from, to) => transpose(*from, *to, inputs[0], t),
            _ => return Lowered::View,
        }
    } else {
        Err(format!("no GPU kernel for {}", op.name()))
    };
    match result {
        Ok(launches) => Lowered::Launches(launches),
        Err(reason) => Lowered::Cpu(reason),
    }
}

fn u(v: usize) -> std::result::Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{v} does not fit a 32-bit index"))
}

/// Workgroups for `total` one-value-per-invocation work, folded into x·y.
pub(crate) fn flat_groups(total: usize, t: &Target<'_>) -> std::result::Result<[u32; 3], String> {
    let groups = total.div_ceil(t.kernels.flat as usize).max(1);
    let x = groups.min(t.max_groups as usize);
    let y = groups.div_ceil(x);
    if y > t.max_groups as usize {
        return Err(format!("{total} values exceed the adapter's dispatch limits"));
    }
    Ok([u(x)?, u(y)?, 1])
}

fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// `shape` and `strides` right-aligned into RANK slots (missing leading axes: dim 1).
fn padded(shape: &[usize], strides: &[usize]) -> std::result::Result<[[u32; RANK]; 2], String> {
    if shape.len() > RANK {
        return Err(format!("rank {} is above {RANK}", shape.len()));
    }
    let mut s = [1u32; RANK];
    let mut st = [0u32; RANK];
    let off = RANK - shape.len();
    for i in 0..shape.len() {
        s[off + i] = u(shape[i])?;
        st[off + i] = u(strides[i])?;
    }
    Ok([s, st])
}

/// Strides of `input` read as if broadcast to `output` (0 along broadcast axes).
fn broadcast_strides(input: &[usize], output: &[usize]) -> std::result::Result<Vec<usize>, String> {
    if input.len() != output.len() {
        return Err("operands of different ranks".into());
    }
    let c = contiguous(input);
    Ok(input
        .iter()
        .zip(output)
        .zip(c)
        .map(|((&i, &o), s)| if i == 1 && o != 1 { 0 } else { s })
        .collect())
}

fn binary(op: &TypedBinOp, inputs: &[&[usize]], output: &[usize], t: &Target<'_>) -> Lower {
    if op.1.is_some() {
        return Err("quantized binary op".into());
    }
    let code = match op.0.name() {
        "Add" => 0,
        "Sub" => 1,
        "SubF" => 2,
        "Mul" => 3,
        "Div" => 4,
        "Max" => 5,
        "Min" => 6,
        "Pow" => 7,
        other => return Err(format!("no GPU kernel for the binary op {other}")),
    };
    let total: usize = output.iter().product();
    let [shape, _] = padded(output, &contiguous(output))?;
    let [_, sa] = padded(inputs[0], &broadcast_strides(inputs[0], output)?)?;
    let [_, sb] = padded(inputs[1], &broadcast_strides(inputs[1], output)?)?;
    let mut params = vec![u(total)?, code];
    params.extend(shape);
    params.extend(sa);
    params.extend(sb);
    Ok(vec![Launch {
        kernel: Kernel::Binary,
        reads: vec![Read::Input(0), Read::Input(1)],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}

fn unary(op: &ElementWiseOp, output: &[usize], t: &Target<'_>) -> Lower {
    if op.1.is_some() {
        return Err("quantized element-wise op".into());
    }
    let code = match op.0.name().as_ref() {
        "Sigmoid" => 0,
        "Tanh" => 1,
        "Exp" => 2,
        "Abs" => 3,
        "Neg" => 4,
        "Sqrt" => 5,
        "Rsqrt" => 6,
        "Recip" => 7,
        "Ln" => 8,
        "Square" => 9,
        "Floor" => 10,
        "Ceil" => 11,
        "HardSwish" => 12,
        "LeakyRelu" => 13,
        "Silu" => 14,
        "Erf" => 15,
        "GeluExact" => 16,
        "Sin" => 17,
        "Cos" => 18,
        "Round" => 19,
        "RoundHalfToEven" => 20,
        other => return Err(format!("no GPU kernel for the element-wise op {other}")),
    };
    let alpha = op.0.downcast_ref::<LeakyRelu>().map_or(0.0, |l| l.alpha);
    let total: usize = output.iter().product();
    Ok(vec![Launch {
        kernel: Kernel::Unary,
        reads: vec![Read::Input(0)],
        params: vec![u(total)?, code, alpha.to_bits()],
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}

/// (batch, channels, [h, w]) of an NCHW or CHW tensor.
fn nchw(
    format: DataFormat,
    shape: &[usize],
) -> std::result::Result<(usize, usize, [usize; 2]), String> {
    match (format, shape) {
        (DataFormat::NCHW, &[n, c, h, w]) => Ok((n, c, [h, w])),
        (DataFormat::CHW, &[c, h, w]) => Ok((1, c, [h, w])),
        _ => Err(format!("{format:?} data with shape {shape:?} (2-D NCHW/CHW only)")),
    }
}

/// (batch, channels, [h, w]) and the element strides of (n, c, y, x) for any 2-D layout.
fn layout(
    format: DataFormat,
    shape: &[usize],
) -> std::result::Result<(usize, usize, [usize; 2], [u32; 4]), String> {
    let s = contiguous(shape);
    let (n, c, hw, st) = match (format, shape) {
        (DataFormat::NCHW, &[n, c, h, w]) => (n, c, [h, w], [s[0], s[1], s[2], s[3]]),
        (DataFormat::NHWC, &[n, h, w, c]) => (n, c, [h, w], [s[0], s[3], s[1], s[2]]),
        (DataFormat::CHW, &[c, h, w]) => (1, c, [h, w], [0, s[0], s[1], s[2]]),
        (DataFormat::HWC, &[h, w, c]) => (1, c, [h, w], [0, s[2], s[0], s[1]]),
        _ => return Err(format!("{format:?} data with shape {shape:?} (2-D only)")),
    };
    Ok((n, c, hw, [u(st[0])?, u(st[1])?, u(st[2])?, u(st[3])?]))
}

/// Spatial geometry shared by convolution and pooling: [kh, kw, sy, sx, dy, dx, pt, pl].
fn geometry(spec: &PoolSpec, hw: [usize; 2]) -> std::result::Result<[u32; 8], String> {
    if spec.kernel_shape.len() != 2 {
        return Err("only 2-D windows".into());
    }
    let dilations = spec.dilations();
    let strides = spec.strides();
    let padding = spec.padding.compute(&hw, &spec.kernel_shape, &dilations, &strides);
    Ok([
        u(spec.kernel_shape[0])?,
        u(spec.kernel_shape[1])?,
        u(strides[0])?,
        u(strides[1])?,
        u(dilations[0])?,
        u(dilations[1])?,
        u(padding[0].pad_before)?,
        u(padding[1].pad_before)?,
    ])
}

fn pool(spec: &PoolSpec, mode: u32, input: &[usize], output: &[usize], t: &Target<'_>) -> Lower {
    let (_, _, hw) = nchw(spec.data_format, input)?;
    let (n, c, [oh, ow]) = nchw(spec.data_format, output)?;
    let g = geometry(spec, hw)?;
    let total = n * c * oh * ow;
    let mut params = vec![u(total)?, mode, u(hw[0])?, u(hw[1])?, u(oh)?, u(ow)?];
    params.extend(g);
    Ok(vec![Launch {
        kernel: Kernel::Pool,
        reads: vec![Read::Input(0)],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}

fn conv(op: &Conv, inputs: &[&[usize]], output: &[usize], t: &Target<'_>) -> Lower {
    if op.q_params.is_some() {
        return Err("quantized convolution".into());
    }
    if op.kernel_fmt != KernelFormat::OIHW {
        return Err(format!("{:?} kernels (OIHW only)", op.kernel_fmt));
    }
    let spec = &op.pool_spec;
    let (_, c, hw, in_strides) = layout(spec.data_format, inputs[0])?;
    let (n, o, [oh, ow], out_strides) = layout(spec.data_format, output)?;
    let g = geometry(spec, hw)?;
    let groups = op.group;
    let cg = c / groups;
    let og = o / groups;
    if inputs[1] != [o, cg, g[0] as usize, g[1] as usize] {
        return Err(format!("kernel shape {:?}", inputs[1]));
    }
    let bias: usize = inputs.get(2).map_or(0, |s| s.iter().product());
    if bias != 0 && bias != 1 && bias != o {
        return Err(format!("bias of {bias} values for {o} channels"));
    }
    let bias_read = if bias == 0 { Read::Nothing } else { Read::Input(2) };
    let reads = vec![Read::Input(0), Read::Input(1), bias_read];
    if cg == 1 {
        // Depthwise (each output channel reads one input channel).
        let total = n * o * oh * ow;
        let mut params = vec![u(total)?, u(o)?, u(hw[0])?, u(hw[1])?, u(oh)?, u(ow)?];
        params.extend(g);
        params.extend([u(bias)?, u(c)?, u(og)?]);
        params.extend(in_strides);
        params.extend(out_strides);
        return Ok(vec![Launch {
            kernel: Kernel::Depthwise,
            reads,
            params,
            groups: flat_groups(total, t)?,
            scratch: 0,
        }]);
    }
    // The implicit GEMM reads NCHW/CHW only.
    nchw(spec.data_format, inputs[0])?;
    let k = cg * (g[0] * g[1]) as usize;
    let tile = t.kernels.tile_outputs as usize;
    let grid = [(oh * ow).div_ceil(tile), og.div_ceil(tile), n * groups];
    let mut params = vec![u(og)?, u(oh * ow)?, u(k)?, u(groups)?, u(c)?, u(hw[0])?, u(hw[1])?];
    params.extend([u(oh)?, u(ow)?]);
    params.extend(g);
    params.extend([u(bias)?, u(o)?]);
    tiled(Kernel::Conv, reads, params, grid, k, output.iter().product(), t)
}

/// Steps of `BK` (tile.wgsl) a split-K range holds at least.
const MIN_SPLIT_STEPS: usize = 8;
/// Workgroups that keep a datacentre GPU's compute units busy (an H100 has 132).
const FILL: usize = 128;

/// Into how many K ranges a tiled product of `workgroups` tiles and depth `k` is cut, and
/// the depth of each (a multiple of tile.wgsl's BK = 16). A grid too small to fill the GPU
/// (late layers at batch 1: one workgroup for a 7×7 map) leaves one workgroup walking all
/// of K while the rest idle: on an H100 a 3×3 convolution over 128 channels took 0.26 ms so.
fn split_k(workgroups: usize, k: usize) -> (usize, usize) {
    const BK: usize = 16;
    let steps = k.div_ceil(BK);
    let splits = (FILL / workgroups.max(1)).min(steps / MIN_SPLIT_STEPS).max(1);
    let per = steps.div_ceil(splits) * BK;
    (k.div_ceil(per), per)
}

/// The launches of a tiled product (conv.wgsl, gemm.wgsl: `params` without the split-K
/// tail) over a `grid` of workgroups with depth `k`, writing `out_len` values: one dispatch,
/// or, when [`split_k`] splits, partial sums into the scratch buffer and split_sum's
/// dispatch adding them into the output.
fn tiled(
    kernel: Kernel,
    reads: Vec<Read>,
    mut params: Vec<u32>,
    grid: [usize; 3],
    k: usize,
    out_len: usize,
    t: &Target<'_>,
) -> Lower {
    let (splits, k_split) = split_k(grid.iter().product(), k);
    let z = grid[2] * splits;
    if grid[..2].iter().chain([&z]).any(|&d| d > t.max_groups as usize) {
        return Err(format!("{kernel:?} grid exceeds the adapter's dispatch limits"));
    }
    params.extend([u(splits)?, u(k_split)?, u(out_len)?]);
    let groups = [u(grid[0])?, u(grid[1])?, u(z)?];
    if splits == 1 {
        return Ok(vec![Launch { kernel, reads, params, groups, scratch: 0 }]);
    }
    u(splits * out_len)?; // partial sums are indexed in u32
    Ok(vec![
        Launch { kernel, reads, params, groups, scratch: (splits * out_len * 4) as u64 },
        Launch {
            kernel: Kernel::SplitSum,
            reads: vec![Read::Scratch],
            params: vec![u(out_len)?, u(splits)?],
            groups: flat_groups(out_len, t)?,
            scratch: 0,
        },
    ])
}

/// An axis of an EinSum as the GEMM kernel sees it: its size and its stride in A, B and C
/// (0 where the operand does not have it, or has it with size 1).
#[derive(Debug, Clone, Copy)]
struct GemmAxis {
    dim: usize,
    stride: [usize; 3],
    present: [bool; 3],
}

/// Merges axes that are contiguous in every operand (outer stride = inner stride · inner dim),
/// returning them outermost first.
fn merge(mut axes: Vec<GemmAxis>, order_by: usize) -> Vec<GemmAxis> {
    axes.sort_by_key(|a| std::cmp::Reverse(a.stride[order_by]));
    let mut out: Vec<GemmAxis> = Vec::new();
    for axis in axes {
        if let Some(last) = out.last_mut()
            && last.present == axis.present
            && (0..3).all(|o| last.stride[o] == axis.stride[o] * axis.dim)
        {
            last.dim *= axis.dim;
            last.stride = axis.stride;
            continue;
        }
        out.push(axis);
    }
    out
}

fn einsum(op: &EinSum, inputs: &[&[usize]], output: &[usize], t: &Target<'_>) -> Lower {
    if op.q_params.is_some() || op.operating_dt != DatumType::F32 || inputs.len() != 2 {
        return Err("EinSum other than a two-input f32 product".into());
    }
    let shapes = [inputs[0], inputs[1], output];
    let strides = [contiguous(inputs[0]), contiguous(inputs[1]), contiguous(output)];
    let (mut batch, mut m, mut n, mut k) = (vec![], vec![], vec![], vec![]);
    for axis in op.axes.iter_all_axes() {
        let positions = [&axis.inputs[0], &axis.inputs[1], &axis.outputs[0]];
        if positions.iter().any(|p| p.len() > 1) {
            return Err("EinSum with a repeated axis".into());
        }
        let mut g = GemmAxis { dim: 1, stride: [0; 3], present: [false; 3] };
        for o in 0..3 {
            if let Some(&pos) = positions[o].first() {
                g.dim = g.dim.max(shapes[o][pos]);
            }
        }
        for o in 0..3 {
            if let Some(&pos) = positions[o].first()
                && shapes[o][pos] == g.dim
                && g.dim > 1
            {
                g.stride[o] = strides[o][pos];
                g.present[o] = true;
            }
        }
        if g.dim == 1 {
            continue;
        }
        match g.present {
            [true, true, true] => batch.push(g),
            [true, false, true] => m.push(g),
            [false, true, true] => n.push(g),
            [true, true, false] => k.push(g),
            [false, false, true] => batch.push(g), // broadcast of both inputs
            _ => return Err(format!("EinSum axis {} is summed within one operand", axis.repr)),
        }
    }
    let mut m = merge(m, 2);
    let mut n = merge(n, 2);
    let k = merge(k, 0);
    let mut batch = merge(batch, 2);
    // Keep the innermost axis of M and N; outer ones become batch axes (a stride of 0 in the
    // operand that lacks them).
    while m.len() > 1 {
        batch.push(m.remove(0));
    }
    while n.len() > 1 {
        batch.push(n.remove(0));
    }
    let batch = merge(batch, 2);
    if batch.len() > 1 || k.len() > 1 {
        return Err("EinSum needs more than one batch or reduction axis".into());
    }
    let one = GemmAxis { dim: 1, stride: [0; 3], present: [false; 3] };
    let (z, m, n, k) = (
        batch.first().copied().unwrap_or(one),
        m.first().copied().unwrap_or(one),
        n.first().copied().unwrap_or(one),
        k.first().copied().unwrap_or(one),
    );
    let tile = t.kernels.tile_outputs as usize;
    let grid = [n.dim.div_ceil(tile), m.dim.div_ceil(tile), z.dim];
    let params = vec![
        u(m.dim)?,
        u(n.dim)?,
        u(k.dim)?,
        u(z.stride[0])?,
        u(m.stride[0])?,
        u(k.stride[0])?,
        u(z.stride[1])?,
        u(k.stride[1])?,
        u(n.stride[1])?,
        u(z.stride[2])?,
        u(m.stride[2])?,
        u(n.stride[2])?,
        u(usize::from(k.stride[0] == 1))?,
        u(usize::from(n.stride[1] == 1))?,
        0,
    ];
    let reads = vec![Read::Input(0), Read::Input(1), Read::Nothing];
    tiled(Kernel::Gemm, reads, params, grid, k.dim, output.iter().product(), t)
}

fn reduce(op: &Reduce, input: &[usize], t: &Target<'_>) -> Lower {
    let code = match op.reducer {
        Reducer::Sum => 0,
        Reducer::Max => 1,
        Reducer::Min => 2,
        Reducer::Prod => 3,
        Reducer::MeanOfSquares => 4,
        other => return Err(format!("no GPU kernel for the {other:?} reduction")),
    };
    let (total, params) = split_axes(input, &op.axes, code)?;
    Ok(vec![Launch {
        kernel: Kernel::Reduce,
        reads: vec![Read::Input(0)],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}

fn softmax(op: &Softmax, input: &[usize], t: &Target<'_>) -> Lower {
    if op.quant_output_dt.is_some() {
        return Err("quantized softmax".into());
    }
    let log = match op.kind {
        SoftmaxKind::Softmax => 0,
        SoftmaxKind::LogSoftmax => 1,
    };
    let (total, params) = split_axes(input, &op.axes, log)?;
    Ok(vec![Launch {
        kernel: Kernel::Softmax,
        reads: vec![Read::Input(0)],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}

/// Parameters of the kernels that walk some `axes` of `input` per position of the others
/// (reduce, softmax): [kept count, code, kept shape/strides, reduced count, reduced
/// shape/strides]. Returns the kept count too (one invocation each).
fn split_axes(
    input: &[usize],
    axes: &[usize],
    code: u32,
) -> std::result::Result<(usize, Vec<u32>), String> {
    let strides = contiguous(input);
    let (mut kept, mut kept_strides, mut red, mut red_strides) = (vec![], vec![], vec![], vec![]);
    for (axis, (&dim, &stride)) in input.iter().zip(&strides).enumerate() {
        if axes.contains(&axis) {
            red.push(dim);
            red_strides.push(stride);
        } else {
            kept.push(dim);
            kept_strides.push(stride);
        }
    }
    let total: usize = kept.iter().product();
    let count: usize = red.iter().product();
    let [ks, kst] = padded(&kept, &kept_strides)?;
    let [rs, rst] = padded(&red, &red_strides)?;
    let mut params = vec![u(total)?, code];
    params.extend(ks);
    params.extend(kst);
    params.push(u(count)?);
    params.extend(rs);
    params.extend(rst);
    Ok((total, params))
}

fn copy(
    input: usize,
    shape: &[usize],
    src: (usize, &[usize]),
    dst: (usize, &[usize]),
    t: &Target<'_>,
) -> std::result::Result<Launch, String> {
    let total: usize = shape.iter().product();
    let [s, ss] = padded(shape, src.1)?;
    let [_, ds] = padded(shape, dst.1)?;
    let mut params = vec![u(total)?, u(src.0)?, u(dst.0)?];
    params.extend(s);
    params.extend(ss);
    params.extend(ds);
    Ok(Launch {
        kernel: Kernel::Copy,
        reads: vec![Read::Input(input)],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    })
}

/// Inputs one concat.wgsl dispatch takes (its bindings: four inputs, the output, `p`).
const CONCAT_INPUTS: usize = 4;

fn concat(axis: usize, inputs: &[&[usize]], output: &[usize], t: &Target<'_>) -> Lower {
    let outer: usize = output[..axis].iter().product();
    let inner: usize = output[axis + 1..].iter().product();
    // (input, its extent along the axis, its offset there), empty inputs left out.
    let mut parts = vec![];
    let mut offset = 0;
    for (i, shape) in inputs.iter().enumerate() {
        if shape.iter().product::<usize>() > 0 {
            parts.push((i, shape[axis], offset));
        }
        offset += shape[axis];
    }
    let mut launches = vec![];
    for chunk in parts.chunks(CONCAT_INPUTS) {
        let total: usize = chunk.iter().map(|&(_, d, _)| outer * d * inner).sum();
        let mut reads = vec![Read::Nothing; CONCAT_INPUTS];
        let (mut extents, mut offsets) = ([0; CONCAT_INPUTS], [0; CONCAT_INPUTS]);
        for (j, &(i, d, o)) in chunk.iter().enumerate() {
            reads[j] = Read::Input(i);
            extents[j] = u(d)?;
            offsets[j] = u(o)?;
        }
        let mut params = vec![u(total)?, u(output[axis])?, u(inner)?, u(chunk.len())?, u(outer)?];
        params.extend(extents);
        params.extend(offsets);
        launches.push(Launch {
            kernel: Kernel::Concat,
            reads,
            params,
            groups: flat_groups(total, t)?,
            scratch: 0,
        });
    }
    Ok(launches)
}

fn transpose(from: usize, to: usize, input: &[usize], t: &Target<'_>) -> Lower {
    let mut order: Vec<usize> = (0..input.len()).collect();
    let moved = order.remove(from);
    order.insert(to, moved);
    let out_shape: Vec<usize> = order.iter().map(|&a| input[a]).collect();
    let out_contig = contiguous(&out_shape);
    let mut dst = vec![0; input.len()];
    for (j, &a) in order.iter().enumerate() {
        dst[a] = out_contig[j];
    }
    Ok(vec![copy(0, input, (0, &contiguous(input)), (0, &dst), t)?])
}

/// Nearest-neighbour upsampling by integer factors as a strided copy: each scaled axis d is
/// split into (d, s) with source strides (stride, 0), so every input value is repeated.
fn upsample(scales: &[usize], input: &[usize], t: &Target<'_>) -> Lower {
    if scales.len() != input.len() || scales.contains(&0) {
        return Err(format!("scales {scales:?} for shape {input:?}"));
    }
    let src = contiguous(input);
    let (mut shape, mut strides) = (vec![], vec![]);
    for ((&d, &s), &st) in input.iter().zip(scales).zip(&src) {
        shape.push(d);
        strides.push(st);
        if s > 1 {
            shape.push(s);
            strides.push(0);
        }
    }
    Ok(vec![copy(0, &shape, (0, &strides), (0, &contiguous(&shape)), t)?])
}

fn deconv(op: &Deconv, inputs: &[&[usize]], output: &[usize], t: &Target<'_>) -> Lower {
    if op.kernel_format != KernelFormat::OIHW {
        return Err(format!("{:?} kernels (OIHW only)", op.kernel_format));
    }
    let spec = &op.pool_spec;
    let (_, c, hw) = nchw(spec.data_format, inputs[0])?;
    let (n, o, [oh, ow]) = nchw(spec.data_format, output)?;
    if spec.kernel_shape.len() != 2 {
        return Err("only 2-D windows".into());
    }
    let groups = op.group;
    let (cg, og) = (c / groups, o / groups);
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    if inputs.get(1).copied() != Some(&[o, cg, kh, kw][..]) {
        return Err(format!("kernel shape {:?}", inputs.get(1)));
    }
    let strides = spec.strides();
    let dilations = spec.dilations();
    let padding = spec
        .padding
        .compute_for_deconv(&hw, &spec.kernel_shape, &dilations, &strides, &op.adjustments)
        .map_err(|e| format!("{e:#}"))?;
    if [padding[0].deconvoluted, padding[1].deconvoluted] != [oh, ow] {
        return Err("output size disagrees with the padding".into());
    }
    let bias: usize = inputs.get(2).map_or(0, |s| s.iter().product());
    if bias != 0 && bias != 1 && bias != o {
        return Err(format!("bias of {bias} values for {o} channels"));
    }
    let total = n * o * oh * ow;
    let mut params = vec![u(total)?, u(o)?, u(hw[0])?, u(hw[1])?, u(oh)?, u(ow)?, u(kh)?, u(kw)?];
    params.extend([u(strides[0])?, u(strides[1])?, u(dilations[0])?, u(dilations[1])?]);
    params.extend([u(padding[0].pad_before)?, u(padding[1].pad_before)?]);
    params.extend([u(bias)?, u(c)?, u(og)?, u(cg)?]);
    let bias_read = if bias == 0 { Read::Nothing } else { Read::Input(2) };
    Ok(vec![Launch {
        kernel: Kernel::Deconv,
        reads: vec![Read::Input(0), Read::Input(1), bias_read],
        params,
        groups: flat_groups(total, t)?,
        scratch: 0,
    }])
}
