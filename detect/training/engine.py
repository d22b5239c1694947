"""The training engine: one epoch of training, validation, the schedule and the seeding.

Shaped like torchvision's detection references (``train_one_epoch`` / ``evaluate`` in
``references/detection/engine.py``): :func:`train_one_epoch` runs the model over a loader
once, keeping the running losses in its :class:`EpochState` (``state.means()``), and returns
whether the epoch finished; :func:`evaluate` scores the model on the validation
loader through the shared inference code (:func:`detect.inference.torch_runtime.infer_batches`).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image tensors the loader yields.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.common.errors import DetectError
from detect.inference.torch_runtime import infer_batches
from detect.common.types import GroundTruth
from detect.scoring.metrics import voc_evaluate

__all__ = ["EpochState", "NonFiniteLoss", "capture_rng", "evaluate", "lr_lambda", "make_optimizer", "restore_rng",
           "seed_everything", "seed_worker", "train_one_epoch", "validation_loss"]

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class NonFiniteLoss(DetectError):
    """The loss became NaN or infinite; the message names the epoch, iteration and images."""


@dataclass
class EpochState:
    """Where an epoch of training stands: iterations done, loss sums, seconds spent, and
    (when it stopped early) the random streams at that iteration boundary.

    A checkpoint carries it (:meth:`as_dict`), so a run stopped by Ctrl-C in the middle of
    an epoch resumes at the next iteration and ends exactly as an uninterrupted run would.
    """

    epoch: int
    iteration: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    rng: dict[str, Any] | None = None
    data_seconds: float = 0.0  # of ``seconds``, the time spent waiting for the next batch

    def means(self) -> dict[str, float]:
        """The mean of each loss over the iterations done."""
        return {k: v / max(1, self.iteration) for k, v in self.sums.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "iteration": self.iteration, "sums": dict(self.sums),
                "seconds": self.seconds, "rng": self.rng, "data_seconds": self.data_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochState":
        return cls(d["epoch"], d["iteration"], dict(d["sums"]), d["seconds"], d.get("rng"), d.get("data_seconds", 0.0))


def capture_rng() -> dict[str, Any]:
    """Every random stream the training step draws from (torch, CUDA, numpy, random), as
    tensors and plain values a ``weights_only`` checkpoint holds."""
    state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(state[1].astype(np.int64)), "pos": int(state[2]),
                  "has_gauss": int(state[3]), "gauss": float(state[4])},
        "random": random.getstate(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """The inverse of :func:`capture_rng`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = rng["random"]
    random.setstate((version, tuple(internal), gauss))


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    state: EpochState,
    epochs: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
    sync_every: int | None = None,
    later_seconds: float | None = None,
) -> bool:
    """Train ``model`` on the batches of ``loader`` from ``state.iteration`` on, stepping the
    schedule per iteration; ``state`` is updated as it goes.

    The loader yields ``(images, targets, metas)``: lists of ``FloatTensor[3, H, W]`` in
    ``[0, 1]``, ``{"boxes": FloatTensor[N, 4], "labels": Int64Tensor[N]}`` (xmin, ymin, xmax,
    ymax in pixels of the image tensor) and dicts naming the files.

    A state that stopped mid-epoch is continued exactly: the batches already trained on are
    drawn again and skipped (the data order and augmentations replay from the epoch's
    seed), then the random streams are restored to where they stood.

    ``amp_dtype`` (``torch.bfloat16`` / ``torch.float16``) runs the forward pass in mixed
    precision. Losses are read back (and checked for NaN) every ``sync_every`` steps: every
    step on a CPU, where reading is free; every 20 on a GPU, where each read waits for the
    device. ``later_seconds``: what the run is expected to take after this epoch's steps
    (its validation and the epochs after it), for the progress bar's run ETA.

    Returns:
        True when the epoch is complete; False when ``stop()`` asked to stop (checked at each
        iteration boundary) or Ctrl-C arrived while a batch was being loaded; then
        ``state.rng`` holds the random streams at that boundary.

    Raises:
        NonFiniteLoss: the loss became NaN or infinite; names the images of the batch.
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total = len(loader)
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 20
    pending: list[tuple[dict[str, torch.Tensor], list]] = []  # losses not yet read back
    if state.iteration >= total:
        return True
    batches = iter(loader)
    for _ in range(state.iteration):  # replay what was trained on before the interruption
        next(batches)
    if state.rng is not None:
        restore_rng(state.rng)
        state.rng = None
    first, seconds_before = state.iteration, state.seconds
    bar = tqdm(total=total, initial=state.iteration, desc=f"epoch {state.epoch + 1}/{epochs}",
               disable=not progress, leave=False, file=sys.stderr)
    try:
        while True:
            started = time.perf_counter()
            try:  # an iteration boundary: Ctrl-C here leaves nothing half done
                images, targets, metas = next(batches)
            except StopIteration:
                _read_losses(pending, state)
                return True
            except KeyboardInterrupt:
                _read_losses(pending, state)
                state.rng = capture_rng()
                return False
            waited = time.perf_counter() - started
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            if sync_every == 1 and not torch.isfinite(loss):  # before the step: the weights stay finite
                _read_losses([({**losses, "loss": loss}, metas)], state, iteration=state.iteration)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            state.iteration += 1
            pending.append(({**{k: v.detach() for k, v in losses.items()}, "loss": loss.detach()}, metas))
            if len(pending) >= sync_every or state.iteration == total:
                _read_losses(pending, state)
                eta = {}
                if later_seconds is not None:
                    mean = (state.seconds - seconds_before) / max(1, state.iteration - first)
                    left = (total - state.iteration) * mean + later_seconds
                    eta = {"run_left": f"{left / 60:.1f}min"}
                bar.set_postfix(loss=f"{state.sums['loss'] / state.iteration:.3f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.4f}", **eta)
            state.seconds += time.perf_counter() - started
            state.data_seconds += waited
            bar.update(1)
            if stop is not None and stop() and state.iteration < total:
                _read_losses(pending, state)
                state.rng = capture_rng()
                return False
    finally:
        bar.close()


def _read_losses(pending: list, state: EpochState, *, iteration: int | None = None) -> None:
    """Add the losses of the steps in ``pending`` to ``state.sums`` (one read-back for all),
    and empty it.

    Raises:
        NonFiniteLoss: a loss was NaN or infinite; names the step and the batch's images.
    """
    if not pending:
        return
    keys = list(pending[0][0])
    values = torch.stack([torch.stack([d[k].float() for k in keys]) for d, _ in pending]).cpu()
    first = iteration if iteration is not None else state.iteration - len(pending)
    for n, (row, (_, metas)) in enumerate(zip(values.tolist(), pending)):
        if not all(math.isfinite(v) for v in row):
            bad = row[keys.index("loss")]
            raise NonFiniteLoss(
                f"loss became {bad} at epoch {state.epoch + 1}, iteration {first + n + 1}; the batch held: "
                + ", ".join(m["image"] for m in metas)
                + ". Check those annotations (tools/check_xml.py) or lower --lr."
            )
    if iteration is None:
        for row in values.tolist():
            for k, v in zip(keys, row):
                state.sums[k] = state.sums.get(k, 0.0) + v
    pending.clear()


def evaluate(
    model: torch.nn.Module, loader: DataLoader, truths: Sequence[GroundTruth], classes: Sequence[str],
    device: torch.device, *, stop: Callable[[], bool] | None = None,
) -> float | None:
    """VOC mAP@0.5 of ``model`` on the loader's images, whose ``meta["id"]`` keys ``truths``
    (:func:`detect.data.records.ground_truths`); 0.0 when no class has ground truth; None when
    ``stop()`` asked to stop (checked after each batch)."""
    batches = (([m["id"] for m in metas], images) for images, _, metas in loader)
    detections = []
    for dets, _ in infer_batches(model, batches, device=device):
        detections += dets
        if stop is not None and stop():
            return None
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
    model: torch.nn.Module, loader: DataLoader, device: torch.device, *, seed: int,
    amp_dtype: torch.dtype | None = None, stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:
    """Mean losses (torchvision's four and their sum, ``"loss"``, per image) on a labelled
    loader, leaving the model and every random stream as they were; None when ``stop()``
    asked to stop (checked after each batch).

    torchvision's detector returns losses only in train mode, so the model runs in train
    mode under ``no_grad`` with every BatchNorm layer in eval mode: it normalises with its
    running statistics, as at inference, and does not update them. The train-mode forward
    draws random numbers (the RPN and box-head samplers pick which anchors and proposals
    the loss sees); they come from a forked generator seeded with ``seed``, so the training
    streams are untouched and the value depends only on the weights and ``seed``.
    Images with no object count as in training (background only). The losses are read back
    from the device once, at the end.
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    sums: dict[str, torch.Tensor] = {}
    n = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for images, targets, _ in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = model(images, targets)
                k = len(images)  # weighted by images: the last batch may be smaller
                for name, value in {**losses, "loss": sum(losses.values())}.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() * k
                n += k
                if stop is not None and stop():
                    return None
    finally:
        for m, training in modes.items():
            m.training = training
    if not sums:
        return {}
    keys = list(sums)
    values = torch.stack([sums[k] for k in keys]).cpu().tolist()
    return {k: v / n for k, v in zip(keys, values)}
