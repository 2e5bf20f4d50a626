//! A 1×1 expansion and the depthwise convolution after it as one operator (the x86-64 CPU
//! plan): MobileNetV2's inverted residual blocks widen 16–96 channels to 6 times as many,
//! then convolve each of them 3×3. Apart, the wide tensor between the two (96 × 112 × 112:
//! 4.8 MB) is written out to L3 or memory and read back. Here the expansion
//! ([`DirectConv::run_by_panels`]) computes a panel of its channels at a time into a scratch
//! of one thread's (8 planes of 112 × 112: 400 KB, in L2), and the depthwise convolution
//! reads them from there at once; the wide tensor never exists. Same sums, same order: the
//! output is the two operators', bit for bit.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::conv::DirectConv;
use crate::depthwise::DepthwiseConv;

/// The expansion then the depthwise convolution. Inputs: the image, the expansion's packed
/// kernel and bias, the depthwise kernel and bias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpandDepthwise {
    expand: DirectConv,
    depthwise: DepthwiseConv,
}

impl ExpandDepthwise {
    /// The two operators' fields as numbers, for the plan form: the expansion's, then the
    /// depthwise convolution's.
    pub(crate) fn to_words(&self) -> Vec<u64> {
        let mut words = self.expand.to_words();
        words.extend(self.depthwise.to_words());
        words
    }

    /// The operator [`ExpandDepthwise::to_words`] gave these numbers for.
    pub(crate) fn from_words(w: &[u64]) -> Option<ExpandDepthwise> {
        let n = DirectConv::WORDS;
        let op = ExpandDepthwise {
            expand: DirectConv::from_words(w.get(..n)?)?,
            depthwise: DepthwiseConv::from_words(w.get(n..)?)?,
        };
        op.fits().then_some(op)
    }

    /// Whether the depthwise convolution takes the expansion's output, and the expansion runs
    /// by panels.
    fn fits(&self) -> bool {
        let (channels, _, _) = self.depthwise.shape();
        self.expand.runs_by_panels()
            && self.depthwise.convolves()
            && channels == self.expand.output_channels()
            && self.depthwise.plane_sizes().0 == self.expand.output_plane()
    }
}

/// Fuses each medinfer direct convolution that runs by panels into the depthwise convolution
/// that is its only consumer ([`ExpandDepthwise`]), then each depthwise convolution left
/// into the 1×1 projection that is its only consumer where that runs by bands
/// ([`DepthwiseProject`]). Run after [`crate::conv::fuse_clamps`], so that each keeps its
/// clamp. Returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        if node.inputs.len() != 3 {
            continue;
        }
        let producer = model.node(node.inputs[0].node);
        let op: Box<dyn TypedOp> = if let (Some(expand), Some(depthwise)) =
            (producer.op_as::<DirectConv>(), node.op_as::<DepthwiseConv>())
        {
            let op = ExpandDepthwise { expand: expand.clone(), depthwise: depthwise.clone() };
            if !op.fits() {
                continue;
            }
            Box::new(op)
        } else if let (Some(depthwise), Some(project)) =
            (producer.op_as::<DepthwiseConv>(), node.op_as::<DirectConv>())
        {
            let op = DepthwiseProject { depthwise: depthwise.clone(), project: project.clone() };
            if !op.fits() {
                continue;
            }
            Box::new(op)
        } else {
            continue;
        };
        let alone = producer.outputs[0].successors.len() == 1
            && !model.output_outlets()?.contains(&node.inputs[0]);
        if !alone || producer.inputs.len() != 3 {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec!();
        for outlet in producer.inputs.iter().chain(&node.inputs[1..]) {
            inputs.push(patch.tap_model(model, *outlet)?);
        }
        let wire = patch.wire_node(format!("{}.fused", node.name), op, &inputs)?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

impl Op for ExpandDepthwise {
    fn name(&self) -> StaticName {
        "medinfer.ExpandDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.expand.info()?;
        info.extend(self.depthwise.info()?);
        Ok(info)
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for ExpandDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        fn slice(t: &TValue) -> TractResult<&[f32]> {
            t.try_as_plain_ram()?.as_slice::<f32>()
        }
        let [input, kernel, bias, dw_kernel, dw_bias] = &inputs[..] else {
            bail!("{}: {} inputs", self.name(), inputs.len());
        };
        let (input, kernel, bias) = (slice(input)?, slice(kernel)?, slice(bias)?);
        let (dw_kernel, dw_bias) = (slice(dw_kernel)?, slice(dw_bias)?);
        let (channels, [oh, ow], taps) = self.depthwise.shape();
        let per_image = self.expand.input_len();
        if input.len() % per_image != 0
            || (bias.len() != channels && bias.len() != 1)
            || dw_kernel.len() != channels * taps
            || (dw_bias.len() != channels && dw_bias.len() != 1)
        {
            bail!("{}: inputs of unexpected sizes", self.name());
        }
        let n = input.len() / per_image;
        // SAFETY: f32 has no invalid bit patterns, and `run_by_panels` hands every plane of
        // the output to the depthwise convolution, which writes all of it.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, channels, oh, ow])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        self.expand.run_by_panels(input, kernel, bias, out, oh * ow, |planes, first, out| {
            self.depthwise.run(planes, first, dw_kernel, dw_bias, out)
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ExpandDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let expanded = self.expand.output_facts(inputs)?;
        let facts: TVec<&TypedFact> = tvec!(&expanded[0]);
        self.depthwise.output_facts(&facts)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let mut cost = self.expand.cost(inputs)?;
        let expanded = self.expand.output_facts(inputs)?;
        cost.extend(self.depthwise.cost(&[&expanded[0]])?);
        Ok(cost)
    }

    as_op!();
}

/// What a band of [`DepthwiseProject`]'s depthwise output may take, all channels: a good
/// part of L2, beside the image rows it reads.
const BAND_BYTES: usize = 128 << 10;

/// A depthwise convolution and the 1×1 projection that is its only consumer as one operator
/// (the x86-64 CPU plan): MobileNetV2's first block convolves 32 channels of 112 × 112
/// (1.6 MB) 3×3, then projects them to 16. Apart, the projection reads the depthwise output
/// back from L3 or memory, 32 plane streams at once. Here the depthwise convolution computes a
/// band of rows of all its channels at a time into a scratch of one thread's
/// ([`DepthwiseConv::run_rows`]), and the projection sums that band straight into its output
/// ([`DirectConv::run_by_bands`]) while it is in L2; bands side by side on tract's executor.
/// Same sums, same order: the output is the two operators', bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseProject {
    depthwise: DepthwiseConv,
    project: DirectConv,
}

