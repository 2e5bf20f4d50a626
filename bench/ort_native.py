#!/usr/bin/env python3
"""onnxruntime's side of `cargo xtask bench`: the model run alone, same models and input
size as medinfer's (`medinfer bench`), at each requested intra-op thread count.

usage: bench/ort_native.py MODELS_DIR [--n 20] [--threads 1,2]

Prints JSON: [{model_id, threads, load_ms, p50_ms, p90_ms, min_ms, version}]. The input is
the first image of testdata/models/testvec_input_2x3x224x224.f32 (a fixed, normalised
224x224 tensor), so every run feeds identical data.
"""
import argparse, json, os, statistics, sys, time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("models_dir")
p.add_argument("--n", type=int, default=20)
p.add_argument("--threads", default="1,2")
a = p.parse_args()

x = np.fromfile("testdata/models/testvec_input_2x3x224x224.f32", dtype="<f4").reshape(2, 3, 224, 224)[:1].copy()
rows = []
for model_id in sorted(os.listdir(a.models_dir)):
    path = os.path.join(a.models_dir, model_id, "model.onnx")
    if not os.path.exists(path):
        continue
    for threads in [int(t) for t in a.threads.split(",")]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        load = (time.perf_counter() - t0) * 1000
        feeds = {s.get_inputs()[0].name: x}
        for _ in range(2):
            s.run(None, feeds)
        times = []
        for _ in range(a.n):
            t = time.perf_counter()
            s.run(None, feeds)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        rows.append({
            "model_id": model_id, "threads": threads, "load_ms": load,
            "p50_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "min_ms": times[0], "version": ort.__version__,
        })
json.dump(rows, sys.stdout, indent=1)
print()
