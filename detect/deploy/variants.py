"""Export variants that change the numerics, behind an accuracy gate; and the fastest one for this box.

* :func:`gated_export`: ``python -m detect.export`` with ``--int8`` (static int8,
  :mod:`detect.deploy.quantize`), fewer proposals or a smaller input. The variant is
  built in a private temporary file beside the target; its val mAP@0.5 (onnxruntime) is
  measured against the checkpoint's own (PyTorch float32, its trained settings) on the
  val split the checkpoint records; only when it drops at most ``max_drop`` (or with
  ``force``) is it moved to the target, with the two figures in its metadata
  (``accuracy``). Otherwise nothing is written and the result says why (exit 1).
* :func:`optimize`: tries the levers (int8, proposal counts, input sizes; then threads,
  graph optimisation level and OpenVINO at run time), measures latency and mAP of each,
  and writes the fastest within ``max_drop`` the same gated way.

Both report through their result objects (the command prints them); they log, never print.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from detect.common.errors import DetectError, UsageError
from detect.common.files import write_atomic
from detect.data.images import read_image
from detect.deploy.measure import map50, time_detector
from detect.inference.onnx_runtime import OnnxDetector

log = logging.getLogger(__name__)

__all__ = ["GateResult", "OptimizeResult", "gated_export", "optimize", "reference_map"]

DEFAULT_CALIBRATION = 32


@dataclass
class GateResult:
    """What a gated export measured and did. ``written``: the target was written."""

    path: Path
    reference: float | None  # val mAP@0.5 of the checkpoint in PyTorch float32
    variant: float | None  # val mAP@0.5 of the variant on onnxruntime
    images: int = 0
    max_drop: float = 0.01
    forced: bool = False
    written: bool = False
    bytes: int = 0
    note: str = ""
    quantized: Any = None

    @property
    def drop(self) -> float | None:
        return None if self.reference is None or self.variant is None else self.reference - self.variant

    @property
    def passed(self) -> bool:
        return self.drop is not None and self.drop <= self.max_drop + 1e-12

    def describe(self) -> str:
        if self.reference is None:
            return f"val mAP@0.5 not measured ({self.note})"
        return (f"val mAP@0.5 {self.reference:.4f} (PyTorch float32) -> {self.variant:.4f} (this export) on "
                f"{self.images} val images: drop {self.drop:+.4f}, limit {self.max_drop:g}")


def reference_map(weights: Path, ckpt: dict) -> float:
    """Val mAP@0.5 of the checkpoint as trained (PyTorch float32, its own settings)."""
    from detect.inference.torch_runtime import TorchDetector
    from detect.model.build import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt, device="cpu")
    return map50(TorchDetector(model, classes=[str(c) for c in ckpt["classes"]]), ckpt, weights)[0]


def _export_float(weights: Path, out: Path, settings: dict, opset: int, verify_images: int):
    from detect.deploy.onnx_export import export_onnx

    return export_onnx(weights, out, opset=opset, settings=settings, verify_images=verify_images)


def _quantize(src: Path, dst: Path, meta: dict, calibrate: int, calibration: Sequence[Path] | None):
    from detect.deploy.quantize import calibration_images, quantize_int8

    images = list(calibration) if calibration is not None else calibration_images(meta, src, calibrate)
    return quantize_int8(src, dst, images)


def _record(path: Path, update: dict) -> int:
    import onnx

    from detect.deploy.quantize import set_metadata

    model = onnx.load(str(path))
    set_metadata(model, update)
    data = model.SerializeToString()
    write_atomic(path, data)
    return len(data)


def gated_export(
    weights: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    settings: dict[str, Any],
    int8: bool = False,
    calibrate: int = DEFAULT_CALIBRATION,
    calibration: Sequence[Path] | None = None,
    max_drop: float = 0.01,
    force: bool = False,
    opset: int = 17,
    verify_images: int = 8,
    reference: float | None = None,
) -> tuple[GateResult, Any]:
    """Build the variant (float export with ``settings``, then int8 when asked), gate it, and
    move it to ``target`` when it passes (or ``force``). Returns the gate result and the float
    export's :class:`~detect.deploy.onnx_export.ExportResult` (PyTorch parity of the float graph).

    ``calibration``: image files to calibrate on instead of ``calibrate`` training images.
    """
    from detect.model.checkpoint import load_checkpoint

    weights, target = Path(weights), Path(target)
    if max_drop < 0:
        raise UsageError(f"--max-drop {max_drop}: give a drop of mAP@0.5 >= 0 (default 0.01)")
    ckpt = load_checkpoint(weights)
    with tempfile.TemporaryDirectory(prefix=".variant-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        exported = _export_float(weights, tmp / "float.onnx", settings, opset, verify_images)
        path = exported.path
        quantized = None
        if int8:
            quantized = _quantize(path, tmp / "int8.onnx", exported.metadata, calibrate, calibration)
            path = quantized.path
        result = GateResult(target, None, None, max_drop=max_drop, forced=force, quantized=quantized)
        try:
            result.reference = reference if reference is not None else reference_map(weights, ckpt)
            result.variant, result.images = map50(OnnxDetector(path), exported.metadata, path)
        except DetectError as exc:  # the val data is not on this machine
            result.reference = result.variant = None
            result.note = str(exc)
        accuracy = {"map50_reference": result.reference, "map50": result.variant, "drop": result.drop,
                    "max_drop": max_drop, "val_images": result.images, "forced": bool(force and not result.passed)}
        if result.reference is not None and not result.passed and not force:
            return result, exported
        result.bytes = _record(path, {"accuracy": accuracy})
        os.replace(path, target)
        result.written = True
    return result, exported


# --------------------------------------------------------------------------------------
# --optimize


@dataclass
class Variant:
    name: str
    settings: dict
    int8: bool
    path: Path | None = None
    runtime: dict = field(default_factory=dict)  # threads, optimization, backend
    p50: float | None = None
    ips: float | None = None
    map50: float | None = None
    bytes: int = 0


@dataclass
class OptimizeResult:
    rows: list[Variant]
    reference: float | None
    best: Variant | None
    gate: GateResult | None
    threads: int


def _detector(path: Path, runtime: dict):
    if runtime.get("backend") == "openvino":
        from detect.inference.openvino_runtime import OpenVinoDetector

        return OpenVinoDetector(path, threads=runtime.get("threads"))
    return OnnxDetector(path, threads=runtime.get("threads"), optimization=runtime.get("optimization", "all"))


def optimize(
    weights: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    settings: dict[str, Any],
    proposals: Sequence[int | None] = (None, 100, 50),
    sizes: Sequence[int | None] = (None,),
    threads: Sequence[int] = (1, 2),
    calibrate: int = DEFAULT_CALIBRATION,
    max_drop: float = 0.01,
    timing_images: int = 24,
    opset: int = 17,
) -> OptimizeResult:
    """Measure the levers on this machine and write the fastest variant within ``max_drop``.

    Latency is model-only, batch 1, on ``timing_images`` decoded val images, at the largest of
    ``threads`` (the box's cores); mAP on the whole val split. A lever that only changes how
    the file is run (threads, optimisation level, OpenVINO) is measured on the fastest file and
    recorded in its metadata as ``recommended`` (how to run it), not in the graph.
    """
    from detect.model.checkpoint import load_checkpoint
    from detect.scoring.evaluation import EvalSettings, Evaluator
    from detect.inference.openvino_runtime import available as openvino_available

    weights, target = Path(weights), Path(target)
    ckpt = load_checkpoint(weights)
    eval_set, _ = Evaluator(EvalSettings()).checkpoint_eval_set(ckpt, weights)  # no data: no optimising
    images = [read_image(p) for p in eval_set.image_paths[:timing_images]]
    reference = reference_map(weights, ckpt)
    top = max(threads)
    rows: list[Variant] = []
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        for size in sizes:
            for n in proposals:
                s = {**settings, "input_size": size or settings.get("input_size"),
                     "rpn_post_nms_top_n_test": n or settings.get("rpn_post_nms_top_n_test")}
                label = f"{'ckpt' if size is None else size} px, {'ckpt' if n is None else n} proposals"
                with contextlib.redirect_stdout(io.StringIO()):
                    exported = _export_float(weights, tmp / f"v{len(rows)}.onnx", s, opset, 0)
                real = exported.metadata["test_settings"]
                label = f"{real['input_size']} px, {real['rpn_post_nms_top_n_test']} proposals"
                rows.append(Variant(f"float32, {label}", s, False, exported.path))
                q = _quantize(exported.path, tmp / f"v{len(rows)}-int8.onnx", exported.metadata, calibrate, None)
                rows.append(Variant(f"int8, {label}", s, True, q.path))
        for v in rows:
            v.runtime = {"threads": top, "optimization": "all"}
            det = OnnxDetector(v.path, threads=top)
            r = time_detector(det, images)
            v.p50, v.ips = r["p50"], r["ips"]
            v.map50 = map50(det, ckpt, weights)[0]
            v.bytes = v.path.stat().st_size
            log.info("%s: %.1f ms, mAP %.4f", v.name, v.p50, v.map50)
        ok = [v for v in rows if v.map50 >= reference - max_drop - 1e-12]
        best = min(ok, key=lambda v: v.p50) if ok else None
        if best is not None:
            runs = [{"threads": t, "optimization": o} for t in threads for o in ("all", "extended", "basic")]
            if openvino_available():
                runs += [{"threads": t, "backend": "openvino"} for t in threads]
            for rt in runs:
                if rt.get("threads") == top and rt.get("optimization") == "all":
                    continue
                v = Variant(best.name, best.settings, best.int8, best.path, rt)
                try:
                    det = _detector(best.path, rt)
                except DetectError as exc:
                    log.warning("%s with %s: %s", best.name, rt, exc)
                    continue
                r = time_detector(det, images)
                v.p50, v.ips, v.bytes = r["p50"], r["ips"], best.bytes
                v.map50 = best.map50 if rt.get("backend") != "openvino" else map50(det, ckpt, weights)[0]
                rows.append(v)
        gate = None
        if best is not None:
            same_threads = [v for v in rows if v.path == best.path and v.runtime.get("threads") == top
                            and v.map50 >= reference - max_drop - 1e-12]
            fastest_run = min(same_threads, key=lambda v: v.p50)
            accuracy = {"map50_reference": reference, "map50": best.map50, "drop": reference - best.map50,
                        "max_drop": max_drop, "val_images": len(eval_set.image_paths), "forced": False}
            size = _record(best.path, {"accuracy": accuracy, "recommended": {**fastest_run.runtime,
                                                                                "p50_ms": round(fastest_run.p50, 2)}})
            shutil.move(str(best.path), str(target))
            gate = GateResult(target, reference, best.map50, images=len(eval_set.image_paths), max_drop=max_drop,
                              written=True, bytes=size)
    return OptimizeResult(rows, reference, best, gate, top)
