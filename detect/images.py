"""Reading image files: the one decoding path of training, evaluation and prediction.

* :func:`read_image` decodes a file to an ``H x W x 3`` uint8 **RGB** array with OpenCV,
  in the stored pixel orientation (EXIF orientation is *not* applied: LabelImg shows, and
  boxes refer to, the stored pixels; the checker warns about files with an orientation
  tag).
* :func:`image_size` reads ``(width, height)`` from the header without decoding.

Both raise :class:`ImageError` naming the file, what is wrong and what to do, for every
way a file can fail to decode.

Torch-free (numpy, OpenCV, Pillow).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from detect.errors import UsageError

__all__ = ["ImageError", "image_size", "read_image"]


class ImageError(UsageError):
    """An image file that cannot be read or decoded; the message names it and the fix."""


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc}); re-export it or remove it") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an ``H x W x 3`` uint8 RGB array (stored orientation).

    Raises:
        ImageError: the file cannot be decoded.
    """
    # np.fromfile + imdecode also reads paths with non-ASCII names on Windows.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ImageError(f"{path}: cannot be decoded as an image; re-export it or remove it from the dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
