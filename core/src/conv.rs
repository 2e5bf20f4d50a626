//! Dense 2-D convolution (f32, NCHW, one group): medinfer's own operator in place of tract's
//! padding, lazy im2col and matrix product for kernels larger than 1×1, and of tract's batch
//! normalisation, ReLU, packing and matrix product for 1×1 kernels (with DenseNet's
//! pre-activation before them, or on images of 64 positions and more without it:
//! [`substitute_pointwise`]), in the CPU plan.
//!
//! tract 0.23.9 lowers such a convolution to a `Pad` node (a padded copy of the input), then a
//! matrix product whose right-hand panels are packed from that copy on the fly ("lazy
//! im2col"). DenseNet-121's 3×3 convolutions have 32 output channels, so each packed panel
//! serves only two passes of tract's 16×6 kernel: measured per node in the plan, they ran at
//! about half the multiply-add rate of its 1×1 convolutions and took 70 of a 148 ms run
//! (one thread, the 2-core EPYC VM), with the padding copies another 6.6 ms.
//!
//! Here nothing is packed from the image. Each image is copied once into a zero-padded
//! scratch, split into `sh × sw` phase planes when strided (as in [`crate::depthwise`]), so
//! that an output position `p = y · Wq + x` (`Wq` the phase planes' width; the columns from
//! `OW` to `Wq` are computed and dropped) reads tap `(c, ky, kx)` at `p` plus a fixed offset.
//! A block is then [`TILE`] consecutive positions — on x86-64 two vectors of 8 read straight
//! from the scratch at each tap — times [`NR`] output channels whose weights are broadcast: 12
//! accumulators, no gather (4 channels where 6 would pad the outputs by a tenth,
//! [`DirectConv::panel`]; with AVX-512, two blocks at once, one 16-lane vector each, times
//! [`NR_AVX512`] channels: 16; on wasm 8 positions × 4 channels, 8 accumulators). The sum
//! over taps runs in passes ([`K_STEP`], [`K_STEP_KXK`], [`K_STEP_PACKED`]: `Layout::k_step`)
//! so that the input rows a pass reads stay in L1 across the panels of output channels; the padding, the blocks and the copy out are shared
//! on tract's executor where it has threads. The bias (and a clamp that followed in the
//! graph, [`fuse_clamps`]) is applied when the blocks are copied out to NCHW, or, for a
//! convolution summed in one pass, as its sums are stored straight into the output planes
//! (the padded layout's dropped columns masked off row by row; on x86-64 by the block itself,
//! from its registers: [`Finish::Out`]). The block is
//! AVX-512 or AVX2 + FMA intrinsics on x86-64, chosen at run time, wasm SIMD intrinsics on
//! wasm32 with SIMD, and plain array arithmetic elsewhere (what the tests also check).
//!
//! A 1×1 kernel with DenseNet's prologue reads a scratch packed block by block instead
//! (`[block][C][TILE]`, the normalisation and ReLU applied on the way in), so that each step
//! of its sum reads one contiguous line. Where a 2×2 average pooling follows it (DenseNet-121's
//! three transitions), the pooling runs first, on the way in too, and the product on a quarter
//! of the positions: 8 % of the network's multiply-adds saved (linear both, they commute; the
//! prologue is before either). A 1×1 kernel with nothing before it (MobileNetV2's) reads its
//! image where it lies, step `c` of a block from plane `c`
//! ([`DirectConv::in_place`]): the packing was a copy of the whole input, through L3 for the
//! wide early layers (their projections 15–25 % faster without it); where such an image is
//! larger than L2, the AVX2 block prefetches the next group's lines (`Layout::prefetch`). On planes of fewer than
//! four blocks of positions (the 7 × 7 layers), and narrowing ones on planes under
//! [`SMALL_NARROWING`] positions (14 × 14), a 1×1 convolution with AVX-512 runs with its
//! output channels in the lanes instead ([`DirectConv::run_small`]): blocks of 32 channels ×
//! 7 positions, no lane empty on 49 or 196 positions. A 1×1 kernel that copies its image anyway
//! (through the prologue, or pooled) can take it as the pieces of a concatenation along the
//! channels, so that the concatenation need not run ([`read_concats`]: DenseNet-121's).
//!
//! [`substitute`] and [`substitute_pointwise`] swap the operator into a decluttered graph with
//! concrete shapes, before tract's codegen; the graph the GPU executor walks keeps tract's
//! `Conv`. `LoadedModel::load` does so where it was measured faster: both on x86-64,
//! [`substitute`] alone in the browser builds (wasm SIMD, [`block_wasm`]: 4 channels × 8
//! positions). The tests run on every target, wasip2 included.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::concat::Concat;
use crate::depthwise::Window;

/// Output channels per block (a panel of the packed kernel: weights broadcast from one panel
/// row each step) for the AVX2 and portable blocks; [`NR_AVX512`] where the AVX-512 block
/// runs ([`panel_width`]).
#[cfg(not(target_arch = "wasm32"))]
const NR: usize = 6;
/// [`block_avx512`]'s panels: 8 channels, so that the 16, 24, 32, 96, 128… output channels of
/// DenseNet-121 and MobileNetV2 fill whole panels (6 left 32 → 36: 11 % of the 3×3 products
/// spent on zeros).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const NR_AVX512: usize = 8;
/// Output positions per block: two vectors of 8.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const TILE: usize = 16;
/// wasm: [`block_wasm`]'s 4 channels × 8 positions, whose 8 accumulators, 2 image vectors and
/// a broadcast fit the 16 vector registers of x86 hosts (V8's and Cranelift's).
#[cfg(target_arch = "wasm32")]
const NR: usize = 4;
#[cfg(target_arch = "wasm32")]
const TILE: usize = 8;
/// Panels of [`block_avx2`] with 4 channels, for the convolutions whose output channels 6 would
/// pad by a tenth or more ([`DirectConv::panel`]).
#[cfg(not(target_arch = "wasm32"))]
const NR_NARROW: usize = 4;
/// The panel width of the block [`DirectConv::run_tiles`] picks on this CPU: what the kernel
/// is packed for when the graph is rewritten, and what the run reads it as (4 instead of 6 for
/// some convolutions, [`DirectConv::panel`]).
pub(crate) fn panel_width() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        return NR_AVX512;
    }
    NR
}

/// Whether this CPU runs [`block_avx512`] (AVX-512F, with AVX2 and FMA for the rest).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx2") && has!("fma")
}

/// The vector kernels this CPU runs: what a plan form is keyed by besides the panel width,
/// since the plan's shape follows them too (the banded chains form only where a depthwise
/// convolution runs by rows, with AVX2 or AVX-512).
pub(crate) fn kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            return "avx512";
        }
        if avx2() {
            return "avx2";
        }
    }
    "portable"
}

/// Whether this CPU has AVX2 and FMA, what the AVX2 kernels are compiled for.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx2") && has!("fma")
}

/// Steps of the sum (input channel × tap) per pass over a block. On x86-64 512: against 256,
/// DenseNet-121 58.1–59.8 against 58.9–60.7 ms on one thread (6 alternating runs, Zen 4 VM),
/// more of its 1×1 convolutions summed in one pass straight into their output; 768 and 1024
/// no better. Elsewhere (wasm) 256, as measured before.
#[cfg(target_arch = "x86_64")]
const K_STEP: usize = 512;
#[cfg(not(target_arch = "x86_64"))]
const K_STEP: usize = 256;
/// [`K_STEP`] for the padded layouts (kernels larger than 1×1): their steps read 3 rows of
/// each channel where a 1×1's read one line, so fewer channels' rows stay in L1 across a pass.
/// On the Zen 3 VM (AVX2), DenseNet-121's 3×3 convolutions (128 → 32) at 256 against 512,
/// standalone, runs alternated in one process: 56 × 56 3.54 → 3.24 ms, 28 × 28 0.83 → 0.80.
/// The AVX-512 plan runs these as [`DirectConv::run_small`], whose sums take one pass.
const K_STEP_KXK: usize = 256;
/// [`K_STEP`] for 1×1 convolutions that pack their image block by block anyway (through a
/// prologue, or pooled: [`DirectConv::packs_image`]), on x86-64: each step reads one contiguous
/// line, and a sum of up to 1024 steps (all of DenseNet-121's) goes in one pass straight into
/// the output planes, no blocks' buffer. Zen 3 VM (AVX2), standalone, runs alternated, one
/// thread: its bottlenecks 768 → 128 and 1024 → 128 on 14 × 14 4–5 % faster, 1024 → 128 on
/// 7 × 7 6 %, 640 → 128 on 28 × 28 1–2 % (two threads: 3–6 %); in the model, two plans
/// alternated, its 1×1 convolutions 2–4 % faster at one and two threads. Read in place (no
/// prologue), longer passes were 15–20 % slower on 14 × 14, so those keep [`K_STEP`]. With
/// AVX-512 the 7 × 7 and 14 × 14 ones run as [`DirectConv::run_small`] instead.
#[cfg(target_arch = "x86_64")]
const K_STEP_PACKED: usize = 1024;
#[cfg(not(target_arch = "x86_64"))]
const K_STEP_PACKED: usize = K_STEP;
/// Images read in place above this many bytes are prefetched a group ahead
/// ([`Layout::prefetch`]): an L2 (512 KB a core on the Zen 3 and Zen 4 VMs).
const PREFETCH_BYTES: usize = 512 << 10;
/// Output channels (lanes: two vectors) and positions (broadcast) per block of
/// [`DirectConv::run_small`].
const SMALL_M: usize = 32;
const SMALL_P: usize = 7;
/// Planes under this many positions run their narrowing 1×1 convolutions (fewer output
/// channels than input ones) as [`DirectConv::run_small`] too: 14 × 14 is 28 groups of
/// [`SMALL_P`] and 13 blocks of 16 positions, the last a quarter full. One thread, Zen 4:
/// MobileNetV2's 576 → 96 0.218 → 0.195 ms, 384 → 96 0.144 → 0.133, 384 → 64 0.094 → 0.089;
/// DenseNet-121's bottlenecks (batch norm + ReLU before) 256, 512, 768, 1024 → 128 0.139 →
/// 0.130, 0.283 → 0.257, 0.423 → 0.370, 0.631 → 0.517. Widening ones (96 → 576, 64 → 384) were
/// 4 % slower, and at 28 × 28 and 56 × 56 it gained nothing.
const SMALL_NARROWING: usize = 256;
/// Planes of at most this many positions run their stride-1 convolutions with larger
/// kernels (DenseNet-121's 3×3 ones) as [`DirectConv::run_small`] (with AVX-512, and with
/// AVX2 as [`DirectConv::small_block_avx2`]), from the padded image: no lanes computed for
/// the padding columns (the positions-in-lanes blocks cover rows of `OW + 1`: 14 blocks for
/// 13 on 14 × 14), no partial sums through a blocks' buffer between passes. DenseNet-121's
/// 128 → 32, one thread, standalone: 7 × 7 0.050 → 0.042 ms, 14 × 14 0.163 → 0.145, 28 × 28
/// 0.56 → 0.56, 56 × 56 2.19–2.27 → 2.14–2.16; in the model on two threads, 12 layers of
/// 28 × 28 4.33–4.50 → 3.91–3.93 ms, 24 of 14 × 14 3.0–3.2 → 2.44–2.51 ms, and 6 of 56 × 56
/// 7.36–8.01 → 7.10–7.17 ms (12.98–13.32 → 12.79–13.09 on one thread).
const SMALL_KXK: usize = 56 * 56;

/// Whether 1×1 convolutions on small planes run as [`DirectConv::run_small`] on this CPU
/// (AVX-512, where the panel width says so too: a plan form keyed by it packs for it).
fn small_planes() -> bool {
    #[cfg(target_arch = "x86_64")]
    if panel_width() == NR_AVX512 {
        return true;
    }
    false
}

/// Whether this CPU runs [`DirectConv::run_small`] beyond [`small_planes`]: stride-1
/// convolutions with kernels larger than 1×1 on planes of up to [`SMALL_KXK`] positions
/// (AVX-512 or AVX2), and with AVX2 alone narrowing 1×1 convolutions read in place
/// ([`DirectConv::small`]). A plan form is keyed by the vector kernels ([`kernels`]).
fn small_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        return true;
    }
    false
}

/// What a block of [`DirectConv::run_small`] reads: the image; its steps, each where it
/// reads relative to a position's first value there, and the positions in a row of it (an
/// output position `(y, x)`'s first value is at `y · width + x`); the block's kernel `w`
/// (`[step][SMALL_M]`) and the operator's bias.
#[derive(Clone, Copy)]
struct Small<'a> {
    image: &'a [f32],
    steps: &'a [usize],
    width: usize,
    w: &'a [f32],
    bias: &'a [f32],
    /// What the image's output gains after the clamp (`M × OH × OW`), where it has one.
    residual: Option<&'a [f32]>,
}

/// The image values [`Small`]'s steps reach, for `OH × OW` positions: the farthest step from
/// the last position's first value, and one.
fn small_reach(steps: &[usize], width: usize, [oh, ow]: [usize; 2]) -> usize {
    let last = (oh.max(1) - 1) * width + ow.max(1) - 1;
    steps.iter().max().map_or(0, |s| s + last + 1)
}

/// The sums of [`DirectConv::small_block_avx512`]'s group of positions (each one's first
/// image value at `x[j]`) over `steps`, the kernel `w` (`[step][SMALL_M]`) two vectors a
/// step: seven broadcast image values, fourteen multiply-adds. Where `PREFETCH`, the next
/// block's weights (`taps` × [`SMALL_M`] values on) on their way into L2 meanwhile: a loop
/// of its own, so that the other keeps its registers for the sums' pointers.
///
/// # Safety
/// The CPU has AVX-512F; `w` holds `steps.len()` steps (twice as many where `PREFETCH`),
/// and `x[j] + step` is inside the image for every `j` and step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn small_sums<const PREFETCH: bool>(
    x: &[*const f32; SMALL_P],
    steps: &[usize],
    w: &[f32],
    acc: &mut [[std::arch::x86_64::__m512; 2]; SMALL_P],
) {
    use std::arch::x86_64::*;
    let next = steps.len() * SMALL_M;
    for (&step, wk) in steps.iter().zip(w.chunks_exact(SMALL_M)) {
        // SAFETY: `wk` holds SMALL_M values, the next block's lie `next` on (where
        // `PREFETCH`), and the reads are the caller's contract.
        unsafe {
            let wk = wk.as_ptr();
            if PREFETCH {
                let n = wk.add(next).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T1>(n);
                _mm_prefetch::<_MM_HINT_T1>(n.add(64));
            }
            let (w0, w1) = (_mm512_loadu_ps(wk), _mm512_loadu_ps(wk.add(16)));
            for (x, acc) in x.iter().zip(acc.iter_mut()) {
                let v = _mm512_set1_ps(*x.add(step));
                acc[0] = _mm512_fmadd_ps(w0, v, acc[0]);
                acc[1] = _mm512_fmadd_ps(w1, v, acc[1]);
            }
        }
    }
}

/// Positions per AVX2 block of [`DirectConv::run_small`]: [`small_sums_avx2`]'s six broadcast
/// values by two vectors of channels, twelve sums.
#[cfg(target_arch = "x86_64")]
const SMALL_P_AVX2: usize = 6;
/// Taps summed per pass over a band by [`DirectConv::small_block_avx2`]: 144, a 3×3 kernel's
/// sixteen input channels (18 KB of weights). DenseNet-121 in one process, two plans, runs
/// alternated (3 × 15–20 each, one thread): against the positions-in-lanes blocks 0.958 /
/// 0.912 / 0.932× at 144, 0.986 / 0.950 / 0.954× at 72, 0.978 / 0.953× at 288, 0.994× at 36.
#[cfg(target_arch = "x86_64")]
const SMALL_CHUNK: usize = 144;
/// Positions per band of [`DirectConv::small_block_avx2`] at most (its bands of equal
/// length): its sums' buffer (8 KB) stays in L1 with the chunk (bands of 24, 48 and 96 ran
/// DenseNet-121 as fast), and a 7 × 7 plane is one band.
#[cfg(target_arch = "x86_64")]
const SMALL_BAND: usize = 64;

/// Half of a block's sums in [`DirectConv::small_block_avx2`]: for `P` positions (each one's
/// first image value at `x[j]`) and 16 channels, over `steps`, from the kernel at `w`
/// (`[step][SMALL_M]`, the half's first channel) — one weight vector pair and `P` broadcast
/// image values a step — added to the sums at `acc` (rows of [`SMALL_M`], the half's first
/// channel), or written over them where `fresh`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `w` holds `steps.len()` steps of [`SMALL_M`] values, `acc` `P`
/// rows, and `x[j] + step` is inside the image for every `j` and step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn small_sums_avx2<const P: usize>(
    x: &[*const f32; P],
    steps: &[usize],
    w: *const f32,
    acc: *mut f32,
    fresh: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let mut sums = [[_mm256_setzero_ps(); 2]; P];
        if !fresh {
            for (j, s) in sums.iter_mut().enumerate() {
                let row = acc.add(j * SMALL_M);
                *s = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
            }
        }
        let mut w = w;
        for &step in steps {
            let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            for (x, s) in x.iter().zip(sums.iter_mut()) {
                let v = _mm256_broadcast_ss(&*x.add(step));
                s[0] = _mm256_fmadd_ps(v, w0, s[0]);
                s[1] = _mm256_fmadd_ps(v, w1, s[1]);
            }
            w = w.add(SMALL_M);
        }
        for (j, s) in sums.iter().enumerate() {
            let row = acc.add(j * SMALL_M);
            _mm256_storeu_ps(row, s[0]);
            _mm256_storeu_ps(row.add(8), s[1]);
        }
    }
}

/// A pointer that blocks running side by side write disjoint parts through.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the blocks that share it write disjoint ranges, and nothing reads them until all
// are done.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Blocks that pass over a panel's weights in turn (their image lines, `K_STEP` × 64 bytes
/// each when packed, stay in L2 across the panels).
const GROUP: usize = 8;

/// A convolution over NCHW f32 images with one group. Inputs: the image `[N, C, H, W]`, the
/// kernel (ONNX's OIHW `[M, C, KH, KW]`, packed by [`DirectConv::pack`] when the graph is
/// rewritten) and the bias (`M` values, or one for every channel).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectConv {
    input_channels: usize,
    output_channels: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    /// Zero rows above and columns left of the image; those below and right follow from the
    /// output size (everything outside the image reads as zero).
    pad_before: [usize; 2],
    /// The input first goes through `max(x · scale[c] + shift[c], 0)` (a batch
    /// normalisation and ReLU before the convolution, as DenseNet's layers have): two more
    /// inputs, `scale` and `shift`, `C` values each. Applied as the image is copied in, so it
    /// costs no pass of its own; the padding stays zero.
    prologue: bool,
    /// A 2×2 average pooling at stride 2 after the convolution (DenseNet's transitions),
    /// computed before it instead, after the prologue: both are linear, so that
    /// `pool(conv(x)) = conv(pool(x))`, and the matrix product runs on a quarter of the
    /// positions. `input_hw` is then the image's size, twice the output's. 1×1 kernels only.
    pooled: bool,
    /// What the output goes through after the bias (ReLU where DenseNet's pointwise
    /// convolutions have it, ReLU6 after MobileNetV2's stem).
    clamp: Clamp,
    /// The output then gains a tensor of its own shape, after the clamp (a residual
    /// connection's addition, MobileNetV2's after each of its projections but the chains':
    /// [`fuse_residuals`]): one more input, the last. Added as the output is written, so that
    /// it costs no pass of its own, and the next layer reads a tensor this one just wrote.
    residual: bool,
    /// Its layout for this CPU's panel width, made on first use.
    layout: LayoutCell,
}

/// An operator's [`Layout`], made once: a layer's offsets are one per step of its sum, and
/// making them at every run, divisions aside, was 8 % of a 7 × 7 3×3 layer's time. No part
/// of the operator's identity (equal and hashed alike whether made yet or not).
#[derive(Clone, Default)]
struct LayoutCell(std::sync::OnceLock<Layout>);

impl PartialEq for LayoutCell {
    fn eq(&self, _: &LayoutCell) -> bool {
        true
    }
}

impl Eq for LayoutCell {}

impl std::hash::Hash for LayoutCell {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for LayoutCell {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("LayoutCell")
    }
}

/// `min(max(x, lo), hi)`, applied to an operator's output as it is written (ReLU: 0 and +∞;
/// ReLU6: 0 and 6; none: −∞ and +∞). The bounds are kept as f32 bits so that the operators
/// holding one stay `Eq + Hash`, as tract's ops are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Clamp([u32; 2]);

impl Clamp {
    pub(crate) const NONE: Clamp = Clamp::new(f32::NEG_INFINITY, f32::INFINITY);

    pub(crate) const fn new(lo: f32, hi: f32) -> Clamp {
        Clamp([lo.to_bits(), hi.to_bits()])
    }

    /// The bounds' bits, as the plan form keeps them.
    pub(crate) fn bits(self) -> [u32; 2] {
        self.0
    }

    /// The clamp of the plan form's two numbers (the bounds' bits).
    pub(crate) fn from_words(lo: u64, hi: u64) -> Option<Clamp> {
        Some(Clamp([u32::try_from(lo).ok()?, u32::try_from(hi).ok()?]))
    }

    pub(crate) fn bounds(self) -> [f32; 2] {
        self.0.map(f32::from_bits)
    }

    /// `x` clamped to `[lo, hi]`, as comparisons and selects (a NaN passes through): the form
    /// that vectorises to single min/max instructions on x86 and wasm alike, where Rust's
    /// `f32::max` must also pick the number over a NaN.
    #[inline(always)]
    pub(crate) fn apply(lo: f32, hi: f32, x: f32) -> f32 {
        let x = if x < lo { lo } else { x };
        if x > hi { hi } else { x }
    }
}

impl std::fmt::Display for Clamp {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.bounds() {
            _ if *self == Clamp::NONE => Ok(()),
            [lo, hi] if hi == f32::INFINITY => write!(f, ", max(·, {lo}) after"),
            [lo, hi] => write!(f, ", clamped to [{lo}, {hi}] after"),
        }
    }
}

/// The operators [`fuse_clamps`] folds a following `Max`/`Min` into.
pub(crate) trait Clamped: TypedOp + Clone {
    fn clamp(&self) -> Clamp;
    fn with_clamp(&self, clamp: Clamp) -> Self;
}

/// Folds into each of medinfer's convolutions (dense and depthwise) the `Max(·, lo)` and then
/// `Min(·, hi)` by constants that follow it (ReLU, ReLU6, a clip), where it is the only
/// consumer of each link: applied as the output is written instead of a pass of its own.
/// Returns how many operators took one.
pub fn fuse_clamps(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let patch = if let Some(op) = node.op_as::<DirectConv>() {
            clamp_patch(model, id, op)?
        } else if let Some(op) = node.op_as::<crate::depthwise::DepthwiseConv>() {
            clamp_patch(model, id, op)?
        } else {
            None
        };
        if let Some(patch) = patch {
            patch.apply(model)?;
            fused += 1;
        }
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// The patch [`fuse_clamps`] applies at node `id` (holding `op`), when a clamp follows.
fn clamp_patch<O: Clamped>(
    model: &TypedModel,
    id: usize,
    op: &O,
) -> TractResult<Option<TypedModelPatch>> {
    if op.clamp() != Clamp::NONE {
        return Ok(None);
    }
    // The bound of `op` ("Max" or "Min") applied to `outlet` alone, when it is next.
    let bound = |outlet: OutletId, op: &str| -> TractResult<Option<(OutletId, f32)>> {
        let successors = &model.outlet_successors(outlet);
        if successors.len() != 1 || model.outputs.contains(&outlet) {
            return Ok(None);
        }
        let next = OutletId::new(successors[0].node, 0);
        Ok(match with_constant(model, next, op, false)? {
            Some((from, values))
                if from == outlet
                    && values.first().is_some_and(|v| values.iter().all(|w| w == v)) =>
            {
                Some((next, values[0]))
            }
            _ => None,
        })
    };
    let mut last = OutletId::new(id, 0);
    let [mut lo, mut hi] = Clamp::NONE.bounds();
    if let Some((next, v)) = bound(last, "Max")? {
        (last, lo) = (next, v);
    }
    if let Some((next, v)) = bound(last, "Min")? {
        (last, hi) = (next, v);
    }
    if last.node == id || lo.is_nan() || hi.is_nan() || lo > hi {
        return Ok(None);
    }
    let node = model.node(id);
    let mut patch = TypedModelPatch::default();
    let inputs =
        node.inputs.iter().map(|&i| patch.tap_model(model, i)).collect::<TractResult<TVec<_>>>()?;
    let wire = patch.wire_node(&node.name, op.with_clamp(Clamp::new(lo, hi)), &inputs)?;
    patch.shunt_outside(model, last, wire[0])?;
    Ok(Some(patch))
}

/// Folds each `Add` of two tensors of one shape, one of them the output of a medinfer direct
/// convolution read by nothing else (nor an output of the model), into that convolution
/// ([`DirectConv`]'s `residual`): the other tensor becomes its last input, added as its output
/// is written. MobileNetV2's residual connections: ten additions, about 0.08 ms of a
/// two-thread run as tract's operators (Zen 4 VM); the nine that fold in take nothing
/// measurable from the convolutions (14 × 14: 0.050 and 0.105 ms with and without). Run
/// after [`crate::fused::substitute`], whose operators take no residual. Returns how many.
pub fn fuse_residuals(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        if !node.op_is::<TypedBinOp>() || node.op.name() != "Add" || node.inputs.len() != 2 {
            continue;
        }
        let sum = model.outlet_fact(OutletId::new(id, 0))?;
        for (conv_at, other_at) in [(0, 1), (1, 0)] {
            let (outlet, other) = (node.inputs[conv_at], node.inputs[other_at]);
            let Some(op) = model.node(outlet.node).op_as::<DirectConv>() else { continue };
            let facts = [model.outlet_fact(outlet)?, model.outlet_fact(other)?];
            if op.residual
                || model.outlet_successors(outlet).len() != 1
                || model.outputs.contains(&outlet)
                || facts.iter().any(|f| {
                    f.datum_type != f32::datum_type()
                        || f.konst.is_some()
                        || f.shape != sum.shape
                        || f.shape.as_concrete().is_none()
                })
            {
                continue;
            }
            let conv = model.node(outlet.node);
            let mut patch = TypedModelPatch::default();
            let mut inputs = conv
                .inputs
                .iter()
                .map(|&i| patch.tap_model(model, i))
                .collect::<TractResult<TVec<_>>>()?;
            inputs.push(patch.tap_model(model, other)?);
            let op = DirectConv { residual: true, ..op.clone() };
            let wire = patch.wire_node(&conv.name, op, &inputs)?;
            patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
            patch.apply(model)?;
            fused += 1;
            break;
        }
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// Replaces every `Conv` of `model` that [`DirectConv`] covers (f32, NCHW, constant OIHW
/// kernel larger than 1×1, 2-D, one group, no dilation, concrete shapes) with it, the kernel
/// packed once here rather than at every run. Returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        if node.inputs.len() != 3 {
            continue;
        }
        let facts = |i: usize| model.outlet_fact(node.inputs[i]);
        let output = model.outlet_fact(OutletId::new(id, 0))?;
        let Some(op) = DirectConv::for_conv(conv, facts(0)?, facts(1)?, facts(2)?, output) else {
            continue;
        };
        let Some(kernel) = constant(model, node.inputs[1])? else { continue };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, node.inputs[0])?;
        let bias = patch.tap_model(model, node.inputs[2])?;
        let packed = patch.add_const(format!("{}.medinfer.kernel", node.name), op.pack(&kernel))?;
        let wire = patch.wire_node(node.name.clone(), op, &[input, packed, bias])?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// Replaces, in place, every `Conv` of `model` (with its three inputs) for which `make` gives
