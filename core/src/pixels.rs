//! The decoded image every input form converges to.

/// An image with samples in 0..=1, row-major, channels interleaved (HWC).
///
/// Grayscale images have one channel, colour images three (RGB). DICOM images arrive here
/// after Modality LUT, VOI windowing and MONOCHROME1 inversion, so 0 is always black.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u8,
    /// `width * height * channels` samples in 0..=1.
    pub data: Vec<f32>,
}

impl Pixels {
    /// Builds an image; `data.len()` must equal `width * height * channels`.
    pub fn new(width: u32, height: u32, channels: u8, data: Vec<f32>) -> Option<Pixels> {
        (data.len() == width as usize * height as usize * channels as usize
            && (channels == 1 || channels == 3))
            .then_some(Pixels { width, height, channels, data })
    }

    /// Converts to 8-bit samples (for previews and PNG export).
    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
    }
}
