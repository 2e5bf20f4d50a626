#!/usr/bin/env python3
"""onnxruntime's side of `cargo xtask bench`'s end-to-end batch: what a Python user of
onnxruntime writes to classify DICOM files — pydicom decodes each file, the stored values are
rescaled and windowed (the file's window, else min/max; MONOCHROME1 inverted), Pillow resizes
to 224x224 (bilinear, antialiased like medinfer's), ImageNet normalisation, then
`session.run` in chunks. Same file, same image count, same chunk and thread count as
`medinfer bench --batch N --chunk C --threads T`.

usage: bench/ort_e2e.py MODELS_DIR FILE --images 100 --chunk 16 --threads 2 --n 3

Prints JSON: [{model_id, threads, images, chunk, p50_ms, min_ms, version}].
"""
import argparse, io, json, os, statistics, sys, time

import numpy as np
import onnxruntime as ort
import pydicom
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("models_dir")
p.add_argument("file")
p.add_argument("--images", type=int, default=100)
p.add_argument("--chunk", type=int, default=16)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--n", type=int, default=3)
a = p.parse_args()

raw = open(a.file, "rb").read()
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def first(v):
    return float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)


def prepare(data):
    ds = pydicom.dcmread(io.BytesIO(data))
    x = ds.pixel_array.astype(np.float32)
    x = x * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = first(ds.WindowCenter), first(ds.WindowWidth)
        y = np.clip((x - (c - 0.5)) / max(w - 1, 1) + 0.5, 0, 1)
    else:
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / max(hi - lo, 1e-9)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1 - y
    img = Image.fromarray(y.astype(np.float32), mode="F").resize((224, 224), Image.BILINEAR)
    g = np.asarray(img, dtype=np.float32)[None]
    return (np.repeat(g, 3, axis=0) - MEAN) / STD


rows = []
for model_id in sorted(os.listdir(a.models_dir)):
    path = os.path.join(a.models_dir, model_id, "model.onnx")
    if not os.path.exists(path) or not model_id.endswith("chexnet"):
        continue
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name

    def run():
        t = time.perf_counter()
        out = []
        for start in range(0, a.images, a.chunk):
            batch = np.stack([prepare(raw) for _ in range(start, min(a.images, start + a.chunk))])
            out.append(s.run(None, {name: batch})[0])
        assert sum(len(o) for o in out) == a.images
        return (time.perf_counter() - t) * 1000

    run()
    times = sorted(run() for _ in range(a.n))
    rows.append({"model_id": model_id, "threads": a.threads, "images": a.images,
                 "chunk": a.chunk, "p50_ms": statistics.median(times), "min_ms": times[0],
                 "version": ort.__version__})
json.dump(rows, sys.stdout, indent=1)
