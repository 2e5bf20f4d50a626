//! Loading `models/<id>/{model.toml,model.onnx}` folders into a [`Registry`], keeping the
//! failures so `/health` can report them.

use std::path::{Path, PathBuf};

use medinfer_core::{LoadedModel, ModelManifest, Registry};

/// A model folder that did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// The folder's name.
    pub folder: String,
    /// Why (a core error code and sentence, or an I/O problem).
    pub error: String,
}

/// What [`load_dir`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The models that loaded.
    pub registry: Registry,
    /// The folders that did not.
    pub failures: Vec<LoadFailure>,
    /// Parse + optimise time per model, milliseconds (when a clock is given).
    pub load_ms: Vec<(String, f64)>,
}

/// Loads every folder under `dir` that holds a `model.toml` (sorted by name), optionally
/// only the model `only`. `clock` gives milliseconds for load timings.
pub fn load_dir(
    dir: &Path,
    only: Option<&str>,
    clock: &dyn Fn() -> f64,
) -> std::io::Result<Loaded> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    folders.sort();
    let mut loaded = Loaded::default();
    for folder in folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let fail = |error: String| LoadFailure { folder: name.clone(), error };
        let manifest = match std::fs::read_to_string(folder.join("model.toml")) {
            Ok(text) => ModelManifest::from_toml(&text).map_err(|e| fail(e.to_string())),
            Err(e) => Err(fail(format!("cannot read model.toml: {e}"))),
        };
        let manifest = match manifest {
            Ok(m) if only.is_some_and(|id| id != m.id) => continue,
            Ok(m) => m,
            Err(f) => {
                loaded.failures.push(f);
                continue;
            }
        };
        let onnx = match std::fs::read(folder.join(&manifest.file)) {
            Ok(b) => b,
            Err(e) => {
                loaded.failures.push(fail(format!("cannot read {}: {e}", manifest.file)));
                continue;
            }
        };
        let t = clock();
        match LoadedModel::load(manifest, &onnx) {
            Ok(model) => {
                loaded.load_ms.push((model.manifest().id.clone(), clock() - t));
                if let Err(e) = loaded.registry.insert(model) {
                    loaded.failures.push(fail(e.to_string()));
                }
            }
            Err(e) => loaded.failures.push(fail(e.to_string())),
        }
    }
    Ok(loaded)
}
