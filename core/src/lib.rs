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
pub mod deid;
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
