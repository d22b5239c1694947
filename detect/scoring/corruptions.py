"""The image corruptions a line camera produces, at three severities, for the robustness report
(``python -m detect.eval --corruptions``; tables in :mod:`detect.scoring.robustness`).

Each corruption is an albumentations pixel-level transform with its parameters fixed per
severity (no random range), applied with a seed derived from the image's key, the corruption
and the severity (:func:`corrupt`): the same image is corrupted the same way on every run and
by every model compared. Pixel-level transforms leave the image size and the boxes as they are.

Why these (ImageNet-C's kinds, chosen for a camera over a conveyor):

* ``gaussian_noise``: sensor read noise, high gain in a dim enclosure;
* ``shot_noise``: photon noise, grows with short exposures (fast belts);
* ``motion_blur``: the belt moves during the exposure (horizontal streaks);
* ``defocus_blur``: the lens focused for another product height, or a dirty window;
* ``jpeg``: cameras and network video recorders that compress hard;
* ``brightness``: over-exposure (sunlight through a door, a new lamp);
* ``dark``: under-exposure (a failing lamp, a night shift with the hall lights off);
* ``contrast``: a hazy, fogged or dusty window flattens the image.

This module imports albumentations (not torch).
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import (line PCs are offline)

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["CORRUPTIONS", "SEVERITIES", "check_names", "corrupt", "corruption", "psnr"]

SEVERITIES = (1, 2, 3)

# name -> (severity -> transform); the parameters grow with the severity.
_MAKERS: dict[str, Callable[[int], A.BasicTransform]] = {
    "gaussian_noise": lambda s: A.GaussNoise(std_range=((0.04, 0.08, 0.14)[s - 1],) * 2, p=1.0),
    "shot_noise": lambda s: A.ShotNoise(scale_range=((0.005, 0.02, 0.05)[s - 1],) * 2, p=1.0),
    "motion_blur": lambda s: A.MotionBlur(blur_limit=((5, 9, 15)[s - 1],) * 2, angle_range=(0, 0),
                                          direction_range=(0, 0), allow_shifted=False, p=1.0),
    "defocus_blur": lambda s: A.Defocus(radius=((2, 4, 6)[s - 1],) * 2, alias_blur=(0.1, 0.1), p=1.0),
    "jpeg": lambda s: A.ImageCompression(quality_range=((25, 12, 6)[s - 1],) * 2, p=1.0),
    "brightness": lambda s: A.RandomBrightnessContrast(brightness_limit=((0.2, 0.35, 0.5)[s - 1],) * 2,
                                                       contrast_limit=(0, 0), p=1.0),
    "dark": lambda s: A.RandomBrightnessContrast(brightness_limit=((-0.2, -0.35, -0.5)[s - 1],) * 2,
                                                 contrast_limit=(0, 0), p=1.0),
    "contrast": lambda s: A.RandomBrightnessContrast(brightness_limit=(0, 0),
                                                     contrast_limit=((-0.4, -0.6, -0.75)[s - 1],) * 2, p=1.0),
}
CORRUPTIONS = tuple(_MAKERS)


def check_names(names: list[str] | None) -> list[str]:
    """The corruptions asked for (all when ``names`` is empty or None), in :data:`CORRUPTIONS`
    order. Raises ValueError naming an unknown one and the choices."""
    if not names:
        return list(CORRUPTIONS)
    unknown = [n for n in names if n not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown corruption {unknown[0]!r}; choose from {', '.join(CORRUPTIONS)}")
    return [n for n in CORRUPTIONS if n in names]


def corruption(name: str, severity: int) -> A.Compose:
    """The transform of ``name`` at ``severity`` (1-3): pixel-level only, so a box pipeline
    around it leaves the boxes as they are."""
    if name not in _MAKERS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return A.Compose([_MAKERS[name](severity)])


def _seed(key: str, name: str, severity: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}|{name}|{severity}".encode()).digest()[:4], "little")


def corrupt(image: np.ndarray, name: str, severity: int, key: str, *, transform: A.Compose | None = None) -> np.ndarray:
    """``image`` (HxWx3 uint8) with corruption ``name`` at ``severity``, seeded by ``key`` (the
    image's name): deterministic. ``transform``: :func:`corruption`'s, made once for many images."""
    t = transform if transform is not None else corruption(name, severity)
    t.set_random_seed(_seed(key, name, severity))
    return t(image=image)["image"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