/// an operator, from the conv and the facts of its image, kernel, bias and output. Returns
/// how many. (What [`crate::depthwise`] does; [`substitute`] also rewires the kernel.)
pub(crate) fn replace_convs<O: TypedOp>(
    model: &mut TypedModel,
    make: impl Fn(&Conv, &TypedFact, &TypedFact, &TypedFact, &TypedFact) -> Option<O>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        if node.inputs.len() != 3 {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let kernel = model.outlet_fact(node.inputs[1])?;
        let bias = model.outlet_fact(node.inputs[2])?;
        let output = model.outlet_fact(OutletId::new(id, 0))?;
        if let Some(op) = make(conv, input, kernel, bias, output) {
            model.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// Whether a convolution or pooling of these sizes reads only the image and its padding:
/// every size above zero, and fewer padding rows (columns) before and after the image than
/// the kernel has (those after follow from the output size). What the operators assume and
/// the plan form checks of the ones it reads.
pub(crate) fn geometry_ok(
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    pad_before: [usize; 2],
) -> bool {
    (0..2).all(|a| {
        let reach = (output_hw[a].max(1) - 1) * strides[a] + kernel_hw[a];
        [input_hw[a], output_hw[a], kernel_hw[a], strides[a]].iter().all(|&v| v > 0)
            && pad_before[a] < kernel_hw[a]
            && reach > pad_before[a]
            && reach - pad_before[a] < input_hw[a] + kernel_hw[a]
    })
}

/// A size or count read from the plan form: at most 2²⁰, so that no product of them
/// overflows.
pub(crate) fn size_word(v: u64) -> Option<usize> {
    usize::try_from(v).ok().filter(|&v| v <= 1 << 20)
}

/// `spec`'s strides as rows and columns (1 and 1 where it has none); `None` for another rank.
pub(crate) fn strides_2d(spec: &PoolSpec) -> Option<[usize; 2]> {
    match &spec.strides {
        None => Some([1, 1]),
        Some(s) if s.len() == 2 => Some([s[0], s[1]]),
        Some(_) => None,
    }
}

/// The zero rows and columns before the image that `spec`'s padding asks for, for these
/// sizes (a `Same` padding split as ONNX says); `None` for a spec of another rank. One as
/// large as the kernel (outputs of bias only) is `None` too: left to tract, as real models
/// have none.
pub(crate) fn pad_before(
    spec: &PoolSpec,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
) -> Option<[usize; 2]> {
    let axis = |axis: usize| -> Option<usize> {
        let same_total = ((output_hw[axis] - 1) * strides[axis] + kernel_hw[axis])
            .saturating_sub(input_hw[axis]);
        let before = match &spec.padding {
            PaddingSpec::Valid => 0,
            PaddingSpec::Explicit(before, _) | PaddingSpec::ExplicitOnnxPool(before, _, _) => {
                *before.get(axis)?
            }
            PaddingSpec::SameUpper => same_total / 2,
            PaddingSpec::SameLower => same_total - same_total / 2,
        };
        (before < kernel_hw[axis]).then_some(before)
    };
    Some([axis(0)?, axis(1)?])
}

/// Replaces each 1×1 convolution that declutter left as an `EinSum` (`NIHW,OI->NOHW`, f32,
/// constant weights, concrete shapes) with a [`DirectConv`]. Where its input is a batch
/// normalisation and ReLU of its own — `Mul` by a per-channel constant, `Add` of one, `Max`
/// with zero, each used only by the next (DenseNet's pre-activation layers) — the operator
/// applies them while it copies the input in: tract would run them as a separate pass, then
/// pack the result for its matrix product. Without them (MobileNetV2's), only on images of 4
/// blocks of positions and more: on 7 × 7 the last block's padding lost to tract's product
/// (MobileNetV2's 7 × 7 layers: 2.7 ms against 2.0, one thread, Zen 4 VM), where the
/// prologue's pass saved tips DenseNet-121's the other way. The `Add` of a per-channel
/// constant that follows the product, where it does, becomes its bias, and a 2×2 average
/// pooling after that runs before the product. `pooled_only`: only the convolutions with
/// such a pooling (DenseNet-121's transitions, where a quarter of the products beats a
/// slower block: the wasm builds). Returns how many.
pub fn substitute_pointwise(model: &mut TypedModel, pooled_only: bool) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        if let Some(patch) = pointwise_patch(model, id, pooled_only)? {
            patch.apply(model)?;
            replaced += 1;
        }
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// Lets each 1×1 convolution that copies its image anyway (through a prologue, or pooled
/// first: [`DirectConv::packs_image`]) read the inputs of the concatenation along the channels
/// before it, in place of its output; chains of such concatenations are flattened first
/// (`concat(concat(a, b), c)` → `concat(a, b, c)`). Returns how many nodes were rewired.
///
/// DenseNet-121 concatenates its growing feature maps after every layer: about 40 MB copied
/// per image (2.3 of a 59 ms run, one thread, the Zen 4 VM), each map read next by the
/// following layer's 1×1 convolution and the following concatenation only. With both reading
/// the pieces, no concatenation inside a dense block has a reader left and none runs; the
/// last block's final one copies each piece once.
pub fn read_concats(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewired = 0;
    // Nodes in order, so that a concatenation's inputs are already flat when it is reached
    // (a patch rewires the readers of a node it replaces to the new one).
    for id in model.eval_order()? {
        let node = model.node(id);
        let channels = |outlet: &OutletId| {
            model.node(outlet.node).op_as::<Concat>().filter(|c| c.axis() == 1).is_some()
        };
        let inputs: TVec<OutletId> = if node.op_as::<Concat>().is_some_and(|c| c.axis() == 1) {
            if !node.inputs.iter().any(channels) {
                continue;
            }
            let mut flat = tvec!();
            for input in &node.inputs {
                match channels(input) {
                    true => flat.extend(model.node(input.node).inputs.iter().copied()),
                    false => flat.push(*input),
                }
            }
            flat
        } else if let Some(conv) = node.op_as::<DirectConv>() {
            let params = conv.params();
            if !conv.packs_image() || node.inputs.len() != 1 + params || !channels(&node.inputs[0])
            {
                continue;
            }
            let pieces = &model.node(node.inputs[0].node).inputs;
            pieces.iter().chain(&node.inputs[1..]).copied().collect()
        } else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let taps =
            inputs.iter().map(|&i| patch.tap_model(model, i)).collect::<TractResult<TVec<_>>>()?;
        let wire = patch.wire_node(&node.name, node.op.clone(), &taps)?;
        patch.shunt_outside(model, OutletId::new(id, 0), wire[0])?;
        patch.apply(model)?;
        rewired += 1;
    }
    if rewired > 0 {
        model.compact()?;
    }
    Ok(rewired)
}

/// The f32 values of a constant `outlet`, when it is one.
fn constant(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    match &fact.konst {
        Some(t) if fact.datum_type == f32::datum_type() => {
            Ok(Some(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
        }
        _ => Ok(None),
    }
}

/// When `outlet` is the only output of a binary `op` ("Mul", "Add", "Max") of a tensor and a
/// constant — and, where `sole`, has exactly one consumer and is no output of the model (a
/// link the fused operator makes disappear): the tensor's outlet and the constant.
fn with_constant(
    model: &TypedModel,
    outlet: OutletId,
    op: &str,
    sole: bool,
) -> TractResult<Option<(OutletId, Vec<f32>)>> {
    let node = model.node(outlet.node);
    if !node.op_is::<TypedBinOp>()
        || node.op.name() != op
        || node.inputs.len() != 2
        || node.outputs.len() != 1
        || (sole && (node.outputs[0].successors.len() != 1 || model.outputs.contains(&outlet)))
    {
        return Ok(None);
    }
    for (tensor, konst) in [(0, 1), (1, 0)] {
        if let Some(values) = constant(model, node.inputs[konst])?
            && model.outlet_fact(node.inputs[tensor])?.konst.is_none()
        {
            return Ok(Some((node.inputs[tensor], values)));
        }
    }
    Ok(None)
}

/// `values` as one per channel: as they are when there are `n`, repeated when there is one.
fn per_channel(values: Vec<f32>, n: usize) -> Option<Vec<f32>> {
    match values.len() {
        1 => Some(vec![values[0]; n]),
        len if len == n => Some(values),
        _ => None,
    }
}

/// When `outlet` is `Max(Add(Mul(x, scale), shift), 0)` (scale and shift per channel of `c`,
/// each link used only by the next): `x`, the scale and the shift.
#[allow(clippy::type_complexity)]
fn prologue(
    model: &TypedModel,
    outlet: OutletId,
    c: usize,
) -> TractResult<Option<(OutletId, Vec<f32>, Vec<f32>)>> {
    let Some((added, zero)) = with_constant(model, outlet, "Max", true)? else { return Ok(None) };
    let Some((scaled, shift)) = with_constant(model, added, "Add", true)? else { return Ok(None) };
    let Some((x, scale)) = with_constant(model, scaled, "Mul", true)? else { return Ok(None) };
    let (Some(scale), Some(shift)) = (per_channel(scale, c), per_channel(shift, c)) else {
        return Ok(None);
    };
    Ok(zero.iter().all(|&v| v == 0.0).then_some((x, scale, shift)))
}

/// The patch [`substitute_pointwise`] applies at node `id`, when the pattern is there.
fn pointwise_patch(
    model: &TypedModel,
    id: usize,
    pooled_only: bool,
) -> TractResult<Option<TypedModelPatch>> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || einsum.axes.to_string() != "NIHW,OI->NOHW"
        || node.inputs.len() != 2
    {
        return Ok(None);
    }
    let Some(weights) = constant(model, node.inputs[1])? else { return Ok(None) };
    let Some(shape) = model.outlet_fact(node.inputs[0])?.shape.as_concrete().map(|s| s.to_vec())
    else {
        return Ok(None);
    };
    let [_, c, h, w] = shape[..] else { return Ok(None) };
    if c == 0 || h == 0 || w == 0 || weights.len() % c != 0 {
        return Ok(None);
    }
    let o = weights.len() / c;
    let (x, prologue) = match prologue(model, node.inputs[0], c)? {
        Some((x, scale, shift)) => (x, Some((scale, shift))),
        None if h * w >= 4 * TILE || small_planes() => (node.inputs[0], None),
        None => return Ok(None),
    };
    // After, where they are: Add(·, bias), then a 2×2 average pooling ([`fuse_clamps`] takes
    // a ReLU after that).
    let mut last = OutletId::new(id, 0);
    let mut bias = vec![0f32];
    let sole_next = |outlet: OutletId| {
        let successors = model.outlet_successors(outlet);
        (successors.len() == 1 && !model.outputs.contains(&outlet))
            .then(|| OutletId::new(successors[0].node, 0))
    };
    if let Some(next) = sole_next(last)
        && let Some((from, b)) = with_constant(model, next, "Add", false)?
        && from == last
        && let Some(b) = per_channel(b, o)
    {
        (last, bias) = (next, b);
    }
    let mut output_hw = [h, w];
    if let Some(next) = sole_next(last)
        && let Some(hw) = halving_pool(model, next, [h, w])?
    {
        (last, output_hw) = (next, hw);
    }
    let pooled = output_hw != [h, w];
    if pooled_only && !pooled {
        return Ok(None);
    }
    let op = DirectConv {
        input_channels: c,
        output_channels: o,
        input_hw: [h, w],
        output_hw,
        kernel_hw: [1, 1],
        strides: [1, 1],
        pad_before: [0, 0],
        prologue: prologue.is_some(),
        pooled,
        clamp: Clamp::NONE,
        residual: false,
        layout: LayoutCell::default(),
    };
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, x)?;
    let name = &node.name;
    let konst = |patch: &mut TypedModelPatch, what: &str, v: &[f32], shape: &[usize]| {
        patch.add_const(format!("{name}.medinfer.{what}"), tensor1(v).into_shape(shape)?)
    };
    let kernel = patch.add_const(format!("{name}.medinfer.kernel"), op.pack(&weights))?;
    let bias = konst(&mut patch, "bias", &bias, &[bias.len()])?;
    let mut inputs = vec![input, kernel, bias];
    if let Some((scale, shift)) = prologue {
        inputs.push(konst(&mut patch, "scale", &scale, &[c])?);
        inputs.push(konst(&mut patch, "shift", &shift, &[c])?);
    }
    let wire = patch.wire_node(name.clone(), op, &inputs)?;
    patch.shunt_outside(model, last, wire[0])?;
    Ok(Some(patch))
}

/// When `outlet` is a 2×2 average pooling at stride 2 without padding (floor mode) of an NCHW
/// image of `hw`: its output size.
fn halving_pool(
    model: &TypedModel,
    outlet: OutletId,
    hw: [usize; 2],
) -> TractResult<Option<[usize; 2]>> {
    let Some(pool) = model.node(outlet.node).op_as::<SumPool>() else { return Ok(None) };
    let spec = &pool.pool_spec;
    let output = model.outlet_fact(outlet)?.shape.as_concrete().map(|s| s.to_vec());
    let half = hw.map(|v| v / 2);
    let fits = pool.normalize
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.as_slice() == [2, 2]
        && spec.strides.as_ref().is_some_and(|s| s.as_slice() == [2, 2])
        && spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1))
        && !half.contains(&0)
        && output.is_some_and(|s| s.len() == 4 && s[2..] == half)
        && pad_before(spec, hw, half, [2, 2], [2, 2]) == Some([0, 0]);
    Ok(fits.then_some(half))
}

/// The runs of a block's lanes that land in output columns, for positions `p..p + lanes`
/// laid out in rows of `width` (the last `width − OW` of each computed and dropped), `OH`
/// rows: each run's first lane, its length and the output index (`y · OW + x`) of its first
/// value (one per row the block touches, at most [`TILE`]). An iterator: returned as an
/// array of [`TILE`] runs, it was copied out at every store of a block.
fn row_runs(
    p: usize,
    lanes: usize,
    width: usize,
    [oh, ow]: [usize; 2],
) -> impl Iterator<Item = (usize, usize, usize)> {
    let (mut lane, mut y, mut x) = (0, p / width, p % width);
    std::iter::from_fn(move || {
        while lane < lanes && y < oh {
            let run = (width - x).min(lanes - lane);
            let valid = ow.saturating_sub(x).min(run);
            let start = (lane, valid, y * ow + x);
            lane += run;
            (y, x) = (y + 1, 0);
            if valid > 0 {
                return Some(start);
            }
        }
        None
    })
}

/// Where everything lies in the scratch, for one operator.
#[derive(Clone)]
struct Layout {
    /// Rows and width of a phase plane.
    rows: usize,
    width: usize,
    /// Output positions computed per image (`OH · width`) and blocks covering them.
    positions: usize,
    tiles: usize,
    /// Output channels rounded up to whole panels.
    channels: usize,
    /// Output channels per panel: [`DirectConv::panel`], unless a test picks a block.
    nr: usize,
    /// Steps of the sum per pass over a block: [`K_STEP`], [`K_STEP_PACKED`] where the image is
    /// packed through a prologue or pooled, [`K_STEP_KXK`] where the layout is padded.
    k_step: usize,
    /// Scratch floats per image, reach of the farthest read included.
    scratch: usize,
    /// Where tap `k` (input channel, kernel row, kernel column) reads, relative to its
    /// block's start in the scratch.
    offsets: Arc<[usize]>,
    /// Scratch floats from one block's start to the next: [`TILE`] for the padded planes;
    /// `C · TILE` where the scratch is `packed`.
    tile_stride: usize,
    /// 1×1 kernels at stride 1 without padding: the scratch holds the image block by block,
    /// `[block][C][TILE]`, so that each step of the sum reads one contiguous line (read in
    /// place, a plane per step put every step on another page: slower than tract's packing).
    packed: bool,
    /// The blocks' buffer is `[panel][block][NR × TILE]` and threads share it by panels
    /// (each reads the whole image and its own weights), rather than `[block][channels][TILE]`
    /// shared by blocks (each reads its part of the image and all the weights). By panels
    /// where that reads less: DenseNet-121's deep layers (49–196 positions, weights of up to
    /// 0.5 MB), where a thread's few blocks would reread all the weights for little work.
    by_panel: bool,
    /// Whether the AVX2 block prefetches, on a group's first panel, the line each step will
    /// read for the next group ([`tiles`]): an image read in place ([`DirectConv::in_place`])
    /// and larger than [`PREFETCH_BYTES`]. Each step reads a line of another plane, more
    /// streams than the hardware's prefetchers follow, so a group's first pass waited on
    /// memory for every line. MobileNetV2's 96 → 24 projection on 56 × 56 (1.2 MB read), Zen 3
    /// VM, one thread, runs alternated: caches flushed before each run 0.75 → 0.55 ms, image
    /// left in cache 0.20 → 0.20; in the model (one plan, runs alternated with and without)
    /// 0.41–0.42 → 0.32–0.33 ms, its 144 → 24 projection 0.49–0.53 → 0.45–0.51, its 16 → 96
    /// expansion with the depthwise convolution after (0.8 MB) −3.5–4.5 %; the whole model
    /// 1.4 % faster on one thread, 0.5 % on two. Where the image fits in L2 (prefetched on
    /// every panel, a first form) it cost up to 6 %.
    prefetch: bool,
}

impl Layout {
    /// Where the sums of block `tile` for output channel `o` start in the blocks' buffer
    /// (`[panel][block][NR × TILE]` by panel, `[block][channels][TILE]` by block).
    fn block_sums(&self, tile: usize, o: usize) -> usize {
        if self.by_panel {
            let nr = self.nr;
            ((o / nr * self.tiles + tile) * nr + o % nr) * TILE
        } else {
            (tile * self.channels + o) * TILE
        }
    }
}

/// A thread's reusable buffers: the blocks and the pooled image.
#[derive(Default)]
struct Buffers {
    blocks: Vec<f32>,
    /// The pooled image, where the operator is `pooled`.
    pooled: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::default();
    /// [`DirectConv::run_by_panels`]'s planes of one panel, per thread.
    static PANEL: RefCell<Vec<f32>> = RefCell::default();
    /// [`DirectConv::run_by_bands`]'s image of one band, per thread.
    static BAND: RefCell<Vec<f32>> = RefCell::default();
    /// The padded or packed image, per thread: the calling thread's where every unit reads
    /// all of it, else each unit's own rows or blocks ([`DirectConv::run_by_rows`]). One
    /// scratch for both: a second one, for the units, slowed DenseNet-121's 1×1 convolutions
    /// on two threads (those on 28 × 28: 4.8 → 5.4 ms a run).
    static IMAGE: RefCell<Vec<f32>> = RefCell::default();
}

/// Under test, fills a unit's scratch with NaN before the unit pads or packs its part of it:
/// a value its blocks read but nothing wrote turns an output NaN, whichever thread ran which
/// unit before. Elsewhere nothing.
fn poison(scratch: &mut [f32]) {
    if cfg!(test) {
        scratch.fill(f32::NAN);
    }
}

/// `v` grown to at least `n` values (new ones zero); what it held is kept.
pub(crate) fn at_least(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl DirectConv {
    /// How many numbers [`DirectConv::to_words`] gives.
    pub(crate) const WORDS: usize = 17;

    /// Its output channels (`M`).
    pub(crate) fn output_channels(&self) -> usize {
        self.output_channels
    }

    /// Its output planes' size, `[OH, OW]`.
    pub(crate) fn output_size(&self) -> [usize; 2] {
        self.output_hw
    }

    /// Values per output plane (`OH · OW`).
    pub(crate) fn output_plane(&self) -> usize {
        self.output_hw[0] * self.output_hw[1]
    }

    /// Values per input image (`C · H · W`).
    pub(crate) fn input_len(&self) -> usize {
        self.input_channels * self.input_hw[0] * self.input_hw[1]
    }

    /// Its inputs after the image's pieces: the kernel, the bias, the prologue's scale and
    /// shift where it has one, the residual where it has one.
    fn params(&self) -> usize {
        2 + if self.prologue { 2 } else { 0 } + usize::from(self.residual)
    }

    /// The operator's fields as numbers, for the plan form ([`crate::plan_form`]).
    pub(crate) fn to_words(&self) -> Vec<u64> {
        let mut w = vec![self.input_channels as u64, self.output_channels as u64];
        for pair in [self.input_hw, self.output_hw, self.kernel_hw, self.strides, self.pad_before] {
            w.extend(pair.map(|v| v as u64));
        }
        w.extend([u64::from(self.prologue), u64::from(self.pooled)]);
        w.extend(self.clamp.bits().map(u64::from));
        w.push(u64::from(self.residual));
        w
    }

    /// The operator [`DirectConv::to_words`] gave these numbers for; `None` where they are
    /// out of range or describe no convolution this operator runs.
    pub(crate) fn from_words(w: &[u64]) -> Option<DirectConv> {
        let [c, m, ih, iw, oh, ow, kh, kw, sh, sw, ph, pw, prologue, pooled, lo, hi, residual] = *w
        else {
            return None;
        };
        let (u, flag) = (size_word, |v: u64| (v <= 1).then_some(v == 1));
        let op = DirectConv {
            input_channels: u(c)?,
            output_channels: u(m)?,
            input_hw: [u(ih)?, u(iw)?],
            output_hw: [u(oh)?, u(ow)?],
            kernel_hw: [u(kh)?, u(kw)?],
            strides: [u(sh)?, u(sw)?],
            pad_before: [u(ph)?, u(pw)?],
            prologue: flag(prologue)?,
            pooled: flag(pooled)?,
            clamp: Clamp::from_words(lo, hi)?,
            residual: flag(residual)?,
            layout: LayoutCell::default(),
        };
        // Pooled: the image is twice the output, and a row or column more where it is odd
        // (pooling's floor mode).
        let conv_hw = if op.pooled {
            let halves = (0..2).all(|a| op.input_hw[a] / 2 == op.output_hw[a]);
            (op.kernel_hw == [1, 1] && halves).then_some(op.output_hw)?
        } else {
            op.input_hw
        };
        let channels = op.input_channels > 0 && op.output_channels > 0;
        (channels && geometry_ok(conv_hw, op.output_hw, op.kernel_hw, op.strides, op.pad_before))
            .then_some(op)
    }
    /// The operator for `conv` with these facts, when it covers them.
    fn for_conv(
        conv: &Conv,
        input: &TypedFact,
        kernel: &TypedFact,
        bias: &TypedFact,
        output: &TypedFact,
    ) -> Option<DirectConv> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || spec.data_format != DataFormat::NCHW
            || conv.kernel_fmt != KernelFormat::OIHW
            || spec.kernel_shape.len() != 2
            || spec.kernel_shape.iter().product::<usize>() < 2
            || spec.dilations.as_ref().is_some_and(|d| d.iter().any(|&d| d != 1))
            || [input, kernel, bias, output].iter().any(|f| f.datum_type != f32::datum_type())
        {
            return None;
        }
        let (c, m) = (spec.input_channels, spec.output_channels);
        let input = input.shape.as_concrete()?;
        let output = output.shape.as_concrete()?;
        let kernel = kernel.shape.as_concrete()?;
        let bias = bias.shape.as_concrete()?.iter().product::<usize>();
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let strides = strides_2d(spec)?;
        if input.len() != 4
            || output.len() != 4
            || input[1] != c
            || output[0] != input[0]
            || output[1] != m
            || kernel != [m, c, kh, kw]
            || (bias != m && bias != 1)
            || strides.contains(&0)
            || c == 0
            || m == 0
        {
            return None;
        }
        let (input_hw, output_hw) = ([input[2], input[3]], [output[2], output[3]]);
        if output_hw.contains(&0) || input_hw.contains(&0) {
            return None;
        }
        let kernel_hw = [kh, kw];
        let pad_before = pad_before(spec, input_hw, output_hw, kernel_hw, strides)?;
        Some(DirectConv {
            input_channels: c,
            output_channels: m,
            input_hw,
            output_hw,
            kernel_hw,
            strides,
            pad_before,
            prologue: false,
            pooled: false,
            clamp: Clamp::NONE,
            residual: false,
            layout: LayoutCell::default(),
        })
    }

    fn layout(&self) -> Layout {
        self.layout.0.get_or_init(|| self.layout_for(self.panel())).clone()
    }

    /// The panel width of its blocks: this CPU's ([`panel_width`]), but 4 where the panels are
    /// 6 wide and would pad its output channels by a tenth or more while 4 fills them, for a
    /// kernel larger than 1×1 whose sum takes [`K_STEP_KXK`] steps or more: DenseNet-121's 3×3
    /// convolutions (128 → 32; 36 channels spent 11 % of the products on zeros). 4 × 16 blocks
    /// run at the 6 × 16 block's rate over L1 (97–101 GFLOP/s, Zen 3 VM). Standalone, runs
    /// alternated, its 3×3 on 56 × 56 3.24 → 3.11 ms, on 28 × 28 0.80 → 0.75; in the model (two
    /// plans, runs alternated, one thread) with [`K_STEP_KXK`], its six 3×3 on 56 × 56 20.8–21.6
    /// → 18.2–20.0 ms (8–12 % in each run), the twelve on 28 × 28 10.0–10.4 → 9.1–9.5. Two
    /// threads: 2–5 % on 56 × 56, nothing measurable on the rest. Not for 1×1 convolutions or
    /// short sums, which read each image line for fewer products (MobileNetV2's 32-channel
    /// projections and its 3×3 stem: 5–11 % slower at 4), nor for the channels 6 pads by less
    /// (DenseNet-121's 1×1 convolutions' 128 → 132: 4–9 % slower at 4).
    fn panel(&self) -> usize {
        let nr = panel_width();
        if nr == NR && self.wide_panels() {
            return SMALL_M;
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let (m, [kh, kw]) = (self.output_channels, self.kernel_hw);
            if nr == NR
                && kh * kw > 1
                && self.input_channels * kh * kw >= K_STEP_KXK
                && m.is_multiple_of(NR_NARROW)
                && m.next_multiple_of(nr) * 10 >= m * 11
            {
                return NR_NARROW;
            }
        }
        nr
    }

    /// Whether, with AVX2 (not AVX-512), its panels are [`SMALL_M`] channels wide, summed by
    /// [`DirectConv::small_block_avx2`] (output channels in the lanes): a widening 1×1 with
    /// nothing before it on planes of four blocks and more, its output channels a multiple of
    /// [`SMALL_M`] and its output no larger than [`crate::fused::SPILLS`] — MobileNetV2's
    /// expansions on 28 × 28 and 14 × 14, each run by panels into the depthwise convolution
    /// after it ([`DirectConv::run_by_panels`]), or as [`DirectConv::run_small`] where it
    /// runs alone (the packing is the same). One plan each way, runs alternated (50 each),
    /// one thread: the fused expansions + depthwise convolutions on 14 × 14 from 64 and 96
    /// channels 1.557 → 1.356 ms and 1.420 → 1.293 (four and two of them), into 7 × 7 0.645 →
    /// 0.565, on 28 × 28 0.963 → 0.921; the model 0.976× on one thread and 0.984× on two.
    fn wide_panels(&self) -> bool {
        let [oh, ow] = self.output_hw;
        let m = self.output_channels;
        small_avx2()
            && self.kernel_hw == [1, 1]
            && self.strides == [1, 1]
            && self.pad_before == [0, 0]
            && !self.prologue
            && !self.pooled
            && m.is_multiple_of(SMALL_M)
            && m > self.input_channels
            && oh * ow >= 4 * TILE
            && m * oh * ow * size_of::<f32>() <= crate::fused::SPILLS
    }

    /// The layout with panels of `nr` output channels.
    fn layout_for(&self, nr: usize) -> Layout {
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let [sh, sw] = self.strides;
        let rows = oh + (kh - 1) / sh;
        let width = if [sh, sw] == [1, 1] {
            // Rows share their padding columns: a row's right padding reads as the next
            // row's left padding (both zero), so that a row is only as long as its image and
            // the wider of the two, not both (3×3: `OW + 1` positions, a column dropped per
            // row where `OW + 2` dropped two: DenseNet-121's 56 × 56 and 28 × 28 layers 2 and
            // 3 % fewer positions; its 14 × 14 and 7 × 7 ones still fill as many blocks). The
            // image's columns, up to where taps read (`OW + KW − 1`), fit
            // before the next row's, and the padding after them runs into the next row's
            // left padding only.
            let [iw, pl] = [self.input_hw[1], self.pad_before[1]];
            let read = ow + kw - 1;
            (pl + iw).min(read).max(read - pl.min(read))
        } else {
            ow + (kw - 1) / sw
        };
        let plane = rows * width;
        let positions = oh * width;
        let tiles = positions.div_ceil(TILE);
        let channels = self.output_channels.next_multiple_of(nr);
        let c = self.input_channels;
        let packed =
            self.kernel_hw == [1, 1] && self.strides == [1, 1] && self.pad_before == [0, 0];
        let (offsets, scratch, tile_stride) = if packed {
            ((0..c).map(|c| c * TILE).collect::<Arc<[usize]>>(), tiles * c * TILE, c * TILE)
        } else {
            // Step `(c, ky, kx)` in that order (nested loops: three divisions per step were
            // 15 % of a 7 × 7 3×3 layer's run).
            let mut offsets = Vec::with_capacity(c * kh * kw);
            for c in 0..c {
                for ky in 0..kh {
                    let row = (c * sh + ky % sh) * sw;
                    for kx in 0..kw {
                        offsets.push((row + kx % sw) * plane + (ky / sh) * width + kx / sw);
                    }
                }
            }
            // The last block reads TILE values from its last position at the largest offset.
            let reach = offsets.iter().max().map_or(0, |m| m + tiles * TILE);
            let scratch = reach.max(c * sh * sw * plane);
            (offsets.into(), scratch, TILE)
        };
        Layout {
            k_step: match (packed, self.packs_image()) {
                (true, true) => K_STEP_PACKED,
                (true, _) => K_STEP,
                (false, _) => K_STEP_KXK,
            },
            rows,
            width,
            positions,
            tiles,
            channels,
            scratch,
            offsets,
            tile_stride,
            packed,
            by_panel: false,
            prefetch: false,
            nr,
        }
    }

    /// Writes channels of one image (its `H × W` planes, in order) into `scratch` as
    /// `sh × sw` phase planes of `rows × width` each: padded row `r`, column `j` of a channel
    /// lands in phase `(r % sh, j % sw)` at `[r / sh][j / sw]`; everything outside the image
    /// is zero. As many channels as `scratch` holds phase planes for.
    /// `affine`: the prologue's scale and shift for these channels (then ReLU), if any. Only
    /// the phase planes' rows `wanted` are written (none past the planes' last row).
    fn pad_channels(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        layout: &Layout,
        affine: Option<(&[f32], &[f32])>,
        wanted: Range<usize>,
    ) {
        let [ih, iw] = self.input_hw;
        let [pt, pl] = self.pad_before;
        let [sh, sw] = self.strides;
        let (rows, width) = (layout.rows, layout.width);
        let wanted = wanted.start.min(rows)..wanted.end.min(rows);
        for (c, (channel, planes)) in
            image.iter().zip(scratch.chunks_exact_mut(sh * sw * rows * width)).enumerate()
        {
            let (a, b) = affine.map_or((1.0, 0.0), |(scale, shift)| (scale[c], shift[c]));
            let f = |x: f32| if affine.is_some() { (x * a + b).max(0.0) } else { x };
            if sw == 2 {
                self.pad_pairs(channel, planes, layout, wanted.clone(), f);
                continue;
            }
            for (phase, plane) in planes.chunks_exact_mut(rows * width).enumerate() {
                let (py, px) = (phase / sw, phase % sw);
                let plane = &mut plane[wanted.start * width..wanted.end * width];
                for (qy, row) in (wanted.start..).zip(plane.chunks_exact_mut(width)) {
                    let iy = (qy * sh + py).checked_sub(pt).filter(|&iy| iy < ih);
                    let Some(iy) = iy else {
                        row.fill(0.0);
                        continue;
                    };
                    let src = &channel[iy * iw..][..iw];
                    if sw == 1 {
                        // Zeros, the image row from column `pl`, zeros.
                        let start = pl.min(width);
                        let n = iw.min(width - start);
                        let (left, rest) = row.split_at_mut(start);
                        left.fill(0.0);
                        if affine.is_some() {
                            for (d, &x) in rest[..n].iter_mut().zip(src) {
                                *d = f(x);
                            }
                        } else {
                            rest[..n].copy_from_slice(&src[..n]);
                        }
                        rest[n..].fill(0.0);
                    } else {
                        for (qx, d) in row.iter_mut().enumerate() {
                            let ix = (qx * sw + px).checked_sub(pl).filter(|&ix| ix < iw);
                            *d = ix.map_or(0.0, |ix| f(src[ix]));
                        }
                    }
                }
            }
        }
    }

    /// [`DirectConv::pad_channels`] of one channel at column stride 2: each image row split
    /// into its two column phases in one pass, pairs of columns at a time, no test per
    /// value (a tested read per value was a quarter of MobileNetV2's stem).
    fn pad_pairs(
        &self,
        channel: &[f32],
        planes: &mut [f32],
        layout: &Layout,
        wanted: Range<usize>,
        f: impl Fn(f32) -> f32,
    ) {
        let [ih, iw] = self.input_hw;
        let [pt, pl] = self.pad_before;
        let sh = self.strides[0];
        let (rows, width) = (layout.rows, layout.width);
        // Image column `ix` lands in phase `(ix + pl) % 2` at column `(ix + pl) / 2`: the even
        // ones from column `pl / 2` of phase `pl % 2`, the odd ones from `(pl + 1) / 2` of the
        // other; as many as fit the rows.
        let (even_at, odd_at) = (pl / 2, pl.div_ceil(2));
        let evens = iw.div_ceil(2).min(width.saturating_sub(even_at));
        let odds = (iw / 2).min(width.saturating_sub(odd_at));
        let pairs = evens.min(odds);
        for (py, phases) in planes.chunks_exact_mut(2 * rows * width).take(sh).enumerate() {
            let (first, second) = phases.split_at_mut(rows * width);
            let (even_plane, odd_plane) =
                if pl % 2 == 0 { (first, second) } else { (second, first) };
            let (even_plane, odd_plane) = (
                &mut even_plane[wanted.start * width..wanted.end * width],
                &mut odd_plane[wanted.start * width..wanted.end * width],
            );
            let rows = even_plane.chunks_exact_mut(width).zip(odd_plane.chunks_exact_mut(width));
            for (qy, (even, odd)) in (wanted.start..).zip(rows) {
                even.fill(0.0);
                odd.fill(0.0);
                let Some(iy) = (qy * sh + py).checked_sub(pt).filter(|&iy| iy < ih) else {
                    continue;
                };
                if evens == 0 {
                    continue;
                }
                let src = &channel[iy * iw..][..iw];
                let (even, odd) = (&mut even[even_at..][..evens], &mut odd[odd_at..][..odds]);
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
                    *e = f(pair[0]);
                    *o = f(pair[1]);
                }
                // The even columns past the pairs (an odd width's last; odds <= evens).
                for (e, &x) in even[pairs..].iter_mut().zip(src[2 * pairs..].iter().step_by(2)) {
                    *e = f(x);
                }
            }
        }
    }

    /// Writes one image (its `C` planes of `H × W`, wherever each lies: [`read_concats`]) into
    /// `scratch` as [`DirectConv::pad_channels`] says, channels side by side on tract's
    /// executor where it has threads, and zeroes the tail past the planes.
    fn pad_image(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        pooled: &mut Vec<f32>,
        layout: &Layout,
        affine: Option<(&[f32], &[f32])>,
    ) -> TractResult<()> {
        let [ih, iw] = self.input_hw;
        let [sh, sw] = self.strides;
        if layout.packed {
            let pooled_planes: Vec<&[f32]>;
            let (image, affine) = if self.pooled {
                let [oh, ow] = self.output_hw;
                let pooled = at_least(pooled, self.input_channels * oh * ow);
                share(pooled, oh * ow, image.len() * ih * iw, |first, planes| {
                    let affine = affine.map(|(a, b)| (&a[first..], &b[first..]));
                    self.pool_planes(&image[first..], planes, affine)
                })?;
                pooled_planes = pooled.chunks_exact(oh * ow).collect();
                (&pooled_planes[..], None)
            } else {
                (image, affine)
            };
            let block = layout.tile_stride;
            return share(&mut scratch[..layout.scratch], block, layout.scratch, |first, chunk| {
                self.pack_blocks(image, chunk, layout, first, affine)
            });
        }
        let planes = sh * sw * layout.rows * layout.width;
        let (used, tail) = scratch.split_at_mut(self.input_channels * planes);
        share(used, planes, used.len(), |first, chunk| {
            let affine = affine.map(|(a, b)| (&a[first..], &b[first..]));
            self.pad_channels(&image[first..], chunk, layout, affine, 0..layout.rows)
        })?;
        tail.fill(0.0);
        Ok(())
    }

    /// Writes into `scratch` what the output rows `rows` read of the padded planes
    /// ([`DirectConv::pad_channels`]), the rest of it left as it was: the phase planes' rows
    /// their taps reach and the row after, since rows share their padding columns (a last
    /// column's taps run on into the next row's left padding). Past the planes' last row,
    /// that is the next channel's first row, and past the last channel the scratch's tail.
    fn pad_rows(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        layout: &Layout,
        affine: Option<(&[f32], &[f32])>,
        rows: Range<usize>,
    ) {
        let [sh, sw] = self.strides;
        let after = rows.end + (self.kernel_hw[0] - 1) / sh;
        let wanted = rows.start..(after + 1).min(layout.rows);
        self.pad_channels(image, scratch, layout, affine, wanted);
        if after >= layout.rows {
            if rows.start > 0 {
                self.pad_channels(image, scratch, layout, affine, 0..1);
            }
            let planes = self.input_channels * sh * sw * layout.rows * layout.width;
            let tail = planes.min(scratch.len());
            scratch[tail..].fill(0.0);
        }
    }

    /// Writes the `OH × OW` planes of `out` (the first being channel 0 of `image`, `H × W`
    /// planes): each value the average of a 2×2 patch of the image, through the prologue's
    /// scale, shift and ReLU first where there is one.
    fn pool_planes(&self, image: &[&[f32]], out: &mut [f32], affine: Option<(&[f32], &[f32])>) {
        let iw = self.input_hw[1];
        let [oh, ow] = self.output_hw;
        for (c, (src, dst)) in image.iter().zip(out.chunks_exact_mut(oh * ow)).enumerate() {
            let (a, b) = affine.map_or((1.0, 0.0), |(scale, shift)| (scale[c], shift[c]));
            let f = |x: f32| if affine.is_some() { (x * a + b).max(0.0) } else { x };
            for (y, row) in dst.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) =
                    (&src[2 * y * iw..][..2 * ow], &src[(2 * y + 1) * iw..][..2 * ow]);
                for ((d, t), u) in
                    row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2))
                {
                    *d = (f(t[0]) + f(t[1]) + f(u[0]) + f(u[1])) * 0.25;
                }
            }
        }
    }

    /// Writes blocks `first..` of a packed scratch (`[block][C][TILE]`, as many blocks as
    /// `scratch` holds) from one image of `C` planes (of the layout's positions), through the
    /// prologue where there is one; the positions past the image are zero.
    ///
    /// DenseNet-121's images here (its concatenated feature maps, up to 3.2 MB) lie in L3:
    /// each of the `C` planes read a line at a time is a stream of its own, more than the
    /// hardware prefetchers follow, so each whole line's counterpart [`GROUP`] blocks on is
    /// prefetched as it is packed. With the whole share packed a group at a time
    /// (`run_by_rows`) and compiled for AVX2, one thread, the Zen 3 VM, the two alternated run
    /// by run in one plan: its 1×1 convolutions 11–12 % faster (on 56 × 56 16 %, on 28 × 28
    /// 13 %), the whole model 5 % (prefetching 2, 4 or 16 blocks ahead measured the same).
    fn pack_blocks(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        layout: &Layout,
        first: usize,
        affine: Option<(&[f32], &[f32])>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.pack_blocks_avx2(image, scratch, layout, first, affine) };
        }
        self.pack_blocks_with(image, scratch, layout, first, affine);
    }

    /// [`DirectConv::pack_blocks`] compiled for AVX2 (its whole lines as two vectors).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pack_blocks_avx2(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        layout: &Layout,
        first: usize,
        affine: Option<(&[f32], &[f32])>,
    ) {
        self.pack_blocks_with(image, scratch, layout, first, affine);
    }

    /// [`DirectConv::pack_blocks`]'s body: whole lines of a constant length (vectorised whole,
    /// no loop bounds to test), a last block's partial ones as they come.
    #[inline(always)]
    fn pack_blocks_with(
        &self,
        image: &[&[f32]],
        scratch: &mut [f32],
        layout: &Layout,
        first: usize,
        affine: Option<(&[f32], &[f32])>,
    ) {
        // Arrays, not slices: given slices of a constant length, LLVM unrolled the loop into
        // scalar code (their overlap unknown to it).
        fn line<const N: usize>(d: &mut [f32; N], s: &[f32; N], affine: Option<(f32, f32)>) {
            match affine {
                Some((a, b)) => {
                    for (d, &x) in d.iter_mut().zip(s) {
                        *d = (x * a + b).max(0.0);
                    }
                }
                None => *d = *s,
            }
        }
        for (dst, block) in scratch.chunks_exact_mut(layout.tile_stride).zip(first..) {
            let p = block * TILE;
            let n = TILE.min(layout.positions - p);
            for (c, (d, src)) in dst.chunks_exact_mut(TILE).zip(image).enumerate() {
                let affine = affine.map(|(scale, shift)| (scale[c], shift[c]));
                if n < TILE {
                    for (d, &x) in d[..n].iter_mut().zip(&src[p..p + n]) {
                        *d = affine.map_or(x, |(a, b)| (x * a + b).max(0.0));
                    }
                    continue;
                }
                // The same line of the next group's block on its way meanwhile: each of the
                // `C` planes is a stream of its own, more than the hardware's prefetchers
                // follow.
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a hint only: never faults, wherever it points.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(p + GROUP * TILE).cast());
                }
                if let (Ok(d), Ok(s)) = (d.try_into(), src[p..p + TILE].try_into()) {
                    line::<TILE>(d, s, affine);
                }
            }
            if n < TILE {
                for line in dst.chunks_exact_mut(TILE) {
                    line[n..].fill(0.0);
                }
            }
        }
    }

    /// The OIHW kernel packed as [`DirectConv::pack_weights`] does: what the operator's kernel
    /// input holds.
    fn pack(&self, kernel: &[f32]) -> Tensor {
        if self.small() {
            return tensor1(&self.pack_small(kernel));
        }
        let layout = self.layout();
        let mut packed = vec![0f32; layout.channels * layout.offsets.len()];
        self.pack_weights(kernel, &mut packed, &layout);
        tensor1(&packed)
    }

    /// Packs the OIHW kernel as panels of `nr` output channels, `[panel][k][nr]`, zero for
    /// the channels past `M` in the last panel.
    fn pack_weights(&self, kernel: &[f32], packed: &mut [f32], layout: &Layout) {
        let (k, nr) = (layout.offsets.len(), layout.nr);
        for (panel, dst) in packed.chunks_exact_mut(k * nr).enumerate() {
            for (step, lanes) in dst.chunks_exact_mut(nr).enumerate() {
                for (r, lane) in lanes.iter_mut().enumerate() {
                    let o = panel * nr + r;
                    *lane = if o < self.output_channels { kernel[o * k + step] } else { 0.0 };
                }
            }
        }
    }

    /// Computes the sums of one scratch image's blocks and panels that `sums` holds.
    fn run_tiles(&self, image: &[f32], weights: &[f32], layout: &Layout, sums: &mut Sums) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if layout.nr == NR_AVX512 && avx512() {
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA, what `tiles_avx512` is compiled
                // for.
                return unsafe { tiles_avx512(image, weights, layout, sums) };
            }
            if has!("avx2") && has!("fma") {
                // SAFETY (both): the CPU has AVX2 and FMA, the features `tiles_avx2` is
                // compiled for.
                match layout.nr {
                    NR => return unsafe { tiles_avx2::<NR>(image, weights, layout, sums) },
                    NR_NARROW => {
                        return unsafe { tiles_avx2::<NR_NARROW>(image, weights, layout, sums) };
                    }
                    _ => {}
                }
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        tiles_wasm(image, weights, layout, sums);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        tiles_portable(image, weights, layout, sums)
    }

    /// Convolves `n` images, each `C × H × W` in `input`, into `output` (`n × M × OH × OW`).
    /// `weights`: the packed kernel; `affine`: the prologue's scale and shift (`C` values
    /// each), where it has one; `residual`: what the output gains after its clamp (as many
    /// values), where it has one.
    fn run(
        &self,
        input: Input,
        weights: &[f32],
        bias: &[f32],
        affine: Option<(&[f32], &[f32])>,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> TractResult<()> {
        if residual.is_some_and(|r| r.len() != output.len()) {
            bail!("{}: a residual of unexpected size", self.name());
        }
        if self.small() || self.layout().nr == SMALL_M {
            return self.run_small(input, weights, bias, affine, residual, output);
        }
        self.run_large(input, weights, bias, affine, output)?;
        // Added as a pass of its own where the sums are not written by `run_small`.
        if let Some(residual) = residual {
            share(output, self.output_plane(), output.len(), |first, planes| {
                let at = first * self.output_plane();
                for (o, &r) in planes.iter_mut().zip(&residual[at..]) {
                    *o += r;
                }
            })?;
        }
        Ok(())
    }

    /// [`DirectConv::run`] where it is not [`DirectConv::small`] (nothing added after).
    fn run_large(
        &self,
        input: Input,
        weights: &[f32],
        bias: &[f32],
        affine: Option<(&[f32], &[f32])>,
        output: &mut [f32],
    ) -> TractResult<()> {
        let [oh, ow] = self.output_hw;
        let mut layout = self.layout();
        // What one thread reads, in values: by panels, the whole image and its share of the
        // weights; by blocks, its share of the image and all the weights once per group of
        // blocks it runs. A packed 1×1 with a prologue always by blocks, each thread packing
        // its own ([`DirectConv::run_by_rows`]): by panels, half of what each thread read was
        // packed by the other (DenseNet-121's on 28 × 28 on two threads: 4.8 → 4.4 ms a run).
        let (threads, all) = (threads(), weights.len());
        let groups = layout.tiles.div_ceil(threads * GROUP);
        layout.by_panel = threads > 1
            && !(layout.packed && !self.pooled && affine.is_some())
            && layout.channels / layout.nr >= threads
            && layout.scratch + all / threads < layout.scratch / threads + all * groups;
        // Every read of every block stays inside the scratch: `tiles` reads unchecked.
        let reach =
            layout.offsets.iter().max().map_or(0, |m| m + (layout.tiles - 1) * layout.tile_stride);
        if reach + TILE > layout.scratch {
            bail!("{}: scratch smaller than the blocks' reach", self.name());
        }
        // Taken out of the thread's slot for the call (and put back after), so that a
        // convolution started on this thread while this one runs would find it empty, not
        // borrowed.
        let mut buffers = BUFFERS.take();
        // A 1×1 with nothing before: the image is read where it lies, nothing packed
        // ([`DirectConv::in_place`]); summed in more than one pass, the partial sums go
        // through the output planes between passes (MobileNetV2's 576-channel projections on
        // 14 × 14: 0.24 → 0.22 ms, against packing and the blocks' buffer).
        let in_place = layout.packed && affine.is_none() && !self.pooled;
        // Each unit pads or packs its own part ([`DirectConv::run_by_rows`]), or the calling
        // thread the whole image.
        let by_rows = !in_place && !layout.by_panel && !self.pooled;
        let mut image = if in_place || by_rows { Vec::new() } else { IMAGE.take() };
        let result = (|| -> TractResult<()> {
            let Buffers { blocks, pooled } = &mut buffers;
            let image = at_least(&mut image, if in_place || by_rows { 0 } else { layout.scratch });
            // Sums of one pass go straight into the output planes (no blocks' buffer, no copy
            // out): 4–40 % off the packed layout's convolutions (MobileNetV2's expansions
            // most, their 4.8 MB outputs no longer written twice), 10–20 % off the stems
            // (MobileNetV2's 3×3: 0.64 → 0.51 ms, DenseNet-121's 7×7: 2.73 → 2.62 ms). Sums
            // of several passes stay in the buffer: read back from and written to the planes
            // between passes, DenseNet-121's deep 1×1 ones ran 3–5 % slower.
            let direct = layout.offsets.len() <= layout.k_step;
            let sums = layout.tiles * layout.channels * TILE;
            let blocks = at_least(blocks, if direct || in_place { 0 } else { sums });
            let image_out = self.output_channels * oh * ow;
            for (n, dst) in output.chunks_exact_mut(image_out).enumerate() {
                let work = image_out * layout.offsets.len();
                if in_place {
                    let planes = Planes::new(self, dst, bias);
                    self.run_in_place(&input.joined(n), weights, &layout, planes, work)?;
                    continue;
                }
                if by_rows {
                    self.run_by_rows(
                        &input.planes(n),
                        weights,
                        &layout,
                        affine,
                        blocks,
                        dst,
                        bias,
                    )?;
                    if !direct {
                        let (blocks, layout) = (&*blocks, &layout);
                        share(dst, oh * ow, image_out, |first, planes| {
                            self.unpack(blocks, bias, layout, first, planes)
                        })?;
                    }
                    continue;
                }
                self.pad_image(&input.planes(n), image, pooled, &layout, affine)?;
                let (image, weights, layout) = (&*image, weights, &layout);
                if direct {
                    // The sums straight into the output planes, shared out by blocks or by
                    // panels (the units' slice only numbers them).
                    let planes = Planes::new(self, dst, bias);
                    let units =
                        if layout.by_panel { layout.channels / layout.nr } else { layout.tiles };
                    share(&mut vec![(); units], 1, work, |first, chunk| {
                        let mut sums = Sums::planes(planes, layout, first..first + chunk.len());
                        self.run_tiles(image, weights, layout, &mut sums)
                    })?;
                    continue;
                }
                let row = if layout.by_panel {
                    layout.tiles * layout.nr * TILE
                } else {
                    layout.channels * TILE
                };
                share(blocks, row, work, |first, chunk| {
                    self.run_tiles(image, weights, layout, &mut Sums::blocks(layout, first, chunk))
                })?;
                let blocks = &*blocks;
                share(dst, oh * ow, image_out, |first, planes| {
                    self.unpack(blocks, bias, layout, first, planes)
                })?;
            }
            Ok(())
        })();
        BUFFERS.set(buffers);
        if !in_place && !by_rows {
            IMAGE.set(image);
        }
        result
    }

    /// [`DirectConv::run`] on a padded layout shared by blocks: each thread pads the rows its
    /// run of blocks reads into a scratch of its own ([`DirectConv::pad_rows`]) and sums them
    /// into the output planes, or into its blocks of the buffer `blocks` where the sum takes
    /// more than one pass. Padded by channels on all threads first, each thread's blocks read
    /// half of their image from the other one's cache: DenseNet-121's 3×3 convolutions
    /// (128 → 32) on 28 × 28 took 0.30 ms on two threads against 0.53 on one.
    #[allow(clippy::too_many_arguments)]
    fn run_by_rows(
        &self,
        image: &[&[f32]],
        weights: &[f32],
        layout: &Layout,
        affine: Option<(&[f32], &[f32])>,
        blocks: &mut [f32],
        dst: &mut [f32],
        bias: &[f32],
    ) -> TractResult<()> {
        let [oh, ow] = self.output_hw;
        let direct = layout.offsets.len() <= layout.k_step;
        let row = layout.channels * TILE;
        if !direct && blocks.len() < layout.tiles * row {
            bail!("{}: a blocks' buffer too small", self.name());
        }
        let units = threads().clamp(1, layout.tiles.max(1));
        let cut = |u: usize| layout.tiles * u / units;
        // Each unit's blocks of the buffer (none where the sums go straight into the planes).
        let mut parts: Vec<&mut [f32]> = Vec::with_capacity(units);
        let mut rest = if direct { &mut [][..] } else { &mut blocks[..layout.tiles * row] };
        for u in 0..units {
            let at = if direct { 0 } else { (cut(u + 1) - cut(u)) * row };
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(at);
            parts.push(part);
            rest = tail;
        }
        let planes = Planes::new(self, dst, bias);
        let work = self.output_channels * oh * ow * layout.offsets.len();
        share(&mut parts, 1, work, |first, chunk| {
            for (unit, part) in (first..).zip(chunk.iter_mut()) {
                let tiles = cut(unit)..cut(unit + 1);
                if tiles.is_empty() {
                    continue;
                }
                let mut scratch = IMAGE.take();
                let padded = at_least(&mut scratch, layout.scratch);
                poison(padded);
                if layout.packed && direct {
                    // A group of blocks packed, then summed while its lines are in L2 (the
                    // whole share packed first, the summing read it back from L3: 1.5 %
                    // slower on 56 × 56).
                    let stride = layout.tile_stride;
                    for start in tiles.clone().step_by(GROUP) {
                        let part = start..(start + GROUP).min(tiles.end);
                        let own = &mut padded[part.start * stride..part.end * stride];
                        self.pack_blocks(image, own, layout, part.start, affine);
                        let mut sums = Sums::planes(planes, layout, part);
                        self.run_tiles(padded, weights, layout, &mut sums);
                    }
                    IMAGE.set(scratch);
                    continue;
                }
                if layout.packed {
                    let stride = layout.tile_stride;
                    let own = &mut padded[tiles.start * stride..tiles.end * stride];
                    self.pack_blocks(image, own, layout, tiles.start, affine);
                } else {
                    // The output rows its blocks' positions fall in (a last block's positions
                    // past the rows are computed from whatever the scratch holds, and
                    // dropped).
                    let width = layout.width;
                    let last = (tiles.end * TILE - 1) / width + 1;
                    self.pad_rows(
                        image,
                        padded,
                        layout,
                        affine,
                        tiles.start * TILE / width..last.min(oh),
                    );
                }
                let mut sums = if direct {
                    Sums::planes(planes, layout, tiles)
                } else {
                    Sums::blocks(layout, tiles.start, part)
                };
                self.run_tiles(padded, weights, layout, &mut sums);
                IMAGE.set(scratch);
            }
        })
    }

    /// The sums of a packed layout straight into `planes` (a pass's partial sums too, read
    /// back by the next), reading the image `src` where it lies ([`DirectConv::in_place`]),
    /// shared out by blocks or by panels as `layout` says.
    fn run_in_place(
        &self,
        src: &[f32],
        weights: &[f32],
        layout: &Layout,
        planes: Planes,
        work: usize,
    ) -> TractResult<()> {
        let (flat, last) = self.in_place(layout, src)?;
        if let Some(flat) = &flat {
            let units = if flat.by_panel { flat.channels / flat.nr } else { flat.tiles };
            share(&mut vec![(); units], 1, work, |first, chunk| {
                let mut sums = Sums::planes(planes, flat, first..first + chunk.len());
                self.run_tiles(src, weights, flat, &mut sums)
            })?;
        }
        if let Some((tail, image)) = &last {
            let units =
                if tail.by_panel { 0..tail.channels / tail.nr } else { tail.tiles - 1..tail.tiles };
            let mut sums = Sums::planes(planes, tail, units).for_tiles(tail.tiles - 1..tail.tiles);
            self.run_tiles(image, weights, tail, &mut sums);
        }
        Ok(())
    }

    /// For a packed layout, the layouts that read the image `src` (`C` planes of the
    /// output's positions) where it lies, nothing packed: step `c` of a block reads plane `c`
    /// at the block's positions. The whole blocks (`None` where there are none); and the
    /// last block, where the positions end inside it, packed alone with its layout (its
    /// reads in place would pass the image's end).
    #[allow(clippy::type_complexity)]
    fn in_place(
        &self,
        layout: &Layout,
        src: &[f32],
    ) -> TractResult<(Option<Layout>, Option<(Layout, Vec<f32>)>)> {
        let (c, positions) = (self.input_channels, layout.positions);
        if !layout.packed || src.len() != c * positions {
            bail!("{}: no packed layout, or an image of unexpected size", self.name());
        }
        let whole = positions / TILE;
        let flat = (whole > 0).then(|| Layout {
            offsets: (0..c).map(|c| c * positions).collect(),
            tile_stride: TILE,
            scratch: c * positions,
            tiles: whole,
            prefetch: c * positions * size_of::<f32>() > PREFETCH_BYTES,
            ..layout.clone()
        });
        let last = (whole < layout.tiles).then(|| {
            let n = positions - whole * TILE;
            let mut image = vec![0f32; c * TILE];
            for (line, plane) in image.chunks_exact_mut(TILE).zip(src.chunks_exact(positions)) {
                line[..n].copy_from_slice(&plane[whole * TILE..]);
            }
            // Every block of this layout reads the one packed block (a stride of 0); only
            // the last is run.
            let tail = Layout {
                offsets: (0..c).map(|c| c * TILE).collect(),
                tile_stride: 0,
                scratch: c * TILE,
                ..layout.clone()
            };
            (tail, image)
        });
        Ok((flat, last))
    }

    /// Whether [`DirectConv::run_by_panels`] runs this convolution: the packed layout, summed
    /// in one pass, in whole panels (`M` a multiple of this CPU's panel width), nothing before
    /// it or pooling after.
    pub(crate) fn runs_by_panels(&self) -> bool {
        let layout = self.layout();
        layout.packed
            && layout.offsets.len() <= layout.k_step
            && self.output_channels.is_multiple_of(layout.nr)
            && !self.prologue
            && !self.pooled
            && !self.small()
    }

    /// Whether it copies its image before its sums whatever the layout (so that it can as well
    /// copy it from pieces, [`read_concats`]): a 1×1 convolution with a prologue (packed
    /// through it, or copied through it for [`DirectConv::run_small`]) or pooled first.
    fn packs_image(&self) -> bool {
        self.kernel_hw == [1, 1]
            && self.strides == [1, 1]
            && self.pad_before == [0, 0]
            && (self.prologue || self.pooled)
    }

    /// Whether it runs as [`DirectConv::run_small`]: where [`small_planes`], a 1×1
    /// convolution (no pooling after) on planes of fewer positions than four blocks, or on
    /// planes under [`SMALL_NARROWING`] positions when it has fewer output channels than
    /// input ones; where [`small_avx2`], a larger kernel at stride 1 on planes of
    /// [`SMALL_KXK`] positions at most, and (without AVX-512) a narrowing 1×1 with nothing
    /// before it on planes of four blocks and more under [`SMALL_NARROWING`] positions
    /// (MobileNetV2's projections on 14 × 14). With AVX2, one thread, one plan each way and
    /// runs alternated (60 each): those seven 1.824 → 1.684 ms, the model 0.989× (0.987× on
    /// two threads). Not those with a prologue (DenseNet-121's on 14 × 14: 16.1 → 17.9 ms for
    /// 25, packed through it into blocks as they are), nor those on 7 × 7 (tract's packed
    /// product there; MobileNetV2's 7 × 7 1×1 layers 20–45 % slower as `run_small`).
    fn small(&self) -> bool {
        let [oh, ow] = self.output_hw;
        let positions = oh * ow;
        let fits = if self.kernel_hw == [1, 1] {
            let narrowing =
                positions < SMALL_NARROWING && self.input_channels > self.output_channels;
            self.pad_before == [0, 0]
                && if small_planes() {
                    positions < 4 * TILE || narrowing
                } else {
                    small_avx2() && !self.prologue && positions >= 4 * TILE && narrowing
                }
        } else {
            small_avx2() && positions <= SMALL_KXK
        };
        self.strides == [1, 1] && !self.pooled && fits
    }

    /// The steps of a [`DirectConv::run_small`] sum (all of the kernel's taps), each where it
    /// reads relative to a position's first value in the image it reads, and the positions in
    /// a row of that image: the plain image's planes for a 1×1 kernel, else the layout's
    /// padded planes.
    fn small_steps(&self) -> (Arc<[usize]>, usize) {
        let [oh, ow] = self.output_hw;
        if self.kernel_hw == [1, 1] {
            ((0..self.input_channels).map(|k| k * oh * ow).collect(), ow)
        } else {
            let layout = self.layout();
            (layout.offsets, layout.width)
        }
    }

    /// Output channels the packed kernel holds (the last panel or block filled with zeros).
    fn kernel_channels(&self) -> usize {
        let m = self.output_channels;
        if self.small() {
            m.next_multiple_of(SMALL_M)
        } else {
            m.next_multiple_of(self.layout().nr)
        }
    }

    /// The kernel of a [`DirectConv::small`] convolution (`[M][C · KH · KW]`), as blocks of
    /// [`SMALL_M`] output channels, `[block][step][SMALL_M]`, zero past `M`.
    fn pack_small(&self, kernel: &[f32]) -> Vec<f32> {
        let [kh, kw] = self.kernel_hw;
        let (c, m) = (self.input_channels * kh * kw, self.output_channels);
        let mut packed = vec![0f32; m.next_multiple_of(SMALL_M) * c];
        for (block, dst) in packed.chunks_exact_mut(c * SMALL_M).enumerate() {
            for (step, lanes) in dst.chunks_exact_mut(SMALL_M).enumerate() {
                for (r, lane) in lanes.iter_mut().enumerate() {
                    let o = block * SMALL_M + r;
                    if o < m {
                        *lane = kernel[o * c + step];
                    }
                }
            }
        }
        packed
    }

    /// A convolution on small planes (MobileNetV2's and DenseNet-121's 7 × 7 1×1 ones, and
    /// [`DirectConv::small`]'s others), output channels in the lanes: blocks of [`SMALL_M`]
    /// channels × [`SMALL_P`] positions, each step (a tap of the kernel) two weight vectors
    /// and seven broadcast image values, fourteen multiply-adds (with AVX2, half a block ×
    /// [`SMALL_P_AVX2`] positions: [`DirectConv::small_block_avx2`]). The positions-in-lanes blocks
    /// left a quarter of their lanes empty on 49 positions, and tract's 32 × 5 kernel (which
    /// ran the layers without a prologue) packs the image first. A 1×1 convolution reads its
    /// planes where they lie, or through the prologue into a scratch where there is one; a
    /// larger kernel reads the layout's padded planes ([`DirectConv::pad_image`]). Blocks of
    /// channels side by side on tract's executor where it has threads.
    fn run_small(
        &self,
        input: Input,
        weights: &[f32],
        bias: &[f32],
        affine: Option<(&[f32], &[f32])>,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> TractResult<()> {
        let [kh, kw] = self.kernel_hw;
        let (m, taps) = (self.output_channels, self.input_channels * kh * kw);
        let [oh, ow] = self.output_hw;
        let positions = oh * ow;
        if weights.len() != m.next_multiple_of(SMALL_M) * taps {
            bail!("{}: a kernel of unexpected size", self.name());
        }
        let (steps, width) = self.small_steps();
        // An image to prepare (a larger kernel's padded planes, a 1×1's planes through the
        // prologue or joined from pieces): each unit prepares the positions it computes, in
        // its thread's own scratch, and runs every block of channels over them. Prepared once
        // on the calling thread, the image was read by the other thread's blocks from this
        // core's cache, and written again next time while that one's cache still held it:
        // DenseNet-121's 3×3 on 7 × 7 (128 → 32) took 0.040 ms on one thread and 0.042 on
        // two. Else the image is read where it lies, and the units share (block, group of
        // positions) items, block by block.
        let layout = (self.kernel_hw != [1, 1]).then(|| self.layout());
        let prepared = layout.is_some() || affine.is_some() || input.pieces.len() > 1;
        let reach = small_reach(&steps, width, self.output_hw);
        let (blocks, groups) = (m.div_ceil(SMALL_M), positions.div_ceil(SMALL_P));
        for (n, dst) in output.chunks_exact_mut(m * positions).enumerate() {
            // The planes a unit prepares from; the image where it lies otherwise.
            let (planes, joined) = if prepared {
                (input.planes(n), Cow::Borrowed(&[][..]))
            } else {
                (Vec::new(), input.joined(n))
            };
            // What the blocks read (`small_block_avx512` checks it again, and writes nothing
            // where it is short: checked here, so that it never is).
            let len = match &layout {
                Some(layout) => layout.scratch,
                None if prepared => taps * positions,
                None => joined.len(),
            };
            if len < reach {
                bail!("{}: an image shorter than its blocks' reach", self.name());
            }
            let out = SendPtr(dst.as_mut_ptr());
            let residual = residual.map(|r| &r[n * m * positions..][..m * positions]);
            // Groups `part` of block `block` from `image`.
            let run = |image: &[f32], block: usize, part: Range<usize>| {
                let channels = block * SMALL_M..((block + 1) * SMALL_M).min(m);
                let w = &weights[block * taps * SMALL_M..];
                let small = Small { image, steps: &steps, width, w, bias, residual };
                // SAFETY: `dst` holds the block's channels' planes, and each unit writes its
                // own positions of its own block's planes (reading only what it prepared).
                unsafe {
                    let planes = out.get().add(channels.start * positions);
                    self.small_block(small, channels.start, planes, channels.len(), part);
                }
            };
            // In one run of equal length per thread: shared as whole blocks (or halves of
            // them), ten blocks went 6 : 4 to two threads through the executor's chunks
            // (MobileNetV2's 960 → 320 on 7 × 7), five 3 : 2.
            let items = if prepared { groups } else { blocks * groups };
            let units = threads().clamp(1, items.max(1));
            let work = m * positions * taps;
            share(&mut vec![(); units], 1, work, |first, chunk| {
                for unit in first..first + chunk.len() {
                    let mut item = items * unit / units;
                    let end = items * (unit + 1) / units;
                    if item == end {
                        continue;
                    }
                    if !prepared {
                        while item < end {
                            let block = item / groups;
                            let upto = end.min((block + 1) * groups);
                            run(&joined, block, item - block * groups..upto - block * groups);
                            item = upto;
                        }
                        continue;
                    }
                    // Taken out of the thread's slot for the unit, as in `run`.
                    let mut scratch = IMAGE.take();
                    let image = at_least(&mut scratch, len);
                    poison(image);
                    let at = item * SMALL_P..(end * SMALL_P).min(positions);
                    match &layout {
                        Some(layout) => {
                            let rows = at.start / ow..(at.end - 1) / ow + 1;
                            self.pad_rows(&planes, image, layout, affine, rows);
                        }
                        None => {
                            for (c, (src, dst)) in
                                planes.iter().zip(image.chunks_exact_mut(positions)).enumerate()
                            {
                                let (src, dst) = (&src[at.clone()], &mut dst[at.clone()]);
                                match affine {
                                    Some((scale, shift)) => {
                                        let (a, b) = (scale[c], shift[c]);
                                        for (d, &x) in dst.iter_mut().zip(src) {
                                            *d = (x * a + b).max(0.0);
                                        }
                                    }
                                    None => dst.copy_from_slice(src),
                                }
                            }
                        }
                    }
                    for block in 0..blocks {
                        run(&image[..len], block, item..end);
                    }
                    IMAGE.set(scratch);
                }
            })?;
        }
        Ok(())
    }

    /// One block of [`DirectConv::run_small`]: the positions of `groups` (groups of
    /// [`SMALL_P`]) in `planes` planes of output channels `first..` ([`SMALL_M`] at most, at
    /// `out`), as `small` says.
    ///
    /// # Safety
    /// `out` points to `planes` planes of `OH × OW` f32, the positions of `groups` in them
    /// written by nothing else meanwhile.
    unsafe fn small_block(
        &self,
        small: Small,
        first: usize,
        out: *mut f32,
        planes: usize,
        groups: Range<usize>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512() {
                // SAFETY: the CPU has AVX-512F, and the caller's contract.
                return unsafe { self.small_block_avx512(small, first, out, planes, groups) };
            }
            if avx2() {
                // SAFETY: the CPU has AVX2 and FMA, and the caller's contract.
                return unsafe { self.small_block_avx2(small, first, out, planes, groups) };
            }
        }
        // SAFETY: the caller's contract.
        unsafe { self.small_block_portable(small, first, out, planes, groups) }
    }

    /// The bias of a [`DirectConv::run_small`] block's channels `first..` (zero past them),
    /// or `None` where `small`'s kernel, image or residual is short of what the block reads.
    #[cfg(target_arch = "x86_64")]
    fn small_bias(&self, small: &Small, first: usize, planes: usize) -> Option<[f32; SMALL_M]> {
        let positions = self.output_plane();
        let reach = small_reach(small.steps, small.width, self.output_hw);
        if small.w.len() < small.steps.len() * SMALL_M
            || small.image.len() < reach
            || planes > SMALL_M
            || small.residual.is_some_and(|r| r.len() < (first + planes) * positions)
        {
            return None;
        }
        let bias = small.bias;
        Some(std::array::from_fn(|r| match bias.len() {
            1 => bias[0],
            _ => bias.get(first + r).copied().unwrap_or(0.0),
        }))
    }

    /// Writes a block's sums `rows` (one per position from `p0`, channels in the lanes,
    /// biased and clamped) into its `planes` planes at `out` (output channels `first..`),
    /// adding `residual` (all `M` planes) where there is one.
    ///
    /// # Safety
    /// As [`DirectConv::small_block`]: `out` points to `planes` planes of `OH × OW` f32,
    /// positions `p0..p0 + rows.len()` the caller's to write; `residual` holds `first +
    /// planes` planes where there is one.
    #[cfg(target_arch = "x86_64")]
    unsafe fn small_store(
        &self,
        rows: &[[f32; SMALL_M]],
        residual: Option<&[f32]>,
        first: usize,
        out: *mut f32,
        planes: usize,
        p0: usize,
    ) {
        let positions = self.output_plane();
        for r in 0..planes {
            // SAFETY: plane `r`'s positions `p0..p0 + rows.len()`, the caller's to write.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.add(r * positions + p0), rows.len()) };
            match residual {
                Some(res) => {
                    let res = &res[(first + r) * positions + p0..][..rows.len()];
                    for ((d, row), &add) in dst.iter_mut().zip(rows).zip(res) {
                        *d = row[r] + add;
                    }
                }
                None => {
                    for (d, row) in dst.iter_mut().zip(rows) {
                        *d = row[r];
                    }
                }
            }
        }
    }

    /// [`DirectConv::small_block`] in plain arithmetic: what the tests hold the AVX-512 one
    /// against (and what would run where `run_small` ran without it).
    ///
    /// # Safety
    /// As [`DirectConv::small_block`].
    unsafe fn small_block_portable(
        &self,
        small: Small,
        first: usize,
        out: *mut f32,
        planes: usize,
        groups: Range<usize>,
    ) {
        let Small { image, steps, width, w, bias, residual } = small;
        let [oh, ow] = self.output_hw;
        let positions = oh * ow;
        let [lo, hi] = self.clamp.bounds();
        let span = groups.start * SMALL_P..(groups.end * SMALL_P).min(positions);
        for r in 0..planes {
            let o = first + r;
            let b = if bias.len() == 1 { bias[0] } else { bias[o] };
            for p in span.clone() {
                let at = p / ow * width + p % ow;
                let taps = steps.iter().enumerate();
                let sum: f32 = taps.map(|(k, &s)| w[k * SMALL_M + r] * image[s + at]).sum();
                let add = residual.map_or(0.0, |res| res[o * positions + p]);
                // SAFETY: plane `r`'s position `p`, the caller's to write.
                unsafe { *out.add(r * positions + p) = Clamp::apply(lo, hi, sum + b) + add };
            }
        }
    }

    /// [`DirectConv::small_block`] with AVX-512 ([`small_sums`]), writing nothing where
    /// `small`'s kernel or image is short of what its steps reach.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn small_block_avx512(
        &self,
        small: Small,
        first: usize,
        out: *mut f32,
        planes: usize,
        groups: Range<usize>,
    ) {
        use std::arch::x86_64::*;
        const P: usize = SMALL_P;
        let Some(b) = self.small_bias(&small, first, planes) else { return };
        let Small { image, steps, width, w, residual, .. } = small;
        let [oh, ow] = self.output_hw;
        let positions = oh * ow;
        let taps = steps.len();
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        // SAFETY: `b` holds 32 values.
        let b = unsafe { [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16))] };
        // The next block's weights, on the way into L2 while this block's first group of
        // positions runs: on 7 × 7 each block reads its weights for 7 groups only, the first
        // time from memory (MobileNetV2's 7 × 7 1×1 layers stream 6.3 MB of them a run). Not
        // on larger planes: their weights are read for more groups, and a 1024-channel image
        // of 14 × 14 (800 KB) needs L2 itself.
        let next = positions < 4 * TILE && w.len() >= 2 * taps * SMALL_M;
        for p0 in (groups.start * P..(groups.end * P).min(positions)).step_by(P) {
            let mut acc = [[_mm512_setzero_ps(); 2]; P];
            let prefetch = next && p0 == groups.start * P;
            // Where each position's values start in the image (a last group's missing
            // positions read the first one's: computed, never stored).
            let n = (positions - p0).min(P);
            let x: [*const f32; P] = std::array::from_fn(|j| {
                let p = p0 + if j < n { j } else { 0 };
                image.as_ptr().wrapping_add(p / ow * width + p % ow)
            });
            // SAFETY: `w` holds `taps` steps of SMALL_M values (and the next block's as many,
            // where `next`); each position's value of each step is inside `image`
            // (`small_reach`).
            unsafe {
                if prefetch {
                    small_sums::<true>(&x, steps, w, &mut acc);
                } else {
                    small_sums::<false>(&x, steps, w, &mut acc);
                }
            }
            // Channels are the lanes: through a scratch, transposed into the planes.
            let mut t = [[0f32; SMALL_M]; P];
            for (row, acc) in t.iter_mut().zip(&acc) {
                for (h, (&a, &b)) in acc.iter().zip(&b).enumerate() {
                    // As `Clamp::apply`: a NaN stays NaN.
                    let v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(a, b)));
                    // SAFETY: `row` holds 32 values.
                    unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * h), v) };
                }
            }
            // SAFETY: the caller's contract.
            unsafe { self.small_store(&t[..n], residual, first, out, planes, p0) };
        }
    }

    /// [`DirectConv::small_block`] with AVX2 and FMA ([`small_sums_avx2`]), writing nothing
    /// where `small`'s kernel or image is short of what its steps reach. The positions in
    /// bands of at most [`SMALL_BAND`], each band's sums over the kernel's taps in chunks of
    /// [`SMALL_CHUNK`] (the chunk's weights and image lines stay in L1 while every position of
    /// the band takes them), through a buffer of the band's sums, channels in lanes. Where it
    /// runs: DenseNet-121's 3×3 convolutions (128 → 32), which the positions-in-lanes blocks
    /// (4 channels × 16 positions, 8 sums: exactly what two FMA pipes of latency 4 keep busy)
    /// summed in passes of 256 taps through a blocks' buffer. Standalone, one thread, Zen 3
    /// VM (slow spell), runs alternated: 56 × 56 0.79–0.85×, 28 × 28 0.76–0.91×, 14 × 14
    /// 0.69–0.71×, 7 × 7 0.70–0.73×; the whole model, two plans alternated (3 × 20 runs)
    /// 0.865 / 0.919 / 0.879× on one thread, 0.880 / 0.957 / 0.962× on two. Also
    /// MobileNetV2's narrowing 1×1 projections on 14 × 14 ([`DirectConv::small`] says which).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn small_block_avx2(
        &self,
        small: Small,
        first: usize,
        out: *mut f32,
        planes: usize,
        groups: Range<usize>,
    ) {
        use std::arch::x86_64::*;
        let Some(b) = self.small_bias(&small, first, planes) else { return };
        let Small { image, steps, width, w, residual, .. } = small;
        let [oh, ow] = self.output_hw;
        let positions = oh * ow;
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        // Halves of the block's channels that hold any of its planes.
        let halves = planes.div_ceil(SMALL_M / 2);
        let span = groups.start * SMALL_P..(groups.end * SMALL_P).min(positions);
        let mut sums = [[0f32; SMALL_M]; SMALL_BAND];
        // Bands of equal length (49 positions one band, not 48 and 1: each band reads all the
        // weights).
        let band = span.len().div_ceil(span.len().div_ceil(SMALL_BAND).max(1)).max(1);
        for start in span.clone().step_by(band) {
            let n = (span.end - start).min(band);
            // Where each position's values start in the image.
            let at: [usize; SMALL_BAND] = std::array::from_fn(|q| {
                let p = start + q.min(n - 1);
                p / ow * width + p % ow
            });
            for (chunk, steps) in steps.chunks(SMALL_CHUNK).enumerate() {
                let fresh = chunk == 0;
                for h in 0..halves {
                    // SAFETY: `w` holds `taps` steps of SMALL_M values; the image every
                    // position's value of every step (`small_reach`).
                    let w = unsafe { w.as_ptr().add(chunk * SMALL_CHUNK * SMALL_M + h * 16) };
                    let mut q = 0;
                    while q < n {
                        let x = |j: usize| image.as_ptr().wrapping_add(at[q + j]);
                        let acc = sums[q..].as_mut_ptr().cast::<f32>().wrapping_add(h * 16);
                        // SAFETY: as above; `acc` holds the rows of positions `q..` (at least
                        // as many as each call sums).
                        unsafe {
                            match n - q {
                                1 => small_sums_avx2::<1>(&[x(0)], steps, w, acc, fresh),
                                2 => small_sums_avx2::<2>(&[x(0), x(1)], steps, w, acc, fresh),
                                3 => {
                                    let x = [x(0), x(1), x(2)];
                                    small_sums_avx2::<3>(&x, steps, w, acc, fresh);
                                }
                                4 => {
                                    let x = [x(0), x(1), x(2), x(3)];
                                    small_sums_avx2::<4>(&x, steps, w, acc, fresh);
                                }
                                5 => {
                                    let x = [x(0), x(1), x(2), x(3), x(4)];
                                    small_sums_avx2::<5>(&x, steps, w, acc, fresh);
                                }
                                _ => {
                                    let x = std::array::from_fn(x);
                                    small_sums_avx2::<SMALL_P_AVX2>(&x, steps, w, acc, fresh);
                                }
                            }
                        }
                        q += SMALL_P_AVX2;
                    }
                }
            }
            // Biased and clamped in lanes, then transposed into the planes.
            for row in &mut sums[..n] {
                for (h, b) in b.chunks_exact(8).enumerate() {
                    // SAFETY: `row` and `b` hold 32 values.
                    unsafe {
                        let v = _mm256_add_ps(
                            _mm256_loadu_ps(row.as_ptr().add(8 * h)),
                            _mm256_loadu_ps(b.as_ptr()),
                        );
                        // As `Clamp::apply`: a NaN stays NaN.
                        let v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
                        _mm256_storeu_ps(row.as_mut_ptr().add(8 * h), v);
                    }
                }
            }
            // SAFETY: the caller's contract.
            unsafe { self.small_store(&sums[..n], residual, first, out, planes, start) };
        }
    }

    /// Convolves `n` images, each `C × H × W` in `input`, panel by panel: each panel's `nr`
    /// planes (`OH × OW`, biased and clamped) into a scratch of its thread's, handed to
    /// `then(planes, first channel, out)` with the panel's share of `output` (`out_plane`
    /// values per channel, `n × M` channels): what the fused [`crate::fused`] operator runs
    /// its depthwise convolution on, while the planes are in L2. Panels side by side on
    /// tract's executor where it has threads. Only where [`DirectConv::runs_by_panels`].
    pub(crate) fn run_by_panels(
        &self,
        input: &[f32],
        weights: &[f32],
        bias: &[f32],
        output: &mut [f32],
        out_plane: usize,
        then: impl Fn(&[f32], usize, &mut [f32]) -> TractResult<()> + Sync,
    ) -> TractResult<()> {
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let mut layout = self.layout();
        layout.by_panel = true;
        let nr = layout.nr;
        if !self.runs_by_panels() || weights.len() != layout.channels * layout.offsets.len() {
            bail!("{}: not a convolution to run by panels", self.name());
        }
        let failed = std::sync::Mutex::new(None);
        let image_in = self.input_channels * ih * iw;
        let image_out = self.output_channels * out_plane;
        // Panels of output channels in the lanes ([`DirectConv::wide_panels`]): each a block
        // of `run_small`'s over every position, step `c` reading plane `c` where it lies.
        let wide = nr == SMALL_M;
        let steps: Vec<usize> = match wide {
            true => (0..self.input_channels).map(|k| k * oh * ow).collect(),
            false => Vec::new(),
        };
        for (src, dst) in input.chunks_exact(image_in).zip(output.chunks_exact_mut(image_out)) {
            let (flat, last) = if wide { (None, None) } else { self.in_place(&layout, src)? };
            let (flat, last) = (&flat, &last);
            let work = self.output_channels * oh * ow * layout.offsets.len();
            share(dst, nr * out_plane, work, |first, chunk| {
                let mut planes = PANEL.take();
                let planes_now = at_least(&mut planes, nr * oh * ow);
                for (panel, out) in (first..).zip(chunk.chunks_exact_mut(nr * out_plane)) {
                    if wide {
                        self.wide_panel(src, &steps, weights, bias, panel, planes_now);
                    }
                    let mut target = Planes::new(self, planes_now, bias);
                    target.first = panel * nr;
                    if let Some(flat) = flat {
                        let mut sums = Sums::planes(target, flat, panel..panel + 1);
                        self.run_tiles(src, weights, flat, &mut sums);
                    }
                    if let Some((tail, image)) = last {
                        let mut sums = Sums::planes(target, tail, panel..panel + 1)
                            .for_tiles(tail.tiles - 1..tail.tiles);
                        self.run_tiles(image, weights, tail, &mut sums);
                    }
                    if let Err(e) = then(planes_now, panel * nr, out)
                        && let Ok(mut first) = failed.lock()
                    {
                        first.get_or_insert(e);
                    }
                }
                PANEL.set(planes);
            })?;
        }
        match failed.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Panel `panel` of a convolution with [`DirectConv::wide_panels`] into `planes` (its
    /// [`SMALL_M`] planes), from the image `src` read where it lies (`steps`: plane `c` for
    /// step `c`), by [`DirectConv::small_block_avx2`]. Never called elsewhere: only x86-64
    /// CPUs with AVX2 have wide panels.
    fn wide_panel(
        &self,
        src: &[f32],
        steps: &[usize],
        weights: &[f32],
        bias: &[f32],
        panel: usize,
        planes: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() && planes.len() >= SMALL_M * self.output_plane() {
            let w = &weights[panel * steps.len() * SMALL_M..];
            let width = self.output_hw[1];
            let small = Small { image: src, steps, width, w, bias, residual: None };
            let groups = 0..self.output_plane().div_ceil(SMALL_P);
            // SAFETY: the CPU has AVX2 and FMA, and `planes` holds the panel's planes.
            unsafe {
                let first = panel * SMALL_M;
                self.small_block_avx2(small, first, planes.as_mut_ptr(), SMALL_M, groups);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (src, steps, weights, bias, panel, planes);
    }

    /// Whether [`DirectConv::rows_into`] computes bands of this convolution's rows: summed
    /// in one pass, nothing before it, no pooling after, not [`DirectConv::run_small`]'s,
    /// output rows of [`TILE`] positions and more (so that a block's lanes reach a row above
    /// the band and one below at most).
    pub(crate) fn runs_by_rows(&self) -> bool {
        let layout = self.layout();
        layout.offsets.len() <= layout.k_step
            && !self.prologue
            && !self.pooled
            && !self.small()
            && layout.nr != SMALL_M
            && self.output_hw[1] >= TILE
    }

    /// Whether [`DirectConv::rows_into`] reads a padded copy of the image
    /// ([`DirectConv::pad_for_rows`]), rather than the image itself (a 1×1 on the packed
    /// layout, read in place).
    pub(crate) fn pads_for_rows(&self) -> bool {
        !self.layout().packed
    }

    /// The padded image [`DirectConv::rows_into`] reads, of `input` (one image: `C` planes of
    /// `H × W`), into `image`. Only where [`DirectConv::pads_for_rows`].
    pub(crate) fn pad_for_rows(&self, input: &[f32], image: &mut Vec<f32>) -> TractResult<()> {
        let [ih, iw] = self.input_hw;
        let layout = self.layout();
        if !self.runs_by_rows()
            || !self.pads_for_rows()
            || input.len() != self.input_channels * ih * iw
        {
            bail!(
                "{}: not a convolution to run by rows, or an image of unexpected size",
                self.name()
            );
        }
        let planes: Vec<&[f32]> = input.chunks_exact(ih * iw).collect();
        let scratch = at_least(image, layout.scratch);
        self.pad_image(&planes, scratch, &mut Vec::new(), &layout, None)
    }

    /// Output rows `rows` of every output channel, on this thread, from `image` as
    /// [`DirectConv::pad_for_rows`] wrote it (the image itself where it
    /// [`DirectConv::pads_for_rows`] not), into `out`: `M` planes `at.stride` values apart,
    /// output row `y` at `(y − at.top) · OW` in each. The blocks that cover the band also
    /// write into the row above it and the row below it (those rows' values, as the whole
    /// convolution computes them, or a part of them): the planes hold them. Only where
    /// [`DirectConv::runs_by_rows`].
    pub(crate) fn rows_into(
        &self,
        image: &[f32],
        weights: &[f32],
        bias: &[f32],
        rows: Range<usize>,
        out: &mut [f32],
        at: Window,
    ) -> TractResult<()> {
        let [oh, ow] = self.output_hw;
        let mut layout = self.layout();
        layout.by_panel = false;
        let reach =
            layout.offsets.iter().max().map_or(0, |m| m + (layout.tiles - 1) * layout.tile_stride);
        let Window { top, stride } = at;
        // The rows the blocks write, from the row above the band to the row below it.
        let written = rows.start.saturating_sub(1) as isize..(rows.end + 1).min(oh) as isize;
        if !self.runs_by_rows()
            || rows.is_empty()
            || rows.end > oh
            || top > written.start
            || ((written.end - top) as usize) * ow > stride
            || out.len() < self.output_channels * stride
            || (!layout.packed && (image.len() < layout.scratch || reach + TILE > layout.scratch))
            || weights.len() != layout.channels * layout.offsets.len()
        {
            bail!("{}: rows out of its reach, or buffers of unexpected sizes", self.name());
        }
        let width = layout.width;
        let tiles = rows.start * width / TILE..(rows.end * width).div_ceil(TILE).min(layout.tiles);
        // Row `y` of the planes at `(y − top) · OW`: the blocks' writes from the row above the
        // band on land in them, and `row_runs` drops those past the row below it.
        let planes = Planes {
            out: out.as_mut_ptr().wrapping_offset(-top * ow as isize),
            first: 0,
            plane: stride,
            rows: written.end as usize,
            m: self.output_channels,
            ow,
            width,
            bias,
            clamp: self.clamp.bounds(),
        };
        if !layout.packed {
            let mut sums = Sums::planes(planes, &layout, tiles);
            self.run_tiles(&image[..layout.scratch], weights, &layout, &mut sums);
            return Ok(());
        }
        // The image read in place, its last partial block packed alone.
        let (flat, last) = self.in_place(&layout, image)?;
        if let Some(flat) = &flat {
            let part = tiles.start.min(flat.tiles)..tiles.end.min(flat.tiles);
            if !part.is_empty() {
                self.run_tiles(image, weights, flat, &mut Sums::planes(planes, flat, part));
            }
        }
        if let Some((tail, packed)) = &last
            && tiles.end >= tail.tiles
        {
            let mut sums = Sums::planes(planes, tail, tail.tiles - 1..tail.tiles);
            self.run_tiles(packed, weights, tail, &mut sums);
        }
        Ok(())
    }

    /// Whether [`DirectConv::run_by_bands`] runs this convolution: a 1×1 on the packed layout,
    /// nothing before it, no pooling after, not [`DirectConv::run_small`]'s.
    pub(crate) fn runs_by_bands(&self) -> bool {
        let layout = self.layout();
        layout.packed && !self.prologue && !self.pooled && !self.small() && layout.nr != SMALL_M
    }

    /// Convolves images of which `fill` computes a band of rows at a time, each band's sums
    /// written into `output` (`n × M × OH × OW`) while the band is still in L1 or L2 (the
    /// fused [`crate::fused::Banded`]): `fill(n, rows, image, above)` writes rows
    /// `rows` of image `n`'s `C` planes into `image`, `rows.len() · OW` values a plane, read in
    /// place there as [`DirectConv::in_place`] reads a whole image; `above`: the rows of the
    /// band just above, where the thread's last call filled it (and succeeded); where `tiled`,
    /// `fill` writes the band as the packed layout instead, `[block][C][TILE]` (blocks of the
    /// band's positions in order, the last one's lanes past them never stored), and each step
    /// of the sum reads one line (`DepthwiseConv::run_rows_tiled`: MobileNetV2's chains into
    /// rows of 112 and 56 columns, two plans alternated, the 144 → 24 one 7 % faster, the
    /// others 2 %, the model 0.979–1.002× on one and two threads). Bands of `band` rows at
    /// most, shared out by [`share_bands`]. Only where [`DirectConv::runs_by_bands`].
    pub(crate) fn run_by_bands(
        &self,
        weights: &[f32],
        bias: &[f32],
        output: &mut [f32],
        band: usize,
        tiled: bool,
        fill: impl Fn(usize, Range<usize>, &mut [f32], Option<Range<usize>>) -> TractResult<()> + Sync,
    ) -> TractResult<()> {
        let [oh, ow] = self.output_hw;
        let (c, m) = (self.input_channels, self.output_channels);
        let layout = self.layout();
        if !self.runs_by_bands()
            || band == 0
            || weights.len() != layout.channels * layout.offsets.len()
            || !output.len().is_multiple_of(m * oh * ow)
        {
            bail!("{}: not a convolution to run by bands", self.name());
        }
        // A band of `rows` rows as `fill` writes it: step `c` reads plane `c`. The last
        // block of the band reads up to a block past the last plane's end, the lanes that
        // are no positions of the band (never stored): the image holds a block more.
        let for_rows = |rows: usize| {
            let positions = rows * ow;
            if tiled {
                // The packed layout itself, `[block][C][TILE]`: one line a step.
                let tiles = positions.div_ceil(TILE);
                return Layout { positions, tiles, scratch: tiles * c * TILE, ..layout.clone() };
            }
            Layout {
                offsets: (0..c).map(|k| k * positions).collect(),
                tile_stride: TILE,
                scratch: c * positions + TILE,
                positions,
                tiles: positions.div_ceil(TILE),
                by_panel: false,
                ..layout.clone()
            }
        };
        let whole = for_rows(band);
        let n = output.len() / (m * oh * ow);
        let planes = Planes::new(self, output, bias);
        share_bands(n, oh, band, m * oh * ow * c, |n, rows, above| {
            let short;
            let layout = if rows.len() == band {
                &whole
            } else {
                short = for_rows(rows.len());
                &short
            };
            let mut scratch = BAND.take();
            let image = at_least(&mut scratch, layout.scratch);
            let filled = if tiled { layout.scratch } else { c * layout.positions };
            let result = fill(n, rows.clone(), &mut image[..filled], above);
            if result.is_ok() {
                // The band's rows of image `n`'s planes, which only this band writes.
                let mut target = planes;
                target.out = target.out.wrapping_add(n * m * oh * ow + rows.start * ow);
                target.rows = rows.len();
                let mut sums = Sums::planes(target, layout, 0..layout.tiles);
                self.run_tiles(image, weights, layout, &mut sums);
            }
            BAND.set(scratch);
            result
        })
    }

    /// Copies the valid positions of the blocks out as `OH × OW` planes, adding the bias, then
    /// clamping: as many planes as `out` holds, the first being output channel `first`.
    fn unpack(&self, blocks: &[f32], bias: &[f32], layout: &Layout, first: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { self.unpack_avx512(blocks, bias, layout, first, out) };
        }
        self.unpack_rows(blocks, bias, layout, first, out)
    }

    /// [`DirectConv::unpack`] a block at a time with AVX-512: block by block (the buffer read
    /// in order: read a plane at a time, its lines lie a block's sums apart, and each waited
    /// on L3), each channel's 16 sums loaded once, biased and clamped, then written with one
    /// masked store per output row they fall in (two at most where rows are 16 positions or
    /// longer), the dropped columns masked off.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn unpack_avx512(
        &self,
        blocks: &[f32],
        bias: &[f32],
        layout: &Layout,
        first: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let [oh, ow] = self.output_hw;
        let width = layout.width;
        let [lo, hi] = self.clamp.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let channels = first..first + out.len() / (oh * ow);
        if channels.end > layout.channels {
            return;
        }
        let biases: Vec<__m512> = channels
            .clone()
            .map(|o| _mm512_set1_ps(if bias.len() == 1 { bias[0] } else { bias[o] }))
            .collect();
        let dst = out.as_mut_ptr();
        for tile in 0..layout.tiles {
            // The output rows the block's positions fall in: where each run of lanes lands
            // (the vector's start: `lane` values before its first column, outside the plane
            // for masked lanes only) and which lanes are inside the output's columns.
            let mut runs = [(0, 0u16); TILE];
            let mut n = 0;
            for (lane, valid, at) in row_runs(tile * TILE, TILE, width, [oh, ow]) {
                runs[n] = (at.wrapping_sub(lane), (((1u32 << valid) - 1) << lane) as u16);
                n += 1;
            }
            for (c, (o, &b)) in channels.clone().zip(&biases).enumerate() {
                let at = layout.block_sums(tile, o);
                let Some(src) = blocks.get(at..at + TILE) else { return };
                // SAFETY: `src` holds TILE values.
                let v = unsafe { _mm512_loadu_ps(src.as_ptr()) };
                // As `Clamp::apply`: a NaN stays NaN.
                let v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(v, b)));
                let plane = dst.wrapping_add(c * oh * ow);
                for &(to, mask) in &runs[..n] {
                    // SAFETY: the lanes in `mask` land on columns below OW of a row below
                    // OH of this channel's plane.
                    unsafe { _mm512_mask_storeu_ps(plane.wrapping_add(to), mask, v) };
                }
            }
        }
    }

    /// [`DirectConv::unpack`], row by row: what the tests hold the AVX-512 one against, and
    /// what CPUs without it run.
    fn unpack_rows(
        &self,
        blocks: &[f32],
        bias: &[f32],
        layout: &Layout,
        first: usize,
        out: &mut [f32],
    ) {
        let [oh, ow] = self.output_hw;
        let [lo, hi] = self.clamp.bounds();
        for (plane, o) in out.chunks_exact_mut(oh * ow).zip(first..) {
            let b = if bias.len() == 1 { bias[0] } else { bias[o] };
            for (y, row) in plane.chunks_exact_mut(ow).enumerate() {
                let mut x = 0;
                while x < ow {
                    let p = y * layout.width + x;
                    let (tile, lane) = (p / TILE, p % TILE);
                    let n = (TILE - lane).min(ow - x);
                    let src = &blocks[layout.block_sums(tile, o) + lane..][..n];
                    for (d, &s) in row[x..x + n].iter_mut().zip(src) {
                        *d = Clamp::apply(lo, hi, s + b);
                    }
                    x += n;
                }
            }
        }
    }
}

