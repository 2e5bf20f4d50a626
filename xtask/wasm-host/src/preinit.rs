//! `wasm-host preinit COMPONENT OUT [--dir HOST::GUEST]...`: pre-initialises a Spin component
//! with wasmtime-wizer. The component is instantiated once with the same imports `serve`
//! gives it (the directories preopened read-only, no variables, an empty store), its
//! `wizer-initialize` export runs, and the instance's memories and globals become the data of
//! the component written to OUT. Starting OUT skips whatever `wizer-initialize` did.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::serve::{HostState, engine, host_state, linker};
use crate::spin::{Kv, parse_dir};

pub fn main(args: &[String]) -> wasmtime::Result<()> {
    let usage =
        || wasmtime::format_err!("usage: wasm-host preinit COMPONENT OUT [--dir HOST::GUEST]...");
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut dirs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--dir" {
            let value = it.next().ok_or_else(usage)?;
            dirs.push(
                parse_dir(value).ok_or_else(|| wasmtime::format_err!("--dir takes HOST::GUEST"))?,
            );
        } else if a.starts_with("--") || paths.len() == 2 {
            return Err(usage());
        } else {
            paths.push(PathBuf::from(a));
        }
    }
    let [input, output] = <[PathBuf; 2]>::try_from(paths).map_err(|_| usage())?;
    let wasm = std::fs::read(&input)?;
    let started = Instant::now();
    let engine = engine()?;
    let linker = linker(&engine)?;
    let state = host_state(&dirs, Arc::new(Kv::open(None)?), Arc::default())?;
    let mut store = Store::new(&engine, state);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let snapshot = runtime.block_on(async {
        let mut wizer = Wizer::new();
        // Kept: wasmtime-wizer 44 drops the core module's export but not the component's
        // lift of it, which leaves an invalid component. Nothing calls it after this.
        wizer.keep_init_func(true);
        // Instrumented: the component also exports its memories and globals for reading.
        let (cx, instrumented) = wizer.instrument_component(&wasm)?;
        let component = wasmtime::component::Component::new(&engine, &instrumented)?;
        let instance = linker.instantiate_async(&mut store, &component).await?;
        let init = instance
            .get_typed_func::<(), ()>(&mut store, wizer.get_init_func())
            .map_err(|e| e.context("the component exports no `wizer-initialize: func()`"))?;
        init.call_async(&mut store, ()).await?;
        wizer.snapshot_component(cx, &mut Snapshotting { store: &mut store, instance }).await
    })?;
    std::fs::write(&output, &snapshot)?;
    eprintln!(
        "wasm-host: pre-initialised {} -> {} ({:.1} MB -> {:.1} MB) in {:.1} s",
        input.display(),
        output.display(),
        wasm.len() as f64 / 1e6,
        snapshot.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads the instrumented instance's state for wasmtime-wizer (its exported accessors).
struct Snapshotting<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
}

impl Snapshotting<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(&mut self, instance: &str, func: &str) -> R {
        // wasmtime-wizer asks only for the accessors its own instrumentation added.
        let (_, exported) =
            self.instance.get_export(&mut *self.store, None, instance).expect("wizer's instance");
        let (_, index) = self
            .instance
            .get_export(&mut *self.store, Some(&exported), func)
            .expect("wizer's accessor");
        let func = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, index)
            .expect("wizer's accessor type");
        func.call_async(&mut *self.store, ()).await.expect("reading the snapshot").0
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let list: WasmList<u8> = self.call(instance, func).await;
        contents(list.as_le_slice(&*self.store));
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.to_bits()
    }
}
