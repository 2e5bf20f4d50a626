//! # medinfer-browser
//!
//! medinfer in the browser tab: `medinfer-core` behind a small typed wasm-bindgen API. Files
//! are decoded, de-identified and classified in the page's own memory; nothing here can make
//! a network request (the crate imports no fetch, no XHR, no WebSocket: only
//! `performance.now`, `Date` and `crypto.getRandomValues`).
//!
//! One [`Engine`] holds the loaded models, the text detector used by Clean Pixel Data and the
//! session's de-identification key. Every method but `useGpu` and `inferAsync` is
//! synchronous: run it in a Web Worker (the bundle's `medinfer-worker.js` does) so the page
//! never freezes. `useGpu("auto")` opens WebGPU (medinfer's wgpu executor) when
//! `navigator.gpu` gives an adapter and every loaded model plans on it; `inferAsync` then runs
//! the model there, else on the SIMD CPU path.
//!
//! Errors are JavaScript `Error`s named `MedinferError` whose `code` is the server's stable
//! code (`input.dimensions`, `decode.dicom`, `model.not_found`, …). Messages never quote the
//! input, so they are safe to show and to log.
#![deny(missing_docs)]

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod libc;

use js_sys::{Function, Object, Reflect, Uint8Array, Uint8ClampedArray};
use medinfer_core::deid::{DeidKey, DeidOptions, PixelCleaning, TextDetector, deidentify};
use medinfer_core::{
    DecodeOptions, Decoded, DicomImage, Format, Image, InferenceResult, Limits, LoadedModel,
    Pixels, Registry, Timer, Window, decode_keyed, decode_raster, predict, round_timings, sniff,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** The server's InferenceResult (PRODUCT.md): predictions are label → score, highest first. */
export interface InferenceResult {
  inference_id: string;
  batch_id: string | null;
  model_id: string;
  model_version: string;
  /** Keyed pseudonym (`PT-` + 24 hex) of the DICOM file's patient; null for PNG/JPEG. */
  patient_id: string | null;
  predictions: Record<string, number>;
  top_label: string;
  confidence_score: number;
  /** RFC 3339 UTC. */
  created_at: string;
  timing_ms: { decode_ms: number; preprocess_ms: number; infer_ms: number; total_ms: number };
  /** SHA-256 (hex) of the record's compact JSON without this field. */
  record_hash: string;
}
/** A failed item: the same `{code, message}` as the server's error body. */
export interface ItemError { code: string; message: string }
export type BatchItem = ({ index: number } & InferenceResult) | { index: number; error: ItemError };
export interface BatchResult {
  batch_id: string;
  total_images: number;
  successful: number;
  failed: number;
  /** One per input, in input order. */
  items: BatchItem[];
  total_ms: number;
}
export interface BatchProgress { done: number; total: number; item: BatchItem }
export interface ModelInfo {
  model_id: string;
  version: string;
  name: string;
  description: string;
  disclaimer: string;
  status: string;
  labels: string[];
  input_shape: (number | string)[];
  sha256: string;
  default: boolean;
  load_ms: number;
  /** The matrix-product kernels the CPU plan runs (e.g. "medinfer_wasm_f32_16x8"). */
  matmul_kernels: string[];
  /** How many of each operator the CPU plan runs, by name (e.g. "medinfer.Conv": 58). */
  operators: Record<string, number>;
}
export interface FileInfo {
  format: "png" | "jpeg" | "dicom";
  media_type: string;
  bytes: number;
  width: number;
  height: number;
  channels: number;
  /** DICOM only: structure, never a patient attribute. */
  dicom: null | {
    transfer_syntax: string; transfer_syntax_name: string; decodable: boolean;
    sop_class_uid: string | null; modality: string | null; rows: number; columns: number;
    frames: number; samples_per_pixel: number; bits_allocated: number; bits_stored: number;
    signed: boolean; photometric: string; burned_in_annotation: string | null;
  };
}
export interface WindowLevel { center: number; width: number }
export interface RenderOptions { frame?: number; window?: WindowLevel }
export interface Preview {
  width: number;
  height: number;
  /** RGBA, ready for `new ImageData(rgba, width, height)`. */
  rgba: Uint8ClampedArray<ArrayBuffer>;
  /** The window applied (DICOM: modality units; PNG/JPEG: 0..255); null for colour DICOM. */
  window: WindowLevel | null;
  /** The frame's value range, for window/level controls. */
  range: { min: number; max: number };
  frame: number;
  frames: number;
}
export interface InferOptions { modelId?: string; frame?: number; batchId?: string }
export interface ModelPlacement { model_id: string; gpu_nodes: number; cpu_ops: string[]; fallbacks: string[] }
export interface BackendInfo {
  backend: "gpu" | "cpu";
  /** The WebAssembly build in use: relaxed SIMD where the engine has it, else SIMD128. */
  simd: "relaxed-simd" | "simd128";
  /** Threads running the CPU path's matrix products (1 unless `initThreads` started a pool). */
  threads: number;
  adapter: string | null;
  reason: string | null;
  models: ModelPlacement[];
}
export interface BatchOptions {
  modelId?: string;
  frame?: number;
  /** Images per model run (1..=64, default 8). */
  chunk?: number;
  /** Continue a batch across calls (the worker does, to stay cancellable); default a new UUID. */
  batchId?: string;
}
export interface DeidentifyOptions {
  /** PS3.15 options by CLI name: "retain-uids", "retain-modified-dates", "clean-descriptors", … */
  options?: string[];
  /** Clean Pixel Data: "auto" (default), "always" or "never". */
  pixelCleaning?: "auto" | "always" | "never";
}
export interface DeidReport {
  method_codes: string[];
  attributes: { path: string; keyword: string; outcome: string }[];
  private_removed: number;
  private_kept: number;
  graphics_removed: number;
  patient_pseudonym: string;
  pixel_cleaning: "applied" | "not_required" | "disabled";
  frames_scanned: number[];
  redactions: { x: number; y: number; width: number; height: number; score: number }[];
}
export interface Deidentified { bytes: Uint8Array<ArrayBuffer>; report: DeidReport }
export interface EngineOptions {
  /** The de-identification secret (≥ 16 bytes). Default: 32 random bytes for this engine, so
   * pseudonyms are stable within a session and unlinkable across sessions. */
  deidKey?: Uint8Array;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// `performance.now()`, present in pages and workers alike.
struct PerfTimer;

impl Timer for PerfTimer {
    fn now_ms(&self) -> f64 {
        performance_now()
    }
}

/// A JavaScript `Error` named `MedinferError` with the stable `code`.
fn js_error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("MedinferError");
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

fn core_error(e: &medinfer_core::Error) -> JsValue {
    js_error(e.code(), &e.to_string())
}

fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("internal.serialize", &e.to_string()))
}

