//! medinfer as a Spin HTTP component: the `medinfer-service` API over Spin key-value storage.
//!
//! - Requests arrive through spin-sdk 6's WASIp3 handler (`wasi:http@0.3.0-rc-2026-03-15`).
//! - Results and the audit chain live in the `default` key-value store: reads and writes
//!   through `spin:key-value@3.0.0`, counters and the audit head's compare-and-swap through
//!   the `wasi:keyvalue` atomics Spin implements over the same stores.
//! - Secrets and limits are Spin variables (`jwt_hs256_secret`, `deid_key`, …, the names of
//!   `medinfer_service::config`).
//! - Models are component files under `/models`, loaded and optimised once per instance on
//!   its first request and reused: Spin serves many requests from one WASIp3 instance.
//! - Or, in the pre-initialised build spin.toml serves (`wasm-host preinit`, wasmtime-wizer),
//!   loaded once at build time: `wizer-initialize` loads and optimises them, and the snapshot
//!   of the instance's memory after it is the component, so an instance starts with its
//!   models ready. Nothing else is baked in: configuration and secrets are read per instance.

use std::sync::{Mutex, OnceLock};

use http_body_util::{BodyExt, Limited};
use medinfer_service::config::NAMES;
use medinfer_service::kv::{KeyValue, StoreError};
use medinfer_service::{ApiError, Body, Config, Service, SystemPlatform, error_response};
use spin_sdk::experimental::wasi::keyvalue::{atomics, store as wasi_store};
use spin_sdk::http::{Request, StatusCode};
use spin_sdk::http_service;

/// Where spin.toml mounts the models.
const MODELS_DIR: &str = "/models";
/// The key-value store spin.toml grants.
const STORE: &str = "default";

static SERVICE: OnceLock<Service> = OnceLock::new();

/// The models `wizer-initialize` loaded into the snapshot, taken by the first request.
static PRELOADED: Mutex<Option<medinfer_service::models::Loaded>> = Mutex::new(None);

/// Loads and optimises every model under `MODELS_DIR`; per-model times in `load_ms`.
fn load_models() -> medinfer_service::models::Loaded {
    let platform = SystemPlatform::default();
    let start = medinfer_service::Platform::monotonic_ms(&platform);
    let clock = || medinfer_service::Platform::monotonic_ms(&platform) - start;
    medinfer_service::models::load_dir(
        MODELS_DIR.as_ref(),
        None,
        medinfer_service::models::Loading::OneByOne,
        // The pre-initialised component starts with its models in its snapshot; the plain
        // build's files are read-only.
        None,
        &clock,
    )
    .unwrap_or_else(|e| medinfer_service::models::Loaded {
        failures: vec![medinfer_service::models::LoadFailure {
            folder: MODELS_DIR.into(),
            error: format!("cannot read the folder: {e}"),
        }],
        ..Default::default()
    })
}

/// The pre-initialisation entry point (`wizer-initialize`, run once by `wasm-host preinit`
/// before the snapshot). It must leave nothing in memory that refers to the host's
/// per-instance state: it prints nothing (wasi-libc would keep the stderr stream's handle)
/// and, after reading the models, drops wasi-libc's table of preopened directories, whose
/// handles die with this instance; the next file access opens them afresh. A model that
/// fails to load traps it, so a broken bundle fails the build instead of being baked in.
mod preinit {
    spin_sdk::wit_bindgen::generate!({
        inline: "package medinfer:preinit; world preinit { export wizer-initialize: func(); }",
        runtime_path: "spin_sdk::wit_bindgen::rt",
    });

    unsafe extern "C" {
        /// wasi-libc: forget the preopens (reloaded on the next path lookup).
        fn __wasilibc_reset_preopens();
    }

    struct Preinit;

    impl Guest for Preinit {
        fn wizer_initialize() {
            let loaded = super::load_models();
            if let Some(f) = loaded.failures.first() {
                panic!("model folder {} failed to load: {}", f.folder, f.error);
            }
            *super::PRELOADED.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
            // SAFETY: no file or directory is in use here; wasi-libc re-reads the preopens
            // the next time a path is resolved.
            unsafe { __wasilibc_reset_preopens() };
        }
    }

    export!(Preinit);
}

type Reply = spin_sdk::http::Response<http_body_util::Full<bytes::Bytes>>;

