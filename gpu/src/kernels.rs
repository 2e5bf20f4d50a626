//! The WGSL kernels (in `shaders/`), compiled once per device.

/// Which kernel a dispatch uses; the bindings are the reads, then the output, then `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Binary,
    Unary,
    Copy,
    Reduce,
    Pool,
    Depthwise,
    Gemm,
    Conv,
    Softmax,
    Deconv,
    ResizeH,
    Fit,
    SplitSum,
    Concat,
}

pub(crate) struct Kernels {
    /// Indexed by `Kernel as usize` (the sources below are in declaration order).
    pipelines: Vec<wgpu::ComputePipeline>,
    /// Invocations per workgroup of the flat (one value per invocation) kernels.
    pub(crate) flat: u32,
    /// Outputs per side of a gemm/conv workgroup tile (4 per invocation per side).
    pub(crate) tile_outputs: u32,
}

const COMMON: &str = include_str!("shaders/common.wgsl");
const TILE: &str = include_str!("shaders/tile.wgsl");
const AXES: &str = include_str!("shaders/axes.wgsl");

impl Kernels {
    pub(crate) fn compile(device: &wgpu::Device, tile: u32, flat: u32) -> Kernels {
        let tiling = TILE.replace("{{TS}}", &tile.to_string());
        let sources: [(Kernel, &str, String); 14] = [
            (Kernel::Binary, "binary", format!("{COMMON}{}", include_str!("shaders/binary.wgsl"))),
            (Kernel::Unary, "unary", format!("{COMMON}{}", include_str!("shaders/unary.wgsl"))),
            (Kernel::Copy, "copy", format!("{COMMON}{}", include_str!("shaders/copy.wgsl"))),
            (
                Kernel::Reduce,
                "reduce",
                format!("{COMMON}{AXES}{}", include_str!("shaders/reduce.wgsl")),
            ),
            (Kernel::Pool, "pool", format!("{COMMON}{}", include_str!("shaders/pool.wgsl"))),
            (
                Kernel::Depthwise,
                "depthwise",
                format!("{COMMON}{}", include_str!("shaders/depthwise.wgsl")),
            ),
            (Kernel::Gemm, "gemm", format!("{tiling}{}", include_str!("shaders/gemm.wgsl"))),
            (Kernel::Conv, "conv", format!("{tiling}{}", include_str!("shaders/conv.wgsl"))),
            (
                Kernel::Softmax,
                "softmax",
                format!("{COMMON}{AXES}{}", include_str!("shaders/softmax.wgsl")),
            ),
            (Kernel::Deconv, "deconv", format!("{COMMON}{}", include_str!("shaders/deconv.wgsl"))),
            (
                Kernel::ResizeH,
                "resize_h",
                format!("{COMMON}{}", include_str!("shaders/resize_h.wgsl")),
            ),
            (Kernel::Fit, "fit", format!("{COMMON}{}", include_str!("shaders/fit.wgsl"))),
            (
                Kernel::SplitSum,
                "split_sum",
                format!("{COMMON}{}", include_str!("shaders/split_sum.wgsl")),
            ),
            (Kernel::Concat, "concat", format!("{COMMON}{}", include_str!("shaders/concat.wgsl"))),
        ];
        let flat_constants = [("WG", f64::from(flat))];
        let pipelines = sources
            .into_iter()
            .enumerate()
            .map(|(index, (kernel, name, source))| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                let constants: &[(&str, f64)] = if matches!(kernel, Kernel::Gemm | Kernel::Conv) {
                    &[]
                } else {
                    &flat_constants
                };
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                });
                debug_assert_eq!(kernel as usize, index);
                pipeline
            })
            .collect();
        Kernels { pipelines, flat, tile_outputs: tile * 4 }
    }

    pub(crate) fn pipeline(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[kernel as usize]
    }
}
