//! medinfer's in-process wasmtime host (wasmtime 44, the version inside Spin 4.0.x):
//!
//! - `wasm-host run WASM [ARGS...]`: the cargo runner for wasm32-wasip2 test binaries;
//! - `wasm-host serve COMPONENT [--port N] [--instances N] [--dir HOST::GUEST] [--kv-log F]`:
//!   serves a Spin HTTP component (spin-sdk 6, WASIp3 HTTP rc-2026-03-15) the way `spin up`
//!   does, providing `spin:key-value`, `spin:variables` (from `SPIN_VARIABLE_*`) and the
//!   `wasi:keyvalue` atomics;
//! - `wasm-host preinit COMPONENT OUT [--dir HOST::GUEST]`: pre-initialises a Spin component
//!   (runs its `wizer-initialize` export with wasmtime-wizer and writes the snapshot).
//!
//! This replaces `wasmtime-cli` (half an hour to build here) and the Spin CLI (on no
//! registry) for tests.

mod preinit;
mod run;
mod serve;
mod spin;

fn main() -> wasmtime::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run::run(&args[1..]),
        Some("serve") => serve::main(&args[1..]),
        Some("preinit") => preinit::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: wasm-host run WASM [ARGS...] | wasm-host serve COMPONENT [OPTIONS] | \
                 wasm-host preinit COMPONENT OUT [--dir HOST::GUEST]..."
            );
            std::process::exit(2);
        }
    }
}
