"""Prediction speed on this machine: PyTorch eager against onnxruntime, the speed levers and
what each costs in mAP, and end-to-end ``detect.predict`` throughput.

    python bench/predict_speed.py --weights weights/mobilenet/best.pt
    python bench/predict_speed.py --weights weights/mobilenet/best.pt --resnet untrained --sizes 320 --profile

One run measures, side by side:

1. **Latency**, batch 1, on the val images of ``--weights`` (they are decoded first; only
   the model is timed): for MobileNet (the checkpoint) and ResNet-50 (``--resnet``: a
   checkpoint, or ``untrained`` for timing only) at each ``--sizes`` (default 320 and the
   checkpoint's input size), PyTorch eager and onnxruntime at 1 and 2 threads: ms per image
   p50 and p95, images/s.
2. **Levers** on MobileNet at the first size (onnxruntime, 2 threads): fewer proposals, the
   graph optimisation level, thread spinning, dynamic int8 quantisation of the box head's
   matrix products (alone and with each proposal count); each with its VOC mAP@0.5 on the
   val split against PyTorch eager at the same size.
3. **End to end**: ``python -m detect.predict`` on a folder of JPEGs (the val images): read,
   decode, infer, write ``predictions.json``; and the same writing the drawn images too.
4. ``--profile``: where onnxruntime's time goes (per stage and per operator type), for the
   fastest MobileNet variant.

Every ONNX model is exported into a temporary folder (``--keep DIR`` keeps them). This is a
benchmark, not a test: nothing is asserted; run it on an idle machine (``uptime``) and
compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import _repo  # noqa: F401  (makes `detect` importable from a clone)

import numpy as np
import torch

from detect.model.checkpoint import load_checkpoint, save_checkpoint
from detect.scoring.evaluation import EvalSettings, Evaluator
from detect.data.images import read_image
from detect.inference.torch_runtime import TorchDetector, set_test_settings
from detect.model.build import build_model, model_from_checkpoint
from detect.model.config import ModelConfig
from detect.inference.onnx_runtime import OnnxDetector
from detect.deploy.onnx_export import export_onnx
from detect.deploy.measure import map50 as _map50, time_detector
from detect.benchmark import end_to_end


def map50(detector, ckpt: dict, path: Path) -> float:
    return _map50(detector, ckpt, path)[0]


def calibrated_resnet(config: dict, classes: list[str], out: Path) -> Path:
    """An untrained ResNet-50 detector with the MobileNet checkpoint's proposal settings,
    batch-norm statistics set from random images (untrained, activations vanish and every
    box scores the same, which would make NMS unrealistically cheap or costly)."""
    mobilenet = ModelConfig.from_dict(config)
    torch.manual_seed(0)
    model = build_model(backbone="resnet50", num_classes=len(classes) + 1, anchor_ratios=mobilenet.anchor_ratios,
                        input_size=mobilenet.input_size, rpn_pre_nms=mobilenet.rpn_pre_nms,
                        rpn_post_nms=mobilenet.rpn_post_nms, detector=mobilenet.detector)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    size = int(mobilenet.input_size or 320)
    with torch.no_grad():
        for _ in range(3):
            model.backbone(model.transform.normalize(torch.rand(3, size * 3 // 4, size))[None])
    model.eval()
    return save_checkpoint({"model": model.state_dict(), "model_config": model.config.as_dict(), "classes": classes,
                            "epoch": 0, "metrics": {}, "run": "resnet50-untrained", "backbone": "resnet50"}, out)


def export(pt: Path, out: Path, settings: dict) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        export_onnx(pt, out, settings=settings, verify_images=0)
    return out


def quantize(src: Path, dst: Path) -> Path:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Its advice to run shape pre-processing first does not apply: the graph has dynamic shapes.
    logging.getLogger().setLevel(logging.ERROR)
    # MatMul/Gemm only: the box head's two fully connected layers (fc6 alone is
    # 12544 x 1024 per proposal) are most of the work; int8 convolutions (ConvInteger) are
    # slower than float ones in onnxruntime's CPU kernels.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def row(cells, widths) -> str:
    return "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_table(header: list[str], rows: list[list], *, title: str) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print(row(header, widths))
    print(row(["-" * w for w in widths], widths))
    for r in rows:
        print(row(r, widths))
    sys.stdout.flush()


def profile(detector_path: Path, images: list[np.ndarray], threads: int, tmp: Path) -> None:
    det = OnnxDetector(detector_path, threads=threads, profile=str(tmp / "ort"))
    for im in images:
        det.detect([im], ["p"])
    trace = json.loads(Path(det.end_profiling()).read_text())
    by_stage: dict[str, float] = {}
    by_op: dict[str, float] = {}
    run_total = 0.0
    for ev in trace:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            run_total += ev["dur"]
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        stage = node.strip("/").split("/")[0] or "other"
        if stage.startswith(("backbone", "rpn", "roi_heads", "transform")):
            stage = stage.split(".")[0]
        else:
            stage = "other (constant folding, glue)"
        by_stage[stage] = by_stage.get(stage, 0.0) + ev["dur"]
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + ev["dur"]
    kernel_total = sum(by_stage.values())
    print(f"\nProfile ({detector_path.name}, {threads} threads, {len(images)} images): "
          f"{run_total / len(images) / 1000:.1f} ms per run, {kernel_total / len(images) / 1000:.1f} ms in kernels")
    for name, table in (("stage", by_stage), ("operator", by_op)):
        top = sorted(table.items(), key=lambda kv: -kv[1])[:8]
        print(f"  by {name}: " + ", ".join(f"{k} {100 * v / kernel_total:.0f}%" for k, v in top))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a MobileNet checkpoint trained on the demo (or any) data")
    p.add_argument("--resnet", default="untrained", help="a ResNet-50 checkpoint, 'untrained', or 'none'")
    p.add_argument("--sizes", nargs="+", default=None, help="input sizes (default: 320 and the checkpoint's)")
    p.add_argument("--images", type=int, default=40, help="val images timed per configuration (default: 40)")
    p.add_argument("--proposals", type=int, nargs="+", default=[150, 100, 50],
                   help="proposal counts tried as levers (default: 150 100 50)")
    p.add_argument("--no-map", action="store_true", help="skip the mAP of each lever (faster)")
    p.add_argument("--profile", action="store_true", help="profile onnxruntime on the fastest MobileNet variant")
    p.add_argument("--keep", metavar="DIR", help="keep the exported models in DIR")
    args = p.parse_args(argv)

    weights = Path(args.weights)
    ckpt = load_checkpoint(weights)
    config = dict(ckpt["model_config"])
    ckpt_size = int(config.get("input_size", 320))
    sizes = [int(s) for s in args.sizes] if args.sizes else sorted({320, ckpt_size}, key=lambda s: (s != 320, s))
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-predict-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        eval_set, _ = Evaluator(EvalSettings()).checkpoint_eval_set(ckpt, weights)
        paths = eval_set.image_paths
        images = [read_image(p) for p in paths[: args.images]]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
              f"{os.cpu_count()} CPUs, load average {load:.2f} at start; {len(images)} val images of "
              f"{eval_set.root} ({images[0].shape[1]}x{images[0].shape[0]}), batch 1")

        models = [("mobilenet", weights)]
        if args.resnet == "untrained":
            models.append(("resnet50 (untrained)", calibrated_resnet(config, list(ckpt["classes"]), tmp / "resnet50.pt")))
        elif args.resnet != "none":
            models.append(("resnet50", Path(args.resnet)))

        # 1. latency
        rows, exported = [], {}
        for label, pt in models:
            for size in sizes:
                onnx_path = export(pt, tmp / f"{pt.stem}-{label.split()[0]}-{size}.onnx", {"input_size": size})
                exported[(label, size)] = onnx_path
                base = None
                for path in ("eager", "onnxruntime"):
                    for threads in (1, 2):
                        if path == "eager":
                            torch.set_num_threads(threads)
                            model, _ = model_from_checkpoint(pt)
                            set_test_settings(model, input_size=size)
                            det = TorchDetector(model, classes=ckpt["classes"])
                        else:
                            det = OnnxDetector(onnx_path, threads=threads)
                        r = time_detector(det, images)
                        if path == "eager" and threads == 2:
                            base = r
                        rows.append([label, f"{size}", f"{path}", threads, f"{r['p50']:.1f}", f"{r['p95']:.1f}",
                                     f"{r['ips']:.1f}", f"{base['p50'] / r['p50']:.2f}" if base else "-"])
                        del det
        torch.set_num_threads(2)
        print_table(["model", "size", "path", "threads", "ms p50", "ms p95", "img/s", "x eager 2t"], rows,
                    title="1. Latency per image (model only, batch 1)")

        # 2. levers on MobileNet at the first size, onnxruntime 2 threads
        size = sizes[0]
        model, _ = model_from_checkpoint(ckpt)
        settings = set_test_settings(model, input_size=size)
        eager_map = None if args.no_map else map50(TorchDetector(model, classes=ckpt["classes"]), ckpt, weights)
        default_onnx = exported[("mobilenet", size)]
        variants = [
            (f"onnxruntime, {settings['rpn_post_nms_top_n_test']} proposals (checkpoint's)", default_onnx, {}),
            ("  graph optimisation basic", default_onnx, {"optimization": "basic"}),
            ("  thread spinning on", default_onnx, {"spinning": True}),
            ("  int8 box head (dynamic)", quantize(default_onnx, tmp / f"mobilenet-{size}-int8.onnx"), {}),
        ]
        for n in args.proposals:
            fewer = export(weights, tmp / f"mobilenet-{size}-p{n}.onnx", {"input_size": size, "rpn_post_nms_top_n_test": n})
            variants.append((f"  {n} proposals", fewer, {}))
            variants.append((f"  {n} proposals + int8 box head", quantize(fewer, fewer.with_name(fewer.stem + "-int8.onnx")),
                             {}))
        rows = []
        if eager_map is not None:
            torch.set_num_threads(2)
            r = time_detector(TorchDetector(model, classes=ckpt["classes"]), images)
            rows.append([f"PyTorch eager, {settings['rpn_post_nms_top_n_test']} proposals", f"{r['p50']:.1f}",
                         f"{r['ips']:.1f}", f"{eager_map:.4f}", "0"])
        best = None
        for name, path, opts in variants:
            det = OnnxDetector(path, threads=2, **opts)
            r = time_detector(det, images)
            m = None if args.no_map else map50(det, ckpt, weights)
            rows.append([name, f"{r['p50']:.1f}", f"{r['ips']:.1f}", "-" if m is None else f"{m:.4f}",
                         "-" if m is None else f"{m - eager_map:+.4f}"])
            usable = not opts.get("spinning")  # detect.predict runs onnxruntime without spinning
            if usable and (m is None or m >= eager_map - 0.01) and (best is None or r["p50"] < best[1]):
                best = (path, r["p50"], opts, name.strip())
        print_table(["variant (MobileNet, " + f"{size} px, 2 threads)", "ms p50", "img/s", "VOC mAP50", "vs eager"],
                    rows, title=f"2. Levers (mAP on the {len(paths)} val images; fastest within 0.01 mAP of eager: "
                                f"{best[3]})")

        # 3. end to end through detect.predict, on a folder of JPEGs
        listing = tmp / "val-images.txt"
        listing.write_text("\n".join(str(p.resolve()) for p in paths) + "\n")
        rows = []
        for label, w in (("PyTorch eager (.pt)", weights), (f"onnxruntime ({best[3]})", best[0])):
            if w.suffix == ".pt":
                extra_pt = ["--input-size", str(size)]
            else:
                extra_pt = [] if best[2].get("optimization") is None else ["--optimization", best[2]["optimization"]]
            for what, extra in (("decode, infer, write JSON", ["--no-save-images", "--save-json"]),
                                ("... and draw + write images", ["--save-json"])):
                r = end_to_end(w, listing, tmp / "e2e", extra + extra_pt, threads=2)
                rows.append([label, what, r["images"], f"{r['seconds']:.2f}", f"{r['ips']:.1f}"])
        print_table(["path", "work", "images", "seconds", "img/s"], rows,
                    title=f"3. End to end: python -m detect.predict, MobileNet {size} px, 2 threads")

        if args.profile:
            profile(best[0], images, 2, tmp)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
