//! Depthwise 2-D convolution (one filter per channel; f32, NCHW): medinfer's own operator in
//! place of tract's `DepthWise` in the CPU plan.
//!
//! tract 0.23.9 runs a depthwise convolution row by row through a zone scanner: an AVX kernel
//! for rows at stride 1 of 8 points and more, scalar code for stride 2, for the last points of
//! a row (all of a 7-point row) and for the padded border. On MobileNetV2 that was 29 % of a
//! native run (`perf record` of `medinfer bench`, one thread).
//!
//! Here each (image, channel) plane is first copied into a zero-padded scratch plane (the
//! padding zeroed once per run instead of tested per tap), split by column phase when the
//! stride is above 1, so that every tap of every output block reads contiguous memory: tap
//! column `kx` of output column `x` is padded column `x·s + kx`, which is column `x + kx / s`
//! of phase `kx % s`. The output is computed in blocks of 8 rows × 8 columns (4 rows without
//! AVX2; the rows left at the bottom as one block of their own), written as plain array
//! arithmetic that LLVM vectorises for the target: AVX2 and FMA on x86-64, chosen at run
//! time; the portable form elsewhere. The bias and a clamp that followed in the graph
//! (MobileNetV2's ReLU6, [`crate::conv::fuse_clamps`]) are applied as the blocks are written
//! out.
//!
//! With AVX-512, 3×3 kernels at stride 1 or 2 skip the padded copy
//! ([`DepthwiseConv::masked`]): blocks of 2 rows × 16 columns read the input rows where they
//! lie with masked loads, the lanes outside the image reading as padding, each input row once
//! for every output row of the block it reaches, and stride 2's columns picked out of two
//! loads by a permutation (a 3×3 kernel's three taps out of the same three loads). At stride
//! 2 into rows of at most 8 columns (MobileNetV2's 14 × 14 → 7 × 7), two output rows share a
//! vector instead ([`DepthwiseConv::narrow`]); at stride 1 on planes narrower than 16 columns
//! (its 7 × 7 ones), the plane's positions run in flat vectors ([`DepthwiseConv::flat`]). The
//! copy was a third of the time (a 32-channel 112 × 112 plane: 0.34 → 0.15 ms on one thread).
//! With AVX2 and FMA only, the same blocks as two vectors of 8 columns
//! ([`DepthwiseConv::masked_avx2`]: plain loads where a block lies inside the rows, AVX2's
//! masked loads at the edges, stride 2's columns picked by in-lane shuffles, 4-row blocks)
//! for bands of rows ([`DepthwiseConv::runs_by_rows`]); whole planes of a 3×3 convolution at
//! stride 1 padded by one run in flat vectors of 8 ([`DepthwiseConv::flat_avx2`]: a padded
//! copy of each plane, the lanes that wrap round a row's end masked).
//!
//! The same planes, blocks and rows take a max pooling's maximum over the taps instead
//! ([`substitute_max_pools`]: padding −∞, no kernel, no bias): tract's `MaxPool` ran
//! DenseNet-121's 3×3 stride-2 pooling on one thread at a seventh of its rate here.
//!
//! [`substitute`] swaps the operator into a decluttered graph with concrete shapes, before
//! tract's codegen; the graph the GPU executor walks keeps tract's `Conv`. `LoadedModel::load`
//! does so on x86-64 only, where it was measured faster (MobileNetV2 15–20 % on the 2-core
//! EPYC VM, at one and two threads); the wasm builds were slower with it (see there). Its
//! tests run on every target.

use std::ops::Range;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::conv::{Clamp, Clamped};

/// Lanes of the narrowest output block: rows are padded up to a multiple of it.
const LANES: usize = 8;
/// Output rows per block of [`DepthwiseConv::masked`]: each input row it reads is read once
/// for both (3×3 at stride 1: four rows of loads for two output rows). Four rows were no
/// faster (MobileNetV2's depthwise and fused operators, 3 alternating runs: 4.3–5.7 ms with
/// two, 4.9–5.4 with four); the blocks along a row overlap their sums anyway.
const MASKED_ROWS: usize = 2;
/// Vectors of 16 positions per plane, at most, that [`DepthwiseConv::flat`] holds in
/// registers.
#[cfg(target_arch = "x86_64")]
const FLAT_VECTORS: usize = 8;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// [`DepthwiseConv::flat_avx2`]'s plane between its zero margins, per thread.
    static FLAT_PLANE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// [`DepthwiseConv::flat_avx2`]'s lane masks per vector, per thread.
    static FLAT_SIDES: std::cell::Cell<Vec<[[i32; 8]; 2]>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// Channel `c`'s `K × K` taps and its bias, for the masked kernels ([`DepthwiseConv::masked`],
/// [`DepthwiseConv::masked_avx2`], [`DepthwiseConv::narrow`]) to broadcast; for a max pooling
/// (`MAX`), −∞ for both (the taps are never read). `kernel` holds at least `c + 1` channels'
/// taps.
#[cfg(target_arch = "x86_64")]
#[inline]
fn plane_taps<const K: usize, const MAX: bool>(
    kernel: &[f32],
    bias: &[f32],
    c: usize,
) -> ([[f32; K]; K], f32) {
    if MAX {
        return ([[f32::NEG_INFINITY; K]; K], f32::NEG_INFINITY);
    }
    let taps = &kernel[c * K * K..(c + 1) * K * K];
    let b = if bias.len() == 1 { bias[0] } else { bias[c] };
    (std::array::from_fn(|ky| std::array::from_fn(|kx| taps[ky * K + kx])), b)
}

/// A masked kernel's per-block values (one per 16 output columns), worked out once per call:
/// on the stack for rows of up to 128 columns, since a fused operator calls the kernel once
/// per panel of channels (MobileNetV2's 64 → 384 on 14 × 14, one thread: 0.1449 → 0.1437 ms
/// without an allocation each time); on the heap beyond.
#[cfg(target_arch = "x86_64")]
enum PerBlock<T> {
    Near([T; 8], usize),
    Far(Vec<T>),
}

#[cfg(target_arch = "x86_64")]
impl<T: Copy> PerBlock<T> {
    /// `value(block)` for each of `blocks` (`unused` fills the stack's spare places).
    fn new(blocks: usize, unused: T, value: impl Fn(usize) -> T) -> Self {
        if blocks > 8 {
            return PerBlock::Far((0..blocks).map(value).collect());
        }
        let mut near = [unused; 8];
        for (block, v) in near.iter_mut().enumerate().take(blocks) {
            *v = value(block);
        }
        PerBlock::Near(near, blocks)
    }

    fn as_slice(&self) -> &[T] {
        match self {
            PerBlock::Near(near, blocks) => &near[..*blocks],
            PerBlock::Far(far) => far,
        }
    }
}

/// Where one half (8 output columns) of a block of [`DepthwiseConv::masked_avx2`] loads an
/// image row: per load, its first column (relative to the row's first value) and which of its
/// 8 lanes lie in the row (all bits set: the lane is read).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default)]
struct HalfLoads {
    at: [isize; 4],
    lanes: [[i32; 8]; 4],
}

/// A 16-column block of [`DepthwiseConv::masked_avx2`]: its two halves' loads, how many
/// halves hold output columns (1 where the row ends within the first), and whether every lane
/// of every load lies in the row (plain loads then).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Default)]
struct BlockLoads {
    halves: [HalfLoads; 2],
    used: usize,
    full: bool,
}

/// What [`DepthwiseConv::flat`] hands its planes' loop: the operator's buffers, and per tap,
/// per vector, where lane 0 reads and which lanes read inside the image.
#[cfg(target_arch = "x86_64")]
struct Flat<'a> {
    input: &'a [f32],
    first: usize,
    kernel: &'a [f32],
    bias: &'a [f32],
    output: &'a mut [f32],
    reads: &'a [[(isize, u16); FLAT_VECTORS]],
}

/// A depthwise convolution over NCHW f32 planes. Inputs: the image `[N, C, H, W]`, the
/// kernel `[C, 1, KH, KW]` (ONNX's OIHW with one input channel per group) and the bias (`C`
/// values, or one for every channel).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DepthwiseConv {
    channels: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    /// Zero rows above and columns left of the image; those below and right follow from the
    /// output size (everything outside the image reads as zero).
    pad_before: [usize; 2],
    /// What the output goes through after the bias (ReLU6 in MobileNetV2), folded in by
    /// [`crate::conv::fuse_clamps`].
    clamp: Clamp,
    /// A max pooling instead: each output the maximum of its taps, everything outside the
    /// image −∞; the image its only input.
    max: bool,
}

/// Where [`DepthwiseConv::run_rows`]'s input planes lie: `stride` values apart, each
/// holding the image's rows from row `top` on (negative: rows above the image, never read).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) top: isize,
    pub(crate) stride: usize,
}

/// Replaces every depthwise `Conv` of `model` that [`DepthwiseConv`] covers (f32, NCHW, OIHW
/// kernel, 2-D, no dilation, concrete shapes) with it, in place. Returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    crate::conv::replace_convs(model, DepthwiseConv::for_conv)
}

