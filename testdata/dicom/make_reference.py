#!/usr/bin/env python3
"""Generate reference pixel statistics for the DICOM test corpus.

Usage:
    python make_reference.py [DATA_DIR] [OUT_JSON]
    defaults: DATA_DIR = /work/shared/data/dicom
              OUT_JSON = reference.json next to this script

Requirements (versions actually used are written to reference.json["generator"]):
    pip install pydicom==3.0.2 numpy pylibjpeg pylibjpeg-openjpeg \
        pylibjpeg-libjpeg pylibjpeg-rle pyjpegls

The output is deterministic: files are processed in sorted name order, the
decoding plugin is chosen by a fixed rule (see DECODING), the JSON keys are
written in a fixed order and floats are written with Python's shortest
round-trip repr.

======================================================================
DEFINITIONS (what the Rust decoder tests compare against)
======================================================================

Per file (key = file name) the entry holds:

  decodes          true if pydicom could decode every frame, else false.
  error            (only when decodes is false) exception class name, e.g.
                   "ValueError"; "error_message" holds the first 200 chars.
  rows, cols       (0028,0010) Rows, (0028,0011) Columns.
  frames           (0028,0008) NumberOfFrames, or 1 if absent.
  samples          (0028,0002) SamplesPerPixel.
  bits_allocated, bits_stored, pixel_representation
                   (0028,0100), (0028,0101), (0028,0103) as in the file.
  photometric      (0028,0004) as written in the file (e.g. "YBR_FULL_422").
  transfer_syntax  file meta (0002,0010) UID string.
  kind             "grayscale" | "palette" | "color" (which pipeline below).
  decoding_plugin  pydicom decoding plugin used ("" = pydicom's built-in
                   native decoder for uncompressed transfer syntaxes).
  plugins_agree    {plugin: bool} for every *other* available pydicom plugin
                   for that transfer syntax: true if it produced bit-identical
                   decoded frames (same dtype, same values).
  decoded_dtype    numpy dtype of pydicom's decoded frame (before any LUT).

DECODING
  Frames are decoded with
      pydicom.pixels.get_decoder(ts).as_array(ds, index=i, as_rgb=True,
                                               decoding_plugin=P)
  for every frame i in 0..frames-1, where P is the first entry of the
  decoder's `available_plugins` tuple (pydicom's own preference order), or ""
  for native (uncompressed / deflated) syntaxes.  This is the "frame_raw"
  array below.  For 1-bit data (BitsAllocated 1, e.g. the SEG) pydicom unpacks
  the bits LSB-first into a uint8 array of 0/1 values.

  frames_stats[i].decoded_sha256 = sha256 of frame_raw converted to
  little-endian of decoded_dtype, C order (rows, cols[, samples]).  Only
  meaningful for lossless syntaxes; for lossy JPEG/J2K the exact values depend
  on the decoder implementation (IDCT, upsampling, rounding).

PIPELINES (the array on which statistics are computed, as float64)

  grayscale  (SamplesPerPixel 1, photometric MONOCHROME1/MONOCHROME2):
      x = Modality LUT stage applied to frame_raw, BEFORE any VOI/windowing
          and BEFORE any MONOCHROME1 inversion:
        * top-level (0028,3000) Modality LUT Sequence present
            -> pydicom.pixels.apply_modality_lut(frame_raw, ds)
               modality_lut = "lut_sequence"
        * top-level Rescale Slope/Intercept present
            -> pydicom.pixels.apply_modality_lut(frame_raw, ds)
               = frame_raw * slope + intercept      modality_lut = "rescale"
        * otherwise, for enhanced multi-frame objects, the
          Pixel Value Transformation Sequence (0028,9145) of the frame's
          Per-Frame Functional Groups item, else of the Shared Functional
          Groups item (pydicom 3.0.2's apply_modality_lut does NOT look
          there, so this script applies it itself):
               x = frame_raw * slope + intercept    modality_lut = "rescale"
        * otherwise x = frame_raw                   modality_lut = "none"
      modality_lut_source: "top_level" | "shared_functional_groups" |
          "per_frame_functional_groups" | null; rescale_slope /
          rescale_intercept are recorded when modality_lut = "rescale"
          (per-frame values in frames_stats[i] if they come from per-frame
          groups).

  palette    (photometric PALETTE COLOR):
      x = pydicom.pixels.apply_color_lut(frame_raw, ds)   -> (rows, cols, 3)
      palette_bits = bit depth of the array pydicom returns (8 or 16; it
      follows the 3rd value of the LUT descriptor).  Values are the LUT
      entries unscaled (a 16-bit LUT gives 0..65535 values).

  color      (SamplesPerPixel 3):
      x = frame_raw as returned with as_rgb=True, i.e. YBR_FULL / YBR_FULL_422
      converted to RGB by pydicom (its YBR_FULL->RGB matrix), YBR_ICT/RCT
      converted by the JPEG 2000 decoder.  color_space_returned = the
      photometric interpretation pydicom reports for the returned array
      (expected "RGB").  No Modality LUT / VOI is applied to colour data even
      if such tags exist (e.g. ctbrain1.dcm carries Rescale/Window tags).

STATISTICS (per frame, on the flattened C-order float64 array; colour arrays
are (rows, cols, 3) so the flat order is R,G,B of pixel (0,0), then (0,1)...)
  n       number of values = rows*cols*(3 if color/palette else 1)
  min, max
  sum     math.fsum over all values (exactly rounded sum)
  mean    sum / n
  std     population standard deviation (ddof = 0):
          sqrt(math.fsum((v - mean)^2) / n)
  head    the first 16 values of the flat array
  center  the 8 values starting at flat index
          ((rows//2) * cols + cols//2) * spp,  spp = 3 for color/palette else 1
  Values that are integral are written as JSON integers, others as floats.
  raw_min, raw_max (grayscale and palette only): min/max of frame_raw, i.e.
          the stored values / palette indices BEFORE the Modality LUT or
          palette lookup (e.g. 693_UNCR: raw -2000..2492, rescaled -3024..1468).

VOI (grayscale only; null for color/palette)
  voi = {window_center, window_width, n_windows, source, voi_lut_function,
         voi_lut_sequence}
  window_center/width: the FIRST value if multi-valued (pydicom's index=0),
  from top-level (0028,1050)/(0028,1051), else from Frame VOI LUT Sequence
  (0028,9132) of the first frame's Per-Frame FG item, else Shared FG item.
  null if absent.  voi_lut_function = (0028,1056) if present, else null
  (DICOM default LINEAR).  voi_lut_sequence = true if (0028,3010) present.

DISPLAY STATS (MONOCHROME1 files only)
  x (the modality-LUT output above) is windowed with the first window
  (c, w) using the DICOM LINEAR function, PS3.3 C.11.2.1.2.1, normalised to
  0..1 and then inverted to MONOCHROME2 semantics (0 = black):
      lo = c - 0.5 - (w - 1) / 2
      hi = c - 0.5 + (w - 1) / 2
      v  = clip((x - lo) / (hi - lo), 0, 1)
      v' = 1 - v
  statistics (same definitions as above) are computed on v'.
  Cross-check: pydicom.pixels.apply_voi_lut(x, ds) gives y in [y_min, y_max];
  (y - y_min)/(y_max - y_min) must equal v (max abs difference recorded as
  pydicom_max_abs_diff; y_min/y_max obtained by windowing -1e300 / +1e300).

LOSSLESS PAIRS (top level "lossless_pairs")
  For each group, every file's frame_raw arrays are compared with the first
  file's: equal = same shape, same dtype, same values (np.array_equal).
======================================================================
"""

