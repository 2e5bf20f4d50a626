#!/usr/bin/env python3
"""onnxruntime's side of `cargo xtask bench`: the model run alone, same models and input
size as medinfer's (`medinfer bench`), at each requested intra-op thread count.

usage: bench/ort_native.py MODELS_DIR [--n 20] [--threads 1,2]
       bench/ort_native.py MODELS_DIR [--n 20] --threads T --turns K --medinfer 'CMD ...'

Prints JSON: [{model_id, threads, load_ms, p50_ms, p90_ms, min_ms, version}]. The input is
the first image of testdata/models/testvec_input_2x3x224x224.f32 (a fixed, normalised
224x224 tensor), so every run feeds identical data.

With --medinfer, CMD (`medinfer bench --json --turns K --threads T ...`) runs beside this
script and the two take turns, K timed runs each (after one untimed run, whose caches the
other process has just used): on a shared machine whose speed drifts by tens of percent from
minute to minute, both are then timed in the same minutes. A pause between turns lets the
idle side's worker threads stop spinning. The output is then {"onnxruntime": [...],
"medinfer": [...]} (medinfer's rows as `medinfer bench --json` prints them).
"""
import argparse, json, os, shlex, statistics, subprocess, sys, time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("models_dir")
p.add_argument("--n", type=int, default=20)
p.add_argument("--threads", default="1,2")
p.add_argument("--turns", type=int, default=5, help="timed runs a turn (with --medinfer)")
p.add_argument("--medinfer", help="the medinfer bench command to take turns with")
a = p.parse_args()

PAUSE_S = 0.05

x = np.fromfile("testdata/models/testvec_input_2x3x224x224.f32", dtype="<f4").reshape(2, 3, 224, 224)[:1].copy()
sessions = []
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
        sessions.append({"model_id": model_id, "threads": threads, "load_ms": load, "session": s,
                         "feeds": {s.get_inputs()[0].name: x}, "times": []})


def runs(entry, n, warm):
    s, feeds = entry["session"], entry["feeds"]
    for _ in range(warm):
        s.run(None, feeds)
    for _ in range(n):
        t = time.perf_counter()
        s.run(None, feeds)
        entry["times"].append((time.perf_counter() - t) * 1000)


theirs = None
if a.medinfer is None:
    for entry in sessions:
        runs(entry, a.n, 2)
else:
    if len(sessions) != len({e["model_id"] for e in sessions}):
        sys.exit("--medinfer takes one thread count")
    by_id = {e["model_id"]: e for e in sessions}
    for e in sessions:
        runs(e, 0, 2)
    child = subprocess.Popen(shlex.split(a.medinfer), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rest = []
    for line in child.stdout:
        if not line.startswith("turn "):
            rest.append(line)
            continue
        entry = by_id.get(line.split()[1])
        if entry is None:
            sys.exit(f"medinfer runs a model onnxruntime does not: {line.strip()}")
        time.sleep(PAUSE_S)
        runs(entry, min(a.turns, a.n - len(entry["times"])), 1)
        time.sleep(PAUSE_S)
        child.stdin.write("go\n")
        child.stdin.flush()
    if child.wait() != 0:
        sys.exit(f"medinfer bench failed ({child.returncode})")
    theirs = json.loads("".join(rest))

rows = []
for e in sessions:
    times = sorted(e["times"])
    if not times:
        continue
    rows.append({
        "model_id": e["model_id"], "threads": e["threads"], "load_ms": e["load_ms"],
        "p50_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": times[0], "version": ort.__version__,
    })
json.dump(rows if theirs is None else {"onnxruntime": rows, "medinfer": theirs}, sys.stdout, indent=1)
print()
