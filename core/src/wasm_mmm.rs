//! A matrix-product kernel for tract on wasm32 SIMD whose working set fits 16 vector registers:
//! the Spin component (wasip2, which wasmtime compiles with Cranelift) and both browser builds
//! (V8) run their f32 products on it.
//!
//! tract's own wasm kernel for f32 products is an 8×8 tile: 16 `v128` accumulators, plus two
//! columns of B and a broadcast of A every step. Cranelift maps `v128` onto x86's 16 XMM
//! registers and cannot hold that: it spilled and reloaded a dozen accumulators on every step
//! of the inner loop (the machine code, read from a running instance), and that kernel was 75 %
//! of a DenseNet-121 run in the Spin component. This one sums in 4×8 register tiles: 8
//! accumulators, A's four rows broadcast (by shuffles under Cranelift, by splat loads in V8:
//! `broadcast_rows`), two vectors of B, and nothing leaves the registers inside the loop.
//! Measured in the Spin component (BENCHMARKS.md): DenseNet-121's model run 25 % shorter,
//! MobileNetV2's unchanged. In Chromium it also beat tract's kernel, on both builds and both
//! models (BENCHMARKS.md), fused multiply-add included there.
//!
//! tract sees a 16×8 tile, which the kernel runs as four 4×8 register tiles one after the
//! other (each over the whole sum, the B panel read from L1 again). tract's work per tile —
//! the fused operations' pointers set up, a call through its kernel table — cost about 100
//! cycles in V8, a third of the time of a 4×8 tile summing 16 steps (MobileNetV2's widest
//! expansion, profiled), and 3.6 of the 27 ms of MobileNetV2's run in Chromium; a quarter as
//! many tiles pay it a quarter as often. MobileNetV2's 19 shapes of 1×1 product, through tract's plan in
//! Chromium (best of 7): 24.5 → 22.3 ms channels-first, 22.4 → 19.3 ms channels-last; in the
//! Spin component the model run 31.6–32.5 → 28.2 ms (best of 30). 8 rows gained less, 24 and
//! 32 no more (BENCHMARKS.md).
//!
//! It joins tract's kernel pool through tract-linalg's registries (`inventory`): a
//! [`MmmRoutine`] makes it runnable, and an [`MmmTier`] above tract's own wasm tier prefers it
//! for every f32 product with more than one column (matrix-vector products keep tract's
//! kernels). The kernel implements every fused operation tract can hand a kernel, with tract's
//! semantics: for an operation with a value `m`, `ScalarSub` is `m - acc` and `ScalarSubF` is
//! `acc - m`, and the same for the per-row and per-column forms.
//!
//! `tests/wasm_kernel.rs` (run under wasmtime by `cargo xtask test`) holds it to a plain matrix
//! product on tile and border shapes, with fused bias and ReLU, and checks that tract picked
//! it; `tests/parity.rs` holds both bundled models to onnxruntime's outputs.
use std::arch::wasm32::*;

use tract_linalg::isa::{Arch, IsaSet};
use tract_linalg::mmm::{DynKernel, FusedKerSpec, MatMatMul, OutputStoreKer, Query, Suitable};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_linalg::pack::Packing;
use tract_onnx::prelude::DatumType;

/// Rows of the tile tract sees (A's panel width), run as `MR / ROWS` register tiles.
const MR: usize = 16;
/// Rows of one register tile: 4, so that its 8 accumulators, B's two vectors, a broadcast
/// and a product fit the 15 vector registers V8 allocates (16 under Cranelift).
const ROWS: usize = 4;
/// Columns of the tile (B's panel width): two `v128` per row.
const NR: usize = 8;
const _: () = assert!(ROWS == 4, "broadcast_rows's wasip2 form reads four rows as one vector");

/// The kernel's name in tract's pool (what its dispatch and debug output show).
pub const NAME: &str = "medinfer_wasm_f32_16x8";