/// Replaces every max pooling of `model` that the operator covers (f32, NCHW, 2-D, no
/// dilation, no index output, concrete shapes) with it, in place. Returns how many.
pub fn substitute_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else { continue };
        if pool.with_index_outputs.is_some() || node.inputs.len() != 1 {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let output = model.outlet_fact(OutletId::new(id, 0))?;
        if let Some(op) = DepthwiseConv::for_max_pool(&pool.pool_spec, input, output) {
            model.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

impl DepthwiseConv {
    /// A depthwise convolution (not a max pooling) of `[H, W]` images into `[OH, OW]`.
    pub(crate) fn convolves(&self) -> bool {
        !self.max
    }

    /// Its input planes' and output planes' sizes, in values.
    pub(crate) fn plane_sizes(&self) -> (usize, usize) {
        let ([ih, iw], [oh, ow]) = (self.input_hw, self.output_hw);
        (ih * iw, oh * ow)
    }

    /// Its input planes' size, `[H, W]`.
    pub(crate) fn input_size(&self) -> [usize; 2] {
        self.input_hw
    }

    /// Its channels, output size and taps per channel.
    pub(crate) fn shape(&self) -> (usize, [usize; 2], usize) {
        (self.channels, self.output_hw, self.kernel_hw[0] * self.kernel_hw[1])
    }

    /// The operator's fields as numbers, for the plan form ([`crate::plan_form`]).
    pub(crate) fn to_words(&self) -> Vec<u64> {
        let mut w = vec![self.channels as u64];
        for pair in [self.input_hw, self.output_hw, self.kernel_hw, self.strides, self.pad_before] {
            w.extend(pair.map(|v| v as u64));
        }
        w.extend(self.clamp.bits().map(u64::from));
        w.push(u64::from(self.max));
        w
    }

    /// The operator [`DepthwiseConv::to_words`] gave these numbers for; `None` where they are
    /// out of range or describe no convolution this operator runs.
    pub(crate) fn from_words(w: &[u64]) -> Option<DepthwiseConv> {
        let [c, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw, lo, hi, max] = *w else { return None };
        let u = crate::conv::size_word;
        let op = DepthwiseConv {
            channels: u(c)?,
            input_hw: [u(ih)?, u(iw)?],
            output_hw: [u(oh)?, u(ow)?],
            kernel_hw: [u(kh)?, u(kw)?],
            strides: [u(sh)?, u(sw)?],
            pad_before: [u(ph)?, u(pw)?],
            clamp: Clamp::from_words(lo, hi)?,
            max: (max <= 1).then_some(max == 1)?,
        };
        let ok = crate::conv::geometry_ok(
            op.input_hw,
            op.output_hw,
            op.kernel_hw,
            op.strides,
            op.pad_before,
        );
        (op.channels > 0 && ok).then_some(op)
    }

    /// The max pooling for `spec` with these facts, when it covers them.
    fn for_max_pool(spec: &PoolSpec, input: &TypedFact, output: &TypedFact) -> Option<Self> {
        if spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || spec.dilations.as_ref().is_some_and(|d| d.iter().any(|&d| d != 1))
            || [input, output].iter().any(|f| f.datum_type != f32::datum_type())
        {
            return None;
        }
        let input = input.shape.as_concrete()?;
        let output = output.shape.as_concrete()?;
        let kernel_hw = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let strides = crate::conv::strides_2d(spec)?;
        if input.len() != 4
            || output.len() != 4
            || output[..2] != input[..2]
            || strides.contains(&0)
            || kernel_hw.contains(&0)
            || input[1] == 0
        {
            return None;
        }
        DepthwiseConv::with_geometry(spec, input[1], input, output, kernel_hw, strides, true)
    }

    /// The operator over `channels` planes, from the NCHW `input` to `output` shapes with
    /// `spec`'s padding: `None` where a plane is empty or the padding is not one it covers.
    fn with_geometry(
        spec: &PoolSpec,
        channels: usize,
        input: &[usize],
        output: &[usize],
        kernel_hw: [usize; 2],
        strides: [usize; 2],
        max: bool,
    ) -> Option<Self> {
        let (input_hw, output_hw) = ([input[2], input[3]], [output[2], output[3]]);
        if output_hw.contains(&0) || input_hw.contains(&0) {
            return None;
        }
        let pad_before = crate::conv::pad_before(spec, input_hw, output_hw, kernel_hw, strides)?;
        Some(DepthwiseConv {
            channels,
            input_hw,
            output_hw,
            kernel_hw,
            strides,
            pad_before,
            clamp: Clamp::NONE,
            max,
        })
    }

    /// The operator for `conv` with these facts, when it covers them.
    fn for_conv(
        conv: &Conv,
        input: &TypedFact,
        kernel: &TypedFact,
        bias: &TypedFact,
        output: &TypedFact,
    ) -> Option<DepthwiseConv> {
        let spec = &conv.pool_spec;
        let c = conv.group;
        if conv.q_params.is_some()
            || c < 2
            || spec.input_channels != c
            || spec.output_channels != c
            || spec.data_format != DataFormat::NCHW
            || conv.kernel_fmt != KernelFormat::OIHW
            || spec.kernel_shape.len() != 2
            || spec.dilations.as_ref().is_some_and(|d| d.iter().any(|&d| d != 1))
            || [input, kernel, bias, output].iter().any(|f| f.datum_type != f32::datum_type())
        {
            return None;
        }
        let input = input.shape.as_concrete()?;
        let output = output.shape.as_concrete()?;
        let kernel = kernel.shape.as_concrete()?;
        let bias = bias.shape.as_concrete()?.iter().product::<usize>();
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let strides = crate::conv::strides_2d(spec)?;
        if input.len() != 4
            || output.len() != 4
            || input[1] != c
            || output[..2] != input[..2]
            || kernel != [c, 1, kh, kw]
            || (bias != c && bias != 1)
            || strides.contains(&0)
            || kh == 0
            || kw == 0
        {
            return None;
        }
        DepthwiseConv::with_geometry(&conv.pool_spec, c, input, output, [kh, kw], strides, false)
    }

    /// The scratch plane's shape: `(phases, rows, phase width)`.
    fn scratch_shape(&self) -> (usize, usize, usize) {
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let [sh, sw] = self.strides;
        (sw, (oh - 1) * sh + kh, ow.next_multiple_of(LANES) + (kw - 1) / sw)
    }

    /// Convolves `input` (whole `H × W` planes, the first of them plane `first` of the
    /// `[N, C]` planes) into `output` (as many `OH × OW` planes). `kernel` holds
    /// `C · KH · KW` taps, `bias` `C` values or one.
    pub(crate) fn run(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> TractResult<()> {
        if self.masked_where_covered(input, first, kernel, bias, output) {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, the features `run_avx2` is compiled for.
            return unsafe {
                match self.max {
                    true => self.run_avx2::<true>(input, first, kernel, bias, output),
                    false => self.run_avx2::<false>(input, first, kernel, bias, output),
                }
            };
        }
        match self.max {
            true => self.planes::<4, false, true>(input, first, kernel, bias, output),
            false => self.planes::<4, false, false>(input, first, kernel, bias, output),
        }
    }

    /// Whether [`DepthwiseConv::run_rows`] runs a part of the output's rows: a 3×3
    /// convolution or max pooling at stride 1 or 2 with AVX-512 ([`DepthwiseConv::masked`]),
    /// or with AVX2 and FMA ([`DepthwiseConv::masked_avx2`]) except at stride 1 into rows
    /// narrower than a vector. Where it does, whole planes run that way too
    /// ([`DepthwiseConv::masked_where_covered`]): against the padded copy, in MobileNetV2 on
    /// one thread (Zen 3, the two alternated run by run in one plan), the first 32-channel
    /// 112 × 112 one 0.555 → 0.402 ms, the expansion + depthwise operators 1–12 % faster
    /// (stride 2 the most), but those into 7 × 7 rows at stride 1 5 % slower (7 of a
    /// vector's 8 lanes, 8 rows computed for 7), so those kept the copy (now in flat
    /// vectors, [`DepthwiseConv::flat_avx2`], as whole planes at stride 1 are on AVX2).
    pub(crate) fn runs_by_rows(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.kernel_hw == [3, 3] && matches!(self.strides, [1, 1] | [2, 2]) {
            let wide = self.strides == [2, 2] || self.output_hw[1] >= 8;
            return crate::conv::avx512() || (crate::conv::avx2() && wide);
        }
        false
    }

    /// The image rows that output rows `rows` read, inside the image: those of
    /// [`DepthwiseConv::run_rows`]'s blocks of [`MASKED_ROWS`] rows (the band's last block
    /// may reach a row past it, whose sums are dropped).
    pub(crate) fn input_rows(&self, rows: Range<usize>) -> Range<usize> {
        let ([ih, _], [kh, _], [sh, _], [pt, _]) =
            (self.input_hw, self.kernel_hw, self.strides, self.pad_before);
        let end = rows.start + rows.len().next_multiple_of(MASKED_ROWS);
        let from = (rows.start * sh).saturating_sub(pt).min(ih);
        let to = ((end.max(1) - 1) * sh + kh).saturating_sub(pt).min(ih);
        from..to.max(from)
    }

    /// The most image rows a band of `rows` output rows reads ([`DepthwiseConv::input_rows`]
    /// of a band inside the image).
    pub(crate) fn most_rows_read(&self, rows: usize) -> usize {
        let ([kh, _], [sh, _]) = (self.kernel_hw, self.strides);
        (rows.next_multiple_of(MASKED_ROWS).max(1) - 1) * sh + kh
    }

    /// [`DepthwiseConv::run`] for output rows `rows` of each plane, a band of
    /// `rows.len() · OW` values a plane in `output`, from planes that lie as `window` says
    /// (whole planes: `None`): any rows from any window where
    /// [`DepthwiseConv::runs_by_rows`], elsewhere all of them from whole planes only.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_rows(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
        rows: Range<usize>,
        window: Option<Window>,
    ) -> TractResult<()> {
        if rows == (0..self.output_hw[0]) && window.is_none() {
            return self.run(input, first, kernel, bias, output);
        }
        #[cfg(target_arch = "x86_64")]
        if self.runs_by_rows() {
            let [ih, iw] = self.input_hw;
            let (i, o, w) = (input, output, window.unwrap_or(Window { top: 0, stride: ih * iw }));
            // SAFETY: the CPU has AVX2 and FMA (`runs_by_rows`), the features `masked_avx2` is
            // compiled for; AVX-512F where `avx512` says so, `masked`'s.
            let (k, b, avx512) = (kernel, bias, crate::conv::avx512());
            let ran = unsafe {
                match (avx512, self.strides, self.max) {
                    (true, [1, 1], false) => self.masked::<3, 1, false>(i, first, k, b, o, rows, w),
                    (true, _, false) => self.masked::<3, 2, false>(i, first, k, b, o, rows, w),
                    (true, [1, 1], true) => self.masked::<3, 1, true>(i, first, k, b, o, rows, w),
                    (true, _, true) => self.masked::<3, 2, true>(i, first, k, b, o, rows, w),
                    (_, [1, 1], false) => {
                        self.masked_avx2::<1, false>(i, first, k, b, o, rows, w, false)
                    }
                    (_, _, false) => {
                        self.masked_avx2::<2, false>(i, first, k, b, o, rows, w, false)
                    }
                    (_, [1, 1], true) => {
                        self.masked_avx2::<1, true>(i, first, k, b, o, rows, w, false)
                    }
                    (_, _, true) => self.masked_avx2::<2, true>(i, first, k, b, o, rows, w, false),
                }
            };
            if ran {
                return Ok(());
            }
        }
        bail!("{}: no run of a part of its rows here", self.name())
    }

    /// [`DepthwiseConv::run_rows`] of a 3×3 convolution with AVX2 and FMA (not AVX-512),
    /// into a band laid out `[block][channel][16]` instead of plane by plane: the lines a 1×1
    /// convolution after it reads as its packed image ([`crate::conv::DirectConv::run_by_bands`]
    /// with `tiled`), one contiguous line a step, where a plane per step was a stream per
    /// input channel. Output rows of a multiple of 8 columns only. Same sums, same order.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_rows_tiled(
        &self,
        input: &[f32],
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
        rows: Range<usize>,
        window: Window,
    ) -> TractResult<()> {
        let (i, k, b, o, w) = (input, kernel, bias, output, window);
        // SAFETY: the CPU has AVX2 and FMA, the features `masked_avx2` is compiled for.
        let ran = Self::tiles_rows(self.output_hw[1])
            && !self.max
            && unsafe {
                match self.strides {
                    [1, 1] => self.masked_avx2::<1, false>(i, 0, k, b, o, rows, w, true),
                    _ => self.masked_avx2::<2, false>(i, 0, k, b, o, rows, w, true),
                }
            };
        if !ran {
            bail!("{}: no run of its rows into blocks here", self.name());
        }
        Ok(())
    }

    /// Whether this CPU runs [`DepthwiseConv::run_rows_tiled`] into rows of `ow` columns.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn tiles_rows(ow: usize) -> bool {
        crate::conv::avx2() && !crate::conv::avx512() && ow.is_multiple_of(8)
    }

    /// Whether [`DepthwiseConv::run_rows`]'s buffers hold whole planes and bands of output
    /// rows `rows` (inside `OH`), and `window` every image row the band reads.
    #[cfg(target_arch = "x86_64")]
    fn band_fits(
        &self,
        input: &[f32],
        output: &[f32],
        rows: &Range<usize>,
        window: Window,
    ) -> bool {
        let [oh, ow] = self.output_hw;
        let band = rows.len() * ow;
        let stride = window.stride;
        rows.end <= oh
            && band > 0
            && output.len().is_multiple_of(band)
            && input.len() >= output.len() / band * stride
            && self.reads_held(rows, window)
    }

    /// Whether `window` holds every image row that output rows `rows` read.
    #[cfg(target_arch = "x86_64")]
    fn reads_held(&self, rows: &Range<usize>, window: Window) -> bool {
        let iw = self.input_hw[1];
        let Window { top, stride } = window;
        let reads = self.input_rows(rows.clone());
        let held = top..top + (stride / iw.max(1)) as isize;
        reads.is_empty()
            || ((reads.start as isize) >= held.start && (reads.end as isize) <= held.end)
    }

    /// [`DepthwiseConv::masked`] for a 3×3 kernel at stride `S` (1 or 2) with AVX2 and FMA:
    /// the input planes read where they lie, no padded copy. A block is 4 output rows × 16
    /// columns (the band's last rows [`MASKED_ROWS`] at a time, as `input_rows` reckons), two
    /// vectors of 8 (one where the row ends within the first): 8 independent sums, where 2
    /// rows' 4 left the multiply-adds waiting on each other. Each image row a block reaches is
    /// loaded once per column tap and added into every output row of the block it feeds.
    /// Blocks whose loads all lie inside the row use plain loads, the others masked ones (the
    /// lanes outside read as zero, −∞ for a max pooling); rows above and below the image are
    /// not read at all. At stride 2 a tap's 8 columns are the even (or odd) lanes of two
    /// loads, picked by one in-lane shuffle that leaves them in the order 0 1 4 5 2 3 6 7, the
    /// same for every tap, so that the sums are put back in order once, as they are stored. A
    /// partial vector is stored as 4, 2 and 1 lanes ([`store_avx2`]): AVX2's masked stores are
    /// slow on AMD. Same contract as `masked`; where `tiled`, the output is laid out
    /// `[block][channel][TILED]` (block `q / TILED` of the band's flat positions), `input`'s
    /// planes are all convolved and `output` holds their blocks
    /// ([`DepthwiseConv::run_rows_tiled`]); rows of a multiple of 8 columns only.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn masked_avx2<const S: usize, const MAX: bool>(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
        rows: Range<usize>,
        window: Window,
        tiled: bool,
    ) -> bool {
        use std::arch::x86_64::*;
        const R: usize = MASKED_ROWS;
        let [ih, iw] = self.input_hw;
        let ow = self.output_hw[1];
        let [pt, pl] = self.pad_before;
        let band = rows.len() * ow;
        let channels = input.len() / window.stride.max(1);
        let fits = match tiled {
            false => self.band_fits(input, output, &rows, window),
            // Whole planes in, `[block][channel][TILED]` out, each vector of a row inside one
            // line.
            true => {
                rows.end <= self.output_hw[0]
                    && band > 0
                    && input.len().is_multiple_of(window.stride.max(1))
                    && ow.is_multiple_of(8)
                    && output.len() >= band.div_ceil(TILED) * channels * TILED
                    && self.reads_held(&rows, window)
            }
        };
        if self.kernel_hw != [3, 3] || self.strides != [S, S] || !(S == 1 || S == 2) || !fits {
            return false;
        }
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let fill = _mm256_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
        // Where a half's loads start, from its first output column's first tap: the three
        // taps at stride 1; at stride 2 the 16 values of taps 0 and 1 and the 16 of tap 2.
        let starts: &[isize] = if S == 1 { &[0, 1, 2] } else { &[0, 8, 2, 10] };
        let block_loads = |block: usize| -> BlockLoads {
            let mut loads =
                BlockLoads { used: (ow - block * 16).min(16).div_ceil(8), ..Default::default() };
            loads.full = true;
            for (h, half) in loads.halves.iter_mut().enumerate().take(loads.used) {
                let base = (S * (block * 16 + 8 * h)) as isize - pl as isize;
                for (l, &start) in starts.iter().enumerate() {
                    half.at[l] = base + start;
                    for (j, lane) in half.lanes[l].iter_mut().enumerate() {
                        let inside = (0..iw as isize).contains(&(base + start + j as isize));
                        *lane = if inside { -1 } else { 0 };
                        loads.full &= inside;
                    }
                }
            }
            loads
        };
        let columns = PerBlock::new(ow.div_ceil(16), BlockLoads::default(), block_loads);
        let columns = columns.as_slice();
        let Window { top, stride } = window;
        // Plane by plane, each its band of rows; or, where `tiled`, into every plane's lines
        // of the band's blocks.
        let planes = if tiled { channels } else { output.len() / band };
        let apart = channels * TILED;
        for (plane, src) in input.chunks_exact(stride).take(planes).enumerate() {
            let c = (first + plane) % self.channels;
            let (w, b) = plane_taps::<3, MAX>(kernel, bias, c);
            let w = w.map(|row| row.map(|v| _mm256_set1_ps(v)));
            let src = src.as_ptr();
            let plane_avx2 = PlaneAvx2 { src, top, ih, iw, pt, ow, w, b, fill, lo, hi };
            let dst = match tiled {
                true => &mut output[plane * TILED..],
                false => &mut output[plane * band..][..band],
            };
            // Blocks of 4 rows (8 independent sums; 2 rows' 4 left the multiply-adds waiting
            // on each other), the band's last rows 2 at a time, as `input_rows` reckons.
            let mut y0 = rows.start;
            while y0 < rows.end {
                let (left, row) = (rows.end - y0, y0 - rows.start);
                let (out, at) = match tiled {
                    true => (&mut *dst, Some(Tiled { row, apart })),
                    false => (&mut dst[row * ow..], None),
                };
                let p = &plane_avx2;
                // SAFETY: the CPU has AVX2 and FMA; the window holds the rows the blocks read
                // (`band_fits`, `reads_held`), and `out` their rows of the band (their lines
                // of its blocks where `tiled`).
                unsafe {
                    if left >= 4 {
                        rows_avx2::<S, 4, MAX>(p, y0, columns, out, 4, at);
                        y0 += 4;
                    } else {
                        rows_avx2::<S, R, MAX>(p, y0, columns, out, left.min(R), at);
                        y0 += R;
                    }
                }
            }
        }
        true
    }

    /// `K × K` taps at stride `S` (1 or 2) in both directions with AVX-512, reading the
    /// input planes where they are: no padded copy. A block is [`MASKED_ROWS`] output rows ×
    /// 16 columns; each input row it needs is read once per column tap, as a masked load
    /// (the lanes outside the image read as zero, −∞ for a max pooling) that every output
    /// row of the block it reaches adds in. At stride 2 a tap's 16 columns are the even
    /// lanes of two loads (a 3×3 kernel's taps all out of one load of 33 values). Writes
    /// output rows `rows` of each plane (`0..OH`: all of it), a band of `rows.len() · OW`
    /// values a plane in `output`, from input planes that lie as `window` says. Returns false,
    /// doing nothing, where the buffers' sizes do not hold whole planes and bands, `rows`
    /// passes `OH`, or the window lacks a row the band reads.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn masked<const K: usize, const S: usize, const MAX: bool>(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
        rows: Range<usize>,
        window: Window,
    ) -> bool {
        use std::arch::x86_64::*;
        const R: usize = MASKED_ROWS;
        let [ih, iw] = self.input_hw;
        let ow = self.output_hw[1];
        let [pt, pl] = self.pad_before;
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let fill = _mm512_set1_ps(if MAX { f32::NEG_INFINITY } else { 0.0 });
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // Per block of 16 output columns and column tap: the first input column its lanes
        // read, and which of the 16·S values from there lie in the image.
        let block_taps = |block: usize| -> [(isize, u32); K] {
            std::array::from_fn(|kx| {
                let base = (block * 16 * S + kx) as isize - pl as isize;
                let from = (-base).clamp(0, 16 * S as isize);
                let to = (iw as isize - base).clamp(0, 16 * S as isize);
                let bits = (((1u64 << to) - 1) & !((1u64 << from) - 1)) as u32;
                (base, bits)
            })
        };
        let columns = PerBlock::new(ow.div_ceil(16), [(0, 0); K], block_taps);
        let columns = columns.as_slice();
        let band = rows.len() * ow;
        let Window { top, stride } = window;
        if !self.band_fits(input, output, &rows, window) {
            return false;
        }
        for (plane, (src, dst)) in
            input.chunks_exact(stride).zip(output.chunks_exact_mut(band)).enumerate()
        {
            let c = (first + plane) % self.channels;
            let (w, b) = plane_taps::<K, MAX>(kernel, bias, c);
            let w = w.map(|row| row.map(|v| _mm512_set1_ps(v)));
            let src = src.as_ptr();
            for y0 in rows.clone().step_by(R) {
                for (block, taps) in columns.iter().enumerate() {
                    let x0 = block * 16;
                    let mut acc = [_mm512_set1_ps(b); R];
                    // Input row `y0·S − pt + i` feeds output rows `y0 + r` at tap row
                    // `i − r·S`. A row outside the image is read with no lanes (all padding).
                    #[inline]
                    #[target_feature(enable = "avx512f")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn feed<
                        const K: usize,
                        const S: usize,
                        const R: usize,
                        const MAX: bool,
                    >(
                        i: usize,
                        row: *const f32,
                        inside: bool,
                        taps: &[(isize, u32); K],
                        w: &[[__m512; K]; K],
                        fill: __m512,
                        even: __m512i,
                        acc: &mut [__m512; R],
                    ) {
                        let rows = if inside { u32::MAX } else { 0 };
                        // At stride 2, a 3×3 kernel's three taps from the 33 values from the
                        // first tap's first column: its even lanes, its odd lanes (the middle
                        // tap), and the even ones again one further (the last tap: the first
                        // tap's shifted down a lane, the 33rd value last). Three loads and
                        // three shuffles, where a load pair and a permutation per tap took six
                        // and three: MobileNetV2's 96-channel 112 × 112 → 56 × 56 alone, one
                        // thread, 0.231 → 0.200 ms.
                        let three = (S == 2 && K == 3).then(|| {
                            let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
                            let ((base, bits), last) = (taps[0], taps[K - 1].1 >> 30 & 1);
                            let (bits, last, at) =
                                (bits & rows, last & rows, row.wrapping_offset(base));
                            // SAFETY: only the lanes in `bits` and `last` are read, and they
                            // lie in the image row (the last tap's lane 15, `last`, is the
                            // first tap's value 32).
                            unsafe {
                                let a = _mm512_mask_loadu_ps(fill, bits as u16, at);
                                let b = _mm512_mask_loadu_ps(
                                    fill,
                                    (bits >> 16) as u16,
                                    at.wrapping_add(16),
                                );
                                let c =
                                    _mm512_mask_loadu_ps(fill, last as u16, at.wrapping_add(32));
                                let first = _mm512_permutex2var_ps(a, even, b);
                                let middle = _mm512_permutex2var_ps(a, odd, b);
                                let next = _mm512_alignr_epi32(
                                    _mm512_castps_si512(c),
                                    _mm512_castps_si512(first),
                                    1,
                                );
                                [first, middle, _mm512_castsi512_ps(next)]
                            }
                        });
                        let v: [__m512; K] = std::array::from_fn(|kx| {
                            if let Some(three) = three {
                                return three[kx];
                            }
                            let (base, bits) = taps[kx];
                            let (bits, at) = (bits & rows, row.wrapping_offset(base));
                            // SAFETY: only the lanes in `bits` are read, and they lie in
                            // the image row.
                            unsafe {
                                if S == 1 {
                                    _mm512_mask_loadu_ps(fill, bits as u16, at)
                                } else {
                                    let a = _mm512_mask_loadu_ps(fill, bits as u16, at);
                                    let b = _mm512_mask_loadu_ps(
                                        fill,
                                        (bits >> 16) as u16,
                                        at.wrapping_add(16),
                                    );
                                    _mm512_permutex2var_ps(a, even, b)
                                }
                            }
                        });
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let Some(ky) = i.checked_sub(r * S).filter(|&ky| ky < K) else {
                                continue;
                            };
                            for (kx, &v) in v.iter().enumerate() {
                                *acc = if MAX {
                                    // As the portable `block`: a NaN read is passed over.
                                    _mm512_max_ps(v, *acc)
                                } else {
                                    _mm512_fmadd_ps(w[ky][kx], v, *acc)
                                };
                            }
                        }
                    }
                    // Each `i` a constant: the rows each feeds, and their taps, known at
                    // compile time.
                    macro_rules! rows {
                        ($($i:literal)*) => {$(
                            if $i < (R - 1) * S + K {
                                let iy = (y0 * S + $i) as isize - pt as isize;
                                let inside = iy >= 0 && iy < ih as isize;
                                let row = src.wrapping_offset((iy - top) * iw as isize);
                                // SAFETY: `feed` reads only lanes inside the image.
                                unsafe {
                                    feed::<K, S, R, MAX>($i, row, inside, taps, &w, fill, even, &mut acc)
                                };
                            }
                        )*};
                    }
                    const { assert!((R - 1) * S + K <= 12, "more rows than `rows!` lists") };
                    rows!(0 1 2 3 4 5 6 7 8 9 10 11);
                    let lanes = (ow - x0).min(16);
                    let keep = ((1u32 << lanes) - 1) as u16;
                    for (r, &acc) in acc.iter().enumerate().take(rows.end - y0) {
                        // As `Clamp::apply`: a NaN stays NaN.
                        let v = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                        let out = &mut dst[(y0 - rows.start + r) * ow + x0..][..lanes];
                        // SAFETY: the `lanes` values written are `out`'s.
                        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), keep, v) };
                    }
                }
            }
        }
        true
    }

    /// A convolution at stride 1 on planes narrower than 16 columns and of at most
    /// [`FLAT_VECTORS`] · 16 positions, output rows as wide as the input's (MobileNetV2's
    /// 7 × 7 ones), with AVX-512: the plane's positions in flat order, 16 a vector (so that
    /// output `p` reads tap `(ky, kx)` at input `p + (ky − pt) · W + kx − pl`), each tap one
    /// masked load per vector, the lanes outside the image (past a row's end, above or below
    /// the plane) read as zero. [`DepthwiseConv::masked`]'s blocks of 2 rows × 16 columns
    /// left 60 % of their lanes empty on 7 × 7 (960 channels: 0.10–0.14 ms, onnxruntime
    /// 0.04). Returns false, doing nothing, where the operator or the buffers do not fit.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn flat(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> bool {
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let [pt, pl] = self.pad_before;
        let positions = oh * ow;
        let vectors = positions.div_ceil(16);
        if self.max
            || self.strides != [1, 1]
            || ow != iw
            || ow >= 16
            || vectors > FLAT_VECTORS
            || !output.len().is_multiple_of(positions)
            || input.len() < output.len() / positions * ih * iw
            || kernel.len() < self.channels * kh * kw
        {
            return false;
        }
        // Per tap, per vector: where lane 0 reads (relative to the plane), and which lanes
        // read inside the image.
        let reads: Vec<[(isize, u16); FLAT_VECTORS]> = (0..kh * kw)
            .map(|t| {
                let (ky, kx) = ((t / kw) as isize - pt as isize, (t % kw) as isize - pl as isize);
                std::array::from_fn(|v| {
                    let mut bits = 0u16;
                    for lane in 0..16 {
                        let p = v * 16 + lane;
                        let (y, x) = ((p / ow) as isize + ky, (p % ow) as isize + kx);
                        let inside = (0..ih as isize).contains(&y) && (0..iw as isize).contains(&x);
                        if p < positions && inside {
                            bits |= 1 << lane;
                        }
                    }
                    ((v * 16) as isize + ky * iw as isize + kx, bits)
                })
            })
            .collect();
        // The vectors a plane takes as a constant: their sums then stay in registers (with a
        // count known only at run time, the sums went through the stack: MobileNetV2's 960
        // channels of 7 × 7, one thread, 0.039 ms against onnxruntime's 0.028).
        let planes = Flat { input, first, kernel, bias, output, reads: &reads };
        match vectors {
            1 => self.flat_planes::<1>(planes),
            2 => self.flat_planes::<2>(planes),
            3 => self.flat_planes::<3>(planes),
            4 => self.flat_planes::<4>(planes),
            5 => self.flat_planes::<5>(planes),
            6 => self.flat_planes::<6>(planes),
            7 => self.flat_planes::<7>(planes),
            _ => self.flat_planes::<FLAT_VECTORS>(planes),
        }
        true
    }

    /// A 3×3 convolution at stride 1 with one row and column of zero padding around the
    /// image and output planes the image's size (MobileNetV2's on 28 × 28, 14 × 14 and
    /// 7 × 7), with AVX2 and FMA: the plane's positions in flat order, 8 a vector, so that
    /// output `p` reads tap `(ky, kx)` at input `p + (ky − 1) · W + kx − 1` and each tap is
    /// one plain load. Each plane is first copied between zero margins of a row and more (the
    /// rows above and below the image read as zero); a row's last value, loaded by the next
    /// row's first position as its left neighbour (and its first by the row before's last),
    /// is masked to zero as well. The taps are summed in [`DepthwiseConv::masked_avx2`]'s
    /// order, so that a depthwise convolution run alone and one in a [`crate::fused::Banded`]
    /// chain agree bit for bit. Rows narrower than a vector waste no lanes, wider ones no
    /// partial vector per row. MobileNetV2 on one thread against the masked blocks (the
    /// padded copy on 7 × 7), two plans' runs alternated: its 7 × 7 ones 0.075–0.13 →
    /// 0.05–0.065 ms (fast and slow spells of the VM), the expansion + depthwise operators on
    /// 14 × 14 2–16 % faster, on 28 × 28 1–5 %; the model 0.968–0.995× on one thread,
    /// 0.979–0.987× on two.
    /// Returns false, doing nothing, where the operator or the buffers do not fit.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn flat_avx2(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> bool {
        use std::arch::x86_64::*;
        let [h, w] = self.input_hw;
        let positions = h * w;
        if self.max
            || self.kernel_hw != [3, 3]
            || self.strides != [1, 1]
            || self.pad_before != [1, 1]
            || self.output_hw != [h, w]
            || positions == 0
            || !output.len().is_multiple_of(positions)
            || input.len() < output.len()
            || kernel.len() < self.channels * 9
        {
            return false;
        }
        let vectors = positions.div_ceil(8);
        // Zeros before the plane (a row and one value, the most a tap reaches back) and
        // after it (the last vector's lanes past the plane, then a row and one value).
        let margin = (w + 1).next_multiple_of(8);
        let len = margin + vectors * 8 + w + 1;
        // Per vector: which lanes may add their left and right column taps.
        let mut sides = FLAT_SIDES.take();
        sides.clear();
        let mut x = 0;
        sides.extend((0..vectors).map(|_| {
            let (mut left, mut right) = ([0i32; 8], [0i32; 8]);
            for (left, right) in left.iter_mut().zip(&mut right) {
                *left = if x != 0 { -1 } else { 0 };
                *right = if x + 1 != w { -1 } else { 0 };
                x = if x + 1 == w { 0 } else { x + 1 };
            }
            [left, right]
        }));
        let mut padded = FLAT_PLANE.take();
        padded.clear();
        padded.resize(len, 0.0);
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        for (plane, (src, dst)) in
            input.chunks_exact(positions).zip(output.chunks_exact_mut(positions)).enumerate()
        {
            let c = (first + plane) % self.channels;
            let (taps, b) = plane_taps::<3, false>(kernel, bias, c);
            let taps = taps.map(|row| row.map(|v| _mm256_set1_ps(v)));
            padded[margin..margin + positions].copy_from_slice(src);
            let at = padded[margin..].as_ptr();
            for (v, [left, right]) in sides.iter().enumerate() {
                let p = at.wrapping_add(v * 8);
                // SAFETY: both hold 8 lanes.
                let (left, right) = unsafe {
                    (
                        _mm256_loadu_si256(left.as_ptr().cast()),
                        _mm256_loadu_si256(right.as_ptr().cast()),
                    )
                };
                let (left, right) = (_mm256_castsi256_ps(left), _mm256_castsi256_ps(right));
                let mut sum = _mm256_set1_ps(b);
                // SAFETY: every load lies in `padded`: `margin` values (a row and one at
                // least) before `at`, a row and one after the last vector.
                unsafe {
                    for (ky, taps) in taps.iter().enumerate() {
                        let row = p.wrapping_offset((ky as isize - 1) * w as isize);
                        let l = _mm256_and_ps(_mm256_loadu_ps(row.wrapping_sub(1)), left);
                        let r = _mm256_and_ps(_mm256_loadu_ps(row.wrapping_add(1)), right);
                        sum = _mm256_fmadd_ps(taps[0], l, sum);
                        sum = _mm256_fmadd_ps(taps[1], _mm256_loadu_ps(row), sum);
                        sum = _mm256_fmadd_ps(taps[2], r, sum);
                    }
                }
                // As `Clamp::apply`: a NaN stays NaN.
                let sum = _mm256_min_ps(hi, _mm256_max_ps(lo, sum));
                let x = v * 8;
                // SAFETY: the lanes stored are the plane's.
                unsafe { store_avx2(&mut dst[x..(x + 8).min(positions)], sum) };
            }
        }
        FLAT_PLANE.set(padded);
        FLAT_SIDES.set(sides);
        true
    }

    /// A 3×3 convolution or max pooling at stride 2 from planes of at most 16 columns into
    /// rows of at most 8 (MobileNetV2's 14 × 14 → 7 × 7), with AVX-512: two output rows a
    /// vector (lanes 0–7 and 8–15), each tap's columns for both picked out of the two image
    /// rows they read by one permutation, the lanes that read outside the image taking the
    /// padding. [`DepthwiseConv::masked`]'s blocks of 16 columns left 9 of their 16 lanes
    /// empty on such planes: MobileNetV2's 576 channels took 0.054 ms on one thread, against
    /// onnxruntime's 0.018.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn narrow<const MAX: bool>(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> bool {
        use std::arch::x86_64::*;
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [pt, pl] = self.pad_before;
        let (plane_in, plane_out) = (ih * iw, oh * ow);
        if self.kernel_hw != [3, 3]
            || self.strides != [2, 2]
            || ow > 8
            || iw > 16
            || plane_in == 0
            || plane_out == 0
            || !output.len().is_multiple_of(plane_out)
            || input.len() < output.len() / plane_out * plane_in
            || (!MAX && kernel.len() < self.channels * 9)
        {
            return false;
        }
        let fill = if MAX { f32::NEG_INFINITY } else { 0.0 };
        let filled = _mm512_set1_ps(fill);
        // Per column tap: where lane `x` (output column `x` of the first row) and lane
        // `8 + x` (of the second) read in the two rows' 32 values, and which lanes read
        // inside the image.
        let mut at = [[0i32; 16]; 3];
        let mut inside = [0u16; 3];
        for (kx, (at, inside)) in at.iter_mut().zip(&mut inside).enumerate() {
            for x in 0..ow {
                let column = (2 * x + kx) as isize - pl as isize;
                if (0..iw as isize).contains(&column) {
                    *inside |= (1 << x) | (1 << (x + 8));
                    (at[x], at[x + 8]) = (column as i32, 16 + column as i32);
                }
            }
        }
        // SAFETY: each array holds 16 values.
        let at = at.map(|a| unsafe { _mm512_loadu_si512(a.as_ptr().cast()) });
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let (row_lanes, keep) = (((1u32 << iw) - 1) as u16, ((1u32 << ow) - 1) as u16);
        for (plane, (src, dst)) in
            input.chunks_exact(plane_in).zip(output.chunks_exact_mut(plane_out)).enumerate()
        {
            let c = (first + plane) % self.channels;
            let (w, b) = plane_taps::<3, MAX>(kernel, bias, c);
            let w = w.map(|row| row.map(|v| _mm512_set1_ps(v)));
            // Image row `y` (the padding where it lies outside).
            let row = |y: isize| {
                if (0..ih as isize).contains(&y) {
                    // SAFETY: row `y` of the plane, its `iw` values.
                    unsafe {
                        _mm512_mask_loadu_ps(filled, row_lanes, src.as_ptr().add(y as usize * iw))
                    }
                } else {
                    filled
                }
            };
            for y0 in (0..oh).step_by(2) {
                // Output row `y0` reads image rows `top + ky`, row `y0 + 1` (past the plane
                // where `oh` is odd: computed, dropped) rows `top + 2 + ky`.
                let top = (2 * y0) as isize - pt as isize;
                let rows: [__m512; 5] = std::array::from_fn(|i| row(top + i as isize));
                let mut acc = _mm512_set1_ps(b);
                for (ky, w) in w.iter().enumerate() {
                    for ((w, at), &inside) in w.iter().zip(&at).zip(&inside) {
                        let v = _mm512_permutex2var_ps(rows[ky], *at, rows[ky + 2]);
                        let v = _mm512_mask_blend_ps(inside, filled, v);
                        // As `masked`: a NaN read is passed over by the maximum.
                        acc = if MAX { _mm512_max_ps(v, acc) } else { _mm512_fmadd_ps(*w, v, acc) };
                    }
                }
                // As `Clamp::apply`: a NaN stays NaN.
                let v = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                let out = dst.as_mut_ptr().wrapping_add(y0 * ow);
                // SAFETY: lanes `0..OW` are row `y0`'s, lanes `8..8 + OW` row `y0 + 1`'s (the
                // pointer 8 values before it), where it lies in the plane.
                unsafe {
                    _mm512_mask_storeu_ps(out, keep, v);
                    if y0 + 1 < oh {
                        _mm512_mask_storeu_ps(out.wrapping_add(ow).wrapping_sub(8), keep << 8, v);
                    }
                }
            }
        }
        true
    }

    /// [`DepthwiseConv::flat`]'s planes, `V` vectors each (the last partial where the
    /// positions end inside it).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn flat_planes<const V: usize>(&self, planes: Flat) {
        use std::arch::x86_64::*;
        let Flat { input, first, kernel, bias, output, reads } = planes;
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let positions = oh * ow;
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (plane, (src, dst)) in
            input.chunks_exact(ih * iw).zip(output.chunks_exact_mut(positions)).enumerate()
        {
            let c = (first + plane) % self.channels;
            let b = if bias.len() == 1 { bias[0] } else { bias[c] };
            let mut acc = [_mm512_set1_ps(b); V];
            let taps = &kernel[c * kh * kw..(c + 1) * kh * kw];
            for (&tap, reads) in taps.iter().zip(reads) {
                let w = _mm512_set1_ps(tap);
                for (acc, &(at, bits)) in acc.iter_mut().zip(reads) {
                    // SAFETY: only the lanes in `bits` are read, and they lie in the plane.
                    let x =
                        unsafe { _mm512_maskz_loadu_ps(bits, src.as_ptr().wrapping_offset(at)) };
                    *acc = _mm512_fmadd_ps(w, x, *acc);
                }
            }
            for (v, &acc) in acc.iter().enumerate() {
                let lanes = (positions - v * 16).min(16);
                // As `Clamp::apply`: a NaN stays NaN.
                let out = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                let to = &mut dst[v * 16..v * 16 + lanes];
                // SAFETY: the `lanes` values written are `to`'s.
                unsafe {
                    _mm512_mask_storeu_ps(to.as_mut_ptr(), ((1u32 << lanes) - 1) as u16, out)
                };
            }
        }
    }

    /// [`DepthwiseConv::flat`] or [`DepthwiseConv::masked`] where this CPU and the operator
    /// allow it, [`DepthwiseConv::flat_avx2`] or [`DepthwiseConv::masked_avx2`] on CPUs with
    /// AVX2 but not AVX-512; false where not, nothing written.
    #[allow(unused_variables)]
    fn masked_where_covered(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if crate::conv::avx512()
            // SAFETY: the CPU has AVX-512F, the feature `flat` and `narrow` are compiled for.
            && unsafe {
                self.flat(input, first, kernel, bias, output)
                    || match self.max {
                        true => self.narrow::<true>(input, first, kernel, bias, output),
                        false => self.narrow::<false>(input, first, kernel, bias, output),
                    }
            }
        {
            return true;
        }
        #[cfg(target_arch = "x86_64")]
        if !crate::conv::avx512()
            && crate::conv::avx2()
            // SAFETY: the CPU has AVX2 and FMA, the features `flat_avx2` is compiled for.
            && unsafe { self.flat_avx2(input, first, kernel, bias, output) }
        {
            return true;
        }
        // The masked blocks through a window of whole planes (`run_rows` runs no whole run
        // through it).
        #[cfg(target_arch = "x86_64")]
        if self.runs_by_rows() {
            let [ih, iw] = self.input_hw;
            let whole = Some(Window { top: 0, stride: ih * iw });
            let all = 0..self.output_hw[0];
            return self.run_rows(input, first, kernel, bias, output, all, whole).is_ok();
        }
        false
    }

    /// [`DepthwiseConv::planes`] compiled for AVX2 with fused multiply-add: blocks of 8 rows
    /// are 8 accumulator registers, enough independent sums to keep both FMA units busy.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<const MAX: bool>(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> TractResult<()> {
        self.planes::<8, true, MAX>(input, first, kernel, bias, output)
    }

    /// Every plane: padded copy, then the output in blocks of `ROWS` rows × [`LANES`] columns
    /// (the rows left at the bottom as one block). `FMA`: multiply-adds fused (only where the
    /// CPU has the instruction; elsewhere `mul_add` would be a library call per lane). `MAX`:
    /// a max pooling's (`kernel` and `bias` unused).
    #[inline(always)]
    fn planes<const ROWS: usize, const FMA: bool, const MAX: bool>(
        &self,
        input: &[f32],
        first: usize,
        kernel: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> TractResult<()> {
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let [sh, sw] = self.strides;
        let (phases, rows, width) = self.scratch_shape();
        let padding = if MAX { f32::NEG_INFINITY } else { 0.0 };
        let mut scratch = vec![padding; phases * rows * width];
        // Where tap t reads, relative to the top-left of its output block in the scratch.
        let offsets: Vec<usize> = (0..kh * kw)
            .map(|t| {
                let (ky, kx) = (t / kw, t % kw);
                ((kx % sw) * rows + ky) * width + kx / sw
            })
            .collect();
        let row_step = sh * width;
        // The farthest any block reads: the last output row's last block, at the largest
        // offset. `block` reads without bounds checks on the strength of this.
        let reach = offsets
            .iter()
            .max()
            .map_or(0, |m| m + (oh - 1) * row_step + ow.next_multiple_of(LANES));
        if reach > scratch.len() {
            bail!("{}: scratch smaller than the blocks' reach", self.name());
        }
        let taps = kh * kw;
        // A max pooling's "weights": one per tap, unread.
        let offsets_as_weights = if MAX { vec![0f32; taps] } else { Vec::new() };
        for (plane, (src, dst)) in
            input.chunks_exact(ih * iw).zip(output.chunks_exact_mut(oh * ow)).enumerate()
        {
            let c = (first + plane) % self.channels;
            self.pad_plane(src, &mut scratch, rows, width);
            let (weights, b) = if MAX {
                (&offsets_as_weights[..], f32::NEG_INFINITY)
            } else {
                (&kernel[c * taps..(c + 1) * taps], if bias.len() == 1 { bias[0] } else { bias[c] })
            };
            let mut y = 0;
            while y < oh {
                let rows = (oh - y).min(ROWS);
                let at = y * row_step;
                let dst = &mut dst[y * ow..(y + rows) * ow];
                // One instance of `row` per block height.
                macro_rules! by_rows {
                    ($($r:literal),*) => {
                        match rows {
                            $($r => self.row::<$r, FMA, MAX>(
                                &scratch, at, row_step, &offsets, weights, b, dst,
                            ),)*
                            _ => self.row::<1, FMA, MAX>(
                                &scratch, at, row_step, &offsets, weights, b, dst,
                            ),
                        }
                    };
                }
                // SAFETY: `at` + any offset + `rows` rows of a block's lanes stay within
                // `reach`, which is inside the scratch.
                unsafe { by_rows!(8, 7, 6, 5, 4, 3, 2) }
                y += rows;
            }
        }
        Ok(())
    }

    /// `R` output rows (`dst`, `R × OW`) whose first reads the scratch at `at`, in blocks of
    /// `R` × [`LANES`], biased and clamped as they are written.
    ///
    /// # Safety
    /// As [`block`]'s, for every block of the row: `at + (R - 1) · row_step + max(offsets) +
    /// OW` rounded up to [`LANES`] must be inside `scratch`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn row<const R: usize, const FMA: bool, const MAX: bool>(
        &self,
        scratch: &[f32],
        at: usize,
        row_step: usize,
        offsets: &[usize],
        weights: &[f32],
        bias: f32,
        dst: &mut [f32],
    ) {
        let ow = self.output_hw[1];
        let [lo, hi] = self.clamp.bounds();
        for x in (0..ow).step_by(LANES) {
            // SAFETY: the caller vouches for the whole row's reach.
            let acc =
                unsafe { block::<R, FMA, MAX>(scratch, at + x, row_step, offsets, weights, bias) };
            for (r, lanes) in acc.iter().enumerate() {
                let out = &mut dst[r * ow + x..(r + 1) * ow];
                if let Some(out) = out.first_chunk_mut::<LANES>() {
                    *out = lanes.map(|v| Clamp::apply(lo, hi, v));
                } else {
                    for (d, &v) in out.iter_mut().zip(lanes) {
                        *d = Clamp::apply(lo, hi, v);
                    }
                }
            }
        }
    }

    /// Writes `src` (one `H × W` plane) into `scratch` as `phases × rows × width`: padded
    /// row `r`, column `p + s·j` lands at `[p][r][j]`. Only the image's values are written:
    /// the rest of the scratch is padding, zero since its allocation, as every plane has the
    /// same geometry.
    #[inline(always)]
    fn pad_plane(&self, src: &[f32], scratch: &mut [f32], rows: usize, width: usize) {
        let [pt, pl] = self.pad_before;
        let sw = self.strides[1];
        let image_rows = src.chunks_exact(self.input_hw[1]).take(rows.saturating_sub(pt));
        for (r, image_row) in (pt..).zip(image_rows) {
            if sw == 1 {
                let n = image_row.len().min(width.saturating_sub(pl));
                scratch[r * width + pl..][..n].copy_from_slice(&image_row[..n]);
                continue;
            }
            // Phase `p` holds the image columns `j` with `(pl + j) % sw == p`, at `(pl + j) / sw`:
            // at stride 2, pairs of columns split between the two phases.
            if sw == 2 {
                let (phase0, phase1) = scratch.split_at_mut(rows * width);
                let (line0, line1) = (&mut phase0[r * width..][..width], &mut phase1[r * width..]);
                let (even, odd) = if pl % 2 == 0 {
                    (&mut line0[pl / 2..], &mut line1[pl / 2..width])
                } else {
                    (&mut line1[pl / 2..width], &mut line0[pl.div_ceil(2)..])
                };
                let pairs = image_row.chunks_exact(2);
                if let Some(&last) = pairs.remainder().first()
                    && let Some(d) = even.get_mut(image_row.len() / 2)
                {
                    *d = last;
                }
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
                continue;
            }
            for p in 0..sw {
                let first = (p + sw - pl % sw) % sw;
                let at = (p * rows + r) * width + (pl + first) / sw;
                let Some(line) = scratch.get_mut(at..(p * rows + r + 1) * width) else { continue };
                let columns = image_row.iter().skip(first).step_by(sw);
                for (d, &v) in line.iter_mut().zip(columns) {
                    *d = v;
                }
            }
        }
    }
}

