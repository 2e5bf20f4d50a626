//! The plan form: a model's graph as `LoadedModel::load` leaves it for tract's codegen —
//! decluttered, the batch fixed to 1, medinfer's operators swapped in with their kernels
//! packed for this CPU — saved as bytes, so that a later load skips what costs: parsing the
//! ONNX protobuf, typing, decluttering and the rewrites (DenseNet-121: 200 of a 220 ms load
//! on the Zen 4 VM). Reading it back wires the same nodes with the same constants; tract's
//! optimiser then has a few of its own nodes left to lower (6 ms), and the plan is the one
//! the ONNX path builds.
//!
//! The form covers the operators the bundled models' graphs hold at that point: medinfer's
//! four, constants, sources, tract's binary and element-wise arithmetic, `EinSum`, `Reduce`
//! and axis moves. A graph with any other operator has no plan form ([`write`] gives
//! `None`): its model loads from ONNX every time.
//!
//! A form is only valid for the build and the machine that wrote it: the packed kernels
//! depend on the CPU's panel width, the fused operators on its vector kernels, and medinfer's
//! operators on the code that reads them. So it starts with a key — form version, crate
//! version, a hash of core's sources and `Cargo.lock` taken at build time, the architecture,
//! the panel width and the vector kernels (`conv::kernels`) — and the reader
//! refuses any other. It then names the sha256 of the ONNX model it came from (the
//! manifest must pin the same one) and carries the sha256 of everything after it, checked
//! before a byte of it is read, so that a torn or damaged file is refused, never run. A
//! form is as trusted as the model folder itself: the checks catch accidents, and whoever
//! can write the plans folder could as well replace the model.
//!
//! Layout (integers little-endian; a string or a byte run is a `u32` length and its bytes):
//! `MEDIPLAN`, key, source sha256 (hex), payload sha256 (32 bytes), then the payload: the
//! output shape as the ONNX path reports it (strings), the nodes in evaluation order (name,
//! operator tag and fields, inputs as earlier node index and slot), the input and the output
//! outlets.

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;

use crate::concat::Concat;
use crate::conv::DirectConv;
use crate::depthwise::DepthwiseConv;
use crate::fused::{Banded, ExpandDepthwise};

const MAGIC: &[u8; 8] = b"MEDIPLAN";
/// Bumped when the layout changes (the source hash catches the rest).
const FORMAT: u32 = 2;

/// What a form must match to be read by this build on this CPU.
pub(crate) fn key() -> String {
    format!(
        "form {FORMAT}; medinfer-core {}; sources {}; {}; panel width {}; kernels {}",
        env!("CARGO_PKG_VERSION"),
        env!("MEDINFER_CORE_SOURCE_HASH"),
        std::env::consts::ARCH,
        crate::conv::panel_width(),
        crate::conv::kernels(),
    )
}

mod tag {
    pub const SOURCE: u8 = 1;
    pub const CONST: u8 = 2;
    pub const BINARY: u8 = 3;
    pub const ELEMENT_WISE: u8 = 4;
    pub const EINSUM: u8 = 5;
    pub const REDUCE: u8 = 6;
    pub const AXIS: u8 = 7;
    pub const CONV: u8 = 8;
    pub const DEPTHWISE: u8 = 9;
    pub const CONCAT: u8 = 10;
    pub const EXPAND_DEPTHWISE: u8 = 11;
    pub const BANDED: u8 = 12;
}

/// tract's binary operators the form names, as their `name()` says.
const BINARY: [&str; 7] = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"];
/// tract's parameterless element-wise operators the form names.
const ELEMENT_WISE: [&str; 11] =
    ["Sigmoid", "Tanh", "Exp", "Ln", "Abs", "Neg", "Sqrt", "Rsqrt", "Recip", "Erf", "Square"];
/// The reducers the form names, by index.
const REDUCERS: [Reducer; 5] =
    [Reducer::Sum, Reducer::Max, Reducer::Min, Reducer::Prod, Reducer::MeanOfSquares];

fn binary(name: &str) -> Option<TypedBinOp> {
    use tract_onnx::tract_core::ops::math;
    Some(match name {
        "Add" => math::add(),
        "Sub" => math::sub(),
        "Mul" => math::mul(),
        "Div" => math::div(),
        "Max" => math::max(),
        "Min" => math::min(),
        "Pow" => math::pow(),
        _ => return None,
    })
}

