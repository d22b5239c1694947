"""The types every stage passes around: one image's ground truth and one image's detections.

Boxes are ``(xmin, ymin, xmax, ymax)`` float64 in pixels of the original image (continuous
coordinates, no ``+1``); labels are ``1..K`` where label ``i`` is ``classes[i - 1]`` and 0
(background) is never a label. Pure numpy: every layer may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Detections", "GroundTruth", "as_boxes"]


def as_boxes(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4), got {arr.shape}")
    return arr


def _as_vector(value: Any, n: int, dtype, what: str, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what}: {name} has {arr.shape[0]} entries for {n} boxes")
    return arr


@dataclass
class GroundTruth:
    """The annotated objects of one image.

    Attributes:
        image: the image's key (the file name as in the XML ``<filename>``); unique per
            evaluation.
        boxes: ``(N, 4)`` float64 ``xmin, ymin, xmax, ymax`` in pixels of the original image.
        labels: ``(N,)`` int64 in ``1..K``.
        difficult: ``(N,)`` bool; difficult objects are neither rewarded nor penalised.
            Defaults to all False.

    Inputs are converted to those dtypes; N may be 0.
    """

    image: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None

    def __post_init__(self) -> None:
        what = f"ground truth of {self.image!r}"
        self.boxes = as_boxes(self.boxes, what)
        n = self.boxes.shape[0]
        self.labels = _as_vector(self.labels, n, np.int64, what, "labels")
        if self.difficult is None:
            self.difficult = np.zeros(n, dtype=bool)
        self.difficult = _as_vector(self.difficult, n, bool, what, "difficult")


@dataclass
class Detections:
    """The detections of one image.

    Attributes:
        image: the key of the image (as in :attr:`GroundTruth.image`).
        boxes: ``(M, 4)`` float64 ``xmin, ymin, xmax, ymax`` in pixels of the original image.
        scores: ``(M,)`` float64 confidences; higher is more confident.
        labels: ``(M,)`` int64 in ``1..K``.

    Inputs are converted to those dtypes; M may be 0.
    """

    image: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        what = f"detections of {self.image!r}"
        self.boxes = as_boxes(self.boxes, what)
        n = self.boxes.shape[0]
        self.scores = _as_vector(self.scores, n, np.float64, what, "scores")
        self.labels = _as_vector(self.labels, n, np.int64, what, "labels")
