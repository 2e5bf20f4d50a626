//! # medinfer-core
//!
//! The pure-Rust pipeline shared by every medinfer target (native CLI/server, the browser
//! bundle, the Spin component): input sniffing by magic bytes, the seed's validation rules,
//! PNG/JPEG/DICOM decoding (Modality LUT, VOI, MONOCHROME1, colour, multi-frame),
//! manifest-driven preprocessing and ONNX inference on tract.
//!
//! It does no I/O, reads no clock and has no target-specific code: callers hand it bytes and
//! a [`Timer`], and get [`Prediction`]s or an [`Error`] with a stable [`Error::code`].
//!
//! ```
//! use medinfer_core::{decode, DecodeOptions, Limits};
//! // A 64×64 gray PNG made on the spot.
//! let mut png = Vec::new();
//! image::ImageEncoder::write_image(
//!     image::codecs::png::PngEncoder::new(&mut png),
//!     &[128u8; 64 * 64], 64, 64, image::ExtendedColorType::L8,
//! ).unwrap();
//! let decoded = decode(&png, &Limits::default(), &DecodeOptions::default()).unwrap();
//! let pixels = decoded.image.display();
//! assert_eq!((pixels.width, pixels.channels), (64, 1));
//! assert!((pixels.data[0] - 128.0 / 255.0).abs() < 1e-6);
//! ```
#![deny(missing_docs)]

mod array;
mod concat;
mod conv;
pub mod deid;
mod depthwise;
pub mod dicom;
mod error;
mod fused;
mod manifest;
mod model;
mod pipeline;
mod pixels;
mod plan_form;
pub mod preprocess;
mod raster;
mod registry;
mod result;
mod sniff;
mod validate;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod wasm_mmm;

pub use array::ArrayInput;
pub use dicom::{DicomImage, DicomInfo, Frame, Voi, VoiFunction, Window};
pub use error::{Error, Result};
pub use manifest::{
    Activation, Dim, InputSpec, Layout, ModelManifest, ModelStatus, OutputSpec, Preprocess,
    ResizeMode,
};
pub use model::{Executor, LoadedModel, Prediction, Score, sha256_hex};
pub use pipeline::{
    DecodeOptions, Decoded, NoTimer, Timer, Timings, decode, decode_array, decode_keyed,
    infer_bytes, predict,
};
pub use pixels::{Image, Modality, Pixels};
pub use raster::decode_raster;
pub use registry::Registry;
pub use result::{InferenceResult, round_timings, uuid_v4};
pub use sniff::{Format, sniff};
pub use validate::{DType, Limits, validate_samples};

/// Re-exported so that leaves can name the image crate's types without a second version.
pub use image;

/// Maps `f` over `items` several at a time on the pool [`set_threads`] started, each call
/// single-threaded inside (tract's products included), and returns the results in the items'
/// order; a single item on the pool too when no other call is under way (tract splitting its
/// products across it), else on the calling thread; without a pool (one thread; the Spin
/// component), one by one on the calling thread.
///
/// A batch's images go through it (decode, preprocess, the model run): two images side by side
/// finish sooner than the same two one after the other, each split across both cores by tract
/// (DenseNet-121 on the 2-core VM: two single-threaded runs at once took 134–159 ms each,
/// against 118–129 ms for one run on two threads).
pub fn map_on_pool<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    match on_pool(items, &f) {
        Ok(out) => out,
        Err(items) => items.into_iter().map(f).collect(),
    }
}