impl DepthwiseProject {
    /// The two operators' fields as numbers, for the plan form: the projection's (of a
    /// fixed count), then the depthwise convolution's.
    pub(crate) fn to_words(&self) -> Vec<u64> {
        let mut words = self.project.to_words();
        words.extend(self.depthwise.to_words());
        words
    }

    /// The operator [`DepthwiseProject::to_words`] gave these numbers for.
    pub(crate) fn from_words(w: &[u64]) -> Option<DepthwiseProject> {
        let n = DirectConv::WORDS;
        let op = DepthwiseProject {
            project: DirectConv::from_words(w.get(..n)?)?,
            depthwise: DepthwiseConv::from_words(w.get(n..)?)?,
        };
        op.fits().then_some(op)
    }

    /// Whether the projection takes the depthwise convolution's output and runs by bands.
    fn fits(&self) -> bool {
        let (channels, [oh, ow], _) = self.depthwise.shape();
        self.depthwise.convolves()
            && self.project.runs_by_bands()
            && self.project.input_len() == channels * oh * ow
            && self.project.output_plane() == oh * ow
    }

    /// Output rows per band: as many as [`BAND_BYTES`] holds of the depthwise output, even
    /// (its blocks are two rows); all of them where it runs whole planes only.
    fn band(&self) -> usize {
        let (channels, [oh, ow], _) = self.depthwise.shape();
        let rows = BAND_BYTES / (channels * ow * size_of::<f32>()).max(1);
        if !self.depthwise.runs_by_rows() || rows < 2 {
            return oh.max(1);
        }
        (rows & !1).min(oh)
    }
}

