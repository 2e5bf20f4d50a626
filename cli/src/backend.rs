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
    apply_gpu(registry, backend).map(|(line, _)| line)
}

/// [`apply`], also returning the GPU executor when one took the models (its plans are kept,
/// for `bench --gpu-profile`).
pub fn apply_gpu(
    registry: &mut Registry,
    backend: Backend,
) -> Result<(String, Option<Arc<GpuExecutor>>)> {
    if backend == Backend::Cpu {
        return Ok(("backend: cpu (tract)".into(), None));
    }
    let gpu = match block_on(Gpu::new()) {
        Ok(gpu) => Arc::new(gpu),
        Err(e) if backend == Backend::Auto => {
            return Ok((format!("backend: cpu (no GPU: {e})"), None));
        }
        Err(e) => bail!("--backend gpu: {e}"),
    };
    let adapter = gpu.adapter().clone();
    if backend == Backend::Auto && adapter.device_type == "cpu" {
        let line = format!("backend: cpu (the only GPU adapter, {}, is software)", adapter.name);
        return Ok((line, None));
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
                let id = &model.manifest().id;
                return Ok((
                    format!("backend: cpu ({id} cannot run on {}: {e})", adapter.name),
                    None,
                ));
            }
            Err(e) => bail!("--backend gpu: {}: {e}", model.manifest().id),
        }
    }
    registry.set_executor(executor.clone());
    let line =
        format!("backend: gpu ({}, {}; {})", adapter.name, adapter.backend, summary.join("; "));
    Ok((line, Some(executor)))
}

/// `bench --gpu-profile`: per model, `executor`'s plan for `batch` images run once with a
/// timestamp query around every dispatch: the GPU time summed per kernel, and the slowest
/// dispatches.
pub fn profile(
    registry: &Registry,
    executor: &GpuExecutor,
    batch: usize,
) -> Result<Vec<(String, serde_json::Value)>> {
    let mut profiles = vec![];
    for model in registry.iter() {
        let id = model.manifest().id.clone();
        let plan = executor.plan(model, batch)?;
        let len = plan.input_shape().iter().product::<usize>();
        let data: Vec<f32> = (0..len).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
        let input = tract_onnx::prelude::Tensor::from_shape(plan.input_shape(), &data)?;
        block_on(plan.profile(&input))?; // warm-up: first-use costs stay out of the profile
        let times = block_on(plan.profile(&input)).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        let total: f64 = times.iter().map(|t| t.ms).sum();
        let mut by_kernel: Vec<(String, usize, f64)> = vec![];
        for t in &times {
            match by_kernel.iter_mut().find(|k| k.0 == t.kernel) {
                Some(k) => {
                    k.1 += 1;
                    k.2 += t.ms;
                }
                None => by_kernel.push((t.kernel.clone(), 1, t.ms)),
            }
        }
        by_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut top = times.clone();
        top.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        top.truncate(15);
        profiles.push((
            id,
            serde_json::json!({
                "batch": batch,
                "dispatches": times.len(),
                "gpu_ms": total,
                "by_kernel": by_kernel.iter().map(|(k, n, ms)| serde_json::json!({
                    "kernel": k, "dispatches": n, "ms": ms
                })).collect::<Vec<_>>(),
                "slowest": top.iter().map(|t| serde_json::json!({
                    "node": t.node, "kernel": t.kernel, "groups": t.groups, "ms": t.ms
                })).collect::<Vec<_>>(),
            }),
        ));
    }
    Ok(profiles)
}