/// Options objects: `undefined`/`null` mean all defaults; a wrong shape or a key outside
/// `known` (a typo such as `modelID`) is `input.options`.
fn parse_options<T: for<'de> Deserialize<'de> + Default>(
    value: JsValue,
    known: &[&str],
) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    if !value.is_object() {
        return Err(js_error("input.options", "options must be an object"));
    }
    let object: &Object = value.unchecked_ref();
    for key in Object::keys(object).iter().filter_map(|k| k.as_string()) {
        if !known.contains(&key.as_str()) {
            let key: String = key.chars().take(40).collect();
            return Err(js_error(
                "input.options",
                &format!("unknown option {key:?} (known: {})", known.join(", ")),
            ));
        }
    }
    serde_wasm_bindgen::from_value(value)
        .map_err(|e| js_error("input.options", &format!("invalid options: {e}")))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], JsValue> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| js_error("internal.random", "no secure random source"))?;
    Ok(b)
}

const INFER_OPTIONS: &[&str] = &["modelId", "frame", "chunk", "batchId"];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InferOptions {
    model_id: Option<String>,
    frame: Option<u32>,
    chunk: Option<usize>,
    batch_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RenderOptions {
    frame: Option<u32>,
    window: Option<Window>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeidentifyOptions {
    #[serde(default)]
    options: Vec<String>,
    pixel_cleaning: Option<PixelCleaning>,
}

#[derive(Serialize)]
struct FileInfo {
    format: &'static str,
    media_type: &'static str,
    bytes: usize,
    width: u32,
    height: u32,
    channels: u8,
    dicom: Option<medinfer_core::DicomInfo>,
}

#[derive(Serialize)]
struct ItemError<'a> {
    code: &'a str,
    message: String,
}

/// Batch items keep the server's shape: `{index, ...result}` or `{index, error}`.
#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem<'a> {
    Ok {
        index: usize,
        #[serde(flatten)]
        result: &'a InferenceResult,
    },
    Err {
        index: usize,
        error: ItemError<'a>,
    },
}

/// Decoding, de-identification and inference for one page or worker.
#[wasm_bindgen]
pub struct Engine {
    registry: Registry,
    load_ms: Vec<(String, f64)>,
    detector: Option<TextDetector>,
    key: DeidKey,
    limits: Limits,
    gpu: Rc<RefCell<Option<Rc<GpuState>>>>,
}