/// `v`'s first `out.len()` lanes (8 at most) into `out`: a partial vector as 4, 2 and 1
/// lanes (a copy of an unknown length was a call to `memcpy` per row).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_avx2(out: &mut [f32], v: std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (n, at) = (out.len().min(8), out.as_mut_ptr());
    // SAFETY: each store writes lanes below `n`, inside `out`.
    unsafe {
        if n == 8 {
            return _mm256_storeu_ps(at, v);
        }
        let (mut low, mut done) = (_mm256_castps256_ps128(v), 0);
        if n >= 4 {
            _mm_storeu_ps(at, low);
            (low, done) = (_mm256_extractf128_ps::<1>(v), 4);
        }
        if n - done >= 2 {
            _mm_store_sd(at.add(done).cast(), _mm_castps_pd(low));
            (low, done) = (_mm_movehl_ps(low, low), done + 2);
        }
        if n > done {
            _mm_store_ss(at.add(done), low);
        }
    }
}

/// A plane of [`DepthwiseConv::masked_avx2`]: its rows (`src`: image row `top`'s first
/// value, `iw` a row), the image's height and top padding, the output's width, the taps,
/// bias, padding value and clamp.
#[cfg(target_arch = "x86_64")]
struct PlaneAvx2 {
    src: *const f32,
    top: isize,
    ih: usize,
    iw: usize,
    pt: usize,
    ow: usize,
    w: [[std::arch::x86_64::__m256; 3]; 3],
    b: f32,
    fill: std::arch::x86_64::__m256,
    lo: std::arch::x86_64::__m256,
    hi: std::arch::x86_64::__m256,
}

