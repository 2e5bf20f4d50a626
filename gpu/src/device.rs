//! The adapter, the device and the compiled kernels, shared by every model on it.

use std::sync::{Arc, Mutex};

use crate::kernels::Kernels;
use crate::{Error, Result};

/// What the adapter is, for reports and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or "NVIDIA H100".
    pub name: String,
    /// The API: "vulkan", "metal", "dx12" or "webgpu".
    pub backend: String,
    /// "discrete", "integrated", "cpu", "virtual" or "other".
    pub device_type: String,
    /// Driver name and version, where the platform tells.
    pub driver: String,
    /// Side of the matmul/conv workgroup chosen from the adapter's limits (16 or 8).
    pub tile: u32,
}

/// An open GPU device with medinfer's kernels compiled for it.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) kernels: Kernels,
    pub(crate) dummy: wgpu::Buffer,
    errors: Arc<Mutex<Vec<String>>>,
    summary: AdapterSummary,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.summary).finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens the best adapter the platform offers (high-performance preference) with its own
    /// limits, and compiles the kernels with workgroup sizes those limits allow.
    pub async fn new() -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("medinfer"),
                required_limits: limits.clone(),
                // For `GpuModel::profile` only; nothing else depends on it.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Device(e.to_string()))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let tile = if limits.max_compute_invocations_per_workgroup >= 256
            && limits.max_compute_workgroup_size_x >= 16
            && limits.max_compute_workgroup_size_y >= 16
            && limits.max_compute_workgroup_storage_size >= 8192
        {
            16
        } else {
            8
        };
        let flat = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x)
            .min(256);
        // WebGPU reports shader errors asynchronously: wait for them here, so that a device
        // that cannot compile the kernels is refused now (and `auto` falls back to the CPU)
        // rather than failing the first inference.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels = Kernels::compile(&device, tile, flat);
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::Device(format!("the kernels do not compile here: {e}")));
        }
        let gpu = Gpu {
            device,
            queue,
            limits,
            kernels,
            dummy,
            errors,
            summary: AdapterSummary {
                name: info.name,
                backend: info.backend.to_string(),
                device_type: format!("{:?}", info.device_type).to_lowercase(),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                tile,
            },
        };
        gpu.check()?;
        Ok(gpu)
    }

    /// What the adapter is.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// Whether the device records timestamps (needed by [`crate::GpuModel::profile`]).
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Fails with the first error the device reported since the last check.
    pub(crate) fn check(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match errors.drain(..).next() {
            Some(e) => Err(Error::Execution(e)),
            None => Ok(()),
        }
    }

    /// Waits for submitted work natively; a no-op on WebGPU, where the browser drives it.
    pub(crate) fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Execution(e.to_string()))?;
        Ok(())
    }
}
