//! medinfer's GPU executor: runs the models `core` builds with tract on wgpu compute —
//! Vulkan, Metal or DX12 natively, WebGPU in the browser — with tract itself as the oracle
//! and the fallback.
//!
//! [`GpuModel::new`] walks a decluttered, concrete-shaped [`TypedModel`] and lowers every node
//! it has a kernel for (convolution incl. grouped/depthwise, EinSum/matmul, broadcasting
//! binary ops, unary activations, reductions, softmax, max/sum/average pooling, transposed
//! convolution, nearest upsampling, concat, axis moves and reshapes) to WGSL dispatches; intermediates stay in GPU buffers, reused across nodes by a
//! liveness plan and across runs. A node without a kernel runs on the CPU through tract, with
//! its inputs read back and its outputs uploaded — and the [`GpuModel::placements`] report says
//! so, node by node. [`GpuModel::run_images`] preprocesses on the GPU too (resize, channels,
//! normalisation, layout, with `core`'s filter weights). Running is `async` (WebGPU maps
//! buffers asynchronously); natively [`block_on`] drives it, and [`GpuExecutor`] plugs it
//! into `core` as an `Executor`.
//!
//! [`TypedModel`]: tract_onnx::prelude::TypedModel

mod device;
#[cfg(not(target_arch = "wasm32"))]
mod executor;
mod kernels;
mod lower;
mod model;
mod preprocess;
mod sync;

pub use device::{AdapterSummary, Gpu};
#[cfg(not(target_arch = "wasm32"))]
pub use executor::GpuExecutor;
pub use model::{DispatchTime, GpuModel, NodePlacement, Placement};
#[cfg(not(target_arch = "wasm32"))]
pub use sync::block_on;

/// What can go wrong on the GPU path. Every variant means "use the CPU path instead".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter: no GPU, no driver, or WebGPU unavailable.
    #[error("no GPU adapter is available: {0}")]
    NoAdapter(String),
    /// The adapter would not open a device.
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    /// A buffer or dispatch exceeds the adapter's limits.
    #[error("the model does not fit the GPU's limits: {0}")]
    Limits(String),
    /// The graph cannot be planned (e.g. an op without a kernel that tract cannot evaluate
    /// outside a plan either).
    #[error("the model cannot run on the GPU executor: {0}")]
    Unsupported(String),
    /// The device reported an error while planning or running.
    #[error("GPU execution failed: {0}")]
    Execution(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