fn element_wise(name: &str) -> Option<ElementWiseOp> {
    use tract_onnx::tract_core::ops::{math, nn};
    Some(match name {
        "Sigmoid" => nn::sigmoid(),
        "Tanh" => math::tanh(),
        "Exp" => math::exp(),
        "Ln" => math::ln(),
        "Abs" => math::abs(),
        "Neg" => math::neg(),
        "Sqrt" => math::sqrt(),
        "Rsqrt" => math::rsqrt(),
        "Recip" => math::recip(),
        "Erf" => math::erf(),
        "Square" => math::square(),
        _ => return None,
    })
}

/// `model` (concrete shapes) in the plan form, naming `source_sha256` as the ONNX it came from
/// and `output_shape` as its output's shape; `None` where it holds an operator or a constant
/// the form does not cover.
pub(crate) fn write(
    model: &TypedModel,
    source_sha256: &str,
    output_shape: &[String],
) -> TractResult<Option<Vec<u8>>> {
    let order = model.eval_order()?;
    let mut index = vec![u32::MAX; model.nodes().len()];
    let mut p = Vec::new();
    put_u32(&mut p, output_shape.len());
    for s in output_shape {
        put_bytes(&mut p, s.as_bytes());
    }
    put_u32(&mut p, order.len());
    for (i, &id) in order.iter().enumerate() {
        let node = model.node(id);
        index[id] = i as u32;
        put_bytes(&mut p, node.name.as_bytes());
        if !write_op(&mut p, node)? {
            return Ok(None);
        }
        put_u32(&mut p, node.inputs.len());
        for input in &node.inputs {
            put_outlet(&mut p, &index, *input)?;
        }
    }
    for outlets in [model.input_outlets()?, model.output_outlets()?] {
        put_u32(&mut p, outlets.len());
        for o in outlets {
            put_outlet(&mut p, &index, *o)?;
        }
    }
    let mut out = Vec::with_capacity(p.len() + 256);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, key().as_bytes());
    put_bytes(&mut out, source_sha256.as_bytes());
    out.extend_from_slice(&Sha256::digest(&p));
    out.extend_from_slice(&p);
    Ok(Some(out))
}

