//! The Spin host interfaces the component imports: `spin:key-value@3.0.0`,
//! `spin:variables@3.0.0` and `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch), over
//! one shared in-memory store (optionally logged to a file so it survives restarts), as
//! Spin provides them over its `default` store.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime::component::{Accessor, Resource, ResourceTable};

/// The store label spin.toml grants.
pub const STORE_LABEL: &str = "default";

mod spin_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "spin-imports",
        imports: { default: async | store | trappable },
        with: {
            "spin:key-value/key-value.store": super::StoreHandle,
        },
    });
}

mod wasi_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "wasi-keyvalue-imports",
        imports: { default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::StoreHandle,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use spin_bindings::spin::key_value::key_value as spin_kv;
use spin_bindings::spin::variables::variables as spin_vars;
use wasi_bindings::wasi::keyvalue::{atomics, batch, store as wasi_store};

/// An open store (both APIs' resource).
#[derive(Debug)]
pub struct StoreHandle;

/// A compare-and-swap handle: the key and the value seen when it was made.
#[derive(Debug)]
pub struct CasHandle {
    key: String,
    seen: Option<Vec<u8>>,
}

type Data = (HashMap<String, Vec<u8>>, Option<std::fs::File>);

/// The shared key-value data, with an optional append-only log.
#[derive(Debug, Default)]
pub struct Kv {
    map: Mutex<Data>,
}

impl Kv {
    /// An empty store, or the one replayed from `log` (which then records every write).
    pub fn open(log: Option<&Path>) -> std::io::Result<Kv> {
        let mut map = HashMap::new();
        let file = match log {
            None => None,
            Some(path) => {
                if path.exists() {
                    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
                        let line = line?;
                        let Ok(entry) = serde_json::from_str::<(String, Option<String>)>(&line)
                        else {
                            continue; // a torn last line
                        };
                        match entry {
                            (k, Some(v)) => {
                                map.insert(k, hex::decode(v).unwrap_or_default());
                            }
                            (k, None) => {
                                map.remove(&k);
                            }
                        }
                    }
                }
                Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(Kv { map: Mutex::new((map, file)) })
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>, &mut Log<'_>) -> R) -> R {
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (map, file) = &mut *guard;
        let mut log = Log(file.as_mut());
        f(map, &mut log)
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with(|m, _| m.get(key).cloned())
    }

    pub fn set(&self, key: &str, value: Vec<u8>) {
        self.with(|m, log| {
            log.write(key, Some(&value));
            m.insert(key.to_string(), value);
        });
    }

    pub fn delete(&self, key: &str) {
        self.with(|m, log| {
            log.write(key, None);
            m.remove(key);
        });
    }

    pub fn keys(&self) -> Vec<String> {
        self.with(|m, _| m.keys().cloned().collect())
    }

    /// Adds `delta` to a counter kept as 8 little-endian bytes.
    pub fn increment(&self, key: &str, delta: i64) -> i64 {
        self.with(|m, log| {
            let current = m
                .get(key)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let value = current.saturating_add(delta);
            let bytes = value.to_le_bytes().to_vec();
            log.write(key, Some(&bytes));
            m.insert(key.to_string(), bytes);
            value
        })
    }

    /// Sets `key` to `value` if it still holds `seen`.
    pub fn swap(
        &self,
        key: &str,
        seen: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<(), Option<Vec<u8>>> {
        self.with(|m, log| {
            let current = m.get(key).cloned();
            if current.as_deref() != seen {
                return Err(current);
            }
            log.write(key, Some(&value));
            m.insert(key.to_string(), value);
            Ok(())
        })
    }
}

struct Log<'a>(Option<&'a mut std::fs::File>);

impl Log<'_> {
    fn write(&mut self, key: &str, value: Option<&[u8]>) {
        if let Some(f) = self.0.as_mut() {
            let line = serde_json::to_string(&(key, value.map(hex::encode))).unwrap_or_default();
            // Losing the log is losing the store: fail loudly.
            if let Err(e) = writeln!(f, "{line}") {
                panic!("cannot write the key-value log: {e}");
            }
        }
    }
}

/// Per-instance state for the Spin interfaces.
pub struct SpinCtx {
    pub kv: Arc<Kv>,
    pub table: ResourceTable,
    pub variables: Arc<HashMap<String, String>>,
}

impl SpinCtx {
    /// Variables from `SPIN_VARIABLE_<NAME>` (upper case), as Spin's environment provider.
    pub fn variables_from_env() -> HashMap<String, String> {
        std::env::vars()
            .filter_map(|(k, v)| {
                k.strip_prefix("SPIN_VARIABLE_").map(|n| (n.to_ascii_lowercase(), v))
            })
            .collect()
    }
}

/// Where a host field lives inside the store's data.
pub trait HasSpin: Send + 'static {
    fn spin(&mut self) -> &mut SpinCtx;
}

/// Adds every interface to the linker.
pub fn add_to_linker<T: HasSpin>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    spin_kv::add_to_linker::<T, SpinKvHost>(linker, |t| t.spin())?;
    spin_vars::add_to_linker::<T, SpinKvHost>(linker, |t| t.spin())?;
    wasi_store::add_to_linker::<T, SpinKvHost>(linker, |t| t.spin())?;
    atomics::add_to_linker::<T, SpinKvHost>(linker, |t| t.spin())?;
    batch::add_to_linker::<T, SpinKvHost>(linker, |t| t.spin())?;
    Ok(())
}

