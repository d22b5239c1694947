"""The verdict classifier: one item's crop in, its class out, at the camera's own resolution.

The detector works on the whole frame shrunk to 256-320 px, where a dent is a few pixels; this
classifier sees each item's box cut from the full-resolution frame (with a margin), letterboxed
to ``size x size``, and says which of the detector's classes it is.

* :func:`build_verdict` builds the network: torchvision's ``mobilenet_v3_small`` (ImageNet
  weights when they can be had, ``weights="imagenet"``; ``"none"`` for tests and offline runs)
  or ``small_cnn``, four conv blocks for tiny data and tests.
  Input ``(N, 3, S, S)`` float, RGB in 0..1 normalised with ImageNet's mean and std (what
  :func:`crops_tensor` makes); output ``(N, K)`` logits over the detector's ``K`` classes
  (no background: the detector already said there is an object).
* The crops (:func:`crop_item`, :func:`letterbox`) are cut as :mod:`detect.model.verdict_onnx`
  cuts them, where the torch-free line runs the classifier's ONNX export.
* :class:`VerdictClassifier` is the stage as the line uses it: classes, defect classes, crop
  settings, the decision threshold; ``probabilities(image, boxes)`` gives ``(N, K)``;
  :func:`save_verdict` / :func:`load_verdict` store it as ``verdict.pt`` beside ``best.pt``
  (a state dict and metadata, read with ``weights_only=True``); :func:`export_verdict` writes
  ``verdict.onnx`` for the line.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image they are cut from.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

from detect.common.errors import UsageError
from detect.common.files import write_atomic
from detect.model.build import WeightsError, _fetch_state_dict
from detect.model.verdict_onnx import (DEFAULT_SIZE, FORMAT, MARGIN, META_KEY, VerdictError, check_classes, crop_item,
                                       defect_mask, item_squares, letterbox, normalise)

log = logging.getLogger(__name__)

__all__ = ["ARCHS", "DEFAULT_SIZE", "MARGIN", "VerdictClassifier", "VerdictError", "build_verdict", "crop_item",
           "crops_tensor", "export_verdict", "letterbox", "load_verdict", "save_verdict"]

ARCHS = ("mobilenet_v3_small", "small_cnn")


def _small_cnn(num_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, num_classes))


def build_verdict(num_classes: int, *, arch: str = "mobilenet_v3_small", weights: str = "none") -> nn.Module:
    """The classifier: input ``(N, 3, S, S)`` float (see :func:`crops_tensor`, any ``S`` >= 32),
    output ``(N, num_classes)`` logits.

    ``weights``: ``"none"`` (random, no network), ``"imagenet"`` (torchvision's ImageNet weights
    for ``mobilenet_v3_small``, from the torch hub cache or downloaded; the last layer is new)
    or ``"auto"`` (ImageNet when it can be had, else random, with a warning).

    Raises:
        UsageError: an unknown ``arch`` or ``weights``; WeightsError: ``imagenet`` cannot be had.
    """
    if arch not in ARCHS:
        raise UsageError(f"verdict classifier {arch!r}: use one of {', '.join(ARCHS)}")
    if weights not in ("none", "imagenet", "auto"):
        raise UsageError(f"verdict weights {weights!r}: use none, imagenet or auto")
    if arch == "small_cnn":
        return _small_cnn(num_classes)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if weights != "none":
        try:
            state = _fetch_state_dict(torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1)
        except WeightsError as exc:
            if weights == "imagenet":
                raise
            log.warning("verdict classifier: no ImageNet weights (%s); starting from random weights", exc)
            return model
        own = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fitting, strict=False)  # all but the last layer (1000 ImageNet classes)
    return model


def crops_tensor(squares: Sequence[np.ndarray]) -> torch.Tensor:
    """Letterboxed RGB uint8 squares -> ``(N, 3, S, S)`` float, normalised with ImageNet's mean and std."""
    return torch.from_numpy(normalise(squares))