/// The WebGPU device and one plan per model (batch 1), built on first use.
struct GpuState {
    gpu: Arc<medinfer_gpu::Gpu>,
    plans: RefCell<HashMap<String, Rc<medinfer_gpu::GpuModel>>>,
}

impl GpuState {
    fn plan(
        &self,
        model: &LoadedModel,
    ) -> Result<Rc<medinfer_gpu::GpuModel>, medinfer_core::Error> {
        if let Some(plan) = self.plans.borrow().get(model.sha256()) {
            return Ok(plan.clone());
        }
        let typed = model.typed_for_batch(1)?;
        let plan = medinfer_gpu::GpuModel::new(self.gpu.clone(), &typed)
            .map_err(|e| medinfer_core::Error::Inference { reason: e.to_string() })?;
        let plan = Rc::new(plan);
        self.plans.borrow_mut().insert(model.sha256().to_string(), plan.clone());
        Ok(plan)
    }
}

/// The instruction set of this build (see `Engine::simd`).
const SIMD: &str = if cfg!(target_feature = "relaxed-simd") { "relaxed-simd" } else { "simd128" };

/// The size of the pool `initThreads` started (1: none, the products run on the calling thread).
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

fn threads() -> usize {
    THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts `threads` Web Workers sharing this module's memory (wasm-bindgen-rayon) and runs
/// tract's matrix products and convolutions on them from then on. Only in the threaded build
/// (`pkg/threads/`), whose memory is shared, so only in a cross-origin isolated page; call it
/// once, right after the module's `init` and before the first model runs. The calling thread
/// blocks while the pool works, so call it from a Worker (the bundle's worker does), never the
/// page's main thread.
#[cfg(feature = "threads")]
#[wasm_bindgen(js_name = initThreads)]
pub async fn init_threads(threads: usize) -> Result<(), JsValue> {
    if threads < 2 || self::threads() > 1 {
        return Err(js_error("input.options", "threads: start one pool, of 2 or more"));
    }
    wasm_bindgen_futures::JsFuture::from(wasm_bindgen_rayon::init_thread_pool(threads)).await?;
    medinfer_core::set_threads(threads).map_err(|e| js_error("internal.error", &e))?;
    THREADS.store(threads, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// What `useGpu` settled on.
#[derive(Serialize)]
struct BackendInfo {
    backend: &'static str,
    /// The WebAssembly build running the CPU path (and everything but the GPU's kernels).
    simd: &'static str,
    /// Threads on the CPU path's matrix products.
    threads: usize,
    adapter: Option<String>,
    reason: Option<String>,
    models: Vec<ModelPlacement>,
}

#[derive(Serialize)]
struct ModelPlacement {
    model_id: String,
    gpu_nodes: usize,
    cpu_ops: Vec<String>,
    /// "node (op): reason" for each node left on the CPU.
    fallbacks: Vec<String>,
}

fn placement(model: &LoadedModel, plan: &medinfer_gpu::GpuModel) -> ModelPlacement {
    use medinfer_gpu::Placement;
    let cpu_ops = plan.cpu_ops().into_iter().map(str::to_string).collect();
    let fallbacks = plan
        .placements()
        .iter()
        .filter_map(|p| match &p.placement {
            Placement::Cpu { reason } => Some(format!("{} ({}): {reason}", p.node, p.op)),
            _ => None,
        })
        .collect();
    ModelPlacement {
        fallbacks,
        model_id: model.manifest().id.clone(),
        gpu_nodes: plan
            .placements()
            .iter()
            .filter(|p| matches!(p.placement, Placement::Gpu { .. }))
            .count(),
        cpu_ops,
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("models", &self.registry.len()).finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl Engine {
    /// A new engine with no models. `options.deidKey` sets the de-identification secret.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "EngineOptions | undefined")] options: JsValue,
    ) -> Result<Engine, JsValue> {
        let supplied = if options.is_object() {
            Reflect::get(&options, &"deidKey".into())?
        } else {
            JsValue::UNDEFINED
        };
        let secret = if supplied.is_undefined() {
            random_bytes::<32>()?.to_vec()
        } else if let Some(bytes) = supplied.dyn_ref::<Uint8Array>() {
            bytes.to_vec()
        } else {
            return Err(js_error("input.options", "deidKey must be a Uint8Array"));
        };
        let key = DeidKey::new(&secret).map_err(|e| core_error(&e))?;
        Ok(Engine {
            registry: Registry::new(),
            load_ms: Vec::new(),
            detector: None,
            key,
            limits: Limits::default(),
            gpu: Rc::default(),
        })
    }

    /// The bundle's version.
    #[wasm_bindgen(js_name = version)]
    pub fn version() -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The SIMD instruction set this build of the bundle was compiled for: `"relaxed-simd"`
    /// (`pkg/threads/`: tract's kernels use fused `f32x4.relaxed_madd`) or `"simd128"`
    /// (`pkg/medinfer_wasm_bg.wasm`, for engines without relaxed SIMD).
    #[wasm_bindgen(js_name = simd, unchecked_return_type = "\"relaxed-simd\" | \"simd128\"")]
    pub fn simd() -> String {
        SIMD.to_string()
    }

    /// Threads running the CPU path's matrix products: the pool `initThreads` started in the
    /// threaded build, else 1.
    #[wasm_bindgen(js_name = threads)]
    pub fn threads() -> usize {
        threads()
    }

    /// Loads a model from its `model.toml` manifest and ONNX bytes (checked against the
    /// manifest's sha256 when it names one), optimises it, and returns its description. The
    /// first model loaded is the default.
    #[wasm_bindgen(js_name = loadModel, unchecked_return_type = "ModelInfo")]
    pub fn load_model(&mut self, manifest_toml: &str, onnx: &[u8]) -> Result<JsValue, JsValue> {
        let t0 = performance_now();
        let id = self
            .registry
            .load(manifest_toml, onnx)
            .map_err(|e| core_error(&e))?
            .manifest()
            .id
            .clone();
        let ms = performance_now() - t0;
        self.load_ms.retain(|(m, _)| *m != id);
        self.load_ms.push((id.clone(), ms));
        let model = self.registry.get(&id).map_err(|e| core_error(&e))?;
        to_js(&self.model_info(model))
    }

    /// Loads the PP-OCR text detector that Clean Pixel Data uses (ONNX bytes).
    #[wasm_bindgen(js_name = loadTextDetector)]
    pub fn load_text_detector(&mut self, onnx: &[u8]) -> Result<(), JsValue> {
        self.detector = Some(TextDetector::load(onnx).map_err(|e| core_error(&e))?);
        Ok(())
    }

    /// Whether the text detector is loaded.
    #[wasm_bindgen(getter, js_name = hasTextDetector)]
    pub fn has_text_detector(&self) -> bool {
        self.detector.is_some()
    }

    /// The loaded models.
    #[wasm_bindgen(unchecked_return_type = "ModelInfo[]")]
    pub fn models(&self) -> Result<JsValue, JsValue> {
        let infos: Vec<_> = self.registry.iter().map(|m| self.model_info(m)).collect();
        to_js(&infos)
    }

    /// What a file is: format, size, dimensions and, for DICOM, its structure (transfer
    /// syntax, modality, frames…). Never a patient attribute. Checks the size limit and the
    /// format; a DICOM file is parsed but its pixels are not decoded.
    #[wasm_bindgen(unchecked_return_type = "FileInfo")]
    pub fn inspect(&self, bytes: &[u8]) -> Result<JsValue, JsValue> {
        let format = self.format(bytes)?;
        let info = match format {
            Format::Dicom => {
                let image = DicomImage::parse(bytes).map_err(|e| core_error(&e))?;
                let d = image.info().clone();
                FileInfo {
                    format: format.name(),
                    media_type: format.media_type(),
                    bytes: bytes.len(),
                    width: d.columns,
                    height: d.rows,
                    channels: d.samples_per_pixel as u8,
                    dicom: Some(d),
                }
            }
            Format::Png | Format::Jpeg => {
                let px = decode_raster(bytes, format, &self.limits).map_err(|e| core_error(&e))?;
                FileInfo {
                    format: format.name(),
                    media_type: format.media_type(),
                    bytes: bytes.len(),
                    width: px.width,
                    height: px.height,
                    channels: px.channels,
                    dicom: None,
                }
            }
        };
        to_js(&info)
    }

    /// Renders a frame for display: RGBA with the window applied (the given one, else the
    /// file's, else the frame's range), MONOCHROME1 inverted so that 0 is black.
    #[wasm_bindgen(unchecked_return_type = "Preview")]
    pub fn render(
        &self,
        bytes: &[u8],
        #[wasm_bindgen(unchecked_param_type = "RenderOptions | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let opts: RenderOptions = parse_options(options, &["frame", "window"])?;
        let format = self.format(bytes)?;
        let (pixels, window, range, frame, frames) = match format {
            Format::Dicom => {
                let image = DicomImage::parse(bytes).map_err(|e| core_error(&e))?;
                let info = image.info();
                self.limits
                    .check_dimensions(info.columns.into(), info.rows.into())
                    .map_err(|e| core_error(&e))?;
                let index = opts.frame.unwrap_or(0);
                let f = image.frame(index).map_err(|e| core_error(&e))?;
                let (lo, hi) =
                    f.values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                let window = opts.window.or(f.window).unwrap_or(Window {
                    center: (f64::from(lo) + f64::from(hi)) / 2.0,
                    width: f64::from(hi - lo).max(1.0),
                });
                let window = if f.samples == 3 { None } else { Some(window) };
                (f.to_pixels(window), window, (lo, hi), index, info.frames)
            }
            Format::Png | Format::Jpeg => {
                let px = decode_raster(bytes, format, &self.limits).map_err(|e| core_error(&e))?;
                let window = opts.window.unwrap_or(Window { center: 127.5, width: 255.0 });
                (window_raster(px, window), Some(window), (0.0, 255.0), 0, 1)
            }
        };
        let rgba = to_rgba(&pixels);
        let out = Object::new();
        set(&out, "width", &pixels.width.into())?;
        set(&out, "height", &pixels.height.into())?;
        set(&out, "rgba", &Uint8ClampedArray::from(rgba.as_slice()).into())?;
        set(&out, "window", &to_js(&window)?)?;
        let range_obj = Object::new();
        set(&range_obj, "min", &range.0.into())?;
        set(&range_obj, "max", &range.1.into())?;
        set(&out, "range", &range_obj.into())?;
        set(&out, "frame", &frame.into())?;
        set(&out, "frames", &frames.into())?;
        Ok(out.into())
    }

    /// De-identifies a DICOM file (PS3.15 Basic Profile and the chosen options; Clean Pixel
    /// Data with the text detector when the file calls for it) and returns the new file with
    /// the report. The patient becomes this engine's keyed pseudonym.
    #[wasm_bindgen(unchecked_return_type = "Deidentified")]
    pub fn deidentify(
        &self,
        bytes: &[u8],
        #[wasm_bindgen(unchecked_param_type = "DeidentifyOptions | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let opts: DeidentifyOptions = parse_options(options, &["options", "pixelCleaning"])?;
        if self.format(bytes)? != Format::Dicom {
            return Err(js_error(
                "input.unsupported_format",
                "only DICOM files carry attributes to de-identify",
            ));
        }
        let mut deid = DeidOptions::default();
        for name in &opts.options {
            deid.set(name).map_err(|e| core_error(&e))?;
        }
        let cleaning = opts.pixel_cleaning.unwrap_or_default();
        let out = deidentify(bytes, &self.key, deid, cleaning, self.detector.as_ref())
            .map_err(|e| core_error(&e))?;
        let result = Object::new();
        set(&result, "bytes", &Uint8Array::from(out.bytes.as_slice()).into())?;
        set(&result, "report", &to_js(&out.report)?)?;
        Ok(result.into())
    }

    /// Classifies one file (PNG, JPEG or DICOM) and returns the InferenceResult.
    #[wasm_bindgen(unchecked_return_type = "InferenceResult")]
    pub fn infer(
        &self,
        bytes: &[u8],
        #[wasm_bindgen(unchecked_param_type = "InferOptions | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let opts: InferOptions = parse_options(options, INFER_OPTIONS)?;
        let model = self.registry.resolve(opts.model_id.as_deref()).map_err(|e| core_error(&e))?;
        let (decoded, decode_ms) = self.decode(bytes, opts.frame).map_err(|e| core_error(&e))?;
        let mut results =
            self.run(model, &[(decoded, decode_ms)], None).map_err(|e| core_error(&e))?;
        to_js(&results.remove(0))
    }

    /// Chooses the backend: `"cpu"` (WebAssembly SIMD), `"gpu"` (WebGPU; rejects with
    /// `gpu.unavailable` when there is no adapter or a loaded model cannot be planned) or
    /// `"auto"` (WebGPU when possible, else the CPU). Resolves to `BackendInfo`: the backend,
    /// the adapter and, per loaded model, the nodes on the GPU and the ops left on the CPU.
    #[wasm_bindgen(js_name = useGpu, unchecked_return_type = "Promise<BackendInfo>")]
    pub fn use_gpu(&self, mode: &str) -> js_sys::Promise {
        let mode = mode.to_string();
        let slot = self.gpu.clone();
        let registry = self.registry.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let cpu = |reason: Option<String>| BackendInfo {
                backend: "cpu",
                simd: SIMD,
                threads: threads(),
                adapter: None,
                reason,
                models: vec![],
            };
            slot.borrow_mut().take();
            if mode == "cpu" {
                return to_js(&cpu(None));
            }
            if mode != "gpu" && mode != "auto" {
                return Err(js_error("input.options", "the backend is cpu, gpu or auto"));
            }
            let refuse = |reason: String| -> Result<JsValue, JsValue> {
                if mode == "auto" {
                    to_js(&cpu(Some(reason)))
                } else {
                    Err(js_error("gpu.unavailable", &reason))
                }
            };
            // Without navigator.gpu (no WebGPU, or not enabled) there is nothing to ask.
            let has_webgpu = Reflect::get(&js_sys::global(), &"navigator".into())
                .and_then(|n| Reflect::get(&n, &"gpu".into()))
                .is_ok_and(|g| !g.is_undefined() && !g.is_null());
            if !has_webgpu {
                return refuse("this browser exposes no WebGPU (navigator.gpu)".into());
            }
            // GpuModel holds its device in an Arc on every target; here (one thread, WebGPU
            // objects are neither Send nor Sync) the Arc is only shared, never sent.
            #[allow(clippy::arc_with_non_send_sync)]
            let gpu = match medinfer_gpu::Gpu::new().await {
                Ok(gpu) => Arc::new(gpu),
                Err(e) => return refuse(e.to_string()),
            };
            let adapter = gpu.adapter().name.clone();
            let state = Rc::new(GpuState { gpu, plans: RefCell::default() });
            let mut models = vec![];
            for model in registry.iter() {
                match state.plan(model) {
                    Ok(plan) => models.push(placement(model, &plan)),
                    Err(e) => return refuse(format!("{}: {e}", model.manifest().id)),
                }
            }
            *slot.borrow_mut() = Some(state);
            to_js(&BackendInfo {
                backend: "gpu",
                simd: SIMD,
                threads: threads(),
                adapter: Some(adapter),
                reason: None,
                models,
            })
        })
    }

    /// The backend `infer`/`inferAsync` use now: `"gpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        if self.gpu.borrow().is_some() { "gpu" } else { "cpu" }.into()
    }

    /// `infer` on the chosen backend: WebGPU after a successful `useGpu`, else the CPU.
    /// Same result shape, same errors. One GPU run at a time per model.
    #[wasm_bindgen(js_name = inferAsync, unchecked_return_type = "Promise<InferenceResult>")]
    pub fn infer_async(
        &self,
        bytes: &[u8],
        #[wasm_bindgen(unchecked_param_type = "InferOptions | undefined")] options: JsValue,
    ) -> js_sys::Promise {
        let reject = |e: JsValue| js_sys::Promise::reject(&e);
        let opts: InferOptions = match parse_options(options, INFER_OPTIONS) {
            Ok(o) => o,
            Err(e) => return reject(e),
        };
        let model = match self.registry.resolve(opts.model_id.as_deref()) {
            Ok(m) => m.clone(),
            Err(e) => return reject(core_error(&e)),
        };
        let (decoded, decode_ms) = match self.decode(bytes, opts.frame) {
            Ok(d) => d,
            Err(e) => return reject(core_error(&e)),
        };
        let Some(state) = self.gpu.borrow().clone() else {
            let result = self.run(&model, &[(decoded, decode_ms)], opts.batch_id.as_deref());
            return match result.map_err(|e| core_error(&e)).and_then(|mut r| to_js(&r.remove(0))) {
                Ok(v) => js_sys::Promise::resolve(&v),
                Err(e) => reject(e),
            };
        };
        wasm_bindgen_futures::future_to_promise(async move {
            let fail = |e: medinfer_core::Error| core_error(&e);
            let t0 = performance_now();
            let plan = state.plan(&model).map_err(fail)?;
            // Windowing and preprocessing run on the GPU too (the decoded image is uploaded
            // once); only an image beyond the adapter's buffer limits is preprocessed here.
            let outputs = match plan.run_images(&[&decoded.image], model.manifest()).await {
                Err(medinfer_gpu::Error::Limits(_)) => {
                    let mut input = vec![0f32; model.input_len()];
                    medinfer_core::preprocess::preprocess_into(
                        &decoded.image.display(),
                        model.manifest(),
                        &mut input,
                    );
                    let tensor =
                        tract_onnx::prelude::Tensor::from_shape(plan.input_shape(), &input)
                            .map_err(|e| js_error("inference.failed", &format!("{e:#}")))?;
                    plan.run(&tensor).await
                }
                other => other,
            }
            .map_err(|e| js_error("inference.failed", &e.to_string()))?;
            let raw: Vec<f32> = outputs[0]
                .to_plain_array_view::<f32>()
                .map_err(|e| js_error("inference.failed", &format!("{e:#}")))?
                .iter()
                .copied()
                .collect();
            let t1 = performance_now();
            // On the GPU, preprocessing is part of the model run's time.
            let timing = medinfer_core::Timings {
                decode_ms,
                preprocess_ms: 0.0,
                infer_ms: t1 - t0,
                total_ms: decode_ms + (t1 - t0),
            };
            let result =
                seal(&model, &decoded, model.postprocess(&raw), timing, opts.batch_id.as_deref())
                    .map_err(fail)?;
            to_js(&result)
        })
    }

    /// Classifies many files with one model: decoded one by one (a bad file is an item
    /// error, never the batch's), run `chunk` (default 8) images per model run. After each
    /// chunk `onProgress({done, total, item})` is called once per item; returning `false`
    /// stops the batch (error code `cancelled`). Items keep the input order.
    #[wasm_bindgen(js_name = inferBatch, unchecked_return_type = "BatchResult")]
    pub fn infer_batch(
        &self,
        files: Vec<Uint8Array>,
        #[wasm_bindgen(unchecked_param_type = "BatchOptions | undefined")] options: JsValue,
        #[wasm_bindgen(
            unchecked_param_type = "((p: BatchProgress) => boolean | void) | undefined"
        )]
        on_progress: Option<Function>,
    ) -> Result<JsValue, JsValue> {
        let t0 = performance_now();
        let opts: InferOptions = parse_options(options, INFER_OPTIONS)?;
        let model = self.registry.resolve(opts.model_id.as_deref()).map_err(|e| core_error(&e))?;
        let chunk = opts.chunk.unwrap_or(8).clamp(1, 64);
        let batch_id = match opts.batch_id {
            Some(id)
                if (1..=64).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                id
            }
            Some(_) => {
                return Err(js_error(
                    "input.options",
                    "batchId must be 1-64 letters, digits or '-'",
                ));
            }
            None => uuid_v4()?,
        };
        let total = files.len();
        let mut items: Vec<JsValue> = Vec::with_capacity(total);
        let mut successful = 0;
        for (c, group) in files.chunks(chunk).enumerate() {
            let base = c * chunk;
            let mut ready = Vec::with_capacity(group.len());
            let mut outcomes: Vec<Result<usize, medinfer_core::Error>> = Vec::new();
            for file in group {
                match self.decode(&file.to_vec(), opts.frame) {
                    Ok(d) => {
                        outcomes.push(Ok(ready.len()));
                        ready.push(d);
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            // A failed model run fails the chunk's decoded items, each with the run's error.
            let run = self.run(model, &ready, Some(&batch_id));
            for (i, outcome) in outcomes.into_iter().enumerate() {
                let index = base + i;
                let result = match (outcome, &run) {
                    (Ok(slot), Ok(results)) => Ok(&results[slot]),
                    (Ok(_), Err(e)) => Err((e.code(), e.to_string())),
                    (Err(e), _) => Err((e.code(), e.to_string())),
                };
                let item = match result {
                    Ok(result) => {
                        successful += 1;
                        to_js(&BatchItem::Ok { index, result })?
                    }
                    Err((code, message)) => {
                        to_js(&BatchItem::Err { index, error: ItemError { code, message } })?
                    }
                };
                items.push(item.clone());
                if let Some(cb) = &on_progress {
                    let progress = Object::new();
                    set(&progress, "done", &items.len().into())?;
                    set(&progress, "total", &total.into())?;
                    set(&progress, "item", &item)?;
                    if cb.call1(&JsValue::NULL, &progress)? == JsValue::FALSE {
                        return Err(js_error("cancelled", "the batch was cancelled"));
                    }
                }
            }
        }
        let out = Object::new();
        set(&out, "batch_id", &batch_id.into())?;
        set(&out, "total_images", &total.into())?;
        set(&out, "successful", &successful.into())?;
        set(&out, "failed", &(total - successful).into())?;
        set(&out, "items", &items.into_iter().collect::<js_sys::Array>().into())?;
        set(&out, "total_ms", &round_ms(performance_now() - t0).into())?;
        Ok(out.into())
    }
}

impl Engine {
    /// The seed's first two checks, in its order: size, then format by magic bytes.
    fn format(&self, bytes: &[u8]) -> Result<Format, JsValue> {
        self.limits.check_size(bytes.len()).map_err(|e| core_error(&e))?;
        sniff(bytes).map_err(|e| core_error(&e))
    }

    fn model_info(&self, m: &LoadedModel) -> serde_json::Value {
        let manifest = m.manifest();
        let load_ms =
            self.load_ms.iter().find(|(id, _)| *id == manifest.id).map_or(0.0, |(_, ms)| *ms);
        let mut operators = std::collections::BTreeMap::<String, usize>::new();
        for op in m.plan_operators() {
            *operators.entry(op).or_default() += 1;
        }
        serde_json::json!({
            "model_id": manifest.id,
            "version": manifest.version,
            "name": manifest.name,
            "description": manifest.description,
            "disclaimer": manifest.disclaimer,
            "status": manifest.status,
            "labels": manifest.output.labels,
            "input_shape": manifest.input.shape,
            "sha256": m.sha256(),
            "default": self.registry.resolve(None).is_ok_and(|d| d.manifest().id == manifest.id),
            "load_ms": round_ms(load_ms),
            "matmul_kernels": m.matmul_kernels(),
            "operators": operators,
        })
    }

    /// Decodes one file (DICOM with this engine's key, so the patient is a pseudonym).
    fn decode(&self, bytes: &[u8], frame: Option<u32>) -> medinfer_core::Result<(Decoded, f64)> {
        let t0 = performance_now();
        let options = DecodeOptions { frame, window: None };
        let decoded = decode_keyed(bytes, &self.limits, &options, Some(&self.key))?;
        Ok((decoded, performance_now() - t0))
    }

    /// Runs `model` on decoded images (one tract run) and seals one result per image.
    fn run(
        &self,
        model: &LoadedModel,
        images: &[(Decoded, f64)],
        batch_id: Option<&str>,
    ) -> medinfer_core::Result<Vec<InferenceResult>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let decoded: Vec<&Image> = images.iter().map(|(d, _)| &d.image).collect();
        let predictions = predict(model, &decoded, decoded.len(), &PerfTimer)?;
        let mut out = Vec::with_capacity(images.len());
        for ((decoded, decode_ms), (prediction, mut t)) in images.iter().zip(predictions) {
            t.decode_ms = *decode_ms;
            t.total_ms += decode_ms;
            out.push(seal(model, decoded, prediction, t, batch_id)?);
        }
        Ok(out)
    }
}

