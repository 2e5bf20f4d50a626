//! `cargo xtask bench`: medinfer against onnxruntime in the same command, as ratios.
//!
//! What it covers so far (issue 7 grows it): native single-image model runs at 1 and 2
//! threads against onnxruntime (PyPI, installed on first use) on the same models and input
//! size, model load, 100 images end to end against a pydicom + Pillow + onnxruntime script,
//! the GPU executor against the CPU plan, `/infer` over HTTP on the native server and the
//! Spin component under load (`load.rs`: wrk), and — when the browser bundle is built
//! (`cargo xtask web`) — the bundle against onnxruntime-web in the same headless Chromium
//! (`web/bench.mjs`). It prints Markdown and writes it into BENCHMARKS.md between two marker
//! lines (the hand-written context around them stays); it never asserts on time.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo;

const ORT_VERSION: &str = "1.32.0";

/// BENCHMARKS.md's generated part sits between these lines; the rest is written by hand.
const BEGIN: &str = "<!-- cargo xtask bench: begin (generated, do not edit by hand) -->";
const END: &str = "<!-- cargo xtask bench: end -->";

pub(crate) const CHEST: &str = "testdata/dicom/RG1_chest_mono1_uncompressed_s4_DERIVED.dcm";

pub fn run(iterations: usize) -> Result<()> {
    cargo(&["build", "--release", "-p", "medinfer-cli"])?;
    ensure_onnxruntime()?;
    let mut md = String::new();
    md += &machine()?;
    md += &native(iterations)?;
    md += &end_to_end(iterations)?;
    md += &gpu(iterations)?;
    md += &crate::load::run(iterations)?;
    if Path::new("web/pkg/medinfer_wasm_bg.wasm").exists() {
        let out = Command::new("node")
            .args(["bench.mjs", "--n", &iterations.to_string()])
            .current_dir("web")
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running web/bench.mjs")?;
        if !out.status.success() {
            bail!("web/bench.mjs failed ({})", out.status);
        }
        md += "\n## In the browser vs onnxruntime-web (`web/bench.mjs`)\n\n";
        md += &markdown_lines(&String::from_utf8_lossy(&out.stdout));
    } else {
        eprintln!("xtask: web/pkg is not built; run `cargo xtask web` for the browser numbers");
        md += "\n(Browser rows: build the bundle with `cargo xtask web` first.)\n";
    }
    print!("{md}");
    write_benchmarks(&md)
}

/// bench.mjs's report as Markdown: npm's chatter dropped, a blank line before each table.
fn markdown_lines(text: &str) -> String {
    let mut md = String::new();
    let mut in_table = false;
    for line in text.lines().filter(|l| !l.starts_with("added ") && !l.starts_with("npm ")) {
        let row = line.starts_with('|');
        if row && !in_table {
            md.push('\n');
        }
        if !row && in_table {
            md.push('\n');
        }
        in_table = row;
        md += line;
        md.push('\n');
    }
    md
}

/// Replaces the generated part of BENCHMARKS.md (appending it the first time).
fn write_benchmarks(md: &str) -> Result<()> {
    let path = Path::new("BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n\n{}\n{END}", md.trim());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).context("writing BENCHMARKS.md")?;
    eprintln!("xtask: BENCHMARKS.md updated");
    Ok(())
}

/// What the numbers were measured on.
fn machine() -> Result<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let date = Command::new("date").arg("-u").arg("+%Y-%m-%d").output()?;
    let rustc = Command::new("rustc").arg("--version").output()?;
    Ok(format!(
        "Measured {} on {cpu}, {cores} cores; {}; onnxruntime {ORT_VERSION} (PyPI). Ratios are \
         medinfer / onnxruntime in the same run (below 1: medinfer is faster).\n\n",
        String::from_utf8_lossy(&date.stdout).trim(),
        String::from_utf8_lossy(&rustc.stdout).trim()
    ))
}

/// Rounds of the native rows: in each medinfer and onnxruntime take turns, so that a spell
/// in which this VM's two vCPUs share one core (it happens: whole processes whose two-thread
/// runs are no faster than one thread, both CPUs busy) falls on both sides.
const ROUNDS: usize = 3;

/// Runs per turn when medinfer and onnxruntime take turns: on this kind of shared VM the
/// speed of both drifts by tens of percent from one minute to the next, so each ratio is of
/// runs made in the same seconds.
const TURN: usize = 5;