/// Output rows `y0..y0 + R` of a plane of [`DepthwiseConv::masked_avx2`], every block of
/// `columns`, the first `valid` of them written into `out` (from row `y0`'s first value, `OW`
/// values a row).
///
/// # Safety
/// The CPU has AVX2 and FMA; the image rows the `R` rows read that lie in the image lie in
/// `plane`'s window, and `out` holds `valid` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows_avx2<const S: usize, const R: usize, const MAX: bool>(
    plane: &PlaneAvx2,
    y0: usize,
    columns: &[BlockLoads],
    out: &mut [f32],
    valid: usize,
    tiled: Option<Tiled>,
) {
    use std::arch::x86_64::*;
    let PlaneAvx2 { src, top, ih, iw, pt, ow, ref w, b, fill, lo, hi } = *plane;
    for (block, loads) in columns.iter().enumerate() {
        let mut acc = [[_mm256_set1_ps(b); 2]; R];
        // Each `i` a constant: the rows each image row feeds, and their taps, known at compile
        // time.
        macro_rules! rows {
            ($($i:literal)*) => {$(
                if $i < (R - 1) * S + 3 {
                    let iy = (y0 * S + $i) as isize - pt as isize;
                    if iy >= 0 && iy < ih as isize {
                        let row = src.wrapping_offset((iy - top) * iw as isize);
                        // SAFETY: a full block's loads lie in the image row; the others read
                        // only their lanes inside it.
                        unsafe {
                            let (l, f, a) = (loads, fill, &mut acc);
                            match (loads.used, loads.full) {
                                (2, true) => feed_avx2::<S, R, 2, true, MAX>($i, row, l, w, f, a),
                                (2, false) => feed_avx2::<S, R, 2, false, MAX>($i, row, l, w, f, a),
                                (_, true) => feed_avx2::<S, R, 1, true, MAX>($i, row, l, w, f, a),
                                (_, false) => feed_avx2::<S, R, 1, false, MAX>($i, row, l, w, f, a),
                            }
                        }
                    }
                }
            )*};
        }
        const { assert!((R - 1) * S + 3 <= 10, "more rows than `rows!` lists") };
        rows!(0 1 2 3 4 5 6 7 8 9);
        for (r, acc) in acc.iter().enumerate().take(valid) {
            for (h, &acc) in acc.iter().enumerate().take(loads.used) {
                // As `Clamp::apply`: a NaN stays NaN.
                let mut v = _mm256_min_ps(hi, _mm256_max_ps(lo, acc));
                if S == 2 {
                    // Columns 0 1 4 5 2 3 6 7 back in order.
                    v = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                        v,
                    )));
                }
                let x = block * 16 + 8 * h;
                let out = match tiled {
                    None => &mut out[r * ow + x..][..(ow - x).min(8)],
                    Some(Tiled { row, apart }) => {
                        let q = (row + r) * ow + x;
                        &mut out[q / TILED * apart + q % TILED..][..8]
                    }
                };
                // SAFETY: `out` holds the lanes stored.
                unsafe { store_avx2(out, v) };
            }
        }
    }
}

