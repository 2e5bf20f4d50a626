//! Where models live, and loading them for one-shot commands.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
pub use medinfer_service::models::{Loaded, Loading};

/// Where models live: the flag, else `$MEDINFER_MODELS`, else `./models`.
pub fn models_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MEDINFER_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Where the models' plan forms are kept (`medinfer_service::models::load_dir`):
/// `$MEDINFER_PLANS` (`off` or empty: nowhere, every load from ONNX), else `default`.
pub fn plans_dir(default: Option<PathBuf>) -> Option<PathBuf> {
    match std::env::var_os("MEDINFER_PLANS") {
        Some(v) if v.is_empty() || v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => default,
    }
}

/// The user's cache for one-shot commands: `$XDG_CACHE_HOME/medinfer/plans`, else
/// `$HOME/.cache/medinfer/plans` (unless `$MEDINFER_PLANS` says otherwise).
pub fn user_plans_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    plans_dir(cache.map(|c| c.join("medinfer").join("plans")))
}

/// Loads every model folder under `dir` (each must hold `model.toml`), optionally only `only`,
/// from their plan forms in `plans` where it holds them (writing them there otherwise). Any
/// folder that fails is an error here (the server reports such folders instead).
/// Returns the registry, the load time of each model in milliseconds and how each one's plan
/// form went (`Loaded::plan_notes`).
pub fn load(
    dir: &Path,
    only: Option<&str>,
    loading: Loading,
    plans: Option<&Path>,
) -> Result<Loaded> {
    let t = Instant::now();
    let clock = || t.elapsed().as_secs_f64() * 1e3;
    let loaded = medinfer_service::models::load_dir(dir, only, loading, plans, &clock)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))?;
    if let Some(f) = loaded.failures.first() {
        bail!("loading {}: {}", dir.join(&f.folder).display(), f.error);
    }
    if loaded.registry.is_empty() {
        match only {
            Some(id) => bail!("no model with id {id:?} in {}", dir.display()),
            None => {
                bail!("no models in {} (each model is a folder with model.toml)", dir.display())
            }
        }
    }
    Ok(loaded)
}