/// `acc + a * b`. On wasip2 a multiplication and an addition, not relaxed SIMD's fused form,
/// even where the build has it: Cranelift lowers `f32x4.relaxed_madd` to a three-operand FMA
/// that overwrites a multiplicand, so every step copies the broadcast first and every iteration
/// moves the accumulators back into place, while a separate `mulps` and `addps` (two pipes each
/// on current x86 cores) keep each accumulator in its register. The browser's relaxed-SIMD
/// build fuses (V8 accumulates in place; faster in Chromium than the two operations, measured),
/// as tract's own kernel does there.
#[cfg(not(all(target_feature = "relaxed-simd", not(target_os = "wasi"))))]
#[inline(always)]
pub(crate) fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_add(acc, f32x4_mul(a, b))
}

#[cfg(all(target_feature = "relaxed-simd", not(target_os = "wasi")))]
#[inline(always)]
pub(crate) fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_relaxed_madd(a, b, acc)
}

/// A's four rows for one step (`a`, four f32), each broadcast to a vector. Under Cranelift
/// (wasip2) one load and four shuffles: with `v128.load32_splat`s instead, the loop took 9.0–9.5
/// cycles a step against 5.9–6.1 (a step of a 4 × 8 tile, 256–1024 steps from L1, measured on
/// Zen 4 under wasmtime 44). V8 (the browser builds) gives each shuffle a vector port that its
/// multiplications and additions also need, and loads a splat on a load port instead: 5.2
/// against 5.9 cycles a step there, measured the same way in Chromium.
///
/// # Safety
/// `a` points to four readable f32.
#[cfg(target_os = "wasi")]
#[inline(always)]
unsafe fn broadcast_rows(a: *const f32) -> [v128; ROWS] {
    // SAFETY: the caller's contract; wasm loads need no alignment.
    let a = unsafe { v128_load(a.cast()) };
    [
        i32x4_shuffle::<0, 0, 0, 0>(a, a),
        i32x4_shuffle::<1, 1, 1, 1>(a, a),
        i32x4_shuffle::<2, 2, 2, 2>(a, a),
        i32x4_shuffle::<3, 3, 3, 3>(a, a),
    ]
}

/// See the wasip2 form above.
///
/// # Safety
/// `a` points to four readable f32.
#[cfg(not(target_os = "wasi"))]
#[inline(always)]
unsafe fn broadcast_rows(a: *const f32) -> [v128; ROWS] {
    // SAFETY: the caller's contract.
    std::array::from_fn(|r| unsafe { v128_load32_splat(a.add(r).cast()) })
}

/// One register tile: row `r` is `lo[r]` (columns 0–3) and `hi[r]` (columns 4–7).
struct Tile {
    lo: [v128; ROWS],
    hi: [v128; ROWS],
}

impl Tile {
    #[inline(always)]
    fn zero() -> Tile {
        Tile { lo: [f32x4_splat(0.0); ROWS], hi: [f32x4_splat(0.0); ROWS] }
    }

    /// Every element becomes `f(m, element)`, `m` the same for the whole tile.
    #[inline(always)]
    fn each(&mut self, m: v128, f: impl Fn(v128, v128) -> v128) {
        for r in 0..ROWS {
            self.lo[r] = f(m, self.lo[r]);
            self.hi[r] = f(m, self.hi[r]);
        }
    }

    /// Row `r`'s elements become `f(rows[r], element)`.
    ///
    /// # Safety
    /// `rows` points to `ROWS` readable f32.
    #[inline(always)]
    unsafe fn per_row(&mut self, rows: *const f32, f: impl Fn(v128, v128) -> v128) {
        for r in 0..ROWS {
            // SAFETY: the caller's contract.
            let m = unsafe { v128_load32_splat(rows.add(r).cast()) };
            self.lo[r] = f(m, self.lo[r]);
            self.hi[r] = f(m, self.hi[r]);
        }
    }

