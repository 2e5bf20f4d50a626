//! The end-to-end pipeline: bytes or arrays → [`Image`] → model input → [`Prediction`].

use crate::deid::{DeidKey, patient_pseudonym};
use crate::{
    ArrayInput, DicomImage, DicomInfo, Format, Image, Limits, LoadedModel, Pixels, Prediction,
    Result, Window, preprocess::preprocess_into, raster::decode_raster, sniff,
};

/// A monotonic clock in milliseconds, supplied by the caller (`core` reads no clock).
pub trait Timer {
    /// Milliseconds since an arbitrary origin.
    fn now_ms(&self) -> f64;
}

/// A timer that always says 0 (timings are then all zero).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTimer;

impl Timer for NoTimer {
    fn now_ms(&self) -> f64 {
        0.0
    }
}

/// How to decode an input.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeOptions {
    /// For multi-frame DICOM: which frame (0-based; default the first).
    pub frame: Option<u32>,
    /// Override the DICOM window (default: the file's, else min/max).
    pub window: Option<Window>,
}

/// A decoded input and what it was.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The image: display values, or a grayscale DICOM frame's modality values with its VOI
    /// stage still to apply ([`Image::display`] applies it).
    pub image: Image,
    /// The detected format.
    pub format: Format,
    /// For DICOM: structural facts (no PHI).
    pub dicom: Option<DicomInfo>,
    /// For DICOM decoded with a key ([`decode_keyed`]): the patient's keyed pseudonym, when
    /// the file names a patient.
    pub patient_pseudonym: Option<String>,
}

/// Checks size and format, decodes, and checks dimensions — the seed's validation order.
pub fn decode(bytes: &[u8], limits: &Limits, options: &DecodeOptions) -> Result<Decoded> {
    decode_keyed(bytes, limits, options, None)
}

/// [`decode`], and for DICOM with a `key`, the patient's keyed pseudonym
/// ([`crate::deid::patient_pseudonym`]): the only identifying attribute read, and it never
/// leaves this function unhashed.
pub fn decode_keyed(
    bytes: &[u8],
    limits: &Limits,
    options: &DecodeOptions,
    key: Option<&DeidKey>,
) -> Result<Decoded> {
    limits.check_size(bytes.len())?;
    let format = sniff(bytes)?;
    match format {
        Format::Png | Format::Jpeg => Ok(Decoded {
            image: Image::Display(decode_raster(bytes, format, limits)?),
            format,
            dicom: None,
            patient_pseudonym: None,
        }),
        Format::Dicom => {
            let image = DicomImage::parse(bytes)?;
            let info = image.info().clone();
            limits.check_dimensions(info.columns.into(), info.rows.into())?;
            let patient_pseudonym = key.and_then(|k| patient_pseudonym(image.object(), k));
            let frame = image.frame(options.frame.unwrap_or(0))?;
            Ok(Decoded {
                image: frame.into_image(options.window),
                format,
                dicom: Some(info),
                patient_pseudonym,
            })
        }
    }
}

/// Validates a seed JSON array and returns its pixels.
pub fn decode_array(input: &ArrayInput, limits: &Limits) -> Result<Pixels> {
    input.to_pixels(limits)
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Sniffing, parsing and decoding.
    pub decode_ms: f64,
    /// Resize, channels, normalisation.
    pub preprocess_ms: f64,
    /// The model run (shared by a batch: each image reports the batch's run divided evenly).
    pub infer_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// Runs `model` on `images` in chunks of at most `max_batch` (one executor run per chunk on
/// the GPU; tract's CPU plan takes a chunk image by image, see [`LoadedModel`]) and
/// returns one prediction per image, with the preprocess and inference time of each chunk
/// divided evenly among its images. When the model's executor preprocesses too (the GPU:
/// windowing, resize, channels, normalisation), `preprocess_ms` is 0 and `infer_ms` includes
/// it; on the CPU, `preprocess_ms` includes the VOI stage of [`Image::Modality`] images.
pub fn predict(
    model: &LoadedModel,
    images: &[&Image],
    max_batch: usize,
    timer: &dyn Timer,
) -> Result<Vec<(Prediction, Timings)>> {
    let per = model.input_len();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(max_batch.max(1)) {
        let t0 = timer.now_ms();
        let n = chunk.len() as f64;
        if let Some(raw) = model.run_images(chunk) {
            let raw = raw?;
            let ms = (timer.now_ms() - t0) / n;
            let timing = Timings { decode_ms: 0.0, preprocess_ms: 0.0, infer_ms: ms, total_ms: ms };
            out.extend(raw.iter().map(|r| (model.postprocess(r), timing)));
            continue;
        }
        // On tract's CPU plan each image is preprocessed straight into its input tensor;
        // for an executor, into one buffer for the chunk.
        let (t1, raw) = if model.runs_on_cpu_plan() {
            let tensors = crate::map_on_pool(chunk.to_vec(), |image| model.preprocessed(image))
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            (timer.now_ms(), model.run_tensors(tensors)?)
        } else {
            let mut input = vec![0f32; per * chunk.len()];
            let slots: Vec<_> = chunk.iter().zip(input.chunks_exact_mut(per)).collect();
            crate::map_on_pool(slots, |(image, dst)| {
                preprocess_into(&image.display(), model.manifest(), dst);
            });
            (timer.now_ms(), model.run_raw(input, chunk.len())?)
        };
        let t2 = timer.now_ms();
        for r in raw {
            let timing = Timings {
                decode_ms: 0.0,
                preprocess_ms: (t1 - t0) / n,
                infer_ms: (t2 - t1) / n,
                total_ms: (t2 - t0) / n,
            };
            out.push((model.postprocess(&r), timing));
        }
    }
    Ok(out)
}

/// Decodes one input and runs the model on it.
pub fn infer_bytes(
    model: &LoadedModel,
    bytes: &[u8],
    limits: &Limits,
    options: &DecodeOptions,
    timer: &dyn Timer,
) -> Result<(Decoded, Prediction, Timings)> {
    let t0 = timer.now_ms();
    let decoded = decode(bytes, limits, options)?;
    let decode_ms = timer.now_ms() - t0;
    let mut results = predict(model, &[&decoded.image], 1, timer)?;
    let (prediction, mut timing) = results.remove(0);
    timing.decode_ms = decode_ms;
    timing.total_ms += decode_ms;
    Ok((decoded, prediction, timing))
}
