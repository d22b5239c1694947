"""Running a detector: tensors in, :class:`~detect.metrics.Detections` out.

The one inference path of the project. Training's validation (:func:`detect.engine.evaluate`),
``detect.eval`` (:func:`predict` on image files) and prediction all go through
:func:`infer_batches`, and :func:`to_detections` is the one conversion of the model's
output tensors.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image tensor given to the model
(the model resizes internally and maps its boxes back): for images decoded at their stored
size, pixels of the image file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from detect.evaluation import Timing
from detect.images import read_image
from detect.metrics import Detections

log = logging.getLogger(__name__)

__all__ = ["DetectionList", "image_tensor", "infer_batches", "predict", "to_detections"]


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An ``H x W x 3`` uint8 RGB array as the model's input: ``FloatTensor[3, H, W]`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_detections(key: str, output: Mapping[str, torch.Tensor]) -> Detections:
    """One image's model output (``boxes [M, 4]``, ``scores [M]``, ``labels [M]``) as
    :class:`Detections` keyed ``key`` (float64 boxes and scores, int64 labels ``1..K``)."""
    return Detections(
        image=key,
        boxes=output["boxes"].detach().double().cpu().numpy(),
        scores=output["scores"].detach().double().cpu().numpy(),
        labels=output["labels"].detach().cpu().numpy().astype(np.int64),
    )


@torch.inference_mode()
def infer_batches(
    model, batches: Iterable[tuple[Sequence[str], Sequence[torch.Tensor]]], *, device: torch.device
) -> Iterator[tuple[list[Detections], float]]:
    """Run ``model`` (put in eval mode) on each batch of ``(keys, images)``.

    ``images`` are ``FloatTensor[3, H, W]`` in ``[0, 1]`` of any sizes. Yields, per batch,
    the detections in input order and the seconds spent in the model (forward pass and
    copying its outputs back; the copy waits for the device, so the interval covers the
    real work).
    """
    model.eval()
    for keys, images in batches:
        tensors = [im.to(device, non_blocking=True) for im in images]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        outputs = [{k: v.cpu() for k, v in o.items()} for o in model(tensors)]
        seconds = time.perf_counter() - t0
        yield [to_detections(key, o) for key, o in zip(keys, outputs)], seconds


class DetectionList(list):
    """A ``list[Detections]`` that also carries the :class:`~detect.evaluation.Timing` of the
    run (``.timing``)."""

    timing: Timing


def predict(
    model,
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    device: torch.device | str,
    batch_size: int = 4,
    progress: bool = True,
    keys: Sequence[str] | None = None,
) -> DetectionList:
    """Run ``model`` on image files, ``batch_size`` images per forward pass.

    Args:
        model: a torchvision detector (e.g. from :func:`detect.model.model_from_checkpoint`);
            it is put in eval mode and moved to ``device``.
        image_paths: the image files, decoded by :func:`detect.images.read_image`.
        device: a ``torch.device`` or a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        batch_size: images per forward pass.
        progress: show a tqdm progress bar on stderr.
        keys: the :attr:`Detections.image` key of each image; default: the file name.

    Returns:
        A :class:`DetectionList` (a ``list[Detections]``, one per image in input order)
        with ``boxes`` ``(M, 4)`` float64 xmin/ymin/xmax/ymax in pixels of the image file,
        ``scores`` ``(M,)`` float64, ``labels`` ``(M,)`` int64 in ``1..K``; and ``.timing``,
        where the first batch is left out when there is more than one (it pays one-off
        costs: memory allocation, kernel selection).

    Raises:
        detect.images.ImageError: an image cannot be decoded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in image_paths]
    if keys is None:
        keys = [p.name for p in paths]
    elif len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} images")
    device = torch.device(device)
    model.eval().to(device)

    def batches():
        for first in range(0, len(paths), batch_size):
            chunk = paths[first:first + batch_size]
            yield keys[first:first + batch_size], [image_tensor(read_image(p)) for p in chunk]

    out = DetectionList()
    model_seconds = 0.0
    timed = 0
    start = time.perf_counter()
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False) as bar:
        for b, (dets, seconds) in enumerate(infer_batches(model, batches(), device=device)):
            if b > 0 or len(paths) <= batch_size:
                model_seconds += seconds
                timed += len(dets)
            out.extend(dets)
            bar.update(len(dets))
    out.timing = Timing(
        images=len(paths), timed_images=timed, model_seconds=model_seconds,
        total_seconds=time.perf_counter() - start, batch_size=batch_size, device=str(device),
    )
    log.info(
        "predicted %d images on %s: %.1f ms/image (model), %.1f s in all",
        len(paths), device, out.timing.ms_per_image, out.timing.total_seconds,
    )
    return out
