"""Training the verdict classifier (:mod:`detect.model.verdict`) from the detector's VOC boxes.

Every box of the training split becomes one example: its crop from the original image (at the
image's own resolution), with what a line's camera does to it: the box shifted and resized a
little (a tracker's box is never exact), brighter or darker, lower or higher contrast, a
little blurred (motion, focus), mirrored. :func:`train_verdict` runs a plain loop
(:func:`train_one_epoch`, as readable as torchvision's reference script's) and returns the
:class:`~detect.model.verdict.VerdictClassifier`; with ``max_false_reject`` its threshold is
chosen on the validation split's intact boxes so that at most that share of them is flagged.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detect.common.errors import UsageError
from detect.data.images import read_image
from detect.data.records import Record
from detect.inference.predictor import default_defect_classes
from detect.line.verdict import threshold_for_false_reject
from detect.model.verdict import (DEFAULT_SIZE, MARGIN, VerdictClassifier, build_verdict, crop_item, crops_tensor,
                                  letterbox)

log = logging.getLogger(__name__)

__all__ = ["ItemCrops", "evaluate_crops", "item_crops", "line_augment", "precise_batch_norm", "train_one_epoch",
           "train_verdict",
           "auto_arch", "verdict_for_run"]

KEEP = 0.35
"""Margin kept around each box when its crop is stored: room for the shifts of augmentation."""


def item_crops(records: Sequence[Record], classes: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``(crop, box in the crop, class index 0..K-1)`` for every box of ``records`` whose class is in
    ``classes``: the box's surroundings (:data:`KEEP` of its size on each side) cut from the upright image."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for r in records:
        objects = [o for o in r.annotation.objects if o.name in index]
        if not objects:
            continue
        image = read_image(r.image, exif=r.exif)
        h, w = image.shape[:2]
        for o in objects:
            b = o.box
            bw, bh = b.xmax - b.xmin, b.ymax - b.ymin
            x0, y0 = max(0, int(b.xmin - KEEP * bw)), max(0, int(b.ymin - KEEP * bh))
            x1, y1 = min(w, int(math.ceil(b.xmax + KEEP * bw))), min(h, int(math.ceil(b.ymax + KEEP * bh)))
            if bw < 2 or bh < 2:
                continue
            out.append((image[y0:y1, x0:x1].copy(), np.array([b.xmin - x0, b.ymin - y0, b.xmax - x0, b.ymax - y0]),
                        index[o.name]))
    return out


def line_augment(crop: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """What a line's camera and tracker do to a crop: the box shifted by up to 8 % and resized by
    up to 10 %, brightness x0.7-1.3 and contrast x0.8-1.2, a Gaussian blur half the time, a
    mirror half the time. Returns the new crop and box."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + rng.uniform(-0.08, 0.08) * bw, (box[1] + box[3]) / 2 + rng.uniform(-0.08, 0.08) * bh
    k = rng.uniform(0.9, 1.1)
    box = np.array([cx - k * bw / 2, cy - k * bh / 2, cx + k * bw / 2, cy + k * bh / 2])
    img = crop.astype(np.float32)
    img = (img - img.mean()) * rng.uniform(0.8, 1.2) + img.mean() * rng.uniform(0.7, 1.3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        img = img[:, ::-1].copy()
        box = np.array([img.shape[1] - box[2], box[1], img.shape[1] - box[0], box[3]])
    return img, box


class ItemCrops(Dataset):
    """``(3, S, S)`` float crops (see :func:`detect.model.verdict.crops_tensor`) and class indices;
    ``augment``: :func:`line_augment` on each draw."""

    def __init__(self, crops, *, size: int = DEFAULT_SIZE, margin: float = MARGIN, augment: bool = False,
                 seed: int = 0) -> None:
        self.crops, self.size, self.margin, self.augment = crops, size, margin, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int):
        crop, box, label = self.crops[i]
        if self.augment:
            crop, box = line_augment(crop, box, self.rng)
        cut = crop_item(crop, box, self.margin)
        if cut is None:
            cut = crop
        return crops_tensor([letterbox(cut, self.size)])[0], label


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, loss_fn: nn.Module,
                    scheduler=None) -> float:
    """One pass over ``loader``; returns the mean loss."""
    model.train()
    total, n = 0.0, 0
    for images, targets in loader:
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(targets)
        n += len(targets)
    return total / max(1, n)


