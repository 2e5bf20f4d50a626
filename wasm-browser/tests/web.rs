//! The browser API, tested in Chromium (`wasm-bindgen-test-runner` through chromedriver;
//! `cargo xtask web-test`). Every value crosses the real JS boundary: results are read back
//! from the JS objects the page would get.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#![allow(clippy::unwrap_used)]

use js_sys::{Array, Function, Reflect, Uint8Array};
use medinfer_browser::Engine;
use medinfer_core::deid::DeidKey;
use medinfer_core::{DecodeOptions, InferenceResult, Limits, LoadedModel, ModelManifest};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const MANIFEST: &str = include_str!("../../models/mobilenetv2-chexnet/model.toml");
const ONNX: &[u8] = include_bytes!("../../models/mobilenetv2-chexnet/model.onnx");
const CT: &[u8] = include_bytes!("../../testdata/dicom/CT_small.dcm");
const TRUNCATED: &[u8] = include_bytes!("../../testdata/dicom/MR_truncated.dcm");
/// CT_small's patient, as pydicom reads it (testdata/dicom/manifest.json).
const PHI: &[&str] = &["CompressedSamples^CT1", "1CT1"];

fn engine(key: Option<&[u8]>) -> Engine {
    let options = match key {
        Some(k) => {
            let o = js_sys::Object::new();
            Reflect::set(&o, &"deidKey".into(), &Uint8Array::from(k).into()).unwrap();
            o.into()
        }
        None => JsValue::UNDEFINED,
    };
    let mut e = Engine::new(options).unwrap();
    e.load_model(MANIFEST, ONNX).unwrap();
    e
}

fn png(width: u32, height: u32) -> Vec<u8> {
    use medinfer_core::image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
    let pixels: Vec<u8> = (0..width * height).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(&pixels, width, height, ExtendedColorType::L8).unwrap();
    out
}

fn code(e: JsValue) -> String {
    assert_eq!(Reflect::get(&e, &"name".into()).unwrap().as_string().unwrap(), "MedinferError");
    Reflect::get(&e, &"code".into()).unwrap().as_string().unwrap()
}

fn json(v: &JsValue) -> String {
    js_sys::JSON::stringify(v).unwrap().as_string().unwrap()
}

fn result(v: &JsValue) -> InferenceResult {
    serde_json::from_str(&json(v)).unwrap()
}

#[wasm_bindgen_test]
fn infer_returns_the_servers_result_and_matches_core() {
    let e = engine(None);
    let image = png(300, 200);
    let got = result(&e.infer(&image, JsValue::UNDEFINED).unwrap());
    // The oracle: core on the same bytes without the JS layer.
    let model = LoadedModel::load(ModelManifest::from_toml(MANIFEST).unwrap(), ONNX).unwrap();
    let (_, want, _) = medinfer_core::infer_bytes(
        &model,
        &image,
        &Limits::default(),
        &DecodeOptions::default(),
        &medinfer_core::NoTimer,
    )
    .unwrap();
    assert_eq!(got.model_id, "mobilenetv2-chexnet");
    assert_eq!(got.predictions.len(), want.predictions.len());
    for (g, w) in got.predictions.iter().zip(&want.predictions) {
        assert_eq!(g.label, w.label);
        assert!((g.score - w.score).abs() <= 1e-6, "{}: {} vs {}", g.label, g.score, w.score);
    }
    assert!(got.predictions.windows(2).all(|p| p[0].score >= p[1].score), "sorted");
    assert_eq!(got.top_label, got.predictions[0].label);
    assert_eq!(got.record_hash, got.compute_hash());
    assert_eq!(got.patient_id, None, "a PNG names no patient");
    assert!(got.timing_ms.total_ms > 0.0 && got.timing_ms.infer_ms > 0.0);
    assert_eq!(got.inference_id.len(), 36);
}

