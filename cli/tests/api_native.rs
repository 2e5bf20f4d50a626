#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API conformance suite against the native server (`medinfer serve` over redb), plus
//! what only the native server has: the seed's examples, restart, graceful shutdown.

mod api;

use std::process::Command;
use std::sync::OnceLock;

use api::harness::{Server, Target, temp_dir};
use serde_json::json;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(Target::Native, &temp_dir("native"), &api::settings()))
}

conformance_tests!(server);

#[test]
fn public_key_tokens_and_key_confusion() {
    api::public_key_tokens_and_key_confusion(Target::Native);
}

/// `serve --backend gpu` (lavapipe in CI): the models run on the wgpu executor, preprocessing
/// included, and answer as the CPU oracle does.
#[test]
fn the_server_runs_the_models_on_the_gpu_backend() {
    let server = Server::start_with(
        Target::Native,
        &temp_dir("gpu"),
        &api::settings(),
        &["--backend", "gpu"],
    );
    let c = server.client();
    let op = api::bearer("operator");
    let dicom = api::file(api::CHEST);
    let png = api::chest_raster(medinfer_core::image::ImageFormat::Png);
    let mut max = 0f64;
    for (content_type, bytes) in [("application/dicom", &dicom), ("image/png", &png)] {
        let r = c.post(&format!("/infer?model_id={}", api::FAST), content_type, bytes, Some(&op));
        assert_eq!(r.status, 200, "{content_type}: {}", r.text());
        let got = r.json()["predictions"].as_object().unwrap().clone();
        let expected = api::oracle(bytes, api::FAST);
        assert_eq!(got.len(), expected.len());
        for (label, score) in &expected {
            max = max.max((got[label].as_f64().unwrap() - score).abs());
        }
    }
    println!("serve --backend gpu vs the CPU oracle: max |Δ| {max:.2e}");
    assert!(max <= 1e-3, "max |Δ| {max}");
    let log = server.log();
    assert!(log.contains("backend: gpu"), "{log}");
}

/// The seed's Python example (50 chest X-rays, batch with priority, results by batch_id)
/// and its curl example, verbatim apart from URL and token, against default limits.
#[test]
fn the_seed_examples_work() {
    let dir = temp_dir("seed");
    let server = Server::start(
        Target::Native,
        &dir.join("data"),
        &[("jwt_hs256_secret", api::SECRET.into()), ("deid_key", api::DEID_KEY.into())],
    );
    let token = medinfer_service::auth::mint_hs256(
        api::SECRET.as_bytes(),
        "seed",
        "operator",
        3600,
        api::now(),
        None,
        None,
    )
    .unwrap();
    // 50 distinct real images: crops of the chest radiograph, and xray.png at 512².
    let png = api::chest_raster(medinfer_core::image::ImageFormat::Png);
    let base = medinfer_core::image::load_from_memory(&png).unwrap().to_luma8();
    for i in 0..50u32 {
        let crop = medinfer_core::image::imageops::crop_imm(&base, i, i / 2, 200, 200).to_image();
        crop.save(dir.join(format!("xray_{i}.png"))).unwrap();
    }
    medinfer_core::image::imageops::resize(
        &base,
        512,
        512,
        medinfer_core::image::imageops::FilterType::Triangle,
    )
    .save(dir.join("xray.png"))
    .unwrap();

    let script = std::fs::read_to_string(api::root().join("testdata/seed/batch_50.py"))
        .unwrap()
        .replace("http://127.0.0.1:8000", &server.url)
        .replace("your_jwt_token_here", &token);
    std::fs::write(dir.join("batch_50.py"), script).unwrap();
    let out = Command::new("python3").arg("batch_50.py").current_dir(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Processed: 50/50"), "{stdout}");
    let positive = stdout.lines().find(|l| l.starts_with("Positive cases: ")).unwrap();
    assert!(positive.ends_with("/50"), "all 50 results read back by batch_id: {positive}");

    let out = Command::new("sh")
        .arg(api::root().join("testdata/seed/single.sh"))
        .current_dir(&dir)
        .env("MEDINFER_URL", &server.url)
        .env("TOKEN", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["model_id"], "densenet121-chexnet", "{result}");
    assert!(medinfer_core::deid::DeidKey::is_pseudonym(result["patient_id"].as_str().unwrap()));
}

/// Results and the audit chain survive a restart.
#[test]
fn restart_keeps_results_and_chain() {
    api::restart_keeps_results_and_chain(Target::Native);
}

/// Stopping the server lets a running batch finish.
#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let dir = temp_dir("shutdown");
    let server = Server::start(Target::Native, &dir, &api::settings());
    let c = server.client();
    let images: Vec<_> = (0..12).map(|i| api::seed_array(&format!("PT-S{i}"))).collect();
    let body = json!({"images": images, "model_id": "densenet121-chexnet"});
    let worker = std::thread::spawn(move || {
        c.post_json("/infer/batch", &body, Some(&api::bearer("operator")))
    });
    // Wait until the batch is being computed, then ask the server to stop.
    std::thread::sleep(std::time::Duration::from_millis(700));
    server.stop();
    let reply = worker.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["successful"], 12);
    assert!(server.log().contains("in-flight requests finished"));
}

/// Nothing identifying reaches the store file or the log.
#[test]
fn no_phi_in_the_store_or_the_log() {
    api::no_phi_in_the_store_or_the_log(Target::Native);
}
