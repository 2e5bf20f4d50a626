//! Preprocessing on the GPU (a grayscale frame's VOI stage, resize with core's filter
//! weights, channel conversion, letterbox, normalisation, layout) against core's CPU path
//! (`Image::display` then `preprocess_into`), image by image and in a batch of differently
//! sized images; and a real model fed from decoded DICOM files through the GPU path against
//! the CPU pipeline. Tolerance: max |Δ| ≤ 1e-4 × max |reference|.

#![allow(clippy::disallowed_methods)]

mod common;

use common::{Rng, diff, gpu};
use medinfer_core::preprocess::preprocess_into;
use medinfer_core::{Image, Modality, ModelManifest, Pixels, Voi, VoiFunction, Window};
use medinfer_gpu::{GpuModel, block_on};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math;

fn manifest(
    channels: u32,
    h: u32,
    w: u32,
    layout: &str,
    resize: &str,
    scale: f32,
) -> ModelManifest {
    let shape = if layout == "NCHW" {
        format!("[\"N\", {channels}, {h}, {w}]")
    } else {
        format!("[\"N\", {h}, {w}, {channels}]")
    };
    let (mean, std) = if channels == 3 {
        ("[0.485, 0.456, 0.406]", "[0.229, 0.224, 0.225]")
    } else {
        ("[0.5, 0.0, 0.0]", "[0.25, 1.0, 1.0]")
    };
    ModelManifest::from_toml(&format!(
        r#"
id = "prep"
version = "1"
status = "development"
name = "preprocessing probe"
file = "model.onnx"
sha256 = "{zeros}"
[input]
name = "input"
shape = {shape}
layout = "{layout}"
[preprocess]
scale = {scale:?}
mean = {mean}
std = {std}
resize = "{resize}"
[output]
name = "output"
activation = "identity"
labels = ["a"]
"#,
        zeros = "0".repeat(64)
    ))
    .expect("manifest")
}

/// A model whose output is its input (+0), so the run returns what preprocessing wrote.
fn identity(shape: &[usize]) -> TypedModel {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).expect("source");
    let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(shape.len()).expect("rank"));
    let y = m.wire_node("add", math::add(), &[x, zero.expect("const")]).expect("add")[0];
    m.select_output_outlets(&[y]).expect("outputs");
    m
}

fn image(rng: &mut Rng, w: u32, h: u32, c: u8) -> Image {
    let data = (0..w * h * u32::from(c)).map(|_| rng.f() * 0.5 + 0.5).collect();
    Image::Display(Pixels { width: w, height: h, channels: c, data })
}

/// A grayscale frame of CT-like modality values (-1200..3000 HU) with a VOI stage pending.
fn modality(
    rng: &mut Rng,
    w: u32,
    h: u32,
    function: VoiFunction,
    window: Window,
    invert: bool,
) -> Image {
    let values = (0..w * h).map(|_| rng.f() * 2100.0 + 900.0).collect();
    Image::Modality(Modality { width: w, height: h, values, voi: Voi { window, function, invert } })
}

fn check(what: &str, manifest: &ModelManifest, images: &[&Image]) {
    let spec = &manifest.input;
    let per = (spec.channels() * spec.height() * spec.width()) as usize;
    let mut shape = vec![images.len()];
    shape.extend(
        match spec.layout {
            medinfer_core::Layout::Nchw => [spec.channels(), spec.height(), spec.width()],
            medinfer_core::Layout::Nhwc => [spec.height(), spec.width(), spec.channels()],
        }
        .map(|d| d as usize),
    );
    let plan = GpuModel::new(gpu(), &identity(&shape)).expect("plan");
    let got = block_on(plan.run_images(images, manifest)).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut expected = vec![0f32; per * images.len()];
    for (image, out) in images.iter().zip(expected.chunks_exact_mut(per)) {
        preprocess_into(&image.display(), manifest, out);
    }
    let expected = Tensor::from_shape(&shape, &expected).expect("shape");
    let (d, r) = diff(&got[0], &expected);
    assert!(d <= 1e-4 * r, "{what}: max |Δ| {d:e} vs max |ref| {r:e}");
}

#[test]
fn preprocessing_on_the_gpu_matches_core() {
    let mut rng = Rng::new(11);
    let gray_big = image(&mut rng, 517, 300, 1);
    let rgb_small = image(&mut rng, 100, 61, 3);
    let rgb_tiny = image(&mut rng, 31, 17, 3);
    let gray_exact = image(&mut rng, 64, 48, 1);
    let imagenet = manifest(3, 224, 224, "NCHW", "stretch", 1.0);
    check("gray 517×300 → RGB 224² NCHW stretch", &imagenet, &[&gray_big]);
    check("RGB 100×61 → RGB 224² (upscale)", &imagenet, &[&rgb_small]);
    let gray_nhwc = manifest(1, 48, 64, "NHWC", "letterbox", 255.0);
    check("RGB → gray 64×48 NHWC letterbox ×255", &gray_nhwc, &[&rgb_small]);
    check("gray at the input size (no resize)", &gray_nhwc, &[&gray_exact]);
    let boxed = manifest(3, 50, 40, "NCHW", "letterbox", 1.0);
    check("RGB 31×17 → 40×50 letterbox (upscale, bars)", &boxed, &[&rgb_tiny]);
    // A batch of different sizes and channel counts: each image lands at its own offset, and
    // the scratch buffers reused between images never leak one into the next.
    check("batch of 4", &imagenet, &[&gray_big, &rgb_small, &rgb_tiny, &gray_exact]);
}