#[wasm_bindgen_test]
fn dicom_patients_become_keyed_pseudonyms() {
    let key = b"0123456789abcdef-browser-test-key";
    let e = engine(Some(key));
    let got = e.infer(CT, JsValue::UNDEFINED).unwrap();
    let text = json(&got);
    for phi in PHI {
        assert!(!text.contains(phi), "the result carries no PHI");
    }
    let expected = DeidKey::new(key).unwrap().pseudonym("1CT1");
    assert_eq!(result(&got).patient_id.as_deref(), Some(expected.as_str()));
    // Without a key, a random per-engine key: still a pseudonym, never the identifier.
    let other = result(&engine(None).infer(CT, JsValue::UNDEFINED).unwrap());
    let id = other.patient_id.unwrap();
    assert!(DeidKey::is_pseudonym(&id) && id != expected);
}

#[wasm_bindgen_test]
fn errors_carry_the_servers_codes() {
    let mut e = engine(None);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (png(10_000, 64), "input.dimensions"),
        (b"Patient notes: nothing to see here".to_vec(), "input.unsupported_format"),
        (TRUNCATED.to_vec(), "decode.dicom"),
        (Vec::new(), "input.empty"),
    ];
    for (bytes, want) in cases {
        assert_eq!(code(e.infer(&bytes, JsValue::UNDEFINED).unwrap_err()), want);
    }
    let unknown = js_sys::JSON::parse(r#"{"modelId":"no-such-model"}"#).unwrap();
    assert_eq!(code(e.infer(CT, unknown).unwrap_err()), "model.not_found");
    let bad = js_sys::JSON::parse(r#"{"modelID":"typo"}"#).unwrap();
    assert_eq!(code(e.infer(CT, bad).unwrap_err()), "input.options");
    assert_eq!(code(e.load_model(MANIFEST, &ONNX[..1000]).unwrap_err()), "model.checksum_mismatch");
    assert_eq!(
        code(e.deidentify(&png(100, 100), JsValue::UNDEFINED).unwrap_err()),
        "input.unsupported_format"
    );
}

#[wasm_bindgen_test]
fn inspect_describes_structure_only() {
    let e = engine(None);
    let info = e.inspect(CT).unwrap();
    let text = json(&info);
    for phi in PHI {
        assert!(!text.contains(phi));
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "dicom");
    assert_eq!(v["dicom"]["transfer_syntax"], "1.2.840.10008.1.2.1");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(128), Some(128)));
}

