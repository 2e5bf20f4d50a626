//! DICOM decoding: parse with `dicom-object`, decode pixel data (native data ourselves,
//! encapsulated data with `dicom-pixeldata`'s pure-Rust codecs), then Modality LUT, colour
//! conversion and — for display and inference — VOI windowing and MONOCHROME1 inversion.
//!
//! `dicom-pixeldata` does not apply VOI or MONOCHROME1 when asked for raw samples, so the
//! pipeline here is explicit: stored value → (mask to BitsStored, sign) → Modality LUT
//! (Rescale Slope/Intercept, also from functional groups, or a Modality LUT Sequence) →
//! [`Frame`] → VOI (window from the file, else the frame's min/max) → invert MONOCHROME1 →
//! [`Pixels`] in 0..=1.

use std::borrow::Cow;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::{Error, Image, Modality, Pixels, Result};

mod jpeg12;
mod rle;

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// What a DICOM file is, without any patient data: safe to log and to show.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DicomInfo {
    /// Transfer syntax UID.
    pub transfer_syntax: String,
    /// Transfer syntax name.
    pub transfer_syntax_name: String,
    /// Whether this build can decode the pixel data.
    pub decodable: bool,
    /// SOP Class UID.
    pub sop_class_uid: Option<String>,
    /// Modality (CT, MR, CR, US…).
    pub modality: Option<String>,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// Number of frames (1 when absent).
    pub frames: u32,
    /// Samples per pixel (1 or 3).
    pub samples_per_pixel: u16,
    /// Bits allocated per sample.
    pub bits_allocated: u16,
    /// Bits stored per sample.
    pub bits_stored: u16,
    /// Whether samples are signed (PixelRepresentation = 1).
    pub signed: bool,
    /// Photometric interpretation as written in the file.
    pub photometric: String,
    /// Burned In Annotation (YES/NO) when present.
    pub burned_in_annotation: Option<String>,
}

/// A window (VOI LUT) centre and width.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// Window centre.
    pub center: f64,
    /// Window width (> 0).
    pub width: f64,
}

/// The VOI LUT function (PS3.3 C.11.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VoiFunction {
    /// The default linear window (C.11.2.1.2.1).
    #[default]
    Linear,
    /// LINEAR_EXACT (C.11.2.1.3.2).
    LinearExact,
    /// SIGMOID (C.11.2.1.3.1).
    Sigmoid,
}

/// One decoded frame after the Modality LUT.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// 1 for grayscale, 3 for RGB (YBR and PALETTE COLOR are converted to RGB).
    pub samples: u8,
    /// Modality values (grayscale) or RGB samples (colour), row-major, interleaved.
    pub values: Vec<f32>,
    /// For colour: the largest possible sample value (255, 65535…), used to normalise.
    pub color_max: f32,
    /// MONOCHROME1: low values are bright.
    pub inverted: bool,
    /// The window the file declares for this frame, if any.
    pub window: Option<Window>,
    /// The VOI LUT function the file declares.
    pub voi_function: VoiFunction,
}

impl Frame {
    /// Maps the frame to display values in 0..=1: the given window, else the file's, else the
    /// frame's min/max; MONOCHROME1 inverted so that 0 is black. Colour is normalised by its
    /// maximum sample value.
    pub fn to_pixels(&self, window: Option<Window>) -> Pixels {
        match self.voi(window) {
            Some(voi) => voi.pixels(self.columns, self.rows, &self.values),
            None => {
                let max = self.color_max.max(1.0);
                let data = self.values.iter().map(|v| (v / max).clamp(0.0, 1.0)).collect();
                Pixels { width: self.columns, height: self.rows, channels: self.samples, data }
            }
        }
    }

    /// The frame as the model takes it: a grayscale frame keeps its modality values and the
    /// VOI transform that [`Frame::to_pixels`] would apply ([`Image::Modality`]), so that an
    /// executor can window where the model runs; colour is [`Frame::to_pixels`]'s.
    pub fn into_image(self, window: Option<Window>) -> Image {
        match self.voi(window) {
            Some(voi) => Image::Modality(Modality {
                width: self.columns,
                height: self.rows,
                values: self.values,
                voi,
            }),
            None => Image::Display(self.to_pixels(None)),
        }
    }

    /// The grayscale VOI stage: the given window, else the file's, else min/max. `None` for
    /// colour.
    fn voi(&self, window: Option<Window>) -> Option<Voi> {
        (self.samples == 1).then(|| Voi {
            window: window.or(self.window).unwrap_or_else(|| self.min_max_window()),
            function: self.voi_function,
            invert: self.inverted,
        })
    }

