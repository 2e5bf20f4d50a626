//! A model planned for the GPU: buffers, bind groups and the ordered steps of a run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use medinfer_core::{Image, ModelManifest};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;

use crate::kernels::Kernel;
use crate::lower::{Lowered, Read, Target, lower};
use crate::preprocess::{Fit, Scratch};
use crate::sync::oneshot;
use crate::{Error, Gpu, Result};

/// Where a node of the model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the GPU, as this many dispatches.
    Gpu { dispatches: usize },
    /// A reshape of a GPU buffer: no work.
    View,
    /// On the CPU through tract (inputs read back, outputs uploaded), and why.
    Cpu { reason: String },
    /// A constant or the model input: data, not work.
    Data,
}

/// One node of the plan and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlacement {
    /// The node's name in the model.
    pub node: String,
    /// The tract operator's name (e.g. "Conv", "EinSum", "Add").
    pub op: String,
    /// Where it runs.
    pub placement: Placement,
}

/// The GPU time of one dispatch in a profiled run ([`GpuModel::profile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchTime {
    /// The node it computes.
    pub node: String,
    /// Its kernel (e.g. "Conv", "Binary").
    pub kernel: String,
    /// Its workgroup grid.
    pub groups: [u32; 3],
    /// GPU time from the start to the end of its compute pass, in milliseconds.
    pub ms: f64,
}

/// A value flowing between nodes (one tract outlet).
#[derive(Debug)]
struct Value {
    shape: Vec<usize>,
    /// The pooled or dedicated buffer holding it on the GPU, if it is ever needed there.
    storage: Option<usize>,
}

