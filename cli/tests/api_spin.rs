#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API conformance suite against the Spin component (`spin-app`, built for
//! wasm32-wasip2) served by the wasmtime host (`wasm-host serve`, wasmtime 44 with WASIp3
//! HTTP rc-2026-03-15, spin:key-value, spin:variables, wasi:keyvalue) — the same requests
//! as `api_native.rs`, expecting the same statuses and JSON. `cargo xtask test` builds both
//! and sets MEDINFER_SPIN_COMPONENT and MEDINFER_WASM_HOST.

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
