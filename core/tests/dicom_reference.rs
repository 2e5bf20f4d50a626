#![allow(clippy::unwrap_used)]
//! Every file of the shared DICOM set decodes to the shape, type and values pydicom (+pylibjpeg)
//! gives (`testdata/dicom/reference.json`, made by `make_reference.py`), or fails with the
//! intended error.
mod common;

use medinfer_core::{DicomImage, Frame, Image};
use serde_json::Value;

/// Transfer syntaxes whose decoders may legitimately differ (lossy JPEG / JPEG 2000: IDCT,
/// rounding and chroma upsampling differ between libjpeg/openjpeg and the Rust decoders).
const LOSSY: &[&str] =
    &["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91"];
const JPEG_LS: &[&str] = &["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

struct Stats {
    min: f64,
    max: f64,
    mean: f64,
}

fn stats(v: &[f32]) -> Stats {
    let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &x in v {
        let x = f64::from(x);
        min = min.min(x);
        max = max.max(x);
        sum += x;
    }
    Stats { min, max, mean: sum / v.len() as f64 }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("number expected, got {v}"))
}

fn frame_values(image: &DicomImage, frame: u32) -> Result<Frame, medinfer_core::Error> {
    image.frame(frame)
}

#[test]
fn every_shared_file_matches_pydicom() {
    let reference = common::reference();
    let files = reference["files"].as_object().unwrap();
    assert!(files.len() >= 30, "the reference covers the whole shared set");
    let mut checked = 0;
    for (name, r) in files {
        let bytes = common::dicom(name);
        let ts = r["transfer_syntax"].as_str().unwrap();
        let parsed = DicomImage::parse(&bytes);
        if !r["decodes"].as_bool().unwrap() {
            let err = parsed.and_then(|img| img.frame(0)).expect_err(name);
            assert_eq!(err.code(), "decode.dicom", "{name}: {err}");
            continue;
        }
        let image = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = image.info();
        assert_eq!(info.rows as u64, r["rows"].as_u64().unwrap(), "{name} rows");
        assert_eq!(info.columns as u64, r["cols"].as_u64().unwrap(), "{name} cols");
        assert_eq!(info.frames as u64, r["frames"].as_u64().unwrap(), "{name} frames");
        assert_eq!(
            u64::from(info.samples_per_pixel),
            r["samples"].as_u64().unwrap(),
            "{name} samples"
        );
        assert_eq!(
            u64::from(info.bits_allocated),
            r["bits_allocated"].as_u64().unwrap(),
            "{name} bits"
        );
        assert_eq!(info.signed, r["pixel_representation"].as_u64() == Some(1), "{name} sign");
        if JPEG_LS.contains(&ts) && !cfg!(feature = "jpeg-ls") {
            let err = image.frame(0).unwrap_err();
            assert_eq!(err.code(), "dicom.unsupported_transfer_syntax", "{name}");
            continue;
        }
        let lossy = LOSSY.contains(&ts);
        let frames = r["frames_stats"].as_array().unwrap();
        for (i, fr) in frames.iter().enumerate() {
            let frame =
                frame_values(&image, i as u32).unwrap_or_else(|e| panic!("{name} frame {i}: {e}"));
            let samples = if r["kind"] == "grayscale" { 1 } else { 3 };
            assert_eq!(frame.samples, samples, "{name}: samples after colour conversion");
            check_frame(name, i, &frame, fr, lossy, info.columns as usize);
            if let Some(display) = r.get("display_stats") {
                let px = frame.to_pixels(None);
                // What the model takes: a grayscale frame keeps its VOI stage pending, and
                // applying it gives the same display values.
                let image = frame.clone().into_image(None);
                assert_eq!(matches!(image, Image::Modality(_)), samples == 1, "{name}");
                assert!(*image.display() == px, "{name} frame {i}: Image::display");
                check_frame_pixels(
                    name,
                    i,
                    &px.data,
                    &display["frames_stats"][i],
                    info.columns as usize,
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 28, "decoded {checked} files");
}

fn check_frame(name: &str, i: usize, frame: &Frame, r: &Value, lossy: bool, cols: usize) {
    let c = usize::from(frame.samples);
    let rows = frame.rows as usize;
    let center = ((rows / 2) * cols + cols / 2) * c;
    compare_at(name, i, &frame.values, r, lossy, center);
}

fn check_frame_pixels(name: &str, i: usize, values: &[f32], r: &Value, cols: usize) {
    let rows = values.len() / cols;
    let center = (rows / 2) * cols + cols / 2;
    // Display values are in 0..1: compare with 1e-4 (f32 vs f64 arithmetic).
    let s = stats(values);
    assert!(
        (s.mean - num(&r["mean"])).abs() < 1e-4,
        "{name} display mean {} vs {}",
        s.mean,
        r["mean"]
    );
    for (k, e) in r["center"].as_array().unwrap().iter().enumerate() {
        assert!(
            (f64::from(values[center + k]) - num(e)).abs() < 1e-4,
            "{name} display center[{k}]"
        );
    }
    let _ = i;
}

fn compare_at(name: &str, i: usize, values: &[f32], r: &Value, lossy: bool, center: usize) {
    let s = stats(values);
    let ctx = format!("{name} frame {i}");
    assert_eq!(values.len() as u64, r["n"].as_u64().unwrap(), "{ctx}: sample count");
    let range = (num(&r["max"]) - num(&r["min"])).abs().max(1.0);
    let (tol_mean, tol_ext, tol_px) = if lossy {
        (0.01 * range, 0.08 * range, 0.10 * range)
    } else {
        (1e-6 * range + 1e-3, 1e-3, 1e-3)
    };
    assert!(
        (s.mean - num(&r["mean"])).abs() <= tol_mean,
        "{ctx}: mean {} vs {}",
        s.mean,
        r["mean"]
    );
    assert!((s.min - num(&r["min"])).abs() <= tol_ext, "{ctx}: min {} vs {}", s.min, r["min"]);
    assert!((s.max - num(&r["max"])).abs() <= tol_ext, "{ctx}: max {} vs {}", s.max, r["max"]);
    for (key, start) in [("head", 0usize), ("center", center)] {
        for (k, e) in r[key].as_array().unwrap().iter().enumerate() {
            let got = f64::from(values[start + k]);
            assert!((got - num(e)).abs() <= tol_px, "{ctx}: {key}[{k}] {got} vs {e}");
        }
    }
}

#[test]
fn lossless_pairs_decode_identically() {
    let decode =
        |name: &str| DicomImage::parse(&common::dicom(name)).unwrap().frame(0).unwrap().values;
    let mr = decode("MR_small.dcm");
    let mut others = vec![
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
    ];
    if cfg!(feature = "jpeg-ls") {
        others.push("MR_small_jpeg_ls_lossless.dcm");
    }
    for other in others {
        assert!(decode(other) == mr, "{other} differs from MR_small.dcm");
    }
    assert!(decode("693_J2KR.dcm") == decode("693_UNCR.dcm"), "693 J2KR differs from UNCR");
}

#[test]
fn truncated_and_cut_files_never_panic() {
    // Every file cut at a spread of lengths, and with bytes flipped: an error or a frame,
    // never a panic.
    for entry in std::fs::read_dir(common::root().join("testdata/dicom")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("dcm") {
            continue;
        }
        #[allow(clippy::disallowed_methods)]
        let bytes = std::fs::read(&path).unwrap();
        let lens = [0, 1, 131, 132, 200, 400, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1];
        for &len in &lens {
            let cut = &bytes[..len.min(bytes.len())];
            if let Ok(img) = DicomImage::parse(cut) {
                let _ = img.frame(0);
            }
        }
        let mut flipped = bytes.clone();
        for i in (300..flipped.len()).step_by(97) {
            flipped[i] ^= 0x5A;
        }
        if let Ok(img) = DicomImage::parse(&flipped) {
            let _ = img.frame(0);
        }
    }
}

#[test]
fn jpeg_12bit_matches_libjpeg_within_one() {
    // JPEG Extended, 12-bit (process 4), decoded by our own decoder: within ±1 of libjpeg
    // (pylibjpeg) everywhere the reference samples it — tighter than the generic lossy check.
    let reference = common::reference();
    let r = &reference["files"]["JPGExtended.dcm"]["frames_stats"][0];
    let frame = DicomImage::parse(&common::dicom("JPGExtended.dcm")).unwrap().frame(0).unwrap();
    let s = stats(&frame.values);
    assert!((s.mean - num(&r["mean"])).abs() < 0.05, "mean {} vs {}", s.mean, r["mean"]);
    assert!((s.min - num(&r["min"])).abs() <= 1.0 && (s.max - num(&r["max"])).abs() <= 1.0);
    let cols = frame.columns as usize;
    let center = (frame.rows as usize / 2) * cols + cols / 2;
    for (key, start) in [("head", 0), ("center", center)] {
        for (k, e) in r[key].as_array().unwrap().iter().enumerate() {
            assert!((f64::from(frame.values[start + k]) - num(e)).abs() <= 1.0, "{key}[{k}]");
        }
    }
}
