"""What a run will cost on this machine, measured before it starts: a few training steps
and one validation batch on a copy of the model (:func:`measure`), and the estimate they
give (:class:`Pace`): the seconds an epoch of training and validation takes, which the
banner states and ``--time`` fits the epochs to (:func:`detect.training.config.epochs_for_budget`).

The probe trains a deep copy of the model with its own optimizer, under saved random
streams, on batches drawn by a loader of its own: the run itself (its weights, batch-norm
statistics, random streams, data order and augmentations) is exactly what it would be
without it, and the probe's seconds are not counted as training. The clock is a parameter,
so tests give a fake one instead of sleeping.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

from detect.data.dataset import collate
from detect.training.engine import capture_rng, make_optimizer, restore_rng

__all__ = ["PROBE_STEPS", "Pace", "format_duration", "measure"]

PROBE_STEPS = 5  # timed steps, after WARM_UP_STEPS untimed ones
# The first steps allocate and warm up (and a fresh model's first proposals are many): two
# are left out, and the step time is the median of the timed ones, so that one slow step does
# not cost a --time budget an epoch.
WARM_UP_STEPS = 2


@dataclass(frozen=True)
class Pace:
    """Measured costs: seconds per training step, seconds per val image (the mAP pass; the
    val-loss pass costs about as much again), and how many steps were timed."""

    step_s: float
    val_image_s: float
    steps: int

    def epoch_seconds(self, iters_per_epoch: int, val_images: int, val_loss: bool) -> float:
        """An epoch: its training steps, the val mAP pass and (with ``val_loss``) the val-loss pass."""
        return self.step_s * iters_per_epoch + self.val_seconds(val_images, val_loss)

    def val_seconds(self, val_images: int, val_loss: bool) -> float:
        return self.val_image_s * val_images * (2 if val_loss else 1)


def measure(model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, device: torch.device, *,
            optimizer: str, lr: float, amp_dtype: torch.dtype | None = None, load_in_step: bool = True,
            steps: int = PROBE_STEPS, clock: Callable[[], float] = time.perf_counter) -> Pace:
    """Time ``steps`` training steps (after :data:`WARM_UP_STEPS` untimed; their median) and
    one val batch of a copy of ``model``.

    ``load_in_step``: the run loads its batches in the training process (``--workers 0``),
    so loading is timed as part of a step; with loader workers it overlaps the step and is
    left out.
    """
    probe = copy.deepcopy(model)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, lr=lr, momentum=0.9, weight_decay=1e-4)
    train = DataLoader(train_loader.dataset, batch_sampler=train_loader.batch_sampler, collate_fn=collate)
    rng = capture_rng()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            batches = iter(train)
            times: list[float] = []
            for i in range(steps + WARM_UP_STEPS):
                started = clock()
                try:
                    images, targets, _ = next(batches)
                except StopIteration:
                    break
                if not load_in_step:
                    started = clock()
                _train_step(probe, opt, images, targets, device, amp_dtype)
                if i >= WARM_UP_STEPS or i == len(train) - 1:  # an epoch shorter than the warm-up: its last step
                    times.append(clock() - started)
            step_s = statistics.median(times) if times else 0.0
            val_image_s = 0.0
            if val_loader is not None and len(val_loader.dataset):
                val = DataLoader(val_loader.dataset, batch_size=val_loader.batch_size, collate_fn=collate)
                images, _, _ = next(iter(val))
                probe.eval()
                started = clock()
                with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    probe([im.to(device) for im in images])
                _sync(device)
                val_image_s = (clock() - started) / len(images)
    finally:
        restore_rng(rng)
    return Pace(step_s=step_s, val_image_s=val_image_s, steps=len(times))


def _train_step(model, optimizer, images, targets, device, amp_dtype) -> None:
    model.train()
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    _sync(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"7.5 min"`` or ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes:02d} min"
