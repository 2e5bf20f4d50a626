//! The HTTP rows of `cargo xtask bench`: `/infer` on the native server and on the Spin
//! component under the wasmtime host (`wasm-host serve`, the way Spin runs it), driven by a
//! real load tool, wrk (Debian's `wrk`, installed on first use), on loopback.
//!
//! For each server and model: p50/p99 and throughput at 1 and 4 connections, against the
//! same request run in-process (`medinfer bench --batch 1`: decode, preprocess, model); for
//! the Spin component also the first request on a fresh instance, which is what a cold start
//! costs a user: for the pre-initialised component spin.toml serves (models in its snapshot)
//! and for the plain build (each instance loads and optimises the models first).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::{CHEST, medinfer_bench};

const MODELS: [&str; 2] = ["mobilenetv2-chexnet", "densenet121-chexnet"];
const MEDINFER: &str = "target/release/medinfer";
const WASM_HOST: &str = "target/release/wasm-host";
const COMPONENT: &str = "target/wasm32-wasip2/release/medinfer_spin.wasm";
const PREINIT: &str = "target/wasm32-wasip2/release/medinfer_spin.preinit.wasm";
/// Seconds of load per row.
const SECONDS: u32 = 10;
/// Component instances the wasmtime host keeps (one per core here).
const INSTANCES: usize = 2;

/// wrk's request (the chest CR as a raw `application/dicom` body) and its report: one JSON
/// line with exact percentiles (wrk records latency in microseconds).
const WRK_SCRIPT: &str = r#"
local f = assert(io.open(os.getenv("BENCH_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/dicom"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"p50_ms":%.3f,"p99_ms":%.3f,"requests":%d,"seconds":%.3f,"non_2xx":%d,"socket_errors":%d}\n',
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout))
end
"#;

