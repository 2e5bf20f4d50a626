//! ONNX models on tract: load and optimise once, run batches, turn outputs into predictions.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::{Activation, Error, Image, ModelManifest, Result};

type Plan = Arc<TypedRunnableModel>;

/// Runs a model's decluttered graph instead of tract's optimised plan — the GPU executor
/// implements it (natively in the CLI, where wgpu is). The CPU plan stays the default.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// What ran, for reports (e.g. "gpu").
    fn name(&self) -> &str;
    /// Runs `model` on `batch` images whose inputs are concatenated in `input` (the model's
    /// layout) and returns the raw outputs, concatenated.
    fn run(&self, model: &LoadedModel, input: &[f32], batch: usize) -> Result<Vec<f32>>;
    /// Preprocesses `images` (as [`crate::Image::display`] then
    /// [`crate::preprocess::preprocess_into`] would) and runs the model on them, where the
    /// executor can do both (the GPU: the image is uploaded once and windowed, resized,
    /// converted and normalised where the model runs). `None`: it cannot for these
    /// images, and the caller preprocesses on the CPU and calls [`Executor::run`].
    fn run_images(&self, model: &LoadedModel, images: &[&Image]) -> Option<Result<Vec<f32>>> {
        let _ = (model, images);
        None
    }
}

/// A model ready to run: manifest + optimised tract plan. Cheap to share (`Arc` inside).
///
/// tract optimises a graph with a symbolic batch dimension into a plan 2–5× slower than one
/// with a concrete batch (measured on our models: DenseNet-121 202 → 98 ms, MobileNetV2
/// 107 → 20 ms), and its plans for a concrete batch above 1 are slower per image than the
/// batch-1 plan run once per image (tract 0.23.9, this 2-core VM, one thread: 8 images in one
/// run 2 857 vs 917 ms for DenseNet-121, 396 vs 159 ms for MobileNetV2; at batch 16, 3–4×).
/// So the CPU path keeps one plan, batch 1, built at load, and a batch is run image by image
/// through it; the decluttered graph keeps the batch symbol for executors that batch well
/// (the GPU: [`LoadedModel::typed_for_batch`]).
#[derive(Debug, Clone)]
pub struct LoadedModel {
    manifest: Arc<ModelManifest>,
    /// The decluttered graph and its batch symbol; `None` when loaded from the plan form.
    typed: Option<(Arc<TypedModel>, Symbol)>,
    plan: Plan,
    sha256: String,
    output_shape: Vec<String>,
    executor: Option<Arc<dyn Executor>>,
}

/// One label and its score.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// The label.
    pub label: String,
    /// Its score in 0..=1.
    pub score: f32,
}

