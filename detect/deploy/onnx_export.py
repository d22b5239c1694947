"""Export a checkpoint to ONNX for onnxruntime, and check the export against PyTorch.

:func:`export_onnx` writes one self-describing ``.onnx`` file (tensors and metadata: see
:mod:`detect.inference.onnx_runtime`) from a ``detect.train`` checkpoint:

* the TorchScript-based exporter, explicitly (``dynamo=False``): since PyTorch 2.9 the
  default dynamo exporter cannot export torchvision's detection models;
* batch 1 (what torchvision supports for Faster R-CNN export), any image height and width;
* inference settings (input size, proposal counts, thresholds) can be changed first: they
  are fixed in the graph;
* one fix to torchvision's graph (below), and a check after writing: onnxruntime and
  PyTorch run on the same images (a random one, a blank one, and up to ``verify_images``
  images of the checkpoint's val split when its data is here) and must agree.

The zero-proposal fix. torchvision's ``BoxCoder.decode`` reshapes the box head's output
with ``reshape(box_sum, -1)`` and ``reshape(box_sum, -1, 4)``. In ONNX a ``-1`` cannot be
inferred from a tensor with no elements, so when no proposal survives the RPN (a blank
frame, an empty belt: the RPN's score threshold removes them all) onnxruntime fails with
``Reshape ... Input shape:{0,20}, requested shape:{0,-1}`` in ``roi_heads`` (torchvision
issues #4623 and #8534 report the same family of failures). The export swaps the box
coder of the ROI heads for :class:`ZeroSafeBoxCoder`, which computes the same numbers with
the class count spelt out (``reshape(n, 4 * C)``, ``reshape(n, C, 4)``), and, while
tracing, torchvision's ``clip_boxes_to_image`` for :func:`clip_boxes_without_reshape`
(its ``reshape(boxes.shape)`` is folded by onnxruntime's optimiser into ``{0, C, -1}``,
which fails the same way once the graph is quantised). So zero proposals flow through
every node and the graph returns empty outputs. This is done in the exported copy only;
the PyTorch model is unchanged. (Catching the error in the backend instead would hide any
other Reshape failure, and every other onnxruntime user of the file would still meet it.)
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unittest import mock

import numpy as np
import torch
import torchvision.ops.boxes
from torchvision.models.detection._utils import BoxCoder

from detect.model.checkpoint import load_checkpoint, versions
from detect.common.errors import DetectError, UsageError
from detect.common.files import write_atomic
from detect.data.tensors import image_tensor
from detect.inference.torch_runtime import set_test_settings
from detect.model.config import ModelConfig
from detect.model.build import model_from_checkpoint
from detect.inference.onnx_runtime import METADATA_FORMAT, METADATA_KEY, OnnxDetector

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET",
    "Agreement",
    "ExportError",
    "ExportResult",
    "ZeroSafeBoxCoder",
    "clip_boxes_without_reshape",
    "compare_detections",
    "export_onnx",
    "onnx_metadata",
]

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores")


class ExportError(DetectError):
    """The export failed or does not agree with PyTorch (exit 1)."""


class ZeroSafeBoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` whose :meth:`decode` exports to a graph that takes zero boxes.

    Same arithmetic as the parent (:meth:`decode_single` is inherited); only the reshapes
    name their sizes instead of ``-1``. ``rel_codes``: ``[N, 4 * C]`` box deltas;
    ``boxes``: list of ``[N_i, 4]`` proposals (sum ``N``); returns ``[N, C, 4]`` boxes.
    """

    def decode(self, rel_codes: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        concat = torch.cat(list(boxes), dim=0)
        n = concat.shape[0]
        codes = rel_codes.shape[-1]
        pred = self.decode_single(rel_codes.reshape(n, codes), concat)
        return pred.reshape(n, codes // 4, 4)


def clip_boxes_without_reshape(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's ``clip_boxes_to_image`` (its traced branch, the same arithmetic) that
    builds ``[..., 4]`` by stacking the four coordinates instead of reshaping ``[..., 2, 2]``.

    ``boxes``: ``[..., 4]`` xmin, ymin, xmax, ymax; ``size``: (height, width). The reshape
    takes its target from ``Shape`` nodes, which onnxruntime's graph optimiser folds into
    ``{0, C, -1}``; with zero proposals that fails as the box coder's ``-1`` did (seen after
    dynamic int8 quantisation). A stack has no ``-1`` to infer.
    """
    height, width = size
    zero = torch.tensor(0, dtype=boxes.dtype, device=boxes.device)
    x = torch.min(torch.max(boxes[..., 0::2], zero), torch.tensor(width, dtype=boxes.dtype, device=boxes.device))
    y = torch.min(torch.max(boxes[..., 1::2], zero), torch.tensor(height, dtype=boxes.dtype, device=boxes.device))
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it compares with PyTorch.

    ``checked``: images compared; ``max_box_diff`` (pixels) and ``max_score_diff`` over
    the detections of all of them; ``mismatches``: images whose labels or detection
    counts differ.
    """

    path: Path
    metadata: dict[str, Any]
    bytes: int = 0
    checked: int = 0
    detections: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    mismatches: list[str] = field(default_factory=list)


def onnx_metadata(ckpt: dict[str, Any], settings: dict[str, Any], *, source: Path, opset: int) -> dict[str, Any]:
    """The ``detect`` metadata of an export: what prediction needs, and what ``detect.eval``
    reads from a checkpoint (classes, data root and splits, training args)."""
    config = ModelConfig.from_dict(ckpt.get("model_config") or {})
    config = config.replace(input_size=settings["input_size"],
                            detector={**config.detector, **{k: v for k, v in settings.items() if k != "input_size"}})
    return {
        "format": METADATA_FORMAT,
        "classes": [str(c) for c in ckpt["classes"]],
        "input_size": int(settings["input_size"]),
        "backbone": ckpt.get("backbone") or config.backbone,
        "test_settings": settings,
        "model_config": config.as_dict(),
        "run": ckpt.get("run") or source.parent.name,
        "epoch": ckpt.get("epoch"),
        "metrics": ckpt.get("metrics") or {},
        "data": ckpt.get("data") or {},
        "args": {k: v for k, v in (ckpt.get("args") or {}).items() if k in ("val_fraction", "data", "images")},
        "opset": opset,
        "source": str(source),
        "versions": {**versions(), "checkpoint": ckpt.get("versions") or {}},
        "tensors": {
            "inputs": {INPUT_NAME: "float32 [3, H, W] RGB in [0, 1]"},
            "outputs": {"boxes": "float32 [N, 4] xmin, ymin, xmax, ymax in input pixels",
                        "labels": "int64 [N] 1..K (classes[label - 1])", "scores": "float32 [N]"},
        },
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _val_images(ckpt: dict[str, Any], source: Path, limit: int) -> list[Path]:
    """Up to ``limit`` images of the checkpoint's val split, when its data is on this machine."""
    if limit <= 0:
        return []
    from detect.scoring.evaluation import EvalSettings, Evaluator

    try:
        eval_set, _ = Evaluator(EvalSettings()).checkpoint_eval_set(ckpt, source)
    except DetectError as exc:
        log.info("no val images to check the export on: %s", exc)
        return []
    return eval_set.image_paths[:limit]


def export_onnx(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    settings: dict[str, Any] | None = None,
    verify_images: int = 8,
    extra_images: Sequence[np.ndarray] = (),
) -> ExportResult:
    """Export a checkpoint to ONNX and check onnxruntime against PyTorch.

    Args:
        weights: a ``detect.train`` checkpoint.
        out: the ``.onnx`` file (default: beside the checkpoint, same stem). Written atomically.
        opset: ONNX opset (17 default; torchvision's detection ops need >= 11).
        settings: inference settings to change before export
            (:data:`detect.inference.torch_runtime.TEST_SETTINGS`: ``input_size``, proposal counts, thresholds).
        verify_images: how many val images of the checkpoint to compare on (when its data is here).
        extra_images: more ``H x W x 3`` uint8 RGB images to compare on.

    Returns:
        an :class:`ExportResult`; a disagreement is listed in ``mismatches`` (and logged),
        not raised: near-ties in NMS can legitimately differ in float arithmetic.

    Raises:
        UsageError: bad opset or settings; CheckpointError: the checkpoint cannot be loaded;
        ExportError: the exporter or onnxruntime fails.
    """
    import onnx

    source = Path(weights)
    if not 11 <= opset <= 23:
        raise UsageError(f"--opset {opset}: torchvision's detection models export with opsets 11 to 23 (default 17)")
    target = Path(out) if out else source.with_suffix(".onnx")
    ckpt = load_checkpoint(source)
    model, _ = model_from_checkpoint(ckpt, device="cpu")
    try:
        applied = set_test_settings(model, **(settings or {}))
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    exported = copy.deepcopy(model)
    old = exported.roi_heads.box_coder
    exported.roi_heads.box_coder = ZeroSafeBoxCoder(old.weights, old.bbox_xform_clip)

    size = applied["input_size"]
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, max(32, size * 3 // 4), size, generator=generator)
    buffer = io.BytesIO()
    log.info("exporting %s (opset %d, input %d px) ...", source, opset, size)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
                mock.patch.object(torchvision.ops.boxes, "clip_boxes_to_image", clip_boxes_without_reshape):
            warnings.simplefilter("ignore")  # the tracer's warnings are about code paths it handles
            torch.onnx.export(
                exported, ([sample],), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {1: "height", 2: "width"}, **{o: {0: "detections"} for o in OUTPUT_NAMES}},
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(f"{source}: the ONNX exporter failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]})") from None

    proto = onnx.load_from_string(buffer.getvalue())
    meta = _jsonable(onnx_metadata(ckpt, applied, source=source, opset=opset))
    for key, value in ((METADATA_KEY, json.dumps(meta)), ("classes", json.dumps(meta["classes"])),
                       ("input_size", str(meta["input_size"])), ("format", METADATA_FORMAT)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "can-detect"
    proto.doc_string = (f"Faster R-CNN ({meta['backbone']}) exported by detect.export from {source.name}; "
                        f"classes {', '.join(meta['classes'])}; input 'image' float32 [3,H,W] in [0,1]")
    data = proto.SerializeToString()
    write_atomic(target, data)
    result = ExportResult(path=target, metadata=meta, bytes=len(data))

    images = [sample.mul(255).round().byte().permute(1, 2, 0).numpy(),
              np.full((max(32, size * 3 // 4), size, 3), 127, np.uint8), *extra_images]
    from detect.data.images import read_image

    images += [read_image(p) for p in _val_images(ckpt, source, verify_images)]
    _compare(model, target, images, result)
    return result


@dataclass
class Agreement:
    """How two detectors' outputs on one image compare (:func:`compare_detections`).

    ``same``: the same number of detections with the same labels (as multisets);
    ``box_diff``: largest coordinate difference in pixels, ``box_rel``: the same relative
    to the size of the box (its longer side, at least 1 px: a coordinate near 0 would make
    a difference relative to the coordinate meaningless), ``score_diff``: largest score
    difference, over the matched pairs.
    """

    same: bool
    box_diff: float = 0.0
    box_rel: float = 0.0
    score_diff: float = 0.0


def compare_detections(a, b) -> Agreement:
    """Match ``b``'s detections to ``a``'s (same label, nearest box) and measure the differences.

    Matching, not position: when scores tie (an untrained model on a blank image gives
    many equal scores), the two backends may list tied detections in different orders.
    ``a``, ``b``: :class:`~detect.scoring.metrics.Detections` or dicts with numpy ``boxes``,
    ``scores``, ``labels``.
    """
    def parts(d):
        if isinstance(d, dict):
            return (np.asarray(d["boxes"], np.float64), np.asarray(d["scores"], np.float64),
                    np.asarray(d["labels"], np.int64))
        return d.boxes, d.scores, d.labels

    ba, sa, la = parts(a)
    bb, sb, lb = parts(b)
    if len(la) != len(lb) or not np.array_equal(np.sort(la), np.sort(lb)):
        return Agreement(False)
    used = np.zeros(len(lb), bool)
    out = Agreement(True)
    for i in np.argsort(-sa, kind="stable"):
        cand = np.flatnonzero((lb == la[i]) & ~used)
        dist = np.abs(bb[cand] - ba[i]).max(axis=1) + np.abs(sb[cand] - sa[i])
        j = cand[int(np.argmin(dist))]
        used[j] = True
        diff = np.abs(bb[j] - ba[i])
        out.box_diff = max(out.box_diff, float(diff.max()))
        size = max(float(ba[i, 2] - ba[i, 0]), float(ba[i, 3] - ba[i, 1]), 1.0)
        out.box_rel = max(out.box_rel, float(diff.max()) / size)
        out.score_diff = max(out.score_diff, float(abs(sb[j] - sa[i])))
    return out


def _compare(model, path: Path, images: Sequence[np.ndarray], result: ExportResult) -> None:
    try:
        detector = OnnxDetector(path, optimization="all")
    except DetectError as exc:
        raise ExportError(f"{path}: written, but onnxruntime cannot load it: {exc}") from None
    model.eval()
    for i, image in enumerate(images):
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in model([image_tensor(image)])[0].items()}
        try:
            got = detector.detect([image], [str(i)])[0]
        except Exception as exc:
            raise ExportError(f"{path}: onnxruntime fails on check image {i} ({image.shape[1]}x{image.shape[0]}): "
                              f"{str(exc).splitlines()[0][:300]}") from None
        result.checked += 1
        agree = compare_detections(ref, got)
        if not agree.same:
            result.mismatches.append(f"image {i}: PyTorch {len(ref['labels'])} detections, "
                                     f"onnxruntime {len(got.labels)} (or other labels)")
            continue
        result.detections += len(got.labels)
        result.max_box_diff = max(result.max_box_diff, agree.box_diff)
        result.max_score_diff = max(result.max_score_diff, agree.score_diff)
    if result.mismatches:
        log.warning("%s: onnxruntime and PyTorch differ on %d of %d check images (%s)", path,
                    len(result.mismatches), result.checked, result.mismatches[0])
