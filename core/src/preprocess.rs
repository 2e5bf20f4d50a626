//! Manifest-driven preprocessing: resize, channel conversion, scale, mean/std and layout.
//!
//! Resizing is separable triangle-filter (bilinear) resampling whose support widens with the
//! downscale factor — the same definition as PIL's `Image.resize(..., BILINEAR)` that
//! torchvision uses — so that a 2048² radiograph reduced to 224² is averaged, not aliased.

use crate::{Layout, ModelManifest, Pixels, ResizeMode};

/// Resizes `px` to `width × height` (bilinear with antialiasing).
pub fn resize(px: &Pixels, width: u32, height: u32) -> Pixels {
    if px.width == width && px.height == height {
        return px.clone();
    }
    let c = px.channels as usize;
    let (iw, ih, ow, oh) = (px.width as usize, px.height as usize, width as usize, height as usize);
    // Horizontal pass: ih rows of ow pixels.
    let hx = resample_weights(iw, ow);
    let mut tmp = vec![0f32; ih * ow * c];
    for y in 0..ih {
        let row = &px.data[y * iw * c..(y + 1) * iw * c];
        for (x, (start, weights)) in hx.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for (k, w) in weights.iter().enumerate() {
                    acc += w * row[(start + k) * c + ch];
                }
                tmp[(y * ow + x) * c + ch] = acc;
            }
        }
    }
    // Vertical pass.
    let hy = resample_weights(ih, oh);
    let mut out = vec![0f32; oh * ow * c];
    for (y, (start, weights)) in hy.iter().enumerate() {
        let dst = &mut out[y * ow * c..(y + 1) * ow * c];
        for (k, w) in weights.iter().enumerate() {
            let src = &tmp[(start + k) * ow * c..(start + k + 1) * ow * c];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    }
    Pixels { width, height, channels: px.channels, data: out }
}

/// The resampling filter of [`resize`] along one axis of `input` samples resized to `output`:
/// for each output index, the first input index and the normalised weights. Public so that
/// the GPU executor resamples with exactly these weights.
pub fn resample_weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // triangle filter radius 1, widened when downscaling
    (0..output)
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(input).max(lo + 1);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                w = vec![1.0; hi - lo].into_iter().map(|_| 1.0 / (hi - lo) as f64).collect();
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Converts to 1 channel (ITU-R 601 luma, as PIL's `L`) or 3 (gray replicated).
pub fn to_channels(px: Pixels, channels: u8) -> Pixels {
    match (px.channels, channels) {
        (a, b) if a == b => px,
        (1, 3) => {
            Pixels { data: px.data.iter().flat_map(|&v| [v, v, v]).collect(), channels: 3, ..px }
        }
        _ => Pixels {
            data: px
                .data
                .chunks_exact(3)
                .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
                .collect(),
            channels: 1,
            ..px
        },
    }
}

/// Writes the model input for one image into `out` (length `C*H*W`), in the manifest's layout.
///
/// # Panics
/// If `out` does not have the length the manifest's input shape implies.
pub fn preprocess_into(px: &Pixels, manifest: &ModelManifest, out: &mut [f32]) {
    let spec = &manifest.input;
    let (c, h, w) = (spec.channels() as usize, spec.height(), spec.width());
    assert_eq!(
        out.len(),
        c * h as usize * w as usize,
        "output buffer does not match the input shape"
    );
    let fitted = match manifest.preprocess.resize {
        ResizeMode::Stretch => resize(px, w, h),
        ResizeMode::Letterbox => letterbox(px, w, h),
    };
    let img = to_channels(fitted, c as u8);
    let p = &manifest.preprocess;
    let plane = h as usize * w as usize;
    for (i, pixel) in img.data.chunks_exact(c).enumerate() {
        for (ch, &v) in pixel.iter().enumerate() {
            let x = (v * p.scale - p.mean[ch]) / p.std[ch];
            match spec.layout {
                Layout::Nchw => out[ch * plane + i] = x,
                Layout::Nhwc => out[i * c + ch] = x,
            }
        }
    }
}

/// Where an image of `width × height` lands in the model's `w × h` input: its resized size and
/// its offset (`resize` mode: stretched over all of it; `letterbox`: aspect kept, centred).
pub fn placement(width: u32, height: u32, w: u32, h: u32, mode: ResizeMode) -> [u32; 4] {
    match mode {
        ResizeMode::Stretch => [w, h, 0, 0],
        ResizeMode::Letterbox => {
            let s = (f64::from(w) / f64::from(width)).min(f64::from(h) / f64::from(height));
            let sw = ((f64::from(width) * s).round() as u32).clamp(1, w);
            let sh = ((f64::from(height) * s).round() as u32).clamp(1, h);
            [sw, sh, (w - sw) / 2, (h - sh) / 2]
        }
    }
}

fn letterbox(px: &Pixels, w: u32, h: u32) -> Pixels {
    let [sw, sh, ox, oy] = placement(px.width, px.height, w, h, ResizeMode::Letterbox);
    let small = resize(px, sw, sh);
    let c = px.channels as usize;
    let (ox, oy) = (ox as usize, oy as usize);
    let mut data = vec![0f32; w as usize * h as usize * c];
    for y in 0..sh as usize {
        let src = &small.data[y * sw as usize * c..(y + 1) * sw as usize * c];
        let at = ((oy + y) * w as usize + ox) * c;
        data[at..at + src.len()].copy_from_slice(src);
    }
    Pixels { width: w, height: h, channels: px.channels, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, c: u8, f: impl Fn(u32, u32, u8) -> f32) -> Pixels {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    data.push(f(x, y, ch));
                }
            }
        }
        Pixels { width: w, height: h, channels: c, data }
    }

    #[test]
    fn constant_stays_constant_at_any_scale() {
        let px = img(517, 300, 3, |_, _, c| 0.25 * f32::from(c + 1));
        for (w, h) in [(224, 224), (1000, 37), (1, 1)] {
            let r = resize(&px, w, h);
            for (i, v) in r.data.iter().enumerate() {
                assert!((v - 0.25 * (i % 3 + 1) as f32).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn halving_averages_pairs() {
        // Downscale by 2 with a triangle filter of radius 2 input pixels: weights 1/8,3/8,3/8,1/8
        // around each output centre (PIL's BILINEAR definition).
        let px = img(8, 1, 1, |x, _, _| x as f32);
        let r = resize(&px, 4, 1);
        let expect = |c: f32| -> f32 {
            let taps = [(c - 1.5, 0.125), (c - 0.5, 0.375), (c + 0.5, 0.375), (c + 1.5, 0.125)];
            let valid: Vec<_> = taps.iter().filter(|(i, _)| *i >= 0.0 && *i <= 7.0).collect();
            let s: f32 = valid.iter().map(|(_, w)| w).sum();
            valid.iter().map(|(i, w)| i * w).sum::<f32>() / s
        };
        for x in 0..4 {
            let centre = 2.0 * x as f32 + 0.5;
            assert!(
                (r.data[x] - expect(centre)).abs() < 1e-5,
                "{x}: {} vs {}",
                r.data[x],
                expect(centre)
            );
        }
    }

    #[test]
    fn gray_to_rgb_and_back() {
        let g = img(2, 1, 1, |x, _, _| x as f32 * 0.5);
        let rgb = to_channels(g.clone(), 3);
        assert_eq!(rgb.data, vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.5]);
        let back = to_channels(rgb, 1);
        assert!(back.data.iter().zip(&g.data).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
