//! Preprocessing on the GPU: the decoded image is uploaded once, windowed (a grayscale DICOM
//! frame's VOI stage, per source sample), resized (core's antialiased triangle filter, same
//! weights), converted to the model's channels, normalised and laid out straight into the
//! model's input buffer — the CPU never touches the resized tensor. Two passes per image:
//! windowing fused with horizontal resampling (`resize_h.wgsl`: the VOI clamps, so it must
//! come before the filter), then vertical resampling fused with everything else
//! (`fit.wgsl`).

use medinfer_core::preprocess::{placement, resample_weights};
use medinfer_core::{Image, Layout, ModelManifest, Voi, VoiFunction};

use crate::device::Gpu;
use crate::kernels::Kernel;
use crate::lower::{Target, flat_groups};
use crate::model::{bind, params_buffer as words};
use crate::{Error, Result};

/// Buffers kept between runs (the largest image so far decides their size).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    src: Option<wgpu::Buffer>,
    tmp: Option<wgpu::Buffer>,
}

/// What the model's input tensor is, from the manifest, checked against the plan's input.
pub(crate) struct Fit {
    channels: u32,
    width: u32,
    height: u32,
    nhwc: bool,
    mode: medinfer_core::ResizeMode,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Fit {
    pub(crate) fn new(
        manifest: &ModelManifest,
        input_shape: &[usize],
        batch: usize,
    ) -> Result<Fit> {
        let spec = &manifest.input;
        let (c, h, w) = (spec.channels(), spec.height(), spec.width());
        let nhwc = spec.layout == Layout::Nhwc;
        let expected: [usize; 4] = if nhwc {
            [batch, h as usize, w as usize, c as usize]
        } else {
            [batch, c as usize, h as usize, w as usize]
        };
        if input_shape != expected {
            return Err(Error::Unsupported(format!(
                "{batch} image(s) of the manifest's input {expected:?} for a plan of {input_shape:?}"
            )));
        }
        if !(c == 1 || c == 3) {
            return Err(Error::Unsupported(format!("{c} input channels")));
        }
        let p = &manifest.preprocess;
        Ok(Fit {
            channels: c,
            width: w,
            height: h,
            nhwc,
            mode: p.resize,
            scale: p.scale,
            mean: p.mean,
            std: p.std,
        })
    }

    /// Records and submits the passes that write `images` into `input` (one model input per
    /// image, in order). Each image is submitted on its own: the shared scratch buffers are
    /// rewritten for the next image only after the previous submission is queued.
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        scratch: &mut Scratch,
        images: &[&Image],
        input: &wgpu::Buffer,
    ) -> Result<()> {
        let limits = &gpu.limits;
        let max = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let target = Target {
            kernels: &gpu.kernels,
            max_groups: limits.max_compute_workgroups_per_dimension,
        };
        let groups = |total: usize| flat_groups(total, &target).map_err(Error::Limits);
        let per = (self.channels * self.width * self.height) as usize;
        for (b, image) in images.iter().enumerate() {
            let (width, height) = (image.width(), image.height());
            let (data, voi) = match image {
                Image::Display(px) => (&px.data, None),
                Image::Modality(m) => (&m.values, Some(m.voi)),
            };
            let c = u32::from(image.channels());
            let samples = width as usize * height as usize * c as usize;
            if !(c == 1 || c == 3) || data.len() != samples {
                return Err(Error::Unsupported(format!("an image of {c} channel(s)")));
            }
            let [sw, sh, ox, oy] = placement(width, height, self.width, self.height, self.mode);
            let src_bytes = samples as u64 * 4;
            let tmp_len = height as usize * sw as usize * c as usize;
            let tmp_bytes = tmp_len as u64 * 4;
            if src_bytes.max(tmp_bytes) > max {
                return Err(Error::Limits(format!(
                    "a {width}×{height} image needs a {}-byte buffer, above the adapter's {max}",
                    src_bytes.max(tmp_bytes)
                )));
            }
            let src = grown(gpu, &mut scratch.src, src_bytes);
            let tmp = grown(gpu, &mut scratch.tmp, tmp_bytes);
            gpu.queue.write_buffer(&src, 0, &f32_slice_bytes(data));
            let h_tab = table(gpu, width as usize, sw as usize)?;
            let v_tab = table(gpu, height as usize, sh as usize)?;
            let tmp_len =
                u32::try_from(tmp_len).map_err(|_| Error::Limits("image too large".into()))?;
            let mut h = vec![tmp_len, width, sw, c];
            h.extend(voi_words(voi));
            let h_params = words(gpu, &h);
            let mut fit = vec![
                per as u32,
                sw,
                sh,
                c,
                self.channels,
                self.width,
                self.height,
                ox,
                oy,
                u32::from(self.nhwc),
                u32::try_from(b * per).map_err(|_| Error::Limits("batch too large".into()))?,
                self.scale.to_bits(),
            ];
            fit.extend(self.mean.map(f32::to_bits));
            fit.extend(self.std.map(f32::to_bits));
            let v_params = words(gpu, &fit);
            let passes = [
                (Kernel::ResizeH, [&src, &h_tab, &tmp, &h_params], groups(tmp_len as usize)?),
                (Kernel::Fit, [&tmp, &v_tab, input, &v_params], groups(per)?),
            ];
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for (kernel, buffers, g) in &passes {
                    let pipeline = gpu.kernels.pipeline(*kernel);
                    let bind_group = bind(gpu, *kernel, buffers);
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(g[0], g[1], g[2]);
                }
            }
            gpu.queue.submit([encoder.finish()]);
        }
        Ok(())
    }
}

/// The VOI stage as `resize_h.wgsl` reads it: [function (0: none, 1: linear, 2: linear
/// exact, 3: sigmoid), centre, width, inverted], centre and width as f32 bits.
fn voi_words(voi: Option<Voi>) -> [u32; 4] {
    let Some(voi) = voi else { return [0; 4] };
    let function = match voi.function {
        VoiFunction::Linear => 1,
        VoiFunction::LinearExact => 2,
        VoiFunction::Sigmoid => 3,
    };
    let [center, width] = [voi.window.center, voi.window.width].map(|v| (v as f32).to_bits());
    [function, center, width, u32::from(voi.invert)]
}

/// The scratch buffer in `slot`, replaced by a bigger one when it is smaller than `bytes`.
fn grown(gpu: &Gpu, slot: &mut Option<wgpu::Buffer>, bytes: u64) -> wgpu::Buffer {
    let bytes = bytes.max(16).next_multiple_of(16);
    match slot {
        Some(b) if b.size() >= bytes => b.clone(),
        _ => {
            let b = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("preprocess scratch"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            *slot = Some(b.clone());
            b
        }
    }
}

/// core's resampling weights for `input` → `output` samples as the kernels read them:
/// [first, taps, offset] per output index, then the weights as f32 bits.
fn table(gpu: &Gpu, input: usize, output: usize) -> Result<wgpu::Buffer> {
    let weights = resample_weights(input, output);
    let mut head: Vec<u32> = Vec::with_capacity(output * 3);
    let mut tail: Vec<u32> = vec![];
    let base = output * 3;
    for (first, w) in &weights {
        let at = base + tail.len();
        let [first, taps, at] = [*first, w.len(), at]
            .map(|v| u32::try_from(v).map_err(|_| Error::Limits("image too large".into())));
        head.extend([first?, taps?, at?]);
        tail.extend(w.iter().map(|v| v.to_bits()));
    }
    head.extend(tail);
    Ok(words(gpu, &head))
}

fn f32_slice_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
