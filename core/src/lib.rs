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
mod conv;
pub mod deid;
mod depthwise;
pub mod dicom;
mod error;
mod manifest;
mod model;
mod pipeline;
mod pixels;
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
/// order; without a pool (one thread; the Spin component) or for a single item, one by one
/// on the calling thread, where tract may still split each product across the pool.
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
#[cfg(feature = "threads")]
fn on_pool<T: Send, R: Send>(
    items: Vec<T>,
    f: &(impl Fn(T) -> R + Sync),
) -> std::result::Result<Vec<R>, Vec<T>> {
    use rayon::prelude::*;
    use tract_linalg::multithread::{Executor, current_tract_executor, multithread_tract_scope};
    if items.len() < 2 {
        return Err(items);
    }
    let each = |item: T| multithread_tract_scope(Executor::SingleThread, || f(item));
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
            Ok(pool.install(|| items.into_par_iter().map(each).collect()))
        }
        // The browser's threaded build: the Web Workers wasm-bindgen-rayon started.
        Executor::RayonGlobal if rayon::current_num_threads() > 1 => {
            Ok(items.into_par_iter().map(each).collect())
        }
        _ => Err(items),
    }
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