/// Single-image model runs at 1 and 2 threads, and model load: each number the median of
/// [`ROUNDS`] alternating rounds' medians.
fn native(iterations: usize) -> Result<String> {
    let n = iterations.to_string();
    let turn = TURN.to_string();
    // Per round and thread count: medinfer and onnxruntime side by side, taking turns of
    // `TURN` runs (`bench/ort_native.py --medinfer`).
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let (mut ours, mut ort) = (Vec::new(), Vec::new());
        for threads in ["1", "2"] {
            let medinfer = format!(
                "target/release/medinfer bench --json --iterations {n} --models-dir models \
                 --threads {threads} --turns {turn}"
            );
            let mut pair = json(Command::new("python3").args([
                "bench/ort_native.py",
                "models",
                "--n",
                &n,
                "--threads",
                threads,
                "--turns",
                &turn,
                "--medinfer",
                &medinfer,
            ]))?;
            ours.push(pair["medinfer"].take());
            if let Value::Array(rows) = pair["onnxruntime"].take() {
                ort.extend(rows);
            }
        }
        let ours: [Value; 2] = ours.try_into().map_err(|_| anyhow::anyhow!("two thread counts"))?;
        rounds.push((ours, Value::Array(ort)));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut md = format!(
        "## Native model run vs onnxruntime, 1 and 2 threads\n\n{iterations} runs per model after \
         a warm-up, one 224×224 image; medinfer's time is the tract run inside \
         `medinfer bench --threads T` (preprocessed chest CR), onnxruntime's the session run on a \
         fixed tensor of the same shape with `intra_op_num_threads = T`. The two run side by \
         side and take turns of {TURN} runs (each turn after an untimed run), so that both are \
         timed in the same seconds of this shared machine; each number the median of {ROUNDS} \
         such rounds. Load, cold: medinfer \
         parses, checks the sha256, declutters, rewrites and optimises; onnxruntime creates the \
         session. Load from the plan form: medinfer reads the file the first load wrote \
         (`data/plans/<id>.plan` for the server), checks its sha256 and key and lowers the \
         few tract nodes left (median of 5, file read included).\n\n\
         | model | threads | medinfer p50 ms | onnxruntime p50 ms | ratio | medinfer load ms (cold) | from the plan form | ort load ms | load ratio (cold / plan form) |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    let first = rounds.first().context("no round")?;
    for (threads, index) in [(1, 0), (2, 1)] {
        for row in first.0[index].as_array().context("medinfer bench output")? {
            let id = row["model_id"].as_str().unwrap_or_default();
            let ours = |field: &dyn Fn(&Value) -> Option<f64>| {
                median(
                    rounds
                        .iter()
                        .filter_map(|(ours, _)| ours[index].as_array())
                        .filter_map(|rows| rows.iter().find(|r| r["model_id"] == id))
                        .filter_map(field)
                        .collect(),
                )
            };
            let theirs = |field: &str| {
                median(
                    rounds
                        .iter()
                        .filter_map(|(_, ort)| ort.as_array())
                        .filter_map(|rows| {
                            rows.iter().find(|r| r["model_id"] == id && r["threads"] == threads)
                        })
                        .filter_map(|r| r[field].as_f64())
                        .collect(),
                )
            };
            let p50 = ours(&|r| r["infer_ms"]["median"].as_f64());
            let load = ours(&|r| r["load_ms"].as_f64());
            let plan = ours(&|r| r["plan_form_load_ms"].as_f64());
            let (op50, oload) = (theirs("p50_ms"), theirs("load_ms"));
            if op50.is_nan() {
                continue;
            }
            md += &format!(
                "| {id} | {threads} | {p50:.1} | {op50:.1} | {:.2}× | {load:.0} | {plan:.0} | {oload:.0} | {:.2}× / {:.2}× |\n",
                p50 / op50,
                load / oload,
                plan / oload
            );
        }
    }
    Ok(md)
}

/// 100 images end to end (decode → result), medinfer vs a Python user of onnxruntime.
fn end_to_end(iterations: usize) -> Result<String> {
    let n = iterations.clamp(1, 3).to_string();
    let ours = medinfer_bench(&n, &["--batch", "100", "--chunk", "16", "--threads", "2"])?;
    let ort = json(Command::new("python3").args([
        "bench/ort_e2e.py",
        "models",
        CHEST,
        "--images",
        "100",
        "--chunk",
        "16",
        "--threads",
        "2",
        "--n",
        &n,
    ]))?;
    let mut md = format!(
        "\n## 100 images end to end vs onnxruntime\n\nThe chest CR decoded 100 times, \
         windowed, resized, normalised and classified, 16 images per model call, 2 threads; \
         medinfer: `medinfer bench --batch 100 --chunk 16 --threads 2` (tract runs a chunk image \
         by image, one image per thread, see ARCHITECTURE.md); onnxruntime: `bench/ort_e2e.py` (pydicom + Pillow + \
         `session.run` per chunk). p50 of {n} runs after a warm-up.\n\n\
         | model | medinfer s | onnxruntime s | ratio |\n|---|---|---|---|\n"
    );
    for row in ours.as_array().context("medinfer bench output")? {
        let id = row["model_id"].as_str().unwrap_or_default();
        let t = row["total_ms"]["median"].as_f64().unwrap_or(f64::NAN) / 1e3;
        let Some(theirs) =
            ort.as_array().context("ort output")?.iter().find(|r| r["model_id"] == id)
        else {
            continue;
        };
        let o = theirs["p50_ms"].as_f64().unwrap_or(f64::NAN) / 1e3;
        md += &format!("| {id} | {t:.2} | {o:.2} | {:.2}× |\n", t / o);
    }
    Ok(md)
}

fn ensure_onnxruntime() -> Result<()> {
    let have = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy, pydicom, PIL; print(onnxruntime.__version__)"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == ORT_VERSION);
    if !have {
        let pkg = format!("onnxruntime=={ORT_VERSION}");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "-q", &pkg, "numpy", "-r", "testdata/requirements.txt"])
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
pub(crate) fn medinfer_bench(n: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["bench", "--json", "--iterations", n, "--models-dir", "models"];
    args.extend(extra);
    json(Command::new("target/release/medinfer").args(args))
}

/// The GPU executor against the CPU plan, batch 1 and 16, same command, same machine.
fn gpu(iterations: usize) -> Result<String> {
    // Software adapters (lavapipe) take seconds per DenseNet image: a few runs tell enough.
    let n = iterations.clamp(1, 3).to_string();
    let bench = |backend: &str, batch: &str| {
        medinfer_bench(&n, &["--backend", backend, "--batch", batch, "--threads", "2"])
    };
    let mut md = String::from("\n## GPU executor vs the CPU plan\n\n");
    let mut rows = vec![];
    for batch in ["1", "16"] {
        let gpu = match bench("gpu", batch) {
            Ok(v) => v,
            Err(e) => {
                md += &format!("No GPU adapter here ({e:#}); nothing measured.\n");
                return Ok(md);
            }
        };
        let software = gpu[0]["backend_detail"]
            .as_str()
            .is_some_and(|d| d.contains("llvmpipe") || d.contains("SwiftShader"));
        rows.push((batch, bench("cpu", batch)?, gpu));
        if software {
            // Minutes per batch-16 run on a CPU-side Vulkan driver, and no information.
            break;
        }
    }
    let detail = rows[0].2[0]["backend_detail"].as_str().unwrap_or_default().to_string();
    md += &format!(
        "{n} runs per model and batch after a warm-up; ms per batch end to end (decode, \
         preprocess — on the GPU for the GPU rows — model, result), CPU on 2 threads. {detail}\n\n\
         | model | batch | CPU p50 ms | GPU p50 ms | GPU speed-up (CPU / GPU) | GPU first run ms (plan + upload) |\n\
         |---|---|---|---|---|---|\n"
    );
    for (batch, cpu, gpu) in &rows {
        for g in gpu.as_array().context("gpu bench output")? {
            let id = g["model_id"].as_str().unwrap_or_default();
            let c =
                cpu.as_array().context("cpu bench output")?.iter().find(|r| r["model_id"] == id);
            let cp50 = c.and_then(|c| c["total_ms"]["median"].as_f64()).unwrap_or(f64::NAN);
            let gp50 = g["total_ms"]["median"].as_f64().unwrap_or(f64::NAN);
            md += &format!(
                "| {id} | {batch} | {cp50:.1} | {gp50:.1} | {:.2}× | {:.0} |\n",
                cp50 / gp50,
                g["first_run_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(md)
}