    /// A window spanning exactly the frame's value range (LINEAR_EXACT semantics).
    fn min_max_window(&self) -> Window {
        let (lo, hi) = self
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if lo.is_finite() && hi > lo {
            Window { center: (f64::from(lo) + f64::from(hi)) / 2.0, width: f64::from(hi - lo) }
        } else {
            Window { center: f64::from(lo.max(0.0)), width: 1.0 }
        }
    }
}

/// The VOI stage of a grayscale frame: window, function and MONOCHROME1 inversion, mapping
/// modality values to display values in 0..=1 (0 black).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Voi {
    /// The window applied.
    pub window: Window,
    /// The VOI LUT function.
    pub function: VoiFunction,
    /// MONOCHROME1: the windowed value is inverted.
    pub invert: bool,
}

impl Voi {
    /// The display value of modality value `x`.
    pub fn apply(&self, x: f64) -> f64 {
        let y = voi(x, self.window, self.function);
        if self.invert { 1.0 - y } else { y }
    }

    /// Display pixels for a `width`×`height` grayscale frame of modality `values`.
    pub fn pixels(&self, width: u32, height: u32, values: &[f32]) -> Pixels {
        let data = values.iter().map(|&v| self.apply(f64::from(v)) as f32).collect();
        Pixels { width, height, channels: 1, data }
    }
}

/// VOI LUT function, output in 0..=1 (PS3.3 C.11.2.1.2.1 and C.11.2.1.3).
fn voi(x: f64, w: Window, f: VoiFunction) -> f64 {
    match f {
        VoiFunction::Linear => {
            let width = w.width.max(1.0);
            let lo = w.center - 0.5 - (width - 1.0) / 2.0;
            let hi = w.center - 0.5 + (width - 1.0) / 2.0;
            if x <= lo {
                0.0
            } else if x > hi {
                1.0
            } else {
                ((x - (w.center - 0.5)) / (width - 1.0) + 0.5).clamp(0.0, 1.0)
            }
        }
        VoiFunction::LinearExact => {
            let width = w.width.max(f64::MIN_POSITIVE);
            ((x - w.center) / width + 0.5).clamp(0.0, 1.0)
        }
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - w.center) / w.width.max(1e-9)).exp()),
    }
}

/// One frame's stored samples, before any LUT.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    /// Samples, little-endian, `bits_allocated / 8` bytes each (1-bit data: one byte each).
    pub bytes: Vec<u8>,
    /// Photometric interpretation of these samples (compressed colour decodes to `RGB`).
    pub photometric: String,
    /// Bits per sample in `bytes` (8, 16 or 32).
    pub bits_allocated: u16,
    /// Colour planes stored one after the other (PlanarConfiguration 1).
    pub planar: bool,
}

/// A parsed DICOM file whose frames can be decoded on demand.
#[derive(Debug)]
pub struct DicomImage {
    obj: DefaultDicomObject,
    info: DicomInfo,
}

const fn tag_err(keyword: &'static str, tag: &'static str) -> Error {
    Error::DicomAttribute { keyword, tag }
}

impl DicomImage {
    /// Parses a DICOM Part 10 file (with or without the 128-byte preamble).
    pub fn parse(bytes: &[u8]) -> Result<DicomImage> {
        let body = if bytes.get(128..132) == Some(b"DICM") { &bytes[128..] } else { bytes };
        let obj = dicom_object::OpenFileOptions::new()
            .from_reader(body)
            .map_err(|_| Error::Dicom { reason: "not a parseable DICOM Part 10 data set" })?;
        let info = read_info(&obj)?;
        Ok(DicomImage { obj, info })
    }

    /// Structural facts about the file (no patient data).
    pub fn info(&self) -> &DicomInfo {
        &self.info
    }

    /// The parsed object (for de-identification and re-encoding).
    pub fn object(&self) -> &DefaultDicomObject {
        &self.obj
    }

    /// The parsed object, by value.
    pub fn into_object(self) -> DefaultDicomObject {
        self.obj
    }

    /// Decodes frame `index` (0-based) and applies the Modality LUT and colour conversion.
    pub fn frame(&self, index: u32) -> Result<Frame> {
        let raw = self.raw_frame(index)?;
        self.build_frame(index, &raw.bytes, &raw.photometric, raw.bits_allocated, raw.planar)
    }

