//! `--backend cpu|gpu|auto`: tract's CPU plan, or medinfer's wgpu executor.

use std::sync::Arc;

use anyhow::{Result, bail};
use medinfer_core::Registry;
use medinfer_gpu::{Gpu, GpuExecutor, block_on};

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
    let executor = Arc::new(GpuExecutor::new(gpu));
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