/// The model's answer for one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    /// Every label with its score, highest first.
    pub predictions: Vec<Score>,
    /// The label with the highest score.
    pub top_label: String,
    /// The highest score (0..=1).
    pub confidence_score: f32,
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl LoadedModel {
    /// Parses, checks and optimises an ONNX model. Verifies the manifest's sha256 when given,
    /// and that the model's output width equals the number of labels.
    pub fn load(manifest: ModelManifest, onnx: &[u8]) -> Result<LoadedModel> {
        Ok(LoadedModel::compile(manifest, onnx, false)?.0)
    }

    /// [`LoadedModel::load`], also giving the model's plan form ([`crate::plan_form`]) for
    /// [`LoadedModel::load_plan_form`] to load it from in milliseconds later, in this build on
    /// this kind of CPU; `None` where the manifest pins no sha256 (the form names the model
    /// by it) or the graph holds an operator the form does not cover.
    pub fn load_with_plan_form(
        manifest: ModelManifest,
        onnx: &[u8],
    ) -> Result<(LoadedModel, Option<Vec<u8>>)> {
        LoadedModel::compile(manifest, onnx, true)
    }

    /// Loads a model from a plan form [`LoadedModel::load_with_plan_form`] wrote: no ONNX
    /// parsing, declutter or rewriting, only tract's last lowering of the few nodes of its
    /// own left. The manifest must pin the sha256 of the ONNX model the form came from. An
    /// error (`model.load_failed`) where the form is damaged, or was written by another build,
    /// for another CPU or from another model; the caller then loads the ONNX model instead.
    /// The model it gives runs on tract's CPU plan only: the decluttered graph another
    /// executor would walk ([`LoadedModel::typed_for_batch`]) is not in the form.
    pub fn load_plan_form(manifest: ModelManifest, form: &[u8]) -> Result<LoadedModel> {
        let load_err = |e: TractError| Error::ModelLoad { reason: format!("plan form: {e:#}") };
        let Some(sha256) = manifest.sha256.clone() else {
            return Err(Error::ModelLoad {
                reason: "plan form: the manifest pins no sha256 for it to match".into(),
            });
        };
        let read = crate::plan_form::read(form, &sha256).map_err(load_err)?;
        let classes = read.model.output_fact(0).map_err(load_err)?.shape.iter().last();
        if classes.and_then(|d| d.to_i64().ok()) != Some(manifest.output.labels.len() as i64) {
            return Err(Error::Manifest {
                reason: "the plan form's output does not match the manifest's labels".into(),
            });
        }
        let plan = read.model.into_optimized().and_then(|m| m.into_runnable()).map_err(load_err)?;
        Ok(LoadedModel {
            manifest: Arc::new(manifest),
            typed: None,
            plan,
            sha256: sha256.to_ascii_lowercase(),
            output_shape: read.output_shape,
            executor: None,
        })
    }

    fn compile(
        manifest: ModelManifest,
        onnx: &[u8],
        plan_form: bool,
    ) -> Result<(LoadedModel, Option<Vec<u8>>)> {
        // wasm: medinfer's matrix kernel registers itself with tract when its module is linked
        // in; this reference keeps the linker from dropping it.
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        std::hint::black_box(crate::wasm_mmm::registered());
        let sha256 = sha256_hex(onnx);
        if let Some(expected) = &manifest.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(Error::ModelChecksum { expected: expected.clone(), actual: sha256 });
        }
        let load_err = |e: TractError| Error::ModelLoad { reason: format!("{e:#}") };
        let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(load_err)?;
        let spec = &manifest.input;
        let batch = model.symbols.sym("N");
        let (c, h, w) = (spec.channels(), spec.height(), spec.width());
        let fixed = |v: u32| TDim::Val(i64::from(v));
        let dims: Vec<TDim> = match spec.layout {
            crate::Layout::Nchw => vec![batch.clone().into(), fixed(c), fixed(h), fixed(w)],
            crate::Layout::Nhwc => vec![batch.clone().into(), fixed(h), fixed(w), fixed(c)],
        };
        let input_index = model
            .input_outlets()
            .map_err(load_err)?
            .iter()
            .position(|o| model.node(o.node).name == spec.name)
            .ok_or_else(|| Error::Manifest {
                reason: format!("the model has no input named {:?}", spec.name),
            })?;
        model.set_input_fact(input_index, f32::fact(dims).into()).map_err(load_err)?;
        let typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(load_err)?;
        let output_fact = typed.output_fact(0).map_err(load_err)?;
        let output_shape: Vec<String> = output_fact.shape.iter().map(|d| d.to_string()).collect();
        let classes = output_fact.shape.iter().last().and_then(|d| d.to_i64().ok());
        if classes != Some(manifest.output.labels.len() as i64) {
            return Err(Error::Manifest {
                reason: format!(
                    "the model outputs {} classes per image but the manifest lists {} labels",
                    classes.map_or("a symbolic number of".to_string(), |c| c.to_string()),
                    manifest.output.labels.len()
                ),
            });
        }
        let one = HashMap::from([(batch.clone(), TDim::Val(1))]);
        // In the CPU plan only (`typed`, which the GPU executor walks, keeps tract's ops),
        // where each was measured faster than tract's (BENCHMARKS.md): on x86-64, tract's
        // depthwise convolutions and max poolings give way to medinfer's (`depthwise`), its
        // dense ones with kernels above 1×1 and the 1×1 ones (those with a batch
        // normalisation + ReLU before them, and the others on images of 64 positions and
        // more; an average pooling after them moved before) to medinfer's direct convolution
        // (`conv`); in the browser builds (wasm32-unknown-unknown, SIMD) the dense ones above
        // 1×1 and the 1×1 ones with a pooling after them (DenseNet-121's transitions). A
        // clamp after any of these (ReLU, ReLU6) folds into it; on x86-64, the 1×1 ones that
        // copy their image anyway read the pieces of a concatenation before them, so that
        // DenseNet-121's dense blocks run no concatenation (`read_concats`), and a residual
        // addition after a direct convolution folds into it (`fuse_residuals`). The Spin
        // component (wasip2) keeps tract's: under Cranelift the direct convolution's wasm
        // block made DenseNet-121 15 % slower (and the pooled transitions alone gained
        // nothing measurable), and with our depthwise convolutions MobileNetV2 ran 12 %
        // slower; every 1×1 on the fused form was slower in the SIMD128 browser build;
        // aarch64 is not measured.
        let rewritten = typed
            .set_symbols(&one)
            .and_then(|mut m| {
                if cfg!(target_arch = "x86_64") {
                    crate::depthwise::substitute(&mut m)?;
                    crate::depthwise::substitute_max_pools(&mut m)?;
                    crate::concat::substitute(&mut m)?;
                }
                let browser = cfg!(all(
                    target_arch = "wasm32",
                    target_os = "unknown",
                    target_feature = "simd128"
                ));
                if cfg!(target_arch = "x86_64") || browser {
                    crate::conv::substitute(&mut m)?;
                    crate::conv::substitute_pointwise(&mut m, browser)?;
                }
                crate::conv::fuse_clamps(&mut m)?;
                if cfg!(target_arch = "x86_64") {
                    crate::fused::substitute(&mut m)?;
                    crate::conv::read_concats(&mut m)?;
                    crate::conv::fuse_residuals(&mut m)?;
                }
                Ok(m)
            })
            .map_err(load_err)?;
        let form = match &manifest.sha256 {
            Some(pinned) if plan_form => {
                crate::plan_form::write(&rewritten, pinned, &output_shape).map_err(load_err)?
            }
            _ => None,
        };
        let plan = rewritten.into_optimized().and_then(|m| m.into_runnable()).map_err(load_err)?;
        let loaded = LoadedModel {
            manifest: Arc::new(manifest),
            typed: Some((Arc::new(typed), batch)),
            plan,
            sha256,
            output_shape,
            executor: None,
        };
        Ok((loaded, form))
    }

    /// The decluttered graph with the batch dimension fixed to `batch`: what an executor
    /// other than tract's own plan (the GPU one) walks.
    pub fn typed_for_batch(&self, batch: usize) -> Result<TypedModel> {
        let Some((typed, symbol)) = &self.typed else {
            return Err(Error::ModelLoad {
                reason: "loaded from its plan form, which keeps no decluttered graph: load the \
                         ONNX model for this executor"
                    .into(),
            });
        };
        let subs = HashMap::from([(symbol.clone(), TDim::Val(batch as i64))]);
        typed.set_symbols(&subs).map_err(|e| Error::ModelLoad { reason: format!("{e:#}") })
    }

    /// The names of the operators in the CPU plan, in order (e.g. "medinfer.DepthwiseConv"):
    /// what tract's optimiser made of the model, for tests and reports.
    pub fn plan_operators(&self) -> Vec<String> {
        self.plan.model().nodes().iter().map(|n| n.op.name().to_string()).collect()
    }

    /// The matrix-product kernels tract's CPU plan picked (e.g. "fma_mmm_f32_16x6",
    /// "medinfer_wasm_f32_16x8"), each once, sorted: which code runs the model's products on
    /// this machine, for reports and tests.
    pub fn matmul_kernels(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .plan
            .model()
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::matmul::optimized::OptMatMul>())
            .flat_map(|op| op.mmm.iter().map(|k| k.name().to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Runs this model with `executor` instead of tract's plan.
    pub fn set_executor(&mut self, executor: Arc<dyn Executor>) {
        self.executor = Some(executor);
    }

    /// What runs the model: "cpu" (tract's plan) or the executor's name.
    pub fn backend(&self) -> &str {
        self.executor.as_ref().map_or("cpu", |e| e.name())
    }

    /// The manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// sha256 of the ONNX bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The output shape as tract sees it, e.g. `["N", "14"]`.
    pub fn output_shape(&self) -> &[String] {
        &self.output_shape
    }

    /// Number of f32 values one image's input tensor holds.
    pub fn input_len(&self) -> usize {
        let s = &self.manifest.input;
        (s.channels() * s.height() * s.width()) as usize
    }

    /// Preprocesses and runs `images` in the executor when it can ([`Executor::run_images`]);
    /// `None` otherwise (tract's plan, or images the executor leaves to the CPU).
    pub fn run_images(&self, images: &[&Image]) -> Option<Result<Vec<Vec<f32>>>> {
        let flat = self.executor.as_ref()?.run_images(self, images)?;
        let classes = self.manifest.output.labels.len();
        Some(flat.and_then(|flat| {
            if images.is_empty() || flat.len() != classes * images.len() {
                return Err(Error::Inference { reason: "unexpected output size".into() });
            }
            Ok(flat.chunks_exact(classes).map(<[f32]>::to_vec).collect())
        }))
    }

    /// Runs the model on `batch` images whose preprocessed inputs are concatenated in `input`
    /// and returns the raw outputs, one `Vec` of class values per image.
    pub fn run_raw(&self, input: Vec<f32>, batch: usize) -> Result<Vec<Vec<f32>>> {
        let per = self.input_len();
        if batch == 0 || input.len() != per * batch {
            return Err(Error::Inference {
                reason: "input length does not match the batch".into(),
            });
        }
        let classes = self.manifest.output.labels.len();
        if let Some(executor) = &self.executor {
            let flat = executor.run(self, &input, batch)?;
            if flat.len() != classes * batch {
                return Err(Error::Inference { reason: "unexpected output size".into() });
            }
            return Ok(flat.chunks_exact(classes).map(<[f32]>::to_vec).collect());
        }
        let shape = self.image_shape();
        let run_one = |image: &[f32]| -> Result<Vec<f32>> {
            let tensor = Tensor::from_shape(&shape, image).map_err(inference_err)?;
            self.run_tensor(tensor)
        };
        // Image by image through the batch-1 plan: faster than tract's batch-N plans (above);
        // several images at once where `set_threads` started a pool.
        crate::map_on_pool(input.chunks_exact(per).collect(), run_one).into_iter().collect()
    }

    /// Whether the model runs on tract's CPU plan (no executor): [`crate::predict`] then
    /// preprocesses each image straight into its input tensor ([`LoadedModel::preprocessed`],
    /// [`LoadedModel::run_tensors`]), without the copy `run_raw` makes of each image
    /// (MobileNetV2's 0.6 MB).
    pub(crate) fn runs_on_cpu_plan(&self) -> bool {
        self.executor.is_none()
    }

    /// `image`'s input tensor for the batch-1 plan (`[1, C, H, W]` or `[1, H, W, C]`), as
    /// [`crate::preprocess::preprocess_into`] makes it.
    pub(crate) fn preprocessed(&self, image: &crate::Image) -> Result<Tensor> {
        let mut tensor = Tensor::zero::<f32>(&self.image_shape()).map_err(inference_err)?;
        let mut view = tensor.try_as_plain_ram_mut().map_err(inference_err)?;
        let dst = view.as_slice_mut::<f32>().map_err(inference_err)?;
        crate::preprocess::preprocess_into(&image.display(), &self.manifest, dst);
        Ok(tensor)
    }

    /// The raw outputs of [`LoadedModel::preprocessed`]'s tensors, as `run_raw` gives them.
    pub(crate) fn run_tensors(&self, inputs: Vec<Tensor>) -> Result<Vec<Vec<f32>>> {
        let shape = self.image_shape();
        if inputs.iter().any(|t| t.shape() != shape || t.datum_type() != f32::datum_type()) {
            return Err(Error::Inference { reason: "an input tensor of unexpected shape".into() });
        }
        crate::map_on_pool(inputs, |t| self.run_tensor(t)).into_iter().collect()
    }

    /// The batch-1 plan's input shape.
    fn image_shape(&self) -> [usize; 4] {
        let s = &self.manifest.input;
        let (c, h, w) = (s.channels() as usize, s.height() as usize, s.width() as usize);
        match s.layout {
            crate::Layout::Nchw => [1, c, h, w],
            crate::Layout::Nhwc => [1, h, w, c],
        }
    }

    /// One image's run through the batch-1 plan: its `classes` raw outputs.
    fn run_tensor(&self, tensor: Tensor) -> Result<Vec<f32>> {
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(inference_err)?;
        let values = outputs[0].to_plain_array_view::<f32>().map_err(inference_err)?;
        if values.len() != self.manifest.output.labels.len() {
            return Err(Error::Inference { reason: "unexpected output size".into() });
        }
        Ok(values.iter().copied().collect())
    }

    /// Applies the manifest's activation and labels to one image's raw output.
    pub fn postprocess(&self, raw: &[f32]) -> Prediction {
        let scores: Vec<f32> = match self.manifest.output.activation {
            Activation::Identity => raw.to_vec(),
            Activation::Sigmoid => raw.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Activation::Softmax => {
                let max = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = raw.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.iter().map(|e| e / sum).collect()
            }
        };
        let mut predictions: Vec<Score> = self
            .manifest
            .output
            .labels
            .iter()
            .zip(scores)
            .map(|(label, score)| Score {
                label: label.clone(),
                score: if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) },
            })
            .collect();
        predictions.sort_by(|a, b| b.score.total_cmp(&a.score));
        let top =
            predictions.first().cloned().unwrap_or(Score { label: String::new(), score: 0.0 });
        Prediction { predictions, top_label: top.label, confidence_score: top.score }
    }
}

/// A tract error while running a model, as medinfer's.
fn inference_err(e: TractError) -> Error {
    Error::Inference { reason: format!("{e:#}") }
}
