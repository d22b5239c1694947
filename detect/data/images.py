"""Reading image files: the one decoding path of training, evaluation and prediction.

* :func:`read_image` decodes a file to an ``H x W x 3`` uint8 **RGB** array with OpenCV,
  in the stored pixel orientation (EXIF orientation is *not* applied: LabelImg shows, and
  boxes refer to, the stored pixels; the checker warns about files with an orientation
  tag).
* :func:`image_size` reads ``(width, height)`` from the header without decoding.

Both read regular files only, refuse images over :data:`MAX_PIXELS` before decoding them
(a "decompression bomb": a small file that decodes to gigabytes), and raise
:class:`ImageError` naming the file, what is wrong and what to do, for every way a file can
fail to decode.

Torch-free (numpy, OpenCV, Pillow).
"""

from __future__ import annotations

import errno
import io
import os
import warnings

import cv2
import numpy as np
from PIL import Image

from detect.common.errors import UsageError
from detect.common.files import is_regular, read_regular

__all__ = ["MAX_PIXELS", "ImageError", "image_size", "read_image"]

MAX_PIXELS = 2 * 89_478_485
"""Larger images are refused before decoding (Pillow's own refusal limit, twice
``PIL.Image.MAX_IMAGE_PIXELS``: about 179 megapixels; a 13,000 x 13,000 photo passes, and
no camera at a production line takes larger)."""


class ImageError(UsageError):
    """An image file that cannot be read or decoded; the message names it and the fix."""


def _header_size(path: str | os.PathLike[str], data: bytes | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header of ``path`` (or of ``data``, its bytes)."""
    try:
        if data is None and not is_regular(path):
            raise OSError(errno.EINVAL, "not a regular file" if os.path.exists(path) else "no such file")
        with warnings.catch_warnings():
            # Pillow warns from half the limit on; the limit itself is what we enforce.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{path}: the image is too large to decode safely ({exc}); a file like this is damaged or a "
            "decompression bomb: resize it or remove it"
        ) from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc.strerror or exc}); "
                         "re-export it or remove it") from None
    except Exception as exc:  # Pillow raises many kinds for damaged files; all mean "unreadable"
        raise ImageError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); "
                         "re-export it or remove it") from None
    if width * height > MAX_PIXELS:  # a limit Pillow was told to lift elsewhere in this process
        raise ImageError(
            f"{path}: the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit (a file this large is damaged or a decompression bomb); "
            "resize it or remove it"
        )
    return width, height


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels."""
    return _header_size(path)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an ``H x W x 3`` uint8 RGB array (stored orientation).

    Raises:
        ImageError: the file cannot be read, is too large, or cannot be decoded.
    """
    try:
        data = read_regular(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc}); check the file") from None
    _header_size(path, data)  # the size is checked before OpenCV allocates the pixels
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buffer.size else None
    if image is None:
        raise ImageError(f"{path}: cannot be decoded as an image; re-export it or remove it from the dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
