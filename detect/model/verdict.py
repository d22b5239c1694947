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
* :func:`crop_item` cuts a box with a margin; :func:`letterbox` resizes keeping the aspect and
  pads with grey, so a lying can is not squashed into a standing one.
* :class:`VerdictClassifier` is the stage as the line uses it: classes, defect classes, crop
  settings, the decision threshold; ``probabilities(image, boxes)`` gives ``(N, K)``;
  :func:`save_verdict` / :func:`load_verdict` store it as ``verdict.pt`` beside ``best.pt``
  (a state dict and metadata, read with ``weights_only=True``).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image they are cut from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from detect.common.errors import UsageError
from detect.common.files import write_atomic
from detect.model.build import WeightsError, _fetch_state_dict

log = logging.getLogger(__name__)

__all__ = ["ARCHS", "DEFAULT_SIZE", "MARGIN", "VerdictClassifier", "VerdictError", "build_verdict", "crop_item",
           "crops_tensor", "letterbox", "load_verdict", "save_verdict", "verdict_beside"]

ARCHS = ("mobilenet_v3_small", "small_cnn")
DEFAULT_SIZE = 96
"""The crop's side: the demo's items are 30-150 px tall, so this keeps their pixels."""
MARGIN = 0.1
"""Share of the box's width/height added on each side: the outline is part of a dent."""
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
FORMAT = "detect-verdict/1"


class VerdictError(UsageError):
    """A verdict file that cannot be used with this detector (exit 2)."""


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


def crop_item(image: np.ndarray, box: Sequence[float], margin: float = MARGIN) -> np.ndarray | None:
    """``image[y0:y1, x0:x1]`` for ``box`` grown by ``margin`` of its size on each side and clipped
    to the image; None when nothing is left."""
    h, w = image.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0 = max(0, int(math.floor(box[0] - margin * bw))), max(0, int(math.floor(box[1] - margin * bh)))
    x1, y1 = min(w, int(math.ceil(box[2] + margin * bw))), min(h, int(math.ceil(box[3] + margin * bh)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return image[y0:y1, x0:x1]


def letterbox(crop: np.ndarray, size: int) -> np.ndarray:
    """``crop`` (H x W x 3 uint8) resized so its longest side is ``size``, centred on a grey
    ``size x size`` canvas."""
    h, w = crop.shape[:2]
    k = size / max(h, w)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), 124, np.uint8)  # ImageNet's mean grey: zero after normalising
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def crops_tensor(squares: Sequence[np.ndarray]) -> torch.Tensor:
    """Letterboxed RGB uint8 squares -> ``(N, 3, S, S)`` float, normalised with ImageNet's mean and std."""
    x = (np.stack(squares).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


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
        return np.array([c in self.defect_classes for c in self.classes])

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N, K)`` class probabilities for the ``N`` boxes of ``image`` (RGB uint8, full
        resolution); a box with no pixels in the image gets a row of NaN."""
        out = np.full((len(boxes), len(self.classes)), np.nan)
        squares, rows = [], []
        for i, box in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
            crop = crop_item(image, box, self.margin)
            if crop is not None:
                squares.append(letterbox(crop, self.size))
                rows.append(i)
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
    if classes is not None and list(meta["classes"]) != list(classes):
        raise VerdictError(f"{path}: the verdict classifier's classes {', '.join(meta['classes'])} are not the "
                           f"detector's ({', '.join(classes)}); retrain it with the detector (detect.train "
                           "--verdict) or remove it to use the detector's vote")
    model = build_verdict(len(meta["classes"]), arch=meta["arch"])
    model.load_state_dict(state)
    model.eval()
    return VerdictClassifier(model, list(meta["classes"]), list(meta["defect_classes"]), arch=meta["arch"],
                             size=int(meta["size"]), margin=float(meta["margin"]), threshold=float(meta["threshold"]),
                             max_false_reject=meta.get("max_false_reject"), info=dict(meta.get("info") or {}))


def verdict_beside(weights: str | Path, classes: Sequence[str]) -> VerdictClassifier | None:
    """The ``verdict.pt`` in the folder of the model file ``weights`` (a checkpoint or its
    export), checked against the detector's ``classes``; None when there is none.

    Raises:
        VerdictError: it is there but not usable with this detector.
    """
    path = Path(weights).with_name("verdict.pt")
    return load_verdict(path, classes) if path.is_file() else None
