//! The seed's JSON array input: `{"data": [...], "width": W, "height": H, "channels"?: 1|3}`.

use serde::Deserialize;

use crate::{DType, Error, Limits, Pixels, Result, validate::validate_samples};

/// A flat, row-major sample array as the seed's examples send it
/// (`(np.array(img) / 255.0).flatten().tolist()`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArrayInput {
    /// Samples, row-major, channels interleaved.
    pub data: Vec<f64>,
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
    /// 1 or 3; when absent it is inferred from `data.len()` (`w*h` → 1, `w*h*3` → 3).
    #[serde(default)]
    pub channels: Option<u64>,
    /// `uint8`, `uint16`, `float32` (default) or `float64`.
    #[serde(default)]
    pub dtype: Option<String>,
}

impl ArrayInput {
    /// Validates the array against the seed's rules and returns it as [`Pixels`].
    pub fn to_pixels(&self, limits: &Limits) -> Result<Pixels> {
        limits.check_dimensions(self.width, self.height)?;
        let dtype = self.dtype.as_deref().map(DType::parse).transpose()?.unwrap_or_default();
        let area = self.width * self.height;
        let channels =
            self.channels.unwrap_or(if self.data.len() as u64 == area * 3 { 3 } else { 1 });
        let data = validate_samples(&self.data, self.width, self.height, channels, dtype, limits)?;
        Pixels::new(self.width as u32, self.height as u32, channels as u8, data)
            .ok_or(Error::Shape { expected: area * channels, found: self.data.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_json_parses_and_infers_channels() {
        let data: Vec<f64> = (0..64 * 64 * 3).map(|i| (i % 256) as f64 / 255.0).collect();
        let json =
            serde_json::json!({"data": data, "width": 64, "height": 64, "patient_id": "PT-1"});
        let input: ArrayInput = serde_json::from_value(json).unwrap();
        let px = input.to_pixels(&Limits::default()).unwrap();
        assert_eq!(px.channels, 3);
    }

    #[test]
    fn wrong_shape_and_type_are_refused() {
        let input =
            ArrayInput { data: vec![0.0; 100], width: 64, height: 64, channels: None, dtype: None };
        assert_eq!(input.to_pixels(&Limits::default()).unwrap_err().code(), "input.shape");
        let input = ArrayInput { dtype: Some("complex128".into()), data: vec![0.0; 4096], ..input };
        assert_eq!(input.to_pixels(&Limits::default()).unwrap_err().code(), "input.dtype");
    }
}