/// The operator's image input: `N` images of `C` planes, as one tensor or as the pieces that
/// a concatenation along the channels would have joined ([`read_concats`]), each
/// `[N, C_i, H, W]`, in order.
#[derive(Clone, Copy)]
struct Input<'a> {
    pieces: &'a [&'a [f32]],
    images: usize,
    /// Values per plane (`H · W`).
    plane: usize,
}

impl<'a> Input<'a> {
    /// Image `n`'s planes, in order.
    fn planes(&self, n: usize) -> Vec<&'a [f32]> {
        let images = self.images;
        self.pieces
            .iter()
            .flat_map(|piece| {
                let len = piece.len() / images;
                piece[n * len..][..len].chunks_exact(self.plane)
            })
            .collect()
    }

    /// Image `n` in one slice: where it lies when there is one piece, the pieces' parts
    /// joined when there are several.
    fn joined(&self, n: usize) -> Cow<'a, [f32]> {
        match self.pieces {
            [one] => {
                let len = one.len() / self.images;
                Cow::Borrowed(&one[n * len..][..len])
            }
            _ => Cow::Owned(self.planes(n).concat()),
        }
    }
}

/// The threads of tract's executor on this thread (1 without one, or without threads).
fn threads() -> usize {
    #[cfg(feature = "threads")]
    {
        use tract_linalg::multithread::{Executor, current_tract_executor};
        match current_tract_executor() {
            Executor::MultiThread(pool) => pool.current_num_threads(),
            Executor::RayonGlobal => rayon::current_num_threads(),
            _ => 1,
        }
    }
    #[cfg(not(feature = "threads"))]
    1
}

