//! `wasm-host serve`: a Spin-like HTTP trigger for one WASIp3 component.
//!
//! Like Spin 4, instances are reused across requests (up to `--requests-per-instance`,
//! default 128) and several run in parallel (`--instances`, default 4); each instance here
//! serves one request at a time. All instances share one key-value store, so the
//! component's compare-and-swap and counters are exercised across instances exactly as
//! they are across Spin's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::{Mutex, mpsc};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{DirPerms, FilePerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::{WasiHttpCtxView, WasiHttpView};

use crate::spin::{HasSpin, Kv, SpinCtx, parse_dir};

pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutbound,
    table: ResourceTable,
    spin: SpinCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Outbound HTTP is denied, as Spin does for a component without `allowed_outbound_hosts`.
struct NoOutbound;

type Outgoing = http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, ErrorCode>>;
type IoFuture = Box<dyn Future<Output = Result<(), ErrorCode>> + Send>;

impl wasmtime_wasi_http::p3::WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, ErrorCode>>,
        _options: Option<wasmtime_wasi_http::p3::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(Outgoing, IoFuture), wasmtime_wasi::TrappableError<ErrorCode>>>
            + Send,
    > {
        Box::new(async { Err(ErrorCode::HttpRequestDenied.into()) })
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.hooks, table: &mut self.table, ctx: &mut self.http }
    }
}

impl HasSpin for HostState {
    fn spin(&mut self) -> &mut SpinCtx {
        &mut self.spin
    }
}

struct Options {
    component: PathBuf,
    addr: SocketAddr,
    instances: usize,
    requests_per_instance: usize,
    dirs: Vec<(PathBuf, String)>,
    kv_log: Option<PathBuf>,
    stop_on_stdin_eof: bool,
}

fn parse(args: &[String]) -> wasmtime::Result<Options> {
    let mut o = Options {
        component: PathBuf::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        instances: 4,
        requests_per_instance: 128,
        dirs: Vec::new(),
        kv_log: None,
        stop_on_stdin_eof: false,
    };
    let mut it = args.iter();
    let bad = |what: &str| wasmtime::format_err!("wasm-host serve: {what}");
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| bad(&format!("{a} needs a value")));
        match a.as_str() {
            "--port" => o.addr.set_port(value()?.parse().map_err(|_| bad("bad --port"))?),
            "--instances" => o.instances = value()?.parse().map_err(|_| bad("bad --instances"))?,
            "--requests-per-instance" => {
                o.requests_per_instance =
                    value()?.parse().map_err(|_| bad("bad --requests-per-instance"))?;
            }
            "--dir" => {
                o.dirs.push(parse_dir(&value()?).ok_or_else(|| bad("--dir takes HOST::GUEST"))?)
            }
            "--kv-log" => o.kv_log = Some(PathBuf::from(value()?)),
            "--stop-on-stdin-eof" => o.stop_on_stdin_eof = true,
            other if !other.starts_with("--") && o.component.as_os_str().is_empty() => {
                o.component = PathBuf::from(other);
            }
            other => return Err(bad(&format!("unknown argument {other}"))),
        }
    }
    if o.component.as_os_str().is_empty() {
        return Err(bad(
            "usage: wasm-host serve COMPONENT [--port N] [--instances N] [--dir HOST::GUEST] [--kv-log FILE]",
        ));
    }
    Ok(o)
}

struct Instance {
    store: Store<HostState>,
    service: wasmtime_wasi_http::p3::bindings::Service,
    served: usize,
}

struct Host {
    pre: ServicePre<HostState>,
    engine: Engine,
    kv: Arc<Kv>,
    variables: Arc<std::collections::HashMap<String, String>>,
    dirs: Vec<(PathBuf, String)>,
    pool_tx: mpsc::Sender<Option<Instance>>,
    pool_rx: Mutex<mpsc::Receiver<Option<Instance>>>,
    requests_per_instance: usize,
    in_flight: AtomicUsize,
}

/// One instance's host state: stderr inherited, `dirs` preopened read-only, the shared store
/// and variables.
pub(crate) fn host_state(
    dirs: &[(PathBuf, String)],
    kv: Arc<Kv>,
    variables: Arc<std::collections::HashMap<String, String>>,
) -> wasmtime::Result<HostState> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stderr();
    for (host, guest) in dirs {
        wasi.preopened_dir(host, guest, DirPerms::READ, FilePerms::READ)?;
    }
    Ok(HostState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: NoOutbound,
        table: ResourceTable::new(),
        spin: SpinCtx { kv, table: ResourceTable::new(), variables },
    })
}

/// The engine Spin 4 would use for the component (component-model async on), with
/// wasmtime's on-disk cache of compiled code.
pub(crate) fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    // `WASM_HOST_PROFILE=perfmap`: write /tmp/perf-PID.map so that `perf record` names the
    // component's functions (how the Spin rows of BENCHMARKS.md were profiled).
    if std::env::var("WASM_HOST_PROFILE").as_deref() == Ok("perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // Compiling the component takes seconds: cache the machine code across runs.
    if let Ok(cache) = wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
        config.cache(Some(cache));
    }
    Engine::new(&config)
}

