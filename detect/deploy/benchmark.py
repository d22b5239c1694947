"""PyTorch eager, ONNX float32, ONNX int8 and OpenVINO side by side on this machine: what
``python -m detect.benchmark`` hands its options to.

:func:`benchmark_formats` exports the checkpoint (float32 and static int8, into a temporary
folder or ``keep``), times each format's model-only latency per image (batch 1, decoded val
images) at each thread count, scores its val mAP@0.5, optionally runs ``end_to_end`` (the
command passes ``detect.predict``) and returns the rows with the speed-up over eager measured
in the same run; :func:`benchmark_lines` is the table the command prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["benchmark_formats", "benchmark_lines"]

EndToEnd = Callable[[Path, Path, Path, Sequence[str], int], dict]


def benchmark_formats(weights: Path, *, input_size: int | None = None, proposals: int | None = None,
                      threads: Sequence[int] = (1, 2), images: int = 40, calibrate: int = 32,
                      openvino: bool = True, end_to_end: EndToEnd | None = None,
                      keep: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(info, rows)``: one row per format (``format``, ``file``, ``mb``, ``latency`` per
    thread count with ``p50``/``p95`` ms and ``ips``, ``map50``, ``map50_diff`` and ``speedup``
    against eager, ``e2e_ips``/``e2e_speedup`` with ``end_to_end``); ``info``: the settings,
    versions, CPU count and the load average at start and end."""
    import onnxruntime
    import torch

    from detect.data.images import read_image
    from detect.deploy.measure import map50, time_detector
    from detect.deploy.onnx_export import export_onnx
    from detect.deploy.quantize import calibration_images, quantize_int8
    from detect.inference.onnx_runtime import OnnxDetector
    from detect.inference.openvino_runtime import OpenVinoDetector, available
    from detect.inference.torch_runtime import TorchDetector, set_test_settings
    from detect.model.build import model_from_checkpoint
    from detect.model.checkpoint import load_checkpoint
    from detect.scoring.evaluation import EvalSettings, Evaluator

    ckpt = load_checkpoint(weights)
    eval_set, _ = Evaluator(EvalSettings()).checkpoint_eval_set(ckpt, weights)
    paths = eval_set.image_paths
    timed = [read_image(p) for p in paths[:images]]
    settings = {"input_size": input_size, "rpn_post_nms_top_n_test": proposals}
    threads = sorted(set(threads))
    top = threads[-1]
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="detect-benchmark-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exported = export_onnx(weights, tmp / "float32.onnx", settings=settings, verify_images=0)
        s = exported.metadata["test_settings"]
        calib = calibration_images(exported.metadata, exported.path, calibrate)
        q = quantize_int8(exported.path, tmp / "int8.onnx", calib)
        listing = tmp / "val-images.txt"
        listing.write_text("\n".join(str(p.resolve()) for p in paths) + "\n")
        pt_extra = ["--input-size", str(s["input_size"]), "--proposals", str(s["rpn_post_nms_top_n_test"])]

        def eager(t: int):
            torch.set_num_threads(t)
            model, _ = model_from_checkpoint(ckpt, device="cpu")
            set_test_settings(model, **settings)
            return TorchDetector(model, classes=[str(c) for c in ckpt["classes"]])

        formats = [("PyTorch eager", weights, weights.stat().st_size, eager, pt_extra),
                   ("ONNX float32", exported.path, exported.path.stat().st_size,
                    lambda t: OnnxDetector(exported.path, threads=t), []),
                   ("ONNX int8", q.path, q.bytes, lambda t: OnnxDetector(q.path, threads=t), [])]
        if available() and openvino:
            formats += [("OpenVINO float32", exported.path, exported.path.stat().st_size,
                         lambda t: OpenVinoDetector(exported.path, threads=t), ["--backend", "openvino"]),
                        ("OpenVINO int8", q.path, q.bytes, lambda t: OpenVinoDetector(q.path, threads=t),
                         ["--backend", "openvino"])]
        for name, path, size, make, extra in formats:
            row = {"format": name, "file": path.name, "mb": size / 1e6, "latency": {}}
            det = None
            for t in threads:
                det = make(t)
                r = time_detector(det, timed)
                row["latency"][str(t)] = {"p50": r["p50"], "p95": r["p95"], "ips": r["ips"]}
            row["map50"] = map50(det, ckpt if path.suffix == ".pt" else exported.metadata, path)[0]
            if end_to_end is not None:
                row["e2e_ips"] = end_to_end(path, listing, tmp / "e2e", ["--no-save-images", "--save-json", *extra],
                                            top)["ips"]
            rows.append(row)
            del det
        torch.set_num_threads(top)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]
    for row in rows:
        row["map50_diff"] = row["map50"] - base["map50"]
        row["speedup"] = {t: base["latency"][t]["p50"] / row["latency"][t]["p50"] for t in row["latency"]}
        if "e2e_ips" in row:
            row["e2e_speedup"] = row["e2e_ips"] / base["e2e_ips"]
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {"weights": str(weights), "input_size": s["input_size"], "proposals": s["rpn_post_nms_top_n_test"],
            "val_images": len(paths), "timed_images": len(timed), "threads": threads,
            "calibration_images": len(calib), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpus": os.cpu_count(), "load_start": load0, "load_end": load1}
    return info, rows


def benchmark_lines(info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The heading, the table and its legend, as ``detect.benchmark`` prints them."""
    threads, top = info["threads"], info["threads"][-1]
    lines = [f"{info['weights']}: input {info['input_size']} px, {info['proposals']} proposals; {info['timed_images']} "
             f"val images timed, mAP on {info['val_images']}; torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
             f"{info['cpus']} CPUs, load average {info['load_start']:.2f} at start, {info['load_end']:.2f} at end"]
    header = ["format", "MB"]
    for t in threads:
        header += [f"p50 {t}t", f"p95 {t}t", f"x eager {t}t"]
    header += [f"e2e img/s {top}t", "x eager", "mAP50", "vs eager"]
    table = []
    for row in rows:
        cells = [row["format"], f"{row['mb']:.1f}"]
        for t in threads:
            lat = row["latency"][str(t)]
            cells += [f"{lat['p50']:.1f}", f"{lat['p95']:.1f}", f"{row['speedup'][str(t)]:.2f}"]
        cells += [f"{row['e2e_ips']:.1f}" if "e2e_ips" in row else "-",
                  f"{row['e2e_speedup']:.2f}" if "e2e_speedup" in row else "-",
                  f"{row['map50']:.4f}", f"{row['map50_diff']:+.4f}"]
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for cells in [header, ["-" * w for w in widths], *table]:
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))))
    lines.append("(latency: model only, ms per image, batch 1; e2e: detect.predict reading, decoding, inferring and "
                 "writing JSON for every val image)")
    return lines
