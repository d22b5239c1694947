"""The training engine: one epoch of training, validation, the schedule and the seeding.

Shaped like torchvision's detection references (``train_one_epoch`` / ``evaluate`` in
``references/detection/engine.py``): :func:`train_one_epoch` runs the model over a loader
once and returns the mean losses; :func:`evaluate` scores the model on the validation
loader through the shared inference code (:func:`detect.inference.infer_batches`).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image tensors the loader yields.
"""

from __future__ import annotations

import math
import random
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.errors import DetectError
from detect.inference import infer_batches
from detect.metrics import GroundTruth, voc_evaluate

__all__ = ["NonFiniteLoss", "evaluate", "lr_lambda", "make_optimizer", "seed_everything", "seed_worker",
           "train_one_epoch", "validation_loss"]

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class NonFiniteLoss(DetectError):
    """The loss became NaN or infinite; the message names the epoch, iteration and images."""


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    epoch: int,
    epochs: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    amp: bool = False,
    clip_grad: float = 0.0,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` on every batch of ``loader`` once, stepping the schedule per iteration.

    The loader yields ``(images, targets, metas)``: lists of ``FloatTensor[3, H, W]`` in
    ``[0, 1]``, ``{"boxes": FloatTensor[N, 4], "labels": Int64Tensor[N]}`` and dicts naming
    the files.

    Returns:
        the mean of each loss (torchvision's four and their sum, ``"loss"``) over the epoch.

    Raises:
        NonFiniteLoss: the loss became NaN or infinite; names the images of the batch.
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = {}
    n_iter = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False, file=sys.stderr)
    for it, (images, targets, metas) in enumerate(bar):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became {loss.item()} at epoch {epoch + 1}, iteration {it + 1}; the batch held: "
                + ", ".join(m["image"] for m in metas)
                + ". Check those annotations (tools/check_xml.py) or lower --lr."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n_iter += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        bar.set_postfix(loss=f"{sums['loss'] / n_iter:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
    bar.close()
    return {k: v / max(1, n_iter) for k, v in sums.items()}


def evaluate(
    model: torch.nn.Module, loader: DataLoader, truths: Sequence[GroundTruth], classes: Sequence[str],
    device: torch.device,
) -> float:
    """VOC mAP@0.5 of ``model`` on the loader's images, whose ``meta["id"]`` keys ``truths``
    (:func:`detect.records.ground_truths`); 0.0 when no class has ground truth."""
    batches = (([m["id"] for m in metas], images) for images, _, metas in loader)
    detections = [d for dets, _ in infer_batches(model, batches, device=device) for d in dets]
    result = voc_evaluate(truths, detections, classes=classes)
    return float(result.map) if not math.isnan(result.map) else 0.0


def make_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"sgd"`` (with momentum, torchvision's detection recipe) or ``"adamw"``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_lambda(*, epochs: int, iters_per_epoch: int, warmup_iters: int, schedule: str) -> Callable[[int], float]:
    """Multiplier of the peak lr at iteration ``it``: linear warm-up (capped at one epoch),
    then cosine decay to 1 % or steps of 0.1 at 2/3 and 8/9 of the epochs."""
    total = max(1, epochs * iters_per_epoch)
    warmup = min(warmup_iters, iters_per_epoch)

    def f(it: int) -> float:
        if it < warmup:
            return 0.001 + (1 - 0.001) * it / warmup
        if schedule == "cosine":
            progress = (it - warmup) / max(1, total - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        epoch = it // iters_per_epoch
        return 0.1 ** sum(epoch >= m for m in (int(epochs * 2 / 3), int(epochs * 8 / 9)))

    return f


def seed_everything(seed: int, generator: torch.Generator, transform=None) -> None:
    """Re-seed every random stream from ``seed`` (derived from the run's seed and the epoch).

    Shuffling, data-loader workers, augmentation and the RPN/ROI samplers then depend only
    on the weights and optimizer state at the epoch's start, so a run resumed from
    ``last.pt`` draws exactly what the uninterrupted run would have: this is the RNG state
    a checkpoint carries.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    generator.manual_seed(seed)
    if transform is not None:
        transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: each worker gets its own stream, derived from the loader's seed for
    this epoch, so a resumed run draws the same augmentations."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(seed)


def validation_loss(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, *, seed: int, amp: bool = False,
) -> dict[str, float]:
    """Mean losses (torchvision's four and their sum, ``"loss"``) on a labelled loader,
    leaving the model and every random stream as they were.

    torchvision's detector returns losses only in train mode, so the model runs in train
    mode under ``no_grad`` with every BatchNorm layer in eval mode: it normalises with its
    running statistics, as at inference, and does not update them. The train-mode forward
    draws random numbers (the RPN and box-head samplers pick which anchors and proposals
    the loss sees); they come from a forked generator seeded with ``seed``, so the training
    streams are untouched and the value depends only on the weights and ``seed``.
    Images with no object count as in training (background only).
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    sums: dict[str, float] = {}
    n = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for images, targets, _ in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, enabled=amp):
                    losses = model(images, targets)
                k = len(images)  # weighted by images: the last batch may be smaller
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * k
                sums["loss"] = sums.get("loss", 0.0) + sum(v.item() for v in losses.values()) * k
                n += k
    finally:
        for m, training in modes.items():
            m.training = training
    return {k: v / max(1, n) for k, v in sums.items()}
