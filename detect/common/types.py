"""The types every stage passes around: one image's ground truth and one image's detections.

Boxes are ``(xmin, ymin, xmax, ymax)`` float64 in pixels of the original image (continuous
coordinates, no ``+1``); labels are ``1..K`` where label ``i`` is ``classes[i - 1]`` and 0
(background) is never a label. Pure numpy: every layer may import this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Detections", "GroundTruth", "Timing", "as_boxes", "default_defect_classes", "is_defect_class"]


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
        anomaly: ``(M,)`` float64 anomaly scores (:mod:`detect.model.anomaly`; NaN: none for
            that class), or None when no anomaly bank is in use.

    Inputs are converted to those dtypes; M may be 0.
    """

    image: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    anomaly: np.ndarray | None = None

    def __post_init__(self) -> None:
        what = f"detections of {self.image!r}"
        self.boxes = as_boxes(self.boxes, what)
        n = self.boxes.shape[0]
        self.scores = _as_vector(self.scores, n, np.float64, what, "scores")
        self.labels = _as_vector(self.labels, n, np.int64, what, "labels")
        if self.anomaly is not None:
            self.anomaly = _as_vector(self.anomaly, n, np.float64, what, "anomaly")


@dataclass
class Timing:
    """How long inference took.

    Attributes:
        images: images predicted.
        timed_images: images whose batches were timed. The first batch is left out of the
            timing when there is more than one (it pays one-off costs: memory allocation,
            kernel selection), so this is ``images - batch_size`` then.
        model_seconds: time inside the model (forward pass and copying its outputs back)
            for the timed images.
        total_seconds: wall time of the whole call, image decoding included.
        batch_size: images per forward pass.
        device: where the model ran.
    """

    images: int
    timed_images: int
    model_seconds: float
    total_seconds: float
    batch_size: int
    device: str

    @property
    def ms_per_image(self) -> float:
        """Model time per image in milliseconds (NaN when nothing was timed)."""
        return 1000.0 * self.model_seconds / self.timed_images if self.timed_images else math.nan

    @property
    def images_per_second(self) -> float:
        """Model throughput (NaN when nothing was timed)."""
        return self.timed_images / self.model_seconds if self.timed_images and self.model_seconds > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "timed_images": self.timed_images,
            "model_seconds": self.model_seconds,
            "total_seconds": self.total_seconds,
            "ms_per_image": self.ms_per_image,
            "images_per_second": self.images_per_second,
            "batch_size": self.batch_size,
            "device": self.device,
        }


DEFECT_WORDS = ("defect", "damage", "broken", "crack")


def is_defect_class(name: str) -> bool:
    """Whether a class name names a defect (it contains defect, damage, broken or crack:
    ``Lata_defectuosa``, ``bottle_defective``, ``broken_neck``)."""
    return any(w in name.lower() for w in DEFECT_WORDS)


def default_defect_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The classes drawn in the warning colour and counted as defects, by name
    (:func:`is_defect_class`); ``--defect-classes`` names them explicitly."""
    return tuple(c for c in classes if is_defect_class(c))