/// The marker type bindgen's `HasData` needs.
pub struct SpinKvHost;

impl wasmtime::component::HasData for SpinKvHost {
    type Data<'a> = &'a mut SpinCtx;
}

fn kv_of<T>(accessor: &Accessor<T, SpinKvHost>) -> Arc<Kv> {
    accessor.with(|mut a| a.get().kv.clone())
}

// ---------------------------------------------------------------- spin:key-value

impl spin_kv::Host for SpinCtx {}

impl spin_kv::HostStore for SpinCtx {}

impl spin_kv::HostStoreWithStore for SpinKvHost {
    async fn open<T>(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, spin_kv::Error>> {
        if label != STORE_LABEL {
            return Ok(Err(spin_kv::Error::NoSuchStore));
        }
        accessor.with(|mut a| Ok(Ok(a.get().table.push(StoreHandle)?)))
    }

    async fn get<T>(
        accessor: &Accessor<T, Self>,
        _self: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(Ok(kv_of(accessor).get(&key)))
    }

    async fn set<T>(
        accessor: &Accessor<T, Self>,
        _self: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        if key.len() > 256 || value.len() > 1024 * 1024 {
            return Ok(Err(spin_kv::Error::Other("key or value too large".into())));
        }
        kv_of(accessor).set(&key, value);
        Ok(Ok(()))
    }

    async fn delete<T>(
        accessor: &Accessor<T, Self>,
        _self: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        kv_of(accessor).delete(&key);
        Ok(Ok(()))
    }

    async fn exists<T>(
        accessor: &Accessor<T, Self>,
        _self: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(Ok(kv_of(accessor).get(&key).is_some()))
    }

    async fn get_keys<T>(
        _accessor: &Accessor<T, Self>,
        _self: Resource<StoreHandle>,
    ) -> wasmtime::Result<(
        wasmtime::component::StreamReader<String>,
        wasmtime::component::FutureReader<Result<(), spin_kv::Error>>,
    )> {
        // medinfer never lists keys (every read names its key); listing is not provided.
        Err(wasmtime::format_err!("get-keys is not provided by this host"))
    }

    async fn drop<T>(
        accessor: &Accessor<T, Self>,
        rep: Resource<StoreHandle>,
    ) -> wasmtime::Result<()> {
        accessor.with(|mut a| a.get().table.delete(rep).map(drop).map_err(Into::into))
    }
}

// ---------------------------------------------------------------- spin:variables

impl spin_vars::Host for SpinCtx {}

impl spin_vars::HostWithStore for SpinKvHost {
    async fn get<T>(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        let vars = accessor.with(|mut a| a.get().variables.clone());
        Ok(vars.get(&name).cloned().ok_or(spin_vars::Error::Undefined(name)))
    }
}

// ---------------------------------------------------------------- wasi:keyvalue

impl wasi_store::Host for SpinCtx {
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, wasi_store::Error>> {
        if identifier != STORE_LABEL {
            return Ok(Err(wasi_store::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(StoreHandle)?))
    }
}

impl wasi_store::HostBucket for SpinCtx {
    fn get(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        Ok(Ok(self.kv.get(&key)))
    }

    fn set(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.kv.set(&key, value);
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.kv.delete(&key);
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_store::Error>> {
        Ok(Ok(self.kv.get(&key).is_some()))
    }

    fn list_keys(
        &mut self,
        _b: Resource<StoreHandle>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_store::KeyResponse, wasi_store::Error>> {
        let mut keys = self.kv.keys();
        keys.sort();
        Ok(Ok(wasi_store::KeyResponse { keys, cursor: None }))
    }

    fn drop(&mut self, rep: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::Host for SpinCtx {
    fn increment(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_store::Error>> {
        Ok(Ok(self.kv.increment(&key, delta)))
    }

    fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.delete(cas)?;
        match self.kv.swap(&handle.key, handle.seen.as_deref(), value) {
            Ok(()) => Ok(Ok(())),
            Err(current) => {
                let fresh = self.table.push(CasHandle { key: handle.key, seen: current })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
            }
        }
    }
}

impl atomics::HostCas for SpinCtx {
    fn new(
        &mut self,
        _b: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wasi_store::Error>> {
        let seen = self.kv.get(&key);
        Ok(Ok(self.table.push(CasHandle { key, seen })?))
    }

    fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    fn drop(&mut self, rep: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl batch::Host for SpinCtx {
    fn get_many(
        &mut self,
        _b: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error>> {
        Ok(Ok(keys
            .into_iter()
            .map(|k| {
                let v = self.kv.get(&k);
                (k, v)
            })
            .collect()))
    }

    fn set_many(
        &mut self,
        _b: Resource<StoreHandle>,
        items: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        for (k, v) in items {
            self.kv.set(&k, v);
        }
        Ok(Ok(()))
    }

    fn delete_many(
        &mut self,
        _b: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        for k in keys {
            self.kv.delete(&k);
        }
        Ok(Ok(()))
    }
}

/// A `HOST::GUEST` directory mapping.
pub fn parse_dir(arg: &str) -> Option<(PathBuf, String)> {
    let (host, guest) = arg.split_once("::")?;
    Some((PathBuf::from(host), guest.to_string()))
}
