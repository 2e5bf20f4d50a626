//! The decoded image every input form converges to.

use std::borrow::Cow;

use crate::dicom::Voi;

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

/// A decoded image as the model takes it.
///
/// A grayscale DICOM frame stays in modality values with its VOI stage beside them
/// ([`Image::Modality`]), so that an executor that preprocesses where the model runs (the
/// GPU) windows there too; every other input is already display values.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// Samples in 0..=1.
    Display(Pixels),
    /// A grayscale frame before its VOI stage.
    Modality(Modality),
}

/// A grayscale frame's modality values (after the Modality LUT) and the VOI stage that maps
/// them to display values.
#[derive(Debug, Clone, PartialEq)]
pub struct Modality {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` modality values, row-major.
    pub values: Vec<f32>,
    /// Window, function and inversion.
    pub voi: Voi,
}

impl Image {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        match self {
            Image::Display(p) => p.width,
            Image::Modality(m) => m.width,
        }
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        match self {
            Image::Display(p) => p.height,
            Image::Modality(m) => m.height,
        }
    }

    /// 1 (grayscale) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        match self {
            Image::Display(p) => p.channels,
            Image::Modality(_) => 1,
        }
    }

    /// Display values in 0..=1 (the VOI stage applied on the CPU where it is pending).
    pub fn display(&self) -> Cow<'_, Pixels> {
        match self {
            Image::Display(p) => Cow::Borrowed(p),
            Image::Modality(m) => Cow::Owned(m.voi.pixels(m.width, m.height, &m.values)),
        }
    }
}

impl From<Pixels> for Image {
    fn from(pixels: Pixels) -> Image {
        Image::Display(pixels)
    }
}