/// [`map_on_pool`]'s parallel half: the items back when there is no pool to run them on.
///
/// A single item runs on a worker of the pool too (with the pool to itself, see below), with
/// a second worker kept looking for work until it is done ([`with_a_worker_spinning`]), so
/// that tract's products and medinfer's convolutions inside hand their halves over cheaply:
/// each split of a run (hundreds per image) otherwise woke the calling thread and a sleeping
/// worker. DenseNet-121 on two
/// threads, 2-core Zen 4 VM: 53.8 ms a run from the calling thread, 47.9 on a worker, 44.4
/// with the second one spinning (median of 5 rounds of 30 runs each).
#[cfg(feature = "threads")]
fn on_pool<T: Send, R: Send>(
    items: Vec<T>,
    f: &(impl Fn(T) -> R + Sync),
) -> std::result::Result<Vec<R>, Vec<T>> {
    use rayon::prelude::*;
    use tract_linalg::multithread::{Executor, current_tract_executor, multithread_tract_scope};
    let executor = current_tract_executor();
    // The pool's size and, where it is not rayon's global one, the pool.
    let pool = match &executor {
        Executor::MultiThread(pool) => Some(pool.as_ref()),
        _ => None,
    };
    let threads = match &executor {
        Executor::MultiThread(pool) => pool.current_num_threads(),
        // The browser's threaded build: the Web Workers wasm-bindgen-rayon started.
        Executor::RayonGlobal => rayon::current_num_threads(),
        _ => 1,
    };
    if threads < 2 || items.is_empty() {
        return Err(items);
    }
    if items.len() == 1 {
        // Only with the pool to itself: a worker waiting for a split of this item takes any
        // job offered to the pool meanwhile, and another call's whole item run inside this one
        // would find tract's scratch (a thread-local, held across the split) borrowed. Beside
        // another call, on the calling thread as before: tract still splits its products
        // across the pool, pieces that hold nothing.
        let Some(_alone) = Running::alone() else { return Err(items) };
        // The caller's executor on the worker too (a scoped one is the calling thread's).
        let one =
            || multithread_tract_scope(executor.clone(), || items.into_iter().map(f).collect());
        return Ok(with_a_worker_spinning(pool, one));
    }
    // Items side by side, each single-threaded inside (so no worker waits inside one), unless
    // a single item has the pool: then one by one here.
    let Some(_running) = Running::beside() else { return Err(items) };
    let each = |item: T| multithread_tract_scope(Executor::SingleThread, || f(item));
    let all = || items.into_par_iter().map(each).collect();
    Ok(match pool {
        Some(pool) => pool.install(all),
        None => all(),
    })
}

/// The [`on_pool`] calls under way, process-wide: how many, plus [`ALONE`] while a single
/// item has the pool to itself. Its spinner stands down as soon as another call starts.
#[cfg(feature = "threads")]
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The flag in [`RUNNING`]: a single item runs on the pool.
#[cfg(feature = "threads")]
const ALONE: usize = 1 << (usize::BITS - 1);

/// One call counted in [`RUNNING`] while it lives (the amount it added).
#[cfg(feature = "threads")]
struct Running(usize);

#[cfg(feature = "threads")]
impl Running {
    /// A single item's claim on the pool: only when no other call is under way.
    fn alone() -> Option<Running> {
        use std::sync::atomic::Ordering::SeqCst;
        RUNNING.compare_exchange(0, ALONE | 1, SeqCst, SeqCst).ok().map(|_| Running(ALONE | 1))
    }

    /// Any other call's count; `None` (and nothing counted) while a single item has the pool.
    fn beside() -> Option<Running> {
        use std::sync::atomic::Ordering::SeqCst;
        let running = Running(1);
        (RUNNING.fetch_add(1, SeqCst) & ALONE == 0).then_some(running)
    }

    /// Whether the single item that has the pool is the only call under way.
    fn only_alone() -> bool {
        RUNNING.load(std::sync::atomic::Ordering::SeqCst) == ALONE | 1
    }
}

#[cfg(feature = "threads")]
impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(self.0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `f` on a worker of `pool` (rayon's global pool where `None`) while another worker
/// spins, taking each piece of work the moment `f`'s thread offers it (`rayon::yield_now`),
/// until `f` returns or panics, or another [`on_pool`] call starts (the workers are then that
/// call's too). Where no worker is free to spin, the spinner finds `f` done and returns at
/// once.
#[cfg(feature = "threads")]
fn with_a_worker_spinning<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    f: impl FnOnce() -> R + Send,
) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Sets the flag when dropped: on `f`'s return and on its panic alike (`join` waits for
    /// the spinner before it passes a panic on).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let run = || {
        let _done = Done(&done);
        f()
    };
    let spin = || {
        while !done.load(Ordering::Acquire) && Running::only_alone() {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    };
    let (out, ()) = match pool {
        Some(pool) => pool.join(run, spin),
        None => rayon::join(run, spin),
    };
    out
}

#[cfg(not(feature = "threads"))]
fn on_pool<T, R>(items: Vec<T>, _f: &impl Fn(T) -> R) -> std::result::Result<Vec<R>, Vec<T>> {
    Err(items)
}

