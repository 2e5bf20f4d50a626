//! The set of loaded models, by id.

use std::collections::BTreeMap;

use crate::{Error, LoadedModel, ModelManifest, ModelStatus, Result};

/// Loaded models by id; each is parsed and optimised once and shared.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    models: BTreeMap<String, LoadedModel>,
    default_id: Option<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Loads a model from its manifest text and ONNX bytes and adds it.
    pub fn load(&mut self, manifest_toml: &str, onnx: &[u8]) -> Result<&LoadedModel> {
        let manifest = ModelManifest::from_toml(manifest_toml)?;
        self.insert(LoadedModel::load(manifest, onnx)?)
    }

    /// Adds an already loaded model; ids must be unique.
    pub fn insert(&mut self, model: LoadedModel) -> Result<&LoadedModel> {
        let id = model.manifest().id.clone();
        if self.models.contains_key(&id) {
            return Err(Error::Manifest { reason: format!("two models share the id {id:?}") });
        }
        Ok(self.models.entry(id).or_insert(model))
    }

    /// Runs every model with `executor` (e.g. the GPU) instead of tract's plan.
    pub fn set_executor(&mut self, executor: std::sync::Arc<dyn crate::Executor>) {
        for model in self.models.values_mut() {
            model.set_executor(executor.clone());
        }
    }

    /// Sets the model used when a request names none.
    pub fn set_default(&mut self, id: &str) -> Result<()> {
        self.get(id)?;
        self.default_id = Some(id.to_string());
        Ok(())
    }

    /// The model with this id.
    pub fn get(&self, id: &str) -> Result<&LoadedModel> {
        self.models
            .get(id)
            .ok_or_else(|| Error::ModelNotFound { id: id.chars().take(64).collect() })
    }

    /// The model for a request: the named one, else the default (explicitly set, else the
    /// first `production` model, else the first by id).
    pub fn resolve(&self, id: Option<&str>) -> Result<&LoadedModel> {
        match id.or(self.default_id.as_deref()) {
            Some(id) => self.get(id),
            None => self
                .models
                .values()
                .find(|m| m.manifest().status == ModelStatus::Production)
                .or_else(|| self.models.values().next())
                .ok_or(Error::ModelNotFound { id: String::new() }),
        }
    }

    /// All models, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &LoadedModel> {
        self.models.values()
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether there is no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
