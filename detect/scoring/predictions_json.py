"""The predictions file format: what a detector found, as JSON, scored by ``detect.eval``.

Predictions format
==================

A UTF-8 JSON file holding one list of records, one record per detected box::

    [
      {"image": "BloodImage_00012.jpg", "label": "RBC", "score": 0.973, "bbox": [48.0, 240.5, 195.0, 371.0]},
      {"image": "BloodImage_00012.jpg", "label": "WBC", "score": 0.41,  "bbox": [260, 177, 491, 376]}
    ]

``image``
    The image's file name as written in its VOC XML ``<filename>`` (the image file's own
    name, the XML's sample id, e.g. ``BloodImage_00012``, or its path relative to the
    dataset folder are accepted too, when they name one image unambiguously).
``label``
    The class name, exactly as in the XML ``<name>``.
``score``
    The confidence, a finite number; higher is more confident. Any range works (only the
    order matters for AP; ``--conf`` thresholds compare with it directly).
``bbox``
    ``[xmin, ymin, xmax, ymax]`` in pixels of the **original** image (not the model's
    resized input), continuous coordinates, ``xmin <= xmax`` and ``ymin <= ymax``.

Other keys in a record are ignored. An image with no record has no detections (every object
in it is a miss). Keep every detection down to a low score (0.05, as the detector does):
AP measures the whole precision-recall curve, and cutting at 0.5 lowers it.

``python -m detect.eval --data DIR --predictions FILE.json`` scores such a file without
loading any model; :func:`write_predictions` writes one from a detector's
:class:`~detect.scoring.metrics.Detections`.

Torch-free: a predictions file is scored on a machine without torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import reprlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from detect.common.errors import DetectError, show
from detect.common.files import write_atomic
from detect.common.types import Detections

log = logging.getLogger(__name__)

__all__ = ["PredictionsError", "read_predictions", "write_predictions"]


class PredictionsError(DetectError):
    """A predictions file that cannot be scored: ``file: record N: what is wrong and what to do``.

    Attributes:
        path: the file.
        index: 0-based index of the first bad record, or None for a problem with the file.
        message: what is wrong with it.
        more: how many further records have problems.
    """

    def __init__(self, path: str | os.PathLike[str], index: int | None, message: str, *, more: int = 0) -> None:
        self.path = str(path)
        self.index = index
        self.message = message
        self.more = more
        where = show(self.path) if index is None else f"{show(self.path)}: record {index}"
        text = f"{show(where)}: {message}"
        if more:
            text += f" ({more} more record(s) have problems too)"
        super().__init__(text)


_FORMAT_HINT = '{"image": "<file name>", "label": "<class>", "score": 0.9, "bbox": [xmin, ymin, xmax, ymax]}'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: float | int) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer with hundreds of digits
        return False


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxdict = 6


def _short(value: Any) -> str:
    """A value from the file for a message: shortened (a file can hold megabytes in one
    field) and with control characters escaped."""
    return show(_REPR.repr(value))


def _check_record(
    rec: Any, *, names: Mapping[str, str], classes: Mapping[str, int], context: str
) -> tuple[str, int, float, list[float]]:
    """Validate one record; returns ``(image key, label, score, box)`` or raises ValueError."""
    if not isinstance(rec, dict):
        raise ValueError(f"is a JSON {type(rec).__name__}, expected an object like {_FORMAT_HINT}")
    missing = [k for k in ("image", "label", "score", "bbox") if k not in rec]
    if missing:
        raise ValueError(f"lacks {', '.join(repr(k) for k in missing)}; every record is {_FORMAT_HINT}")
    image = rec["image"]
    if not isinstance(image, str):
        raise ValueError(f"'image' is {_short(image)}, expected the image's file name as a string")
    key = names.get(image)
    if key is None:
        raise ValueError(f"image {_short(image)} is not {context}; use the file name as in the XML <filename>")
    label = rec["label"]
    if not isinstance(label, str) or label not in classes:
        known = ", ".join(show(c) for c in classes)
        got = _short(label)
        raise ValueError(f"label {got} is not a class of the data ({known}); use the class name as in the XML <name>")
    score = rec["score"]
    if not _is_number(score) or not _finite(score):
        raise ValueError(f"score is {_short(score)}; it must be a finite number")
    box = rec["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"bbox is {_short(box)}; it must be [xmin, ymin, xmax, ymax], four numbers in pixels")
    if not all(_finite(v) for v in box):
        raise ValueError(f"bbox {_short(box)} holds a NaN, infinite or too large coordinate")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(
            f"bbox {_short(box)} has xmax < xmin or ymax < ymin; the order is [xmin, ymin, xmax, ymax] "
            "(a [x, y, width, height] box must be converted)"
        )
    return key, classes[label], float(score), [float(v) for v in box]


def read_predictions(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str],
    images: Sequence[str] | Mapping[str, str],
    context: str = "among the images evaluated",
) -> list[Detections]:
    """Read and validate a predictions file (the format in the module docstring).

    Args:
        path: the JSON file.
        classes: class names; a record's label ``classes[i]`` becomes label ``i + 1``.
        images: the image keys evaluated, or a mapping from every accepted name (file name,
            sample id, ...) to its key.
        context: completes "image 'x' is not ..." in the error for an unknown image.

    Returns:
        One :class:`Detections` per distinct image key, in the order the keys first occur
        in ``images`` (images without records get empty ones); within an image, records keep
        file order. Boxes ``(M, 4)`` float64 xmin/ymin/xmax/ymax in original-image pixels.

    Raises:
        PredictionsError: the file cannot be read or is not valid JSON or not a list, or a
            record is malformed (the first bad record is named; the count of others is given).
    """
    path = Path(path)
    names = dict(images) if isinstance(images, Mapping) else {k: k for k in images}
    label_of = {c: i + 1 for i, c in enumerate(classes)}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PredictionsError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PredictionsError(path, None, "is not UTF-8 text; write the predictions as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PredictionsError(
            path, None, f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise PredictionsError(
            path, None, "nests lists or objects thousands of levels deep; a predictions file is a flat list "
            f"of records {_FORMAT_HINT}"
        ) from None
    except ValueError:  # Python refuses to convert integers of over 4300 digits
        raise PredictionsError(path, None, "holds a number with thousands of digits; write scores and "
                               "coordinates as ordinary numbers") from None
    if not isinstance(data, list):
        raise PredictionsError(
            path, None, f"holds a JSON {type(data).__name__}; it must be a list of records {_FORMAT_HINT}"
        )

    grouped: dict[str, tuple[list, list, list]] = {key: ([], [], []) for key in names.values()}
    first_error: tuple[int, str] | None = None
    bad = 0
    for i, rec in enumerate(data):
        try:
            key, label, score, box = _check_record(rec, names=names, classes=label_of, context=context)
        except ValueError as exc:
            bad += 1
            if first_error is None:
                first_error = (i, str(exc))
            continue
        boxes, scores, labels = grouped[key]
        boxes.append(box)
        scores.append(score)
        labels.append(label)
    if first_error is not None:
        raise PredictionsError(path, first_error[0], first_error[1], more=bad - 1)
    log.debug("%s: %d predictions on %d images", path, len(data), sum(1 for g in grouped.values() if g[0]))
    return [
        Detections(image=key, boxes=np.array(b, dtype=np.float64).reshape(-1, 4),
                   scores=np.array(s, dtype=np.float64), labels=np.array(lab, dtype=np.int64))
        for key, (b, s, lab) in grouped.items()
    ]


def write_predictions(
    path: str | os.PathLike[str], detections: Sequence[Detections], classes: Sequence[str]
) -> Path:
    """Write detections in the predictions format (atomically), one record per line,
    images in the given order and each image's boxes by descending score.

    Floats are written in full precision, so :func:`read_predictions` returns the same numbers.
    """
    path = Path(path)
    lines = []
    for d in detections:
        order = np.argsort(-d.scores, kind="stable")
        for j in order:
            label = int(d.labels[j])
            if not 1 <= label <= len(classes):
                raise ValueError(f"detection on {d.image!r} has label {label}, outside 1..{len(classes)}")
            record = {
                "image": d.image,
                "label": classes[label - 1],
                "score": float(d.scores[j]),
                "bbox": [float(v) for v in d.boxes[j]],
            }
            if d.anomaly is not None and np.isfinite(d.anomaly[j]):  # with an anomaly bank (detect.anomaly)
                record["anomaly"] = float(d.anomaly[j])
            lines.append(json.dumps(record))
    text = "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n"
    return write_atomic(path, text)