import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import sys
import warnings

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/dicom"
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "reference.json")

LOSSLESS_GROUPS = [
    [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
    ["693_UNCR.dcm", "693_J2KR.dcm"],
]

# Human-written remarks copied verbatim into the entry's "notes" (not computed).
NOTES = {
    "eCT_Supplemental.dcm": "Enhanced CT: no top-level rescale; Rescale Slope/Intercept (1/-1024, "
    "RescaleType US) and Window (49/102) live only in the Shared Functional Groups, applied here by "
    "the script. PixelPresentation COLOR with a Supplemental Palette (descriptor [100,1024,16], "
    "stored values >= 1024) that is NOT applied: stats are the grayscale rescaled values.",
    "emri_small.dcm": "Enhanced MR SOP class but the (downsized) file has no functional groups at "
    "all, hence no rescale and no window: modality_lut none.",
    "liver_1frame.dcm": "BINARY SEG, BitsAllocated 1: bits unpacked LSB-first to 0/1. NumberOfFrames "
    "is absent (so frames = 1) although PerFrameFunctionalGroupsSequence has 3 items; PixelData is "
    "32768 bytes = exactly one 512x512 1-bit frame.",
    "ctbrain1.dcm": "Colour (YBR_FULL_422 JPEG baseline) although it carries Rescale and Window tags; "
    "no modality/VOI applied. Decoded Cb=Cr=128 so R=G=B. Lossy: values are libjpeg-specific.",
    "bad_sequence.dcm": "Two windows (40/350, 450/1500); first taken.",
    "examples_overlay.dcm": "Two windows (450/790, 200/443); first taken. Overlay is in (6000,3000), "
    "not in the pixel data's unused high bits.",
    "mlut_18.dcm": "Modality LUT Sequence, descriptor [4096, -2048, 16] (first mapped value is "
    "negative: -2048); output uint16.",
    "examples_palette.dcm": "16-bit palette (descriptor [256,0,16]); entries are 8-bit values * 256.",
    "OBXXXX1A_rle.dcm": "16-bit palette (descriptor [256,0,16]); entries are 8-bit values * 256.",
    "693_J2KR.dcm": "BitsStored 16 in the header (vs 14 in 693_UNCR); decoded values identical.",
    "MR_truncated.dcm": "Negative test: PixelData shorter than Rows*Cols*2.",
}

PACKAGES = [
    "pydicom",
    "numpy",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-rle",
    "pyjpegls",
    "pillow",
    "python-gdcm",
]


def num(v):
    """JSON number: int if integral, else float."""
    f = float(v)
    if math.isfinite(f) and f.is_integer():
        return int(f)
    return f


def stats(arr, rows, cols, spp):
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)
    n = flat.size
    s = math.fsum(flat.tolist())
    mean = s / n
    var = math.fsum(((flat - mean) ** 2).tolist()) / n
    c0 = ((rows // 2) * cols + cols // 2) * spp
    return {
        "n": n,
        "min": num(flat.min()),
        "max": num(flat.max()),
        "mean": float(mean),
        "sum": float(s),
        "std": float(math.sqrt(var)),
        "head": [num(v) for v in flat[:16]],
        "center": [num(v) for v in flat[c0 : c0 + 8]],
    }


def sha_le(arr):
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def fg_item(ds, frame, seq_kw):
    """Return (item, source) for a functional-group macro, per-frame first."""
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf and frame < len(pf) and seq_kw in pf[frame] and pf[frame][seq_kw].value:
        return pf[frame][seq_kw].value[0], "per_frame_functional_groups"
    sh = ds.get("SharedFunctionalGroupsSequence")
    if sh and seq_kw in sh[0] and sh[0][seq_kw].value:
        return sh[0][seq_kw].value[0], "shared_functional_groups"
    return None, None


def first_value(elem):
    v = elem.value
    if elem.VM > 1:
        v = v[0]
    return v


def voi_info(ds):
    out = {
        "window_center": None,
        "window_width": None,
        "n_windows": 0,
        "source": None,
        "voi_lut_function": None,
        "voi_lut_sequence": bool(ds.get("VOILUTSequence")),
    }
    src_ds, source = None, None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        src_ds, source = ds, "top_level"
    else:
        item, source = fg_item(ds, 0, "FrameVOILUTSequence")
        if item is not None and "WindowCenter" in item and "WindowWidth" in item:
            src_ds = item
    if src_ds is not None:
        out["window_center"] = num(first_value(src_ds["WindowCenter"]))
        out["window_width"] = num(first_value(src_ds["WindowWidth"]))
        out["n_windows"] = src_ds["WindowCenter"].VM
        out["source"] = source
        if "VOILUTFunction" in src_ds:
            out["voi_lut_function"] = str(src_ds.VOILUTFunction)
    if out["voi_lut_function"] is None and "VOILUTFunction" in ds:
        out["voi_lut_function"] = str(ds.VOILUTFunction)
    return out


def modality(frame_raw, ds, frame):
    """Return (x float64, info dict) for the grayscale Modality LUT stage."""
    if ds.get("ModalityLUTSequence"):
        x = apply_modality_lut(frame_raw, ds)
        return x.astype(np.float64), {"modality_lut": "lut_sequence", "modality_lut_source": "top_level"}
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        x = apply_modality_lut(frame_raw, ds)
        return x.astype(np.float64), {
            "modality_lut": "rescale",
            "modality_lut_source": "top_level",
            "rescale_slope": num(ds.RescaleSlope),
            "rescale_intercept": num(ds.RescaleIntercept),
        }
    item, source = fg_item(ds, frame, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
        slope, icpt = float(item.RescaleSlope), float(item.RescaleIntercept)
        x = frame_raw.astype(np.float64) * slope + icpt
        return x, {
            "modality_lut": "rescale",
            "modality_lut_source": source,
            "rescale_slope": num(slope),
            "rescale_intercept": num(icpt),
        }
    return frame_raw.astype(np.float64), {"modality_lut": "none", "modality_lut_source": None}


def decode_all(ds, decoder, frames, plugin):
    out = []
    meta0 = None
    for i in range(frames):
        arr, meta = decoder.as_array(ds, index=i, as_rgb=True, decoding_plugin=plugin)
        if meta0 is None:
            meta0 = meta
        out.append(arr)
    return out, meta0


def process(path):
    name = os.path.basename(path)
    e = {}
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path)
        ts = str(ds.file_meta.TransferSyntaxUID)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.SamplesPerPixel)
        photometric = str(ds.PhotometricInterpretation)
        e.update(
            {
                "decodes": None,
                "rows": rows,
                "cols": cols,
                "frames": frames,
                "samples": spp,
                "bits_allocated": int(ds.BitsAllocated),
                "bits_stored": int(ds.BitsStored),
                "pixel_representation": int(ds.PixelRepresentation),
                "photometric": photometric,
                "transfer_syntax": ts,
                "sop_class": str(ds.SOPClassUID),
            }
        )
        if photometric == "PALETTE COLOR":
            kind = "palette"
        elif spp == 3:
            kind = "color"
        else:
            kind = "grayscale"
        e["kind"] = kind

        decoder = get_decoder(ts)
        avail = list(decoder.available_plugins)
        plugin = avail[0] if avail else ""
        e["decoding_plugin"] = plugin
        try:
            raw_frames, meta = decode_all(ds, decoder, frames, plugin)
        except Exception as exc:  # noqa: BLE001
            e["decodes"] = False
            e["error"] = type(exc).__name__
            e["error_message"] = str(exc)[:200]
            if name in NOTES:
                e["notes"] = NOTES[name]
            return e, None
        e["decodes"] = True
        agree = {}
        for other in avail[1:]:
            try:
                of, _ = decode_all(ds, decoder, frames, other)
                agree[other] = all(
                    a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                    for a, b in zip(raw_frames, of)
                )
            except Exception as exc:  # noqa: BLE001
                agree[other] = f"error: {type(exc).__name__}"
        e["plugins_agree"] = agree
        e["decoded_dtype"] = str(raw_frames[0].dtype.newbyteorder("="))

        fstats = []
        if kind == "grayscale":
            e["voi"] = voi_info(ds)
            xs = []
            for i, fr in enumerate(raw_frames):
                x, info = modality(fr, ds, i)
                xs.append(x)
                if i == 0:
                    for k in ("modality_lut", "modality_lut_source", "rescale_slope", "rescale_intercept"):
                        if k in info:
                            e[k] = info[k]
                st = stats(x, rows, cols, 1)
                if info.get("modality_lut_source") == "per_frame_functional_groups":
                    st["rescale_slope"] = info["rescale_slope"]
                    st["rescale_intercept"] = info["rescale_intercept"]
                st["raw_min"] = num(fr.min())
                st["raw_max"] = num(fr.max())
                st["decoded_sha256"] = sha_le(fr)
                fstats.append(st)
            if "RescaleSlope" not in ds and e["modality_lut"] == "rescale":
                e["note_modality"] = (
                    "rescale taken from functional groups; pydicom.apply_modality_lut "
                    "alone would not apply it"
                )
            if photometric == "MONOCHROME1":
                e["display_stats"] = display_stats(xs, ds, e["voi"], rows, cols)
        elif kind == "palette":
            e["voi"] = None
            e["lut_descriptor"] = [int(v) for v in ds.RedPaletteColorLookupTableDescriptor]
            for fr in raw_frames:
                rgb = apply_color_lut(fr, ds)
                e["palette_bits"] = rgb.dtype.itemsize * 8
                e["palette_dtype"] = str(rgb.dtype)
                st = stats(rgb, rows, cols, 3)
                st["raw_min"] = num(fr.min())
                st["raw_max"] = num(fr.max())
                st["decoded_sha256"] = sha_le(fr)
                fstats.append(st)
        else:
            e["voi"] = None
            e["color_space_returned"] = str(meta.get("photometric_interpretation"))
            e["planar_configuration"] = int(ds.get("PlanarConfiguration", 0) or 0)
            for fr in raw_frames:
                st = stats(fr, rows, cols, 3)
                st["decoded_sha256"] = sha_le(fr)
                fstats.append(st)
        e["frames_stats"] = fstats
    if name in NOTES:
        e["notes"] = NOTES[name]
    msgs = sorted({str(w.message).splitlines()[0][:160] for w in wlist})
    if msgs:
        e["pydicom_warnings"] = msgs
    return e, raw_frames


def display_stats(xs, ds, voi, rows, cols):
    c, w = voi["window_center"], voi["window_width"]
    fn = (voi["voi_lut_function"] or "LINEAR").upper()
    if c is None or w is None or fn != "LINEAR":
        return {"error": f"no LINEAR window (center={c}, width={w}, function={fn})"}
    c, w = float(c), float(w)
    lo = c - 0.5 - (w - 1) / 2
    hi = c - 0.5 + (w - 1) / 2
    out = {
        "window_center": num(c),
        "window_width": num(w),
        "lo": num(lo),
        "hi": num(hi),
        "formula": "v = clip((x-lo)/(hi-lo),0,1); v' = 1-v; "
        "lo = c-0.5-(w-1)/2, hi = c-0.5+(w-1)/2 (PS3.3 C.11.2.1.2.1)",
        "frames_stats": [],
    }
    ext = apply_voi_lut(np.array([-1e300, 1e300], dtype=np.float64), ds)
    y_min, y_max = float(ext[0]), float(ext[1])
    maxdiff = 0.0
    for x in xs:
        v = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
        y = apply_voi_lut(x.copy(), ds).astype(np.float64)
        v_py = (y - y_min) / (y_max - y_min)
        maxdiff = max(maxdiff, float(np.max(np.abs(v - v_py))))
        out["frames_stats"].append(stats(1.0 - v, rows, cols, 1))
    out["pydicom_y_min"] = num(y_min)
    out["pydicom_y_max"] = num(y_max)
    out["pydicom_max_abs_diff"] = maxdiff
    return out


def versions():
    g = {"script": "testdata/dicom/make_reference.py", "python": platform.python_version()}
    for p in PACKAGES:
        try:
            g[p] = md.version(p)
        except md.PackageNotFoundError:
            g[p] = None
    return g


def main():
    names = sorted(f for f in os.listdir(DATA_DIR) if f.lower().endswith(".dcm"))
    files = {}
    raws = {}
    for n in names:
        entry, raw = process(os.path.join(DATA_DIR, n))
        files[n] = entry
        raws[n] = raw
        print(f"{n}: decodes={entry['decodes']} {entry.get('error', '')}", file=sys.stderr)

    pairs = []
    for group in LOSSLESS_GROUPS:
        ref = group[0]
        res = {"reference": ref, "equal": {}}
        for other in group[1:]:
            a, b = raws.get(ref), raws.get(other)
            ok = (
                a is not None
                and b is not None
                and len(a) == len(b)
                and all(
                    x.shape == y.shape
                    and x.dtype.newbyteorder("=") == y.dtype.newbyteorder("=")
                    and np.array_equal(x, y)
                    for x, y in zip(a, b)
                )
            )
            res["equal"][other] = bool(ok)
        res["all_equal"] = all(res["equal"].values())
        pairs.append(res)

    out = {
        "generator": versions(),
        "data_dir": DATA_DIR,
        "definitions": "see the docstring at the top of make_reference.py",
        "lossless_pairs": pairs,
        "files": files,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
