//! Fixtures by name from the one data folder (`testdata/`) and the shipped `models/`.
#![allow(clippy::disallowed_methods, dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn dicom(name: &str) -> Vec<u8> {
    std::fs::read(root().join("testdata/dicom").join(name)).expect("fixture")
}

pub fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("testdata/dicom/reference.json"))
        .expect("reference.json");
    serde_json::from_str(&text).expect("reference json")
}

pub fn load_model(id: &str) -> medinfer_core::LoadedModel {
    let dir = root().join("models").join(id);
    let manifest = std::fs::read_to_string(dir.join("model.toml")).expect("manifest");
    let onnx = std::fs::read(dir.join("model.onnx")).expect("onnx");
    let manifest = medinfer_core::ModelManifest::from_toml(&manifest).expect("valid manifest");
    medinfer_core::LoadedModel::load(manifest, &onnx).expect("model loads")
}

pub fn f32_file(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(root().join(path)).expect("f32 fixture");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn detector() -> &'static medinfer_core::deid::TextDetector {
    static DETECTOR: std::sync::OnceLock<medinfer_core::deid::TextDetector> =
        std::sync::OnceLock::new();
    DETECTOR.get_or_init(|| {
        let onnx = std::fs::read(root().join("models/text-detector/ch_PP-OCRv4_det_infer.onnx"))
            .expect("detector");
        medinfer_core::deid::TextDetector::load(&onnx).expect("detector loads")
    })
}