/// Positions a line of [`DepthwiseConv::run_rows_tiled`]'s output holds: a block of the 1×1
/// convolution that reads it.
#[cfg(target_arch = "x86_64")]
const TILED: usize = crate::conv::TILE;

/// Where [`rows_avx2`] stores into a band laid out `[block][channel][TILED]`: its first row
/// is row `row` of the band, and a channel's lines lie `apart` values apart (`C · TILED`).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tiled {
    row: usize,
    apart: usize,
}

/// Image row `i` of a block of [`DepthwiseConv::masked_avx2`] (at `row`, its first value),
/// added into the block's `R` output rows it feeds (output row `r` at tap row `i − r·S`), the
/// first `H` halves of each. `FULL`: every load lies in the row, read plainly; else masked
/// (`fill` in the lanes outside).
///
/// # Safety
/// The CPU has AVX2 and FMA; each load's lanes that `loads` marks as inside lie in the
/// image row (all of them where `FULL`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn feed_avx2<
    const S: usize,
    const R: usize,
    const H: usize,
    const FULL: bool,
    const MAX: bool,
>(
    i: usize,
    row: *const f32,
    loads: &BlockLoads,
    w: &[[std::arch::x86_64::__m256; 3]; 3],
    fill: std::arch::x86_64::__m256,
    acc: &mut [[std::arch::x86_64::__m256; 2]; R],
) {
    use std::arch::x86_64::*;
    for h in 0..H {
        let half = &loads.halves[h];
        let load = |l: usize| {
            let at = row.wrapping_offset(half.at[l]);
            // SAFETY: the caller's contract: a full load lies in the row, a masked one reads
            // only its lanes inside it.
            unsafe {
                if FULL {
                    _mm256_loadu_ps(at)
                } else {
                    let mask = _mm256_loadu_si256(half.lanes[l].as_ptr().cast());
                    let v = _mm256_maskload_ps(at, mask);
                    if MAX { _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(mask)) } else { v }
                }
            }
        };
        let v: [__m256; 3] = if S == 1 {
            [load(0), load(1), load(2)]
        } else {
            let (a, b, c, d) = (load(0), load(1), load(2), load(3));
            [
                _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
                _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
                _mm256_shuffle_ps::<0b10_00_10_00>(c, d),
            ]
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let Some(ky) = i.checked_sub(r * S).filter(|&ky| ky < 3) else { continue };
            for (kx, &v) in v.iter().enumerate() {
                acc[h] = if MAX {
                    // As the portable `block`: a NaN read is passed over.
                    _mm256_max_ps(v, acc[h])
                } else {
                    _mm256_fmadd_ps(w[ky][kx], v, acc[h])
                };
            }
        }
    }
}