/// Runs `f(first, chunk)` over `out` in chunks of whole rows (`row` values each; `first` is
/// the chunk's first row), side by side on tract's executor where it has threads and `work`
/// (values touched) is worth sharing, else once over all of `out`.
fn share<T: Send>(
    out: &mut [T],
    row: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> TractResult<()> {
    #[cfg(feature = "threads")]
    return tract_linalg::multithread::par_chunks_mut(out, row, work, |first, chunk| {
        f(first, chunk);
        Ok(())
    });
    #[cfg(not(feature = "threads"))]
    {
        let _ = (row, work);
        f(0, out);
        Ok(())
    }
}

/// Runs `f(n, rows, above)` for bands of at most `band` rows of each of `images` images of
/// `rows` rows: the rows shared out between the threads of tract's executor in equal runs
/// (where `work`, in values touched, is worth sharing; cut at even rows), each run cut into
/// bands from its top (the last one the rows left). `above`: the rows of the band just above,
/// where the thread's last call ran it and succeeded. The first error, once all have run.
/// Cut into bands first, MobileNetV2's stem and depthwise convolution's 7 bands of 16 rows
/// went 3 : 4 to two threads, DenseNet-121's stem and pooling's 10 of 6 rows 30 : 26.
pub(crate) fn share_bands(
    images: usize,
    rows: usize,
    band: usize,
    work: usize,
    f: impl Fn(usize, Range<usize>, Option<Range<usize>>) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let band = band.max(1);
    let units = threads().clamp(1, rows.div_ceil(band).max(1));
    let failed = std::sync::Mutex::new(None);
    for n in 0..images {
        share(&mut vec![(); units], 1, work, |first, chunk| {
            for unit in first..first + chunk.len() {
                let cut = |u: usize| if u == units { rows } else { (rows * u / units) & !1 };
                let mut above = None;
                for start in (cut(unit)..cut(unit + 1)).step_by(band) {
                    let part = start..(start + band).min(cut(unit + 1));
                    if let Err(e) = f(n, part.clone(), above.take()) {
                        if let Ok(mut slot) = failed.lock() {
                            slot.get_or_insert(e);
                        }
                        continue;
                    }
                    above = Some(part);
                }
            }
        })?;
    }
    match failed.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// [`tiles`] with [`block_avx2`] for panels of `R` channels: AVX2 with fused multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles_avx2<const R: usize>(
    image: &[f32],
    weights: &[f32],
    layout: &Layout,
    sums: &mut Sums,
) {
    single(image, weights, layout, sums, true, |image, p, offsets, weights, acc, out, ahead, n| {
        // SAFETY: the CPU has AVX2 and FMA (the caller's contract), and `tiles` vouches for
        // the reach (and `Sums::with` for `out`'s).
        unsafe {
            if n <= TILE / 2 {
                block_avx2::<R, 1, false>(image, p, offsets, weights, acc, out, 0)
            } else if ahead > 0 {
                block_avx2::<R, 2, true>(image, p, offsets, weights, acc, out, ahead)
            } else {
                block_avx2::<R, 2, false>(image, p, offsets, weights, acc, out, 0)
            }
        }
    })
}

/// [`tiles`] with [`block_avx512`] on pairs of blocks (alone for a group's odd one out): 32
/// positions × 8 channels per pass, each step two 16-lane image vectors, eight broadcasts and
/// sixteen multiply-adds. On the 2-core AMD Zen 4 VM, over L1-resident data, its first form
/// (6 channels) ran at 109–114 GFLOP/s against 85–97 for the AVX2 block, one thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tiles_avx512(image: &[f32], weights: &[f32], layout: &Layout, sums: &mut Sums) {
    tiles(
        image,
        weights,
        layout,
        sums,
        true,
        true,
        |image, ps, offsets, weights, acc, next, out, _, _| {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (the caller's contract), `tiles`
            // vouches for the reach of both blocks, and `Sums::with` for `out`'s.
            unsafe {
                match next {
                    Some(next) => block_avx512(image, ps, offsets, weights, [acc, next], out),
                    None => block_avx512(image, [ps[0]], offsets, weights, [acc], out),
                }
            }
        },
    )
}

/// [`tiles`] with [`block_wasm`].
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn tiles_wasm(image: &[f32], weights: &[f32], layout: &Layout, sums: &mut Sums) {
    single(image, weights, layout, sums, false, |image, p, offsets, weights, acc, out, _, _| {
        // SAFETY: `tiles` vouches for the reach.
        unsafe { block_wasm(image, p, offsets, weights, acc, out.first()) }
    })
}

/// [`tiles`] with the portable [`block`], for the layout's panels (4, 6 or 8 channels; on wasm
/// SIMD, for the tests only).
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn tiles_portable(image: &[f32], weights: &[f32], layout: &Layout, sums: &mut Sums) {
    fn with<const R: usize>(i: &[f32], w: &[f32], l: &Layout, sums: &mut Sums) {
        single(i, w, l, sums, false, |image, p, offsets, weights, acc, out, _, _| {
            // SAFETY: `tiles` vouches for the reach.
            unsafe { block::<R>(image, p, offsets, weights, acc, out.first()) }
        })
    }
    match layout.nr {
        4 => with::<4>(image, weights, layout, sums),
        8 => with::<8>(image, weights, layout, sums),
        _ => with::<6>(image, weights, layout, sums),
    }
}

/// [`tiles`] one block at a time, through `block` (with [`block`]'s arguments and contract
/// but where its sums go, [`Finish`], how far ahead to prefetch, and the block's positions
/// that are the layout's); `writes_out` as [`tiles`]'s.
#[inline(always)]
fn single(
    image: &[f32],
    weights: &[f32],
    layout: &Layout,
    sums: &mut Sums,
    writes_out: bool,
    block: impl Fn(&[f32], usize, &[usize], &[f32], &mut [f32], Finish<'_>, usize, usize),
) {
    tiles(
        image,
        weights,
        layout,
        sums,
        false,
        writes_out,
        |image, [p, _], offsets, w, acc, _, out, ahead, n| {
            block(image, p, offsets, w, acc, out, ahead, n)
        },
    )
}

/// The sums `sums` holds (blocks and panels of the blocks' buffer or of the output planes),
/// each through `block` (with [`block`]'s arguments and contract, the block's position first
/// of a pair and its sums first of two, and where they go: [`Finish`]). `pairs`: two blocks
/// of a group at a time where there are two left (their positions, and the second one's sums
/// as `Some`), else one (`None`); `writes_out`: `block` writes [`Finish::Out`] itself (the
/// x86-64 blocks), else it is only ever handed [`Finish::Sums`]. Its last two arguments: how many
/// values past each line it reads the block may prefetch (0: none), on a group's first panel
/// where the layout says to ([`Layout::prefetch`]): the same line of the next group's block;
/// and how many of the (first) block's positions are the layout's, the rest computed only to
/// be dropped ([`TILE`] but in the last block).
#[inline(always)]
fn tiles(
    image: &[f32],
    weights: &[f32],
    layout: &Layout,
    sums: &mut Sums,
    pairs: bool,
    writes_out: bool,
    block: impl Fn(
        &[f32],
        [usize; 2],
        &[usize],
        &[f32],
        &mut [f32],
        Option<&mut [f32]>,
        Finish<'_>,
        usize,
        usize,
    ),
) {
    let (k, nr) = (layout.offsets.len(), layout.nr);
    let (tiles, panels) = sums.ranges();
    debug_assert!(tiles.end <= layout.tiles && panels.end <= layout.channels / nr);
    // A range of steps, then a group of blocks, then panels, then the group's blocks: a
    // panel's weights for the steps stay in L1 while the group's blocks pass over them, and
    // the group's image lines for the steps stay in L2 across the panels.
    for k0 in (0..k).step_by(layout.k_step) {
        let k1 = (k0 + layout.k_step).min(k);
        let steps = Steps { first: k0 == 0, last: k1 == k };
        for group in tiles.clone().step_by(GROUP) {
            for panel in panels.clone() {
                let w = &weights[(panel * k + k0) * nr..(panel * k + k1) * nr];
                let ahead = if layout.prefetch && panel == panels.start {
                    GROUP * layout.tile_stride
                } else {
                    0
                };
                let (mut t, end) = (group, (group + GROUP).min(tiles.end));
                while t < end {
                    let p = t * layout.tile_stride;
                    let offsets = &layout.offsets[k0..k1];
                    // `run` checked that `p` plus any offset plus TILE stays in `image`, for
                    // every block.
                    // The block's positions that are the layout's (the rest computed, dropped).
                    let lanes = layout.positions.saturating_sub(t * TILE).min(TILE);
                    if pairs && t + 1 < end {
                        let ps = [p, p + layout.tile_stride];
                        sums.with(t, panel, true, steps, writes_out, |acc, next, out| {
                            block(image, ps, offsets, w, acc, next, out, ahead, lanes)
                        });
                        t += 2;
                    } else {
                        sums.with(t, panel, false, steps, writes_out, |acc, _, out| {
                            block(image, [p, p], offsets, w, acc, None, out, ahead, lanes)
                        });
                        t += 1;
                    }
                }
            }
        }
    }
}

/// Which steps of the sum a pass over a block runs: from the first (the sums start from
/// zero), to the last (they are complete after it).
#[derive(Clone, Copy)]
struct Steps {
    first: bool,
    last: bool,
}

/// What a block does with its sums after a pass.
#[derive(Clone, Copy)]
enum Finish<'e> {
    /// Stores them into its sums buffers (`first`: starting from zero, else from what the
    /// buffers hold).
    Sums { first: bool },
    /// Writes them, biased and clamped, straight into the output planes: a whole sum in one
    /// pass, blocks whose positions are the output's ([`Sums::with`] vouches for the reach).
    #[cfg(target_arch = "x86_64")]
    Out(&'e Epilogue<'e>),
    /// Nothing written out off x86-64: the lifetime only, never built.
    #[cfg(not(target_arch = "x86_64"))]
    #[allow(dead_code)]
    Never(std::convert::Infallible, std::marker::PhantomData<&'e ()>),
}

impl Finish<'_> {
    /// Whether the sums start from zero.
    fn first(self) -> bool {
        match self {
            Finish::Sums { first } => first,
            #[cfg(target_arch = "x86_64")]
            Finish::Out(_) => true,
            #[cfg(not(target_arch = "x86_64"))]
            Finish::Never(never, _) => match never {},
        }
    }
}

/// Where a block's complete sums go ([`Finish::Out`]): for block `b` of a pair, the output
/// rows its lanes fall in (two at most: rows of [`TILE`] positions or more), output channel
/// `r` of the panel at `at[b][i] + r · plane` for row `i`, its lanes `masks[b][i]` (the
/// vector's start lies `lane` values before the row's first column: outside the plane for
/// masked lanes only; no lanes where there is no second row); `rows` of the panel's channels
/// are the output's (the rest, past `M`, are dropped), each gaining its bias
/// ([`Epilogue::bias`]) and then the clamp.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    at: [[*mut f32; 2]; 2],
    masks: [[u16; 2]; 2],
    plane: usize,
    rows: usize,
    /// The panel's biases (`rows` of them), or one for all.
    bias: &'a [f32],
    clamp: [f32; 2],
}

