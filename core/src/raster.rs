//! PNG and JPEG decoding with `image` (those two codecs only).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::{Error, Format, Limits, Pixels, Result};

/// Decodes a PNG or JPEG into [`Pixels`], checking dimensions from the header before any
/// pixel is decompressed (a 10 000 px PNG is refused without allocating it).
///
/// Grayscale (with or without alpha) stays one channel; everything else becomes RGB. 16-bit
/// PNGs keep their precision (normalised by 65535). Alpha is dropped, not composited.
pub fn decode_raster(bytes: &[u8], format: Format, limits: &Limits) -> Result<Pixels> {
    let (image_format, name) = match format {
        Format::Png => (ImageFormat::Png, "png"),
        Format::Jpeg => (ImageFormat::Jpeg, "jpeg"),
        Format::Dicom => return Err(Error::UnsupportedFormat),
    };
    let err = |e: image::ImageError| Error::Decode { format: name, reason: e.to_string() };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    // Sides are checked against our limits from the header below (with our error code); the
    // allocation cap guards the decoder itself.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_side as u64 * limits.max_side as u64 * 4 * 2 * 2);
    reader.limits(image_limits);
    let decoder = reader.into_decoder().map_err(err)?;
    let (width, height) = decoder.dimensions();
    limits.check_dimensions(width.into(), height.into())?;
    let image = DynamicImage::from_decoder(decoder).map_err(err)?;
    Ok(match image {
        DynamicImage::ImageLuma8(img) => {
            Pixels { width, height, channels: 1, data: scale(img.as_raw(), 255.0) }
        }
        DynamicImage::ImageLumaA8(_) => {
            let img = image.to_luma8();
            Pixels { width, height, channels: 1, data: scale(img.as_raw(), 255.0) }
        }
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
            let img = image.to_luma16();
            Pixels { width, height, channels: 1, data: scale(img.as_raw(), 65535.0) }
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
            let img = image.to_rgb16();
            Pixels { width, height, channels: 3, data: scale(img.as_raw(), 65535.0) }
        }
        _ => {
            let img = image.to_rgb8();
            Pixels { width, height, channels: 3, data: scale(img.as_raw(), 255.0) }
        }
    })
}

fn scale<T: Copy + Into<f32>>(raw: &[T], max: f32) -> Vec<f32> {
    raw.iter().map(|&v| v.into() / max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, color: image::ExtendedColorType, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            raw,
            width,
            height,
            color,
        )
        .unwrap();
        out
    }

    #[test]
    fn gray_png_round_trips() {
        let raw: Vec<u8> = (0..64 * 64).map(|i| (i % 256) as u8).collect();
        let bytes = png(64, 64, image::ExtendedColorType::L8, &raw);
        let px = decode_raster(&bytes, Format::Png, &Limits::default()).unwrap();
        assert_eq!((px.width, px.height, px.channels), (64, 64, 1));
        assert_eq!(px.to_u8(), raw);
    }

    #[test]
    fn oversized_png_is_refused_from_its_header() {
        // A 10000x10 PNG: the header alone decides, nothing is inflated.
        let raw = vec![0u8; 10_000 * 10];
        let bytes = png(10_000, 10, image::ExtendedColorType::L8, &raw);
        let e = decode_raster(&bytes, Format::Png, &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "input.dimensions");
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let raw = vec![7u8; 64 * 64 * 3];
        let bytes = png(64, 64, image::ExtendedColorType::Rgb8, &raw);
        let e =
            decode_raster(&bytes[..bytes.len() / 2], Format::Png, &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "decode.png");
    }
}
