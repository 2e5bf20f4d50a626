//! Input format detection from magic bytes. File names and declared content types are hints
//! for routing at most; the bytes decide.

use crate::{Error, Result};

/// A supported container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// PNG (`\x89PNG\r\n\x1a\n`).
    Png,
    /// JPEG/JFIF/EXIF (`FF D8 FF`).
    Jpeg,
    /// DICOM Part 10, with the 128-byte preamble (`DICM` at offset 128) or without it
    /// (`DICM` at offset 0).
    Dicom,
}

impl Format {
    /// Lowercase name: `png`, `jpeg`, `dicom`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Dicom => "dicom",
        }
    }

    /// The media type a client would send for this format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Dicom => "application/dicom",
        }
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Detects the format of `bytes`.
///
/// ```
/// use medinfer_core::{sniff, Format};
/// assert_eq!(sniff(b"\x89PNG\r\n\x1a\n....").unwrap(), Format::Png);
/// assert_eq!(sniff(b"GIF89a").unwrap_err().code(), "input.unsupported_format");
/// ```
pub fn sniff(bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if bytes.starts_with(PNG_MAGIC) {
        Ok(Format::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(Format::Jpeg)
    } else if bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM") {
        Ok(Format::Dicom)
    } else {
        Err(Error::UnsupportedFormat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dicom_with_and_without_preamble() {
        let mut with = vec![0u8; 128];
        with.extend_from_slice(b"DICM\x02\x00");
        assert_eq!(sniff(&with).unwrap(), Format::Dicom);
        assert_eq!(sniff(b"DICM\x02\x00\x00\x00").unwrap(), Format::Dicom);
    }

    #[test]
    fn text_and_truncated_magic_are_rejected() {
        assert_eq!(sniff(b"hello, world").unwrap_err().code(), "input.unsupported_format");
        assert_eq!(sniff(b"\x89PN").unwrap_err().code(), "input.unsupported_format");
        assert_eq!(sniff(&[0xFF, 0xD8]).unwrap_err().code(), "input.unsupported_format");
        assert_eq!(sniff(&[0u8; 131]).unwrap_err().code(), "input.unsupported_format");
        assert_eq!(sniff(b"").unwrap_err().code(), "input.empty");
    }
}