#[cfg(target_arch = "x86_64")]
impl Epilogue<'_> {
    /// The bias of the panel's channel `r` (below `rows`).
    #[inline(always)]
    fn bias(&self, r: usize) -> f32 {
        if self.bias.len() == 1 { self.bias[0] } else { self.bias[r] }
    }
}

/// Where [`tiles`] keeps the sums of the blocks and panels it runs: a chunk of the blocks'
/// buffer, copied out by [`DirectConv::unpack`] after; or, for the packed layout (whose
/// positions are the output's), the output planes themselves, the bias and clamp applied as
/// the last pass over a block writes it.
// One per chunk of work, on its thread's stack: the temp inline, not boxed.
#[allow(clippy::large_enum_variant)]
enum Sums<'a> {
    Blocks {
        out: &'a mut [f32],
        tiles: Range<usize>,
        panels: Range<usize>,
        by_panel: bool,
        nr: usize,
        channels: usize,
        tiles_all: usize,
    },
    Planes {
        planes: Planes<'a>,
        tiles: Range<usize>,
        panels: Range<usize>,
        nr: usize,
        temp: [f32; 2 * MAX_NR * TILE],
    },
}

/// The widest panel any block runs.
const MAX_NR: usize = 8;

/// The output planes of one image as [`Sums::Planes`] writes them: shared by the threads of
/// one convolution, each writing only its own blocks or panels.
#[derive(Clone, Copy)]
struct Planes<'a> {
    out: *mut f32,
    /// The output channel of `out`'s first plane.
    first: usize,
    /// Values from one plane to the next (`OH · OW`), the rows of each it holds (`OH`; fewer
    /// for a band of rows, [`DirectConv::run_by_bands`]), and planes (`M`).
    plane: usize,
    rows: usize,
    m: usize,
    /// The output's columns, and the positions a row of the layout's blocks spans
    /// (`width − OW` computed and dropped; `OW` where the layout is packed).
    ow: usize,
    width: usize,
    bias: &'a [f32],
    clamp: [f32; 2],
}