pub fn run(iterations: usize) -> Result<String> {
    ensure_wrk()?;
    crate::spin(crate::Host::Build)?;
    let dir = std::env::current_dir()?.join("target/bench-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let settings = [
        ("jwt_hs256_secret", random_hex()?),
        ("deid_key", random_hex()?),
        ("max_body_bytes", (8 << 20).to_string()),
    ];
    let config: String = settings.iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    std::fs::write(dir.join("config.toml"), config)?;
    std::fs::write(dir.join("wrk.lua"), WRK_SCRIPT)?;
    let token = token(&dir)?;
    let in_process = medinfer_bench(&iterations.to_string(), &["--batch", "1"])?;

    let mut md = format!(
        "\n## `/infer` over HTTP under load (wrk)\n\n\
         `wrk` on loopback, {SECONDS} s per row after a warm-up, the chest CR (451 KB) as a raw \
         `application/dicom` body with a bearer token; p50/p99 from wrk's latency record. \
         In-process: the same file decoded, preprocessed and classified in one process \
         (`medinfer bench --batch 1`, p50). Native: `medinfer serve` (axum, redb, workers = \
         cores). Spin: the pre-initialised component spin.toml serves, under the wasmtime \
         host (`wasm-host serve`, wasmtime 44, {INSTANCES} instances reused across requests, \
         as Spin 4 does). Each request also writes its result and an audit record. Own \
         pipeline: the server's `timing_ms.total_ms` for the same request (decode, preprocess, \
         model, inside the server or the component), median of 7 sent one at a time; p50 / \
         own pipeline is what HTTP, auth, JSON, the store and the host add on top.\n\n\
         | server | model | connections | requests | p50 ms | p99 ms | req/s | p50 / in-process (native) | own pipeline ms | p50 / own pipeline |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let native = Server::start(
        Command::new(MEDINFER)
            .args(["serve", "--port", "0", "--stop-on-stdin-eof", "--data-dir"])
            .arg(dir.join("native"))
            .arg("--config")
            .arg(dir.join("config.toml")),
        &dir.join("native.log"),
    )?;
    md += &rows("native", &native, &dir, &token, &in_process)?;
    native.stop()?;

    let spin = |component: &str, requests_per_instance: usize, log: &str| {
        let mut cmd = Command::new(WASM_HOST);
        cmd.arg("serve").arg(component).args(["--port", "0", "--stop-on-stdin-eof"]);
        cmd.args(["--instances", &INSTANCES.to_string()]);
        cmd.args(["--requests-per-instance", &requests_per_instance.to_string()]);
        cmd.arg("--kv-log").arg(dir.join(format!("{log}.kv")));
        cmd.arg("--dir")
            .arg(format!("{}::/models", std::env::current_dir()?.join("models").display()));
        for (k, v) in &settings {
            cmd.env(format!("SPIN_VARIABLE_{}", k.to_ascii_uppercase()), v);
        }
        Server::start(&mut cmd, &dir.join(format!("{log}.log")))
    };
    let warm = spin(PREINIT, 1 << 30, "spin")?;
    md += &rows("Spin", &warm, &dir, &token, &in_process)?;
    warm.stop()?;

    // A fresh instance for every request: what the first request after a cold start costs.
    let n = iterations.clamp(3, 10);
    md += &format!(
        "\nSpin component, a fresh instance for every request (`--requests-per-instance 1`), \
         {n} sequential requests per model. Instance start: the host's instantiation of the \
         component (`wasm-host: new instance in` lines of its log; the first one also maps the \
         snapshot's memory image). The first request adds, for the plain build, loading and \
         optimising both bundled models inside the instance.\n\n\
         | component | model | first request on a fresh instance p50 ms | max ms | instance start p50 ms (max) | host ready ms |\n\
         |---|---|---|---|---|---|\n"
    );
    let body = std::fs::read(CHEST)?;
    for (name, component) in [("pre-initialised (spin.toml)", PREINIT), ("plain build", COMPONENT)]
    {
        let cold = spin(component, 1, if component == PREINIT { "cold-preinit" } else { "cold" })?;
        let (log, ready_ms) = (cold.log.clone(), cold.ready_ms);
        let mut rows = Vec::new();
        for model in MODELS {
            let mut times = vec![];
            for _ in 0..n {
                let (status, ms) =
                    post(&cold.addr, &format!("/infer?model_id={model}"), &token, &body)?;
                if status != 200 {
                    bail!("the Spin component answered {status} on a fresh instance ({model})");
                }
                times.push(ms);
            }
            times.sort_by(f64::total_cmp);
            rows.push((model, times[times.len() / 2], times[n - 1]));
        }
        cold.stop()?;
        let mut starts: Vec<f64> = std::fs::read_to_string(&log)?
            .lines()
            .filter_map(|l| l.strip_prefix("wasm-host: new instance in "))
            .filter_map(|l| l.trim_end_matches(" ms").parse().ok())
            .collect();
        if starts.is_empty() {
            bail!("no instance start in {}", log.display());
        }
        starts.sort_by(f64::total_cmp);
        for (model, p50, max) in rows {
            md += &format!(
                "| {name} | {model} | {p50:.0} | {max:.0} | {:.2} ({:.1}) | {:.0} |\n",
                starts[starts.len() / 2],
                starts[starts.len() - 1],
                ready_ms
            );
        }
    }
    Ok(md)
}

