//! RLE Lossless (PS3.5 Annex G), decoded here with every index checked: a corrupt segment
//! table or a short segment is an error, never a panic.

use crate::{Error, Result};

const CORRUPT: Error = Error::Dicom { reason: "RLE pixel data is corrupt" };

/// Decodes one RLE fragment into little-endian interleaved samples
/// (`pixels * samples * bytes_per_sample` bytes).
pub(super) fn decode_frame(
    fragment: &[u8],
    pixels: usize,
    samples: usize,
    bytes_per_sample: usize,
) -> Result<Vec<u8>> {
    let header = fragment.get(..64).ok_or(CORRUPT)?;
    let word = |i: usize| {
        u32::from_le_bytes([header[i * 4], header[i * 4 + 1], header[i * 4 + 2], header[i * 4 + 3]])
            as usize
    };
    let count = word(0);
    let expected = samples * bytes_per_sample;
    if count != expected || count == 0 || count > 15 {
        return Err(CORRUPT);
    }
    let mut out = vec![0u8; pixels * expected];
    for seg in 0..count {
        let start = word(seg + 1);
        let end = if seg + 1 < count { word(seg + 2) } else { fragment.len() };
        if start < 64 || start > end || end > fragment.len() {
            return Err(CORRUPT);
        }
        let bytes = unpack(&fragment[start..end], pixels)?;
        // Segment order: sample by sample, most significant byte first.
        let (sample, byte) = (seg / bytes_per_sample, seg % bytes_per_sample);
        let at = sample * bytes_per_sample + (bytes_per_sample - 1 - byte);
        for (p, b) in bytes.into_iter().enumerate() {
            out[p * expected + at] = b;
        }
    }
    Ok(out)
}

/// PackBits-style segment decoding; yields exactly `len` bytes or an error.
fn unpack(seg: &[u8], len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len && i < seg.len() {
        let n = seg[i] as i8;
        i += 1;
        if n >= 0 {
            let run = n as usize + 1;
            let lit = seg.get(i..i + run).ok_or(CORRUPT)?;
            out.extend_from_slice(lit);
            i += run;
        } else if n != -128 {
            let b = *seg.get(i).ok_or(CORRUPT)?;
            out.extend(std::iter::repeat_n(b, 1 + (-(n as i16)) as usize));
            i += 1;
        }
    }
    if out.len() < len {
        return Err(CORRUPT);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_runs_and_literals() {
        // literal [1,2,3], run of five 9s
        assert_eq!(
            unpack(&[2, 1, 2, 3, (-4i8) as u8, 9], 8).unwrap(),
            vec![1, 2, 3, 9, 9, 9, 9, 9]
        );
        assert_eq!(unpack(&[2, 1], 3).unwrap_err().code(), "decode.dicom");
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut frag = vec![0u8; 64];
        frag[0] = 2; // two segments for an 8-bit gray image: wrong
        assert!(decode_frame(&frag, 4, 1, 1).is_err());
        frag[0] = 1;
        frag[4] = 200; // offset past the end
        assert!(decode_frame(&frag, 4, 1, 1).is_err());
        assert!(decode_frame(&frag[..10], 4, 1, 1).is_err());
    }
}