@torch.no_grad()
def precise_batch_norm(model: nn.Module, loader: DataLoader) -> None:
    """Batch-norm statistics measured over ``loader`` (the plain training crops), not the running
    averages of training: torchvision's MobileNetV3 updates them with momentum 0.01, so after the
    few hundred steps a small dataset gives they still hold much of their initial values."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for images, _ in loader:
        model(images)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.inference_mode()
def evaluate_crops(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, K), labels (N,))`` over ``loader``."""
    model.eval()
    probs, labels = [], []
    for images, targets in loader:
        probs.append(torch.softmax(model(images), 1).double().numpy())
        labels.append(np.asarray(targets))
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, int)
    return np.concatenate(probs), np.concatenate(labels)


def train_verdict(data: Sequence[Record], classes: Sequence[str], *, val: Sequence[Record] = (),
                  defect_classes: Sequence[str] | None = None, arch: str = "mobilenet_v3_small",
                  weights: str = "none", size: int = DEFAULT_SIZE, epochs: int = 15, batch_size: int = 32,
                  lr: float = 2e-3, max_iters: int | None = None, max_false_reject: float | None = None,
                  seed: int = 0, echo: Callable[[str], None] = log.info) -> VerdictClassifier:
    """A verdict classifier trained on the boxes of ``data`` (records of the train split).

    ``classes``: the detector's classes (their order is the output's); ``defect_classes``: the
    defect ones (default: by name, as the line's). AdamW with a cosine schedule, cross-entropy
    weighted by inverse class frequency (defects are often rare). ``max_iters`` stops early
    (tests). ``max_false_reject``: the threshold is chosen on ``val``'s intact boxes
    (:func:`~detect.line.verdict.threshold_for_false_reject`); else 0.5.

    Raises:
        UsageError: no box of ``classes`` in ``data``, or ``max_false_reject`` with no intact box in ``val``.
    """
    torch.manual_seed(seed)
    classes = list(classes)
    defect_classes = list(default_defect_classes(classes) if defect_classes is None else defect_classes)
    crops = item_crops(data, classes)
    if not crops:
        raise UsageError(f"no box of the classes {', '.join(classes)} to train the verdict classifier on")
    counts = np.bincount([c[2] for c in crops], minlength=len(classes)).astype(np.float64)
    weight = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(classes), 0.0), dtype=torch.float32)
    loader = DataLoader(ItemCrops(crops, size=size, augment=True, seed=seed), batch_size=batch_size, shuffle=True,
                        drop_last=len(crops) > batch_size, generator=torch.Generator().manual_seed(seed))
    model = build_verdict(len(classes), arch=arch, weights=weights)
    steps = epochs * len(loader) if max_iters is None else min(max_iters, epochs * len(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    echo(f"verdict classifier: {arch} at {size} px, {len(crops)} crops ({', '.join(f'{c} {int(n)}' for c, n in zip(classes, counts))}), "
         f"{epochs} epochs")
    t0 = time.perf_counter()
    done = 0
    for epoch in range(epochs):
        if max_iters is not None and done >= max_iters:
            break
        limited = loader if max_iters is None else _take(loader, max_iters - done)
        loss = train_one_epoch(model, optimizer, limited, loss_fn, scheduler)
        done += len(loader) if max_iters is None else min(len(loader), max_iters - done)
        echo(f"verdict epoch {epoch + 1}/{epochs}: loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")
    precise_batch_norm(model, DataLoader(ItemCrops(crops, size=size), batch_size=batch_size))
    verdict = VerdictClassifier(model.eval(), classes, defect_classes, arch=arch, size=size,
                                info={"train_crops": len(crops), "epochs": epochs, "weights": weights})
    val_crops = item_crops(val, classes) if val else []
    if val_crops:
        probs, labels = evaluate_crops(model, DataLoader(ItemCrops(val_crops, size=size), batch_size=batch_size))
        p_defect = verdict.defect_probability(probs)
        is_defect = verdict.defect_mask[labels]
        verdict.info.update(val_crops=len(val_crops), val_accuracy=round(float((probs.argmax(1) == labels).mean()), 4))
        if max_false_reject is not None:
            verdict.threshold = threshold_for_false_reject(p_defect[~is_defect], max_false_reject)
            verdict.max_false_reject = float(max_false_reject)
        flagged = p_defect >= verdict.threshold
        verdict.info.update(
            val_false_reject=round(float(flagged[~is_defect].mean()), 4) if (~is_defect).any() else None,
            val_defect_recall=round(float(flagged[is_defect].mean()), 4) if is_defect.any() else None)
        echo(f"verdict on {len(val_crops)} val boxes: accuracy {verdict.info['val_accuracy']:.2f}, at threshold "
             f"{verdict.threshold:.3f} defect recall {verdict.info['val_defect_recall']}, good flagged "
             f"{verdict.info['val_false_reject']}")
    elif max_false_reject is not None:
        raise UsageError("--max-false-reject needs a validation split with intact objects to choose the threshold on")
    return verdict


def _take(loader: DataLoader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


def auto_arch(weights: str) -> tuple[str, str]:
    """``--verdict-arch auto``: ``("mobilenet_v3_small", "imagenet")`` when ImageNet weights can be
    had (torch hub cache or download) and ``weights`` allows them, else ``("small_cnn", "none")``:
    from random weights the small CNN learns more on a few hundred crops (docs/verdict.md)."""
    if weights == "none":
        return "small_cnn", "none"
    import torchvision

    from detect.model.build import WeightsError, _fetch_state_dict

    try:
        _fetch_state_dict(torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1)
    except WeightsError as exc:
        log.info("verdict classifier: no ImageNet weights (%s); the small CNN from scratch", exc)
        return "small_cnn", "none"
    return "mobilenet_v3_small", "imagenet"


def verdict_for_run(result, *, epochs: int = 15, max_false_reject: float | None = None, size: int = DEFAULT_SIZE,
                    arch: str = "auto", weights: str = "auto",
                    echo: Callable[[str], None] = log.info) -> Path | None:
    """After ``detect.train``: a verdict classifier trained on the run's own train split (its
    threshold chosen on the val split for ``max_false_reject``), saved as ``verdict.pt`` beside
    ``best.pt``. ``arch`` ``auto``: :func:`auto_arch`. Returns its path; None when the run left no
    ``best.pt`` (interrupted before an epoch)."""
    from detect.model.verdict import save_verdict
    from detect.training.data_prep import prepare_data

    folder = Path(result.run.path)
    if not (folder / "best.pt").is_file():
        return None
    _, data = prepare_data(result.config, lambda text, **_: None)
    if result.config.weights == "none":  # a detector asked to start from nothing: so does its classifier
        weights = "none"
    if arch == "auto":
        arch, weights = auto_arch(weights)
        echo(f"verdict classifier: {arch}" + (" from ImageNet weights" if weights == "imagenet" else
                                             " from scratch (no ImageNet weights to start from)"))
    verdict = train_verdict(data.train, data.classes, val=data.val, epochs=epochs, size=size, arch=arch,
                            weights=weights if arch == "mobilenet_v3_small" else "none",
                            lr=1e-2 if arch == "small_cnn" else 2e-3,  # the rates docs/verdict.md measured
                            max_false_reject=max_false_reject, seed=result.config.seed, echo=echo)
    path = save_verdict(verdict, folder / "verdict.pt")
    echo(f"verdict classifier: {path}")
    return path