// SAFETY: the threads that share a `Planes` write disjoint blocks or panels of it (`run`
// hands each its own units), and nothing reads it until they are all done.
unsafe impl Send for Planes<'_> {}
// SAFETY: as above.
unsafe impl Sync for Planes<'_> {}

impl<'a> Planes<'a> {
    /// `out`: one image's `M` output planes; `bias`: `M` values, or one for all.
    fn new(op: &DirectConv, out: &'a mut [f32], bias: &'a [f32]) -> Planes<'a> {
        let [oh, ow] = op.output_hw;
        debug_assert_eq!(out.len() % (oh * ow), 0);
        Planes {
            out: out.as_mut_ptr(),
            first: 0,
            plane: oh * ow,
            rows: oh,
            m: op.output_channels,
            ow,
            width: ow,
            bias,
            clamp: op.clamp.bounds(),
        }
    }
}

impl<'a> Sums<'a> {
    /// A chunk of the blocks' buffer: whole blocks from block `first`, or whole panels from
    /// panel `first` where the layout shares by panel.
    fn blocks(layout: &Layout, first: usize, out: &'a mut [f32]) -> Sums<'a> {
        let nr = layout.nr;
        let (tiles, panels) = if layout.by_panel {
            (0..layout.tiles, first..first + out.len() / (layout.tiles * nr * TILE))
        } else {
            (first..first + out.len() / (layout.channels * TILE), 0..layout.channels / nr)
        };
        Sums::Blocks {
            out,
            tiles,
            panels,
            by_panel: layout.by_panel,
            nr,
            channels: layout.channels,
            tiles_all: layout.tiles,
        }
    }

    /// The output planes' `units`: blocks, or panels where the layout shares by panel.
    fn planes(mut planes: Planes<'a>, layout: &Layout, units: Range<usize>) -> Sums<'a> {
        planes.width = layout.width;
        debug_assert!(layout.nr <= MAX_NR && planes.rows * layout.width <= layout.positions);
        let (tiles, panels) = if layout.by_panel {
            (0..layout.tiles, units)
        } else {
            (units, 0..layout.channels / layout.nr)
        };
        Sums::Planes { planes, tiles, panels, nr: layout.nr, temp: [0.0; 2 * MAX_NR * TILE] }
    }

    /// The same sums, for those of blocks `only` alone.
    fn for_tiles(mut self, only: Range<usize>) -> Sums<'a> {
        match &mut self {
            Sums::Blocks { tiles, .. } | Sums::Planes { tiles, .. } => {
                *tiles = only.start.max(tiles.start)..only.end.min(tiles.end);
            }
        }
        self
    }

    /// The blocks and the panels it holds.
    fn ranges(&self) -> (Range<usize>, Range<usize>) {
        match self {
            Sums::Blocks { tiles, panels, .. } | Sums::Planes { tiles, panels, .. } => {
                (tiles.clone(), panels.clone())
            }
        }
    }

    /// Runs `f(acc, next, finish)` on the sums of block `t` for `panel` (`nr` rows of
    /// [`TILE`]) and, where `pair`, of block `t + 1`. Where `out` (the block writes
    /// [`Finish::Out`]), the sums are planes' and the pass is the whole sum, `f` writes them
    /// out itself; else it stores them into `acc` and `next` ([`Finish::Sums`]).
    #[inline(always)]
    fn with(
        &mut self,
        t: usize,
        panel: usize,
        pair: bool,
        steps: Steps,
        out: bool,
        f: impl FnOnce(&mut [f32], Option<&mut [f32]>, Finish<'_>),
    ) {
        // Only the x86-64 blocks write their sums out.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = out;
        match self {
            Sums::Blocks { out, tiles, panels, by_panel, nr, channels, tiles_all } => {
                let at = |t: usize| {
                    if *by_panel {
                        ((panel - panels.start) * *tiles_all + t) * *nr * TILE
                    } else {
                        ((t - tiles.start) * *channels + panel * *nr) * TILE
                    }
                };
                let n = *nr * TILE;
                let finish = Finish::Sums { first: steps.first };
                if pair {
                    // The second block's sums lie after the first's, by panel or by block.
                    let (a, b) = (at(t), at(t + 1));
                    let (head, tail) = out.split_at_mut(b);
                    f(&mut head[a..][..n], Some(&mut tail[..n]), finish);
                } else {
                    f(&mut out[at(t)..][..n], None, finish);
                }
            }
            Sums::Planes { planes, nr, temp, .. } => {
                let n = *nr * TILE;
                let (a, b) = temp.split_at_mut(MAX_NR * TILE);
                let (a, b) = (&mut a[..n], &mut b[..n]);
                // Two output rows at most per block (`Epilogue`).
                #[cfg(target_arch = "x86_64")]
                if out
                    && steps.first
                    && steps.last
                    && (planes.width == planes.ow || planes.width >= TILE)
                {
                    let epilogue = planes.epilogue(t, panel, *nr, pair);
                    return f(a, pair.then_some(&mut *b), Finish::Out(&epilogue));
                }
                if !steps.first {
                    planes.load(t, panel, *nr, a);
                    if pair {
                        planes.load(t + 1, panel, *nr, b);
                    }
                }
                f(a, pair.then_some(&mut *b), Finish::Sums { first: steps.first });
                planes.store(t, panel, *nr, a, steps.last);
                if pair {
                    planes.store(t + 1, panel, *nr, b, steps.last);
                }
            }
        }
    }
}

impl<'a> Planes<'a> {
    /// The output positions of block `t` (`TILE` of them but in the last block) and the
    /// planes of `panel` (`nr` but past `M`).
    fn span(&self, t: usize, panel: usize, nr: usize) -> (usize, usize, Range<usize>) {
        let p = t * TILE;
        let lanes = TILE.min(self.rows * self.width - p);
        (p, lanes, panel * nr..(panel * nr + nr).min(self.m))
    }

    /// Where block `t`'s sums for `panel` (and block `t + 1`'s, where `pair`) go in the
    /// planes, for a block to write them itself ([`Finish::Out`]). The layout's rows must be
    /// the output's (`width == OW`) or at least [`TILE`] positions long.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn epilogue(&self, t: usize, panel: usize, nr: usize, pair: bool) -> Epilogue<'a> {
        debug_assert!((self.width == self.ow || self.width >= TILE) && nr <= MAX_NR);
        let planes = self.out.wrapping_add((panel * nr - self.first) * self.plane);
        let rows = self.m.min(panel * nr + nr) - panel * nr;
        // Filled field by field: built as tuples and moved in, its masks were read back
        // wider than they were written (a stalled store forwarding: 4 % of MobileNetV2 on
        // the AVX2 path).
        let mut e = Epilogue {
            at: [[planes; 2]; 2],
            masks: [[0; 2]; 2],
            plane: self.plane,
            rows,
            bias: if self.bias.len() == 1 {
                self.bias
            } else {
                &self.bias[panel * nr..panel * nr + rows]
            },
            clamp: self.clamp,
        };
        for b in 0..1 + usize::from(pair) {
            let (p, lanes, _) = self.span(t + b, panel, nr);
            if self.width == self.ow {
                e.at[b][0] = planes.wrapping_add(p);
                e.masks[b][0] = ((1u32 << lanes) - 1) as u16;
            } else {
                self.row_runs(&mut e, b, planes, p, lanes);
            }
        }
        e
    }

    /// [`Planes::epilogue`]'s runs for block `b` of `lanes` positions from `p`, on rows wider
    /// than the output's (two at most).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn row_runs(&self, e: &mut Epilogue<'_>, b: usize, planes: *mut f32, p: usize, lanes: usize) {
        for (i, (lane, valid, at)) in
            row_runs(p, lanes, self.width, [self.rows, self.ow]).take(2).enumerate()
        {
            e.at[b][i] = planes.wrapping_add(at).wrapping_sub(lane);
            e.masks[b][i] = (((1u32 << valid) - 1) << lane) as u16;
        }
    }

    /// The partial sums of block `t`, `panel`, from the planes into `acc` (its rows past `M`
    /// and lanes past the last position left as they are: never stored).
    fn load(&self, t: usize, panel: usize, nr: usize, acc: &mut [f32]) {
        let (p, lanes, outputs) = self.span(t, panel, nr);
        for (o, row) in outputs.zip(acc.chunks_exact_mut(TILE)) {
            // SAFETY: `first <= o < M` and `p + lanes <= rows · OW`: inside the planes `out`
            // holds, in the block and panel only this thread writes.
            let src = unsafe {
                std::slice::from_raw_parts(self.out.add((o - self.first) * self.plane + p), lanes)
            };
            row[..lanes].copy_from_slice(src);
        }
    }

    /// Stores `acc`, block `t`'s sums for `panel`, into the planes: the bias added and the
    /// clamp applied where `last`, as they are otherwise (partial sums, for the next pass).
    fn store(&self, t: usize, panel: usize, nr: usize, acc: &[f32], last: bool) {
        let (p, lanes, outputs) = self.span(t, panel, nr);
        let [lo, hi] = self.clamp;
        if self.width != self.ow {
            // Rows of `width` positions, the last `width − OW` of each dropped: the block's
            // lanes fall in one row or more (only a last pass stores here: `run`).
            debug_assert!(last);
            for (lane, valid, at) in row_runs(p, lanes, self.width, [self.rows, self.ow]) {
                for (o, row) in outputs.clone().zip(acc.chunks_exact(TILE)) {
                    let b = if self.bias.len() == 1 { self.bias[0] } else { self.bias[o] };
                    // SAFETY: `first <= o < M`, and `row_runs` keeps each run inside a row
                    // below OH and its columns below OW: inside the planes `out` holds, in the
                    // block and panel only this thread writes.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            self.out.add((o - self.first) * self.plane + at),
                            valid,
                        )
                    };
                    for (d, &s) in dst.iter_mut().zip(&row[lane..lane + valid]) {
                        *d = Clamp::apply(lo, hi, s + b);
                    }
                }
            }
            return;
        }
        for (o, row) in outputs.zip(acc.chunks_exact(TILE)) {
            // SAFETY: as in `load`.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.add((o - self.first) * self.plane + p),
                    lanes,
                )
            };
            if last {
                let b = if self.bias.len() == 1 { self.bias[0] } else { self.bias[o] };
                for (d, &s) in dst.iter_mut().zip(&row[..lanes]) {
                    *d = Clamp::apply(lo, hi, s + b);
                }
            } else {
                dst.copy_from_slice(&row[..lanes]);
            }
        }
    }
}

/// One block of `R` channels: `acc[r][l]` (output channel `r` of the panel, position `p + l`)
/// gains, for every step, the step's weight for `r` times the image at `p + offset + l`.
/// Starts from zero when `first`, else from what `acc` holds. Plain array arithmetic,
/// vectorised by the compiler.
///
/// # Safety
/// `p + max(offsets) + TILE` must not exceed `image.len()`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
#[inline(always)]
unsafe fn block<const R: usize>(
    image: &[f32],
    p: usize,
    offsets: &[usize],
    weights: &[f32],
    acc: &mut [f32],
    first: bool,
) {
    let mut sums = [[0f32; TILE]; R];
    if !first {
        for (r, s) in sums.iter_mut().enumerate() {
            s.copy_from_slice(&acc[r * TILE..][..TILE]);
        }
    }
    let base = image.as_ptr();
    for (&offset, w) in offsets.iter().zip(weights.chunks_exact(R)) {
        // SAFETY: the caller vouches for the reach.
        let x = unsafe { &*base.add(p + offset).cast::<[f32; TILE]>() };
        for (s, &w) in sums.iter_mut().zip(w) {
            for (a, &x) in s.iter_mut().zip(x) {
                *a += w * x;
            }
        }
    }
    for (r, s) in sums.iter().enumerate() {
        acc[r * TILE..][..TILE].copy_from_slice(s);
    }
}

/// [`block`] in AVX2 intrinsics for panels of `R` channels (4 or 6) and `V` vectors of 8
/// positions (2: the block's 16), each of the `VR` sums its own register: arrays indexed by
/// constants only, which LLVM keeps in registers once it unrolls the loops over them (over
/// L1-resident lines, Zen 3 VM: 96–101 GFLOP/s for 6, 97–101 for 4, as the block written out
/// by hand before). Given the portable form, or 4 × 24 blocks whose 12 sums, 3 image vectors
/// and a broadcast need all 16 registers, LLVM rotated the sums through registers and the
/// stack on every step.
///
/// Where `finish` is [`Finish::Out`] the sums go from the registers into the output planes,
/// biased and clamped, each vector stored whole, masked (`vmaskmovps`) where a row ends
/// inside it, or not at all, rather than into `acc` for [`Planes::store`] (baseline SSE, 10 %
/// of MobileNetV2's samples) to copy out. One thread, the two alternated run by run in one
/// process, 3 × 40 runs: MobileNetV2 1.2–1.7 % faster; DenseNet-121 within 1 % either way
/// (its 1×1 convolutions on 56 × 56 from 224 and 256 channels 3–5 % slower, most others
/// faster). Its first form, which built the epilogue out of line and moved it through memory
/// in pieces of other widths than they were written (stalled store forwarding), was 3–5 %
/// slower.
///
/// `V` = 1 runs a layout's last block where its positions end in its first 8 (49 = 3 × 16 + 1
/// on 7 × 7, 196 = 12 × 16 + 4 on 14 × 14): half the multiply-adds, the second half of each
/// row of `acc` neither read nor written. DenseNet-121 on one thread (the two alternated node
/// by node in one plan): its 1×1 convolutions on 7 × 7 3.47 → 3.24 ms, on 14 × 14 11.19 →
/// 10.99, its 3×3 ones on 7 × 7 1.17 → 1.16; the whole model 0.990–1.002× on one thread and
/// 0.994–0.998× on two, MobileNetV2 0.984–1.001× and 0.995–0.998×.
///
/// # Safety
/// As [`block`] (with `V` = 1, it reads the first 8 of the block's positions only), and the
/// CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const R: usize, const V: usize, const PREFETCH: bool>(
    image: &[f32],
    p: usize,
    offsets: &[usize],
    weights: &[f32],
    acc: &mut [f32],
    finish: Finish<'_>,
    ahead: usize,
) {
    use std::arch::x86_64::*;
    const { assert!(R <= NR && V <= 2 && TILE == 16, "block_avx2 is written for up to 6 × 16") };
    assert!(acc.len() >= R * TILE && weights.len() >= offsets.len() * R);
    let a = acc.as_mut_ptr();
    // SAFETY: `acc` holds R × TILE values (asserted); the image reads are the caller's
    // contract; `weights` holds R per step (asserted).
    unsafe {
        let mut sums = [[_mm256_setzero_ps(); V]; R];
        if !finish.first() {
            for (r, s) in sums.iter_mut().enumerate() {
                *s = std::array::from_fn(|v| _mm256_loadu_ps(a.add(r * TILE + v * 8)));
            }
        }
        let base = image.as_ptr().add(p);
        let mut w = weights.as_ptr();
        for &offset in offsets {
            let x = base.add(offset);
            if PREFETCH {
                // A hint only: never faults, wherever it points.
                _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(ahead).cast());
            }
            let x: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(x.add(v * 8)));
            for (r, s) in sums.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*w.add(r));
                for (s, &x) in s.iter_mut().zip(&x) {
                    *s = _mm256_fmadd_ps(b, x, *s);
                }
            }
            w = w.add(R);
        }
        let Finish::Out(out) = finish else {
            for (r, s) in sums.iter().enumerate() {
                for (v, &s) in s.iter().enumerate() {
                    _mm256_storeu_ps(a.add(r * TILE + v * 8), s);
                }
            }
            return;
        };
        // Straight into the planes, as `Planes::store`: biased, then clamped as
        // `Clamp::apply` (a NaN stays NaN); each vector's lanes of a row's mask stored whole,
        // masked or not at all.
        let [lo, hi] = out.clamp.map(|v| _mm256_set1_ps(v));
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let runs: [[(*mut f32, u8, __m256i); 2]; V] = std::array::from_fn(|v| {
            std::array::from_fn(|i| {
                let m = (out.masks[0][i] >> (8 * v)) as u8;
                let lanes = _mm256_and_si256(_mm256_set1_epi32(i32::from(m)), bits);
                (out.at[0][i].wrapping_add(8 * v), m, _mm256_cmpeq_epi32(lanes, bits))
            })
        });
        for (r, s) in sums.iter().enumerate().take(out.rows) {
            let bias = _mm256_set1_ps(out.bias(r));
            for (&s, runs) in s.iter().zip(&runs) {
                let x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(s, bias)));
                for &(at, m, mask) in runs {
                    let at = at.wrapping_add(r * out.plane);
                    if m == u8::MAX {
                        _mm256_storeu_ps(at, x);
                    } else if m != 0 {
                        _mm256_maskstore_ps(at, mask, x);
                    }
                }
            }
        }
    }
}

impl Clamped for DirectConv {
    fn clamp(&self) -> Clamp {
        self.clamp
    }

    fn with_clamp(&self, clamp: Clamp) -> Self {
        DirectConv { clamp, ..self.clone() }
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        // A residual added after: named apart, so that a plan's operators show it.
        if self.residual { "medinfer.ConvAdd".into() } else { "medinfer.Conv".into() }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, kernel {:?}, strides {:?}, padding before {:?}{}{}{}{}",
            self.input_channels,
            self.output_channels,
            self.kernel_hw,
            self.strides,
            self.pad_before,
            if self.prologue { ", scale + shift + ReLU before" } else { "" },
            if self.pooled { ", 2×2 average pooling after (run before)" } else { "" },
            self.clamp,
            if self.residual { ", a residual added after" } else { "" },
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        fn slice(t: &TValue) -> TractResult<&[f32]> {
            t.try_as_plain_ram()?.as_slice::<f32>()
        }
        // The image's pieces ([`read_concats`]; one where nothing was rewired), then the
        // kernel, the bias, the prologue's scale and shift where there is one and the
        // residual where there is one.
        let params = self.params();
        let Some(pieces) = inputs.len().checked_sub(params).filter(|&p| p > 0) else {
            bail!("{}: {} inputs", self.name(), inputs.len());
        };
        let (kernel, bias) = (slice(&inputs[pieces])?, slice(&inputs[pieces + 1])?);
        let affine = if self.prologue {
            let (scale, shift) = (slice(&inputs[pieces + 2])?, slice(&inputs[pieces + 3])?);
            if scale.len() != self.input_channels || shift.len() != self.input_channels {
                bail!("{}: a prologue of unexpected size", self.name());
            }
            Some((scale, shift))
        } else {
            None
        };
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let (c, m) = (self.input_channels, self.output_channels);
        let n = inputs[0].shape().first().copied().unwrap_or(0);
        let image =
            |t: &TValue| matches!(*t.shape(), [tn, _, h, w] if tn == n && [h, w] == [ih, iw]);
        let residual = match inputs.last() {
            Some(t) if self.residual => {
                if t.shape() != [n, m, oh, ow] {
                    bail!("{}: a residual of unexpected shape", self.name());
                }
                Some(slice(t)?)
            }
            _ => None,
        };
        if !inputs[..pieces].iter().all(image)
            || inputs[..pieces].iter().map(|t| t.shape()[1]).sum::<usize>() != c
            || kernel.len() != self.kernel_channels() * c * kh * kw
            || (bias.len() != m && bias.len() != 1)
        {
            bail!("{}: inputs of unexpected sizes", self.name());
        }
        let pieces = inputs[..pieces].iter().map(slice).collect::<TractResult<TVec<_>>>()?;
        let input = Input { pieces: &pieces, images: n, plane: ih * iw };
        // SAFETY: f32 has no invalid bit patterns, and `run` writes every element.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, m, oh, ow])? };
        let mut view = output.try_as_plain_ram_mut()?;
        self.run(input, kernel, bias, affine, residual, view.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let Some(input) = inputs.first() else { bail!("{}: no input", self.name()) };
        if input.rank() != 4 {
            bail!("{}: a rank-{} input", self.name(), input.rank());
        }
        let [oh, ow] = self.output_hw;
        let shape =
            [input.shape[0].clone(), self.output_channels.to_dim(), oh.to_dim(), ow.to_dim()];
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let [oh, ow] = self.output_hw;
        let [kh, kw] = self.kernel_hw;
        let n = inputs.first().map_or(1.to_dim(), |f| f.shape[0].clone());
        let macs = self.output_channels * oh * ow * self.input_channels * kh * kw;
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * macs)))
    }

    as_op!();
}