    /// Decodes frame `index` to stored sample values: little-endian, `bits_allocated` wide
    /// (1-bit data unpacked to bytes), in the photometric interpretation the decoder produced.
    pub fn raw_frame(&self, index: u32) -> Result<RawFrame> {
        let info = &self.info;
        if index >= info.frames {
            return Err(Error::FrameOutOfRange { frame: index, frames: info.frames });
        }
        if !info.decodable {
            return Err(Error::UnsupportedTransferSyntax {
                uid: info.transfer_syntax.clone(),
                name: info.transfer_syntax_name.clone(),
                target: "by this build (JPEG-LS needs the native `jpeg-ls` feature)",
            });
        }
        let pixel_data =
            self.obj.get(tags::PIXEL_DATA).ok_or(Error::Dicom { reason: "no pixel data" })?;
        let fragments = pixel_data.value().fragments();
        let encapsulated = fragments.is_some();
        let (raw, photometric, bits_allocated) = if let (Some(fragments), RLE_LOSSLESS) =
            (fragments, info.transfer_syntax.as_str())
        {
            let fragment = match (fragments.len() as u32, info.frames) {
                (n, f) if n == f => &fragments[index as usize],
                _ => {
                    return Err(Error::Dicom {
                        reason: "RLE pixel data must hold one fragment per frame",
                    });
                }
            };
            if !info.bits_allocated.is_multiple_of(8) {
                return Err(Error::UnsupportedPixelLayout { reason: "RLE with BitsAllocated 1" });
            }
            let pixels = info.rows as usize * info.columns as usize;
            let raw = rle::decode_frame(
                fragment,
                pixels,
                usize::from(info.samples_per_pixel),
                usize::from(info.bits_allocated / 8),
            )?;
            (raw, info.photometric.clone(), info.bits_allocated)
        } else if let (Some(fragments), true) =
            (fragments, info.transfer_syntax == JPEG_EXTENDED && info.bits_stored > 8)
        {
            // 12-bit JPEG (process 4): jpeg-decoder does 8-bit only, so ours decodes it.
            let data = match (fragments.len() as u32, info.frames) {
                (n, f) if n == f => Cow::Borrowed(fragments[index as usize].as_slice()),
                (_, 1) => Cow::Owned(fragments.concat()),
                _ => {
                    return Err(Error::UnsupportedPixelLayout {
                        reason: "multi-frame 12-bit JPEG must hold one fragment per frame",
                    });
                }
            };
            let image = jpeg12::decode(&data)?;
            if image.width != info.columns as usize
                || image.height != info.rows as usize
                || image.components != usize::from(info.samples_per_pixel)
                || u16::from(image.precision) < info.bits_stored
            {
                return Err(Error::Dicom {
                    reason: "JPEG frame size differs from the DICOM header",
                });
            }
            let raw = image.samples.iter().flat_map(|v| v.to_le_bytes()).collect();
            (raw, info.photometric.clone(), 16)
        } else if encapsulated {
            let decoded = self.obj.decode_pixel_data_frame(index).map_err(|_| Error::Dicom {
                reason: "compressed pixel data could not be decoded",
            })?;
            let pi = decoded.photometric_interpretation().as_str().to_string();
            let ba = decoded.bits_allocated();
            (decoded.into_data(), pi, ba)
        } else {
            let bytes = pixel_data
                .value()
                .to_bytes()
                .map_err(|_| Error::Dicom { reason: "pixel data is not a byte value" })?;
            let frame_bits = u64::from(info.rows)
                * u64::from(info.columns)
                * u64::from(info.samples_per_pixel)
                * u64::from(info.bits_allocated);
            let start = frame_bits * u64::from(index);
            let end = start + frame_bits;
            if (bytes.len() as u64) * 8 < end {
                return Err(Error::Dicom { reason: "pixel data is shorter than the image size" });
            }
            let raw = if info.bits_allocated == 1 {
                unpack_bits(&bytes, start as usize, frame_bits as usize)
            } else {
                bytes[(start / 8) as usize..(end / 8) as usize].to_vec()
            };
            let ba = if info.bits_allocated == 1 { 8 } else { info.bits_allocated };
            (raw, info.photometric.clone(), ba)
        };
        let planar = !encapsulated
            && info.samples_per_pixel == 3
            && int(&self.obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
        Ok(RawFrame { bytes: raw, photometric, bits_allocated, planar })
    }

    fn build_frame(
        &self,
        index: u32,
        raw: &[u8],
        photometric: &str,
        bits_allocated: u16,
        planar: bool,
    ) -> Result<Frame> {
        let info = &self.info;
        let n = info.rows as usize * info.columns as usize * usize::from(info.samples_per_pixel);
        let bits_stored =
            if info.bits_allocated == 1 { 8 } else { info.bits_stored.min(bits_allocated) };
        let samples = read_samples(raw, n, bits_allocated, bits_stored, info.signed)?;
        let samples = if planar { interleave(&samples, n / 3) } else { samples };
        let base = |samples: u8, values: Vec<f32>, color_max: f32| Frame {
            rows: info.rows,
            columns: info.columns,
            samples,
            values,
            color_max,
            inverted: false,
            window: None,
            voi_function: VoiFunction::Linear,
        };
        match (info.samples_per_pixel, photometric) {
            (1, "MONOCHROME1" | "MONOCHROME2") => {
                let values = self.modality_lut(index, samples)?;
                let mut frame = base(1, values, 0.0);
                frame.inverted = photometric == "MONOCHROME1";
                frame.window = self.window(index);
                frame.voi_function = self.voi_function();
                Ok(frame)
            }
            (1, "PALETTE COLOR") => {
                let (rgb, bits) = self.palette(&samples)?;
                Ok(base(3, rgb, ((1u32 << bits) - 1) as f32))
            }
            (3, "RGB") => {
                let max = ((1u64 << bits_stored.min(32)) - 1) as f32;
                Ok(base(3, samples, max))
            }
            (3, "YBR_FULL") => {
                let max = ((1u64 << bits_stored.min(32)) - 1) as f32;
                Ok(base(3, ybr_full_to_rgb(&samples, max), max))
            }
            (1, _) => {
                Err(Error::UnsupportedPixelLayout { reason: "unknown grayscale photometric" })
            }
            (3, _) => Err(Error::UnsupportedPixelLayout {
                reason: "uncompressed YBR with chroma subsampling is not supported",
            }),
            _ => Err(Error::UnsupportedPixelLayout { reason: "samples per pixel must be 1 or 3" }),
        }
    }

    /// Rescale Slope/Intercept (top level or functional groups) or a Modality LUT Sequence.
    fn modality_lut(&self, frame: u32, mut values: Vec<f32>) -> Result<Vec<f32>> {
        if let Some(lut) = self.modality_lut_sequence()? {
            for v in &mut values {
                *v = lut.apply(*v);
            }
            return Ok(values);
        }
        let slope =
            self.float_fg(frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tags::RESCALE_SLOPE);
        let intercept = self.float_fg(
            frame,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_INTERCEPT,
        );
        let (slope, intercept) = (slope.unwrap_or(1.0), intercept.unwrap_or(0.0));
        if slope != 1.0 || intercept != 0.0 {
            for v in &mut values {
                *v = (f64::from(*v) * slope + intercept) as f32;
            }
        }
        Ok(values)
    }

    fn modality_lut_sequence(&self) -> Result<Option<Lut>> {
        let Some(items) = self.obj.get(tags::MODALITY_LUT_SEQUENCE).and_then(|e| e.items()) else {
            return Ok(None);
        };
        let Some(item) = items.first() else { return Ok(None) };
        Lut::read(item, tags::LUT_DESCRIPTOR, tags::LUT_DATA, self.info.signed)
            .map(Some)
            .ok_or(tag_err("ModalityLUTSequence", "(0028,3000)"))
    }

    /// A float attribute at the top level, else in the frame's per-frame functional group,
    /// else in the shared functional groups (enhanced multi-frame objects).
    fn float_fg(&self, frame: u32, group: Tag, tag: Tag) -> Option<f64> {
        let top = self.obj.get(tag).and_then(|e| e.to_float64().ok());
        top.or_else(|| {
            [tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE]
                .into_iter()
                .find_map(|fg| {
                    let items = self.obj.get(fg)?.items()?;
                    let item = if fg == tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE {
                        items.get(frame as usize)?
                    } else {
                        items.first()?
                    };
                    let inner = item.get(group)?.items()?.first()?;
                    inner.get(tag)?.to_float64().ok()
                })
        })
    }

    fn window(&self, frame: u32) -> Option<Window> {
        let center = self.float_fg(frame, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER)?;
        let width = self.float_fg(frame, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH)?;
        (center.is_finite() && width.is_finite() && width > 0.0).then_some(Window { center, width })
    }

    fn voi_function(&self) -> VoiFunction {
        match self
            .obj
            .get(tags::VOILUT_FUNCTION)
            .and_then(|e| e.to_str().ok())
            .as_deref()
            .map(str::trim)
        {
            Some("LINEAR_EXACT") => VoiFunction::LinearExact,
            Some("SIGMOID") => VoiFunction::Sigmoid,
            _ => VoiFunction::Linear,
        }
    }

    /// PALETTE COLOR → RGB through the three palette LUTs; returns the LUT bit depth.
    fn palette(&self, indices: &[f32]) -> Result<(Vec<f32>, u16)> {
        let read = |desc, data, keyword| {
            Lut::read(&self.obj, desc, data, false).ok_or(tag_err(keyword, "(0028,1101..1203)"))
        };
        let r = read(
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "RedPaletteColorLookupTableData",
        )?;
        let g = read(
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "GreenPaletteColorLookupTableData",
        )?;
        let b = read(
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "BluePaletteColorLookupTableData",
        )?;
        let mut out = Vec::with_capacity(indices.len() * 3);
        for &i in indices {
            out.extend([r.apply(i), g.apply(i), b.apply(i)]);
        }
        Ok((out, r.bits))
    }
}

/// A lookup table (Modality LUT or palette): `descriptor = [entries, first mapped, bits]`.
struct Lut {
    first: i64,
    bits: u16,
    data: Vec<f32>,
}

impl Lut {
    fn read(
        item: &InMemDicomObject,
        descriptor: Tag,
        data: Tag,
        signed_first: bool,
    ) -> Option<Lut> {
        let desc: Vec<i64> = item.get(descriptor)?.to_multi_int().ok()?;
        let (&entries, &first, &bits) = (desc.first()?, desc.get(1)?, desc.get(2)?);
        let entries = if entries == 0 { 65536 } else { entries as usize };
        // The first mapped value is US or SS; with signed pixel data a US-encoded value above
        // 32767 is a negative number written as unsigned.
        let first = if signed_first && first > 32767 { first - 65536 } else { first };
        let bits = u16::try_from(bits).ok().filter(|b| (1..=16).contains(b))?;
        let bytes = item.get(data)?.value().to_bytes().ok()?;
        let data: Vec<f32> = if bytes.len() >= entries * 2 {
            bytes
                .chunks_exact(2)
                .take(entries)
                .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect()
        } else if bits <= 8 && bytes.len() >= entries {
            bytes.iter().take(entries).map(|&b| f32::from(b)).collect()
        } else {
            return None;
        };
        Some(Lut { first, bits, data })
    }

