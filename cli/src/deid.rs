//! `medinfer deid IN OUT`: de-identify a file or a folder tree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medinfer_core::deid::{DeidKey, DeidOptions, PixelCleaning, TextDetector, deidentify};
use serde_json::json;

/// Reads the key: `--key-file`, else `$MEDINFER_DEID_KEY` (the secret itself).
pub fn key(key_file: Option<&Path>) -> Result<DeidKey> {
    let secret = match key_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?,
        None => match std::env::var("MEDINFER_DEID_KEY") {
            Ok(v) => v.into_bytes(),
            Err(_) => bail!(
                "a de-identification key is required: --key-file FILE or $MEDINFER_DEID_KEY (16 bytes or more)"
            ),
        },
    };
    let trimmed = secret.trim_ascii();
    Ok(DeidKey::new(trimmed)?)
}

/// Loads the bundled text detector from `<models>/text-detector/`.
pub fn detector(models_dir: &Path) -> Result<TextDetector> {
    let path = models_dir.join("text-detector").join("ch_PP-OCRv4_det_infer.onnx");
    let onnx = std::fs::read(&path)
        .with_context(|| format!("cannot read the text detector {}", path.display()))?;
    Ok(TextDetector::load(&onnx)?)
}

/// Everything one `deid` run needs besides the paths.
pub struct Settings<'a> {
    /// The secret.
    pub key: &'a DeidKey,
    /// Profile options.
    pub options: DeidOptions,
    /// When to clean pixel data.
    pub cleaning: PixelCleaning,
    /// The detector (required unless `cleaning` is `Never`).
    pub detector: Option<&'a TextDetector>,
}

/// De-identifies `input` (file or folder) into `output`. Returns whether every file succeeded.
pub fn run(
    input: &Path,
    output: &Path,
    settings: &Settings,
    report_path: Option<&Path>,
) -> Result<bool> {
    let jobs: Vec<(PathBuf, PathBuf)> = if input.is_dir() {
        crate::collect_files(&[input.to_path_buf()])?
            .into_iter()
            .map(|f| {
                let rel =
                    f.strip_prefix(input).map(Path::to_path_buf).unwrap_or_else(|_| f.clone());
                let out = output.join(rel);
                (f, out)
            })
            .collect()
    } else {
        vec![(input.to_path_buf(), output.to_path_buf())]
    };
    let bar = (jobs.len() > 1).then(|| indicatif::ProgressBar::new(jobs.len() as u64));
    let mut rows = Vec::new();
    let mut all_ok = true;
    for (src, dst) in &jobs {
        let row = match one(src, dst, settings) {
            Ok(report) => {
                json!({"file": src.display().to_string(), "output": dst.display().to_string(), "report": report})
            }
            Err(e) => {
                all_ok = false;
                let code =
                    e.downcast_ref::<medinfer_core::Error>().map_or("io.failed", |e| e.code());
                json!({"file": src.display().to_string(), "error": {"code": code, "message": format!("{e:#}")}})
            }
        };
        if let Some(bar) = &bar {
            bar.inc(1);
        }
        rows.push(row);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let ok = rows.iter().filter(|r| r.get("error").is_none()).count();
    let summary =
        json!({"files": rows.len(), "deidentified": ok, "failed": rows.len() - ok, "items": rows});
    let text = serde_json::to_string_pretty(&summary)?;
    match report_path {
        Some(p) => std::fs::write(p, text)?,
        None if input.is_dir() => std::fs::write(output.join("deid-report.json"), text)?,
        None => println!("{text}"),
    }
    eprintln!("de-identified {ok} of {} file(s)", rows.len());
    Ok(all_ok)
}

/// One file: read, de-identify in memory, write to a temporary name, rename. A failure
/// leaves no output behind.
fn one(src: &Path, dst: &Path, s: &Settings) -> Result<medinfer_core::deid::Report> {
    let bytes = std::fs::read(src).context("cannot read the file")?;
    let format = medinfer_core::sniff(&bytes)?;
    if format != medinfer_core::Format::Dicom {
        return Err(medinfer_core::Error::UnsupportedFormat.into());
    }
    let result = deidentify(&bytes, s.key, s.options, s.cleaning, s.detector)?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = dst.with_extension("medinfer-tmp");
    std::fs::write(&tmp, &result.bytes)?;
    std::fs::rename(&tmp, dst)?;
    Ok(result.report)
}
