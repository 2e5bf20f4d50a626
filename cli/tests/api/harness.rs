//! Starting targets and talking to them over loopback HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use serde_json::Value;

/// Which build serves the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `medinfer serve` over redb.
    Native,
    /// The Spin component (`spin-app`) under the wasmtime host (`wasm-host serve`), as
    /// spin.toml serves it: pre-initialised, models loaded in its snapshot.
    Spin,
    /// The same component as cargo builds it: each instance loads the models on its first
    /// request.
    SpinLazy,
}

/// A running server. Closing its stdin (on drop, or when the test process dies) stops it.
pub struct Server {
    pub url: String,
    pub target: Target,
    pub data_dir: PathBuf,
    child: Mutex<Option<(Child, ChildStdin)>>,
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{name} is not set: the Spin target needs the built component and host; \
             run the suite through `cargo xtask test`, which builds them and sets it"
        )
    })
}

impl Server {
    /// Starts `target` with `settings` (service configuration names and values), keeping its
    /// state in `data_dir`.
    pub fn start(target: Target, data_dir: &Path, settings: &[(&str, String)]) -> Server {
        Server::start_with(target, data_dir, settings, &[])
    }

    /// [`Server::start`] with extra command-line arguments.
    pub fn start_with(
        target: Target,
        data_dir: &Path,
        settings: &[(&str, String)],
        args: &[&str],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let root = super::root();
        let log = std::fs::File::create(data_dir.join("server.log")).unwrap();
        let mut cmd = match target {
            Target::Native => {
                let config: String =
                    settings.iter().map(|(k, v)| format!("{k} = {}\n", toml_string(v))).collect();
                std::fs::write(data_dir.join("config.toml"), config).unwrap();
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_medinfer"));
                cmd.args(["serve", "--port", "0", "--stop-on-stdin-eof", "--data-dir"])
                    .arg(data_dir)
                    .arg("--config")
                    .arg(data_dir.join("config.toml"));
                cmd
            }
            Target::Spin | Target::SpinLazy => {
                let component = match target {
                    Target::SpinLazy => "MEDINFER_SPIN_COMPONENT_LAZY",
                    _ => "MEDINFER_SPIN_COMPONENT",
                };
                let mut cmd = Command::new(env_path("MEDINFER_WASM_HOST"));
                cmd.arg("serve")
                    .arg(env_path(component))
                    .args(["--port", "0", "--stop-on-stdin-eof", "--instances", "4"])
                    .arg("--kv-log")
                    .arg(data_dir.join("kv.log"))
                    .arg("--dir")
                    .arg(format!("{}::/models", root.join("models").display()));
                for (k, v) in settings {
                    cmd.env(format!("SPIN_VARIABLE_{}", k.to_ascii_uppercase()), v);
                }
                cmd
            }
        };
        cmd.args(args);
        // Never inherit configuration from the developer's shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("MEDINFER_") && k != "MEDINFER_LOG" {
                cmd.env_remove(&k);
            }
        }
        if target == Target::Native {
            // One plans folder for every native server of the suite: the first to start
            // writes the models' plan forms, the others load from them, as a restarted
            // server does.
            cmd.env("MEDINFER_PLANS", Path::new(env!("CARGO_TARGET_TMPDIR")).join("plans-api"));
        }
        let mut child = cmd
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("the server starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("medinfer listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => {
                    let log =
                        std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                    panic!("the server exited before listening:\n{log}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            url,
            target,
            data_dir: data_dir.to_path_buf(),
            child: Mutex::new(Some((child, stdin))),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Stops the server gracefully (stdin closed) and waits for it.
    pub fn stop(&self) {
        if let Some((mut child, stdin)) = self.child.lock().unwrap().take() {
            drop(stdin);
            for _ in 0..600 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop within 30 s of its stdin closing");
        }
    }

    /// The file holding the server's key-value data.
    pub fn store_file(&self) -> PathBuf {
        match self.target {
            Target::Native => self.data_dir.join("medinfer.redb"),
            Target::Spin | Target::SpinLazy => self.data_dir.join("kv.log"),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.child.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn toml_string(v: &str) -> String {
    serde_json::to_string(v).unwrap()
}

/// A fresh folder for a test's state (a server's store, secrets and log), under cargo's
/// scratch folder for tests (`target/tmp`), not the system's: the static servers are never
/// dropped, so nothing else would remove their folders. The first call also removes the
/// folders of earlier runs whose process has ended.
pub fn temp_dir(name: &str) -> PathBuf {
    static SWEEP: Once = Once::new();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    SWEEP.call_once(|| sweep(root));
    let dir = root.join(format!("medinfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes `root`'s `medinfer-…-PID` folders whose process is gone (where /proc tells).
fn sweep(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .filter(|n| n.starts_with("medinfer-"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Client { base: base.to_string(), agent }
    }

    fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = response.expect("the request completes");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = response.body_mut().with_config().limit(256 << 20).read_to_vec().unwrap();
        Reply { status, headers, body }
    }

    pub fn get(&self, path: &str, auth: Option<&str>) -> Reply {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        Client::finish(r.call())
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8], auth: Option<&str>) -> Reply {
        let mut r =
            self.agent.post(format!("{}{path}", self.base)).header("Content-Type", content_type);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        Client::finish(r.send(body))
    }

    pub fn post_json(&self, path: &str, body: &Value, auth: Option<&str>) -> Reply {
        self.post(path, "application/json", &serde_json::to_vec(body).unwrap(), auth)
    }

    /// Declares a `len`-byte body, sends a little of it, and reads the answer: the server
    /// must refuse from the declared length without waiting for the rest.
    pub fn raw_oversized(&self, path: &str, len: usize, auth: &str) -> Reply {
        let host = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"data\":[0.5"
        )
        .unwrap();
        stream.flush().unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // Read until the headers and the declared response body have arrived.
        loop {
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let end = find(&raw, b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| {
                l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Reply { status, headers, body: raw[end + 4..].to_vec() }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
