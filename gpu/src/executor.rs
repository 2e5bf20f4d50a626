//! The GPU as `core`'s [`Executor`] (native: runs are driven by [`block_on`]): one plan per
//! (model, batch size), built on first use, preprocessing included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use medinfer_core::{Error as CoreError, Executor, Image, LoadedModel};
use tract_onnx::prelude::Tensor;

use crate::{Error, Gpu, GpuModel, block_on};

/// One [`GpuModel`] per (model sha256, batch size).
#[derive(Debug)]
pub struct GpuExecutor {
    gpu: Arc<Gpu>,
    plans: Mutex<HashMap<(String, usize), Arc<GpuModel>>>,
}

fn fail(e: impl std::fmt::Display) -> CoreError {
    CoreError::Inference { reason: e.to_string() }
}

impl GpuExecutor {
    /// An executor on `gpu` with no plan yet.
    pub fn new(gpu: Arc<Gpu>) -> GpuExecutor {
        GpuExecutor { gpu, plans: Mutex::default() }
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The plan of `model` for `batch` images, built on first use.
    pub fn plan(&self, model: &LoadedModel, batch: usize) -> medinfer_core::Result<Arc<GpuModel>> {
        let key = (model.sha256().to_string(), batch);
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let typed = model.typed_for_batch(batch)?;
        let plan = Arc::new(GpuModel::new(self.gpu.clone(), &typed).map_err(fail)?);
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

fn flatten(outputs: &[Tensor]) -> medinfer_core::Result<Vec<f32>> {
    let first = outputs.first().ok_or_else(|| fail("the model has no output"))?;
    Ok(first.to_plain_array_view::<f32>().map_err(fail)?.iter().copied().collect())
}

impl Executor for GpuExecutor {
    fn name(&self) -> &str {
        "gpu"
    }

    fn run(
        &self,
        model: &LoadedModel,
        input: &[f32],
        batch: usize,
    ) -> medinfer_core::Result<Vec<f32>> {
        let plan = self.plan(model, batch)?;
        let tensor = Tensor::from_shape(plan.input_shape(), input).map_err(fail)?;
        flatten(&block_on(plan.run(&tensor)).map_err(fail)?)
    }

    fn run_images(
        &self,
        model: &LoadedModel,
        images: &[&Image],
    ) -> Option<medinfer_core::Result<Vec<f32>>> {
        let plan = match self.plan(model, images.len()) {
            Ok(plan) => plan,
            Err(e) => return Some(Err(e)),
        };
        match block_on(plan.run_images(images, model.manifest())) {
            // Too big for the adapter's buffers: the CPU preprocesses, the GPU still runs.
            Err(Error::Limits(_)) => None,
            Err(e) => Some(Err(fail(e))),
            Ok(outputs) => Some(flatten(&outputs)),
        }
    }
}
