//! A sequential-DCT JPEG decoder (ITU T.81 processes 1, 2 and 4: Huffman coding, 8- or 12-bit
//! precision) for the DICOM transfer syntax JPEG Extended (`1.2.840.10008.1.2.4.51`), whose
//! 12-bit form no pure-Rust crate decodes. Non-interleaved or interleaved scans with every
//! component sampled 1×1 (DICOM's 12-bit images are grayscale). Every read is bounds-checked:
//! corrupt data is an error, never a panic.

use crate::{Error, Result};

const CORRUPT: Error = Error::Dicom { reason: "JPEG data is corrupt" };
const UNSUPPORTED: Error = Error::UnsupportedPixelLayout {
    reason: "JPEG variant not supported (progressive, arithmetic, lossless or subsampled)",
};

/// Zig-zag order → natural order index.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// A decoded image: samples interleaved per pixel, each in `0..2^precision`.
#[derive(Debug)]
pub(super) struct Image {
    pub width: usize,
    pub height: usize,
    pub components: usize,
    pub precision: u8,
    pub samples: Vec<u16>,
}

#[derive(Clone, Default)]
struct Huffman {
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    /// Builds the decoding tables of T.81 F.2.2.3 from BITS and HUFFVAL.
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Huffman> {
        if counts.iter().map(|&c| usize::from(c)).sum::<usize>() != values.len() {
            return Err(CORRUPT);
        }
        let mut h = Huffman { values, ..Default::default() };
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            if n == 0 {
                h.maxcode[len] = -1;
            } else {
                h.valptr[len] = k;
                h.mincode[len] = code;
                code += n;
                k += n;
                h.maxcode[len] = code - 1;
            }
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        Ok(h)
    }

    fn decode(&self, bits: &mut Bits) -> Result<u8> {
        let mut code = bits.bit()?;
        for len in 1..=16 {
            if self.maxcode[len] >= 0 && code <= self.maxcode[len] {
                let i = self.valptr[len] + code - self.mincode[len];
                return self.values.get(i as usize).copied().ok_or(CORRUPT);
            }
            code = (code << 1) | bits.bit()?;
        }
        Err(CORRUPT)
    }
}

/// Entropy-coded data reader: byte stuffing removed, stops at markers.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    count: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<i32> {
        if self.count == 0 {
            let byte = match self.data.get(self.pos) {
                Some(0xFF) if self.data.get(self.pos + 1) == Some(&0x00) => {
                    self.pos += 2;
                    0xFF
                }
                // A marker (or the end): feed zeros, as decoders do for truncated scans.
                Some(0xFF) | None => 0,
                Some(&b) => {
                    self.pos += 1;
                    b
                }
            };
            self.acc = u32::from(byte);
            self.count = 8;
        }
        self.count -= 1;
        Ok(((self.acc >> self.count) & 1) as i32)
    }

    fn bits(&mut self, n: u8) -> Result<i32> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// Skips to the next RSTn marker after a restart interval.
    fn restart(&mut self) -> Result<()> {
        self.count = 0;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            self.pos += 1;
        }
        Err(CORRUPT)
    }
}

/// T.81 F.2.2.1 EXTEND.
fn extend(v: i32, t: u8) -> i32 {
    if t == 0 {
        0
    } else if v < (1 << (t - 1)) {
        v - (1 << t) + 1
    } else {
        v
    }
}

struct Component {
    id: u8,
    quant: usize,
    dc: usize,
    ac: usize,
}