    /// Column `c`'s elements become `f(cols[c], element)`.
    ///
    /// # Safety
    /// `cols` points to `NR` readable f32.
    #[inline(always)]
    unsafe fn per_col(&mut self, cols: *const f32, f: impl Fn(v128, v128) -> v128) {
        // SAFETY: the caller's contract; wasm loads need no alignment.
        let (lo, hi) = unsafe { (v128_load(cols.cast()), v128_load(cols.add(4).cast())) };
        for r in 0..ROWS {
            self.lo[r] = f(lo, self.lo[r]);
            self.hi[r] = f(hi, self.hi[r]);
        }
    }

    /// The f32 at row `r`, column `c` of a strided tile.
    ///
    /// # Safety
    /// The tile's pointer and strides address `ROWS × NR` readable f32.
    #[inline(always)]
    unsafe fn at(tile: &OutputStoreKer, r: usize, c: usize) -> *mut f32 {
        let offset = tile.row_byte_stride * r as isize + tile.col_byte_stride * c as isize;
        // SAFETY: the caller's contract.
        unsafe { tile.ptr.offset(offset).cast() }
    }

    /// # Safety
    /// As [`Tile::at`], and the tile holds f32 (`item_size` 4).
    unsafe fn add_unicast(&mut self, tile: &OutputStoreKer) {
        for r in 0..ROWS {
            // SAFETY: the caller's contract.
            let v = |c: usize| unsafe { *Self::at(tile, r, c) };
            self.lo[r] = f32x4_add(self.lo[r], f32x4(v(0), v(1), v(2), v(3)));
            self.hi[r] = f32x4_add(self.hi[r], f32x4(v(4), v(5), v(6), v(7)));
        }
    }

    /// # Safety
    /// As [`Tile::at`], writable, and the tile holds f32.
    unsafe fn store(&self, tile: &OutputStoreKer) {
        for r in 0..ROWS {
            // SAFETY: the caller's contract.
            unsafe {
                if tile.col_byte_stride == 4 {
                    // A row is contiguous: two vector stores.
                    let row = Self::at(tile, r, 0);
                    v128_store(row.cast(), self.lo[r]);
                    v128_store(row.add(4).cast(), self.hi[r]);
                } else {
                    let lanes = |v: v128| {
                        [
                            f32x4_extract_lane::<0>(v),
                            f32x4_extract_lane::<1>(v),
                            f32x4_extract_lane::<2>(v),
                            f32x4_extract_lane::<3>(v),
                        ]
                    };
                    for (c, x) in lanes(self.lo[r]).into_iter().chain(lanes(self.hi[r])).enumerate()
                    {
                        *Self::at(tile, r, c) = x;
                    }
                }
            }
        }
    }

    /// `C += A·B` over `k` steps of packed panels: A `[k][MR]` (this tile's `ROWS` of each
    /// step's `MR` from `a` on), B `[k][NR]`.
    ///
    /// # Safety
    /// The panels hold `k × MR` (from `a` on, less this tile's first row) and `k × NR` readable
    /// f32.
    #[inline(always)]
    unsafe fn add_mat_mul(&mut self, k: usize, a: *const f32, b: *const f32) {
        let mut lo = self.lo;
        let mut hi = self.hi;
        for i in 0..k {
            // SAFETY: the caller's contract; wasm loads need no alignment.
            unsafe {
                let rows = broadcast_rows(a.add(i * MR));
                let b = b.add(i * NR);
                let (b_lo, b_hi) = (v128_load(b.cast()), v128_load(b.add(4).cast()));
                for r in 0..ROWS {
                    lo[r] = madd(lo[r], rows[r], b_lo);
                    hi[r] = madd(hi[r], rows[r], b_hi);
                }
            }
        }
        self.lo = lo;
        self.hi = hi;
    }
}