/// `ROWS × LANES` outputs: row `r`, lane `l` is the bias plus, for every tap, its weight
/// times the scratch value at `at + r · row_step + offset + l` (where `MAX`, the largest of
/// the bias and those values). Plain array arithmetic, vectorised by the compiler.
///
/// # Safety
/// Every index read, up to `at + (ROWS - 1) · row_step + max(offsets) + LANES - 1`, must be
/// inside `scratch`.
#[inline(always)]
unsafe fn block<const ROWS: usize, const FMA: bool, const MAX: bool>(
    scratch: &[f32],
    at: usize,
    row_step: usize,
    offsets: &[usize],
    weights: &[f32],
    bias: f32,
) -> [[f32; LANES]; ROWS] {
    let mut acc = [[bias; LANES]; ROWS];
    for (&offset, &w) in offsets.iter().zip(weights) {
        for (r, lanes) in acc.iter_mut().enumerate() {
            // SAFETY: the caller vouches for the whole block's reach.
            let src = unsafe {
                &*scratch.as_ptr().add(at + r * row_step + offset).cast::<[f32; LANES]>()
            };
            for (a, &s) in lanes.iter_mut().zip(src) {
                *a = if MAX {
                    if s > *a { s } else { *a }
                } else if FMA {
                    w.mul_add(s, *a)
                } else {
                    *a + w * s
                };
            }
        }
    }
    acc
}

