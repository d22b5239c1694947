"""Scatter (torchvision's traced merge) vs gather (ours) in the export: the same checkpoint
exported both ways at 320 px, onnxruntime p50 side by side, alternating, at 1 and 2 threads."""
import sys, time, statistics, glob
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1])); import _repo
import numpy as np
from torchvision.ops import MultiScaleRoIAlign
from detect.model.roi_align import FastGradMultiScaleRoIAlign
from detect.deploy.onnx_export import export_onnx
from detect.inference.onnx_runtime import OnnxDetector
from detect.data.images import read_image
ckpt, out = sys.argv[1], sys.argv[2]
ours = FastGradMultiScaleRoIAlign._traced
paths = {}
for name in ("scatter", "gather"):
    FastGradMultiScaleRoIAlign._traced = (lambda self, x, b, s: MultiScaleRoIAlign.forward(self, x, b, s)) if name == "scatter" else ours
    r = export_onnx(ckpt, f"{out}/{name}.onnx", settings={"input_size": 320}, verify_images=4)
    paths[name] = f"{out}/{name}.onnx"
FastGradMultiScaleRoIAlign._traced = ours
imgs = [read_image(p) for p in sorted(glob.glob("/work/cache-main/demo-480/JPEGImages/*.jpg"))[:30]]
for threads in (1, 2):
    dets = {n: OnnxDetector(p, threads=threads) for n, p in paths.items()}
    times = {n: [] for n in paths}
    outs = {n: [] for n in paths}
    for img in imgs[:3]:
        for d in dets.values(): d.detect([img], ["w"])
    for i, img in enumerate(imgs):
        for n, d in dets.items():
            t = time.perf_counter(); [o] = d.detect([img], [str(i)]); times[n].append(time.perf_counter() - t); outs[n].append(o)
    same = all(np.allclose(a.boxes, b.boxes, atol=1e-3) and np.array_equal(a.labels, b.labels) for a, b in zip(outs["scatter"], outs["gather"]))
    p = {n: 1000 * statistics.median(v) for n, v in times.items()}
    print(f"{threads} thread(s): p50 scatter {p['scatter']:.1f} ms, gather {p['gather']:.1f} ms, ratio {p['scatter'] / p['gather']:.2f}x; same detections on {len(imgs)} images: {same}")