/// [`block`] of [`NR_AVX512`] channels for `B` blocks at once (positions `ps[b]..`, sums in
/// `accs[b]`, or written out where `finish` is [`Finish::Out`]) in AVX-512: each block's 16
/// positions are one 512-bit vector, so the 16 sums of a pair, two image vectors and a
/// broadcast fit the 32 registers. Written out from the registers, the sums skip a store to
/// `accs`, a load back and a call: MobileNetV2's 16 → 96 expansion on 112 × 112 into the
/// fused operator's panels went from 0.71 to 0.49–0.52 ms on one thread (54 → 74–79
/// GFLOP/s); in the model, three alternating runs, its first fused block went from
/// 0.91–1.02 to 0.76–0.82 ms and MobileNetV2 from 8.14–8.55 to 7.78–8.05 ms. The stems'
/// blocks, whose rows are wider than the output's, write theirs as two masked stores per
/// row: standalone, MobileNetV2's 3×3 0.34–0.36 → 0.28 ms, DenseNet-121's 7×7 2.71 → 2.37
/// ms (in the models, no change measured above the noise).
///
/// # Safety
/// As [`block`] for every position, and the CPU has AVX-512F; where `finish` is
/// [`Finish::Out`], the lanes its masks keep lie in the planes for each of its rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<const B: usize>(
    image: &[f32],
    ps: [usize; B],
    offsets: &[usize],
    weights: &[f32],
    accs: [&mut [f32]; B],
    finish: Finish<'_>,
) {
    use std::arch::x86_64::*;
    const R: usize = NR_AVX512;
    const _: () = assert!(TILE == 16, "block_avx512 is written for 16-position blocks");
    assert!(accs.iter().all(|a| a.len() >= R * TILE) && weights.len() >= offsets.len() * R);
    let a = accs.map(|a| a.as_mut_ptr());
    // SAFETY: each of `accs` holds R × TILE values and `weights` R per step (asserted); the
    // image reads are the caller's contract.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); B]; R];
        if !finish.first() {
            for (r, s) in sums.iter_mut().enumerate() {
                *s = std::array::from_fn(|b| _mm512_loadu_ps(a[b].add(r * TILE)));
            }
        }
        let base = ps.map(|p| image.as_ptr().add(p));
        let mut w = weights.as_ptr();
        for &offset in offsets {
            let x: [__m512; B] = std::array::from_fn(|b| _mm512_loadu_ps(base[b].add(offset)));
            for (r, s) in sums.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*w.add(r));
                for (s, &x) in s.iter_mut().zip(&x) {
                    *s = _mm512_fmadd_ps(w, x, *s);
                }
            }
            w = w.add(R);
        }
        let Finish::Out(out) = finish else {
            for (r, s) in sums.iter().enumerate() {
                for (b, &s) in s.iter().enumerate() {
                    _mm512_storeu_ps(a[b].add(r * TILE), s);
                }
            }
            return;
        };
        // Straight into the planes, as `Planes::store`: biased, then clamped as
        // `Clamp::apply` (a NaN stays NaN).
        let [lo, hi] = out.clamp.map(|v| _mm512_set1_ps(v));
        for (r, s) in sums.iter().enumerate().take(out.rows) {
            let bias = _mm512_set1_ps(out.bias(r));
            for (b, &s) in s.iter().enumerate() {
                let v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(s, bias)));
                for (&at, &mask) in out.at[b].iter().zip(&out.masks[b]) {
                    let at = at.wrapping_add(r * out.plane);
                    if mask == u16::MAX {
                        _mm512_storeu_ps(at, v);
                    } else if mask != 0 {
                        _mm512_mask_storeu_ps(at, mask, v);
                    }
                }
            }
        }
    }
}

/// [`block`] in wasm SIMD: the block's [`NR`] × [`TILE`] / 4 sums are `v128` values that the
/// engine keeps in registers, each step two image vectors and [`NR`] broadcast weights, the
/// multiply-add fused where the build allows it (as [`crate::wasm_mmm`]'s kernel).
///
/// # Safety
/// As [`block`].
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
unsafe fn block_wasm(
    image: &[f32],
    p: usize,
    offsets: &[usize],
    weights: &[f32],
    acc: &mut [f32],
    first: bool,
) {
    use std::arch::wasm32::*;
    const V: usize = TILE / 4;
    assert!(acc.len() >= NR * TILE && weights.len() >= offsets.len() * NR);
    let a = acc.as_mut_ptr();
    // SAFETY: `acc` holds NR × TILE values and `weights` NR per step (asserted); the image
    // reads are the caller's contract; wasm loads need no alignment.
    unsafe {
        let mut sums = [[f32x4_splat(0.0); V]; NR];
        if !first {
            for (r, s) in sums.iter_mut().enumerate() {
                for (v, s) in s.iter_mut().enumerate() {
                    *s = v128_load(a.add(r * TILE + v * 4).cast());
                }
            }
        }
        let base = image.as_ptr().add(p);
        let mut w = weights.as_ptr();
        for &offset in offsets {
            let x = base.add(offset);
            let x: [v128; V] = std::array::from_fn(|v| v128_load(x.add(v * 4).cast()));
            for (r, s) in sums.iter_mut().enumerate() {
                let b = v128_load32_splat(w.add(r).cast());
                for (s, &x) in s.iter_mut().zip(&x) {
                    *s = crate::wasm_mmm::madd(*s, b, x);
                }
            }
            w = w.add(NR);
        }
        for (r, s) in sums.iter().enumerate() {
            for (v, &s) in s.iter().enumerate() {
                v128_store(a.add(r * TILE + v * 4).cast(), s);
            }
        }
    }
}

