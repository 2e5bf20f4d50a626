#!/usr/bin/env python3
"""Where onnxruntime spends a model run, by kind of operator: the reference that medinfer's
per-operator timings are held against (BENCHMARKS.md, issue 7).

usage: bench/ort_profile.py MODEL.onnx [--threads 1] [--n 30] [--nodes]

Runs the model `n` times with onnxruntime's profiler on, drops the first 5 runs, takes each
node's median and sums them by kind: convolutions split into 1x1, depthwise and KxK by their
weight's shape, other operators by name. `--nodes` also lists the 40 slowest nodes. The
input is a fixed pattern of the model's input shape (batch 1).
"""
import argparse, collections, json, os, statistics, tempfile

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--n", type=int, default=30)
p.add_argument("--nodes", action="store_true")
a = p.parse_args()

options = ort.SessionOptions()
options.intra_op_num_threads = a.threads
options.inter_op_num_threads = 1
options.enable_profiling = True
options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
input = session.get_inputs()[0]
shape = [1 if not isinstance(d, int) else d for d in input.shape]
x = ((np.arange(np.prod(shape)).reshape(shape) % 17) / 17.0 - 0.5).astype(np.float32)
for _ in range(a.n):
    session.run(None, {input.name: x})
with open(session.end_profiling()) as f:
    events = json.load(f)

runs, kinds = collections.defaultdict(list), {}
for e in events:
    if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
        continue
    args = e["args"]
    runs[e["name"]].append(e["dur"])
    shapes = [list(d.values())[0] for d in args.get("input_type_shape", [])]
    op = args.get("op_name")
    if op == "Conv" and len(shapes) > 1 and len(shapes[1]) == 4:
        w = shapes[1]
        op = "Conv 1x1" if w[2:] == [1, 1] else "Conv depthwise" if w[1] == 1 else f"Conv {w[2]}x{w[3]}"
    kinds[e["name"]] = op

medians = {k: statistics.median(v[5:] or v) / 1000 for k, v in runs.items()}
by_kind = collections.defaultdict(float)
for k, ms in medians.items():
    by_kind[kinds[k]] += ms
print(f"onnxruntime {ort.__version__}, {a.threads} thread(s), {os.path.basename(a.model)}: "
      f"{sum(medians.values()):.2f} ms in nodes (median per node)")
for kind, ms in sorted(by_kind.items(), key=lambda x: -x[1]):
    print(f"{ms:8.2f} ms  {kind}")
if a.nodes:
    for k, ms in sorted(medians.items(), key=lambda x: -x[1])[:40]:
        print(f"{ms:8.3f} ms  {kinds[k]:16} {k}")
