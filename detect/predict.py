"""Batched inference, and the predictions file format shared by evaluation and prediction.

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
loading any model; :func:`write_predictions` writes one from :func:`predict`'s output.

Inference
=========

:func:`predict` runs a torchvision detector in eval mode on image files, a batch at a time,
and returns one :class:`~detect.metrics.Detections` per image with the model's boxes in
pixels of the image file (the model resizes internally and maps its boxes back). Images are
decoded as :mod:`detect.data` decodes them for training (stored pixel orientation, RGB).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from detect.metrics import Detections

log = logging.getLogger(__name__)

__all__ = [
    "DetectionList",
    "PredictionsError",
    "Timing",
    "predict",
    "read_predictions",
    "write_predictions",
]


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


class DetectionList(list):
    """A ``list[Detections]`` that also carries the :class:`Timing` of the run (``.timing``)."""

    timing: Timing


def predict(
    model,
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    device,
    batch_size: int = 4,
    progress: bool = True,
    keys: Sequence[str] | None = None,
) -> DetectionList:
    """Run ``model`` on image files, ``batch_size`` images per forward pass.

    Args:
        model: a torchvision detector (e.g. from :func:`detect.checkpoint.model_from_checkpoint`);
            it is put in eval mode and moved to ``device``.
        image_paths: the image files.
        device: a ``torch.device`` or a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        batch_size: images per forward pass.
        progress: show a tqdm progress bar on stderr.
        keys: the :attr:`Detections.image` key of each image; default: the file name.

    Returns:
        A :class:`DetectionList` (a ``list[Detections]``, one per image in input order)
        with ``boxes`` ``(M, 4)`` float64 xmin/ymin/xmax/ymax in pixels of the image file,
        ``scores`` ``(M,)`` float64, ``labels`` ``(M,)`` int64 in ``1..K``; and ``.timing``.
    """
    # torch is imported here, not at the top: scoring a predictions file (read_predictions)
    # must not pay for importing it.
    import torch
    from torchvision.transforms.functional import to_tensor
    from tqdm import tqdm

    from detect.data import read_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in image_paths]
    if keys is None:
        keys = [p.name for p in paths]
    elif len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} images")
    device = torch.device(device)
    model.eval().to(device)

    out = DetectionList()
    model_seconds = 0.0
    timed = 0
    start = time.perf_counter()
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for b, first in enumerate(range(0, len(paths), batch_size)):
                batch = paths[first:first + batch_size]
                tensors = [to_tensor(read_image(p)).to(device) for p in batch]
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                outputs = model(tensors)
                # .cpu() waits for the device, so the interval covers the real work.
                outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]
                dt = time.perf_counter() - t0
                if b > 0 or len(paths) <= batch_size:
                    model_seconds += dt
                    timed += len(batch)
                for key, o in zip(keys[first:first + batch_size], outputs):
                    out.append(
                        Detections(
                            image=key,
                            boxes=o["boxes"].double().numpy(),
                            scores=o["scores"].double().numpy(),
                            labels=o["labels"].numpy().astype(np.int64),
                        )
                    )
                bar.update(len(batch))
    finally:
        bar.close()
    out.timing = Timing(
        images=len(paths), timed_images=timed, model_seconds=model_seconds,
        total_seconds=time.perf_counter() - start, batch_size=batch_size, device=str(device),
    )
    log.info(
        "predicted %d images on %s: %.1f ms/image (model), %.1f s in all",
        len(paths), device, out.timing.ms_per_image, out.timing.total_seconds,
    )
    return out


# --------------------------------------------------------------------------------------
# The predictions file


class PredictionsError(Exception):
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
        where = self.path if index is None else f"{self.path}: record {index}"
        text = f"{where}: {message}"
        if more:
            text += f" ({more} more record(s) have problems too)"
        super().__init__(text)


_FORMAT_HINT = '{"image": "<file name>", "label": "<class>", "score": 0.9, "bbox": [xmin, ymin, xmax, ymax]}'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        raise ValueError(f"'image' is {image!r}, expected the image's file name as a string")
    key = names.get(image)
    if key is None:
        raise ValueError(f"image '{image}' is not {context}; use the file name as in the XML <filename>")
    label = rec["label"]
    if not isinstance(label, str) or label not in classes:
        known = ", ".join(classes)
        got = f"'{label}'" if isinstance(label, str) else repr(label)
        raise ValueError(f"label {got} is not a class of the data ({known}); use the class name as in the XML <name>")
    score = rec["score"]
    if not _is_number(score) or not math.isfinite(score):
        raise ValueError(f"score is {score!r}; it must be a finite number")
    box = rec["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"bbox is {box!r}; it must be [xmin, ymin, xmax, ymax], four numbers in pixels")
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"bbox {box!r} holds a NaN or infinite coordinate")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(
            f"bbox {box!r} has xmax < xmin or ymax < ymin; the order is [xmin, ymin, xmax, ymax] "
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
            lines.append(json.dumps({
                "image": d.image,
                "label": classes[label - 1],
                "score": float(d.scores[j]),
                "bbox": [float(v) for v in d.boxes[j]],
            }))
    text = "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
