//! The browser bundle: two release builds for wasm32-unknown-unknown (SIMD128 for every engine;
//! relaxed SIMD with shared memory and threads for engines that have both, run on one thread
//! where the page is not cross-origin isolated),
//! wasm-bindgen at exactly the version in Cargo.lock
//! (installed from crates.io when missing, never downloaded as a binary), the bundled models
//! and sample files copied beside the page, and its tests in Debian's Chromium.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cargo;

const PACKAGE: &str = "medinfer-browser";
const WASM: &str = "target/wasm32-unknown-unknown/release/medinfer_browser.wasm";
/// wasm-bindgen's output name: `web/pkg/medinfer_wasm.js` and `medinfer_wasm_bg.wasm`.
const OUT_NAME: &str = "medinfer_wasm";
/// The threaded build (relaxed SIMD too): its own target directory, since its flags differ from
/// the SIMD128 build's, which the wasm-bindgen tests reuse. Shared memory and atomics, so std
/// is rebuilt with them (`-Z build-std`;
/// Rust ships wasm32's std without atomics, and a module whose std cannot lock is not
/// thread-safe). `-Z` is unstable: `RUSTC_BOOTSTRAP=1` allows it on the pinned stable
/// toolchain (rust-toolchain.toml), whose rust-src is the std it rebuilds. Its glue differs
/// from the others' (shared memory, `initThreads`, wasm-bindgen-rayon's worker snippet), so the
/// whole of its wasm-bindgen output goes to `web/pkg/threads/`.
const THREADS_TARGET_DIR: &str = "target/threads";
/// Relaxed SIMD plus atomics, and the linker told to make the memory shared and imported
/// (wasm-bindgen's glue then creates it, and hands it to each Worker) with the thread-local
/// storage entry points wasm-bindgen's thread start-up calls; rustc does not pass these for
/// wasm32-unknown-unknown by itself. The memory may grow to 2 GiB: a shared memory declares
/// its maximum up front. Legacy symbol mangling: under `RUSTC_BOOTSTRAP=1` rustc mangles with
/// v0 by default, whose names (generics and crate hashes spelled out) made the name section
/// 20 MB instead of 3.
const THREADS_RUSTFLAGS: &str = "-C target-feature=+simd128,+relaxed-simd,+atomics,+bulk-memory,+mutable-globals \
     -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=2147483648 \
     -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
     -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base \
     -C debuginfo=0 -C strip=debuginfo -Z unstable-options -C symbol-mangling-version=legacy";
/// The page shows this model first: the smallest download.
const DEFAULT_MODEL: &str = "mobilenetv2-chexnet";
/// Sample DICOM files for the viewer-embedding example (pydicom's test files, MIT).
const SAMPLES: &[&str] = &["CT_small.dcm", "MR_small.dcm", "RG1_J2KI.dcm"];

/// Builds the bundle into `web/` and prints its size.
pub fn build() -> Result<()> {
    cargo(&["build", "--release", "-p", PACKAGE, "--target", "wasm32-unknown-unknown"])?;
    let bindgen = wasm_bindgen()?;
    let pkg = Path::new("web/pkg");
    if pkg.exists() {
        fs::remove_dir_all(pkg)?;
    }
    bind(&bindgen, Path::new(WASM), pkg)?;

    eprintln!("xtask: the threaded build ({THREADS_TARGET_DIR})");
    variant_build(
        THREADS_TARGET_DIR,
        THREADS_RUSTFLAGS,
        &["--features", "threads", "-Z", "build-std=panic_abort,std"],
    )?;
    let threads_pkg = pkg.join("threads");
    let threads_wasm = Path::new(THREADS_TARGET_DIR)
        .join("wasm32-unknown-unknown/release")
        .join(Path::new(WASM).file_name().context("wasm file name")?);
    bind(&bindgen, &threads_wasm, &threads_pkg)?;
    // What the service worker precaches where the worker will load this build: every file it
    // loads.
    let mut files = Vec::new();
    list_files(&threads_pkg, &threads_pkg, &mut files)?;
    files.retain(|f| f.ends_with(".js") || f.ends_with(".wasm"));
    files.sort();
    fs::write(threads_pkg.join("files.json"), serde_json::to_string_pretty(&files)?)?;

    copy_models()?;
    copy_samples()?;
    for name in [format!("{OUT_NAME}_bg.wasm"), format!("threads/{OUT_NAME}_bg.wasm")] {
        let wasm = pkg.join(name);
        eprintln!(
            "xtask: browser bundle {}: {:.1} MB raw, {:.1} MB gzip -9",
            wasm.display(),
            fs::metadata(&wasm)?.len() as f64 / 1e6,
            gzip_size(&wasm)? as f64 / 1e6,
        );
    }
    Ok(())
}