@dataclass
class VerdictClassifier:
    """The verdict stage: the network and what it needs to be used.

    ``threshold``: an item whose defect probability (the sum of the defect classes'
    probabilities) is at or above it is defective; ``max_false_reject``: the false-reject rate
    it was chosen for on held-out items, when it was (else None).
    """

    model: nn.Module
    classes: list[str]
    defect_classes: list[str]
    arch: str = "mobilenet_v3_small"
    size: int = DEFAULT_SIZE
    margin: float = MARGIN
    threshold: float = 0.5
    max_false_reject: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def defect_mask(self) -> np.ndarray:
        return defect_mask(self.classes, self.defect_classes)

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N, K)`` class probabilities for the ``N`` boxes of ``image`` (RGB uint8, full
        resolution); a box with no pixels in the image gets a row of NaN."""
        out = np.full((len(np.asarray(boxes).reshape(-1, 4)), len(self.classes)), np.nan)
        squares, rows = item_squares(image, boxes, margin=self.margin, size=self.size)
        if squares:
            self.model.eval()
            out[rows] = torch.softmax(self.model(crops_tensor(squares)), 1).double().numpy()
        return out

    def defect_probability(self, probs: np.ndarray) -> np.ndarray:
        """``(N,)`` the defect classes' share of each row of ``probs``."""
        return np.asarray(probs, np.float64)[:, self.defect_mask].sum(1)  # float64: a threshold compares exactly

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "arch": self.arch, "classes": list(self.classes),
                "defect_classes": list(self.defect_classes), "size": self.size, "margin": self.margin,
                "threshold": float(self.threshold), "max_false_reject": self.max_false_reject, "info": self.info}


def save_verdict(verdict: VerdictClassifier, path: Path) -> Path:
    """``verdict.pt``: ``{"metadata": ..., "state_dict": ...}``, written atomically."""
    import io

    buffer = io.BytesIO()
    torch.save({"metadata": verdict.metadata(), "state_dict": verdict.model.state_dict()}, buffer)
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def load_verdict(path: Path, classes: Sequence[str] | None = None) -> VerdictClassifier:
    """The classifier saved by :func:`save_verdict` (``weights_only=True``).

    Raises:
        VerdictError: not a verdict file, or its classes are not ``classes`` (the detector's).
    """
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        meta, state = blob["metadata"], blob["state_dict"]
        assert meta.get("format") == FORMAT
    except Exception as exc:
        raise VerdictError(f"{path}: not a verdict classifier file ({type(exc).__name__}); retrain it with "
                           "python -m detect.train ... --verdict, or remove it to use the detector's vote") from exc
    check_classes(Path(path), meta["classes"], classes)
    model = build_verdict(len(meta["classes"]), arch=meta["arch"])
    model.load_state_dict(state)
    model.eval()
    return VerdictClassifier(model, list(meta["classes"]), list(meta["defect_classes"]), arch=meta["arch"],
                             size=int(meta["size"]), margin=float(meta["margin"]), threshold=float(meta["threshold"]),
                             max_false_reject=meta.get("max_false_reject"), info=dict(meta.get("info") or {}))


class _Softmax(nn.Module):
    """What the ONNX file computes: normalised crops -> class probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), 1)


def export_verdict(verdict: VerdictClassifier, path: str | Path, *, opset: int = 17) -> Path:
    """Write the classifier as ONNX for the torch-free line
    (:class:`detect.model.verdict_onnx.OnnxVerdict`): input ``crops`` ``(N, 3, S, S)`` float32
    (:func:`~detect.model.verdict_onnx.normalise`), output ``probabilities`` ``(N, K)``; its
    settings (classes, threshold, crop size and margin) in the file's metadata."""
    import io

    import onnx

    from detect.common.files import write_atomic

    buffer = io.BytesIO()
    verdict.model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice: dynamo=False on purpose, as the detector's
        torch.onnx.export(_Softmax(verdict.model).eval(), (torch.rand(2, 3, verdict.size, verdict.size),), buffer,
                          dynamo=False, opset_version=opset, input_names=["crops"], output_names=["probabilities"],
                          dynamic_axes={"crops": {0: "items"}, "probabilities": {0: "items"}}, do_constant_folding=True)
    graph = onnx.load_from_string(buffer.getvalue())
    graph.metadata_props.add(key=META_KEY, value=json.dumps(verdict.metadata()))
    write_atomic(Path(path), graph.SerializeToString())
    return Path(path)