/// The rows of one server: each model at 1 and 4 connections.
fn rows(
    name: &str,
    server: &Server,
    dir: &Path,
    token: &str,
    in_process: &Value,
) -> Result<String> {
    let body = std::fs::read(CHEST)?;
    let mut md = String::new();
    for model in MODELS {
        let path = format!("/infer?model_id={model}");
        let (status, _) = post(&server.addr, &path, token, &body)?;
        if status != 200 {
            bail!("{name} answered {status} to {path}; see {}", server.log.display());
        }
        let reference = in_process
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["model_id"] == model))
            .and_then(|r| r["total_ms"]["median"].as_f64())
            .unwrap_or(f64::NAN);
        // Warm every instance / worker first.
        wrk(server, &path, token, dir, INSTANCES.max(2), 3)?;
        // The server's own time for the request's pipeline (decode, preprocess, model: its
        // `timing_ms.total_ms`), median of 7 one at a time: what is left of the p50 is HTTP,
        // auth, JSON, the store writes and, on Spin, the host.
        let mut own: Vec<f64> = (0..7)
            .map(|_| {
                let (_, _, json) = post_reading(&server.addr, &path, token, &body)?;
                Ok(json["timing_ms"]["total_ms"].as_f64().unwrap_or(f64::NAN))
            })
            .collect::<Result<_>>()?;
        own.sort_by(f64::total_cmp);
        let own = own[own.len() / 2];
        for connections in [1, 4] {
            let load = wrk(server, &path, token, dir, connections, SECONDS)?;
            let p50 = load["p50_ms"].as_f64().unwrap_or(f64::NAN);
            let requests = load["requests"].as_u64().unwrap_or(0);
            if requests == 0 {
                bail!(
                    "{name}: no request to {path} finished in {SECONDS} s; see {}",
                    server.log.display()
                );
            }
            let seconds = load["seconds"].as_f64().unwrap_or(f64::NAN);
            let failed =
                load["non_2xx"].as_u64().unwrap_or(0) + load["socket_errors"].as_u64().unwrap_or(0);
            let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
            md += &format!(
                "| {name} | {model} | {connections} | {requests}{failed} | {p50:.1} | {:.1} | {:.1} | {:.2}× | {own:.1} | {:.2}× |\n",
                load["p99_ms"].as_f64().unwrap_or(f64::NAN),
                requests as f64 / seconds,
                p50 / reference,
                p50 / own
            );
        }
    }
    Ok(md)
}

fn wrk(
    server: &Server,
    path: &str,
    token: &str,
    dir: &Path,
    connections: usize,
    seconds: u32,
) -> Result<Value> {
    let url = format!("http://{}{path}", server.addr);
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &connections.min(2).to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "60s", "-s"])
        .arg(dir.join("wrk.lua"))
        .arg(&url)
        .env("BENCH_FILE", std::env::current_dir()?.join(CHEST))
        .env("BENCH_TOKEN", token);
    eprintln!("xtask: wrk -c {connections} -d {seconds}s {url}");
    let out = cmd.output().context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("wrk printed no report")?;
    serde_json::from_str(line).context("parsing wrk's report")
}

fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: installing wrk (apt) for the HTTP load rows");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "wrk"])
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may need the package lists first.
    let ok = install()
        || (Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && install());
    if !ok {
        bail!("wrk is needed for the HTTP rows: install it (Debian/Ubuntu: apt-get install wrk)");
    }
    Ok(())
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn token(dir: &Path) -> Result<String> {
    let out = Command::new(MEDINFER)
        .args(["token", "--sub", "bench", "--role", "operator", "--config"])
        .arg(dir.join("config.toml"))
        .arg("--data-dir")
        .arg(dir.join("native"))
        .output()
        .context("running medinfer token")?;
    if !out.status.success() {
        bail!("medinfer token failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// One POST on a fresh connection: the status and the milliseconds until the whole response
/// was read.
fn post(addr: &str, path: &str, token: &str, body: &[u8]) -> Result<(u16, f64)> {
    post_reading(addr, path, token, body).map(|(status, ms, _)| (status, ms))
}

/// [`post`], also giving the response's JSON body (`Null` where it has none).
fn post_reading(addr: &str, path: &str, token: &str, body: &[u8]) -> Result<(u16, f64, Value)> {
    let t0 = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/dicom\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let status = String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    // The JSON object from its first brace to its last (whatever the transfer encoding).
    let text = String::from_utf8_lossy(&response);
    let json = match (text.find("\r\n\r\n{").map(|i| i + 4), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&text[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok((status, ms, json))
}

/// A server started with `--port 0 --stop-on-stdin-eof`: its address from the line it prints,
/// stopped by closing its stdin.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: String,
    log: PathBuf,
    ready_ms: f64,
}

impl Server {
    fn start(cmd: &mut Command, log: &Path) -> Result<Server> {
        let t0 = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("medinfer listening on http://") {
                        break url.trim().to_string();
                    }
                }
                _ => bail!("{cmd:?} exited before listening; see {}", log.display()),
            }
        };
        let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, stdin, addr, log: log.to_path_buf(), ready_ms })
    }

    fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        self.child.wait()?;
        Ok(())
    }
}