/// Writes `node`'s operator: its tag and fields; false for an operator the form does not cover.
fn write_op(p: &mut Vec<u8>, node: &TypedNode) -> TractResult<bool> {
    if let Some(op) = node.op_as::<DirectConv>() {
        p.push(tag::CONV);
        put_words(p, &op.to_words());
    } else if let Some(op) = node.op_as::<DepthwiseConv>() {
        p.push(tag::DEPTHWISE);
        put_words(p, &op.to_words());
    } else if let Some(op) = node.op_as::<Concat>() {
        p.push(tag::CONCAT);
        put_words(p, &op.to_words());
    } else if let Some(op) = node.op_as::<ExpandDepthwise>() {
        p.push(tag::EXPAND_DEPTHWISE);
        put_words(p, &op.to_words());
    } else if let Some(op) = node.op_as::<Banded>() {
        p.push(tag::BANDED);
        put_words(p, &op.to_words());
    } else if let Some(op) = node.op_as::<TypedSource>() {
        let Some(shape) = op.fact.shape.as_concrete() else { return Ok(false) };
        if op.fact.datum_type != f32::datum_type() {
            return Ok(false);
        }
        p.push(tag::SOURCE);
        put_words(p, &shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
    } else if let Some(op) = node.op_as::<Const>() {
        let tensor = op.val();
        if op.exotic_fact().is_some() || tensor.datum_type() != f32::datum_type() {
            return Ok(false);
        }
        p.push(tag::CONST);
        put_words(p, &tensor.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
        put_bytes(p, tensor.as_bytes());
    } else if let Some(op) = node.op_as::<TypedBinOp>() {
        let name = op.0.name();
        if op.1.is_some() || !BINARY.contains(&name) {
            return Ok(false);
        }
        p.push(tag::BINARY);
        put_bytes(p, name.as_bytes());
    } else if let Some(op) = node.op_as::<ElementWiseOp>() {
        let name = op.0.name();
        if op.1.is_some() || !ELEMENT_WISE.contains(&name.as_str()) {
            return Ok(false);
        }
        p.push(tag::ELEMENT_WISE);
        put_bytes(p, name.as_bytes());
    } else if let Some(op) = node.op_as::<EinSum>() {
        if op.q_params.is_some() || op.operating_dt != f32::datum_type() {
            return Ok(false);
        }
        p.push(tag::EINSUM);
        put_bytes(p, op.axes.to_string().as_bytes());
    } else if let Some(op) = node.op_as::<Reduce>() {
        let Some(reducer) = REDUCERS.iter().position(|r| *r == op.reducer) else {
            return Ok(false);
        };
        p.push(tag::REDUCE);
        let mut words = vec![reducer as u64];
        words.extend(op.axes.iter().map(|&a| a as u64));
        put_words(p, &words);
    } else if let Some(op) = node.op_as::<AxisOp>() {
        let words = match *op {
            AxisOp::Add(a) => [0, a as u64, 0],
            AxisOp::Rm(a) => [1, a as u64, 0],
            AxisOp::Move(from, to) => [2, from as u64, to as u64],
            AxisOp::Reshape(..) => return Ok(false),
        };
        p.push(tag::AXIS);
        put_words(p, &words);
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// What [`read`] gives: the graph, ready for tract's codegen, and the output shape the ONNX
/// path reported.
pub(crate) struct Read {
    pub(crate) model: TypedModel,
    pub(crate) output_shape: Vec<String>,
}

/// Reads a plan form written by this build on this kind of CPU from the ONNX model of sha256
/// `source_sha256`; an error naming what did not match otherwise.
pub(crate) fn read(bytes: &[u8], source_sha256: &str) -> TractResult<Read> {
    let mut r = Reader(bytes);
    ensure!(r.take(MAGIC.len())? == MAGIC, "not a medinfer plan form");
    ensure!(r.bytes()? == key().as_bytes(), "written by another build or for another CPU");
    ensure!(
        r.bytes()?.eq_ignore_ascii_case(source_sha256.as_bytes()),
        "made from another model file (its sha256 differs from the manifest's)"
    );
    let digest = r.take(32)?;
    ensure!(Sha256::digest(r.0).as_slice() == digest, "damaged (its sha256 does not match)");
    let output_shape = (0..r.count()?)
        .map(|_| Ok(String::from_utf8(r.bytes()?.to_vec())?))
        .collect::<TractResult<Vec<String>>>()?;
    let mut model = TypedModel::default();
    let mut wired: Vec<TVec<OutletId>> = Vec::new();
    for _ in 0..r.count()? {
        let name = String::from_utf8(r.bytes()?.to_vec())?;
        let tag = r.take(1)?[0];
        let outlets = match tag {
            tag::SOURCE => {
                let shape = r.dims()?;
                r.inputs(&wired)?;
                tvec!(model.add_source(name, f32::fact(shape))?)
            }
            tag::CONST => {
                let shape = r.dims()?;
                let data = r.bytes()?;
                r.inputs(&wired)?;
                // SAFETY: every bit pattern is an f32; `from_raw_dt` copies the bytes after
                // checking their length against the shape.
                let tensor = unsafe { Tensor::from_raw_dt(f32::datum_type(), &shape, data)? };
                tvec!(model.add_const(name, tensor)?)
            }
            _ => {
                let op = read_op(tag, &mut r)?;
                let inputs = r.inputs(&wired)?;
                let facts = inputs
                    .iter()
                    .map(|o| model.outlet_fact(*o))
                    .collect::<TractResult<TVec<_>>>()?;
                check_inputs(op.as_ref(), &facts)?;
                drop(facts);
                // tract's operators index their inputs as their graphs give them: a panic
                // left past the checks above is this form's error, not the process's end.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    model.wire_node(name, op, &inputs)
                }))
                .map_err(|_| format_err!("an operator that does not fit its inputs"))??
            }
        };
        wired.push(outlets);
    }
    let inputs = r.inputs(&wired)?;
    model.set_input_outlets(&inputs)?;
    let outputs = r.inputs(&wired)?;
    model.select_output_outlets(&outputs)?;
    ensure!(r.0.is_empty(), "bytes after its end");
    Ok(Read { model, output_shape })
}

/// Whether `op` can take inputs of these facts: their number and, for the operators that
/// name axes, their ranks.
fn check_inputs(op: &dyn TypedOp, facts: &[&TypedFact]) -> TractResult<()> {
    let rank = |i: usize| facts.get(i).map_or(0, |f| f.rank());
    let ok = if op.is::<TypedBinOp>() {
        facts.len() == 2 && rank(0) == rank(1)
    } else if op.is::<ElementWiseOp>() {
        facts.len() == 1
    } else if let Some(op) = op.downcast_ref::<EinSum>() {
        facts.len() == op.axes.input_count()
            && (0..facts.len()).all(|i| rank(i) == op.axes.rank(InOut::In(i)))
    } else if let Some(op) = op.downcast_ref::<Reduce>() {
        facts.len() == 1 && op.axes.iter().all(|&a| a < rank(0))
    } else if let Some(op) = op.downcast_ref::<AxisOp>() {
        facts.len() == 1
            && match *op {
                AxisOp::Add(a) => a <= rank(0),
                AxisOp::Rm(a) => a < rank(0),
                AxisOp::Move(a, b) => a < rank(0) && b < rank(0),
                AxisOp::Reshape(..) => false,
            }
    } else if let Some(op) = op.downcast_ref::<Concat>() {
        !facts.is_empty() && facts.iter().all(|f| f.rank() == rank(0) && op.axis() < f.rank())
    } else {
        // medinfer's convolutions check their inputs' sizes as they run.
        !facts.is_empty() && rank(0) == 4
    };
    ensure!(ok, "{} with inputs it cannot take", op.name());
    Ok(())
}

fn read_op(tag: u8, r: &mut Reader) -> TractResult<Box<dyn TypedOp>> {
    let bad = || format_err!("an operator with fields out of range");
    Ok(match tag {
        tag::CONV => Box::new(DirectConv::from_words(&r.words()?).ok_or_else(bad)?),
        tag::DEPTHWISE => Box::new(DepthwiseConv::from_words(&r.words()?).ok_or_else(bad)?),
        tag::CONCAT => Box::new(Concat::from_words(&r.words()?).ok_or_else(bad)?),
        tag::EXPAND_DEPTHWISE => {
            Box::new(ExpandDepthwise::from_words(&r.words()?).ok_or_else(bad)?)
        }
        tag::BANDED => Box::new(Banded::from_words(&r.words()?).ok_or_else(bad)?),
        tag::BINARY => Box::new(binary(std::str::from_utf8(r.bytes()?)?).ok_or_else(bad)?),
        tag::ELEMENT_WISE => {
            Box::new(element_wise(std::str::from_utf8(r.bytes()?)?).ok_or_else(bad)?)
        }
        tag::EINSUM => {
            let axes: AxesMapping = std::str::from_utf8(r.bytes()?)?.parse()?;
            Box::new(EinSum::new(axes, f32::datum_type()))
        }
        tag::REDUCE => {
            let words = r.words()?;
            let (&reducer, axes) = words.split_first().ok_or_else(bad)?;
            let reducer = REDUCERS.get(small(reducer).ok_or_else(bad)?).ok_or_else(bad)?;
            let axes =
                axes.iter().map(|&a| small(a).ok_or_else(bad)).collect::<TractResult<_>>()?;
            Box::new(Reduce::new(axes, *reducer))
        }
        tag::AXIS => {
            let w = r.words()?;
            let [kind, a, b] = w[..] else { return Err(bad()) };
            let (a, b) = (small(a).ok_or_else(bad)?, small(b).ok_or_else(bad)?);
            Box::new(match kind {
                0 => AxisOp::Add(a),
                1 => AxisOp::Rm(a),
                2 => AxisOp::Move(a, b),
                _ => return Err(bad()),
            })
        }
        _ => bail!("an unknown operator tag {tag}"),
    })
}

fn put_u32(p: &mut Vec<u8>, n: usize) {
    p.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(p: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(p, bytes.len());
    p.extend_from_slice(bytes);
}

fn put_words(p: &mut Vec<u8>, words: &[u64]) {
    put_u32(p, words.len());
    for w in words {
        p.extend_from_slice(&w.to_le_bytes());
    }
}

fn put_outlet(p: &mut Vec<u8>, index: &[u32], outlet: OutletId) -> TractResult<()> {
    let i = index[outlet.node];
    ensure!(i != u32::MAX, "a node's input comes after it in evaluation order");
    p.extend_from_slice(&i.to_le_bytes());
    put_u32(p, outlet.slot);
    Ok(())
}

/// `v` as a `usize` when it is at most 2³¹: what the form's dimensions and axes are held to.
fn small(v: u64) -> Option<usize> {
    usize::try_from(v).ok().filter(|&v| v <= 1 << 31)
}

/// The unread rest of a form: every read checks its length first, so that a short or
/// damaged form is an error, never a panic or an allocation of a size it names.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> TractResult<&'a [u8]> {
        ensure!(n <= self.0.len(), "cut short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn count(&mut self) -> TractResult<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn bytes(&mut self) -> TractResult<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    fn words(&mut self) -> TractResult<Vec<u64>> {
        let n = self.count()?;
        let bytes = self.take(n.checked_mul(8).ok_or_else(|| format_err!("cut short"))?)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// A shape: at most 8 dimensions of at most 2³¹ each (tract's facts hold them as
    /// `i64`, and panic past that).
    fn dims(&mut self) -> TractResult<Vec<usize>> {
        let words = self.words()?;
        ensure!(words.len() <= 8, "a shape of rank {}", words.len());
        words
            .into_iter()
            .map(|d| small(d).ok_or_else(|| format_err!("a dimension of {d}")))
            .collect()
    }

    /// A list of outlets of the nodes already wired.
    fn inputs(&mut self, wired: &[TVec<OutletId>]) -> TractResult<TVec<OutletId>> {
        (0..self.count()?)
            .map(|_| {
                let (node, slot) = (self.count()?, self.count()?);
                wired
                    .get(node)
                    .and_then(|o| o.get(slot))
                    .copied()
                    .ok_or_else(|| format_err!("an input that is not an earlier node's output"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::testing::{Case, value};
    use tract_onnx::tract_core::ops::math;

    /// A graph of every tract operator the form names, medinfer's concatenation among them:
    /// `[1, 4, 3, 5]` through arithmetic by constants, element-wise functions, axis moves, an
    /// `EinSum` and a reduction.
    fn arithmetic() -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 3, 5]))?;
        let per_channel = |m: &mut TypedModel, name: &str, salt: usize| {
            let v: Vec<f32> = (0..4).map(|i| value(i, salt) + 1.5).collect();
            m.add_const(name, tensor1(&v).into_shape(&[1, 4, 1, 1])?)
        };
        let mut y = x;
        for (i, op) in
            [math::mul(), math::add(), math::sub(), math::div(), math::max(), math::min()]
                .into_iter()
                .enumerate()
        {
            let c = per_channel(&mut m, &format!("c{i}"), i)?;
            y = m.wire_node(format!("bin{i}"), op, &[y, c])?[0];
        }
        let positive = m.wire_node("abs", math::abs(), &[y])?[0];
        let half = m.add_const("half", tensor0(0.5f32).broadcast_into_rank(4)?)?;
        let root = m.wire_node("pow", math::pow(), &[positive, half])?[0];
        for name in ELEMENT_WISE {
            let op = element_wise(name).ok_or_else(|| format_err!("{name}"))?;
            // The positive branch for those that need it (Ln, Sqrt, Rsqrt, Recip).
            let input = if ["Ln", "Sqrt", "Rsqrt", "Recip"].contains(&name) { root } else { y };
            let z = m.wire_node(name, op, &[input])?[0];
            y = m.wire_node(format!("{name}.sum"), math::add(), &[y, z])?[0];
        }
        let both = m.wire_node(
            "concat",
            Concat::from_words(&[1]).ok_or_else(|| format_err!("axis"))?,
            &[y, root],
        )?[0];
        let moved = m.wire_node("move", AxisOp::Move(1, 3), &[both])?[0];
        let added = m.wire_node("add_axis", AxisOp::Add(0), &[moved])?[0];
        let removed = m.wire_node("rm_axis", AxisOp::Rm(0), &[added])?[0];
        let w: Vec<f32> = (0..16).map(|i| value(i, 9)).collect();
        let w = m.add_const("w", tensor1(&w).into_shape(&[8, 2])?)?;
        let axes: AxesMapping = "abcd,de->abce".parse()?;
        let product = m.wire_node("einsum", EinSum::new(axes, f32::datum_type()), &[removed, w])?;
        let sum = m.wire_node("sum", Reduce::new(tvec!(2), Reducer::Sum), &product)?;
        m.select_output_outlets(&sum)?;
        Ok(m)
    }

    fn run(model: TypedModel, input: &Tensor) -> Vec<f32> {
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
        let out = plan.run(tvec!(input.clone().into_tvalue())).expect("run");
        out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec()
    }

    /// A 3×3 convolution of one image of `c` channels to as many, in `group`s, on `hw` ×
    /// `hw` at `stride`, padding 1 all round.
    fn conv3x3(c: usize, group: usize, hw: usize, stride: usize) -> Case {
        let (k, s, before, after) = ([3, 3], [stride; 2], [1, 1], [1, 1]);
        Case { n: 1, c, m: c, group, hw: [hw, hw], k, s, before, after, bias_per_channel: true }
    }

    const SHA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A graph written, read back and written again gives the same bytes, and runs to the
    /// same numbers bit for bit: tract's operators above, and medinfer's convolutions (dense
    /// with a fused clamp, depthwise, max pooling) from conv's test cases.
    #[test]
    fn round_trips_every_operator_it_names() {
        let input: Vec<f32> = (0..60).map(|i| value(i, 1)).collect();
        let input = tensor1(&input).into_shape(&[1, 4, 3, 5]).expect("input");
        let mut graphs = vec![(arithmetic().expect("graph"), input)];
        let dense = Case { m: 8, ..conv3x3(3, 1, 20, 2) };
        let depthwise = conv3x3(6, 6, 14, 1);
        for case in [dense, depthwise] {
            let mut model = case.model();
            let conv = model.output_outlets().expect("outputs")[0];
            let six = model
                .add_const("six", tensor0(6f32).broadcast_into_rank(4).expect("rank"))
                .expect("six");
            let clamped = model.wire_node("min", math::min(), &[conv, six]).expect("min");
            model.select_output_outlets(&clamped).expect("outputs");
            crate::conv::substitute(&mut model).expect("substitute");
            crate::depthwise::substitute(&mut model).expect("substitute");
            assert_eq!(crate::conv::fuse_clamps(&mut model).expect("fuse"), 1);
            let [h, w] = case.hw;
            let input: Vec<f32> = (0..case.c * h * w).map(|i| value(i, 2)).collect();
            let input = tensor1(&input).into_shape(&[1, case.c, h, w]).expect("input");
            graphs.push((model, input));
        }
        for (i, (model, input)) in graphs.into_iter().enumerate() {
            let shape = vec!["N".to_string(), "7".to_string()];
            let form = write(&model, SHA, &shape).expect("write").expect("a form");
            let read = read(&form, SHA).expect("read");
            assert_eq!(read.output_shape, shape);
            let again = write(&read.model, SHA, &shape).expect("write").expect("a form");
            assert!(again == form, "graph {i}: the form changed on a round trip");
            assert_eq!(run(read.model, &input), run(model, &input), "graph {i}");
        }
    }

    /// A graph with an operator the form does not name (tract's `Conv`) has no form.
    #[test]
    fn has_no_form_for_an_operator_it_does_not_name() {
        assert!(write(&conv3x3(2, 1, 5, 1).model(), SHA, &[]).expect("write").is_none());
    }

    /// Every cut of a form is refused, as is one for another build or model, or with bytes
    /// past its end; a payload altered anywhere and signed again is read or refused, never a
    /// panic.
    #[test]
    fn a_cut_or_altered_form_is_refused() {
        let form = write(&arithmetic().expect("graph"), SHA, &[]).expect("write").expect("a form");
        for len in 0..form.len() {
            assert!(read(&form[..len], SHA).is_err(), "cut at {len}");
        }
        let message = |bytes: &[u8], sha: &str| match read(bytes, sha) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert!(message(&form, &SHA.replace('0', "1")).contains("another model file"));
        let mut other_build = form.clone();
        other_build[MAGIC.len() + 4] ^= 1;
        assert!(message(&other_build, SHA).contains("another build"));
        // The payload starts after the magic, the key, the source sha256 and the digest.
        let start = MAGIC.len() + 4 + key().len() + 4 + SHA.len() + 32;
        let signed = |payload: &[u8]| {
            let mut f = form[..start - 32].to_vec();
            f.extend_from_slice(&Sha256::digest(payload));
            f.extend_from_slice(payload);
            f
        };
        assert!(read(&signed(&form[start..]), SHA).is_ok());
        let longer = [&form[start..], &[0]].concat();
        assert!(message(&signed(&longer), SHA).contains("after its end"));
        for at in start..form.len() {
            for byte in [0x00, 0x07, 0xff] {
                let mut payload = form[start..].to_vec();
                payload[at - start] = byte;
                let _ = read(&signed(&payload), SHA);
            }
        }
    }
}