struct Dispatch {
    /// The node it computes (for profiles).
    node: String,
    kernel: Kernel,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

struct CpuNode {
    op: Box<dyn TypedOp>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

enum Step {
    Gpu(Vec<Dispatch>),
    Cpu(CpuNode),
}

/// A decluttered tract model planned on a [`Gpu`]: shapes fixed, buffers allocated, kernels
/// bound. Runs reuse everything; one run at a time (a second caller waits).
pub struct GpuModel {
    gpu: Arc<Gpu>,
    values: Vec<Value>,
    buffers: Vec<wgpu::Buffer>,
    /// Constants, for CPU nodes that read them.
    consts: HashMap<usize, TValue>,
    steps: Vec<Step>,
    input: usize,
    outputs: Vec<usize>,
    placements: Vec<NodePlacement>,
    /// Held by a run (buffers are shared by every run of the plan), with the preprocessing
    /// scratch buffers it reuses.
    running: Mutex<Scratch>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("gpu", &self.gpu)
            .field("nodes", &self.placements.len())
            .field("buffers", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

fn concrete(fact: &TypedFact) -> Result<Vec<usize>> {
    fact.shape
        .as_concrete()
        .map(<[usize]>::to_vec)
        .ok_or_else(|| Error::Unsupported(format!("symbolic shape {:?}", fact.shape)))
}

impl GpuModel {
    /// Plans `model` (decluttered, every shape concrete, one f32 input) on `gpu`.
    pub fn new(gpu: Arc<Gpu>, model: &TypedModel) -> Result<GpuModel> {
        let tract_err = |e: TractError| Error::Unsupported(format!("{e:#}"));
        let inputs = model.input_outlets().map_err(tract_err)?;
        if inputs.len() != 1 {
            return Err(Error::Unsupported(format!("{} inputs (one supported)", inputs.len())));
        }
        let order = model.eval_order().map_err(tract_err)?;
        let target = Target {
            kernels: &gpu.kernels,
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
        };

        // Values, one per outlet.
        let mut ids: HashMap<OutletId, usize> = HashMap::new();
        let mut values: Vec<Value> = vec![];
        for &n in &order {
            for (slot, out) in model.node(n).outputs.iter().enumerate() {
                ids.insert(OutletId::new(n, slot), values.len());
                values.push(Value { shape: concrete(&out.fact)?, storage: None });
            }
        }
        let id = |o: &OutletId| ids[o];
        let is_f32 =
            |o: &OutletId| model.outlet_fact(*o).map(|f| f.datum_type == f32::datum_type());

        // Decide where every node runs.
        let mut placements = vec![];
        let mut lowered: Vec<(usize, Lowered)> = vec![];
        let mut consts: HashMap<usize, TValue> = HashMap::new();
        let mut input = None;
        for &n in &order {
            let node = model.node(n);
            let op: &dyn TypedOp = node.op.as_ref();
            let mut place = |p: Placement| {
                placements.push(NodePlacement {
                    node: node.name.clone(),
                    op: op.name().to_string(),
                    placement: p,
                })
            };
            if let Some(k) = op.downcast_ref::<Const>() {
                consts.insert(id(&OutletId::new(n, 0)), k.val().clone().into_tvalue());
                place(Placement::Data);
                continue;
            }
            if op.downcast_ref::<TypedSource>().is_some() {
                if !is_f32(&OutletId::new(n, 0)).map_err(tract_err)? {
                    return Err(Error::Unsupported("a non-f32 input".into()));
                }
                input = Some(id(&OutletId::new(n, 0)));
                place(Placement::Data);
                continue;
            }
            let all_f32 = node
                .inputs
                .iter()
                .chain(&[OutletId::new(n, 0)])
                .try_fold(true, |acc, o| is_f32(o).map(|f| acc && f));
            let shapes: Vec<&[usize]> =
                node.inputs.iter().map(|o| values[id(o)].shape.as_slice()).collect();
            let low = if node.outputs.len() != 1 {
                Lowered::Cpu(format!("{} outputs", node.outputs.len()))
            } else if !all_f32.map_err(tract_err)? {
                Lowered::Cpu("non-f32 data".into())
            } else {
                lower(op, &shapes, &values[id(&OutletId::new(n, 0))].shape, &target)
            };
            place(match &low {
                Lowered::Launches(l) => Placement::Gpu { dispatches: l.len() },
                Lowered::View => Placement::View,
                Lowered::Cpu(reason) => Placement::Cpu { reason: reason.clone() },
            });
            lowered.push((n, low));
        }
        let input = input.ok_or_else(|| Error::Unsupported("no input".into()))?;

        // Which values live on the GPU, and how long.
        let mut last_use: Vec<usize> = vec![0; values.len()];
        let mut on_gpu = vec![false; values.len()];
        let outputs: Vec<usize> =
            model.output_outlets().map_err(tract_err)?.iter().map(id).collect();
        for (step, (n, low)) in lowered.iter().enumerate() {
            let node = model.node(*n);
            for o in &node.inputs {
                last_use[id(o)] = last_use[id(o)].max(step);
            }
            if !matches!(low, Lowered::Cpu(_)) {
                for o in node.inputs.iter().chain(&[OutletId::new(*n, 0)]) {
                    on_gpu[id(o)] = true;
                }
            }
        }
        for &o in &outputs {
            last_use[o] = usize::MAX;
        }

        // Buffers: constants and the input get their own; everything else shares a pool.
        let mut sizes: Vec<u64> = vec![];
        let mut busy_until: Vec<usize> = vec![];
        let dedicated = |sizes: &mut Vec<u64>, busy: &mut Vec<usize>, len: u64| {
            sizes.push(len);
            busy.push(usize::MAX);
            sizes.len() - 1
        };
        let bytes = |v: &Value| (v.shape.iter().product::<usize>().max(1) * 4) as u64;
        for &v in consts.keys() {
            if on_gpu[v] {
                values[v].storage = Some(dedicated(&mut sizes, &mut busy_until, bytes(&values[v])));
            }
        }
        values[input].storage = Some(dedicated(&mut sizes, &mut busy_until, bytes(&values[input])));
        for (step, (n, low)) in lowered.iter().enumerate() {
            let out = id(&OutletId::new(*n, 0));
            if matches!(low, Lowered::View) {
                let src = id(&model.node(*n).inputs[0]);
                let storage = values[src]
                    .storage
                    .ok_or_else(|| Error::Unsupported("view of a CPU value".into()))?;
                values[out].storage = Some(storage);
                busy_until[storage] = busy_until[storage].max(last_use[out]);
                continue;
            }
            for (slot, _) in model.node(*n).outputs.iter().enumerate() {
                let v = id(&OutletId::new(*n, slot));
                if !on_gpu[v] {
                    continue;
                }
                let need = bytes(&values[v]);
                // Best fit among the free pooled buffers (they grow if none is big enough).
                let free = (0..sizes.len()).filter(|&s| busy_until[s] < step);
                let pick = free
                    .clone()
                    .filter(|&s| sizes[s] >= need)
                    .min_by_key(|&s| sizes[s])
                    .or_else(|| free.max_by_key(|&s| sizes[s]));
                let storage = match pick {
                    Some(s) => {
                        sizes[s] = sizes[s].max(need);
                        busy_until[s] = last_use[v];
                        s
                    }
                    None => {
                        sizes.push(need);
                        busy_until.push(last_use[v]);
                        sizes.len() - 1
                    }
                };
                values[v].storage = Some(storage);
            }
        }
        // One scratch buffer for every split-K product's partial sums: each is consumed by
        // the dispatch right after the one that wrote it.
        let scratch_bytes = lowered
            .iter()
            .filter_map(|(_, low)| match low {
                Lowered::Launches(l) => l.iter().map(|l| l.scratch).max(),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if scratch_bytes > 0 {
            dedicated(&mut sizes, &mut busy_until, scratch_bytes);
        }
        let scratch = (scratch_bytes > 0).then(|| sizes.len() - 1);
        let limits = &gpu.limits;
        let max = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if let Some(big) = sizes.iter().find(|&&s| s > max) {
            return Err(Error::Limits(format!(
                "a {big}-byte buffer exceeds the adapter's {max}-byte limit"
            )));
        }
        let buffers: Vec<wgpu::Buffer> = sizes
            .iter()
            .map(|&size| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: size.next_multiple_of(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        for (v, tensor) in &consts {
            if let Some(s) = values[*v].storage {
                gpu.queue.write_buffer(&buffers[s], 0, &f32_bytes(tensor)?);
            }
        }

        // Steps: consecutive GPU nodes share one compute pass.
        let mut steps: Vec<Step> = vec![];
        for (n, low) in lowered {
            let node = model.node(n);
            match low {
                Lowered::View => {}
                Lowered::Cpu(_) => steps.push(Step::Cpu(CpuNode {
                    op: node.op.clone(),
                    inputs: node.inputs.iter().map(id).collect(),
                    outputs: (0..node.outputs.len()).map(|s| id(&OutletId::new(n, s))).collect(),
                })),
                Lowered::Launches(launches) => {
                    let out = values[id(&OutletId::new(n, 0))].storage.ok_or_else(|| {
                        Error::Unsupported("GPU node output without a buffer".into())
                    })?;
                    let mut dispatches = vec![];
                    for launch in launches {
                        let params = params_buffer(&gpu, &launch.params);
                        let mut buffers_read = vec![];
                        for read in &launch.reads {
                            buffers_read.push(match read {
                                Read::Input(i) => {
                                    let v = id(&node.inputs[*i]);
                                    &buffers[values[v].storage.ok_or_else(|| {
                                        Error::Unsupported("GPU input without a buffer".into())
                                    })?]
                                }
                                Read::Scratch => {
                                    &buffers[scratch.ok_or_else(|| {
                                        Error::Unsupported("no scratch buffer".into())
                                    })?]
                                }
                                Read::Nothing => &gpu.dummy,
                            });
                        }
                        buffers_read.push(match (launch.scratch, scratch) {
                            (0, _) => &buffers[out],
                            (_, Some(s)) => &buffers[s],
                            (_, None) => {
                                return Err(Error::Unsupported("no scratch buffer".into()));
                            }
                        });
                        buffers_read.push(&params);
                        let bind_group = bind(&gpu, launch.kernel, &buffers_read);
                        dispatches.push(Dispatch {
                            node: node.name.clone(),
                            kernel: launch.kernel,
                            bind_group,
                            groups: launch.groups,
                        });
                    }
                    match steps.last_mut() {
                        Some(Step::Gpu(pass)) => pass.extend(dispatches),
                        _ => steps.push(Step::Gpu(dispatches)),
                    }
                }
            }
        }
        gpu.check()?;
        Ok(GpuModel {
            gpu,
            values,
            buffers,
            consts,
            steps,
            input,
            outputs,
            placements,
            running: Mutex::default(),
        })
    }

    /// Where each node runs.
    pub fn placements(&self) -> &[NodePlacement] {
        &self.placements
    }

    /// How many nodes run on the GPU.
    pub fn gpu_nodes(&self) -> usize {
        self.placements.iter().filter(|p| matches!(p.placement, Placement::Gpu { .. })).count()
    }

    /// The operators left on the CPU, sorted, each once (empty: the whole model is on the GPU).
    pub fn cpu_ops(&self) -> Vec<&str> {
        let mut ops: Vec<&str> = self
            .placements
            .iter()
            .filter(|p| matches!(p.placement, Placement::Cpu { .. }))
            .map(|p| p.op.as_str())
            .collect();
        ops.sort_unstable();
        ops.dedup();
        ops
    }

    /// The shape the input must have.
    pub fn input_shape(&self) -> &[usize] {
        &self.values[self.input].shape
    }

    /// The GPU this model is planned on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of GPU memory the plan holds (pooled intermediates, constants, input).
    pub fn gpu_bytes(&self) -> u64 {
        self.buffers.iter().map(wgpu::Buffer::size).sum()
    }

    /// Runs the model on `input` (f32, [`Self::input_shape`]) and returns its outputs.
    #[allow(clippy::await_holding_lock)] // deliberate: see `lock`
    pub async fn run(&self, input: &Tensor) -> Result<TVec<Tensor>> {
        if input.shape() != self.input_shape() || input.datum_type() != f32::datum_type() {
            return Err(Error::Execution(format!(
                "input {:?} {:?}, expected f32 {:?}",
                input.datum_type(),
                input.shape(),
                self.input_shape()
            )));
        }
        let _running = self.lock()?;
        if let Some(s) = self.values[self.input].storage {
            self.gpu.queue.write_buffer(&self.buffers[s], 0, &f32_bytes(input)?);
        }
        self.execute(Some(input.clone().into_tvalue())).await
    }

    /// Preprocesses `images` on the GPU as `manifest` says (a grayscale DICOM frame's VOI
    /// stage, resize, channels, normalisation, layout: the same definition and weights as
    /// `core`'s CPU path) straight into the input
    /// buffer, then runs the model — one upload per image, at its decoded size. The plan's
    /// batch must be `images.len()`. [`Error::Limits`] when an image exceeds the adapter's
    /// buffer limits (then preprocess on the CPU and call [`Self::run`]).
    #[allow(clippy::await_holding_lock)] // deliberate: see `lock`
    pub async fn run_images(
        &self,
        images: &[&Image],
        manifest: &ModelManifest,
    ) -> Result<TVec<Tensor>> {
        let fit = Fit::new(manifest, self.input_shape(), images.len())?;
        let mut scratch = self.lock()?;
        let storage = self.values[self.input]
            .storage
            .ok_or_else(|| Error::Execution("the input is not on the GPU".into()))?;
        fit.encode(&self.gpu, &mut scratch, images, &self.buffers[storage])?;
        self.execute(None).await
    }

    /// Buffers are shared by every run of the plan: one at a time. Natively a second caller
    /// blocks here (each run is driven to completion on its own thread by `block_on`); in
    /// the browser's single thread waiting would never end, so a concurrent run is refused.
    fn lock(&self) -> Result<MutexGuard<'_, Scratch>> {
        #[cfg(not(target_arch = "wasm32"))]
        return Ok(self.running.lock().unwrap_or_else(|p| p.into_inner()));
        #[cfg(target_arch = "wasm32")]
        return self
            .running
            .try_lock()
            .map_err(|_| Error::Execution("the model is already running".into()));
    }

    /// Runs the steps once the input buffer holds this run's input; `input` is its CPU copy
    /// when there is one (a CPU node reading the input then needs no read-back).
    async fn execute(&self, input: Option<TValue>) -> Result<TVec<Tensor>> {
        let gpu = &self.gpu;
        // Values a CPU node produced this run (constants are looked up in place, not copied).
        let mut on_cpu: HashMap<usize, TValue> = HashMap::new();
        if let Some(input) = input {
            on_cpu.insert(self.input, input);
        }
        for step in &self.steps {
            match step {
                Step::Gpu(dispatches) => {
                    let mut encoder = gpu.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = encoder.begin_compute_pass(&Default::default());
                        for d in dispatches {
                            pass.set_pipeline(gpu.kernels.pipeline(d.kernel));
                            pass.set_bind_group(0, &d.bind_group, &[]);
                            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                        }
                    }
                    gpu.queue.submit([encoder.finish()]);
                    // Anything computed on the GPU before is stale on the CPU side now.
                }
                Step::Cpu(node) => {
                    let mut inputs = tvec![];
                    for &v in &node.inputs {
                        inputs.push(match on_cpu.get(&v).or_else(|| self.consts.get(&v)) {
                            Some(t) => t.clone(),
                            None => self.read(v).await?.into_tvalue(),
                        });
                    }
                    let outputs = node
                        .op
                        .eval_out_of_plan(inputs)
                        .map_err(|e| Error::Execution(format!("{e:#}")))?
                        .ok_or_else(|| {
                            Error::Unsupported(format!("{} needs a plan to run", node.op.name()))
                        })?;
                    for (&v, t) in node.outputs.iter().zip(outputs) {
                        if let Some(s) = self.values[v].storage {
                            gpu.queue.write_buffer(&self.buffers[s], 0, &f32_bytes(&t)?);
                        }
                        on_cpu.insert(v, t);
                    }
                }
            }
        }
        let mut results = tvec![];
        for &v in &self.outputs {
            results.push(match on_cpu.remove(&v).or_else(|| self.consts.get(&v).cloned()) {
                Some(t) => t.into_tensor(),
                None => self.read(v).await?,
            });
        }
        gpu.check()?;
        Ok(results)
    }

    /// Runs the model once on `input` with every dispatch in a compute pass of its own,
    /// bracketed by timestamp queries, and returns each dispatch's GPU time in plan order.
    /// Needs the adapter's timestamp queries ([`Gpu::has_timestamps`]) and a plan without
    /// CPU nodes. Slower than [`Self::run`] (a pass per dispatch): for finding hot kernels,
    /// not for timing the whole model.
    #[allow(clippy::await_holding_lock)] // deliberate: see `lock`
    pub async fn profile(&self, input: &Tensor) -> Result<Vec<DispatchTime>> {
        let gpu = &self.gpu;
        if !gpu.has_timestamps() {
            return Err(Error::Unsupported("the adapter has no timestamp queries".into()));
        }
        let mut dispatches = vec![];
        for step in &self.steps {
            match step {
                Step::Gpu(d) => dispatches.extend(d),
                Step::Cpu(node) => {
                    return Err(Error::Unsupported(format!(
                        "{} runs on the CPU: profiles need the whole plan on the GPU",
                        node.op.name()
                    )));
                }
            }
        }
        let _running = self.lock()?;
        let storage = self.values[self.input]
            .storage
            .ok_or_else(|| Error::Execution("the input is not on the GPU".into()))?;
        gpu.queue.write_buffer(&self.buffers[storage], 0, &f32_bytes(input)?);
        let period_ms = f64::from(gpu.queue.get_timestamp_period()) * 1e-6;
        let per_set = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;
        let mut times = vec![];
        for chunk in dispatches.chunks(per_set) {
            let count = 2 * chunk.len() as u32;
            let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let size = u64::from(count) * 8;
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            for (i, d) in chunk.iter().enumerate() {
                let i = 2 * i as u32;
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(i),
                        end_of_pass_write_index: Some(i + 1),
                    }),
                });
                pass.set_pipeline(gpu.kernels.pipeline(d.kernel));
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
            encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
            let bytes = read_back(gpu, encoder, &resolved, size).await?;
            let ticks: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            for (d, t) in chunk.iter().zip(ticks.chunks_exact(2)) {
                times.push(DispatchTime {
                    node: d.node.clone(),
                    kernel: format!("{:?}", d.kernel),
                    groups: d.groups,
                    ms: t[1].saturating_sub(t[0]) as f64 * period_ms,
                });
            }
        }
        gpu.check()?;
        Ok(times)
    }

    /// Copies value `v` back from the GPU.
    async fn read(&self, v: usize) -> Result<Tensor> {
        let gpu = &self.gpu;
        let value = &self.values[v];
        let storage =
            value.storage.ok_or_else(|| Error::Execution("value not on the GPU".into()))?;
        let len = value.shape.iter().product::<usize>();
        let size = (len.max(1) * 4) as u64;
        let encoder = gpu.device.create_command_encoder(&Default::default());
        let bytes = read_back(gpu, encoder, &self.buffers[storage], size).await?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .take(len)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_shape(&value.shape, &data).map_err(|e| Error::Execution(format!("{e:#}")))
    }
}

/// Submits `encoder` with a copy of `source`'s first `size` bytes appended, waits for the GPU,
/// and returns those bytes.
async fn read_back(
    gpu: &Gpu,
    mut encoder: wgpu::CommandEncoder,
    source: &wgpu::Buffer,
    size: u64,
) -> Result<Vec<u8>> {
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(source, 0, &staging, 0, size);
    gpu.queue.submit([encoder.finish()]);
    let (tx, rx) = oneshot();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| tx.send(r));
    gpu.wait()?;
    rx.await.map_err(|e| Error::Execution(e.to_string()))?;
    let bytes =
        staging.slice(..).get_mapped_range().map_err(|e| Error::Execution(e.to_string()))?.to_vec();
    staging.unmap();
    gpu.check()?;
    Ok(bytes)
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let view = t.to_plain_array_view::<f32>().map_err(|e| Error::Execution(format!("{e:#}")))?;
    Ok(view.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A bind group for `kernel` with `buffers` at bindings 0, 1, 2… (reads, output, params).
pub(crate) fn bind(gpu: &Gpu, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
        .collect();
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &gpu.kernels.pipeline(kernel).get_bind_group_layout(0),
        entries: &entries,
    })
}

pub(crate) fn params_buffer(gpu: &Gpu, params: &[u32]) -> wgpu::Buffer {
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: (bytes.len() as u64).next_multiple_of(16),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&buffer, 0, &bytes);
    buffer
}
