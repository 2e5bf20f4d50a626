#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API conformance suite against the Spin component (`spin-app`, built for
//! wasm32-wasip2) served by the wasmtime host (`wasm-host serve`, wasmtime 44 with WASIp3
//! HTTP rc-2026-03-15, spin:key-value, spin:variables, wasi:keyvalue) — the same requests
//! as `api_native.rs`, expecting the same statuses and JSON. The suite serves the component
//! spin.toml names, pre-initialised (models loaded in its snapshot, `wasm-host preinit`).
//! `cargo xtask test` builds everything and sets MEDINFER_SPIN_COMPONENT (pre-initialised),
//! MEDINFER_SPIN_COMPONENT_LAZY (as cargo builds it) and MEDINFER_WASM_HOST.

mod api;

use std::sync::OnceLock;

use api::harness::{Server, Target, temp_dir};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(Target::Spin, &temp_dir("spin"), &api::settings()))
}

conformance_tests!(server);

#[test]
fn public_key_tokens_and_key_confusion() {
    api::public_key_tokens_and_key_confusion(Target::Spin);
}

/// With its store logged to a file, the host's key-value data (results and chain) survives
/// a restart, as Spin's SQLite or Redis stores do.
#[test]
fn restart_keeps_results_and_chain() {
    api::restart_keeps_results_and_chain(Target::Spin);
}

/// Nothing identifying reaches the store or the log.
#[test]
fn no_phi_in_the_store_or_the_log() {
    api::no_phi_in_the_store_or_the_log(Target::Spin);
}

/// Every fresh instance of the pre-initialised component starts with its models loaded (its
/// log says so, and none loads them again), answers as the library does, and draws its own
/// randomness: inference ids differ between fresh instances, so nothing random was baked
/// into the snapshot. The component as cargo builds it loads the models on each instance's
/// first request and answers the same.
#[test]
fn preinitialised_instances_start_with_their_models() {
    let bytes = api::file(api::CHEST);
    let want = api::oracle(&bytes, api::FAST);
    let mut ids = std::collections::HashSet::new();
    for (target, loaded, not) in [
        (Target::Spin, "loaded in the pre-initialised snapshot", "loaded now"),
        (Target::SpinLazy, "loaded now", "pre-initialised"),
    ] {
        let dir = temp_dir(&format!("fresh-{target:?}"));
        // A new instance for every request.
        let server =
            Server::start_with(target, &dir, &api::settings(), &["--requests-per-instance", "1"]);
        let c = server.client();
        for _ in 0..3 {
            let r = c.post(
                &format!("/infer?model_id={}", api::FAST),
                "application/dicom",
                &bytes,
                Some(&api::bearer("operator")),
            );
            assert_eq!(r.status, 200, "{target:?}: {}", r.text());
            let got = r.json();
            for (label, score) in &want {
                let diff = (got["predictions"][label].as_f64().unwrap() - score).abs();
                assert!(diff <= 1e-4, "{target:?}: {label} differs by {diff}");
            }
            assert!(ids.insert(got["inference_id"].as_str().unwrap().to_string()), "{got}");
        }
        server.stop();
        let log = server.log();
        // Two bundled models per instance, three instances.
        assert_eq!(log.matches(loaded).count(), 6, "{target:?}:\n{log}");
        assert!(!log.contains(not), "{target:?}:\n{log}");
    }
}
