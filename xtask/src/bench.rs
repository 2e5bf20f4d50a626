//! `cargo xtask bench`: medinfer against onnxruntime in the same command, as ratios.
//!
//! What it covers so far (issue 7 grows it): native single-image model runs at 1 and 2
//! threads against onnxruntime (PyPI, installed on first use) on the same models and input
//! size, model load, and — when the browser bundle is built (`cargo xtask web`) — the bundle
//! against onnxruntime-web in the same headless Chromium (`web/bench.mjs`). It prints
//! Markdown for BENCHMARKS.md; it never asserts on time.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo;

const ORT_VERSION: &str = "1.32.0";

pub fn run(iterations: usize) -> Result<()> {
    cargo(&["build", "--release", "-p", "medinfer-cli"])?;
    ensure_onnxruntime()?;
    let n = iterations.to_string();
    let ours = medinfer_bench(&n, &[])?;
    let ort = json(Command::new("python3").args([
        "bench/ort_native.py",
        "models",
        "--n",
        &n,
        "--threads",
        "1,2",
    ]))?;
    println!("## Native model run vs onnxruntime {ORT_VERSION} (`cargo xtask bench`)\n");
    println!(
        "{} runs per model after a warm-up, one 224×224 image; medinfer's `infer_ms` is the tract run \
         (its `total_ms` adds decode + preprocess of the chest CR), onnxruntime's the session run on a \
         fixed tensor of the same shape. medinfer runs one thread (tract's multi-threaded matmul is \
         not enabled yet), so its 2-thread row repeats the 1-thread number.\n",
        iterations
    );
    println!(
        "| model | threads | medinfer p50 ms | onnxruntime p50 ms | ratio (medinfer / ort) | medinfer load ms | ort load ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in ours.as_array().context("medinfer bench output")? {
        let id = row["model_id"].as_str().unwrap_or_default();
        let p50 = row["infer_ms"]["median"].as_f64().unwrap_or(f64::NAN);
        let load = row["load_ms"].as_f64().unwrap_or(f64::NAN);
        for theirs in ort.as_array().context("ort output")?.iter().filter(|r| r["model_id"] == id) {
            let op50 = theirs["p50_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {id} | {} | {p50:.1} | {op50:.1} | {:.2}× | {load:.0} | {:.0} |",
                theirs["threads"],
                p50 / op50,
                theirs["load_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    gpu(iterations)?;
    if Path::new("web/pkg/medinfer_wasm_bg.wasm").exists() {
        println!();
        let status = Command::new("node")
            .args(["bench.mjs", "--n", &n])
            .current_dir("web")
            .status()
            .context("running web/bench.mjs")?;
        if !status.success() {
            bail!("web/bench.mjs failed ({status})");
        }
    } else {
        eprintln!("xtask: web/pkg is not built; run `cargo xtask web` for the browser numbers");
    }
    Ok(())
}

fn ensure_onnxruntime() -> Result<()> {
    let have = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy; print(onnxruntime.__version__)"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == ORT_VERSION);
    if !have {
        let pkg = format!("onnxruntime=={ORT_VERSION}");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "-q", &pkg, "numpy"])
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!("pip install {pkg} failed");
        }
    }
    Ok(())
}

fn json(cmd: &mut Command) -> Result<Value> {
    eprintln!("xtask: {cmd:?}");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the output of {cmd:?}"))
}

/// `medinfer bench --json` over the bundled models, `n` runs, plus `extra` arguments.
fn medinfer_bench(n: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["bench", "--json", "--iterations", n, "--models-dir", "models"];
    args.extend(extra);
    json(Command::new("target/release/medinfer").args(args))
}

/// The GPU executor against the CPU plan, batch 1 and 16, same command, same machine.
fn gpu(iterations: usize) -> Result<()> {
    // Software adapters (lavapipe) take seconds per DenseNet image: a few runs tell enough.
    let n = iterations.clamp(1, 3).to_string();
    let bench =
        |backend: &str, batch: &str| medinfer_bench(&n, &["--backend", backend, "--batch", batch]);
    println!("\n## GPU executor vs the CPU plan (`cargo xtask bench`)\n");
    let mut rows = vec![];
    for batch in ["1", "16"] {
        let gpu = match bench("gpu", batch) {
            Ok(v) => v,
            Err(e) => {
                println!("No GPU adapter here ({e:#}); nothing measured.\n");
                return Ok(());
            }
        };
        rows.push((batch, bench("cpu", batch)?, gpu));
    }
    let detail = rows[0].2[0]["backend_detail"].as_str().unwrap_or_default().to_string();
    println!(
        "{n} runs per model and batch after a warm-up; ms per model run (the batch in one run). {detail}\n"
    );
    println!(
        "| model | batch | CPU p50 ms | GPU p50 ms | GPU speed-up (CPU / GPU) | GPU first run ms (plan + upload) |"
    );
    println!("|---|---|---|---|---|---|");
    for (batch, cpu, gpu) in &rows {
        for g in gpu.as_array().context("gpu bench output")? {
            let id = g["model_id"].as_str().unwrap_or_default();
            let c =
                cpu.as_array().context("cpu bench output")?.iter().find(|r| r["model_id"] == id);
            let cp50 = c.and_then(|c| c["infer_ms"]["median"].as_f64()).unwrap_or(f64::NAN);
            let gp50 = g["infer_ms"]["median"].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {id} | {batch} | {cp50:.1} | {gp50:.1} | {:.2}× | {:.0} |",
                cp50 / gp50,
                g["first_run_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