/// Everything a Spin HTTP component may import: WASI p2/p3, WASIp3 HTTP, Spin's interfaces.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    crate::spin::add_to_linker(&mut linker)?;
    Ok(linker)
}

impl Host {
    async fn instantiate(&self) -> wasmtime::Result<Instance> {
        let started = std::time::Instant::now();
        let state = host_state(&self.dirs, self.kv.clone(), self.variables.clone())?;
        let mut store = Store::new(&self.engine, state);
        let service = self.pre.instantiate_async(&mut store).await?;
        // `cargo xtask bench` reads this line for the cold-start rows.
        eprintln!("wasm-host: new instance in {:.2} ms", started.elapsed().as_secs_f64() * 1e3);
        Ok(Instance { store, service, served: 0 })
    }

    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let reply = match self.handle_inner(request).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("wasm-host: request failed: {e:?}");
                failed_response()
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply
    }

    async fn handle_inner(
        &self,
        request: http::Request<Incoming>,
    ) -> wasmtime::Result<http::Response<Full<Bytes>>> {
        let slot = self.pool_rx.lock().await.recv().await.flatten();
        let mut instance = match slot {
            Some(i) if i.served < self.requests_per_instance => i,
            _ => self.instantiate().await?,
        };
        let request = request.map(|b| b.map_err(|_| ErrorCode::HttpProtocolError));
        let (request, io) = wasmtime_wasi_http::p3::Request::from_http(request);
        let Instance { store, service, .. } = &mut instance;
        let service = &*service;
        let result = store
            .run_concurrent(async move |accessor| {
                let response = async {
                    let response = service.handle(accessor, request).await?;
                    let response = response.map_err(|e| wasmtime::format_err!("{e:?}"))?;
                    let response =
                        accessor.with(|access| response.into_http(access, async { Ok(()) }))?;
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.map_err(|e| wasmtime::format_err!("{e:?}"))?;
                    wasmtime::Result::Ok((parts, body.to_bytes()))
                };
                let (out, ()) = tokio::try_join!(response, async {
                    io.await.map_err(|e| wasmtime::format_err!("{e:?}"))
                })?;
                wasmtime::Result::Ok(out)
            })
            .await;
        match result {
            Ok(Ok((parts, body))) => {
                instance.served += 1;
                // Return a healthy instance to the pool.
                let _ = self.pool_tx.send(Some(instance)).await;
                Ok(http::Response::from_parts(parts, Full::new(body)))
            }
            Ok(Err(e)) | Err(e) => {
                // A trapped instance is discarded, as Spin does.
                let _ = self.pool_tx.send(None).await;
                Err(e)
            }
        }
    }
}

pub fn main(args: &[String]) -> wasmtime::Result<()> {
    let options = parse(args)?;
    let engine = engine()?;
    let component = Component::from_file(&engine, &options.component)?;
    let linker = linker(&engine)?;
    let pre = ServicePre::new(linker.instantiate_pre(&component)?)?;
    let kv = Arc::new(Kv::open(options.kv_log.as_deref())?);
    let (pool_tx, pool_rx) = mpsc::channel(options.instances.max(1));
    let host = Arc::new(Host {
        pre,
        engine,
        kv,
        variables: Arc::new(SpinCtx::variables_from_env()),
        dirs: options.dirs.clone(),
        pool_tx: pool_tx.clone(),
        pool_rx: Mutex::new(pool_rx),
        requests_per_instance: options.requests_per_instance.max(1),
        in_flight: AtomicUsize::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        for _ in 0..options.instances.max(1) {
            pool_tx.send(None).await.map_err(|_| wasmtime::format_err!("pool closed"))?;
        }
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        let addr = listener.local_addr()?;
        println!("medinfer listening on http://{addr}");
        let stop = shutdown(options.stop_on_stdin_eof);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let host = host.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let host = host.clone();
                            // Its own task: a client that hangs up mid-request (a load
                            // tool stopping, a timeout) drops this future, and the request
                            // must still finish, return its instance to the pool and leave
                            // the in-flight count, or the pool shrinks and shutdown waits
                            // forever.
                            let handled = tokio::spawn(async move { host.handle(req).await });
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handled.await.unwrap_or_else(|_| failed_response()),
                                )
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    });
                }
            }
        }
        // Finish in-flight requests.
        while host.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        eprintln!("wasm-host: stopped: in-flight requests finished");
        wasmtime::Result::Ok(())
    })
}

/// 500 with a stable code when the component traps (or its task dies).
fn failed_response() -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from_static(
        b"{\"error\":{\"code\":\"host.component_failed\",\"message\":\"the component failed\"}}",
    )));
    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    r
}

async fn shutdown(stop_on_stdin_eof: bool) {
    let stdin_closed = async {
        if !stop_on_stdin_eof {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = stdin_closed => {},
    }
}
