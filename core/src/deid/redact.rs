//! Clean Pixel Data: black out detected text boxes in every frame.
//!
//! Compressed pixel data is decoded and written back uncompressed (Explicit VR Little
//! Endian), so the output's pixels equal the input's everywhere outside the boxes.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use super::TextBox;
use crate::{DicomImage, Error, Result};

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Returns the object with `boxes` blacked out in all frames and native pixel data.
pub fn redact(image: DicomImage, boxes: &[TextBox]) -> Result<DefaultDicomObject> {
    let info = image.info().clone();
    if info.bits_allocated == 1 {
        return Err(Error::UnsupportedPixelLayout { reason: "cannot redact 1-bit pixel data" });
    }
    let (rows, cols) = (info.rows as usize, info.columns as usize);
    let spp = usize::from(info.samples_per_pixel);
    let mut all = Vec::new();
    let mut last = None;
    for f in 0..info.frames {
        let raw = image.raw_frame(f)?;
        let bps = usize::from(raw.bits_allocated / 8);
        let mut bytes = raw.bytes;
        if bytes.len() < rows * cols * spp * bps {
            return Err(Error::Dicom {
                reason: "decoded pixel data is shorter than the image size",
            });
        }
        let black = black_sample(&bytes, &raw.photometric, bps, spp, info.signed, info.bits_stored);
        for b in boxes {
            for y in (b.y as usize)..((b.y + b.height) as usize).min(rows) {
                for x in (b.x as usize)..((b.x + b.width) as usize).min(cols) {
                    for (s, value) in black.iter().enumerate() {
                        let index = if raw.planar {
                            s * rows * cols + y * cols + x
                        } else {
                            (y * cols + x) * spp + s
                        };
                        bytes[index * bps..(index + 1) * bps].copy_from_slice(&value[..bps]);
                    }
                }
            }
        }
        all.extend_from_slice(&bytes[..rows * cols * spp * bps]);
        last = Some((raw.photometric, raw.bits_allocated, raw.planar));
    }
    let Some((photometric, bits_allocated, planar)) = last else {
        return Err(Error::Dicom { reason: "no frames" });
    };
    let mut obj = image.into_object();
    let vr = if bits_allocated > 8 { VR::OW } else { VR::OB };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::U8(all.into())));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from(photometric.as_str()),
    ));
    if spp == 3 {
        obj.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(u16::from(planar)),
        ));
    }
    obj.update_meta(|meta| meta.transfer_syntax = EXPLICIT_VR_LE.to_string());
    Ok(obj)
}

/// The stored value(s) that display as black, one little-endian `[u8; 4]` per sample:
/// MONOCHROME2 the frame's minimum, MONOCHROME1 its maximum, RGB and palette 0, YBR (0, mid, mid).
fn black_sample(
    bytes: &[u8],
    photometric: &str,
    bps: usize,
    spp: usize,
    signed: bool,
    bits_stored: u16,
) -> Vec<[u8; 4]> {
    let read = |c: &[u8]| -> i64 {
        match (bps, signed) {
            (1, false) => i64::from(c[0]),
            (1, true) => i64::from(c[0] as i8),
            (2, false) => i64::from(u16::from_le_bytes([c[0], c[1]])),
            (2, true) => i64::from(i16::from_le_bytes([c[0], c[1]])),
            (_, false) => i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            (_, true) => i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        }
    };
    let encode = |v: i64| -> [u8; 4] { (v as i32).to_le_bytes() };
    match (spp, photometric) {
        (1, "MONOCHROME1" | "MONOCHROME2") => {
            let samples = bytes.chunks_exact(bps).map(read);
            let v = if photometric == "MONOCHROME1" { samples.max() } else { samples.min() };
            vec![encode(v.unwrap_or(0))]
        }
        (3, p) if p.starts_with("YBR") => {
            let mid = 1i64 << (bits_stored.clamp(1, 16) - 1);
            vec![encode(0), encode(mid), encode(mid)]
        }
        _ => vec![encode(0); spp],
    }
}
