# A CUDA reference for BENCHMARKS.md's GPU section, run by hand on a machine with an NVIDIA
# GPU and PyTorch: torchvision's DenseNet-121 and MobileNetV2 (the bundled models'
# architectures, 14 outputs, random weights) in fp32 (TF32 off), cuDNN autotuned, model
# time only (the input already on the GPU, the output copied back). Prints one JSON line.
import json, time, torch, torchvision
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
out = []
for name, ctor in [("densenet121", torchvision.models.densenet121), ("mobilenet_v2", torchvision.models.mobilenet_v2)]:
    m = ctor(num_classes=14).cuda().eval()
    for batch in (1, 16, 64):
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        with torch.inference_mode():
            for _ in range(5):
                m(x)
            torch.cuda.synchronize()
            ts = []
            for _ in range(20):
                t = time.perf_counter(); m(x).cpu(); ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        out.append({"model": name, "batch": batch, "p50_ms": ts[len(ts) // 2], "min_ms": ts[0]})
print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": out}))
