"""Running a detector: tensors in, :class:`~detect.scoring.metrics.Detections` out.

The one inference path of the project. Training's validation (:func:`detect.training.engine.evaluate`),
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

from detect.common.types import Timing
from detect.data.images import read_image
from detect.data.tensors import image_tensor
from detect.common.types import Detections

log = logging.getLogger(__name__)

__all__ = [
    "TEST_SETTINGS",
    "DetectionList",
    "TorchDetector",
    "infer_batches",
    "predict",
    "set_test_settings",
    "test_settings",
    "to_detections",
]


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
    """A ``list[Detections]`` that also carries the :class:`~detect.common.types.Timing` of the
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
        model: a torchvision detector (e.g. from :func:`detect.model.build.model_from_checkpoint`);
            it is put in eval mode and moved to ``device``.
        image_paths: the image files, decoded by :func:`detect.data.images.read_image`.
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
        detect.data.images.ImageError: an image cannot be decoded.
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


# What a trained model lets change at inference time (the speed levers), with the
# torchvision attribute each lives in.
TEST_SETTINGS = ("input_size", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_score_thresh",
                 "box_score_thresh", "box_nms_thresh", "box_detections_per_img")


def test_settings(model) -> dict[str, float | int]:
    """The inference-time settings of a torchvision Faster R-CNN (names as :data:`TEST_SETTINGS`)."""
    return {
        "input_size": int(model.transform.max_size),
        "rpn_pre_nms_top_n_test": int(model.rpn._pre_nms_top_n["testing"]),
        "rpn_post_nms_top_n_test": int(model.rpn._post_nms_top_n["testing"]),
        "rpn_score_thresh": float(model.rpn.score_thresh),
        "box_score_thresh": float(model.roi_heads.score_thresh),
        "box_nms_thresh": float(model.roi_heads.nms_thresh),
        "box_detections_per_img": int(model.roi_heads.detections_per_img),
    }


def set_test_settings(model, **settings: float | int | None) -> dict[str, float | int]:
    """Change inference-time settings in place (None leaves one as it is); returns them all.

    ``input_size`` is the longest side the model resizes to (``min_size = max_size``, as
    :func:`detect.model.build.build_model` sets it); the proposal counts are per image.

    Raises:
        ValueError: an unknown setting.
    """
    unknown = set(settings) - set(TEST_SETTINGS)
    if unknown:
        raise ValueError(f"unknown test settings {sorted(unknown)}; known: {', '.join(TEST_SETTINGS)}")
    s = {k: v for k, v in settings.items() if v is not None}
    if "input_size" in s:
        model.transform.min_size = (int(s["input_size"]),)
        model.transform.max_size = int(s["input_size"])
    if "rpn_pre_nms_top_n_test" in s:
        model.rpn._pre_nms_top_n["testing"] = int(s["rpn_pre_nms_top_n_test"])
    if "rpn_post_nms_top_n_test" in s:
        model.rpn._post_nms_top_n["testing"] = int(s["rpn_post_nms_top_n_test"])
    if "rpn_score_thresh" in s:
        model.rpn.score_thresh = float(s["rpn_score_thresh"])
    if "box_score_thresh" in s:
        model.roi_heads.score_thresh = float(s["box_score_thresh"])
    if "box_nms_thresh" in s:
        model.roi_heads.nms_thresh = float(s["box_nms_thresh"])
    if "box_detections_per_img" in s:
        model.roi_heads.detections_per_img = int(s["box_detections_per_img"])
    return test_settings(model)


class TorchDetector:
    """A :class:`detect.inference.predictor.Detector` on a PyTorch model (eager mode).

    Args:
        model: a torchvision detector (e.g. from :func:`detect.model.build.model_from_checkpoint`).
        classes: class names; label ``i`` is ``classes[i - 1]``.
        device: where it runs.
        batch_size: images per forward pass the predictor should send.
        info: facts for summaries (run, backbone, ...); the test settings are added.
        meta: the checkpoint's record of its training (everything but the weights and the
            optimizer state), as :class:`detect.inference.predictor.Detector` describes.
    """

    def __init__(self, model, *, classes: Sequence[str], device: torch.device | str = "cpu", batch_size: int = 1,
                 info: Mapping[str, object] | None = None, meta: Mapping[str, object] | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.classes = tuple(classes)
        self.batch_size = batch_size
        self.info = {"format": "pytorch", "device": str(self.device), **(info or {}), **test_settings(model)}
        self.meta = dict(meta or {"classes": list(self.classes)})

    def detect(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[Detections]:
        """Detections for ``H x W x 3`` uint8 RGB images, one forward pass for all of them."""
        from detect.inference.onnx_runtime import shrink_for_model

        shrunk = [shrink_for_model(im, int(self.model.transform.max_size)) for im in images]
        batch = (list(keys), [image_tensor(im) for im, _ in shrunk])
        dets, _ = next(infer_batches(self.model, [batch], device=self.device))
        return [d if back == 1.0 else Detections(d.image, d.boxes * back, d.scores, d.labels)
                for d, (_, back) in zip(dets, shrunk)]
