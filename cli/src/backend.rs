//! `--backend cpu|gpu|auto`: tract's CPU plan, or medinfer's wgpu executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use medinfer_core::{Error, Executor, LoadedModel, Registry};
use medinfer_gpu::{Gpu, GpuModel, block_on};
use tract_onnx::prelude::Tensor;

/// Which executor runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// tract's optimised CPU plan.
    Cpu,
    /// The wgpu executor (Vulkan/Metal/DX12); an error when no adapter or a model cannot be
    /// planned there. Software adapters (lavapipe) count.
    Gpu,
    /// The GPU when a hardware adapter is present and every model plans on it, else the CPU.
    Auto,
}

/// The GPU as a [`Executor`]: one plan per (model, batch size), built on first use.
#[derive(Debug)]
pub struct GpuExecutor {
    gpu: Arc<Gpu>,
    plans: Mutex<HashMap<(String, usize), Arc<GpuModel>>>,
}

impl GpuExecutor {
    fn plan(&self, model: &LoadedModel, batch: usize) -> medinfer_core::Result<Arc<GpuModel>> {
        let fail = |e: medinfer_gpu::Error| Error::Inference { reason: e.to_string() };
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
        let fail = |reason: String| Error::Inference { reason };
        let plan = self.plan(model, batch)?;
        let tensor =
            Tensor::from_shape(plan.input_shape(), input).map_err(|e| fail(format!("{e:#}")))?;
        let outputs = block_on(plan.run(&tensor)).map_err(|e| fail(e.to_string()))?;
        let view = outputs[0].to_plain_array_view::<f32>().map_err(|e| fail(format!("{e:#}")))?;
        Ok(view.iter().copied().collect())
    }
}

/// Puts `backend` in charge of every model in `registry` and says, in one line, what runs
/// where (adapter, and per model how many nodes run on the GPU and which fall back).
pub fn apply(registry: &mut Registry, backend: Backend) -> Result<String> {
    if backend == Backend::Cpu {
        return Ok("backend: cpu (tract)".into());
    }
    let gpu = match block_on(Gpu::new()) {
        Ok(gpu) => Arc::new(gpu),
        Err(e) if backend == Backend::Auto => return Ok(format!("backend: cpu (no GPU: {e})")),
        Err(e) => bail!("--backend gpu: {e}"),
    };
    let adapter = gpu.adapter().clone();
    if backend == Backend::Auto && adapter.device_type == "cpu" {
        return Ok(format!("backend: cpu (the only GPU adapter, {}, is software)", adapter.name));
    }
    let executor = Arc::new(GpuExecutor { gpu, plans: Mutex::default() });
    let mut summary = vec![];
    for model in registry.iter() {
        match executor.plan(model, 1) {
            Ok(plan) => {
                let on_gpu = plan.gpu_nodes();
                let fallback = plan.cpu_ops();
                let cpu = if fallback.is_empty() {
                    String::new()
                } else {
                    format!(", on the CPU: {}", fallback.join(" "))
                };
                summary.push(format!("{} {on_gpu} nodes on the GPU{cpu}", model.manifest().id));
            }
            Err(e) if backend == Backend::Auto => {
                return Ok(format!(
                    "backend: cpu ({} cannot run on {}: {e})",
                    model.manifest().id,
                    adapter.name
                ));
            }
            Err(e) => bail!("--backend gpu: {}: {e}", model.manifest().id),
        }
    }
    registry.set_executor(executor);
    Ok(format!("backend: gpu ({}, {}; {})", adapter.name, adapter.backend, summary.join("; ")))
}
