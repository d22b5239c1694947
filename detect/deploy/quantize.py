"""Static int8 quantisation of an exported detector (``python -m detect.export --int8``).

Works on the ``.onnx`` file alone (onnxruntime's quantisation tools, no torch): the
convolutions and fully connected layers get int8 weights (per output channel) and int8
activations whose ranges are measured on a few calibration images (the training split of
the data the checkpoint records), written in QDQ form (``QuantizeLinear`` /
``DequantizeLinear`` pairs that onnxruntime fuses into int8 kernels where it has them).
The result is a normal export: the same ``detect`` metadata (plus an ``int8`` record of how
it was made), the same zero-proposal safety (the graph's box decoding is left as it was),
and it runs on :class:`detect.inference.onnx_runtime.OnnxDetector` unchanged.

The weights use 7 of their 8 bits (``reduce_range``): onnxruntime's uint8 x int8 kernels on
AVX2 and AVX-512 CPUs without VNNI add products in pairs in 16 bits (``vpmaddubsw``), and with
full-range per-channel weights (up to 127) a pair overflows and is clipped. Measured on the
tests' tiny model on an AVX2 CPU: best scores fell from 0.69 to 0.37 (the same graph evaluated
in float, without the int8 kernels, gave 0.65); with 7-bit weights (at most 64: 2 x 255 x 64
fits in 16 bits) they stay within 0.13, at the same speed. VNNI CPUs never clip, and lose one
bit of weight precision.

Which nodes stay in float was decided by measurement on the demo model
(docs/notes.md, "Static int8 and the exported RoI merge"): everything that is not a Conv or Gemm (the resize,
anchors, box decoding, NMS, RoIAlign) is never touched, and of the Conv/Gemm nodes the box
regressions (:data:`FLOAT_NODES`: the RPN's ``bbox_pred`` convolutions and the box head's
``bbox_pred``) stay float: an int8 box delta moves a box by a whole quantisation step of the
logarithm of its size, which costs mAP at IoU 0.5 and is almost no work to keep in float.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from detect.common.errors import DetectError, UsageError
from detect.common.files import write_atomic
from detect.data.images import read_image
from detect.inference.onnx_runtime import METADATA_KEY, image_input

log = logging.getLogger(__name__)

__all__ = ["FLOAT_NODES", "QUANTIZED_OPS", "QuantizeError", "calibration_images", "quantize_int8", "set_metadata"]

# Node-name patterns left in float (regular expressions, searched in the node's name).
FLOAT_NODES = (r"/rpn/head/bbox_pred(_\d+)?/", r"/roi_heads/box_predictor/bbox_pred/")
QUANTIZED_OPS = ("Conv", "Gemm")


class QuantizeError(DetectError):
    """Quantisation failed (exit 1)."""


def _onnx():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError:  # pragma: no cover - both are dependencies
        raise UsageError("int8 quantisation needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx, quantization


def calibration_images(meta: dict[str, Any], path: Path, n: int) -> list[Path]:
    """``n`` images of the training split the export's metadata records, spread evenly over it.

    Raises:
        UsageError: ``n`` < 1; EvalError: the data is not on this machine.
    """
    from detect.scoring.evaluation import EvalSettings, Evaluator

    if n < 1:
        raise UsageError(f"--calibrate {n}: give at least 1 calibration image")
    eval_set, _ = Evaluator(EvalSettings(split="train")).checkpoint_eval_set(meta, path)
    paths = eval_set.image_paths
    if not paths:
        raise QuantizeError(f"{path}: the training split it records has no images to calibrate on")
    if len(paths) <= n:
        return list(paths)
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


class _Reader:
    """onnxruntime's CalibrationDataReader over image files (decoded one at a time)."""

    def __init__(self, input_name: str, images: Sequence[Path | np.ndarray]) -> None:
        self.input_name = input_name
        self.images = list(images)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        item = self.images[self.i]
        self.i += 1
        image = item if isinstance(item, np.ndarray) else read_image(item)
        return {self.input_name: image_input(image)}

    def rewind(self) -> None:
        self.i = 0


def _float_nodes(model, patterns: Iterable[str]) -> list[str]:
    rx = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and any(r.search(n.name) for r in rx)]


def set_metadata(model, update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into the ``detect`` metadata of an ONNX ``model`` (in memory); the new metadata."""
    props = {p.key: p for p in model.metadata_props}
    meta = json.loads(props[METADATA_KEY].value) if METADATA_KEY in props else {}
    meta.update(update)
    if METADATA_KEY in props:
        props[METADATA_KEY].value = json.dumps(meta)
    else:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    return meta


@dataclass
class QuantizeResult:
    path: Path
    bytes: int
    quantized: int  # Conv/Gemm nodes given int8 weights
    kept_float: list[str]
    calibration: int


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    images: Sequence[Path | np.ndarray],
    *,
    float_nodes: Iterable[str] = FLOAT_NODES,
    per_channel: bool = True,
) -> QuantizeResult:
    """Quantise the export ``src`` to int8 (QDQ, per-channel 7-bit weights) into ``dst`` (written atomically).

    Args:
        images: calibration images (paths, or ``H x W x 3`` uint8 RGB arrays).
        float_nodes: node-name patterns (regular expressions) of Conv/Gemm nodes to leave in float.

    Raises:
        UsageError: no calibration images; QuantizeError: onnxruntime's quantiser fails.
    """
    onnx, q = _onnx()
    src, dst = Path(src), Path(dst)
    if not images:
        raise UsageError("int8 quantisation needs at least one calibration image")
    model = onnx.load(str(src))
    kept = _float_nodes(model, float_nodes)
    to_quantize = sum(1 for n in model.graph.node if n.op_type in QUANTIZED_OPS) - len(kept)
    input_name = model.graph.input[0].name
    # quantize_static writes files (its output and the calibration model): a private folder beside dst.
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=dst.parent) as tmp:
        out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice (pre-processing, bias initialisers) is about other graphs
        try:
            q.quantize_static(
                str(src), str(out), _Reader(input_name, images),
                quant_format=q.QuantFormat.QDQ, per_channel=per_channel, reduce_range=True,
                activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=kept,
                calibrate_method=q.CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        except DetectError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise QuantizeError(f"{src}: onnxruntime's quantiser failed ({first})") from None
        finally:
            root.setLevel(level)
        qmodel = onnx.load(str(out))
    # The quantiser keeps metadata_props; add how this file was made.
    set_metadata(qmodel, {"int8": {"format": "QDQ", "per_channel": per_channel, "weight_bits": 7,
                                   "calibration_images": len(images),
                                   "float_nodes": kept, "source": str(src)}})
    for key in ("onnx.infer", "onnx.quant.pre_process"):  # the quantiser's own markers
        for i, p in enumerate(qmodel.metadata_props):
            if p.key == key:
                del qmodel.metadata_props[i]
                break
    data = qmodel.SerializeToString()
    write_atomic(dst, data)
    log.info("wrote %s: %d Conv/Gemm nodes int8, %d kept float, %d calibration images", dst, to_quantize,
             len(kept), len(images))
    return QuantizeResult(dst, len(data), to_quantize, kept, len(images))
