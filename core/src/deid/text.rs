//! Burned-in text detection with PP-OCRv4's DBNet detector on tract.
//!
//! The image is scaled down so that its longer side is at most [`TextDetector::MAX_SIDE`]
//! (never up), placed at the top-left of a black `MAX_SIDE²` canvas — one input size, so the
//! model is optimised once at load — normalised as PaddleOCR trains it, and run; the probability
//! map is thresholded (0.3), split into connected regions, each region scored by its mean
//! probability (kept at ≥ 0.6) and expanded by DBNet's unclip distance
//! (`area × 1.5 / perimeter`) plus a 2-pixel margin — the DB post-processing of PaddleOCR
//! with axis-aligned boxes.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::{Error, Pixels, Result, preprocess};

/// A rectangle of burned-in text, in pixels of the original image.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Mean text probability inside the detected region.
    pub score: f32,
}

/// The PP-OCRv4 detector, loaded and optimised once.
#[derive(Debug, Clone)]
pub struct TextDetector {
    plan: Arc<TypedRunnableModel>,
}

const THRESHOLD: f32 = 0.3;
const BOX_THRESHOLD: f32 = 0.6;
const UNCLIP_RATIO: f32 = 1.5;
/// Extra pixels (in the original image) around every box: glyph edges and anti-aliasing
/// fall just outside DBNet's unclipped region; privacy errs on the side of covering them.
const MARGIN: f32 = 2.0;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

impl TextDetector {
    /// sha256 of the bundled `ch_PP-OCRv4_det_infer.onnx`.
    pub const SHA256: &'static str =
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9";
    /// Longest side the detector sees (PaddleOCR's default limit).
    pub const MAX_SIDE: u32 = 960;

    /// Loads the detector, checking that the bytes are the bundled model.
    pub fn load(onnx: &[u8]) -> Result<TextDetector> {
        let actual = crate::sha256_hex(onnx);
        if actual != Self::SHA256 {
            return Err(Error::ModelChecksum { expected: Self::SHA256.into(), actual });
        }
        let err = |e: TractError| Error::ModelLoad { reason: format!("{e:#}") };
        let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(err)?;
        // One concrete input size: tract cannot prove that symbolic sides line up through the
        // detector's stride-32 pyramid, and a fixed size lets it optimise fully once.
        let side = i64::from(Self::MAX_SIDE);
        let dims: Vec<TDim> = vec![TDim::Val(1), TDim::Val(3), TDim::Val(side), TDim::Val(side)];
        model.set_input_fact(0, f32::fact(dims).into()).map_err(err)?;
        let plan = model.into_optimized().map_err(err)?.into_runnable().map_err(err)?;
        Ok(TextDetector { plan })
    }

    /// Finds text in an image (gray or RGB, 0..=1).
    pub fn detect(&self, px: &Pixels) -> Result<Vec<TextBox>> {
        let side = Self::MAX_SIDE as usize;
        let scale = (Self::MAX_SIDE as f32 / px.width.max(px.height) as f32).min(1.0);
        let fit = |v: u32| ((v as f32 * scale).round() as u32).clamp(1, Self::MAX_SIDE);
        let (w, h) = (fit(px.width), fit(px.height));
        let rgb = preprocess::to_channels(preprocess::resize(px, w, h), 3);
        let plane = side * side;
        let mut input = vec![0f32; 3 * plane];
        for c in 0..3 {
            input[c * plane..(c + 1) * plane].fill(-MEAN[c] / STD[c]);
        }
        for (i, p) in rgb.data.chunks_exact(3).enumerate() {
            let at = (i / w as usize) * side + i % w as usize;
            // PaddleOCR feeds BGR.
            for (c, &v) in [p[2], p[1], p[0]].iter().enumerate() {
                input[c * plane + at] = (v - MEAN[c]) / STD[c];
            }
        }
        let run_err = |e: TractError| Error::Inference { reason: format!("{e:#}") };
        let tensor = Tensor::from_shape(&[1, 3, side, side], &input).map_err(run_err)?;
        let out = self.plan.run(tvec!(tensor.into())).map_err(run_err)?;
        let full = out[0].to_plain_array_view::<f32>().map_err(run_err)?;
        let full = full.as_slice().ok_or_else(|| Error::Inference {
            reason: "detector output is not contiguous".into(),
        })?;
        if full.len() != plane {
            return Err(Error::Inference { reason: "unexpected detector output size".into() });
        }
        // The part of the map that covers the image.
        let map: Vec<f32> = (0..h as usize)
            .flat_map(|y| full[y * side..y * side + w as usize].iter().copied())
            .collect();
        let (sx, sy) = (px.width as f32 / w as f32, px.height as f32 / h as f32);
        Ok(regions(&map, w as usize, h as usize)
            .into_iter()
            .filter_map(|r| {
                let (bw, bh) = ((r.x1 - r.x0 + 1) as f32, (r.y1 - r.y0 + 1) as f32);
                let d = bw * bh * UNCLIP_RATIO / (2.0 * (bw + bh));
                let x0 = ((r.x0 as f32 - d) * sx - MARGIN).floor().max(0.0);
                let y0 = ((r.y0 as f32 - d) * sy - MARGIN).floor().max(0.0);
                let x1 = ((r.x1 as f32 + 1.0 + d) * sx + MARGIN).ceil().min(px.width as f32);
                let y1 = ((r.y1 as f32 + 1.0 + d) * sy + MARGIN).ceil().min(px.height as f32);
                (x1 - x0 >= 3.0 && y1 - y0 >= 3.0).then_some(TextBox {
                    x: x0 as u32,
                    y: y0 as u32,
                    width: (x1 - x0) as u32,
                    height: (y1 - y0) as u32,
                    score: r.score,
                })
            })
            .collect())
    }
}

struct Region {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    score: f32,
}

/// 8-connected regions of `map > THRESHOLD` whose bounding box has mean probability ≥
/// `BOX_THRESHOLD`.
fn regions(map: &[f32], w: usize, h: usize) -> Vec<Region> {
    let mut seen = vec![false; map.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..map.len() {
        if seen[start] || map[start] <= THRESHOLD {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !seen[j] && map[j] > THRESHOLD {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let mut sum = 0f32;
        for y in y0..=y1 {
            sum += map[y * w + x0..=y * w + x1].iter().sum::<f32>();
        }
        let score = sum / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
        if score >= BOX_THRESHOLD && x1 > x0 && y1 > y0 {
            out.push(Region { x0, y0, x1, y1, score });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_found_scored_and_filtered() {
        let (w, h) = (20, 10);
        let mut map = vec![0f32; w * h];
        for y in 2..5 {
            for x in 3..12 {
                map[y * w + x] = 0.9;
            }
        }
        map[8 * w + 18] = 0.95; // a single pixel: box too thin, dropped
        map[7 * w + 1] = 0.31; // faint blob: mean below the box threshold
        map[8 * w + 2] = 0.31;
        let r = regions(&map, w, h);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].x0, r[0].y0, r[0].x1, r[0].y1), (3, 2, 11, 4));
        assert!((r[0].score - 0.9).abs() < 1e-6);
    }
}
