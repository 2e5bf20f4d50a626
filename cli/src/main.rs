//! `medinfer`: the native command line over `medinfer-core`, and the native server over
//! `medinfer-service`.

mod backend;
mod deid;
mod models;
mod serve;
mod store;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use medinfer_core::{DecodeOptions, Limits, Timer};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "medinfer", version, about = "Medical-image inference where the pixels are.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for the models' matrix products and convolutions on the CPU (default: the
    /// machine's cores; 1: the calling thread only).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

/// The thread count `--threads` asks for, else the machine's.
fn threads(cli: Option<usize>) -> usize {
    cli.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1)).max(1)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Classify image files (DICOM, PNG, JPEG) or every such file in folders.
    Infer {
        /// Files or folders (searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Model id (default: the registry's default model).
        #[arg(long)]
        model: Option<String>,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
        /// For multi-frame DICOM: the frame to classify (0-based).
        #[arg(long)]
        frame: Option<u32>,
        /// Images per model run.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// What runs the model: cpu (tract), gpu (wgpu: Vulkan/Metal/DX12) or auto (a
        /// hardware GPU when present, else the CPU).
        #[arg(long, value_enum, default_value = "cpu")]
        backend: backend::Backend,
        /// Models folder (default: $MEDINFER_MODELS, else ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// List the models in the registry.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Models folder (default: $MEDINFER_MODELS, else ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// De-identify DICOM files (PS3.15 Basic Profile): a file, or a folder tree into a new tree.
    Deid {
        /// Input file or folder.
        input: PathBuf,
        /// Output file or folder (created).
        output: PathBuf,
        /// Profile options: retain-safe-private, retain-uids, retain-device-identity,
        /// retain-institution-identity, retain-patient-characteristics, retain-full-dates,
        /// retain-modified-dates, clean-descriptors, no-clean-graphics.
        #[arg(long = "option", value_name = "OPTION")]
        options: Vec<String>,
        /// File holding the secret key (16+ bytes); else $MEDINFER_DEID_KEY.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Clean Pixel Data (burned-in text): auto (BurnedInAnnotation=YES, US, Secondary
        /// Capture), always or never.
        #[arg(long, default_value = "auto")]
        pixels: String,
        /// Models folder holding text-detector/ (default: $MEDINFER_MODELS, else ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Where to write the JSON report (default: stdout for a file,
        /// OUTPUT/deid-report.json for a folder).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Measure model load and single-image latency for every model (median, p90, min).
    Bench {
        /// The image to classify (default: the bundled chest X-ray DICOM).
        #[arg(long, default_value = "testdata/dicom/RG1_chest_mono1_uncompressed_s4_DERIVED.dcm")]
        file: PathBuf,
        /// Timed runs per model (after one warm-up run).
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// What runs the model: cpu (tract), gpu (wgpu: Vulkan/Metal/DX12) or auto (a
        /// hardware GPU when present, else the CPU).
        #[arg(long, value_enum, default_value = "cpu")]
        backend: backend::Backend,
        /// Images per timed run, each decoded from the file (end to end: decode, preprocess,
        /// model, result); timings are per run.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Images per model run within a batch (default: the whole batch, at most 16).
        #[arg(long)]
        chunk: Option<usize>,
        /// Models folder (default: $MEDINFER_MODELS, else ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Also run each model's GPU plan for one chunk with a timestamp around every
        /// dispatch, and report GPU time per kernel and the slowest dispatches (needs a GPU
        /// adapter with timestamp queries).
        #[arg(long)]
        gpu_profile: bool,
        /// Take turns with another process on this machine, `N` timed runs a turn: before
        /// each turn print `turn <model id>` and wait for a line on stdin; each turn starts
        /// with one untimed run. `bench/ort_native.py --medinfer` drives it, so that both
        /// are timed in the same minutes of a shared, noisy machine.
        #[arg(long, value_name = "N")]
        turns: Option<usize>,
    },
    /// Serve the HTTP API (the same as the Spin component) over an embedded store.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port (0: any free port; the chosen one is printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Folder for the store (medinfer.redb) and development secrets.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// TOML configuration file (else $MEDINFER_CONFIG); MEDINFER_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Models folder (default: $MEDINFER_MODELS, else ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Requests computed at once (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// What runs the models: tract's CPU plan, the GPU (wgpu: Vulkan/Metal/DX12;
        /// preprocessing there too), or the GPU when a hardware adapter takes every model.
        #[arg(long, value_enum, default_value_t = backend::Backend::Cpu)]
        backend: backend::Backend,
        /// Requests that may wait for a worker before the server answers 503.
        #[arg(long, default_value_t = 64)]
        queue: usize,
        /// Shut down gracefully when standard input closes (test harnesses use this so a
        /// server never outlives them).
        #[arg(long, hide = true)]
        stop_on_stdin_eof: bool,
    },
    /// Mint a development token (HS256, with the configured secret).
    Token {
        /// The token's subject (the user id recorded in the audit log).
        #[arg(long)]
        sub: String,
        /// viewer, operator, auditor or admin.
        #[arg(long)]
        role: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The server's data folder (where development secrets are).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// TOML configuration file (else $MEDINFER_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Describe an image file: format, size, transfer syntax, photometric. Never a PHI value.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

struct Clock(Instant);

impl Timer for Clock {
    fn now_ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1e3
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = threads(cli.threads);
    if let Err(e) = medinfer_core::set_threads(threads) {
        eprintln!("error: --threads {threads}: {e}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Infer { paths, model, json, frame, batch, backend, models_dir } => {
            infer(&paths, model.as_deref(), json, frame, batch, backend, models_dir)
        }
        Command::Models { json, models_dir } => list_models(json, models_dir),
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Serve {
            host,
            port,
            data_dir,
            config,
            models_dir,
            workers,
            backend,
            queue,
            stop_on_stdin_eof,
        } => {
            let sources = serve::Sources { file: config_file(config), data_dir };
            let workers = workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map(usize::from).unwrap_or(2)
            });
            serve::serve(serve::ServeOptions {
                addr: std::net::SocketAddr::new(host, port),
                sources,
                models_dir: models::models_dir(models_dir),
                workers,
                backend,
                queue,
                stop_on_stdin_eof,
            })
            .map(|()| true)
        }
        Command::Token { sub, role, ttl, data_dir, config } => {
            let sources = serve::Sources { file: config_file(config), data_dir };
            serve::token(&sources, &sub, &role, ttl).map(|t| {
                println!("{t}");
                true
            })
        }
        Command::Bench {
            file,
            iterations,
            json,
            backend,
            batch,
            chunk,
            models_dir,
            gpu_profile,
            turns,
        } => {
            let batch = batch.max(1);
            let chunk = chunk.unwrap_or(batch.min(16)).clamp(1, batch);
            let sizes = [batch, chunk, threads];
            let turns = turns.map(|n| n.max(1));
            let runs = Runs { iterations, turns };
            bench(&file, runs, json, backend, sizes, models_dir, gpu_profile)
        }
        Command::Deid { input, output, options, key_file, pixels, models_dir, report } => (|| {
            use medinfer_core::deid::{DeidOptions, PixelCleaning};
            let key = deid::key(key_file.as_deref())?;
            let mut opts = DeidOptions::default();
            for o in &options {
                opts.set(o)?;
            }
            let cleaning = match pixels.as_str() {
                "auto" => PixelCleaning::Auto,
                "always" => PixelCleaning::Always,
                "never" => PixelCleaning::Never,
                other => anyhow::bail!("--pixels takes auto, always or never, not {other:?}"),
            };
            let detector = match cleaning {
                PixelCleaning::Never => None,
                _ => Some(deid::detector(&models::models_dir(models_dir))?),
            };
            let settings =
                deid::Settings { key: &key, options: opts, cleaning, detector: detector.as_ref() };
            deid::run(&input, &output, &settings, report.as_deref())
        })(
        ),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The configuration file: the flag, else `$MEDINFER_CONFIG`.
fn config_file(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("MEDINFER_CONFIG").map(PathBuf::from))
}

/// Files under `paths`, folders walked recursively, sorted, hidden files skipped.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn infer(
    paths: &[PathBuf],
    model_id: Option<&str>,
    as_json: bool,
    frame: Option<u32>,
    batch: usize,
    backend: backend::Backend,
    models_dir: Option<PathBuf>,
) -> Result<bool> {
    let files = collect_files(paths)?;
    let dir = models::models_dir(models_dir);
    // The plan forms only for tract's CPU plan: another executor walks the decluttered
    // graph, which only the ONNX load gives.
    let plans = models::user_plans_dir().filter(|_| backend == backend::Backend::Cpu);
    let mut registry =
        models::load(&dir, model_id, models::Loading::Parallel, plans.as_deref())?.registry;
    eprintln!("{}", backend::apply(&mut registry, backend)?);
    let model = registry.resolve(model_id)?;
    let clock = Clock(Instant::now());
    let limits = Limits::default();
    let options = DecodeOptions { frame, window: None };
    let progress = (files.len() > 1).then(|| {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut rows = Vec::new();
    let mut all_ok = true;
    for chunk in files.chunks(batch.max(1)) {
        // Decode the chunk (several files at once with threads), then one model run for
        // everything that decoded.
        let decoded = medinfer_core::map_on_pool(chunk.iter().collect(), |path| {
            let t0 = clock.now_ms();
            let result = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read the file: {e}"))
                .and_then(|bytes| {
                    medinfer_core::decode(&bytes, &limits, &options).map_err(anyhow::Error::new)
                });
            (path, result, clock.now_ms() - t0)
        });
        let ok: Vec<_> =
            decoded.iter().filter_map(|(_, r, _)| r.as_ref().ok()).map(|d| &d.image).collect();
        let mut predictions = medinfer_core::predict(model, &ok, batch, &clock)?.into_iter();
        for (path, result, decode_ms) in decoded {
            let row = match result {
                Ok(d) => {
                    let (p, mut t) = predictions.next().ok_or_else(|| {
                        anyhow::anyhow!("the model returned fewer predictions than images")
                    })?;
                    t.decode_ms = decode_ms;
                    t.total_ms += decode_ms;
                    json!({
                        "file": path.display().to_string(),
                        "model_id": model.manifest().id,
                        "model_version": model.manifest().version,
                        "backend": model.backend(),
                        "format": d.format,
                        "transfer_syntax": d.dicom.as_ref().map(|i| &i.transfer_syntax),
                        "predictions": p.predictions,
                        "top_label": p.top_label,
                        "confidence_score": p.confidence_score,
                        "timing_ms": t,
                    })
                }
                Err(e) => {
                    all_ok = false;
                    let code = e
                        .downcast_ref::<medinfer_core::Error>()
                        .map_or("io.read_failed", |e| e.code());
                    json!({"file": path.display().to_string(), "error": {"code": code, "message": e.to_string()}})
                }
            };
            rows.push(row);
            if let Some(bar) = &progress {
                bar.inc(1);
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows, model.manifest());
    }
    Ok(all_ok)
}

fn print_table(rows: &[serde_json::Value], manifest: &medinfer_core::ModelManifest) {
    println!("model: {} {}", manifest.id, manifest.version);
    if let Some(d) = &manifest.disclaimer {
        println!("note:  {d}");
    }
    let width =
        rows.iter().map(|r| r["file"].as_str().unwrap_or("").len()).max().unwrap_or(4).clamp(4, 60);
    println!("{:<width$}  {:<20} {:>6}  {:<44} {:>8}", "file", "top label", "score", "next", "ms");
    for r in rows {
        let file = r["file"].as_str().unwrap_or("");
        let file = if file.len() > width { &file[file.len() - width..] } else { file };
        if let Some(err) = r.get("error") {
            println!(
                "{file:<width$}  error {}: {}",
                err["code"].as_str().unwrap_or(""),
                err["message"].as_str().unwrap_or("")
            );
            continue;
        }
        let next: Vec<String> = r["predictions"]
            .as_array()
            .map(|p| {
                p.iter()
                    .skip(1)
                    .take(3)
                    .map(|s| {
                        format!(
                            "{} {:.3}",
                            s["label"].as_str().unwrap_or(""),
                            s["score"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{file:<width$}  {:<20} {:>6.3}  {:<44} {:>8.1}",
            r["top_label"].as_str().unwrap_or(""),
            r["confidence_score"].as_f64().unwrap_or(0.0),
            next.join(", "),
            r["timing_ms"]["total_ms"].as_f64().unwrap_or(0.0)
        );
    }
}

fn list_models(as_json: bool, models_dir: Option<PathBuf>) -> Result<bool> {
    let dir = models::models_dir(models_dir);
    let plans = models::user_plans_dir();
    let loaded = models::load(&dir, None, models::Loading::Parallel, plans.as_deref())?;
    let (registry, timings) = (&loaded.registry, &loaded.load_ms);
    let rows: Vec<_> = registry
        .iter()
        .map(|m| {
            let man = m.manifest();
            let load_ms = timings.iter().find(|(id, _)| *id == man.id).map_or(0.0, |t| t.1);
            let plan_form = loaded.plan_notes.iter().find(|(id, _)| *id == man.id);
            json!({
                "model_id": man.id, "version": man.version, "status": man.status,
                "file_path": dir.join(&man.id).join(&man.file).display().to_string(),
                "input_shape": man.input.shape, "output_shape": m.output_shape(),
                "labels": man.output.labels.len(), "sha256": m.sha256(), "load_ms": load_ms,
                "plan_form": plan_form.map(|(_, note)| note), "disclaimer": man.disclaimer,
            })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    println!(
        "{:<24} {:<22} {:<12} {:<20} {:<10} {:<14} {:>8}",
        "model_id", "version", "status", "input", "output", "sha256", "load ms"
    );
    for r in &rows {
        let shape = |v: &serde_json::Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| d.to_string().trim_matches('"').to_string())
                        .collect::<Vec<_>>()
                        .join("x")
                })
                .unwrap_or_default()
        };
        println!(
            "{:<24} {:<22} {:<12} {:<20} {:<10} {:<14} {:>8.0}",
            r["model_id"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            shape(&r["input_shape"]),
            shape(&r["output_shape"]),
            &r["sha256"].as_str().unwrap_or("")[..12],
            r["load_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(true)
}

fn inspect(file: &Path, as_json: bool) -> Result<bool> {
    let bytes = std::fs::read(file)?;
    let limits = Limits::default();
    let mut out = json!({"file": file.display().to_string(), "bytes": bytes.len()});
    let format = medinfer_core::sniff(&bytes)?;
    out["format"] = json!(format);
    out["media_type"] = json!(format.media_type());
    match format {
        medinfer_core::Format::Dicom => {
            let image = medinfer_core::DicomImage::parse(&bytes)?;
            out["dicom"] = serde_json::to_value(image.info())?;
        }
        _ => {
            let px = medinfer_core::decode_raster(&bytes, format, &limits)?;
            out["width"] = json!(px.width);
            out["height"] = json!(px.height);
            out["channels"] = json!(px.channels);
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_flat("", &out);
    }
    Ok(true)
}

fn print_flat(prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                print_flat(&key, v);
            }
        }
        serde_json::Value::Null => {}
        other => println!("{prefix:<28} {}", other.to_string().trim_matches('"')),
    }
}

/// Median, 90th percentile and minimum of `v` (sorted in place).
fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), v[0])
}

/// `medinfer bench`'s timed runs per model, and per turn where it takes turns with another
/// process (`--turns`).
struct Runs {
    iterations: usize,
    turns: Option<usize>,
}

/// `medinfer bench --turns`: says whose turn is next and waits until the other process has
/// had its own (a line on stdin).
fn take_turn(model_id: &str) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    writeln!(out, "turn {model_id}")?;
    out.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        anyhow::bail!("--turns: stdin closed before the other process's turn ended");
    }
    Ok(())
}

/// The load of `manifest`'s model from its plan form, file read included, in milliseconds:
/// the median of 5 after the form is written to a temporary file (`None`: the model has
/// none, its graph holding an operator the form does not cover).
fn plan_form_load_ms(dir: &Path, manifest: &medinfer_core::ModelManifest) -> Result<Option<f64>> {
    let onnx = std::fs::read(dir.join(&manifest.id).join(&manifest.file))?;
    let (_, form) = medinfer_core::LoadedModel::load_with_plan_form(manifest.clone(), &onnx)?;
    let Some(form) = form else { return Ok(None) };
    let path = std::env::temp_dir().join(format!("medinfer-bench-{}.plan", std::process::id()));
    std::fs::write(&path, form)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let form = std::fs::read(&path)?;
        medinfer_core::LoadedModel::load_plan_form(manifest.clone(), &form)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_file(&path)?;
    Ok(Some(summary(&mut times).0))
}

fn bench(
    file: &Path,
    Runs { iterations, turns }: Runs,
    as_json: bool,
    backend: backend::Backend,
    [batch, chunk, threads]: [usize; 3],
    models_dir: Option<PathBuf>,
    gpu_profile: bool,
) -> Result<bool> {
    let bytes = std::fs::read(file)?;
    let dir = models::models_dir(models_dir);
    // One by one: each model's load time is its own, as onnxruntime's session creation is.
    // From ONNX (the cold load); the plan form's load is measured on its own below.
    let loaded = models::load(&dir, None, models::Loading::OneByOne, None)?;
    let (mut registry, load_ms) = (loaded.registry, loaded.load_ms);
    let (backend_line, gpu) = backend::apply_gpu(&mut registry, backend)?;
    if gpu_profile && gpu.is_none() {
        anyhow::bail!("--gpu-profile needs the models on the GPU ({backend_line})");
    }
    eprintln!("{backend_line}");
    let clock = Clock(Instant::now());
    let limits = Limits::default();
    let mut rows = Vec::new();
    for model in registry.iter() {
        let id = &model.manifest().id;
        // One run: `batch` images, each decoded, then through the model `chunk` at a time.
        let run = || -> Result<(f64, f64)> {
            let t0 = clock.now_ms();
            let decoded = medinfer_core::map_on_pool(vec![(); batch], |()| {
                medinfer_core::decode(&bytes, &limits, &DecodeOptions::default())
            })
            .into_iter()
            .collect::<medinfer_core::Result<Vec<_>>>()?;
            let images: Vec<_> = decoded.iter().map(|d| &d.image).collect();
            let results = medinfer_core::predict(model, &images, chunk, &clock)?;
            let infer: f64 = results.iter().map(|(_, t)| t.infer_ms).sum();
            Ok((clock.now_ms() - t0, infer))
        };
        let (first_run_ms, _) = run()?; // warm-up (builds the GPU plan for this batch size)
        let (mut total, mut infer) = (Vec::new(), Vec::new());
        for timed in 0..iterations.max(1) {
            if turns.is_some_and(|n| timed % n == 0) {
                take_turn(id)?;
                run()?; // the other process's turn left its data in the caches, not ours
            }
            let (t, i) = run()?;
            total.push(t);
            infer.push(i);
        }
        let (t50, t90, tmin) = summary(&mut total);
        let (i50, i90, imin) = summary(&mut infer);
        let load = load_ms.iter().find(|(m, _)| m == id).map_or(0.0, |l| l.1);
        let plan_load = plan_form_load_ms(&dir, model.manifest())?;
        rows.push(json!({
            "model_id": id, "iterations": iterations, "load_ms": load,
            "plan_form_load_ms": plan_load, "batch": batch,
            "chunk": chunk, "threads": threads,
            "backend": model.backend(), "backend_detail": backend_line,
            "first_run_ms": first_run_ms,
            "infer_ms": {"median": i50, "p90": i90, "min": imin},
            "total_ms": {"median": t50, "p90": t90, "min": tmin},
        }));
    }
    if let Some(gpu) = gpu.filter(|_| gpu_profile) {
        for (id, profile) in backend::profile(&registry, &gpu, chunk)? {
            eprintln!("GPU profile of {id} (one run of {chunk} image(s), a pass per dispatch):");
            let gpu_ms = profile["gpu_ms"].as_f64().unwrap_or(0.0);
            eprintln!("  {gpu_ms:.2} ms over {} dispatches", profile["dispatches"]);
            for k in profile["by_kernel"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {:<10} {:>5} dispatches {:>9.3} ms",
                    k["kernel"].as_str().unwrap_or(""),
                    k["dispatches"],
                    k["ms"].as_f64().unwrap_or(0.0)
                );
            }
            for d in profile["slowest"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {:>9.3} ms  {:<8} {} {}",
                    d["ms"].as_f64().unwrap_or(0.0),
                    d["kernel"].as_str().unwrap_or(""),
                    d["groups"],
                    d["node"].as_str().unwrap_or("")
                );
            }
            if let Some(row) = rows.iter_mut().find(|r| r["model_id"] == id) {
                row["gpu_profile"] = profile;
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    println!(
        "file: {} ({} runs per model, {} image(s) per run in model runs of {}, threads: {}; ms per run)",
        file.display(),
        iterations,
        batch,
        chunk,
        threads
    );
    println!(
        "{:<24} {:>9} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "model", "load ms", "(plan ms)", "infer p50", "infer p90", "total p50", "total p90"
    );
    for r in &rows {
        println!(
            "{:<24} {:>9.0} {:>10} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            r["model_id"].as_str().unwrap_or(""),
            r["load_ms"].as_f64().unwrap_or(0.0),
            r["plan_form_load_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.0}")),
            r["infer_ms"]["median"].as_f64().unwrap_or(0.0),
            r["infer_ms"]["p90"].as_f64().unwrap_or(0.0),
            r["total_ms"]["median"].as_f64().unwrap_or(0.0),
            r["total_ms"]["p90"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(true)
}
