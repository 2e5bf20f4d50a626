//! Shared by the GPU tests: the device (required: CI installs lavapipe), a seeded generator,
//! and the comparison against tract's CPU evaluation.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use medinfer_gpu::{Gpu, GpuModel, Placement, block_on};
use tract_onnx::prelude::*;

/// The test device. No adapter is a failure, not a skip: CI installs Mesa's lavapipe.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = block_on(Gpu::new()).unwrap_or_else(|e| {
            panic!("no GPU adapter ({e}); install mesa-vulkan-drivers libvulkan1 for lavapipe")
        });
        eprintln!("GPU adapter: {:?}", gpu.adapter());
        Arc::new(gpu)
    })
    .clone()
}

/// xorshift64*: reproducible random data without a dependency.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        self.tensor_map(shape, |v| v)
    }
    pub fn tensor_map(&mut self, shape: &[usize], f: impl Fn(f32) -> f32) -> Tensor {
        let data: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| f(self.f())).collect();
        Tensor::from_shape(shape, &data).expect("shape matches data")
    }
}

/// max |a − b| and max |b|.
pub fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape(), "output shapes differ");
    let a = a.to_plain_array_view::<f32>().expect("f32");
    let b = b.to_plain_array_view::<f32>().expect("f32");
    let mut max_diff = 0f32;
    let mut max_ref = 0f32;
    for (x, y) in a.iter().zip(b.iter()) {
        assert!(x.is_finite(), "GPU produced {x}");
        max_diff = max_diff.max((x - y).abs());
        max_ref = max_ref.max(y.abs());
    }
    (max_diff, max_ref)
}

/// Runs `model` on the GPU executor and through tract (unoptimised: the ops' own eval), and
/// checks max|Δ| ≤ `rel` · max|reference|. Returns the GPU plan for placement checks.
pub fn check(what: &str, model: TypedModel, input: Tensor, rel: f32) -> GpuModel {
    let gpu_model = GpuModel::new(gpu(), &model).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
    let got = block_on(gpu_model.run(&input)).unwrap_or_else(|e| panic!("{what}: run: {e}"));
    let expected = model
        .into_runnable()
        .and_then(|p| p.run(tvec![input.into_tvalue()]))
        .unwrap_or_else(|e| panic!("{what}: tract: {e:#}"));
    let (d, r) = diff(&got[0], &expected[0]);
    assert!(
        d <= rel * r.max(1e-6),
        "{what}: max |Δ| {d:e} vs max |ref| {r:e} (> {rel:e} relative)"
    );
    gpu_model
}

/// Asserts every compute node of the plan ran on the GPU.
pub fn all_on_gpu(what: &str, model: &GpuModel) {
    for p in model.placements() {
        assert!(
            !matches!(p.placement, Placement::Cpu { .. }),
            "{what}: {} ({}) fell back to the CPU: {:?}",
            p.node,
            p.op,
            p.placement
        );
    }
}