/// Decodes one JPEG (SOF0/SOF1, Huffman) image.
pub(super) fn decode(data: &[u8]) -> Result<Image> {
    let mut quant = [[0u16; 64]; 4];
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut ac_tables: [Option<Huffman>; 4] = Default::default();
    let mut frame: Option<(u8, usize, usize, Vec<Component>)> = None;
    let mut restart_interval = 0usize;
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(CORRUPT);
    }
    let mut pos = 2;
    loop {
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1; // fill bytes
        }
        let marker = match (data.get(pos), data.get(pos + 1)) {
            (Some(0xFF), Some(&m)) => m,
            _ => return Err(CORRUPT),
        };
        pos += 2;
        if marker == 0xD9 {
            return Err(CORRUPT); // EOI before any scan
        }
        let len = usize::from(u16::from_be_bytes([
            *data.get(pos).ok_or(CORRUPT)?,
            *data.get(pos + 1).ok_or(CORRUPT)?,
        ]));
        let seg = data.get(pos + 2..pos + len).ok_or(CORRUPT)?;
        pos += len;
        match marker {
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = (s[0] >> 4, usize::from(s[0] & 15));
                    let size = if pq == 0 { 64 } else { 128 };
                    let table = s.get(1..1 + size).ok_or(CORRUPT)?;
                    let q = quant.get_mut(tq).ok_or(CORRUPT)?;
                    for i in 0..64 {
                        q[ZIGZAG[i]] = if pq == 0 {
                            u16::from(table[i])
                        } else {
                            u16::from_be_bytes([table[2 * i], table[2 * i + 1]])
                        };
                    }
                    s = &s[1 + size..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    let (class, id) = (s[0] >> 4, usize::from(s[0] & 15));
                    let counts: [u8; 16] =
                        s.get(1..17).ok_or(CORRUPT)?.try_into().map_err(|_| CORRUPT)?;
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let values = s.get(17..17 + n).ok_or(CORRUPT)?.to_vec();
                    let table = Some(Huffman::new(&counts, values)?);
                    match class {
                        0 => *dc_tables.get_mut(id).ok_or(CORRUPT)? = table,
                        1 => *ac_tables.get_mut(id).ok_or(CORRUPT)? = table,
                        _ => return Err(CORRUPT),
                    }
                    s = &s[17 + n..];
                }
            }
            0xC0 | 0xC1 => {
                let precision = *seg.first().ok_or(CORRUPT)?;
                let height = usize::from(u16::from_be_bytes([
                    *seg.get(1).ok_or(CORRUPT)?,
                    *seg.get(2).ok_or(CORRUPT)?,
                ]));
                let width = usize::from(u16::from_be_bytes([
                    *seg.get(3).ok_or(CORRUPT)?,
                    *seg.get(4).ok_or(CORRUPT)?,
                ]));
                let n = usize::from(*seg.get(5).ok_or(CORRUPT)?);
                if !(precision == 8 || precision == 12)
                    || width == 0
                    || height == 0
                    || !(1..=4).contains(&n)
                {
                    return Err(UNSUPPORTED);
                }
                let mut comps = Vec::new();
                for i in 0..n {
                    let c = seg.get(6 + 3 * i..9 + 3 * i).ok_or(CORRUPT)?;
                    if c[1] != 0x11 {
                        return Err(UNSUPPORTED); // subsampled
                    }
                    comps.push(Component { id: c[0], quant: usize::from(c[2] & 3), dc: 0, ac: 0 });
                }
                frame = Some((precision, width, height, comps));
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Err(UNSUPPORTED),
            0xDD => {
                restart_interval = usize::from(u16::from_be_bytes([
                    *seg.first().ok_or(CORRUPT)?,
                    *seg.get(1).ok_or(CORRUPT)?,
                ]))
            }
            0xDA => {
                let (precision, width, height, mut comps) = frame.take().ok_or(CORRUPT)?;
                let ns = usize::from(*seg.first().ok_or(CORRUPT)?);
                if ns != comps.len() {
                    return Err(UNSUPPORTED); // one scan per component: not in DICOM's 12-bit data
                }
                for i in 0..ns {
                    let sel = seg.get(1 + 2 * i..3 + 2 * i).ok_or(CORRUPT)?;
                    let c = comps.iter_mut().find(|c| c.id == sel[0]).ok_or(CORRUPT)?;
                    (c.dc, c.ac) = (usize::from(sel[1] >> 4) & 3, usize::from(sel[1] & 15) & 3);
                }
                let tables = |c: &Component| -> Result<(&Huffman, &Huffman)> {
                    Ok((
                        dc_tables[c.dc].as_ref().ok_or(CORRUPT)?,
                        ac_tables[c.ac].as_ref().ok_or(CORRUPT)?,
                    ))
                };
                let (bw, bh) = (width.div_ceil(8), height.div_ceil(8));
                let nc = comps.len();
                let mut samples = vec![0u16; width * height * nc];
                let mut bits = Bits { data: &data[pos..], pos: 0, acc: 0, count: 0 };
                let mut pred = vec![0i32; nc];
                let max = (1i32 << precision) - 1;
                let shift = 1i32 << (precision - 1);
                for mcu in 0..bw * bh {
                    if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
                        bits.restart()?;
                        pred.iter_mut().for_each(|p| *p = 0);
                    }
                    let (bx, by) = (mcu % bw, mcu / bw);
                    for (ci, c) in comps.iter().enumerate() {
                        let (dc, ac) = tables(c)?;
                        let mut coef = [0i32; 64];
                        let t = dc.decode(&mut bits)?;
                        if t > 16 {
                            return Err(CORRUPT);
                        }
                        pred[ci] = pred[ci].wrapping_add(extend(bits.bits(t)?, t));
                        coef[0] = pred[ci];
                        let mut k = 1;
                        while k < 64 {
                            let rs = ac.decode(&mut bits)?;
                            let (r, s) = (usize::from(rs >> 4), rs & 15);
                            if s == 0 {
                                if r == 15 {
                                    k += 16;
                                    continue;
                                }
                                break; // EOB
                            }
                            k += r;
                            if k > 63 {
                                return Err(CORRUPT);
                            }
                            coef[ZIGZAG[k]] = extend(bits.bits(s)?, s);
                            k += 1;
                        }
                        let q = &quant[c.quant];
                        let mut block = [0f32; 64];
                        for i in 0..64 {
                            block[i] = coef[i] as f32 * f32::from(q[i]);
                        }
                        idct(&mut block);
                        for y in 0..8 {
                            for x in 0..8 {
                                let (px, py) = (bx * 8 + x, by * 8 + y);
                                if px < width && py < height {
                                    let v = (block[y * 8 + x].round() as i32 + shift).clamp(0, max);
                                    samples[(py * width + px) * nc + ci] = v as u16;
                                }
                            }
                        }
                    }
                }
                return Ok(Image { width, height, components: nc, precision, samples });
            }
            _ => {} // APPn, COM, DNL…: skipped
        }
    }
}