/// The browser crate built in release into `target_dir` with `rustflags` (replacing
/// `.cargo/config.toml`'s) and `extra` arguments (unstable `-Z` ones allowed).
fn variant_build(target_dir: &str, rustflags: &str, extra: &[&str]) -> Result<()> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--release", "-p", PACKAGE, "--target", "wasm32-unknown-unknown"])
        .args(["--target-dir", target_dir])
        .args(extra)
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS", rustflags);
    if extra.contains(&"-Z") {
        cargo.env("RUSTC_BOOTSTRAP", "1");
    }
    let status = cargo.status().with_context(|| format!("running cargo build ({target_dir})"))?;
    if !status.success() {
        bail!("the build in {target_dir} failed ({status})");
    }
    Ok(())
}

/// Every file under `dir`, as a `/`-separated path relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root)?;
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

/// wasm-bindgen for the browser (`--target web`) into `out`, named `OUT_NAME`.
fn bind(bindgen: &Path, wasm: &Path, out: &Path) -> Result<()> {
    run(Command::new(bindgen)
        .args(["--target", "web", "--out-dir"])
        .arg(out)
        .args(["--out-name", OUT_NAME])
        .arg(wasm))
}

/// wasm-bindgen-test in Chromium (through chromedriver), then the page and the embedding
/// example driven by Playwright.
pub fn test() -> Result<()> {
    crate::python_deps()?;
    let root = std::env::current_dir()?;
    let runner = wasm_bindgen()?.with_file_name("wasm-bindgen-test-runner");
    eprintln!("xtask: wasm-bindgen-test in Chromium");
    let status = Command::new(env!("CARGO"))
        .args(["test", "--release", "-p", PACKAGE, "--target", "wasm32-unknown-unknown"])
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner)
        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
        .env("WASM_BINDGEN_TEST_TIMEOUT", "300")
        .status()
        .context("running wasm-bindgen-test")?;
    if !status.success() {
        bail!("the wasm-bindgen tests failed ({status})");
    }
    // playwright-core (no browser download: it drives /usr/bin/chromium), typescript, axe-core.
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir("web"))?;
    run(Command::new("node")
        .args(["--test", "--test-concurrency=1", "tests/"])
        .current_dir("web")
        .env("MEDINFER_BIN", root.join("target/release/medinfer")))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The wasm-bindgen version pinned in Cargo.lock.
fn locked_version() -> Result<String> {
    let lock = fs::read_to_string("Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

/// `wasm-bindgen` at the locked version: from PATH or ~/.cargo/bin, else `cargo install`ed
/// (from source; `--locked` fails on a yanked pin, so it is left out).
fn wasm_bindgen() -> Result<PathBuf> {
    let version = locked_version()?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let bin = home.join("bin/wasm-bindgen");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() != Some(&format!("wasm-bindgen {version}")) {
        eprintln!("xtask: installing wasm-bindgen-cli {version} (was {installed:?})");
        cargo(&["install", "wasm-bindgen-cli", "--version", &version, "--force"])?;
    }
    Ok(bin)
}

/// Copies every bundled model (manifest + ONNX) and the text detector under `web/models/`
/// and writes `web/models/index.json`, the catalogue the worker reads.
fn copy_models() -> Result<()> {
    let out = Path::new("web/models");
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    let mut dirs: Vec<_> =
        fs::read_dir("models")?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    let mut models = Vec::new();
    let mut text_detector = serde_json::Value::Null;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let name = dir.file_name().and_then(|n| n.to_str()).context("model folder name")?;
        let manifest_path = dir.join("model.toml");
        fs::create_dir_all(out.join(name))?;
        if manifest_path.exists() {
            let text = fs::read_to_string(&manifest_path)?;
            let manifest: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parsing {}", manifest_path.display()))?;
            let field =
                |k: &str| manifest.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let file = field("file");
            let bytes = fs::copy(dir.join(&file), out.join(name).join(&file))?;
            fs::copy(&manifest_path, out.join(name).join("model.toml"))?;
            models.push(serde_json::json!({
                "model_id": field("id"),
                "name": field("name"),
                "version": field("version"),
                "disclaimer": field("disclaimer"),
                "manifest": format!("{name}/model.toml"),
                "onnx": format!("{name}/{file}"),
                "bytes": bytes,
            }));
        } else if let Some(onnx) = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "onnx"))
        {
            let file = onnx.file_name().and_then(|n| n.to_str()).context("file name")?;
            fs::copy(&onnx, out.join(name).join(file))?;
            text_detector = format!("{name}/{file}").into();
        }
    }
    let index = serde_json::json!({
        "default": DEFAULT_MODEL,
        "models": models,
        "textDetector": text_detector,
    });
    fs::write(out.join("index.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(())
}

fn copy_samples() -> Result<()> {
    let out = Path::new("web/samples");
    fs::create_dir_all(out)?;
    for name in SAMPLES {
        fs::copy(Path::new("testdata/dicom").join(name), out.join(name))?;
    }
    Ok(())
}

/// Size of the file after `gzip -9` (what a static server sends with compression on).
fn gzip_size(path: &Path) -> Result<u64> {
    let out = Command::new("gzip").args(["-9", "-c"]).arg(path).output().context("running gzip")?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout.len() as u64)
}