/// The VOI stage on the GPU, before resampling: every function, narrow windows that clamp most
/// samples (applying the window after the filter would differ), a width-1 step, MONOCHROME1
/// inversion, and a batch mixing windowed frames with display images.
#[test]
fn dicom_windowing_on_the_gpu_matches_core() {
    let mut rng = Rng::new(23);
    let brain = Window { center: 40.0, width: 80.0 };
    let bone = Window { center: 500.0, width: 2000.0 };
    let step = Window { center: 0.5, width: 1.0 };
    let imagenet = manifest(3, 224, 224, "NCHW", "stretch", 1.0);
    let gray = manifest(1, 64, 64, "NHWC", "letterbox", 255.0);
    let cases = [
        ("linear, brain window", VoiFunction::Linear, brain, false),
        ("linear, bone window, MONOCHROME1", VoiFunction::Linear, bone, true),
        ("linear, width-1 step", VoiFunction::Linear, step, false),
        ("linear exact", VoiFunction::LinearExact, brain, false),
        ("sigmoid, MONOCHROME1", VoiFunction::Sigmoid, bone, true),
    ];
    let mut frames = vec![];
    for (what, function, window, invert) in cases {
        let frame = modality(&mut rng, 300, 217, function, window, invert);
        check(&format!("{what} → RGB 224² (downscale)"), &imagenet, &[&frame]);
        check(&format!("{what} → gray 64² letterbox ×255"), &gray, &[&frame]);
        frames.push(frame);
    }
    let small = modality(&mut rng, 40, 23, VoiFunction::Linear, brain, false);
    check("linear → RGB 224² (upscale)", &imagenet, &[&small]);
    let rgb = image(&mut rng, 100, 61, 3);
    check("batch: windowed, display, windowed", &imagenet, &[&frames[0], &rgb, &frames[4]]);
}

/// Real files end to end: DICOM decoded by core, then MobileNetV2 with windowing and
/// preprocessing on the GPU
/// vs the CPU pipeline (tract's plan, CPU preprocessing).
#[test]
fn mobilenet_on_decoded_dicom_through_gpu_windowing_and_preprocessing_matches_the_cpu() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("models/mobilenetv2-chexnet");
    let toml = std::fs::read_to_string(dir.join("model.toml")).expect("manifest");
    let onnx = std::fs::read(dir.join("model.onnx")).expect("onnx");
    let manifest = ModelManifest::from_toml(&toml).expect("manifest");
    let model = medinfer_core::LoadedModel::load(manifest, &onnx).expect("load");
    let limits = medinfer_core::Limits::default();
    let mut images = vec![];
    // Grayscale frames (windowed on the GPU: a CT, an MR, MONOCHROME1 chest CR) and colour.
    let files = ["CT_small.dcm", "MR_small.dcm", "693_J2KR.dcm", "RG1_J2KI.dcm", "US1_J2KI.dcm"];
    for name in files {
        let bytes = std::fs::read(root.join("testdata/dicom").join(name)).expect("dicom");
        let decoded = medinfer_core::decode(&bytes, &limits, &Default::default()).expect("decode");
        let grayscale = decoded.image.channels() == 1;
        assert_eq!(matches!(decoded.image, Image::Modality(_)), grayscale, "{name}");
        images.push(decoded.image);
    }
    let n = images.len();
    let refs: Vec<&Image> = images.iter().collect();
    let cpu = medinfer_core::predict(&model, &refs, n, &medinfer_core::NoTimer).expect("cpu");
    let plan = GpuModel::new(gpu(), &model.typed_for_batch(n).expect("typed")).expect("plan");
    let out = block_on(plan.run_images(&refs, model.manifest())).expect("gpu");
    let raw = out[0].to_plain_array_view::<f32>().expect("f32");
    let raw: Vec<f32> = raw.iter().copied().collect();
    let mut max = 0f32;
    for (i, (prediction, _)) in cpu.iter().enumerate() {
        let gpu_prediction = model.postprocess(&raw[i * 14..(i + 1) * 14]);
        for a in &prediction.predictions {
            let b = gpu_prediction.predictions.iter().find(|s| s.label == a.label).expect("label");
            max = max.max((a.score - b.score).abs());
        }
    }
    println!(
        "MobileNetV2, {n} DICOM files, GPU windowing/preprocessing + GPU run vs CPU: max |Δ| {max:.2e}"
    );
    assert!(max <= 1e-3, "max |Δ| {max}");
}