/// Separable 8×8 inverse DCT (T.81 A.3.3), in place.
fn idct(block: &mut [f32; 64]) {
    let cos =
        |x: usize, u: usize| ((2 * x + 1) as f32 * u as f32 * std::f32::consts::PI / 16.0).cos();
    let c = |u: usize| if u == 0 { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
    let mut table = [[0f32; 8]; 8];
    for (x, row) in table.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            *v = c(u) * cos(x, u) / 2.0;
        }
    }
    let mut tmp = [0f32; 64];
    for y in 0..8 {
        for x in 0..8 {
            tmp[y * 8 + x] = (0..8).map(|u| table[x][u] * block[y * 8 + u]).sum();
        }
    }
    for x in 0..8 {
        for y in 0..8 {
            block[y * 8 + x] = (0..8).map(|v| table[y][v] * tmp[v * 8 + x]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idct_of_a_dc_block_is_flat() {
        let mut b = [0f32; 64];
        b[0] = 80.0; // DC: every sample = 80 / 8
        idct(&mut b);
        assert!(b.iter().all(|v| (v - 10.0).abs() < 1e-4));
    }

    #[test]
    fn extend_follows_the_standard() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(2, 3), -5);
        assert_eq!(extend(5, 3), 5);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xC4, 0, 40]).is_err());
    }
}