fn to_spin(
    reply: http_body_util::Full<bytes::Bytes>,
    parts: spin_sdk::http::HeaderMap,
    status: StatusCode,
) -> Reply {
    let mut r = spin_sdk::http::Response::new(reply);
    *r.status_mut() = status;
    *r.headers_mut() = parts;
    r
}

fn reply(response: medinfer_service::api::Reply) -> Reply {
    let (parts, body) = response.into_parts();
    to_spin(http_body_util::Full::new(bytes::Bytes::from(body)), parts.headers, parts.status)
}

fn misconfigured(message: &str) -> Reply {
    eprintln!("medinfer: configuration error: {message}");
    reply(error_response(&ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server.misconfigured",
        "the service is not configured; see the component's log",
    )))
}

/// Reads every setting from Spin variables (undefined ones count as unset).
async fn config() -> Result<Config, String> {
    let mut values = Vec::new();
    for name in NAMES {
        if let Ok(v) = spin_sdk::variables::get(name).await {
            values.push((*name, v));
        }
    }
    Config::from_lookup(|name| values.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
        .map_err(|e| e.to_string())
}

async fn service() -> Result<&'static Service, String> {
    if let Some(s) = SERVICE.get() {
        return Ok(s);
    }
    let config = config().await?;
    // Synchronous from here: models load once even when requests race on a fresh instance.
    Ok(SERVICE.get_or_init(|| {
        let preloaded = PRELOADED.lock().unwrap_or_else(|e| e.into_inner()).take();
        let when = if preloaded.is_some() { "in the pre-initialised snapshot" } else { "now" };
        let loaded = preloaded.unwrap_or_else(load_models);
        for (id, ms) in &loaded.load_ms {
            eprintln!("medinfer: model {id} loaded {when} ({ms:.0} ms)");
        }
        for f in &loaded.failures {
            eprintln!("medinfer: model folder {} failed: {}", f.folder, f.error);
        }
        Service::new(config, loaded.registry, loaded.failures, Box::new(SystemPlatform::default()))
    }))
}

/// Spin key-value storage as the service's store.
struct SpinKv {
    store: spin_sdk::key_value::Store,
    bucket: wasi_store::Bucket,
}

fn kv_error(e: impl std::fmt::Debug) -> StoreError {
    StoreError(format!("{e:?}"))
}

impl SpinKv {
    async fn open() -> Result<SpinKv, StoreError> {
        let store = spin_sdk::key_value::Store::open(STORE).await.map_err(kv_error)?;
        let bucket = wasi_store::open(STORE).map_err(kv_error)?;
        Ok(SpinKv { store, bucket })
    }
}

impl KeyValue for SpinKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(key).await.map_err(kv_error)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        medinfer_service::kv::check_sizes(key, value)?;
        self.store.set(key, value).await.map_err(kv_error)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        atomics::increment(&self.bucket, key, delta).map_err(kv_error)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        medinfer_service::kv::check_sizes(key, new)?;
        let cas = atomics::Cas::new(&self.bucket, key).map_err(kv_error)?;
        if cas.current().map_err(kv_error)?.as_deref() != expected {
            return Ok(false);
        }
        match atomics::swap(cas, new) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(kv_error(e)),
        }
    }
}

#[http_service]
async fn handle(request: Request) -> Reply {
    let service = match service().await {
        Ok(s) => s,
        Err(e) => return misconfigured(&e),
    };
    let (parts, body) = request.into_parts();
    let limit = service.body_limit(&parts.method, parts.uri.path());
    let max = limit.saturating_sub(1);
    let declared = parts
        .headers
        .get(spin_sdk::http::HeaderName::from_static("content-length"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > max as u64) {
        Body::TooLarge
    } else {
        match Limited::new(body, max).collect().await {
            Ok(collected) => Body::Complete(collected.to_bytes().to_vec()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                Body::TooLarge
            }
            Err(_) => {
                return reply(error_response(&ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "request.body_unreadable",
                    "the request body could not be read",
                )));
            }
        }
    };
    let kv = match SpinKv::open().await {
        Ok(kv) => kv,
        Err(e) => {
            eprintln!("medinfer: {e}");
            return reply(error_response(&ApiError::store(&e)));
        }
    };
    let response = service.handle(&kv, &parts, body).await;
    // The path only: query strings may carry identifiers.
    eprintln!("medinfer: {} {} {}", parts.method, parts.uri.path(), response.status().as_u16());
    reply(response)
}
