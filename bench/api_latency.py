#!/usr/bin/env python3
"""/infer latency against a running medinfer server (native or the Spin component host).

usage: bench/api_latency.py URL TOKEN [--n 50] [--file testdata/dicom/...dcm]

Sends the chest CR (raw application/dicom) --n times per model, one request at a time after
two warm-up requests, and prints client-side p50/p99 and the server's own total_ms median.
Also finds the largest batch the server accepts (100 seed-format 224x224 gray images by
default) and times it. Standard library only.
"""
import json, statistics, sys, time, urllib.request, argparse

p = argparse.ArgumentParser()
p.add_argument("url"); p.add_argument("token")
p.add_argument("--n", type=int, default=50)
p.add_argument("--file", default="testdata/dicom/RG1_chest_mono1_uncompressed_s4_DERIVED.dcm")
p.add_argument("--batch", type=int, default=100)
a = p.parse_args()
body = open(a.file, "rb").read()

def post(path, data, ctype):
    req = urllib.request.Request(a.url + path, data=data, method="POST",
        headers={"Authorization": "Bearer " + a.token, "Content-Type": ctype})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return (time.perf_counter() - t) * 1e3, out

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

for model in ["mobilenetv2-chexnet", "densenet121-chexnet"]:
    for _ in range(2):
        post(f"/infer?model_id={model}", body, "application/dicom")
    client, server = [], []
    for _ in range(a.n):
        ms, out = post(f"/infer?model_id={model}", body, "application/dicom")
        client.append(ms); server.append(out["timing_ms"]["total_ms"])
    print(f"{model:22s} /infer n={a.n} p50={pct(client,0.5):7.1f} ms p99={pct(client,0.99):7.1f} ms"
          f"  (server total_ms median {statistics.median(server):.1f})")

data = [((i * 7) % 256) / 255.0 for i in range(224 * 224)]
images = [{"data": data, "width": 224, "height": 224, "patient_id": f"PT-{i:05d}"} for i in range(a.batch)]
payload = json.dumps({"images": images, "priority": "high", "model_id": "mobilenetv2-chexnet"}).encode()
ms, out = post("/infer/batch", payload, "application/json")
print(f"batch of {a.batch} (mobilenetv2, {len(payload)/1e6:.1f} MB JSON): {out['successful']}/{out['total_images']} in {ms:.0f} ms")
