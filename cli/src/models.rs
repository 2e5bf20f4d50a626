//! Where models live, and loading them for one-shot commands.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medinfer_core::Registry;
pub use medinfer_service::models::Loading;

/// Where models live: the flag, else `$MEDINFER_MODELS`, else `./models`.
pub fn models_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("MEDINFER_MODELS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Loads every model folder under `dir` (each must hold `model.toml`), optionally only `only`.
/// Any folder that fails is an error here (the server reports such folders instead).
/// Returns the registry and the load time of each model in milliseconds.
pub fn load(
    dir: &Path,
    only: Option<&str>,
    loading: Loading,
) -> Result<(Registry, Vec<(String, f64)>)> {
    let t = Instant::now();
    let loaded =
        medinfer_service::models::load_dir(dir, only, loading, &|| t.elapsed().as_secs_f64() * 1e3)
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
    Ok((loaded.registry, loaded.load_ms))
}