impl Op for DepthwiseProject {
    fn name(&self) -> StaticName {
        "medinfer.DepthwiseProject".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.depthwise.info()?;
        info.extend(self.project.info()?);
        Ok(info)
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseProject {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        fn slice(t: &TValue) -> TractResult<&[f32]> {
            t.try_as_plain_ram()?.as_slice::<f32>()
        }
        let [input, dw_kernel, dw_bias, kernel, bias] = &inputs[..] else {
            bail!("{}: {} inputs", self.name(), inputs.len());
        };
        let (input, dw_kernel, dw_bias) = (slice(input)?, slice(dw_kernel)?, slice(dw_bias)?);
        let (kernel, bias) = (slice(kernel)?, slice(bias)?);
        let (channels, [oh, ow], taps) = self.depthwise.shape();
        let per_image = channels * self.depthwise.plane_sizes().0;
        let m = self.project.output_channels();
        if per_image == 0
            || input.len() % per_image != 0
            || dw_kernel.len() != channels * taps
            || (dw_bias.len() != channels && dw_bias.len() != 1)
            || (bias.len() != m && bias.len() != 1)
        {
            bail!("{}: inputs of unexpected sizes", self.name());
        }
        let n = input.len() / per_image;
        // SAFETY: f32 has no invalid bit patterns, and `run_by_bands` writes every row of
        // every plane of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, m, oh, ow])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        self.project.run_by_bands(kernel, bias, out, self.band(), |image, rows, planes| {
            let src = &input[image * per_image..][..per_image];
            self.depthwise.run_rows(src, 0, dw_kernel, dw_bias, planes, rows)
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DepthwiseProject {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let convolved = self.depthwise.output_facts(inputs)?;
        self.project.output_facts(&[&convolved[0]])
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let mut cost = self.depthwise.cost(inputs)?;
        let convolved = self.depthwise.output_facts(inputs)?;
        cost.extend(self.project.cost(&[&convolved[0]])?);
        Ok(cost)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::testing::value;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// An inverted residual block of MobileNetV2's as tract declutters it, on `n` images of
    /// `c` channels, `hw` × `hw`: where `expand`, a 1×1 `EinSum` to `m` channels, its bias
    /// and ReLU6 (else `m` is `c`); a 3×3 depthwise `Conv` at `stride` and its ReLU6; where
    /// `project`, a 1×1 `EinSum` to that many channels and its bias. Where `shared`, the
    /// tensor the fusion would drop (the expansion's, else the depthwise output) is also a
    /// model output.
    struct Block {
        n: usize,
        c: usize,
        m: usize,
        hw: usize,
        stride: usize,
        expand: bool,
        project: Option<usize>,
        shared: bool,
    }

    impl Block {
        fn model(&self) -> TractResult<TypedModel> {
            let Block { n, c, m, hw, stride, expand, project, shared } = *self;
            let mut g = TypedModel::default();
            let x = g.add_source("x", f32::fact([n, c, hw, hw]))?;
            let per = |g: &mut TypedModel, name: &str, m: usize, salt: usize| {
                let v: Vec<f32> = (0..m).map(|i| value(i, salt)).collect();
                g.add_const(name, tensor1(&v).into_shape(&[1, m, 1, 1])?)
            };
            let relu6 = |g: &mut TypedModel, name: &str, y: OutletId| -> TractResult<OutletId> {
                let zero = tensor0(0f32).broadcast_into_rank(4)?;
                let zero = g.add_const(format!("{name}.0"), zero)?;
                let six =
                    g.add_const(format!("{name}.6"), tensor0(6f32).broadcast_into_rank(4)?)?;
                let y = g.wire_node(format!("{name}.max"), math::max(), &[y, zero])?[0];
                Ok(g.wire_node(format!("{name}.min"), math::min(), &[y, six])?[0])
            };
            let pointwise = |g: &mut TypedModel, name: &str, x, c: usize, m: usize, salt| {
                let w: Vec<f32> = (0..m * c).map(|i| value(i, salt) * 2.0).collect();
                let w = g.add_const(format!("{name}.w"), tensor1(&w).into_shape(&[m, c])?)?;
                let einsum = EinSum::new("NIHW,OI->NOHW".parse()?, f32::datum_type());
                let y = g.wire_node(name, einsum, &[x, w])?[0];
                let b = per(g, &format!("{name}.bias"), m, salt + 1)?;
                Ok::<_, TractError>(g.wire_node(format!("{name}.add"), math::add(), &[y, b])?[0])
            };
            let wide = if expand {
                let y = pointwise(&mut g, "expand", x, c, m, 1)?;
                relu6(&mut g, "expand.relu6", y)?
            } else {
                x
            };
            let k: Vec<f32> = (0..m * 9).map(|i| value(i, 3)).collect();
            let k = g.add_const("dw.k", tensor1(&k).into_shape(&[m, 1, 3, 3])?)?;
            let b: Vec<f32> = (0..m).map(|i| value(i, 4)).collect();
            let b = g.add_const("dw.b", tensor1(&b))?;
            let conv = Conv {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: [3, 3].into_iter().collect(),
                    padding: PaddingSpec::Explicit(
                        [1, 1].into_iter().collect(),
                        [1, 1].into_iter().collect(),
                    ),
                    dilations: None,
                    strides: Some([stride, stride].into_iter().collect()),
                    input_channels: m,
                    output_channels: m,
                },
                kernel_fmt: KernelFormat::OIHW,
                group: m,
                q_params: None,
            };
            let y = g.wire_node("dw", conv, &[wide, k, b])?[0];
            let convolved = relu6(&mut g, "dw.relu6", y)?;
            let out = match project {
                Some(p) => pointwise(&mut g, "project", convolved, m, p, 6)?,
                None => convolved,
            };
            let dropped = if expand { wide } else { convolved };
            let outputs = if shared { vec![out, dropped] } else { vec![out] };
            g.select_output_outlets(&outputs)?;
            Ok(g)
        }

        fn input(&self) -> Tensor {
            let Block { n, c, hw, .. } = *self;
            let input: Vec<f32> = (0..n * c * hw * hw).map(|i| value(i, 5)).collect();
            tensor1(&input).into_shape(&[n, c, hw, hw]).expect("input")
        }
    }

    /// medinfer's rewrites, fusing or not; returns the outputs and how many it fused.
    fn run(mut g: TypedModel, fuse: bool, input: &Tensor) -> (Vec<Vec<f32>>, usize) {
        crate::conv::substitute_pointwise(&mut g, false).expect("pointwise");
        crate::depthwise::substitute(&mut g).expect("depthwise");
        crate::conv::fuse_clamps(&mut g).expect("clamps");
        let fused = if fuse { substitute(&mut g).expect("fuse") } else { 0 };
        let plan = g.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
        let out = plan.run(tvec!(input.clone().into_tvalue())).expect("run");
        let values = out
            .iter()
            .map(|t| t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec())
            .collect();
        (values, fused)
    }

    /// Fused, the block gives the two operators' outputs bit for bit, at stride 1 and 2, with
    /// positions not a multiple of a block; nothing is fused where the expansion's output is
    /// used elsewhere too.
    #[test]
    fn fused_is_the_two_operators() {
        for (c, m, hw, stride) in [(8, 48, 12, 1), (5, 24, 9, 2), (16, 96, 17, 2)] {
            let mut block =
                Block { n: 1, c, m, hw, stride, expand: true, project: None, shared: false };
            let input = block.input();
            let (apart, _) = run(block.model().expect("graph"), false, &input);
            let (together, fused) = run(block.model().expect("graph"), true, &input);
            assert_eq!(fused, 1, "{c} -> {m} on {hw}, stride {stride}");
            assert!(apart == together, "{c} -> {m} on {hw}, stride {stride}: outputs differ");
            block.shared = true;
            let (_, fused) = run(block.model().expect("graph"), true, &input);
            assert_eq!(fused, 0, "an expansion used twice is left apart");
        }
    }

    /// A depthwise convolution and its projection, fused, give the two operators' outputs bit
    /// for bit: at stride 1 and 2, in bands of rows with a short last band (odd where it
    /// can be), output channels not a multiple of a panel, two images; nothing is fused where
    /// the depthwise output is used elsewhere too, and an expansion before the depthwise
    /// convolution is fused with it first.
    #[test]
    fn projected_is_the_two_operators() {
        for (n, c, p, hw, stride) in
            [(1, 32, 16, 112, 1), (2, 64, 20, 71, 1), (1, 48, 24, 121, 2), (2, 8, 8, 9, 2)]
        {
            let what = format!("{n} × {c} -> {p} on {hw}, stride {stride}");
            let mut block =
                Block { n, c, m: c, hw, stride, expand: false, project: Some(p), shared: false };
            let input = block.input();
            let (apart, _) = run(block.model().expect("graph"), false, &input);
            let (together, fused) = run(block.model().expect("graph"), true, &input);
            // The smallest case's projection may run as `run_small`, which is left apart.
            if hw >= 16 {
                assert_eq!(fused, 1, "{what}");
            }
            assert!(apart == together, "{what}: outputs differ");
            block.shared = true;
            let (_, fused) = run(block.model().expect("graph"), true, &input);
            assert_eq!(fused, 0, "{what}: a depthwise output used twice is left apart");
        }
        let block = Block {
            n: 1,
            c: 8,
            m: 48,
            hw: 28,
            stride: 1,
            expand: true,
            project: Some(16),
            shared: false,
        };
        let input = block.input();
        let (apart, _) = run(block.model().expect("graph"), false, &input);
        let mut g = block.model().expect("graph");
        crate::conv::substitute_pointwise(&mut g, false).expect("pointwise");
        crate::depthwise::substitute(&mut g).expect("depthwise");
        crate::conv::fuse_clamps(&mut g).expect("clamps");
        assert_eq!(substitute(&mut g).expect("fuse"), 1);
        assert!(g.nodes().iter().any(|n| n.op_is::<ExpandDepthwise>()));
        let (together, _) = run(block.model().expect("graph"), true, &input);
        assert!(apart == together, "expansion, depthwise and projection: outputs differ");
    }
}