#[wasm_bindgen_test]
fn render_applies_the_window() {
    let e = engine(None);
    let get = |v: &JsValue, k: &str| Reflect::get(v, &k.into()).unwrap();
    let default = e.render(CT, JsValue::UNDEFINED).unwrap();
    assert_eq!(get(&default, "width").as_f64(), Some(128.0));
    let rgba = js_sys::Uint8ClampedArray::from(get(&default, "rgba")).to_vec();
    assert_eq!(rgba.len(), 128 * 128 * 4);
    let distinct: std::collections::BTreeSet<u8> = rgba.iter().step_by(4).copied().collect();
    assert!(distinct.len() > 32, "a real image, not a flat one");
    let narrow = js_sys::JSON::parse(r#"{"window":{"center":40,"width":80}}"#).unwrap();
    let windowed = e.render(CT, narrow).unwrap();
    let rgba2 = js_sys::Uint8ClampedArray::from(get(&windowed, "rgba")).to_vec();
    assert_ne!(rgba, rgba2);
    assert_eq!(json(&get(&windowed, "window")), r#"{"center":40,"width":80}"#);
}

#[wasm_bindgen_test]
fn deidentify_returns_a_new_file_and_the_report() {
    let e = engine(None);
    let out = e.deidentify(CT, JsValue::UNDEFINED).unwrap();
    let bytes = Uint8Array::from(Reflect::get(&out, &"bytes".into()).unwrap()).to_vec();
    let report: serde_json::Value =
        serde_json::from_str(&json(&Reflect::get(&out, &"report".into()).unwrap())).unwrap();
    for phi in PHI {
        assert!(!bytes.windows(phi.len()).any(|w| w == phi.as_bytes()), "{phi} left in the file");
    }
    let image = medinfer_core::DicomImage::parse(&bytes).unwrap();
    let id = image.object().element(dicom_dictionary_std::tags::PATIENT_ID).unwrap();
    assert_eq!(id.to_str().unwrap().trim(), report["patient_pseudonym"].as_str().unwrap());
    assert_eq!(report["pixel_cleaning"], "not_required");
    assert!(report["attributes"].as_array().unwrap().len() > 10);
}

#[wasm_bindgen_test]
fn batches_keep_order_isolate_errors_and_can_be_cancelled() {
    let e = engine(None);
    let files: Vec<Uint8Array> =
        [CT, TRUNCATED, &png(256, 256)[..]].iter().map(|b| Uint8Array::from(*b)).collect();
    let seen = Array::new();
    let record = Function::new_with_args("seen", "return (p) => { seen.push(p.done); }")
        .call1(&JsValue::NULL, &seen)
        .unwrap();
    let opts = js_sys::JSON::parse(r#"{"chunk":2}"#).unwrap();
    let out = e.infer_batch(files.clone(), opts, Some(record.into())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json(&out)).unwrap();
    assert_eq!(
        (v["total_images"].as_u64(), v["successful"].as_u64(), v["failed"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.iter().map(|i| i["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(items[1]["error"]["code"], "decode.dicom");
    assert_eq!(items[0]["batch_id"], v["batch_id"]);
    assert_eq!(seen.length(), 3);
    // The single-image path gives the same scores as the batch (chunks of 2 run batch plans).
    let single = result(&e.infer(CT, JsValue::UNDEFINED).unwrap());
    let first: InferenceResult = serde_json::from_value(items[0].clone()).unwrap();
    for a in &single.predictions {
        let b = first.predictions.iter().find(|b| b.label == a.label).unwrap();
        assert!((a.score - b.score).abs() <= 1e-4, "{}: {} vs {}", a.label, a.score, b.score);
    }
    let stop = Function::new_no_args("return false");
    let err = e.infer_batch(files, JsValue::UNDEFINED, Some(stop)).unwrap_err();
    assert_eq!(code(err), "cancelled");
}

/// WebGPU (Chromium's SwiftShader with --enable-unsafe-webgpu, see webdriver.json):
/// `useGpu("gpu")` plans MobileNetV2 with every node on the GPU, and `inferAsync` there
/// matches the CPU path (`infer`) within 1e-3 with the same sealed result shape.
#[wasm_bindgen_test]
async fn webgpu_runs_the_model_with_parity() {
    use wasm_bindgen_futures::JsFuture;
    let e = engine(None);
    let info = JsFuture::from(e.use_gpu("gpu")).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&json(&info)).unwrap();
    assert_eq!(info["backend"], "gpu", "{info}");
    assert_eq!(info["models"][0]["cpu_ops"], serde_json::json!([]), "{info}");
    assert!(info["models"][0]["gpu_nodes"].as_u64().unwrap() > 100, "{info}");
    assert_eq!(e.backend(), "gpu");

    let cpu = result(&e.infer(CT, JsValue::UNDEFINED).unwrap());
    let gpu = result(&JsFuture::from(e.infer_async(CT, JsValue::UNDEFINED)).await.unwrap());
    assert_eq!(gpu.record_hash, gpu.compute_hash());
    assert_eq!(gpu.patient_id, cpu.patient_id);
    let mut worst = 0f32;
    for p in &cpu.predictions {
        let g = gpu.predictions.iter().find(|q| q.label == p.label).unwrap();
        worst = worst.max((g.score - p.score).abs());
    }
    assert!(worst <= 1e-3, "WebGPU vs CPU: {worst}");

    // Errors keep their codes on the async path; "cpu" switches back; a typo is refused.
    let bad = JsFuture::from(e.infer_async(&[1, 2, 3], JsValue::UNDEFINED)).await.unwrap_err();
    assert_eq!(code(bad), "input.unsupported_format");
    JsFuture::from(e.use_gpu("cpu")).await.unwrap();
    assert_eq!(e.backend(), "cpu");
    assert_eq!(code(JsFuture::from(e.use_gpu("gpus")).await.unwrap_err()), "input.options");
}
