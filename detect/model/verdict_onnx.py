"""The verdict classifier's torch-free half: cutting item crops, and running the classifier's
ONNX export with onnxruntime, so a line without torch judges items as the PyTorch one does.

* :func:`crop_item` cuts a box with a margin; :func:`letterbox` resizes keeping the aspect and
  pads with grey, so a lying can is not squashed into a standing one; :func:`normalise` makes
  the ``(N, 3, S, S)`` float32 batch both runtimes take (RGB in 0..1, ImageNet's mean and std).
* :class:`OnnxVerdict` reads ``verdict.onnx`` (written by
  :func:`detect.model.verdict.export_verdict`: the network with a softmax, its settings in the
  file's metadata) and has the line's interface: ``probabilities(image, boxes) -> (N, K)``,
  ``defect_probability(probs) -> (N,)``, ``classes``, ``defect_classes``, ``threshold``.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image they are cut from.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from detect.common.errors import UsageError

__all__ = ["DEFAULT_SIZE", "FORMAT", "MARGIN", "META_KEY", "OnnxVerdict", "VerdictError", "check_classes",
           "crop_item", "defect_mask", "item_squares", "letterbox", "normalise"]

DEFAULT_SIZE = 96
"""The crop's side: the demo's items are 30-150 px tall, so this keeps their pixels."""
MARGIN = 0.1
"""Share of the box's width/height added on each side: the outline is part of a dent."""
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
FORMAT = "detect-verdict/1"
META_KEY = "detect_verdict"
"""The ONNX metadata entry holding the classifier's settings as JSON."""


class VerdictError(UsageError):
    """A verdict file that cannot be used with this detector (exit 2)."""


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


def normalise(squares: Sequence[np.ndarray]) -> np.ndarray:
    """Letterboxed RGB uint8 squares -> ``(N, 3, S, S)`` float32, normalised with ImageNet's mean and std."""
    x = (np.stack(squares).astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def item_squares(image: np.ndarray, boxes: np.ndarray, *, margin: float, size: int) -> tuple[list[np.ndarray], list[int]]:
    """The letterboxed crops of ``boxes`` in ``image`` and the row of each (a box with no pixels
    in the image has none)."""
    squares, rows = [], []
    for i, box in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        crop = crop_item(image, box, margin)
        if crop is not None:
            squares.append(letterbox(crop, size))
            rows.append(i)
    return squares, rows


def defect_mask(classes: Sequence[str], defect_classes: Sequence[str]) -> np.ndarray:
    return np.array([c in defect_classes for c in classes])


def check_classes(path: Path, have: Sequence[str], classes: Sequence[str] | None) -> None:
    """Raises VerdictError when the classifier's classes ``have`` are not the detector's ``classes``."""
    if classes is not None and list(have) != list(classes):
        raise VerdictError(f"{path}: the verdict classifier's classes {', '.join(have)} are not the "
                           f"detector's ({', '.join(classes)}); retrain it with the detector (detect.train "
                           "--verdict) or remove it to use the detector's vote")


class OnnxVerdict:
    """``verdict.onnx`` on onnxruntime: the same decisions as the PyTorch classifier it was
    exported from (:class:`detect.model.verdict.VerdictClassifier`), without torch.

    Raises:
        VerdictError: not a verdict export, or its classes are not ``classes`` (the detector's).
    """

    def __init__(self, path: str | os.PathLike[str], classes: Sequence[str] | None = None, *,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        try:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map[META_KEY])
            assert meta.get("format") == FORMAT
        except Exception as exc:
            raise VerdictError(f"{path}: not a verdict classifier export ({type(exc).__name__}); export it again "
                               "with python -m detect.export --weights best.pt (verdict.pt beside it), or remove "
                               "it to use the detector's vote") from exc
        check_classes(path, meta["classes"], classes)
        self.path = path
        self.classes, self.defect_classes = list(meta["classes"]), list(meta["defect_classes"])
        self.arch, self.size, self.margin = str(meta["arch"]), int(meta["size"]), float(meta["margin"])
        self.threshold = float(meta["threshold"])
        self.max_false_reject = meta.get("max_false_reject")
        self.info: dict[str, Any] = {**dict(meta.get("info") or {}), "runtime": "onnxruntime"}

    @property
    def defect_mask(self) -> np.ndarray:
        return defect_mask(self.classes, self.defect_classes)

    def probabilities(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N, K)`` class probabilities for the ``N`` boxes of ``image`` (RGB uint8, full
        resolution); a box with no pixels in the image gets a row of NaN."""
        out = np.full((len(np.asarray(boxes).reshape(-1, 4)), len(self.classes)), np.nan)
        squares, rows = item_squares(image, boxes, margin=self.margin, size=self.size)
        if squares:
            out[rows] = self.session.run(None, {"crops": normalise(squares)})[0]
        return out

    def defect_probability(self, probs: np.ndarray) -> np.ndarray:
        """``(N,)`` the defect classes' share of each row of ``probs``."""
        return np.asarray(probs, np.float64)[:, self.defect_mask].sum(1)
