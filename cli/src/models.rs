//! Loading `models/<id>/{model.toml,model.onnx}` from disk into a [`Registry`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medinfer_core::Registry;

/// Where models live: the flag, else `$MEDINFER_MODELS`, else `./models`.
pub fn models_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MEDINFER_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Loads every model folder under `dir` (each must hold `model.toml`), optionally only `only`.
/// Returns the registry and the load time of each model in milliseconds.
pub fn load(dir: &Path, only: Option<&str>) -> Result<(Registry, Vec<(String, f64)>)> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    entries.sort();
    let mut registry = Registry::new();
    let mut timings = Vec::new();
    for folder in entries {
        let text = std::fs::read_to_string(folder.join("model.toml"))?;
        let manifest = medinfer_core::ModelManifest::from_toml(&text)
            .with_context(|| format!("{}", folder.join("model.toml").display()))?;
        if only.is_some_and(|id| id != manifest.id) {
            continue;
        }
        let onnx = std::fs::read(folder.join(&manifest.file))
            .with_context(|| format!("cannot read {}", folder.join(&manifest.file).display()))?;
        let t = std::time::Instant::now();
        let model = medinfer_core::LoadedModel::load(manifest, &onnx)
            .with_context(|| format!("loading {}", folder.display()))?;
        timings.push((model.manifest().id.clone(), t.elapsed().as_secs_f64() * 1e3));
        registry.insert(model)?;
    }
    if registry.is_empty() {
        match only {
            Some(id) => bail!("no model with id {id:?} in {}", dir.display()),
            None => {
                bail!("no models in {} (each model is a folder with model.toml)", dir.display())
            }
        }
    }
    Ok((registry, timings))
}
