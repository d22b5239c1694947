"""A training run's state, in the parts :func:`detect.training.trainer.train` builds once and
its epoch loop reads or advances:

- :class:`RunPlan`: what the run is: its resolved config, its data and classes, where it
  runs and how it started. Fixed once training starts, but for the epochs a ``time`` budget
  re-fits (``cfg.epochs``).
- :class:`Loaders`: the train set, its sampler and loader, the val loader.
- :class:`Optimisation`: the model, the optimizer, the learning-rate schedule, the scaler.
- :class:`Progress`: where the run stands: epochs done, the best so far, time spent.
- :class:`Pacing`: the costs measured before training and the epoch time a ``time`` budget
  is planned with.

:class:`Run` holds one of each and the :class:`~detect.training.run_folder.RunFolder`;
:class:`TrainResult` is how a run ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from detect.training.budget import Pace
from detect.training.config import TrainConfig
from detect.training.data_prep import Data
from detect.training.distributed import Dist
from detect.training.engine import EpochState
from detect.training.run_folder import RunFolder, training_record

__all__ = ["Loaders", "Optimisation", "Pacing", "Progress", "Run", "RunPlan", "TrainResult"]


@dataclass
class RunPlan:
    """What the run is. ``truths`` are the val split's ground truths (for its mAP); ``mode``
    is how the run started (:func:`detect.training.run_folder.training_mode`), ``earlier`` a
    resumed run's training record (its peak memory so far)."""

    cfg: TrainConfig  # resolved: every default decided (detect.training.config.resolve_config)
    data: Data
    dist: Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    truths: list
    mode: dict[str, Any]
    weights_source: str  # for runs.csv: the starting weights, or "resumed"
    earlier: dict[str, Any] | None = None


@dataclass
class Loaders:
    """This process's share of each epoch (``train``, batches of like-shaped images from
    ``sampler``), the val loader (rank 0 validates) and the train loader's generator."""

    train_set: Any
    train: Any
    sampler: Any
    val: Any
    generator: torch.Generator


@dataclass
class Optimisation:
    """What a training step changes. ``net`` is what steps run through: the detector, or its
    DistributedDataParallel wrapper; ``model`` is the detector itself."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any


@dataclass
class Progress:
    """Where the run stands. Epochs are 0-based here (``best_epoch`` -1 before any);
    ``partial`` is a resumed run's unfinished epoch, ``iterations`` the training steps this
    call took."""

    start_epoch: int = 0  # the first epoch this call trains
    epochs_done: int = 0
    best_map: float = -1.0
    best_epoch: int = -1
    train_time: float = 0.0  # seconds of training and validation, over every call
    final_loss: float | None = None  # the last finished epoch's mean training loss
    partial: EpochState | None = None
    iterations: int = 0


@dataclass
class Pacing:
    """The step and val costs measured before training (:mod:`detect.training.budget`), the
    seconds an epoch of training and validation is expected to take, whether a ``time``
    budget was re-fitted to the epochs' own pace, and this call's epoch times."""

    pace: Pace | None
    epoch_estimate: float
    refitted: bool = False
    epoch_times: list[float] = field(default_factory=list)

    def later(self, epoch: int, epochs: int, val_images: int, val_loss: bool) -> float:
        """Seconds the run is expected to take after the training steps of ``epoch`` (of
        ``epochs``): its validation and the epochs after it (the progress bar's run ETA)."""
        val = self.pace.val_seconds(val_images, val_loss) if self.pace else 0.0
        return val + (epochs - epoch - 1) * self.epoch_estimate


@dataclass
class Run:
    """One run's parts: what it is, its folder, its data loaders, what training changes,
    where it stands and how fast it goes."""

    plan: RunPlan
    folder: RunFolder
    loaders: Loaders
    opt: Optimisation
    progress: Progress
    pacing: Pacing

    def train_state(self, state: EpochState | None = None, rngs: list | None = None) -> dict[str, Any]:
        """What ``last.pt`` holds to resume: optimizer, schedule, scaler, the best so far, and
        for a run stopped mid-epoch that epoch's position and every process's random streams."""
        opt, p = self.opt, self.progress
        return {"optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
                "scaler": opt.scaler.state_dict(), "best_map50": p.best_map, "best_epoch": p.best_epoch,
                "train_time": p.train_time,
                "partial": {**state.as_dict(), "rng": rngs, "world": self.plan.dist.world} if state is not None else None}

    def cost(self, epochs: int) -> dict[str, Any]:
        """The checkpoint's ``training`` record after ``epochs`` epochs."""
        return training_record(self.plan.mode, epochs=epochs, train_time=self.progress.train_time,
                               final_loss=self.progress.final_loss, device=self.plan.device, earlier=self.plan.earlier)


@dataclass
class TrainResult:
    """How a run ended: ``status`` is ``finished``, ``early-stopped`` or ``interrupted``.

    ``best_map50`` is None when the data has no val split; ``stopped_in`` is the 1-based
    epoch a Ctrl-C stopped, with ``resume_exact`` saying whether ``last.pt`` holds that
    point (a graceful stop) or the end of the epoch before (Ctrl-C pressed mid-step, where
    the steady state is the last finished epoch).
    """

    run: RunFolder
    status: str
    best_map50: float | None
    best_epoch: int  # 1-based; 0 when no epoch finished
    train_time: float
    config: TrainConfig = field(repr=False)
    stopped_in: int = 0
    resume_exact: bool = True
    model: Any = field(default=None, repr=False)  # the trained torch module (this process's)
    iterations: int = 0  # training steps this process took in this call
    main: bool = True  # this process speaks for the run (rank 0 under torchrun)