/// The part of a tile tract handed over (`MR` rows) from row `r0` on.
#[inline(always)]
fn rows_of(tile: OutputStoreKer, r0: usize) -> OutputStoreKer {
    // SAFETY: a row of the tile tract handed over, so inside its allocation.
    OutputStoreKer { ptr: unsafe { tile.ptr.offset(tile.row_byte_stride * r0 as isize) }, ..tile }
}

fn sub_flipped(m: v128, v: v128) -> v128 {
    f32x4_sub(v, m)
}

/// tract's list of fused operations for one `MR × NR` tile: one pass per register tile
/// ([`kernel_rows`]), each summing its own rows in full and storing them. Returns 0, or 1 for an
/// operation this kernel has no form for (tract reports it as an error; none of them is
/// reachable for an f32 product: other operand types never reach an f32-only packing).
///
/// # Safety
/// The pointers in `ops` are what tract's scratch space prepared for this tile.
unsafe fn kernel(ops: &[FusedKerSpec<f32>]) -> isize {
    for r0 in (0..MR).step_by(ROWS) {
        let err = unsafe { kernel_rows(ops, r0) };
        if err != 0 {
            return err;
        }
    }
    0
}

/// [`kernel`] for rows `r0..r0 + ROWS` of the tile: every per-row pointer, A's panel and the
/// tiles loaded or stored start `r0` rows on.
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
unsafe fn kernel_rows(ops: &[FusedKerSpec<f32>], r0: usize) -> isize {
    let mut t = Tile::zero();
    for op in ops {
        // SAFETY: the operations' pointers are tract's, valid for one tile (the contract).
        unsafe {
            match *op {
                FusedKerSpec::Done => break,
                FusedKerSpec::Clear => t = Tile::zero(),
                FusedKerSpec::LoadTile(col_major, _) => {
                    // Element (r, c) at col_major[c * MR + r] (r counted from row 0).
                    let v = |r: usize, c: usize| *col_major.add(c * MR + r0 + r);
                    for r in 0..ROWS {
                        t.lo[r] = f32x4(v(r, 0), v(r, 1), v(r, 2), v(r, 3));
                        t.hi[r] = f32x4(v(r, 4), v(r, 5), v(r, 6), v(r, 7));
                    }
                }
                FusedKerSpec::ScalarMin(m) => t.each(f32x4_splat(m), |m, v| f32x4_min(m, v)),
                FusedKerSpec::ScalarMax(m) => t.each(f32x4_splat(m), |m, v| f32x4_max(m, v)),
                FusedKerSpec::ScalarAdd(m) => t.each(f32x4_splat(m), |m, v| f32x4_add(m, v)),
                FusedKerSpec::ScalarMul(m) => t.each(f32x4_splat(m), |m, v| f32x4_mul(m, v)),
                FusedKerSpec::ScalarSub(m) => t.each(f32x4_splat(m), |m, v| f32x4_sub(m, v)),
                FusedKerSpec::ScalarSubF(m) => t.each(f32x4_splat(m), sub_flipped),
                FusedKerSpec::LeakyRelu(alpha) => t.each(f32x4_splat(alpha), |alpha, v| {
                    v128_bitselect(v, f32x4_mul(alpha, v), f32x4_gt(v, f32x4_splat(0.0)))
                }),
                FusedKerSpec::PerRowMin(m) => t.per_row(m.add(r0), |m, v| f32x4_min(m, v)),
                FusedKerSpec::PerRowMax(m) => t.per_row(m.add(r0), |m, v| f32x4_max(m, v)),
                FusedKerSpec::PerRowAdd(m) => t.per_row(m.add(r0), |m, v| f32x4_add(m, v)),
                FusedKerSpec::PerRowMul(m) => t.per_row(m.add(r0), |m, v| f32x4_mul(m, v)),
                FusedKerSpec::PerRowSub(m) => t.per_row(m.add(r0), |m, v| f32x4_sub(m, v)),
                FusedKerSpec::PerRowSubF(m) => t.per_row(m.add(r0), sub_flipped),
                FusedKerSpec::PerColMin(m) => t.per_col(m, |m, v| f32x4_min(m, v)),
                FusedKerSpec::PerColMax(m) => t.per_col(m, |m, v| f32x4_max(m, v)),
                FusedKerSpec::PerColAdd(m) => t.per_col(m, |m, v| f32x4_add(m, v)),
                FusedKerSpec::PerColMul(m) => t.per_col(m, |m, v| f32x4_mul(m, v)),
                FusedKerSpec::PerColSub(m) => t.per_col(m, |m, v| f32x4_sub(m, v)),
                FusedKerSpec::PerColSubF(m) => t.per_col(m, sub_flipped),
                // Quantisation steps, as tract's f32 kernels read them: multiplications.
                FusedKerSpec::QScale(shift, policy, mult) => {
                    let scale = tract_linalg::Scaler::from_fuse_params(shift, policy, mult).scale;
                    t.each(f32x4_splat(scale), |m, v| f32x4_mul(m, v))
                }
                FusedKerSpec::RoundingShiftRight(shift, _) => {
                    t.each(f32x4_splat(2f32.powi(-(shift as i32))), |m, v| f32x4_mul(m, v))
                }
                FusedKerSpec::ShiftLeft(shift) => {
                    t.each(f32x4_splat(2f32.powi(shift as i32)), |m, v| f32x4_mul(m, v))
                }
                FusedKerSpec::AddUnicast(tile) if tile.item_size == 4 => {
                    t.add_unicast(&rows_of(tile, r0))
                }
                FusedKerSpec::AddRowColProducts(rows, cols) => {
                    let (lo, hi) = (v128_load(cols.cast()), v128_load(cols.add(4).cast()));
                    for r in 0..ROWS {
                        let s = v128_load32_splat(rows.add(r0 + r).cast());
                        t.lo[r] = madd(t.lo[r], s, lo);
                        t.hi[r] = madd(t.hi[r], s, hi);
                    }
                }
                FusedKerSpec::Store(tile) if tile.item_size == 4 => t.store(&rows_of(tile, r0)),
                FusedKerSpec::AddMatMul { k, pa, pb, packing: 0 } => {
                    t.add_mat_mul(k, pa.cast::<f32>().add(r0), pb.cast())
                }
                _ => return 1,
            }
        }
    }
    0
}