/// Runs tract's matrix products (convolutions included) on `threads` threads of a dedicated
/// pool from now on; 0 or 1: on the calling thread only (the default). Builds with the
/// `threads` feature; one process-wide setting. An error (and the setting unchanged) when the
/// system refuses the threads.
///
/// On wasm no thread can be spawned from here: above 1, the products run on rayon's global
/// pool, which the leaf must have started first (the browser bundle's threaded build starts
/// one of Web Workers with `wasm_bindgen_rayon`); its size is the leaf's, not `threads`.
#[cfg(feature = "threads")]
pub fn set_threads(threads: usize) -> std::result::Result<(), String> {
    use tract_linalg::multithread::{Executor, set_default_executor};
    let executor = if threads <= 1 {
        Executor::SingleThread
    } else if cfg!(target_family = "wasm") {
        Executor::RayonGlobal
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|n| format!("medinfer-mm-{n}"))
            .num_threads(threads)
            .build()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
        Executor::MultiThread(std::sync::Arc::new(pool))
    };
    set_default_executor(executor);
    Ok(())
}

#[cfg(all(test, feature = "threads"))]
mod tests {
    use std::sync::Arc;

    use tract_linalg::multithread::{Executor, multithread_tract_scope, par_chunks_mut};

    /// Inside `f`: `n` values squared in chunks split across tract's executor, summed.
    fn squares(n: usize) -> f64 {
        let mut v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        par_chunks_mut(&mut v, 64, n, |_, chunk| {
            chunk.iter_mut().for_each(|x| *x *= *x);
            Ok(())
        })
        .expect("chunks");
        v.iter().sum()
    }

    fn with_pool<R>(f: impl FnOnce() -> R) -> R {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        multithread_tract_scope(Executor::MultiThread(Arc::new(pool)), f)
    }

    /// The pool's state is process-wide: these tests take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    const N: usize = 10_000;
    const WANT: f64 = ((N - 1) * N * (2 * N - 1) / 6) as f64;
    /// Above tract's threshold for splitting a share (32 768 values).
    const BIG: usize = 1_000_000;

    /// One item runs on a worker of the pool (a spinner beside it), splitting its work there;
    /// several run side by side; both with the right results. (Calls from several threads at
    /// once: [`no_item_runs_inside_another`].)
    #[test]
    fn items_run_on_the_pool_alone_and_together() {
        let _serial = serial();
        with_pool(|| {
            let one = super::map_on_pool(vec![N], |n| (rayon::current_thread_index(), squares(n)));
            assert!(one[0].0.is_some(), "a single item runs on a worker");
            assert_eq!(one[0].1, WANT);
            assert_eq!(super::map_on_pool(vec![N; 5], squares), vec![WANT; 5]);
        });
    }

    thread_local! {
        /// Held across the work of [`holding`], as tract holds its matrix products' scratch
        /// across their split (`OptMatMul::eval`).
        static HELD: std::cell::RefCell<()> = const { std::cell::RefCell::new(()) };
    }

    /// With [`HELD`] borrowed throughout, `n` ones doubled in chunks split across tract's
    /// executor (`n` above its threshold for splitting), summed: a second borrow on the same
    /// thread (one call's item run inside another's, by a worker waiting for its split)
    /// panics.
    fn holding(n: usize) -> f64 {
        HELD.with_borrow_mut(|_| {
            let mut v = vec![1f64; n];
            par_chunks_mut(&mut v, 256, n, |_, chunk| {
                chunk.iter_mut().for_each(|x| *x *= 2.0);
                Ok(())
            })
            .expect("chunks");
            v.iter().sum()
        })
    }

    /// Single items and batches from several threads at once, each item holding a
    /// thread-local borrow across its split: no worker runs a whole item inside another's
    /// (a pool worker waiting on its split may take any job offered to the pool; the server
    /// aborted on tract's scratch when single images ran there unguarded).
    #[test]
    fn no_item_runs_inside_another() {
        let _serial = serial();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let executor = Executor::MultiThread(Arc::new(pool));
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..4)
                .map(|i| {
                    let executor = executor.clone();
                    s.spawn(move || {
                        multithread_tract_scope(executor, || {
                            (0..100)
                                .map(|k| super::map_on_pool(vec![BIG; 1 + (i + k) % 3], holding))
                                .collect::<Vec<_>>()
                        })
                    })
                })
                .collect();
            for call in calls {
                let results = call.join().expect("no call panicked");
                assert!(results.iter().flatten().all(|&r| r == 2.0 * BIG as f64));
            }
        });
    }

    /// A panic in a single item reaches the caller: the spinner beside it stops too.
    #[test]
    fn a_panic_in_an_item_reaches_the_caller() {
        let _serial = serial();
        let caught = with_pool(|| {
            std::panic::catch_unwind(|| {
                super::map_on_pool(vec![1], |_: i32| -> i32 { panic!("x") })
            })
        });
        assert!(caught.is_err());
    }
}
