//! Loading `models/<id>/{model.toml,model.onnx}` folders into a [`Registry`], keeping the
//! failures so `/health` can report them; from each model's plan form where a plans folder
//! holds one this build wrote (`medinfer_core::LoadedModel::load_plan_form`: milliseconds
//! instead of the ONNX path's hundreds), writing it there on the first load.

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
    /// Parse + optimise time per model, milliseconds (when a clock is given); from the
    /// bytes read to the model ready, whichever form it loaded from.
    pub load_ms: Vec<(String, f64)>,
    /// Per model, how its plan form went when a plans folder is given: "loaded from its plan
    /// form", "plan form written", or why neither (for the log).
    pub plan_notes: Vec<(String, String)>,
}

/// How [`load_dir`] loads the models it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    /// Several at once, one per thread of the pool `medinfer_core::set_threads` started
    /// (`medinfer_core::map_on_pool`; one by one without a pool, as on wasm): the shortest
    /// start, since a load is single-threaded graph rewriting inside tract.
    Parallel,
    /// One after another, so that each model's load time is its own (benchmarks).
    OneByOne,
}

/// Loads every folder under `dir` that holds a `model.toml` (sorted by name), optionally
/// only the model `only`. `clock` gives milliseconds for load timings. The manifests are
/// read first; then each model is read, parsed and optimised as `loading` says. With
/// `plans`, a model whose manifest pins its sha256 loads from `plans/<id>.plan` when that is
/// its plan form for this build and CPU, and from ONNX otherwise, the form then (re)written
/// there; a form that cannot be read or written only costs the ONNX load.
pub fn load_dir(
    dir: &Path,
    only: Option<&str>,
    loading: Loading,
    plans: Option<&Path>,
    clock: &(dyn Fn() -> f64 + Sync),
) -> std::io::Result<Loaded> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    folders.sort();
    // Each folder's outcome in folder order, whichever thread loaded it: the failures and a
    // duplicate id come out as a one-by-one load would give them.
    let mut jobs: Vec<(String, Job)> = Vec::new();
    for folder in folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let manifest = match std::fs::read_to_string(folder.join("model.toml")) {
            Ok(text) => ModelManifest::from_toml(&text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot read model.toml: {e}")),
        };
        let job = match manifest {
            Ok(m) if only.is_some_and(|id| id != m.id) => continue,
            Ok(m) => Ok((folder.join(&m.file), m)),
            Err(e) => Err(e),
        };
        jobs.push((name, job));
    }
    let mut loaded = Loaded::default();
    let load = |(name, job): (String, Job)| (name, load_one(job, plans, clock));
    let outcomes: Vec<(String, Outcome)> = match loading {
        Loading::Parallel => medinfer_core::map_on_pool(jobs, load),
        Loading::OneByOne => jobs.into_iter().map(load).collect(),
    };
    for (folder, result) in outcomes {
        let error = match result {
            Ok((model, ms, note)) => {
                let id = model.manifest().id.clone();
                if let Some(note) = note {
                    loaded.plan_notes.push((id.clone(), note));
                }
                match loaded.registry.insert(model) {
                    Ok(_) => {
                        loaded.load_ms.push((id, ms));
                        continue;
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err(error) => error,
        };
        loaded.failures.push(LoadFailure { folder, error });
    }
    Ok(loaded)
}

/// A folder's model file and manifest, or why the manifest could not be read.
type Job = std::result::Result<(PathBuf, ModelManifest), String>;
/// A loaded model, its load time in milliseconds and how its plan form went, or why it
/// failed.
type Outcome = std::result::Result<(LoadedModel, f64, Option<String>), String>;

fn load_one(job: Job, plans: Option<&Path>, clock: &(dyn Fn() -> f64 + Sync)) -> Outcome {
    let (file, manifest) = job?;
    let plans = plans.filter(|_| manifest.sha256.is_some());
    let mut refused = None;
    if let Some(dir) = plans {
        match std::fs::read(plan_path(dir, &manifest.id)) {
            Ok(form) => {
                let t = clock();
                match LoadedModel::load_plan_form(manifest.clone(), &form) {
                    Ok(model) => {
                        return Ok((model, clock() - t, Some("loaded from its plan form".into())));
                    }
                    Err(e) => refused = Some(format!("plan form refused ({e})")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => refused = Some(format!("cannot read its plan form: {e}")),
        }
    }
    let onnx = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", manifest.file))?;
    let t = clock();
    let (model, form) = if plans.is_some() {
        LoadedModel::load_with_plan_form(manifest, &onnx).map_err(|e| e.to_string())?
    } else {
        (LoadedModel::load(manifest, &onnx).map_err(|e| e.to_string())?, None)
    };
    let ms = clock() - t;
    let note = plans.map(|dir| {
        let written = match form {
            Some(form) => match write_plan(dir, &model.manifest().id, &form) {
                Ok(()) => "plan form written".to_string(),
                Err(e) => format!("cannot write its plan form: {e}"),
            },
            None => "no plan form: its graph holds an operator the form does not cover".into(),
        };
        match &refused {
            Some(why) => format!("{why}; loaded from ONNX, {written}"),
            None => written,
        }
    });
    Ok((model, ms, note))
}

/// Where a model's plan form lives in `dir` (ids are `[A-Za-z0-9._-]`: a file name).
pub fn plan_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.plan"))
}

/// Writes `form` as `id`'s plan form in `dir` (created if missing), through a temporary file
/// renamed into place: a reader never sees half a form, and two writers leave one whole.
fn write_plan(dir: &Path, id: &str, form: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{id}.plan.{}.{nanos}.tmp", std::process::id()));
    std::fs::write(&tmp, form).and_then(|()| std::fs::rename(&tmp, plan_path(dir, id))).inspect_err(
        |_| {
            let _ = std::fs::remove_file(&tmp);
        },
    )
}

#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    /// Folders that load, fail in each way, and share an id, loaded in parallel: the registry
    /// and the failures come out in folder order, as a one-by-one load would give them.
    #[test]
    fn loads_in_parallel_and_reports_failures_in_folder_order() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let source = repo.join("models/mobilenetv2-chexnet");
        let manifest = std::fs::read_to_string(source.join("model.toml")).unwrap();
        let onnx = std::fs::read(source.join("model.onnx")).unwrap();
        let dir = std::env::temp_dir().join(format!("medinfer-load-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let folder = |name: &str, toml: &str, model: &[u8]| {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("model.toml"), toml).unwrap();
            if !model.is_empty() {
                std::fs::write(dir.join(name).join("model.onnx"), model).unwrap();
            }
        };
        let renamed =
            |id: &str| manifest.replace("id = \"mobilenetv2-chexnet\"", &format!("id = \"{id}\""));
        let unchecked = |id: &str| {
            renamed(id).lines().filter(|l| !l.starts_with("sha256")).collect::<Vec<_>>().join("\n")
        };
        folder("a", &renamed("first"), &onnx);
        folder("b", &unchecked("broken"), b"not an onnx model");
        folder("c", &renamed("second"), &onnx);
        folder("d", &renamed("first"), &onnx);
        folder("e", &renamed("no-file"), b"");
        folder("f", "id = ", b"");
        std::fs::create_dir_all(dir.join("g")).unwrap();

        // A pool, so that Loading::Parallel loads on it.
        medinfer_core::set_threads(2).unwrap();
        let loaded = load_dir(&dir, None, Loading::Parallel, None, &|| 0.0).unwrap();
        let ids: Vec<&str> = loaded.registry.iter().map(|m| m.manifest().id.as_str()).collect();
        assert_eq!(ids, ["first", "second"]);
        let timed: Vec<&str> = loaded.load_ms.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(timed, ["first", "second"]);
        let folders: Vec<&str> = loaded.failures.iter().map(|f| f.folder.as_str()).collect();
        assert_eq!(folders, ["b", "d", "e", "f"], "{:?}", loaded.failures);
        assert!(
            loaded.failures[1].error.contains("two models share the id"),
            "{:?}",
            loaded.failures
        );
        assert!(
            loaded.failures[2].error.contains("cannot read model.onnx"),
            "{:?}",
            loaded.failures
        );

        let one_by_one = load_dir(&dir, None, Loading::OneByOne, None, &|| 0.0).unwrap();
        assert_eq!(one_by_one.failures, loaded.failures);
        let ids_one_by_one: Vec<&str> =
            one_by_one.registry.iter().map(|m| m.manifest().id.as_str()).collect();
        assert_eq!(ids_one_by_one, ids);

        let only = load_dir(&dir, Some("second"), Loading::Parallel, None, &|| 0.0).unwrap();
        assert_eq!(only.registry.len(), 1);
        assert!(only.registry.get("second").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a plans folder, the first load writes each model's plan form, the second loads
    /// from it with the same predictions, and a damaged form is refused, the model loaded
    /// from ONNX and the form written again. (x86-64: elsewhere the bundled models' graphs keep
    /// tract operators the form does not cover, and have none; core's
    /// `the_plan_form_runs_the_same_plan` checks that.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn loads_from_the_plan_form_it_wrote() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let models = repo.join("models");
        let plans = std::env::temp_dir().join(format!("medinfer-plans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&plans);
        let only = Some("mobilenetv2-chexnet");
        let load = || load_dir(&models, only, Loading::OneByOne, Some(&plans), &|| 0.0).unwrap();
        let notes = |l: &Loaded| l.plan_notes.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
        let image: Vec<f32> = (0..3 * 224 * 224).map(|i| (i % 251) as f32 / 251.0).collect();
        let run = |l: &Loaded| {
            l.registry.get("mobilenetv2-chexnet").unwrap().run_raw(image.clone(), 1).unwrap()
        };

        let first = load();
        assert_eq!(notes(&first), ["plan form written"], "{:?}", first.failures);
        let path = plan_path(&plans, "mobilenetv2-chexnet");
        let second = load();
        assert_eq!(notes(&second), ["loaded from its plan form"]);
        assert_eq!(run(&first), run(&second), "the plan form runs the same plan");
        assert!(second.registry.get("mobilenetv2-chexnet").unwrap().typed_for_batch(1).is_err());

        let mut form = std::fs::read(&path).unwrap();
        let last = form.len() - 1;
        form[last] ^= 1;
        std::fs::write(&path, &form).unwrap();
        let third = load();
        let note = &notes(&third)[0];
        assert!(note.starts_with("plan form refused") && note.contains("damaged"), "{note}");
        assert!(note.ends_with("loaded from ONNX, plan form written"), "{note}");
        assert_eq!(run(&third), run(&first));
        assert_eq!(notes(&load()), ["loaded from its plan form"]);
        // Without a plans folder nothing is read or written.
        let plain = load_dir(&models, only, Loading::OneByOne, None, &|| 0.0).unwrap();
        assert!(plain.plan_notes.is_empty());
        std::fs::remove_dir_all(&plans).unwrap();
    }
}
