"""Reading image files: the one decoding path of training, evaluation and prediction.

* :func:`read_image` decodes a file to an ``H x W x 3`` uint8 **RGB** array with OpenCV,
  **upright**: the EXIF orientation tag (2-8) is applied, as LabelImg 1.8.4+ (Qt's
  ``QImageReader.setAutoTransform``), OpenCV's ``imread``, PIL's ``exif_transpose`` and
  browsers do, so boxes drawn in LabelImg refer to these pixels. Any other tag value
  (missing, 1, 0, 65537, garbage) is no rotation.
* :func:`image_size` reads the upright ``(width, height)`` from the header without decoding.

``exif="ignore"`` (the dataset-level ``--exif ignore`` switch) reads the stored pixels and
size instead, for data known to be annotated by an EXIF-unaware tool. :func:`exif_box` maps
a box from the stored frame into the upright one (the checker's fix).

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
import re
import warnings

import cv2
import numpy as np
from PIL import Image

from detect.common.errors import UsageError, show
from detect.common.files import is_regular, read_regular

__all__ = [
    "EXIF_MODES",
    "MAX_PIXELS",
    "ImageError",
    "check_exif_mode",
    "exif_box",
    "image_size",
    "orientation_of",
    "read_image",
    "upright_size",
]

EXIF_MODES = ("apply", "ignore")
"""``apply`` (the default): images and boxes in the upright frame LabelImg 1.8.4+ shows;
``ignore``: the stored pixels, for data annotated by an EXIF-unaware tool."""

_ORIENTATION_TAG = 0x0112
_SWAPS = (5, 6, 7, 8)  # tags that turn the image by 90 degrees: width and height swap

MAX_PIXELS = 2 * 89_478_485
"""Larger images are refused before decoding (Pillow's own refusal limit, twice
``PIL.Image.MAX_IMAGE_PIXELS``: about 179 megapixels; a 13,000 x 13,000 photo passes, and
no camera at a production line takes larger)."""


class ImageError(UsageError):
    """An image file that cannot be read or decoded; the message names it and the fix."""


def _reason(exc: BaseException) -> str:
    """Pillow's words without the in-memory buffer it names (``cannot identify image file
    <_io.BytesIO object at 0x...>``): the message names the file already."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
    if text.startswith("cannot identify image file"):
        return "not an image file, or a format Pillow does not know"
    return show(text)


def check_exif_mode(exif: str) -> str:
    if exif not in EXIF_MODES:
        raise ValueError(f"exif must be one of {EXIF_MODES}, got {exif!r}")
    return exif


def orientation_of(im: Image.Image) -> int:
    """The EXIF orientation of an open Pillow image: 2-8, or 1 for a missing, broken or
    invalid tag (every reader shows such a file unrotated)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is not the image's problem
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The ``(width, height)`` an image of stored ``width x height`` shows with ``orientation``."""
    return (height, width) if orientation in _SWAPS else (width, height)


def exif_box(box, width: float, height: float, orientation: int) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` drawn on the stored ``width x height`` pixels, mapped
    into the upright frame of ``orientation`` (what an EXIF-unaware tool drew, as LabelImg
    1.8.4+ shows it)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    W, H = float(width), float(height)

    def point(x: float, y: float) -> tuple[float, float]:
        return {
            2: (W - x, y),
            3: (W - x, H - y),
            4: (x, H - y),
            5: (y, x),
            6: (H - y, x),
            7: (H - y, W - x),
            8: (y, W - x),
        }.get(orientation, (x, y))

    (a, b), (c, d) = point(x0, y0), point(x1, y1)
    return (min(a, c), min(b, d), max(a, c), max(b, d))


def _upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned to how EXIF-aware readers show them (as PIL's exif_transpose)."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def _header(path: str | os.PathLike[str], data: bytes | None = None) -> tuple[int, int, int]:
    """Stored ``(width, height, orientation)`` from the header of ``path`` (or of ``data``)."""
    try:
        if data is None and not is_regular(path):
            raise OSError(errno.EINVAL, "not a regular file" if os.path.exists(path) else "no such file")
        with warnings.catch_warnings():
            # Pillow warns from half the limit on; the limit itself is what we enforce.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                width, height = im.size
                orientation = orientation_of(im)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{show(path)}: the image is too large to decode safely ({exc}); a file like this is damaged or a "
            "decompression bomb: resize it or remove it"
        ) from None
    except OSError as exc:
        raise ImageError(f"{show(path)}: cannot be read as an image ({exc.strerror or _reason(exc)}); "
                         "re-export it or remove it") from None
    except Exception as exc:  # Pillow raises many kinds for damaged files; all mean "unreadable"
        raise ImageError(f"{show(path)}: cannot be read as an image ({type(exc).__name__}: {_reason(exc)}); "
                         "re-export it or remove it") from None
    if width * height > MAX_PIXELS:  # a limit Pillow was told to lift elsewhere in this process
        raise ImageError(
            f"{show(path)}: the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit (a file this large is damaged or a decompression bomb); "
            "resize it or remove it"
        )
    return width, height, orientation


def image_size(path: str | os.PathLike[str], *, exif: str = "apply") -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels:
    upright (the EXIF orientation applied), or as stored with ``exif="ignore"``."""
    width, height, orientation = _header(path)
    return upright_size(width, height, orientation) if check_exif_mode(exif) == "apply" else (width, height)


def read_image(path: str | os.PathLike[str], *, exif: str = "apply") -> np.ndarray:
    """An image file as an ``H x W x 3`` uint8 RGB array, upright (the EXIF orientation
    applied; ``exif="ignore"``: the stored pixels).

    Raises:
        ImageError: the file cannot be read, is too large, or cannot be decoded.
    """
    try:
        data = read_regular(path)
    except OSError as exc:
        raise ImageError(f"{show(path)}: cannot be read ({exc.strerror or exc}); check the file") from None
    check_exif_mode(exif)
    _, _, orientation = _header(path, data)  # the size is checked before OpenCV allocates the pixels
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buffer.size else None
    if image is None:
        raise ImageError(f"{show(path)}: cannot be decoded as an image; re-export it or remove it from the dataset")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return _upright(image, orientation) if exif == "apply" else image