    fn apply(&self, v: f32) -> f32 {
        let idx = (v as i64 - self.first).clamp(0, self.data.len() as i64 - 1);
        self.data[idx as usize]
    }
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn string(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)?.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
}

fn read_info(obj: &DefaultDicomObject) -> Result<DicomInfo> {
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let ts = TransferSyntaxRegistry.get(&ts_uid);
    let req = |tag: Tag, keyword: &'static str, number: &'static str| -> Result<u32> {
        int(obj, tag).and_then(|v| u32::try_from(v).ok()).ok_or(tag_err(keyword, number))
    };
    let rows = req(tags::ROWS, "Rows", "(0028,0010)")?;
    let columns = req(tags::COLUMNS, "Columns", "(0028,0011)")?;
    let bits_allocated = req(tags::BITS_ALLOCATED, "BitsAllocated", "(0028,0100)")?;
    let bits_stored = int(obj, tags::BITS_STORED).unwrap_or(i64::from(bits_allocated));
    let samples = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let frames =
        string(obj, tags::NUMBER_OF_FRAMES).and_then(|s| s.parse::<u32>().ok()).unwrap_or(1).max(1);
    if rows == 0 || columns == 0 {
        return Err(tag_err("Rows", "(0028,0010)"));
    }
    if ![1, 8, 16, 32].contains(&bits_allocated) {
        return Err(Error::UnsupportedPixelLayout {
            reason: "BitsAllocated must be 1, 8, 16 or 32",
        });
    }
    if !(1..=i64::from(bits_allocated)).contains(&bits_stored) {
        return Err(tag_err("BitsStored", "(0028,0101)"));
    }
    if samples != 1 && samples != 3 {
        return Err(Error::UnsupportedPixelLayout { reason: "samples per pixel must be 1 or 3" });
    }
    Ok(DicomInfo {
        transfer_syntax_name: ts.map(|t| t.name().to_string()).unwrap_or_else(|| "unknown".into()),
        decodable: ts.is_some_and(|t| t.can_decode_all()),
        transfer_syntax: ts_uid,
        sop_class_uid: string(obj, tags::SOP_CLASS_UID),
        modality: string(obj, tags::MODALITY),
        rows,
        columns,
        frames,
        samples_per_pixel: samples as u16,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        signed: int(obj, tags::PIXEL_REPRESENTATION) == Some(1),
        photometric: string(obj, tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap_or_else(|| "MONOCHROME2".into()),
        burned_in_annotation: string(obj, tags::BURNED_IN_ANNOTATION),
    })
}

/// Unpacks 1-bit samples (least significant bit first) starting at bit `start`.
fn unpack_bits(bytes: &[u8], start: usize, count: usize) -> Vec<u8> {
    (start..start + count).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect()
}

/// Reads `n` little-endian samples, masked to `bits_stored` and sign-extended when signed.
fn read_samples(
    raw: &[u8],
    n: usize,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
) -> Result<Vec<f32>> {
    let bytes_per = usize::from(bits_allocated / 8);
    if raw.len() < n * bytes_per {
        return Err(Error::Dicom { reason: "decoded pixel data is shorter than the image size" });
    }
    let mask: u32 = if bits_stored >= 32 { u32::MAX } else { (1u32 << bits_stored) - 1 };
    let sign_bit: u32 = 1u32 << (bits_stored.max(1) - 1);
    let convert = |v: u32| -> f32 {
        let v = v & mask;
        if signed && v & sign_bit != 0 {
            (i64::from(v) - (i64::from(mask) + 1)) as f32
        } else {
            v as f32
        }
    };
    Ok(match bytes_per {
        1 => raw[..n].iter().map(|&b| convert(u32::from(b))).collect(),
        2 => raw
            .chunks_exact(2)
            .take(n)
            .map(|c| convert(u32::from(u16::from_le_bytes([c[0], c[1]]))))
            .collect(),
        4 => raw
            .chunks_exact(4)
            .take(n)
            .map(|c| convert(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => {
            return Err(Error::UnsupportedPixelLayout {
                reason: "BitsAllocated must be 1, 8, 16 or 32",
            });
        }
    })
}

/// Planar configuration 1 (RRR…GGG…BBB…) → interleaved.
fn interleave(planar: &[f32], pixels: usize) -> Vec<f32> {
    (0..pixels).flat_map(|i| [planar[i], planar[pixels + i], planar[2 * pixels + i]]).collect()
}

/// YBR_FULL (ITU-R BT.601, full range) → RGB, as PS3.3 C.7.6.3.1.2 defines it.
fn ybr_full_to_rgb(ybr: &[f32], max: f32) -> Vec<f32> {
    let half = (max + 1.0) / 2.0;
    ybr.chunks_exact(3)
        .flat_map(|p| {
            let (y, cb, cr) = (p[0], p[1] - half, p[2] - half);
            [
                (y + 1.402 * cr).clamp(0.0, max),
                (y - 0.344_136 * cb - 0.714_136 * cr).clamp(0.0, max),
                (y + 1.772 * cb).clamp(0.0, max),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_the_standard() {
        // C.11.2.1.2.1: c=2048, w=4096 maps 0 → 0 and 4095 → 1.
        let w = Window { center: 2048.0, width: 4096.0 };
        assert_eq!(voi(-1.0, w, VoiFunction::Linear), 0.0);
        assert_eq!(voi(5000.0, w, VoiFunction::Linear), 1.0);
        assert!((voi(2047.5, w, VoiFunction::Linear) - 0.5).abs() < 1e-9);
        let s = voi(2048.0, w, VoiFunction::Sigmoid);
        assert!((s - 0.5).abs() < 1e-9);
    }

    #[test]
    fn samples_are_masked_and_sign_extended() {
        // 0xF830 as 14-bit signed is -2000 (693_UNCR's minimum).
        let raw = 0xF830u16.to_le_bytes();
        assert_eq!(read_samples(&raw, 1, 16, 14, true).unwrap(), vec![-2000.0]);
        // High bits above BitsStored (e.g. an overlay plane) are ignored.
        let raw = 0xF0FFu16.to_le_bytes();
        assert_eq!(read_samples(&raw, 1, 16, 12, false).unwrap(), vec![255.0]);
        assert_eq!(read_samples(&raw, 2, 16, 12, false).unwrap_err().code(), "decode.dicom");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0xFF; 64]);
        assert_eq!(DicomImage::parse(&bytes).unwrap_err().code(), "decode.dicom");
    }
}
