//! A 1×1 expansion and the depthwise convolution after it as one operator (the x86-64 CPU
//! plan): MobileNetV2's inverted residual blocks widen 16–96 channels to 6 times as many,
//! then convolve each of them 3×3. Apart, the wide tensor between the two (96 × 112 × 112:
//! 4.8 MB) is written out to L3 or memory and read back. Here the expansion
//! ([`DirectConv::run_by_panels`]) computes a panel of its channels at a time into a scratch
//! of one thread's (8 planes of 112 × 112: 400 KB, in L2), and the depthwise convolution
//! reads them from there at once; the wide tensor never exists. Same sums, same order: the
//! output is the two operators', bit for bit.
//!
//! And chains run a band of rows at a time ([`Banded`]): a depthwise convolution or max
//! pooling with the convolution before it and/or the 1×1 projection after it, each band
//! through all of them while it is in L2 — MobileNetV2's stem, first depthwise convolution
//! and projection, its two 56 × 56 blocks whole, DenseNet-121's stem and max pooling.

use std::ops::Range;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use crate::conv::{DirectConv, SendPtr, at_least};
use crate::depthwise::{DepthwiseConv, Window};

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
/// into the 1×1 projection that is its only consumer where that runs by bands, and each
/// convolution with an output larger than [`SPILLS`] into the max pooling that is its only
/// consumer ([`Banded`]; the producer of such a depthwise convolution joins it too, where it
/// computes bands of rows). Run after [`crate::conv::fuse_clamps`], so that each keeps its
/// clamp. Returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(producer) = node.inputs.first().map(|i| model.node(i.node)) else { continue };
        let done = if let (Some(before), Some(pool)) =
            (producer.op_as::<DirectConv>(), node.op_as::<DepthwiseConv>())
            && !pool.convolves()
        {
            let [oh, ow] = before.output_size();
            let op =
                Banded { before: Some(before.clone()), depthwise: pool.clone(), project: None };
            before.output_channels() * oh * ow * size_of::<f32>() > SPILLS
                && op.fits()
                && fuse_into(model, id, op)?
        } else if let (Some(expand), Some(depthwise)) =
            (producer.op_as::<DirectConv>(), node.op_as::<DepthwiseConv>())
        {
            let op = ExpandDepthwise { expand: expand.clone(), depthwise: depthwise.clone() };
            // Where the depthwise convolution's projection and the expansion would join it
            // band by band, they do that instead (below).
            let project = match &node.outputs[0].successors[..] {
                [next] => model.node(next.node).op_as::<DirectConv>(),
                _ => None,
            };
            let chain = project.is_some_and(|project| {
                let before = Some(expand.clone());
                let (depthwise, project) = (depthwise.clone(), Some(project.clone()));
                let [oh, ow] = expand.output_size();
                expand.output_channels() * oh * ow * size_of::<f32>() > SPILLS
                    && Banded { before, depthwise, project }.fits()
            });
            !chain && op.fits() && fuse_into(model, id, op)?
        } else if let (Some(depthwise), Some(project)) =
            (producer.op_as::<DepthwiseConv>(), node.op_as::<DirectConv>())
        {
            let op = Banded {
                before: None,
                depthwise: depthwise.clone(),
                project: Some(project.clone()),
            };
            op.fits() && fuse_into(model, id, op)?
        } else {
            false
        };
        fused += usize::from(done);
    }
    // The producers of the depthwise convolutions fused with their projections, where they
    // compute bands of rows: nodes the loop above added.
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(op) = node.op_as::<Banded>().filter(|op| op.before.is_none()) else { continue };
        let Some(before) = model.node(node.inputs[0].node).op_as::<DirectConv>() else {
            continue;
        };
        let op = Banded { before: Some(before.clone()), ..op.clone() };
        if op.fits() && fuse_into(model, id, op)? {
            fused += 1;
        }
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// Replaces node `id` and the producer of its first input with `op`, which takes the
/// producer's inputs and then the node's others: where the producer has three inputs and
/// the node is the only reader of its output (not a model output either). Returns whether
/// it did.
fn fuse_into<O: TypedOp>(model: &mut TypedModel, id: usize, op: O) -> TractResult<bool> {
    let node = model.node(id);
    let producer = model.node(node.inputs[0].node);
    let alone = producer.outputs[0].successors.len() == 1
        && !model.output_outlets()?.contains(&node.inputs[0]);
    if !alone || producer.inputs.len() != 3 {
        return Ok(false);
    }
    let mut patch = TypedModelPatch::default();
    let mut inputs = tvec!();
    for outlet in producer.inputs.iter().chain(&node.inputs[1..]) {
        inputs.push(patch.tap_model(model, *outlet)?);
    }
    let wire = patch.wire_node(format!("{}.fused", node.name), op, &inputs)?;
    patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
    patch.apply(model)?;
    Ok(true)
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

/// What a band of [`Banded`]'s may take, all channels: of the depthwise output, and of the
/// producer's where it has one. Half of Zen 4's L2, beside the image rows it reads.
/// MobileNetV2's first three blocks, one thread, by bands of at most 256 / 512 / 800 KB:
/// the stem's 0.67 / 0.67 / 0.69 ms; the 16 → 96 expansion's 1.56 (one band: 2 rows did
/// not fit) / 0.98 / 0.98 ms; the 24 → 144 one's 0.74 / 0.70 / 0.70 ms.
const BAND_BYTES: usize = 512 << 10;

/// An output larger than L2 (Zen 4's 1 MB). An expansion before a depthwise convolution joins
/// it and the projection band by band ([`Banded`]), rather than by panels
/// ([`ExpandDepthwise`]), only where its output is larger (MobileNetV2's two blocks on
/// 56 × 56: 1.06 → 0.98 ms and 0.75 → 0.70 ms, one thread; the one from 56 × 56 at stride 2
/// into 28 × 28, whose depthwise output is a quarter of that, 0.87 → 0.78 ms, the model
/// 0.988–0.991× on one and two threads); below, band by band was slower (its 28 × 28
/// blocks, 0.42 → 0.44 ms, 0.27 → 0.28 ms). A convolution joins the max pooling after it
/// only where its own output is larger.
pub(crate) const SPILLS: usize = 1 << 20;

thread_local! {
    /// [`Banded`]'s producer's rows for one band, per thread.
    static PRODUCED: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
    /// [`Banded`]'s depthwise output for one band, where no projection takes it, per thread.
    static POOLED: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// A chain of operators run as one band of rows at a time (the x86-64 CPU plan): a
/// depthwise convolution or max pooling, with the convolution before it where that computes
/// bands of rows, and with the 1×1 projection after it where that runs by bands; two of the
/// three at least. MobileNetV2's stem convolves the image into 32 channels of 112 × 112 (1.6
/// MB), the depthwise convolution convolves those 3×3, and the projection takes them to 16;
/// DenseNet-121's stem convolves it into 64 channels of 112 × 112 (3.2 MB), then pools them.
/// Apart, each operator writes its output to L3 or memory and the next reads it back (a
/// projection 32 plane streams at once). Here each band of rows goes through all of them
/// while it is in L2: the producer computes the rows the band's depthwise convolution reads
/// ([`DirectConv::rows_into`]; the rows two bands share computed once on a thread's run of
/// bands), the depthwise convolution the band's rows of all its channels
/// ([`DepthwiseConv::run_rows`]), and the projection sums them straight into its output
/// ([`DirectConv::run_by_bands`]; with AVX2, into rows of a multiple of 8 columns, the
/// depthwise convolution writes the band as the projection's packed blocks,
/// [`DepthwiseConv::run_rows_tiled`]), or the band is copied into the output; bands side by
/// side on tract's executor. Same sums, same order: the output is the operators', bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Banded {
    before: Option<DirectConv>,
    depthwise: DepthwiseConv,
    project: Option<DirectConv>,
}

impl Banded {
    /// The operators' fields as numbers, for the plan form: which of the producer (1) and the
    /// projection (2) there are, their fields (of a fixed count each), then the depthwise
    /// convolution's.
    pub(crate) fn to_words(&self) -> Vec<u64> {
        let has = u64::from(self.before.is_some()) | u64::from(self.project.is_some()) << 1;
        let mut words = vec![has];
        for op in self.before.iter().chain(&self.project) {
            words.extend(op.to_words());
        }
        words.extend(self.depthwise.to_words());
        words
    }

    /// The operator [`Banded::to_words`] gave these numbers for.
    pub(crate) fn from_words(w: &[u64]) -> Option<Banded> {
        let n = DirectConv::WORDS;
        let (&has, mut w) = w.split_first()?;
        let mut conv = |present: bool| -> Option<Option<DirectConv>> {
            if !present {
                return Some(None);
            }
            let op = DirectConv::from_words(w.get(..n)?)?;
            w = w.get(n..)?;
            Some(Some(op))
        };
        if has > 3 {
            return None;
        }
        let (before, project) = (conv(has & 1 != 0)?, conv(has & 2 != 0)?);
        let op = Banded { before, project, depthwise: DepthwiseConv::from_words(w)? };
        op.fits().then_some(op)
    }

    /// Whether the depthwise convolution runs by rows, the chain holds two operators or more,
    /// the producer, where there is one, gives the depthwise convolution's input by rows, and
    /// the projection, where there is one, takes its output and runs by bands. Where the
    /// depthwise convolution runs whole planes only (without AVX2), a chain would be one band:
    /// nothing kept in L2, and the projection on one thread. Apart, MobileNetV2's first
    /// depthwise convolution and projection ran 2–6 % faster on two threads and 2 % on one
    /// (AMD Zen 3 VM, the two plans' runs alternated in one process). With AVX2's masked
    /// depthwise kernel the chains form there too: the whole models 0.985–1.007× against the
    /// same plans without them, on one and two threads (same VM and method).
    fn fits(&self) -> bool {
        let (channels, [oh, ow], _) = self.depthwise.shape();
        let fed = self.before.as_ref().is_none_or(|before| {
            before.runs_by_rows()
                && before.output_channels() == channels
                && before.output_size() == self.depthwise.input_size()
        });
        let projected = self.project.as_ref().is_none_or(|project| {
            project.runs_by_bands()
                && project.input_len() == channels * oh * ow
                && project.output_plane() == oh * ow
        });
        let chained = self.before.is_some() || self.project.is_some();
        self.depthwise.runs_by_rows() && fed && projected && chained
    }

    /// Output rows per band: as many as [`BAND_BYTES`] holds of the depthwise output and the
    /// producer's rows for it, even (the depthwise blocks are two rows); all of them where two
    /// rows do not fit.
    fn band(&self) -> usize {
        let (channels, [oh, ow], _) = self.depthwise.shape();
        let [_, iw] = self.depthwise.input_size();
        let fits = |rows: usize| {
            let produced = match self.before {
                Some(_) => (self.depthwise.input_rows(0..rows).len() + 2) * iw,
                None => 0,
            };
            (rows * ow + produced) * channels * size_of::<f32>() <= BAND_BYTES
        };
        if !fits(2) {
            return oh.max(1);
        }
        let mut rows = 2;
        while rows < oh && fits(rows + 2) {
            rows += 2;
        }
        rows.min(oh)
    }
}

impl Op for Banded {
    fn name(&self) -> StaticName {
        match (&self.before, self.depthwise.convolves(), &self.project) {
            (Some(_), true, Some(_)) => "medinfer.ConvDepthwiseProject".into(),
            (None, true, _) => "medinfer.DepthwiseProject".into(),
            (Some(_), true, None) => "medinfer.ConvDepthwise".into(),
            (Some(_), false, None) => "medinfer.ConvMaxPool".into(),
            (_, false, _) => "medinfer.MaxPoolProject".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = match &self.before {
            Some(before) => before.info()?,
            None => vec![],
        };
        info.extend(self.depthwise.info()?);
        if let Some(project) = &self.project {
            info.extend(project.info()?);
        }
        Ok(info)
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Banded {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let slices = inputs
            .iter()
            .map(|t| t.try_as_plain_ram()?.as_slice::<f32>())
            .collect::<TractResult<Vec<&[f32]>>>()?;
        let wrong = || format_err!("{}: {} inputs", self.name(), inputs.len());
        let (input, produce, mut rest) = match (&self.before, &slices[..]) {
            (None, [input, rest @ ..]) => (*input, None, rest.iter().copied()),
            (Some(before), [input, kernel, bias, rest @ ..]) => {
                (*input, Some((before, *kernel, *bias)), rest.iter().copied())
            }
            _ => return Err(wrong()),
        };
        let (dw_kernel, dw_bias) = match self.depthwise.convolves() {
            true => (rest.next().ok_or_else(wrong)?, rest.next().ok_or_else(wrong)?),
            false => (&[][..], &[][..]),
        };
        let project = match &self.project {
            Some(p) => Some((p, rest.next().ok_or_else(wrong)?, rest.next().ok_or_else(wrong)?)),
            None => None,
        };
        if rest.next().is_some() {
            return Err(wrong());
        }
        let (channels, [oh, ow], taps) = self.depthwise.shape();
        let [ih, iw] = self.depthwise.input_size();
        let per_image = match produce {
            Some((before, ..)) => before.input_len(),
            None => channels * ih * iw,
        };
        let m = project.map_or(channels, |(p, ..)| p.output_channels());
        if per_image == 0
            || input.len() % per_image != 0
            || (self.depthwise.convolves()
                && (dw_kernel.len() != channels * taps
                    || (dw_bias.len() != channels && dw_bias.len() != 1)))
            || project.is_some_and(|(_, _, bias)| bias.len() != m && bias.len() != 1)
        {
            bail!("{}: inputs of unexpected sizes", self.name());
        }
        let n = input.len() / per_image;
        // The producer's padded images, each read by every band of it.
        let padded = match produce {
            Some((before, ..)) if before.pads_for_rows() => input
                .chunks_exact(per_image)
                .map(|image| {
                    let mut padded = Vec::new();
                    before.pad_for_rows(image, &mut padded).map(|()| padded)
                })
                .collect::<TractResult<Vec<_>>>()?,
            _ => vec![],
        };
        // SAFETY: f32 has no invalid bit patterns, and every band of every image is written
        // (by `run_by_bands`, or copied below).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, m, oh, ow])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let band = self.band();
        // The band laid out as the projection's packed image, where the depthwise convolution
        // writes it so: a line a step for the projection, not a plane.
        #[cfg(target_arch = "x86_64")]
        let tiled = project.is_some() && produce.is_some() && DepthwiseConv::tiles_rows(ow);
        #[cfg(not(target_arch = "x86_64"))]
        let tiled = false;
        // The producer's rows for one band: the most a band reads, and a row above and below
        // for its blocks to spill into.
        let stride = (self.depthwise.most_rows_read(band) + 2) * iw;
        // The depthwise output's rows `rows` of image `image` into `planes`.
        let fill = |image: usize, rows: Range<usize>, planes: &mut [f32], above| {
            let Some((before, p_kernel, p_bias)) = produce else {
                let src = &input[image * per_image..][..per_image];
                return self.depthwise.run_rows(src, 0, dw_kernel, dw_bias, planes, rows, None);
            };
            let reads = self.depthwise.input_rows(rows.clone());
            let at = Window { top: reads.start as isize - 1, stride };
            let mut produced = PRODUCED.take();
            let result = (|| {
                let rows_in = at_least(&mut produced, channels * stride);
                // The rows the band above read too, where this thread has just produced them:
                // moved up, not computed again.
                let mut from = reads.start;
                if let Some(above) = above {
                    let above = self.depthwise.input_rows(above);
                    if above.end > reads.start && above.start <= reads.start {
                        let old = (reads.start + 1 - above.start) * iw;
                        let kept = (above.end - reads.start) * iw;
                        for plane in rows_in.chunks_exact_mut(stride) {
                            plane.copy_within(old..old + kept, iw);
                        }
                        from = above.end;
                    }
                }
                if from < reads.end {
                    let src = match padded.get(image) {
                        Some(padded) => &padded[..],
                        None => &input[image * per_image..][..per_image],
                    };
                    before.rows_into(src, p_kernel, p_bias, from..reads.end, rows_in, at)?;
                }
                match tiled {
                    #[cfg(target_arch = "x86_64")]
                    true => {
                        self.depthwise.run_rows_tiled(rows_in, dw_kernel, dw_bias, planes, rows, at)
                    }
                    _ => self.depthwise.run_rows(
                        rows_in,
                        0,
                        dw_kernel,
                        dw_bias,
                        planes,
                        rows,
                        Some(at),
                    ),
                }
            })();
            PRODUCED.set(produced);
            result
        };
        if let Some((project, kernel, bias)) = project {
            project.run_by_bands(kernel, bias, out, band, tiled, fill)?;
            return Ok(tvec!(output.into_tvalue()));
        }
        // The threads write disjoint rows of it: `share_bands` hands each band to one.
        let planes = SendPtr(out.as_mut_ptr());
        let work = n * channels * oh * ow * taps;
        crate::conv::share_bands(n, oh, band, work, |image, rows, above| {
            let mut pooled = POOLED.take();
            let len = rows.len() * ow;
            let band = at_least(&mut pooled, channels * len);
            let result = fill(image, rows.clone(), band, above);
            if result.is_ok() {
                for (c, src) in band.chunks_exact(len).enumerate() {
                    let at = ((image * channels + c) * oh + rows.start) * ow;
                    // SAFETY: rows `rows` of plane `c` of image `image` lie inside the output,
                    // and only this band writes them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), planes.get().add(at), len)
                    };
                }
            }
            POOLED.set(pooled);
            result
        })?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Banded {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let produced = match &self.before {
            Some(before) => before.output_facts(inputs)?,
            None => tvec!(inputs.first().map(|f| (*f).clone()).context("no input")?),
        };
        let convolved = self.depthwise.output_facts(&[&produced[0]])?;
        match &self.project {
            Some(project) => project.output_facts(&[&convolved[0]]),
            None => Ok(convolved),
        }
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (mut cost, produced) = match &self.before {
            Some(before) => (before.cost(inputs)?, before.output_facts(inputs)?),
            None => (tvec!(), tvec!(inputs.first().map(|f| (*f).clone()).context("no input")?)),
        };
        cost.extend(self.depthwise.cost(&[&produced[0]])?);
        if let Some(project) = &self.project {
            let convolved = self.depthwise.output_facts(&[&produced[0]])?;
            cost.extend(project.cost(&[&convolved[0]])?);
        }
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
    /// `c` channels, `hw` × `hw` (where `stem`, on images of that many channels, `2·hw` ×
    /// `2·hw`, through a 3×3 convolution at stride 2, its bias and ReLU6 first): where
    /// `expand`, a 1×1 `EinSum` to `m` channels, its bias and ReLU6 (else `m` is `c`); a 3×3
    /// depthwise `Conv` at `stride` and its ReLU6; where `project`, a 1×1 `EinSum` to that many
    /// channels and its bias. Where `shared`, the tensor the fusion would drop (the
    /// expansion's, else the depthwise output) is also a model output.
    #[derive(Clone, Copy)]
    struct Block {
        n: usize,
        c: usize,
        m: usize,
        hw: usize,
        stride: usize,
        stem: Option<usize>,
        expand: bool,
        project: Option<usize>,
        shared: bool,
    }

    /// One image, no stem, no expansion, no projection, nothing shared.
    fn block(c: usize, hw: usize, stride: usize) -> Block {
        Block { n: 1, c, m: c, hw, stride, stem: None, expand: false, project: None, shared: false }
    }

    /// A 3×3 `Conv` with a padding of 1 all round.
    fn conv3x3(input_channels: usize, output_channels: usize, group: usize, stride: usize) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: [3, 3].into_iter().collect(),
                padding: PaddingSpec::Explicit(
                    [1, 1].into_iter().collect(),
                    [1, 1].into_iter().collect(),
                ),
                dilations: None,
                strides: Some([stride, stride].into_iter().collect()),
                input_channels,
                output_channels,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        }
    }

    fn relu6(g: &mut TypedModel, name: &str, y: OutletId) -> TractResult<OutletId> {
        let zero = g.add_const(format!("{name}.0"), tensor0(0f32).broadcast_into_rank(4)?)?;
        let six = g.add_const(format!("{name}.6"), tensor0(6f32).broadcast_into_rank(4)?)?;
        let y = g.wire_node(format!("{name}.max"), math::max(), &[y, zero])?[0];
        Ok(g.wire_node(format!("{name}.min"), math::min(), &[y, six])?[0])
    }

    /// A 1×1 `EinSum` from `c` to `m` channels and its bias.
    fn pointwise(
        g: &mut TypedModel,
        name: &str,
        x: OutletId,
        [c, m]: [usize; 2],
        salt: usize,
    ) -> TractResult<OutletId> {
        let w: Vec<f32> = (0..m * c).map(|i| value(i, salt) * 2.0).collect();
        let w = g.add_const(format!("{name}.w"), tensor1(&w).into_shape(&[m, c])?)?;
        let einsum = EinSum::new("NIHW,OI->NOHW".parse()?, f32::datum_type());
        let y = g.wire_node(name, einsum, &[x, w])?[0];
        let b: Vec<f32> = (0..m).map(|i| value(i, salt + 1)).collect();
        let b = g.add_const(format!("{name}.bias"), tensor1(&b).into_shape(&[1, m, 1, 1])?)?;
        Ok(g.wire_node(format!("{name}.add"), math::add(), &[y, b])?[0])
    }

    impl Block {
        fn model(&self) -> TractResult<TypedModel> {
            let Block { n, c, m, hw, stride, stem, expand, project, shared } = *self;
            let mut g = TypedModel::default();
            let x = match stem {
                Some(k) => {
                    let x = g.add_source("x", f32::fact([n, k, 2 * hw, 2 * hw]))?;
                    let w: Vec<f32> = (0..c * k * 9).map(|i| value(i, 7)).collect();
                    let w = g.add_const("stem.w", tensor1(&w).into_shape(&[c, k, 3, 3])?)?;
                    let b: Vec<f32> = (0..c).map(|i| value(i, 8)).collect();
                    let b = g.add_const("stem.b", tensor1(&b))?;
                    let y = g.wire_node("stem", conv3x3(k, c, 1, 2), &[x, w, b])?[0];
                    relu6(&mut g, "stem.relu6", y)?
                }
                None => g.add_source("x", f32::fact([n, c, hw, hw]))?,
            };
            let wide = if expand {
                let y = pointwise(&mut g, "expand", x, [c, m], 1)?;
                relu6(&mut g, "expand.relu6", y)?
            } else {
                x
            };
            let k: Vec<f32> = (0..m * 9).map(|i| value(i, 3)).collect();
            let k = g.add_const("dw.k", tensor1(&k).into_shape(&[m, 1, 3, 3])?)?;
            let b: Vec<f32> = (0..m).map(|i| value(i, 4)).collect();
            let b = g.add_const("dw.b", tensor1(&b))?;
            let y = g.wire_node("dw", conv3x3(m, m, m, stride), &[wide, k, b])?[0];
            let convolved = relu6(&mut g, "dw.relu6", y)?;
            let out = match project {
                Some(p) => pointwise(&mut g, "project", convolved, [m, p], 5)?,
                None => convolved,
            };
            let dropped = if expand { wide } else { convolved };
            let outputs = if shared { vec![out, dropped] } else { vec![out] };
            g.select_output_outlets(&outputs)?;
            Ok(g)
        }

        fn input(&self) -> Tensor {
            let (c, hw) = self.stem.map_or((self.c, self.hw), |k| (k, 2 * self.hw));
            let input: Vec<f32> = (0..self.n * c * hw * hw).map(|i| value(i, 5)).collect();
            tensor1(&input).into_shape(&[self.n, c, hw, hw]).expect("input")
        }

        /// The outputs apart and fused (on `threads` threads), and how many it fused.
        fn outputs(&self, threads: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, usize) {
            let input = self.input();
            let (apart, _) = run(self.model().expect("graph"), false, &input);
            let fused = || run(self.model().expect("graph"), true, &input);
            #[cfg(feature = "threads")]
            let (together, fused) = {
                use tract_linalg::multithread::{Executor, multithread_tract_scope};
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let executor = Executor::MultiThread(Arc::new(pool.expect("pool")));
                multithread_tract_scope(executor, fused)
            };
            #[cfg(not(feature = "threads"))]
            let (together, fused) = {
                let _ = threads;
                fused()
            };
            (apart, together, fused)
        }
    }

    /// medinfer's rewrites, fusing or not; returns the outputs and how many it fused.
    fn run(mut g: TypedModel, fuse: bool, input: &Tensor) -> (Vec<Vec<f32>>, usize) {
        crate::conv::substitute(&mut g).expect("dense");
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
            let block = Block { m, expand: true, ..block(c, hw, stride) };
            let (apart, together, fused) = block.outputs(1);
            assert_eq!(fused, 1, "{c} -> {m} on {hw}, stride {stride}");
            assert!(apart == together, "{c} -> {m} on {hw}, stride {stride}: outputs differ");
            let (_, _, fused) = Block { shared: true, ..block }.outputs(1);
            assert_eq!(fused, 0, "an expansion used twice is left apart");
        }
    }

    /// A depthwise convolution and its projection, fused (where the depthwise convolution runs by
    /// rows: AVX2 or AVX-512; elsewhere they stay apart), give the two operators' outputs bit for
    /// bit, and with a stem before them the three operators': at stride 1 and 2, in bands of
    /// rows with a short last band (odd where it can be), output channels not a multiple of a
    /// panel, two images, two threads (the stem rows two bands read computed once on a thread's
    /// run of bands, again where the runs meet); nothing is fused where the depthwise output is
    /// used elsewhere too, and an expansion before the depthwise convolution is fused with it
    /// first.
    #[test]
    fn projected_is_the_two_operators() {
        #[cfg(target_arch = "x86_64")]
        let by_rows = crate::conv::avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let by_rows = false;
        for stem in [None, Some(3)] {
            for (n, c, p, hw, stride, threads) in [
                (1, 32, 16, 112, 1, 1),
                (1, 32, 16, 112, 1, 2),
                (2, 64, 20, 71, 1, 2),
                (2, 24, 20, 57, 1, 2),
                (1, 48, 24, 121, 2, 1),
                (2, 8, 8, 9, 2, 1),
            ] {
                let what =
                    format!("{stem:?}, {n} × {c} -> {p} on {hw}, stride {stride}, {threads}");
                let block = Block { n, stem, project: Some(p), ..block(c, hw, stride) };
                let (apart, together, fused) = block.outputs(threads);
                assert!(apart == together, "{what}: outputs differ");
                // The smallest case's projection may run as `run_small`, which is left apart.
                if hw >= 16 {
                    // Without AVX2 the depthwise convolution runs whole planes only, and
                    // nothing is fused: one band would run the projection on one thread.
                    let want = match (by_rows, stem) {
                        (true, Some(_)) => 2,
                        (true, None) => 1,
                        (false, _) => 0,
                    };
                    assert_eq!(fused, want, "{what}");
                }
                if stem.is_none() {
                    let (_, _, fused) = Block { shared: true, ..block }.outputs(1);
                    assert_eq!(fused, 0, "{what}: a depthwise output used twice is left apart");
                }
            }
        }
        let block = Block { m: 48, expand: true, project: Some(16), ..block(8, 28, 1) };
        let mut g = block.model().expect("graph");
        crate::conv::substitute_pointwise(&mut g, false).expect("pointwise");
        crate::depthwise::substitute(&mut g).expect("depthwise");
        crate::conv::fuse_clamps(&mut g).expect("clamps");
        assert_eq!(substitute(&mut g).expect("fuse"), 1);
        assert!(g.nodes().iter().any(|n| n.op_is::<ExpandDepthwise>()));
        let (apart, together, _) = block.outputs(1);
        assert!(apart == together, "expansion, depthwise and projection: outputs differ");
    }

    /// With an expansion before, where its output is larger than [`SPILLS`] (and the CPU
    /// has AVX2), the three operators fused band by band give their outputs bit for bit, on
    /// one thread and on two.
    #[test]
    fn an_expansion_joins_where_its_output_spills() {
        // MobileNetV2's blocks into and on 56 × 56 and out of it (expansions into 4.8, 1.8
        // and 1.8 MB), the last image row's block packed alone where 113 × 113 positions end
        // inside one; an expansion under `SPILLS` stays by panels.
        for (c, m, p, hw, stride, threads, spills) in [
            (16, 96, 24, 112, 2, 1, true),
            (24, 144, 32, 56, 2, 1, true),
            (24, 144, 24, 56, 1, 2, true),
            (16, 96, 24, 113, 2, 2, true),
            (24, 144, 32, 28, 1, 1, false),
        ] {
            let what = format!("{c} -> {m} -> {p} on {hw}, stride {stride}, {threads} threads");
            let block = Block { m, expand: true, project: Some(p), ..block(c, hw, stride) };
            let (apart, together, fused) = block.outputs(threads);
            assert!(apart == together, "{what}: outputs differ");
            let mut g = block.model().expect("graph");
            crate::conv::substitute_pointwise(&mut g, false).expect("pointwise");
            crate::depthwise::substitute(&mut g).expect("depthwise");
            crate::conv::fuse_clamps(&mut g).expect("clamps");
            substitute(&mut g).expect("fuse");
            let chained = g.nodes().iter().any(|n| n.op_is::<Banded>());
            #[cfg(target_arch = "x86_64")]
            if crate::conv::avx2() {
                assert_eq!((chained, fused), (spills, if spills { 2 } else { 1 }), "{what}");
            }
            let _ = (chained, fused, spills);
        }
    }

    /// DenseNet-121's stem and max pooling, scaled down: a 3×3 convolution at stride 2 into
    /// `c` channels (an output larger than [`SPILLS`]), its ReLU, then a 3×3 max pooling at
    /// stride 2, fused band by band where the CPU has AVX2, give the two operators' outputs
    /// bit for bit: odd pooled rows, two images, two threads.
    #[test]
    fn a_max_pooling_joins_the_convolution_before() {
        use tract_onnx::tract_core::ops::cnn::MaxPool;
        for (n, c, hw, threads) in [(1, 32, 194, 1), (2, 40, 182, 2), (1, 48, 166, 2)] {
            let what = format!("{n} × 3 -> {c} on {hw}, {threads} threads");
            let mut g = TypedModel::default();
            let x = g.add_source("x", f32::fact([n, 3, hw, hw])).expect("source");
            let w: Vec<f32> = (0..c * 27).map(|i| value(i, 7)).collect();
            let w = tensor1(&w).into_shape(&[c, 3, 3, 3]).expect("w");
            let w = g.add_const("stem.w", w).expect("w");
            let b: Vec<f32> = (0..c).map(|i| value(i, 8)).collect();
            let b = g.add_const("stem.b", tensor1(&b)).expect("b");
            let y = g.wire_node("stem", conv3x3(3, c, 1, 2), &[x, w, b]).expect("stem")[0];
            let y = relu6(&mut g, "stem.relu6", y).expect("relu");
            let pool_spec =
                PoolSpec { input_channels: c, output_channels: c, ..conv3x3(c, c, 1, 2).pool_spec };
            let pool = MaxPool { pool_spec, with_index_outputs: None };
            let y = g.wire_node("pool", pool, &[y]).expect("pool")[0];
            g.select_output_outlets(&[y]).expect("outputs");
            let input: Vec<f32> = (0..n * 3 * hw * hw).map(|i| value(i, 5)).collect();
            let input = tensor1(&input).into_shape(&[n, 3, hw, hw]).expect("input");
            let dense = |mut g: TypedModel| {
                crate::conv::substitute(&mut g).expect("dense");
                crate::depthwise::substitute_max_pools(&mut g).expect("pools");
                crate::conv::fuse_clamps(&mut g).expect("clamps");
                g
            };
            let (apart, _) = run(dense(g.clone()), false, &input);
            #[cfg(feature = "threads")]
            let (together, fused) = {
                use tract_linalg::multithread::{Executor, multithread_tract_scope};
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let executor = Executor::MultiThread(Arc::new(pool.expect("pool")));
                multithread_tract_scope(executor, || run(dense(g.clone()), true, &input))
            };
            #[cfg(not(feature = "threads"))]
            let (together, fused) = run(dense(g.clone()), true, &input);
            assert!(apart == together, "{what}: outputs differ");
            #[cfg(target_arch = "x86_64")]
            if crate::conv::avx2() {
                assert_eq!(fused, 1, "{what}");
            }
            let _ = (fused, threads);
        }
    }
}
