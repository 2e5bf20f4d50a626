#![allow(clippy::unwrap_used)]
//! The `medinfer` binary end to end on real files.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn medinfer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medinfer"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("medinfer runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const CHEST: &str = "testdata/dicom/RG1_chest_mono1_uncompressed_s4_DERIVED.dcm";

#[test]
fn infer_a_chest_xray_as_json_matches_the_library() {
    let (code, out, err) = medinfer(&["infer", "--json", "--model", "mobilenetv2-chexnet", CHEST]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &rows[0];
    assert_eq!(row["model_id"], "mobilenetv2-chexnet");
    let preds = row["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 14);
    assert!(preds.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    assert_eq!(row["top_label"], preds[0]["label"]);

    // Same numbers as the library computes directly.
    let bytes = std::fs::read(root().join(CHEST)).unwrap();
    let dir = root().join("models/mobilenetv2-chexnet");
    let manifest = medinfer_core::ModelManifest::from_toml(
        &std::fs::read_to_string(dir.join("model.toml")).unwrap(),
    )
    .unwrap();
    let model =
        medinfer_core::LoadedModel::load(manifest, &std::fs::read(dir.join("model.onnx")).unwrap())
            .unwrap();
    let (_, p, _) = medinfer_core::infer_bytes(
        &model,
        &bytes,
        &Default::default(),
        &Default::default(),
        &medinfer_core::NoTimer,
    )
    .unwrap();
    for s in &p.predictions {
        let cli = preds.iter().find(|x| x["label"] == s.label.as_str()).unwrap()["score"]
            .as_f64()
            .unwrap();
        assert!((cli - f64::from(s.score)).abs() < 1e-6, "{}", s.label);
    }
}

#[test]
fn a_folder_with_bad_files_reports_each_and_finishes_the_rest() {
    let dir = std::env::temp_dir().join(format!("medinfer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join(CHEST), dir.join("a_chest.dcm")).unwrap();
    std::fs::copy(root().join("testdata/dicom/MR_truncated.dcm"), dir.join("b_truncated.dcm"))
        .unwrap();
    std::fs::write(dir.join("c_notes.png"), b"this is text, not a PNG").unwrap();
    std::fs::copy(root().join("testdata/dicom/CT_small.dcm"), dir.join("d_small_ct.dcm")).unwrap();
    let (code, out, _) =
        medinfer(&["infer", "--json", "--model", "mobilenetv2-chexnet", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 1, "a failed file makes the exit code 1");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows[0]["top_label"].is_string());
    assert_eq!(rows[1]["error"]["code"], "decode.dicom");
    assert_eq!(rows[2]["error"]["code"], "input.unsupported_format");
    assert!(rows[3]["top_label"].is_string(), "files after a failure still finish");
}

#[test]
fn inspect_and_table_output_never_show_phi() {
    // Fake PHI that this file's header carries (PatientName, PatientID, InstitutionName,
    // AccessionNumber).
    let phi = ["CompressedSamples", "9RG1", "Hamburg", "exam Number"];
    let (code, out, err) = medinfer(&["inspect", CHEST]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MONOCHROME1") && out.contains("1.2.840.10008.1.2.1"), "{out}");
    let (code, table, _) = medinfer(&["infer", "--model", "mobilenetv2-chexnet", CHEST]);
    assert_eq!(code, 0);
    for text in [&out, &table] {
        for p in phi {
            assert!(!text.contains(p), "PHI {p:?} in output:\n{text}");
        }
    }
}

#[test]
fn models_lists_both_bundled_models() {
    let (code, out, err) = medinfer(&["models", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["densenet121-chexnet", "mobilenetv2-chexnet"]);
    assert_eq!(rows[0]["output_shape"], serde_json::json!(["N", "14"]));
}

/// The first `medinfer models` writes each model's plan form to `$MEDINFER_PLANS`, the
/// second loads from it (on x86-64, where both bundled graphs have one) and reports the same
/// models; `off` keeps nothing.
#[test]
fn models_load_from_their_plan_forms_the_second_time() {
    let plans = std::env::temp_dir().join(format!("medinfer-cli-plans-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&plans);
    let run = |dir: &std::ffi::OsStr| {
        let out = Command::new(env!("CARGO_BIN_EXE_medinfer"))
            .args(["models", "--json"])
            .env("MEDINFER_PLANS", dir)
            .current_dir(root())
            .output()
            .expect("medinfer runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().clone()
    };
    let notes = |rows: &[serde_json::Value]| -> Vec<String> {
        rows.iter().map(|r| r["plan_form"].as_str().unwrap_or("").to_string()).collect()
    };
    let first = run(plans.as_os_str());
    let second = run(plans.as_os_str());
    if cfg!(target_arch = "x86_64") {
        assert_eq!(notes(&first), ["plan form written"; 2]);
        assert_eq!(notes(&second), ["loaded from its plan form"; 2]);
        for id in ["densenet121-chexnet", "mobilenetv2-chexnet"] {
            assert!(plans.join(format!("{id}.plan")).is_file(), "{id}");
        }
    }
    for (a, b) in first.iter().zip(&second) {
        for field in ["model_id", "sha256", "output_shape", "labels"] {
            assert_eq!(a[field], b[field], "{field}");
        }
    }
    assert_eq!(notes(&run("off".as_ref())), ["", ""]);
    std::fs::remove_dir_all(&plans).unwrap();
}

#[test]
fn deid_a_folder_keeps_the_tree_and_skips_bad_files() {
    let base = std::env::temp_dir().join(format!("medinfer-deid-cli-{}", std::process::id()));
    let (input, output) = (base.join("in"), base.join("out"));
    std::fs::create_dir_all(input.join("study/series")).unwrap();
    std::fs::copy(root().join("testdata/dicom/CT_small.dcm"), input.join("study/series/ct.dcm"))
        .unwrap();
    std::fs::copy(root().join("testdata/dicom/GREYSCALE_IMAGE.dcm"), input.join("study/us.dcm"))
        .unwrap();
    std::fs::copy(root().join("testdata/dicom/MR_truncated.dcm"), input.join("broken.dcm"))
        .unwrap();
    let key = base.join("key");
    std::fs::write(&key, "a-test-secret-of-enough-length\n").unwrap();
    let (code, _, err) = medinfer(&[
        "deid",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "one bad file: exit 1 ({err})");
    assert!(output.join("study/series/ct.dcm").is_file() && output.join("study/us.dcm").is_file());
    assert!(!output.join("broken.dcm").exists(), "no half-written output for a failed file");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("deid-report.json")).unwrap())
            .unwrap();
    assert_eq!((report["deidentified"].as_u64(), report["failed"].as_u64()), (Some(2), Some(1)));
    let us = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file"].as_str().unwrap().ends_with("us.dcm"))
        .unwrap();
    assert_eq!(us["report"]["pixel_cleaning"], "applied");
    assert!(us["report"]["redactions"].as_array().unwrap().len() >= 10);
    // The report never carries the removed values.
    let text = std::fs::read_to_string(output.join("deid-report.json")).unwrap();
    for phi in ["CompressedSamples", "ZZZ TEST", "TEST PATIENT"] {
        assert!(!text.contains(phi), "{phi} in the report");
    }
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn bench_reports_every_model() {
    let (code, out, err) = medinfer(&["bench", "--iterations", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    for r in rows.as_array().unwrap() {
        let (p50, min) =
            (r["total_ms"]["median"].as_f64().unwrap(), r["total_ms"]["min"].as_f64().unwrap());
        assert!(p50 >= min && min > 0.0, "{r}");
        assert!(r["load_ms"].as_f64().unwrap() > 0.0);
    }
}

/// `--backend gpu` (the wgpu executor; Mesa's lavapipe in CI) gives the CPU's predictions on a
/// batch of real files, says so in each row, and reports where the nodes ran; `auto` declines
/// a software adapter.
#[test]
fn infer_on_the_gpu_backend_matches_the_cpu() {
    let files = [CHEST, "testdata/dicom/CT_small.dcm", "testdata/dicom/MR_small.dcm"];
    let run = |backend: &str| {
        let mut args = vec!["infer", "--json", "--batch", "3", "--model", "mobilenetv2-chexnet"];
        args.extend(["--backend", backend]);
        args.extend(files);
        let (code, out, err) = medinfer(&args);
        assert_eq!(code, 0, "{backend}: {err}");
        (serde_json::from_str::<serde_json::Value>(&out).unwrap(), err)
    };
    let (cpu, cpu_err) = run("cpu");
    let (gpu, gpu_err) = run("gpu");
    assert!(cpu_err.contains("backend: cpu (tract)"), "{cpu_err}");
    assert!(gpu_err.contains("backend: gpu ("), "{gpu_err}");
    assert!(gpu_err.contains("mobilenetv2-chexnet 171 nodes on the GPU"), "{gpu_err}");
    assert!(!gpu_err.contains("on the CPU"), "{gpu_err}");
    let mut max = 0f64;
    for (c, g) in cpu.as_array().unwrap().iter().zip(gpu.as_array().unwrap()) {
        assert_eq!(c["backend"], "cpu");
        assert_eq!(g["backend"], "gpu");
        assert_eq!(c["file"], g["file"]);
        let score = |row: &serde_json::Value, label: &str| {
            row["predictions"].as_array().unwrap().iter().find(|p| p["label"] == label).unwrap()["score"]
                .as_f64()
                .unwrap()
        };
        for p in c["predictions"].as_array().unwrap() {
            let label = p["label"].as_str().unwrap();
            max = max.max((score(c, label) - score(g, label)).abs());
        }
    }
    println!("max |gpu - cpu| score over {} files: {max:.2e}", files.len());
    assert!(max <= 1e-3, "scores differ by {max}");

    let (_, auto_err) = run("auto");
    // lavapipe (CI) is a software adapter: auto keeps the CPU; with a hardware GPU it takes it.
    let software = gpu_err.contains("llvmpipe") || gpu_err.contains("SwiftShader");
    if software {
        assert!(auto_err.contains("backend: cpu (the only GPU adapter"), "{auto_err}");
    } else {
        assert!(auto_err.contains("backend: gpu ("), "{auto_err}");
    }
}