/// What this module's tests and [`crate::depthwise`]'s share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A convolution case: `n` images of `c` channels, `m` outputs, `group` groups.
    #[derive(Clone)]
    pub struct Case {
        pub n: usize,
        pub c: usize,
        pub m: usize,
        pub group: usize,
        pub hw: [usize; 2],
        pub k: [usize; 2],
        pub s: [usize; 2],
        pub before: [usize; 2],
        pub after: [usize; 2],
        pub bias_per_channel: bool,
    }

    impl Case {
        pub fn out(&self) -> [usize; 2] {
            [0, 1]
                .map(|a| (self.hw[a] + self.before[a] + self.after[a] - self.k[a]) / self.s[a] + 1)
        }
        /// Input channels per group, the kernel's second dimension.
        fn per_group(&self) -> usize {
            self.c / self.group
        }
        pub fn data(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let input =
                (0..self.n * self.c * self.hw[0] * self.hw[1]).map(|i| value(i, 1)).collect();
            let kernel = (0..self.m * self.per_group() * self.k[0] * self.k[1])
                .map(|i| value(i, 2))
                .collect();
            let bias =
                (0..if self.bias_per_channel { self.m } else { 1 }).map(|i| value(i, 3)).collect();
            (input, kernel, bias)
        }
        /// The convolution in f64, straight from the definition.
        pub fn oracle(&self) -> Vec<f64> {
            let (input, kernel, bias) = self.data();
            let [oh, ow] = self.out();
            let [h, w] = self.hw;
            let [kh, kw] = self.k;
            let (per_group, outputs_per_group) = (self.per_group(), self.m / self.group);
            let mut out = Vec::new();
            for n in 0..self.n {
                for o in 0..self.m {
                    let first = o / outputs_per_group * per_group;
                    for y in 0..oh {
                        for x in 0..ow {
                            let mut sum =
                                f64::from(bias[if self.bias_per_channel { o } else { 0 }]);
                            for ci in 0..per_group {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy =
                                            (y * self.s[0] + ky) as isize - self.before[0] as isize;
                                        let ix =
                                            (x * self.s[1] + kx) as isize - self.before[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let c = first + ci;
                                        let v = input[((n * self.c + c) * h + iy as usize) * w
                                            + ix as usize];
                                        let k = kernel[((o * per_group + ci) * kh + ky) * kw + kx];
                                        sum += f64::from(v) * f64::from(k);
                                    }
                                }
                            }
                            out.push(sum);
                        }
                    }
                }
            }
            out
        }
        /// A one-node graph holding tract's `Conv` for this case.
        pub fn model(&self) -> TypedModel {
            let (_, kernel, bias) = self.data();
            let mut model = TypedModel::default();
            let x = model
                .add_source("x", f32::fact([self.n, self.c, self.hw[0], self.hw[1]]))
                .expect("source");
            let shape = [self.m, self.per_group(), self.k[0], self.k[1]];
            let k = model.add_const("k", tensor1(&kernel).into_shape(&shape).expect("k"));
            let k = k.expect("kernel");
            // A shared bias is a scalar in tract's Conv.
            let bias = if self.bias_per_channel { tensor1(&bias) } else { tensor0(bias[0]) };
            let b = model.add_const("b", bias).expect("bias");
            let conv = Conv {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: self.k.iter().copied().collect(),
                    padding: PaddingSpec::Explicit(
                        self.before.iter().copied().collect(),
                        self.after.iter().copied().collect(),
                    ),
                    dilations: None,
                    strides: Some(self.s.iter().copied().collect()),
                    input_channels: self.c,
                    output_channels: self.m,
                },
                kernel_fmt: KernelFormat::OIHW,
                group: self.group,
                q_params: None,
            };
            let y = model.wire_node("conv", conv, &[x, k, b]).expect("conv");
            model.select_output_outlets(&y).expect("outputs");
            model
        }
        /// Runs `model` (this case's, substituted or not) through tract's plan on the case's
        /// input.
        pub fn run(&self, model: TypedModel) -> Vec<f32> {
            let (input, _, _) = self.data();
            let input = tensor1(&input)
                .into_shape(&[self.n, self.c, self.hw[0], self.hw[1]])
                .expect("input");
            let plan = model.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
            let out = plan.run(tvec!(input.into_tvalue())).expect("run");
            out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec()
        }
    }

    /// A deterministic pseudo-random value in -1..1.
    pub fn value(i: usize, salt: usize) -> f32 {
        let h = (i as u64 ^ (salt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `got` within 1e-5 (relative, plus as much absolute) of the f64 `want`.
    pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}: element {i}: {g} against {w}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Case, assert_close, value};
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn case(
        n: usize,
        c: usize,
        m: usize,
        hw: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        before: [usize; 2],
        after: [usize; 2],
        bias_per_channel: bool,
    ) -> Case {
        Case { n, c, m, group: 1, hw, k, s, before, after, bias_per_channel }
    }

    fn cases() -> Vec<Case> {
        vec![
            // DenseNet-121's 3×3 convolutions (32 outputs; more input channels than one step
            // of the sum holds: 60 · 9 = 540 > K_STEP_KXK) on planes narrower and wider than a
            // block, and its 7×7 stride-2 stem.
            case(1, 60, 32, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1], false),
            case(1, 60, 32, [29, 29], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 3, 16, [40, 38], [7, 7], [2, 2], [3, 3], [3, 3], true),
            // MobileNetV2's stem: 3×3 stride 2, padding 1 (and ONNX's asymmetric 0 / 1).
            case(1, 3, 8, [32, 32], [3, 3], [2, 2], [1, 1], [1, 1], true),
            case(1, 3, 8, [32, 32], [3, 3], [2, 2], [0, 0], [1, 1], true),
            // Output channels not a multiple of the panel, batches, odd kernels and strides,
            // no padding, outputs smaller than a block.
            case(2, 5, 7, [9, 30], [3, 3], [1, 1], [1, 1], [1, 1], true),
            case(1, 2, 3, [11, 10], [3, 5], [1, 3], [1, 0], [0, 2], true),
            case(3, 4, 6, [8, 8], [3, 3], [1, 1], [0, 0], [0, 0], false),
            case(1, 6, 5, [5, 67], [2, 7], [3, 2], [1, 3], [1, 3], true),
            case(1, 3, 4, [3, 3], [2, 2], [1, 1], [0, 0], [0, 0], true),
            case(1, 1, 1, [4, 9], [1, 2], [1, 1], [0, 1], [0, 0], true),
            // Stride 1 with rows sharing their padding columns: wider before than after
            // (the taps' last columns read the next row's left padding), and the reverse.
            case(1, 3, 5, [9, 13], [5, 5], [1, 1], [2, 2], [1, 1], true),
            case(2, 4, 6, [10, 11], [3, 3], [1, 1], [0, 0], [2, 2], true),
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
                optimised.nodes().iter().any(|n| n.op_is::<DirectConv>()),
                "case {i}: the optimised plan lost medinfer's operator"
            );
            assert_close(&format!("case {i}, medinfer"), &case.run(model), &want);
        }
    }

    /// `case`'s graph with `Max(·, lo)` (where given), then `Min(·, hi)` (where given) after
    /// the convolution; `also_out`: the convolution's own output is a model output too.
    fn clamped(case: &Case, lo: Option<f32>, hi: Option<f32>, also_out: bool) -> TypedModel {
        use tract_onnx::tract_core::ops::math;
        let mut model = case.model();
        let conv = model.output_outlets().expect("outputs")[0];
        let mut y = conv;
        for (name, bound, op) in [("max", lo, math::max()), ("min", hi, math::min())] {
            if let Some(v) = bound {
                let v = tensor0(v).broadcast_into_rank(4).expect("rank");
                let v = model.add_const(format!("{name}.bound"), v).expect("bound");
                y = model.wire_node(name, op, &[y, v]).expect(name)[0];
            }
        }
        let outputs = if also_out { vec![y, conv] } else { vec![y] };
        model.select_output_outlets(&outputs).expect("outputs");
        model
    }

    /// A clamp after the convolution (`Max` then `Min` by constants, the form ReLU6 takes in
    /// tract's graph; either alone) folds into the dense and the depthwise operators: no
    /// binary op is left, and the output is the oracle's, clamped. The bounds lie inside the
    /// outputs' range, so that both bite.
    #[test]
    fn fuses_a_following_clamp() {
        let dense = case(1, 3, 8, [32, 32], [3, 3], [2, 2], [1, 1], [1, 1], true);
        let depthwise = Case {
            c: 6,
            m: 6,
            group: 6,
            ..case(1, 6, 6, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1], true)
        };
        for (name, case) in [("dense", &dense), ("depthwise", &depthwise)] {
            for (lo, hi) in [(Some(-0.2f32), Some(0.3f32)), (Some(0.0), None), (None, Some(0.1))] {
                let what = format!("{name}, max {lo:?}, min {hi:?}");
                let [l, h] =
                    [lo.unwrap_or(f32::NEG_INFINITY), hi.unwrap_or(f32::INFINITY)].map(f64::from);
                let want: Vec<f64> = case.oracle().iter().map(|v| v.max(l).min(h)).collect();
                assert!(lo.is_none() || want.contains(&l), "{what}: lo never bites");
                assert!(hi.is_none() || want.contains(&h), "{what}: hi never bites");
                let mut model = clamped(case, lo, hi, false);
                substitute(&mut model).expect("substitute");
                crate::depthwise::substitute(&mut model).expect("substitute");
                assert_eq!(fuse_clamps(&mut model).expect("fuse"), 1, "{what}");
                assert!(!model.nodes().iter().any(|n| n.op_is::<TypedBinOp>()), "{what}");
                assert_close(&what, &case.run(model), &want);
            }
        }
    }

    /// Nothing is folded where the convolution's output is used elsewhere too (here, as a
    /// model output), nor a `Min` below a `Max` (an empty range).
    #[test]
    fn leaves_a_clamp_it_cannot_fold() {
        let dense = case(1, 3, 8, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1], true);
        for (lo, hi, also_out) in [(Some(0.0), Some(6.0), true), (Some(0.5), Some(0.1), false)] {
            let mut model = clamped(&dense, lo, hi, also_out);
            substitute(&mut model).expect("substitute");
            assert_eq!(fuse_clamps(&mut model).expect("fuse"), 0, "{lo:?} {hi:?} {also_out}");
        }
    }

    /// `case`'s model with its output added to `other(model)` (the image, where `None`), the
    /// convolution's output first or second; where `also_out`, the convolution's output is a
    /// model output too.
    fn with_residual(
        case: &Case,
        swapped: bool,
        also_out: bool,
        other: Option<&dyn Fn(&mut TypedModel) -> OutletId>,
    ) -> TypedModel {
        use tract_onnx::tract_core::ops::math;
        let mut model = case.model();
        let conv = model.output_outlets().expect("outputs")[0];
        let other = match other {
            Some(other) => other(&mut model),
            None => model.input_outlets().expect("inputs")[0],
        };
        let inputs = if swapped { [other, conv] } else { [conv, other] };
        let y = model.wire_node("residual", math::add(), &inputs).expect("add")[0];
        let outputs = if also_out { vec![y, conv] } else { vec![y] };
        model.select_output_outlets(&outputs).expect("outputs");
        model
    }

    /// A residual addition after the convolution (an `Add` of its output and the image, in
    /// either order: MobileNetV2's form) folds into it: no binary op is left, and the output
    /// is the oracle's plus the image, on one thread and on two (with the `threads` feature).
    /// 3×3 at stride 1 with as
    /// many channels out as in: on 7 × 7 and 9 × 9 as `run_small` (where it runs; one block
    /// of channels and two, each image's residual its own), on 60 × 60 on the layout's path,
    /// then added as a pass of its own.
    #[test]
    fn fuses_a_following_residual() {
        #[cfg(feature = "threads")]
        let two = {
            use tract_linalg::multithread::{Executor, multithread_tract_scope};
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
            let executor = Executor::MultiThread(std::sync::Arc::new(pool));
            move |run: &dyn Fn() -> Vec<f32>| multithread_tract_scope(executor.clone(), run)
        };
        #[cfg(not(feature = "threads"))]
        let two = |run: &dyn Fn() -> Vec<f32>| run();
        for (n, c, hw) in [(1, 32, 7), (2, 40, 9), (2, 8, 60)] {
            let case = case(n, c, c, [hw, hw], [3, 3], [1, 1], [1, 1], [1, 1], true);
            let (x, _, _) = case.data();
            let want: Vec<f64> =
                case.oracle().iter().zip(&x).map(|(&o, &x)| o + f64::from(x)).collect();
            for swapped in [false, true] {
                let what = format!("{n} × {c} channels on {hw}, swapped {swapped}");
                let mut model = with_residual(&case, swapped, false, None);
                substitute(&mut model).expect("substitute");
                assert_eq!(fuse_residuals(&mut model).expect("fuse"), 1, "{what}");
                assert!(!model.nodes().iter().any(|n| n.op_is::<TypedBinOp>()), "{what}");
                let op = model.nodes().iter().find_map(|n| n.op_as::<DirectConv>()).expect("op");
                // The plan form reads it back, residual and all.
                assert!(op.residual, "{what}");
                assert_eq!(DirectConv::from_words(&op.to_words()).as_ref(), Some(op), "{what}");
                assert_close(&what, &case.run(model.clone()), &want);
                let got = two(&|| case.run(model.clone()));
                assert_close(&format!("{what}, two threads"), &got, &want);
            }
        }
    }

    /// Nothing is folded where the convolution's output is used elsewhere too (a model
    /// output), where the other term is a constant, or where it broadcasts (one value a
    /// channel).
    #[test]
    fn leaves_a_residual_it_cannot_fold() {
        let case = case(1, 8, 8, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1], true);
        let konst = |model: &mut TypedModel| {
            let v = tensor1(&[0.5f32; 8 * 81]).into_shape(&[1, 8, 9, 9]).expect("shape");
            model.add_const("other", v).expect("const")
        };
        let per_channel = |model: &mut TypedModel| {
            model.add_source("other", f32::fact([1, 8, 1, 1])).expect("source")
        };
        type Other<'a> = Option<&'a dyn Fn(&mut TypedModel) -> OutletId>;
        let others: [(&str, bool, Other); 3] = [
            ("a model output", true, None),
            ("a constant", false, Some(&konst)),
            ("one per channel", false, Some(&per_channel)),
        ];
        for (what, also_out, other) in others {
            let mut model = with_residual(&case, false, also_out, other);
            substitute(&mut model).expect("substitute");
            assert_eq!(fuse_residuals(&mut model).expect("fuse"), 0, "{what}");
        }
    }

    /// `run_small` reading its planes in place (MobileNetV2's projections on 14 × 14 and
    /// 7 × 7) adds each image's residual to the right planes: 64 → 40 channels (a whole block
    /// and a partial one) on two images, one thread and two (with the `threads` feature),
    /// against the definition.
    #[test]
    fn small_planes_add_their_residual() {
        let (n, c, m, hw) = (2, 64, 40, [14, 14]);
        let op = plain_1x1(c, m, hw, Clamp::new(-0.5, 0.5));
        let positions = hw[0] * hw[1];
        let x: Vec<f32> = (0..n * c * positions).map(|i| value(i, 31)).collect();
        let kernel: Vec<f32> = (0..m * c).map(|i| value(i, 32)).collect();
        let bias: Vec<f32> = (0..m).map(|i| value(i, 33)).collect();
        let residual: Vec<f32> = (0..n * m * positions).map(|i| value(i, 34)).collect();
        let mut want = vec![0f64; n * m * positions];
        for (j, w) in want.iter_mut().enumerate() {
            let (image, o, p) = (j / (m * positions), j / positions % m, j % positions);
            let sum: f64 = (0..c)
                .map(|k| {
                    let v = x[(image * c + k) * positions + p];
                    f64::from(kernel[o * c + k]) * f64::from(v)
                })
                .sum();
            *w = (sum + f64::from(bias[o])).clamp(-0.5, 0.5) + f64::from(residual[j]);
        }
        let packed = op.pack(&kernel);
        let weights = packed.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32");
        let run = || {
            let pieces = [&x[..]];
            let input = Input { pieces: &pieces, images: n, plane: positions };
            let mut out = vec![f32::NAN; n * m * positions];
            op.run(input, weights, &bias, None, Some(&residual), &mut out).expect("run");
            out
        };
        assert_close("one thread", &run(), &want);
        #[cfg(feature = "threads")]
        {
            use tract_linalg::multithread::{Executor, multithread_tract_scope};
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
            let executor = Executor::MultiThread(std::sync::Arc::new(pool));
            assert_close("two threads", &multithread_tract_scope(executor, run), &want);
        }
    }

    /// Every block this target and CPU can run, the portable one (what CPUs without AVX2 run)
    /// included: [`every_block_matches_the_definition`] runs each on its own, while the other
    /// tests run whichever [`DirectConv::run_tiles`] picks.
    /// With the panel width each runs (the portable block at every width a target picks).
    fn kernels() -> Vec<(&'static str, Kernel, usize)> {
        #[allow(unused_mut)]
        let mut kernels: Vec<(&str, Kernel, usize)> =
            [4, 6, 8].into_iter().map(|nr| ("portable", tiles_portable as Kernel, nr)).collect();
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        kernels.push(("wasm", tiles_wasm, NR));
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                // SAFETY: the CPU has AVX2 and FMA.
                kernels.push(("avx2", |i, w, l, s| unsafe { tiles_avx2::<NR>(i, w, l, s) }, NR));
                kernels.push((
                    "avx2",
                    |i, w, l, s| unsafe { tiles_avx2::<NR_NARROW>(i, w, l, s) },
                    NR_NARROW,
                ));
            }
            if avx512() {
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
                let avx512: Kernel = |i, w, l, s| unsafe { tiles_avx512(i, w, l, s) };
                kernels.push(("avx512", avx512, NR_AVX512));
            }
        }
        kernels
    }

    type Kernel = fn(&[f32], &[f32], &Layout, &mut Sums);

    /// Each block of [`kernels`], the sums of [`tiles`] through it copied out, against the
    /// definition, with the blocks' buffer laid out by block and by panel.
    #[test]
    fn every_block_matches_the_definition() {
        for (name, kernel, nr) in kernels() {
            for by_panel in [false, true] {
                check_blocks(&format!("{name} ×{nr}"), kernel, nr, by_panel);
            }
        }
    }

    /// [`cases`] and two 1×1 ones (the packed layout; sums longer than a step, positions not a
    /// multiple of a block), each with its operator.
    fn cases_with_ops() -> Vec<(Case, DirectConv)> {
        let mut all: Vec<(Case, DirectConv)> = cases()
            .into_iter()
            .map(|case| {
                let mut model = case.model();
                substitute(&mut model).expect("substitute");
                let op = model.nodes().iter().find_map(|n| n.op_as::<DirectConv>());
                let op = op.expect("op").clone();
                (case, op)
            })
            .collect();
        for (c, m, hw) in [(600, 13, [9, 11]), (24, 32, [16, 16])] {
            let case = case(2, c, m, hw, [1, 1], [1, 1], [0, 0], [0, 0], true);
            let op = plain_1x1(c, m, hw, Clamp::NONE);
            assert!(op.layout().packed);
            all.push((case, op));
        }
        all
    }

    /// A 1×1 convolution of `c` → `m` channels on `hw` images, nothing before it, `clamp`
    /// after.
    fn plain_1x1(c: usize, m: usize, hw: [usize; 2], clamp: Clamp) -> DirectConv {
        DirectConv {
            input_channels: c,
            output_channels: m,
            input_hw: hw,
            output_hw: hw,
            kernel_hw: [1, 1],
            strides: [1, 1],
            pad_before: [0, 0],
            prologue: false,
            pooled: false,
            clamp,
            residual: false,
            layout: LayoutCell::default(),
        }
    }

    fn check_blocks(name: &str, run: Kernel, nr: usize, by_panel: bool) {
        for (i, (case, op)) in cases_with_ops().iter().enumerate() {
            let (input, kernel, bias) = case.data();
            let mut layout = op.layout_for(nr);
            layout.by_panel = by_panel;
            let mut image = vec![f32::NAN; layout.scratch];
            let mut weights = vec![f32::NAN; layout.channels * layout.offsets.len()];
            let mut blocks = vec![f32::NAN; layout.tiles * layout.channels * TILE];
            op.pack_weights(&kernel, &mut weights, &layout);
            let [oh, ow] = case.out();
            let per_image = case.m * oh * ow;
            let mut out = vec![f32::NAN; case.n * per_image];
            let image_in = case.c * case.hw[0] * case.hw[1];
            let mut direct = out.clone();
            // Into the planes where `run` does so: summed in one pass, or packed (whose
            // planes also take a pass's partial sums).
            let into_planes = layout.packed || layout.offsets.len() <= layout.k_step;
            let chunks = input.chunks_exact(image_in).zip(out.chunks_exact_mut(per_image));
            for ((src, dst), planes) in chunks.zip(direct.chunks_exact_mut(per_image)) {
                let src: Vec<&[f32]> = src.chunks_exact(case.hw[0] * case.hw[1]).collect();
                op.pad_image(&src, &mut image, &mut Vec::new(), &layout, None).expect("pad");
                run(&image, &weights, &layout, &mut Sums::blocks(&layout, 0, &mut blocks));
                op.unpack(&blocks, &bias, &layout, 0, dst);
                // The row-by-row copy out (CPUs without AVX-512) writes the same values.
                let mut rows = vec![f32::NAN; dst.len()];
                op.unpack_rows(&blocks, &bias, &layout, 0, &mut rows);
                assert_eq!(rows, dst, "case {i}, {name}: unpacked by rows");
                if into_planes {
                    // Straight into the planes, in two chunks of units as two threads would.
                    let units = if by_panel { layout.channels / nr } else { layout.tiles };
                    let planes = Planes::new(op, planes, &bias);
                    for range in [0..units / 2, units / 2..units] {
                        run(&image, &weights, &layout, &mut Sums::planes(planes, &layout, range));
                    }
                }
            }
            let what = format!("case {i}, {name}, by panel {by_panel}");
            assert_close(&what, &out, &case.oracle());
            if into_planes {
                assert_close(&format!("{what}, into the planes"), &direct, &case.oracle());
            }
        }
    }

    /// Every layout reads an image given in pieces (as [`read_concats`] wires them, or
    /// anything else): the channels cut in two, or in one piece per channel, batches
    /// included.
    #[test]
    fn reads_its_image_in_pieces() {
        for (i, (case, op)) in cases_with_ops().into_iter().enumerate() {
            let (input, kernel, bias) = case.data();
            let [h, w] = case.hw;
            for cuts in [vec![case.c / 2, case.c - case.c / 2], vec![1; case.c]] {
                let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 0).collect();
                let mut model = TypedModel::default();
                let mut wires = tvec!();
                let mut values = tvec!();
                let mut first = 0;
                for (j, &c) in cuts.iter().enumerate() {
                    let fact = f32::fact([case.n, c, h, w]);
                    wires.push(model.add_source(format!("x{j}"), fact).expect("source"));
                    let piece: Vec<f32> = (0..case.n)
                        .flat_map(|n| {
                            let at = (n * case.c + first) * h * w;
                            input[at..at + c * h * w].iter().copied()
                        })
                        .collect();
                    let piece = tensor1(&piece).into_shape(&[case.n, c, h, w]).expect("piece");
                    values.push(piece.into_tvalue());
                    first += c;
                }
                wires.push(model.add_const("k", op.pack(&kernel)).expect("kernel"));
                wires.push(model.add_const("b", tensor1(&bias)).expect("bias"));
                let y = model.wire_node("conv", op.clone(), &wires).expect("conv");
                model.select_output_outlets(&y).expect("outputs");
                let plan = model.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
                let out = plan.run(values).expect("run");
                let got = out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32");
                let what = format!("case {i}, pieces of {cuts:?}");
                assert_close(&what, got, &case.oracle());
            }
        }
    }

    /// A dense block as DenseNet-121's (each layer's batch normalisation, ReLU and 1×1
    /// convolution on the concatenation of all before it) and a transition after it, on
    /// planes of 81 positions (packed) and 49 (small planes where AVX-512 runs them), two
    /// images: after [`read_concats`], the 1×1 convolutions read the pieces, the one
    /// concatenation left is the block's last (an output of the graph), and the outputs are
    /// tract's.
    #[test]
    fn dense_blocks_read_the_pieces() {
        use tract_onnx::tract_core::ops::math;
        for hw in [9, 7] {
            let build = || -> TractResult<TypedModel> {
                let mut m = TypedModel::default();
                let mut f = m.add_source("x", f32::fact([2, 8, hw, hw]))?;
                let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
                let mut salt = 20;
                let mut konst = |m: &mut TypedModel, name: &str, shape: &[usize]| {
                    salt += 1;
                    let n = shape.iter().product();
                    let v: Vec<f32> = (0..n).map(|i| value(i, salt)).collect();
                    m.add_const(name, tensor1(&v).into_shape(shape)?)
                };
                let mut c = 8;
                let mut layer =
                    |m: &mut TypedModel, f: OutletId, c: usize, o: usize, name: &str| {
                        let sc = konst(m, &format!("{name}.scale"), &[1, c, 1, 1])?;
                        let sh = konst(m, &format!("{name}.shift"), &[1, c, 1, 1])?;
                        let y = m.wire_node(format!("{name}.mul"), math::mul(), &[f, sc])?[0];
                        let y = m.wire_node(format!("{name}.add"), math::add(), &[y, sh])?[0];
                        let y = m.wire_node(format!("{name}.relu"), math::max(), &[y, zero])?[0];
                        let k = konst(m, &format!("{name}.w"), &[o, c])?;
                        let einsum = EinSum::new("NIHW,OI->NOHW".parse()?, f32::datum_type());
                        let y = m.wire_node(format!("{name}.conv"), einsum, &[y, k])?[0];
                        let b = konst(m, &format!("{name}.b"), &[1, o, 1, 1])?;
                        TractResult::Ok(
                            m.wire_node(format!("{name}.bias"), math::add(), &[y, b])?[0],
                        )
                    };
                for j in 0..4 {
                    let y = layer(&mut m, f, c, 5, &format!("layer{j}"))?;
                    f = m.wire_node(
                        format!("concat{j}"),
                        tract_onnx::tract_core::ops::array::TypedConcat::new(1),
                        &[f, y],
                    )?[0];
                    c += 5;
                }
                let y = layer(&mut m, f, c, 6, "transition")?;
                let spec = PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: [2, 2].into_iter().collect(),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: Some([2, 2].into_iter().collect()),
                    input_channels: 6,
                    output_channels: 6,
                };
                let y = m.wire_node("pool", SumPool::new(spec, false, true), &[y])?[0];
                m.select_output_outlets(&[y, f])?;
                Ok(m)
            };
            let x: Vec<f32> = (0..2 * 8 * hw * hw).map(|i| value(i, 19)).collect();
            let run = |m: TypedModel| -> Vec<Vec<f32>> {
                let input = tensor1(&x).into_shape(&[2, 8, hw, hw]).expect("input");
                let plan = m.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
                let out = plan.run(tvec!(input.into_tvalue())).expect("run");
                out.iter()
                    .map(|t| {
                        t.try_as_plain_ram()
                            .and_then(|v| v.as_slice::<f32>())
                            .expect("f32")
                            .to_vec()
                    })
                    .collect()
            };
            let want = run(build().expect("graph"));
            let mut ours = build().expect("graph");
            assert_eq!(crate::concat::substitute(&mut ours).expect("concat"), 4);
            assert_eq!(substitute_pointwise(&mut ours, false).expect("substitute"), 5);
            fuse_clamps(&mut ours).expect("fuse");
            // Three concatenations flattened, four convolutions rewired (the first layer's
            // reads the source).
            assert_eq!(read_concats(&mut ours).expect("read"), 7, "{hw}");
            let concats = ours.nodes().iter().filter(|n| n.op_is::<Concat>()).collect::<Vec<_>>();
            assert_eq!(concats.len(), 1, "{hw}: one concatenation left");
            assert_eq!(concats[0].inputs.len(), 5, "{hw}: the source and four layers");
            let pieces: Vec<usize> = ours
                .nodes()
                .iter()
                .filter(|n| n.op_is::<DirectConv>())
                .map(|n| n.inputs.len() - 4)
                .collect();
            assert_eq!(pieces, [1, 2, 3, 4, 5], "{hw}: pieces per convolution");
            let got = run(ours);
            for (o, (got, want)) in got.iter().zip(&want).enumerate() {
                let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                assert_close(&format!("{hw}, output {o}"), got, &want);
            }
        }
    }

    /// Blocks split across tract's executor: each chunk's first block starts at its own
    /// position.
    #[cfg(feature = "threads")]
    #[test]
    fn blocks_split_across_threads() {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        // 2 images of 32 → 32 (by panels: 6 of them) and 32 → 6 channels (by blocks: one
        // panel; each thread's rows padded on their own) on 57 × 57 (more positions than
        // `SMALL_KXK`): above tract's threshold for sharing. 64 → 6: the same, its sums in
        // more than one pass (through the blocks' buffer). Then 32 → 40 on 28 × 28 as
        // `run_small` (where it runs): two blocks of channels, their groups of positions in
        // one run per thread. Then 32 → 20 on 7 × 7 and 13 × 13: one block, each thread's
        // positions padded on their own. Under test each unit's scratch is NaN until it pads
        // its part (`poison`), so that a row padded nowhere shows, whichever thread ran it.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let executor = Executor::MultiThread(std::sync::Arc::new(pool));
        let cases =
            [(32, 32, 57), (32, 6, 57), (64, 6, 57), (32, 40, 28), (32, 20, 7), (32, 20, 13)];
        for (c, m, hw) in cases {
            let case = case(2, c, m, [hw, hw], [3, 3], [1, 1], [1, 1], [1, 1], true);
            let mut model = case.model();
            substitute(&mut model).expect("substitute");
            let executor = executor.clone();
            let got = multithread_tract_scope(executor, || case.run(model));
            assert_close(&format!("two threads, {m} outputs on {hw}"), &got, &case.oracle());
        }
        // A packed 1×1 with its prologue: shared by blocks, each thread packing its own.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let executor = Executor::MultiThread(std::sync::Arc::new(pool));
        multithread_tract_scope(executor, || {
            let case = pointwise(96, 128, [28, 28]);
            check_pointwise("two threads, 1×1", Pointwise { epilogue: true, ..case });
            check_pointwise("two threads, pooled", Pointwise { pool: true, ..case });
            // In place, shared by blocks (one panel) and by panels, with a last block packed
            // alone; widening to a multiple of 32 channels, in panels of 32 with AVX2
            // (`wide_panels`).
            let plain =
                |c, o| Pointwise { prologue: false, epilogue: true, ..pointwise(c, o, [27, 29]) };
            check_pointwise("two threads, in place by blocks", plain(96, 8));
            check_pointwise("two threads, in place by panels", plain(96, 120));
            check_pointwise("two threads, in place, wide panels", plain(96, 128));
            let small = Pointwise { prologue: false, epilogue: true, ..pointwise(96, 200, [7, 7]) };
            check_pointwise("two threads, small planes", small);
            // Through the prologue: each thread copies its own positions (NaN under test
            // until it does), then runs every block of channels over them.
            let prologue = Pointwise { epilogue: true, ..pointwise(96, 200, [7, 7]) };
            check_pointwise("two threads, small planes through the prologue", prologue);
            let narrowing = Pointwise { epilogue: true, ..pointwise(160, 40, [13, 13]) };
            check_pointwise("two threads, narrowing on small planes", narrowing);
            // Read in place (as `run_small` with AVX2 too): the units share (block of
            // channels, group of positions) items, two blocks of channels here.
            let in_place = Pointwise { prologue: false, ..narrowing };
            check_pointwise("two threads, narrowing in place on small planes", in_place);
        });
    }

    /// One case of [`pointwise_matches_the_definition`]: `c` → `o` channels on images of `hw`;
    /// `prologue`: DenseNet's batch normalisation and ReLU before (a single scale for every
    /// channel where `shared_scale`); `epilogue`: a bias after, and ReLU last; `pool`: a 2×2
    /// average pooling after the bias.
    #[derive(Clone, Copy, Debug)]
    struct Pointwise {
        c: usize,
        o: usize,
        hw: [usize; 2],
        prologue: bool,
        shared_scale: bool,
        epilogue: bool,
        pool: bool,
    }

    /// A case with the prologue, without a shared scale, epilogue or pooling.
    fn pointwise(c: usize, o: usize, hw: [usize; 2]) -> Pointwise {
        Pointwise { c, o, hw, prologue: true, shared_scale: false, epilogue: false, pool: false }
    }

    /// 1×1 convolutions as tract declutters them — DenseNet's pre-activation (`Mul`, `Add`,
    /// `Max` with zero) or nothing before the `EinSum`, then the bias `Add`, a 2×2 average
    /// pooling, the ReLU `Max`, where the case has them — against an f64 oracle, through
    /// tract's plan with and without [`substitute_pointwise`] (and [`fuse_clamps`]): positions
    /// not a multiple of a block, a shared scale, 1, 2 and many panels, odd sizes pooled.
    #[test]
    fn pointwise_matches_the_definition() {
        let epilogue = |p: Pointwise| Pointwise { epilogue: true, ..p };
        let shared = |p: Pointwise| Pointwise { shared_scale: true, ..p };
        let pooled = |p: Pointwise| Pointwise { pool: true, ..p };
        let plain = |p: Pointwise| Pointwise { prologue: false, ..p };
        for (i, case) in [
            epilogue(pointwise(8, 12, [7, 9])),
            epilogue(pointwise(600, 32, [14, 14])),
            shared(pointwise(5, 2, [3, 11])),
            pointwise(16, 64, [8, 8]),
            // DenseNet's transitions (odd sizes: floor mode).
            pooled(pointwise(256, 128, [8, 8])),
            epilogue(pooled(pointwise(12, 7, [7, 9]))),
            shared(pooled(pointwise(6, 13, [37, 6]))),
            // MobileNetV2's: nothing before, on 4 blocks of positions and more.
            // They read the image in place: whole blocks and a last one packed alone (of one
            // position, of 12), whole blocks only.
            epilogue(plain(pointwise(16, 96, [9, 9]))),
            plain(pointwise(144, 24, [12, 13])),
            epilogue(plain(pointwise(32, 16, [8, 8]))),
            plain(pointwise(7, 9, [5, 13])),
            // Larger than an L2 (`PREFETCH_BYTES`): prefetched a group ahead, past the image's
            // end too.
            epilogue(plain(pointwise(96, 24, [41, 40]))),
            // Summed in two passes, the partial sums through the output planes.
            epilogue(plain(pointwise(600, 20, [9, 9]))),
            // Packed through the prologue or pooled, and summed in two passes (more steps
            // than `K_STEP_PACKED`), the partial sums through the blocks' buffer.
            epilogue(pointwise(1100, 20, [9, 9])),
            pooled(pointwise(1100, 14, [6, 7])),
            // Small planes (`run_small` where AVX-512 runs it): 7 × 7 with a last partial
            // block of channels, 5 × 5 with a last partial group of positions, with the
            // prologue.
            epilogue(plain(pointwise(160, 40, [7, 7]))),
            plain(pointwise(33, 70, [5, 5])),
            epilogue(pointwise(96, 64, [7, 7])),
            // Narrowing on planes under 256 positions (`run_small` too): 3 blocks of channels,
            // each in two parts of positions; widening there (not small), for contrast.
            epilogue(plain(pointwise(120, 96, [14, 14]))),
            plain(pointwise(24, 70, [14, 14])),
        ]
        .into_iter()
        .enumerate()
        {
            check_pointwise(&format!("case {i}, {case:?}"), case);
        }
    }

    /// One case of [`pointwise_matches_the_definition`].
    fn check_pointwise(name: &str, case: Pointwise) {
        use tract_onnx::tract_core::ops::math;
        let Pointwise { c, o, hw: [h, w], prologue, shared_scale, epilogue, pool } = case;
        let x: Vec<f32> = (0..c * h * w).map(|i| value(i, 11)).collect();
        let scale: Vec<f32> = (0..if shared_scale { 1 } else { c }).map(|i| value(i, 12)).collect();
        let shift: Vec<f32> = (0..c).map(|i| value(i, 13)).collect();
        let weights: Vec<f32> = (0..o * c).map(|i| value(i, 14)).collect();
        let bias: Vec<f32> = (0..o).map(|i| value(i, 15)).collect();
        let mut full = vec![0f64; o * h * w];
        for (j, out) in full.iter_mut().enumerate() {
            let (oc, p) = (j / (h * w), j % (h * w));
            let mut sum = 0f64;
            for ci in 0..c {
                let mut v = f64::from(x[ci * h * w + p]);
                if prologue {
                    let a = f64::from(scale[if shared_scale { 0 } else { ci }]);
                    v = (v * a + f64::from(shift[ci])).max(0.0);
                }
                sum += v * f64::from(weights[oc * c + ci]);
            }
            *out = if epilogue { sum + f64::from(bias[oc]) } else { sum };
        }
        let [oh, ow] = if pool { [h / 2, w / 2] } else { [h, w] };
        let mut want = vec![0f64; o * oh * ow];
        for (j, out) in want.iter_mut().enumerate() {
            let (oc, y, x) = (j / (oh * ow), j / ow % oh, j % ow);
            let at = |y: usize, x: usize| full[(oc * h + y) * w + x];
            *out = if pool {
                (at(2 * y, 2 * x)
                    + at(2 * y, 2 * x + 1)
                    + at(2 * y + 1, 2 * x)
                    + at(2 * y + 1, 2 * x + 1))
                    / 4.0
            } else {
                at(y, x)
            };
            if epilogue {
                *out = out.max(0.0);
            }
        }
        let build = || -> TractResult<TypedModel> {
            let mut m = TypedModel::default();
            let input = m.add_source("x", f32::fact([1, c, h, w]))?;
            let per = |m: &mut TypedModel, name: &str, v: &[f32]| {
                m.add_const(name, tensor1(v).into_shape(&[1, v.len(), 1, 1])?)
            };
            let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
            let mut y = input;
            if prologue {
                let sc = per(&mut m, "scale", &scale)?;
                let sh = per(&mut m, "shift", &shift)?;
                y = m.wire_node("bn.mul", math::mul(), &[y, sc])?[0];
                y = m.wire_node("bn.add", math::add(), &[y, sh])?[0];
                y = m.wire_node("relu", math::max(), &[y, zero])?[0];
            }
            let k = m.add_const("w", tensor1(&weights).into_shape(&[o, c])?)?;
            let einsum = EinSum::new("NIHW,OI->NOHW".parse()?, f32::datum_type());
            let mut y = m.wire_node("conv", einsum, &[y, k])?[0];
            if epilogue {
                let b = per(&mut m, "bias", &bias)?;
                y = m.wire_node("bias_add", math::add(), &[y, b])?[0];
            }
            if pool {
                let spec = PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: [2, 2].into_iter().collect(),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: Some([2, 2].into_iter().collect()),
                    input_channels: o,
                    output_channels: o,
                };
                y = m.wire_node("pool", SumPool::new(spec, false, true), &[y])?[0];
            }
            if epilogue {
                y = m.wire_node("relu2", math::max(), &[y, zero])?[0];
            }
            m.select_output_outlets(&[y])?;
            Ok(m)
        };
        let run = |m: TypedModel| -> Vec<f32> {
            let input = tensor1(&x).into_shape(&[1, c, h, w]).expect("input");
            let plan = m.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
            let out = plan.run(tvec!(input.into_tvalue())).expect("run");
            out[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec()
        };
        let tract = build().expect("graph");
        assert_close(&format!("{name}, tract"), &run(tract), &want);
        let mut ours = build().expect("graph");
        let mut pooled_only = build().expect("graph");
        let replaced = substitute_pointwise(&mut pooled_only, true).expect("substitute");
        assert_eq!(replaced, usize::from(pool), "{name}, pooled only");
        // Without a prologue, small images are left to tract where `run_small` does not run
        // (wasm, CPUs without AVX-512): tract's answer above is then the one that counts.
        let covered = prologue || h * w >= 4 * TILE || small_planes();
        let replaced = substitute_pointwise(&mut ours, false).expect("substitute");
        assert_eq!(replaced, usize::from(covered), "{name}");
        if !covered {
            return;
        }
        fuse_clamps(&mut ours).expect("fuse");
        let op = ours.nodes().iter().find_map(|n| n.op_as::<DirectConv>()).expect("op");
        let relu = if epilogue { Clamp::new(0.0, f32::INFINITY) } else { Clamp::NONE };
        assert!(op.prologue == prologue && op.clamp == relu && op.pooled == pool, "{name}: {op:?}");
        // The plan form reads back what it wrote (odd pooled sizes included).
        assert_eq!(DirectConv::from_words(&op.to_words()).as_ref(), Some(op), "{name}: words");
        assert_eq!(op.to_words().len(), DirectConv::WORDS);
        // Only the source, the operator and its constants are left.
        assert!(
            !ours.nodes().iter().any(|n| {
                n.op_is::<EinSum>() || n.op_is::<TypedBinOp>() || n.op_is::<SumPool>()
            })
        );
        assert_close(&format!("{name}, medinfer"), &run(ours), &want);
    }

    /// The prologue only where every link is used by the next alone: with a second use of
    /// the ReLU, the convolution alone is replaced, on an image of 4 blocks of positions and
    /// more (8 × 8: 64, 32 on wasm); below that (5 × 5), it is left to tract, unless small
    /// planes run as [`DirectConv::run_small`].
    #[test]
    fn pointwise_leaves_a_shared_prologue() {
        use tract_onnx::tract_core::ops::math;
        let build = |hw: usize| -> TractResult<TypedModel> {
            let mut m = TypedModel::default();
            let input = m.add_source("x", f32::fact([1, 4, hw, hw]))?;
            let one = m.add_const("one", tensor1(&[1f32; 4]).into_shape(&[1, 4, 1, 1])?)?;
            let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
            let y = m.wire_node("bn.mul", math::mul(), &[input, one])?[0];
            let y = m.wire_node("bn.add", math::add(), &[y, one])?[0];
            let relu = m.wire_node("relu", math::max(), &[y, zero])?[0];
            let k = m.add_const("w", tensor1(&[0.5f32; 12]).into_shape(&[3, 4])?)?;
            let einsum = EinSum::new("NIHW,OI->NOHW".parse()?, f32::datum_type());
            let conv = m.wire_node("conv", einsum, &[relu, k])?[0];
            m.select_output_outlets(&[conv, relu])?;
            Ok(m)
        };
        // Where small planes run as `run_small` (AVX-512), replaced too, the prologue left.
        let mut small = build(5).expect("graph");
        let replaced = substitute_pointwise(&mut small, false).expect("substitute");
        assert_eq!(replaced, usize::from(small_planes()));
        let mut large = build(8).expect("graph");
        assert_eq!(substitute_pointwise(&mut large, false).expect("substitute"), 1);
        let op = large.nodes().iter().find_map(|n| n.op_as::<DirectConv>()).expect("op");
        assert!(!op.prologue);
        assert_eq!(large.nodes().iter().filter(|n| n.op_is::<TypedBinOp>()).count(), 3);
    }

    /// `run_small`'s AVX-512 or AVX2 block against the portable one, on every group of
    /// positions and a partial block of channels (both halves of one, and part of its first):
    /// a 1×1 kernel reading its planes, and a 3×3 one reading padded rows (`OW + 1` positions
    /// each); each with a residual added after the clamp and without. 333 and 261 taps: the
    /// AVX2 block's chunks of 144, a partial one last; 99 positions: two of its bands.
    #[test]
    fn small_blocks_agree() {
        for (c, m, hw) in [(37, 20, [5, 6]), (29, 12, [9, 11])] {
            small_blocks_agree_on(c, m, hw);
        }
    }

    fn small_blocks_agree_on(c: usize, m: usize, hw: [usize; 2]) {
        let three = DirectConv {
            kernel_hw: [3, 3],
            pad_before: [1, 1],
            ..plain_1x1(c, m, hw, Clamp::NONE)
        };
        for op in [plain_1x1(c, m, hw, Clamp::new(-0.5, 0.5)), three] {
            let positions = hw[0] * hw[1];
            let (steps, width) = op.small_steps();
            let taps = steps.len();
            let kernel: Vec<f32> = (0..m * taps).map(|i| value(i, 21) - 0.5).collect();
            let bias: Vec<f32> = (0..m).map(|i| value(i, 22) - 0.5).collect();
            let reach = small_reach(&steps, width, hw);
            let image: Vec<f32> = (0..reach).map(|i| value(i, 23) - 0.5).collect();
            let w = &op.pack_small(&kernel)[..taps * SMALL_M];
            let [lo, hi] = op.clamp.bounds();
            let mut want = vec![f32::NAN; m * positions];
            for (o, plane) in want.chunks_exact_mut(positions).enumerate() {
                for (p, d) in plane.iter_mut().enumerate() {
                    let at = p / hw[1] * width + p % hw[1];
                    let sum: f64 = (0..taps)
                        .map(|k| f64::from(kernel[o * taps + k]) * f64::from(image[steps[k] + at]))
                        .sum();
                    *d = Clamp::apply(lo, hi, (sum + f64::from(bias[o])) as f32);
                }
            }
            let residual: Vec<f32> = (0..m * positions).map(|i| value(i, 24) - 0.5).collect();
            let added: Vec<f64> =
                want.iter().zip(&residual).map(|(&w, &r)| f64::from(w + r)).collect();
            let want: Vec<f64> = want.into_iter().map(f64::from).collect();
            let small =
                Small { image: &image, steps: &steps, width, w, bias: &bias, residual: None };
            let with_residual = Small { residual: Some(&residual), ..small };
            let groups = positions.div_ceil(SMALL_P);
            // Whole, and in two parts of positions (a partial group last); without a residual
            // and with one.
            for (small, want, cuts) in [
                (small, &want, vec![0, groups]),
                (small, &want, vec![0, 2, groups]),
                (with_residual, &added, vec![0, groups]),
                (with_residual, &added, vec![0, 2, groups]),
            ] {
                let mut got = vec![f32::NAN; m * positions];
                let mut portable = vec![f32::NAN; m * positions];
                for cut in cuts.windows(2) {
                    let part = cut[0]..cut[1];
                    // SAFETY: `got` and `portable` hold `m` planes.
                    unsafe {
                        op.small_block(small, 0, got.as_mut_ptr(), m, part.clone());
                        op.small_block_portable(small, 0, portable.as_mut_ptr(), m, part);
                    }
                }
                let what = format!("small block, {:?}, {}", op.kernel_hw, small.residual.is_some());
                assert_close(&what, &got, want);
                assert_close(&format!("{what}, portable"), &portable, want);
            }
        }
    }

    /// What it leaves to tract: 1×1 kernels (a plain matrix product there), dilation, groups.
    #[test]
    fn leaves_what_it_does_not_cover() {
        let one = case(1, 4, 4, [6, 6], [1, 1], [1, 1], [0, 0], [0, 0], true);
        assert_eq!(substitute(&mut one.model()).expect("substitute"), 0);
        let base = &cases()[0];
        let mut dilated = base.model();
        let id = dilated.nodes().iter().position(|n| n.op_is::<Conv>()).expect("conv");
        dilated.node_mut(id).op_as_mut::<Conv>().expect("conv").pool_spec.dilations =
            Some([2, 2].into_iter().collect());
        assert_eq!(substitute(&mut dilated).expect("substitute"), 0);
        let mut grouped = base.model();
        grouped.node_mut(id).op_as_mut::<Conv>().expect("conv").group = 2;
        assert_eq!(substitute(&mut grouped).expect("substitute"), 0);
    }
}
