//! `wasm-host run WASM [ARGS...]`: runs a WASI p2 command component (a `cargo test` binary
//! built for wasm32-wasip2) on wasmtime, with stdio and environment inherited and the
//! workspace preopened at its own absolute path, so that tests find fixtures through
//! `env!("CARGO_MANIFEST_DIR")` exactly as they do natively. Exits with the guest's status.

use std::path::PathBuf;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Result, Store};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Runs a command component with `args` (the first is the wasm file).
pub fn run(args: &[String]) -> Result<()> {
    let Some(wasm) = args.first() else {
        eprintln!("usage: wasm-host run WASM [ARGS...]");
        std::process::exit(2);
    };
    let root = workspace_root();

    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, wasm)?;
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;

    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio().inherit_env().args(args);
    let guest_root = root.to_string_lossy().into_owned();
    wasi.preopened_dir(&root, &guest_root, DirPerms::all(), FilePerms::all())?;
    wasi.preopened_dir(
        std::env::temp_dir(),
        std::env::temp_dir().to_string_lossy(),
        DirPerms::all(),
        FilePerms::all(),
    )?;
    let mut store = Store::new(&engine, Host { wasi: wasi.build(), table: ResourceTable::new() });

    let command = Command::instantiate(&mut store, &component, &linker)?;
    let status = command.wasi_cli_run().call_run(&mut store);
    match status {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => std::process::exit(1),
        Err(trap) => {
            // `std::process::exit` inside the guest arrives as an I32Exit "trap".
            if let Some(exit) = trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
                std::process::exit(exit.0);
            }
            eprintln!("wasm-host: the guest trapped: {trap:?}");
            std::process::exit(101)
        }
    }
}

/// The workspace root (two levels above this crate), preopened for the guest.
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or(here)
}
