//! The seed's validation table: size, dimensions, data type, range, shape.

use crate::{Error, Result};

/// Limits applied to every input. The defaults are the seed's; deployments may tighten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Inputs must be strictly smaller than this many bytes (seed: 50 MB).
    pub max_bytes: usize,
    /// Smallest accepted image side in pixels (seed: 64).
    pub min_side: u32,
    /// Largest accepted image side in pixels (seed: 2048).
    pub max_side: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 50 * 1024 * 1024, min_side: 64, max_side: 2048 }
    }
}

impl Limits {
    /// Rejects inputs of `len` bytes that are empty or not below [`Limits::max_bytes`].
    pub fn check_size(&self, len: usize) -> Result<()> {
        if len == 0 {
            Err(Error::Empty)
        } else if len >= self.max_bytes {
            Err(Error::TooLarge { size: len, limit: self.max_bytes })
        } else {
            Ok(())
        }
    }

    /// Rejects images with a side outside `min_side..=max_side`.
    pub fn check_dimensions(&self, width: u64, height: u64) -> Result<()> {
        let ok = |side: u64| (u64::from(self.min_side)..=u64::from(self.max_side)).contains(&side);
        if ok(width) && ok(height) {
            Ok(())
        } else {
            Err(Error::Dimensions { width, height, min: self.min_side, max: self.max_side })
        }
    }
}

/// The sample types the seed accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Integers 0..=255.
    Uint8,
    /// Integers 0..=65535.
    Uint16,
    /// Floats in 0..=1 (the seed's `np.array(img) / 255.0`).
    #[default]
    Float32,
    /// Floats in 0..=1.
    Float64,
}

impl DType {
    /// Parses a type name as numpy spells it (`uint8`, `float32`, …).
    pub fn parse(name: &str) -> Result<DType> {
        match name {
            "uint8" | "u8" => Ok(DType::Uint8),
            "uint16" | "u16" => Ok(DType::Uint16),
            "float32" | "f32" | "float" => Ok(DType::Float32),
            "float64" | "f64" | "double" => Ok(DType::Float64),
            other => Err(Error::DataType { found: other.chars().take(32).collect() }),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }

    /// Checks one sample and maps it to 0..=1.
    fn normalise(self, index: usize, v: f64) -> Result<f32> {
        if !v.is_finite() {
            return Err(Error::NonFinite { index });
        }
        let (max, expected) = match self {
            DType::Uint8 => (255.0, "an integer in 0..=255"),
            DType::Uint16 => (65535.0, "an integer in 0..=65535"),
            DType::Float32 | DType::Float64 => (1.0, "a number in 0..=1"),
        };
        let integral = matches!(self, DType::Uint8 | DType::Uint16);
        if v < 0.0 || v > max || (integral && v.fract() != 0.0) {
            return Err(Error::PixelRange { index, dtype: self.name(), expected });
        }
        Ok((v / max) as f32)
    }
}

/// Validates a flat sample array against its declared shape and type and returns the samples
/// mapped to 0..=1 (row-major, channels interleaved).
pub fn validate_samples(
    data: &[f64],
    width: u64,
    height: u64,
    channels: u64,
    dtype: DType,
    limits: &Limits,
) -> Result<Vec<f32>> {
    limits.check_dimensions(width, height)?;
    if channels != 1 && channels != 3 {
        return Err(Error::Channels { found: channels });
    }
    let expected = width * height * channels;
    if data.len() as u64 != expected {
        return Err(Error::Shape { expected, found: data.len() as u64 });
    }
    data.iter().enumerate().map(|(i, &v)| dtype.normalise(i, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit_is_exclusive() {
        let l = Limits::default();
        assert!(l.check_size(l.max_bytes - 1).is_ok());
        assert_eq!(l.check_size(l.max_bytes).unwrap_err().code(), "input.too_large");
        assert_eq!(l.check_size(0).unwrap_err().code(), "input.empty");
    }

    #[test]
    fn dimension_bounds_are_inclusive() {
        let l = Limits::default();
        assert!(l.check_dimensions(64, 2048).is_ok());
        for (w, h) in [(63, 64), (64, 63), (2049, 100), (100, 2049), (0, 0), (10_000, 10_000)] {
            assert_eq!(l.check_dimensions(w, h).unwrap_err().code(), "input.dimensions", "{w}x{h}");
        }
    }

    #[test]
    fn every_rule_has_its_code() {
        let l = Limits::default();
        let ok = vec![0.5; 64 * 64];
        assert_eq!(validate_samples(&ok, 64, 64, 1, DType::Float32, &l).unwrap().len(), 4096);
        let code = |d: &[f64], c, t| validate_samples(d, 64, 64, c, t, &l).unwrap_err().code();
        assert_eq!(code(&ok[1..], 1, DType::Float32), "input.shape");
        assert_eq!(code(&ok, 2, DType::Float32), "input.channels");
        let mut bad = ok.clone();
        bad[7] = f64::NAN;
        assert_eq!(code(&bad, 1, DType::Float32), "input.non_finite");
        bad[7] = f64::INFINITY;
        assert_eq!(code(&bad, 1, DType::Float64), "input.non_finite");
        bad[7] = 1.5;
        assert_eq!(code(&bad, 1, DType::Float32), "input.pixel_range");
        bad[7] = -0.01;
        assert_eq!(code(&bad, 1, DType::Float64), "input.pixel_range");
        bad[7] = 256.0;
        assert_eq!(code(&bad, 1, DType::Uint8), "input.pixel_range");
        bad[7] = 3.5;
        assert_eq!(code(&bad, 1, DType::Uint16), "input.pixel_range");
        let mut ints = vec![0.0; 64 * 64];
        ints[7] = 65535.0;
        assert!(validate_samples(&ints, 64, 64, 1, DType::Uint16, &l).is_ok());
        assert_eq!(DType::parse("int64").unwrap_err().code(), "input.dtype");
    }

    #[test]
    fn integers_are_normalised() {
        let l = Limits::default();
        let mut d = vec![0.0; 64 * 64];
        d[1] = 255.0;
        let v = validate_samples(&d, 64, 64, 1, DType::Uint8, &l).unwrap();
        assert_eq!((v[0], v[1]), (0.0, 1.0));
    }
}