impl Clamped for DepthwiseConv {
    fn clamp(&self) -> Clamp {
        self.clamp
    }

    fn with_clamp(&self, clamp: Clamp) -> Self {
        DepthwiseConv { clamp, ..self.clone() }
    }
}

impl Op for DepthwiseConv {
    fn name(&self) -> StaticName {
        if self.max { "medinfer.MaxPool" } else { "medinfer.DepthwiseConv" }.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "kernel {:?}, strides {:?}, padding before {:?}{}",
            self.kernel_hw, self.strides, self.pad_before, self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        fn slice(t: &TValue) -> TractResult<&[f32]> {
            t.try_as_plain_ram()?.as_slice::<f32>()
        }
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let c = self.channels;
        let (input, kernel, bias) = match (self.max, inputs.len()) {
            (true, 1) => (slice(&inputs[0])?, &[][..], &[][..]),
            (false, 3) => (slice(&inputs[0])?, slice(&inputs[1])?, slice(&inputs[2])?),
            _ => bail!("{}: {} inputs", self.name(), inputs.len()),
        };
        if input.len() % (c * ih * iw) != 0
            || (!self.max && kernel.len() != c * kh * kw)
            || (!self.max && bias.len() != c && bias.len() != 1)
        {
            bail!("{}: inputs of unexpected sizes", self.name());
        }
        let n = input.len() / (c * ih * iw);
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every element.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, c, oh, ow])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let planes = view.as_slice_mut::<f32>()?;
        // Planes side by side on tract's executor where it has threads (`par_chunks_mut`
        // calls once, inline, where it has not, or for outputs too small to share).
        #[cfg(feature = "threads")]
        {
            let total = planes.len();
            tract_linalg::multithread::par_chunks_mut(planes, oh * ow, total, |first, chunk| {
                self.run(&input[first * ih * iw..], first, kernel, bias, chunk)
            })?;
        }
        #[cfg(not(feature = "threads"))]
        self.run(input, 0, kernel, bias, planes)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DepthwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let Some(input) = inputs.first() else { bail!("{}: no input", self.name()) };
        if input.rank() != 4 {
            bail!("{}: a rank-{} input", self.name(), input.rank());
        }
        let [oh, ow] = self.output_hw;
        let shape = [input.shape[0].clone(), self.channels.to_dim(), oh.to_dim(), ow.to_dim()];
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        if self.max {
            return Ok(tvec!());
        }
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let n = inputs.first().map_or(1.to_dim(), |f| f.shape[0].clone());
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * (self.channels * oh * ow * kh * kw))))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::testing::{Case, assert_close, value};

    fn cases() -> Vec<Case> {
        let case = |n, c, hw, k, s, before, after, bias_per_channel| Case {
            n,
            c,
            m: c,
            group: c,
            hw,
            k,
            s,
            before,
            after,
            bias_per_channel,
        };
        vec![
            // MobileNetV2's: 3×3, padding 1, stride 1 and 2, on planes narrower and wider
            // than a block.
            case(1, 4, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 3, [14, 14], [3, 3], [2, 2], [1, 1], [1, 1], true),
            case(1, 2, [112, 112], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 2, [112, 112], [3, 3], [2, 2], [0, 0], [1, 1], true),
            case(2, 3, [13, 75], [3, 3], [2, 2], [1, 1], [1, 1], false),
            // Other kernels, strides, paddings and odd sizes.
            case(1, 5, [9, 70], [5, 5], [1, 1], [2, 2], [2, 2], true),
            case(1, 2, [11, 10], [3, 5], [1, 3], [1, 0], [0, 2], true),
            case(2, 2, [6, 33], [1, 1], [1, 1], [0, 0], [0, 0], true),
            case(1, 3, [8, 8], [3, 3], [1, 1], [0, 0], [0, 0], false),
            case(1, 2, [5, 67], [2, 7], [3, 2], [1, 3], [1, 3], true),
            // 3×3 at stride 2 padded after only, and on planes of 16 and 17 columns (a
            // masked block's edge).
            case(1, 2, [17, 16], [3, 3], [2, 2], [0, 0], [1, 1], true),
            case(1, 2, [16, 17], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 2, [6, 33], [3, 3], [2, 2], [1, 1], [0, 0], false),
            // Two output rows a vector at stride 2 (`narrow`): 13 × 9 → 7 × 5 (the last row
            // alone), 16 columns into 8 padded after only, two images and a shared bias.
            case(1, 5, [13, 9], [3, 3], [2, 2], [1, 1], [1, 1], true),
            case(2, 3, [6, 16], [3, 3], [2, 2], [0, 0], [1, 1], false),
            // 3×3 at stride 2 on 64 columns padded 1 before: each block's last tap's last
            // lane is the 33rd value from its first tap's first column, the row's last
            // column in the second block.
            case(1, 2, [9, 64], [3, 3], [2, 2], [1, 1], [1, 1], true),
            // Rows of one masked block at stride 1 (the last block's second row past the
            // plane, dropped).
            case(1, 3, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 2, [19, 16], [3, 3], [1, 1], [1, 1], [1, 1], false),
            // Stride 2 with an even left padding, an odd width, and the last row unused.
            case(1, 3, [16, 21], [5, 5], [2, 2], [2, 2], [1, 2], true),
            // Small planes in flat vectors (AVX-512): 5×5 on 99 positions, two images with
            // more padding above than below and a shared bias.
            case(1, 3, [9, 11], [5, 5], [1, 1], [2, 2], [2, 2], true),
            case(2, 3, [5, 13], [3, 3], [1, 1], [2, 1], [0, 1], false),
            // Flat vectors with AVX2 (3×3, stride 1, padding 1): rows of one column, of a
            // vector exactly, and of 5 (vectors across three rows), two images sharing a bias.
            case(1, 2, [4, 1], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 3, [8, 8], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(2, 3, [3, 5], [3, 3], [1, 1], [1, 1], [1, 1], false),
        ]
    }

    /// Through tract's optimiser and plan, substituted and not: both match the f64 oracle,
    /// and the substituted plan holds medinfer's operator.
    #[test]
    fn matches_the_definition_and_tract() {
        for (i, case) in cases().iter().enumerate() {
            let want = case.oracle();
            let tract = case.run(case.model());
            assert_close(&format!("case {i}, tract"), &tract, &want);
            let mut model = case.model();
            assert_eq!(substitute(&mut model).expect("substitute"), 1, "case {i}");
            let optimised = model.clone().into_optimized().expect("optimise");
            assert!(
                optimised.nodes().iter().any(|n| n.op_is::<DepthwiseConv>()),
                "case {i}: the optimised plan lost medinfer's operator"
            );
            assert_close(&format!("case {i}, medinfer"), &case.run(model), &want);
        }
    }

    /// Each path on its own, where this CPU runs it: the portable one (wasm, CPUs without
    /// AVX2), AVX2's blocks over the padded copy, and the masked AVX-512 one (3×3 kernels),
    /// which `run` prefers where it applies.
    #[test]
    fn every_path_matches_the_definition() {
        #[cfg(target_arch = "x86_64")]
        let (mut flat, mut flat_avx2) = (0, 0);
        for (i, case) in cases().iter().enumerate() {
            let mut model = case.model();
            substitute(&mut model).expect("substitute");
            let op =
                model.nodes().iter().find_map(|n| n.op_as::<DepthwiseConv>()).expect("op").clone();
            let (input, kernel, bias) = case.data();
            let [oh, ow] = case.out();
            let fresh = || vec![f32::NAN; case.n * case.c * oh * ow];
            let mut out = fresh();
            op.planes::<4, false, false>(&input, 0, &kernel, &bias, &mut out).expect("planes");
            assert_close(&format!("case {i}, portable"), &out, &case.oracle());
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    let mut out = fresh();
                    // SAFETY: the CPU has AVX2 and FMA.
                    unsafe { op.run_avx2::<false>(&input, 0, &kernel, &bias, &mut out) }
                        .expect("avx2");
                    assert_close(&format!("case {i}, AVX2"), &out, &case.oracle());
                }
                // The masked blocks, through a window of whole planes: every 3×3 kernel at
                // stride 1 or 2.
                let whole = Window { top: 0, stride: op.input_hw[0] * op.input_hw[1] };
                for kind in masked_kernels() {
                    let mut out = fresh();
                    let ran = run_masked(kind, &op, &input, &kernel, &bias, &mut out, 0..oh, whole);
                    assert_eq!(ran, op.masks(), "case {i}, {kind}");
                    if ran {
                        assert_close(&format!("case {i}, {kind}"), &out, &case.oracle());
                    }
                }
                if crate::conv::avx512() {
                    let mut out = fresh();
                    // SAFETY: the CPU has AVX-512F.
                    if unsafe { op.flat(&input, 0, &kernel, &bias, &mut out) } {
                        assert_close(&format!("case {i}, flat"), &out, &case.oracle());
                        flat += 1;
                    }
                }
                if crate::conv::avx2() {
                    let mut out = fresh();
                    // SAFETY: the CPU has AVX2 and FMA.
                    if unsafe { op.flat_avx2(&input, 0, &kernel, &bias, &mut out) } {
                        assert_close(&format!("case {i}, flat AVX2"), &out, &case.oracle());
                        flat_avx2 += 1;
                    }
                }
            }
        }
        // MobileNetV2's 7 × 7 and the two cases above.
        #[cfg(target_arch = "x86_64")]
        if crate::conv::avx512() {
            assert_eq!(flat, 4);
        }
        // MobileNetV2's 7 × 7, 112 × 112 and 14 × 14 at stride 1, 16 × 17, 19 × 16 and the
        // three above.
        #[cfg(target_arch = "x86_64")]
        if crate::conv::avx2() {
            assert_eq!(flat_avx2, 8);
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl DepthwiseConv {
        /// Whether the masked kernels cover it: a 3×3 kernel at stride 1 or 2.
        fn masks(&self) -> bool {
            self.kernel_hw == [3, 3] && matches!(self.strides, [1, 1] | [2, 2])
        }
    }

    /// The masked kernels this CPU runs, by name.
    #[cfg(target_arch = "x86_64")]
    fn masked_kernels() -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if crate::conv::avx2() {
            kinds.push("AVX2");
        }
        if crate::conv::avx512() {
            kinds.push("AVX-512");
        }
        kinds
    }

    /// Output rows `rows` of `op` from planes that lie as `window` says, with the masked
    /// kernel `kind` ([`masked_kernels`]): false where it does not cover the operator.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn run_masked(
        kind: &str,
        op: &DepthwiseConv,
        input: &[f32],
        kernel: &[f32],
        bias: &[f32],
        out: &mut [f32],
        rows: Range<usize>,
        window: Window,
    ) -> bool {
        let (i, k, b, w) = (input, kernel, bias, window);
        if op.kernel_hw != [3, 3] {
            return false;
        }
        // SAFETY: `masked_kernels` names only kernels whose features the CPU has.
        unsafe {
            match (kind, op.strides, op.max) {
                ("AVX2", [1, 1], false) => {
                    op.masked_avx2::<1, false>(i, 0, k, b, out, rows, w, false)
                }
                ("AVX2", [2, 2], false) => {
                    op.masked_avx2::<2, false>(i, 0, k, b, out, rows, w, false)
                }
                ("AVX2", [1, 1], true) => {
                    op.masked_avx2::<1, true>(i, 0, k, b, out, rows, w, false)
                }
                ("AVX2", [2, 2], true) => {
                    op.masked_avx2::<2, true>(i, 0, k, b, out, rows, w, false)
                }
                ("AVX-512", [1, 1], false) => op.masked::<3, 1, false>(i, 0, k, b, out, rows, w),
                ("AVX-512", [2, 2], false) => op.masked::<3, 2, false>(i, 0, k, b, out, rows, w),
                ("AVX-512", [1, 1], true) => op.masked::<3, 1, true>(i, 0, k, b, out, rows, w),
                ("AVX-512", [2, 2], true) => op.masked::<3, 2, true>(i, 0, k, b, out, rows, w),
                _ => false,
            }
        }
    }

    /// Bands of output rows (of 1, 3, 4 and 5 rows: blocks of 4 and of 2, a last one short)
    /// from windows that hold only the image rows each band reads
    /// ([`DepthwiseConv::input_rows`]), with each masked kernel: the definition's rows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bands_through_windows_match_the_definition() {
        let mut bands = 0;
        for (i, case) in cases().iter().enumerate() {
            let mut model = case.model();
            substitute(&mut model).expect("substitute");
            let op =
                model.nodes().iter().find_map(|n| n.op_as::<DepthwiseConv>()).expect("op").clone();
            if !op.masks() {
                continue;
            }
            let (input, kernel, bias) = case.data();
            let want = case.oracle();
            let ([ih, iw], [oh, ow]) = (op.input_hw, op.output_hw);
            let planes = case.n * case.c;
            for kind in masked_kernels() {
                for height in [1, 3, 4, 5] {
                    for start in (0..oh).step_by(height) {
                        let rows = start..(start + height).min(oh);
                        let reads = op.input_rows(rows.clone());
                        // The window: one spare row above and below, NaN, never read.
                        let stride = (reads.len() + 2) * iw;
                        let mut window = vec![f32::NAN; planes * stride];
                        for (src, dst) in
                            input.chunks_exact(ih * iw).zip(window.chunks_exact_mut(stride))
                        {
                            dst[iw..][..reads.len() * iw]
                                .copy_from_slice(&src[reads.start * iw..reads.end * iw]);
                        }
                        let at = Window { top: reads.start as isize - 1, stride };
                        let mut out = vec![f32::NAN; planes * rows.len() * ow];
                        let what = format!("case {i}, {kind}, rows {rows:?}");
                        let ran = run_masked(
                            kind,
                            &op,
                            &window,
                            &kernel,
                            &bias,
                            &mut out,
                            rows.clone(),
                            at,
                        );
                        assert!(ran, "{what}");
                        let want: Vec<f64> = want
                            .chunks_exact(oh * ow)
                            .flat_map(|plane| &plane[rows.start * ow..rows.end * ow])
                            .copied()
                            .collect();
                        assert_close(&what, &out, &want);
                        bands += 1;
                    }
                }
            }
        }
        if crate::conv::avx2() {
            assert!(bands > 100, "{bands} bands");
        }
    }

    /// Planes split across tract's executor: each chunk's first plane picks its channels'
    /// weights and bias.
    #[cfg(feature = "threads")]
    #[test]
    fn planes_split_across_threads() {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        // 24 planes of 56 × 56 outputs: above tract's 32 768-element threshold for sharing.
        let case = Case {
            n: 2,
            c: 12,
            m: 12,
            group: 12,
            hw: [56, 56],
            k: [3, 3],
            s: [1, 1],
            before: [1, 1],
            after: [1, 1],
            bias_per_channel: true,
        };
        let mut model = case.model();
        substitute(&mut model).expect("substitute");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let executor = Executor::MultiThread(std::sync::Arc::new(pool));
        let got = multithread_tract_scope(executor, || case.run(model));
        assert_close("two threads", &got, &case.oracle());
    }

    /// Max poolings (DenseNet-121's 3×3 stride 2 with padding 1, others with odd sizes, no
    /// padding, ONNX's ceil mode, several images), through tract's plan substituted and not,
    /// and on the portable path: the same values exactly (a maximum does not round).
    #[test]
    fn max_pools_match_tract() {
        use tract_onnx::tract_core::ops::cnn::PaddingSpec;
        let cases = [
            (1, 4, [112, 112], [3, 3], [2, 2], PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])),
            (2, 3, [9, 11], [2, 2], [2, 2], PaddingSpec::Valid),
            (1, 2, [7, 7], [3, 3], [1, 1], PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])),
            // Two output rows a vector (`narrow`): 13 × 15 → 7 × 8, the last row alone.
            (1, 3, [13, 15], [3, 3], [2, 2], PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])),
            (
                1,
                2,
                [10, 13],
                [3, 2],
                [2, 3],
                PaddingSpec::ExplicitOnnxPool(tvec![0, 1], tvec![0, 1], true),
            ),
        ];
        for (i, (n, c, [h, w], k, s, padding)) in cases.into_iter().enumerate() {
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: k.into_iter().collect(),
                padding,
                dilations: None,
                strides: Some(s.into_iter().collect()),
                input_channels: c,
                output_channels: c,
            };
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([n, c, h, w])).expect("source");
            let y = model.wire_node("pool", MaxPool::new(spec, None), &[x]).expect("pool");
            model.select_output_outlets(&y).expect("outputs");
            // Values of both signs, so that a zero padding would show.
            let input: Vec<f32> = (0..n * c * h * w).map(|i| value(i, 5) - 0.5).collect();
            let run = |model: TypedModel| -> Vec<f32> {
                let x = tensor1(&input).into_shape(&[n, c, h, w]).expect("input");
                let plan = model.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
                let out = plan.run(tvec!(x.into_tvalue())).expect("run");
                out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec()
            };
            let want = run(model.clone());
            let mut ours = model;
            assert_eq!(substitute_max_pools(&mut ours).expect("substitute"), 1, "case {i}");
            let op =
                ours.nodes().iter().find_map(|n| n.op_as::<DepthwiseConv>()).expect("op").clone();
            assert!(op.max);
            assert_eq!(run(ours), want, "case {i}");
            let mut portable = vec![f32::NAN; want.len()];
            op.planes::<4, false, true>(&input, 0, &[], &[], &mut portable).expect("planes");
            assert_eq!(portable, want, "case {i}, portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut avx2 = vec![f32::NAN; want.len()];
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { op.run_avx2::<true>(&input, 0, &[], &[], &mut avx2) }.expect("avx2");
                assert_eq!(avx2, want, "case {i}, AVX2");
            }
            #[cfg(target_arch = "x86_64")]
            for kind in masked_kernels() {
                let mut out = vec![f32::NAN; want.len()];
                let whole = Window { top: 0, stride: h * w };
                let all = 0..op.output_hw[0];
                if run_masked(kind, &op, &input, &[], &[], &mut out, all, whole) {
                    assert_eq!(out, want, "case {i}, masked {kind}");
                }
            }
        }
    }

    /// What it leaves to tract: a dilated kernel.
    #[test]
    fn leaves_what_it_does_not_cover() {
        let case = &cases()[0];
        let mut model = case.model();
        let id = model.nodes().iter().position(|n| n.op_is::<Conv>()).expect("conv");
        model.node_mut(id).op_as_mut::<Conv>().expect("conv").pool_spec.dilations =
            Some([2, 2].into_iter().collect());
        assert_eq!(substitute(&mut model).expect("substitute"), 0);
    }
}