/// The sealed InferenceResult for one decoded image (the server's shape).
fn seal(
    model: &LoadedModel,
    decoded: &Decoded,
    prediction: medinfer_core::Prediction,
    timing: medinfer_core::Timings,
    batch_id: Option<&str>,
) -> medinfer_core::Result<InferenceResult> {
    Ok(InferenceResult {
        inference_id: uuid_v4().map_err(|_| medinfer_core::Error::Inference {
            reason: "no secure random source".into(),
        })?,
        batch_id: batch_id.map(str::to_string),
        model_id: model.manifest().id.clone(),
        model_version: model.manifest().version.clone(),
        patient_id: decoded.patient_pseudonym.clone(),
        predictions: prediction.predictions,
        top_label: prediction.top_label,
        confidence_score: prediction.confidence_score,
        created_at: js_sys::Date::new_0().to_iso_string().as_string().unwrap_or_default(),
        timing_ms: round_timings(timing),
        record_hash: String::new(),
    }
    .seal())
}

fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &key.into(), value).map(|_| ())
}

fn round_ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn uuid_v4() -> Result<String, JsValue> {
    Ok(medinfer_core::uuid_v4(random_bytes::<16>()?))
}

/// Applies a window (in 0..255 units) to a PNG/JPEG image's display values.
fn window_raster(mut px: Pixels, w: Window) -> Pixels {
    let lo = (w.center - w.width / 2.0) / 255.0;
    let width = (w.width / 255.0).max(1e-6);
    for v in &mut px.data {
        *v = ((f64::from(*v) - lo) / width).clamp(0.0, 1.0) as f32;
    }
    px
}

/// Gray or RGB samples in 0..=1 → RGBA bytes.
fn to_rgba(px: &Pixels) -> Vec<u8> {
    let bytes = px.to_u8();
    let mut out = Vec::with_capacity(px.width as usize * px.height as usize * 4);
    if px.channels == 1 {
        for &g in &bytes {
            out.extend_from_slice(&[g, g, g, 255]);
        }
    } else {
        for rgb in bytes.chunks_exact(3) {
            out.extend_from_slice(&[rgb[0], rgb[1], rgb[2], 255]);
        }
    }
    out
}