/// The kernel as tract's pool holds it: f32 panels of 16 and 8, f32 stores only.
pub fn make() -> Box<dyn MatMatMul> {
    let mut k = DynKernel::<MR, NR, f32>::new(
        NAME,
        kernel,
        f32::packing(MR).align(16),
        f32::packing(NR).align(16),
    );
    k.arch = Some(Arch::Wasm32Simd128);
    k.mmm()
}

/// Prefers this kernel for f32 products with more than one column; no opinion otherwise.
fn preferred(
    _isa: &IsaSet,
    accumulator: DatumType,
    query: &Query,
    _suitable: &[Suitable],
) -> Option<&'static str> {
    (accumulator == DatumType::F32 && query.n != Some(1)).then_some(NAME)
}

inventory::submit! { MmmRoutine { make } }

inventory::submit! {
    MmmTier {
        arch: Some(Arch::Wasm32Simd128),
        // Above tract's own wasm tier (1): asked first.
        precedence: 2,
        name: "medinfer-wasm",
        applies: |_| true,
        preferred,
    }
}

/// Whether tract's registries hold this kernel and its tier (`inventory` collects them when
/// the module starts).
pub fn registered() -> (bool, bool) {
    let routine = tract_linalg::mmm_routines::declared().any(|r| (r.make)().name() == NAME);
    let tier = tract_linalg::mmm_tiers::declared().any(|t| t.name == "medinfer-wasm");
    (routine, tier)
}
