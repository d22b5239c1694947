"""Training a detector: :func:`train` from top to bottom.

:func:`train` reads like torchvision's reference ``main``: config
(:mod:`detect.training.config`) -> data (:mod:`detect.training.data_prep`) -> model ->
optimizer and schedule -> epochs of (:func:`detect.training.engine.train_one_epoch`,
:func:`detect.training.engine.evaluate`, checkpoint) -> run log. The run folder and its files
belong to :class:`detect.training.run_folder.RunFolder`; Ctrl-C handling to
:mod:`detect.training.stop`.

The library never prints: the run's narrative (the banner, one line per epoch) goes to
the ``echo`` callback, which ``python -m detect.train`` prints and which logs by default.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from detect.common.device import resolve_device
from detect.common.errors import UsageError, show
from detect.common.files import check_writable
from detect.data.records import ground_truths
from detect.model.build import StartWeights, anchors_per_location, build_model, describe_anchors, feature_strides, start_weights
from detect.model.checkpoint import load_checkpoint
from detect.model.config import ModelConfig
from detect.training import distributed
from detect.training.budget import Pace, format_duration, measure
from detect.training.config import RECIPE_REASONS, RESUMABLE, Echo, RunFacts, TrainConfig, log_echo, resolve_config
from detect.training.data_prep import Data, data_facts, load_data, make_loaders, open_data, repeat_factors
from detect.training.distributed import Dist
from detect.training.engine import (
    LOSS_KEYS,
    EpochState,
    NonFiniteLoss,
    capture_rng,
    evaluate,
    lr_lambda,
    make_optimizer,
    seed_everything,
    train_one_epoch,
    validation_loss,
)
from detect.training.run_folder import RunFolder, join_numbers, training_mode, training_record
from detect.training.stop import GracefulStop, shared_stop

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "model_for_config", "train"]


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


def model_for_config(cfg: TrainConfig, num_classes: int, weights: str | StartWeights | None = None):
    """The detector a (resolved) config describes, with ``num_classes`` outputs (background
    included), starting from ``weights`` (default: the config's)."""
    return build_model(cfg.model.replace(num_classes=num_classes), weights=cfg.weights if weights is None else weights)


def train(cfg: TrainConfig, *, echo: Echo = log_echo, progress: bool = False,
          clock: Callable[[], float] = time.perf_counter) -> TrainResult:
    """Train a detector as ``cfg`` says (to resume, ``cfg`` is :func:`resume_config`'s).

    Under ``torchrun`` every process calls this; they train together with
    DistributedDataParallel and only rank 0 writes files and echoes.

    Ctrl-C stops at the next iteration boundary, saves ``last.pt`` and returns
    ``interrupted``; resuming from it ends exactly as an uninterrupted run would.

    ``clock`` times the steps measured before training (the estimate, the epochs of a
    ``time`` budget); tests pass a fake one.

    Raises:
        DetectError: a usage error (exit 2; a ``time`` budget too small for one epoch), annotation errors, a non-finite loss or a
            checkpoint that cannot be written (exit 1).
    """
    dist, device_name = distributed.setup(cfg.device)
    try:
        device = resolve_device(device_name)
        run = _setup(cfg, dist, device, echo if dist.main else _silent, clock)
        return _fit(run, echo if dist.main else _silent, progress and dist.main)
    finally:
        dist.close()


def _silent(text: str, *, err: bool = False) -> None:
    pass


@dataclass
class _Run:
    """Everything a run trains with, built by :func:`_setup` (new or resumed) for :func:`_fit`."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    data: Data
    folder: RunFolder
    model: torch.nn.Module  # the detector itself
    net: torch.nn.Module  # what steps run through: the detector, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: torch.dtype | None
    train_set: Any
    train_loader: Any
    sampler: Any
    val_loader: Any
    generator: torch.Generator
    truths: list
    mode: dict[str, Any]  # how the run started (training_mode), for the comparison table
    weights_source: str
    start_epoch: int = 0
    best_map: float = -1.0
    best_epoch: int = -1  # 0-based; -1 before any
    train_time: float = 0.0
    final_loss: float | None = None
    partial: EpochState | None = None  # a resumed run's unfinished epoch
    earlier: dict[str, Any] | None = None  # a resumed run's training record (its peak memory so far)
    pace: Pace | None = None  # the measured step and val costs (detect.training.budget)
    epoch_estimate: float = 0.0  # seconds an epoch of training and validation is expected to take
    refitted: bool = False  # a --time budget was re-fitted to the epochs' own pace

    def train_state(self, state: EpochState | None = None, rngs: list | None = None) -> dict[str, Any]:
        """What ``last.pt`` holds to resume: optimizer, schedule, scaler, the best so far, and
        for a run stopped mid-epoch that epoch's position and every process's random streams."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "best_map50": self.best_map, "best_epoch": self.best_epoch,
                "train_time": self.train_time,
                "partial": {**state.as_dict(), "rng": rngs, "world": self.dist.world} if state is not None else None}

    def cost(self, epochs: int) -> dict[str, Any]:
        return training_record(self.mode, epochs=epochs, train_time=self.train_time, final_loss=self.final_loss,
                               device=self.device, earlier=self.earlier)


def _setup(cfg: TrainConfig, dist: Dist, device: torch.device, echo: Echo,
           clock: Callable[[], float] = time.perf_counter) -> _Run:
    """Config -> data -> model -> loaders -> a few measured steps (the estimate, the epochs of
    a ``time`` budget) -> run folder -> optimizer and schedule, for a new run or one resumed
    from its ``last.pt``; prints the banner."""
    ckpt = _resume_checkpoint(cfg, dist)
    cfg = resolve_config(cfg)  # every option checked before any work
    out = cfg.resume.parent if ckpt is not None else cfg.out
    try:  # before any data is read: a run that cannot save is no run
        if dist.main:
            check_writable(out)
    except OSError as exc:
        raise UsageError(f"--out {show(out)}: cannot write there ({exc.strerror or exc}); "
                         "pass a folder you can write to") from None
    amp_dtype = _amp_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    if ckpt is not None and cfg.data is not None and not Path(cfg.data).exists():
        raise UsageError(f"{show(cfg.data)}: the data {cfg.resume.parent.name} trained on is not there any more; if it "
                         f"moved, resume with --data NEW_PLACE (the same images): python -m detect.train --resume "
                         f"{show(cfg.resume)} --data NEW_PLACE")
    if ckpt is not None and cfg.classes is not None and not Path(cfg.classes).exists():
        raise UsageError(f"{show(cfg.classes)}: the class list {cfg.resume.parent.name} trained with is not there any "
                         "more; give it again with --classes FILE")
    cfg, files = open_data(cfg, echo, dist=dist)
    median, input_note = data_facts(cfg, files)
    start = None if ckpt else start_weights(cfg.model.backbone, cfg.weights)
    facts = RunFacts(median_size=median, pretrained=bool(start and start.pretrained), world=dist.world,
                     cuda=device.type == "cuda")
    cfg = resolve_config(cfg, facts)
    data = load_data(cfg, files, echo)
    data.input_note = input_note
    if ckpt is not None and list(ckpt["classes"]) != data.classes:
        raise UsageError(f"{show(cfg.resume)}: trained on classes {ckpt['classes']}, but the data now has {data.classes}")
    if ckpt is not None:
        _check_same_split(cfg, ckpt, data)
    # The model: a resumed run is rebuilt from its checkpoint's own description. Every rank
    # starts from the same seed, and DDP broadcasts rank 0's weights besides.
    if ckpt:
        model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    else:
        model = model_for_config(cfg, len(data.classes) + 1, start)
    # How the run started, for the comparison table; a resumed run keeps its record (one
    # from before these records knows its weights only when they were not "auto").
    earlier = (ckpt or {}).get("training")
    mode = earlier or training_mode(
        weights=model.weights_report.source if not ckpt else None if cfg.weights == "auto" else cfg.weights,
        backbone=cfg.model.backbone, trainable_layers=model.config.trainable_layers)
    if dist.active and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set, train_loader, sampler, val_loader, generator = make_loaders(cfg, data, dist, device)
    # A few measured steps: the banner's estimate, and the epochs a --time budget holds (rank 0
    # measures, every rank plans with its figures). Before the run folder: a budget too small
    # for one epoch leaves nothing behind.
    pace = dist.broadcast(measure(model, train_loader, val_loader if data.val else None, device,
                                  optimizer=cfg.optimizer, lr=cfg.lr, amp_dtype=amp_dtype,
                                  load_in_step=cfg.workers == 0, clock=clock) if dist.main else None)
    epoch_s = pace.epoch_seconds(len(train_loader), len(data.val), bool(cfg.val_loss))
    cfg = resolve_config(cfg, dataclasses.replace(
        facts, epoch_seconds=epoch_s, spent_seconds=ckpt["train_state"]["train_time"] if ckpt else 0.0,
        epochs_done=ckpt["epoch"] + 1 if ckpt else 0))
    # Rank 0 claims the run folder (a new name when the default is taken); the others follow.
    run_path = cfg.resume.parent if ckpt else (RunFolder.new(cfg.out, cfg.name or cfg.model.backbone).path if dist.main else None)
    folder = RunFolder(Path(dist.broadcast(str(run_path) if run_path else None)), writes=dist.main,
                       tensorboard=cfg.tensorboard)
    cfg.name = folder.name
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        epochs=cfg.epochs, iters_per_epoch=len(train_loader), warmup_iters=cfg.warmup_iters, schedule=cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    run = _Run(cfg, dist, device, data, folder, model, net, optimizer, scheduler, scaler, amp_dtype, train_set,
               train_loader, sampler, val_loader, generator, ground_truths(data.val, data.classes), mode,
               weights_source="resumed" if ckpt else model.weights_report.source,
               final_loss=(earlier or {}).get("final_loss"), earlier=earlier, pace=pace, epoch_estimate=epoch_s)
    if ckpt is not None:
        _restore(run, ckpt, echo)
    else:
        folder.start(cfg.as_dict(), data.split_info)
    folder.checkpoint_base = {
        "model_config": model.config.as_dict(),
        "classes": data.classes,
        "backbone": cfg.model.backbone,
        "run": folder.name,
        "args": cfg.as_dict(),
        "data": {
            "root": str(data.root),
            "images": str(cfg.images) if cfg.images else None,
            "layout": data.layout,
            "exif": cfg.exif,
            "splits": {k: v for k, v in data.split_info.items() if k != "source"},
        },
    }
    _banner(echo, run)
    return run


def _restore(run: _Run, ckpt: dict[str, Any], echo: Echo) -> None:
    """Optimizer, schedule, scaler, the best so far and an unfinished epoch, from ``last.pt``."""
    st = ckpt["train_state"]
    run.optimizer.load_state_dict(st["optimizer"])
    run.scheduler.load_state_dict(st["scheduler"])
    run.scaler.load_state_dict(st["scaler"])
    run.start_epoch = ckpt["epoch"] + 1
    run.best_map, run.best_epoch, run.train_time = st["best_map50"], st["best_epoch"], st["train_time"]
    if st.get("partial"):
        run.partial = EpochState.from_dict({**st["partial"], "rng": st["partial"]["rng"][run.dist.rank]})
    run.folder.tidy_for_resume(epochs_done=run.start_epoch)
    if run.dist.main and not run.folder.best.exists() and run.best_epoch >= 0:
        run.best_map, run.best_epoch = _repair_best(run.folder, ckpt, run.best_epoch, run.partial, echo)
    run.best_map, run.best_epoch = run.dist.broadcast((run.best_map, run.best_epoch))
    where = f"epoch {run.start_epoch + 1}" + (f", iteration {run.partial.iteration + 1}" if run.partial else "")
    echo(f"Resuming {run.folder.path} at {where} of {run.cfg.epochs}")


def _fit(run: _Run, echo: Echo, progress: bool) -> TrainResult:
    """The epochs: train, validate (rank 0), save best.pt then last.pt, one line per epoch;
    Ctrl-C saves where it stopped. Like torchvision's reference loop, with stopping and resuming."""
    cfg, dist, data, folder, model = run.cfg, run.dist, run.data, run.folder, run.model
    last_done, iterations, partial = run.start_epoch - 1, 0, run.partial
    status, stopped_in, exact = "finished", 0, True
    try:
        with GracefulStop(echo) as stop:
            # All processes must stop at the same step: the request is shared (every step on
            # CPUs; every 10 steps on GPUs, where sharing means waiting for the device).
            stop_now = shared_stop(stop, dist, every=10 if run.device.type == "cuda" else 1)
            epoch_times: list[float] = []  # this call's epochs, for the budget's check
            for epoch in itertools.count(run.start_epoch):
                if epoch >= cfg.epochs:  # checked each time: a --time budget re-fits cfg.epochs
                    break
                state = partial if partial is not None and partial.epoch == epoch else EpochState(epoch)
                partial = None
                # The epoch's data order, augmentations and samplers follow from (seed, epoch):
                # a resumed epoch replays them (train_one_epoch then restores the streams).
                seed_everything(cfg.seed * 10_000 + epoch, run.generator, run.train_set.transform)
                run.sampler.set_epoch(epoch)
                done_before = state.iteration
                complete = train_one_epoch(run.net, run.optimizer, run.train_loader, run.device, state=state,
                                           epochs=cfg.epochs, scheduler=run.scheduler, scaler=run.scaler,
                                           amp_dtype=run.amp_dtype, clip_grad=cfg.clip_grad, progress=progress,
                                           stop=stop_now, later_seconds=_later(run, epoch))
                iterations += state.iteration - done_before
                dist.sync_buffers(model)
                t0 = time.perf_counter()
                val_map, val_loss, val_stopped = None, None, False
                if complete and data.val and dist.main and not stop():
                    val_map, val_loss, val_stopped = _validate(run, epoch, stop)
                val_map, val_loss, val_stopped = dist.broadcast((val_map, val_loss, val_stopped))
                if not complete or val_stopped or stop_now(force=True):
                    if state.rng is None:  # stopped after the last batch: validation is what remains
                        state.rng = capture_rng()
                    rngs = dist.gather(state.rng)
                    with stop.save():
                        folder.save("last", model_state=model.state_dict(), epoch=last_done,
                                    metrics={"map50": None, "best_map50": run.best_map,
                                             "best_epoch": run.best_epoch + 1, "interrupted": True},
                                    train_state=run.train_state(state, rngs), training=run.cost(last_done + 1))
                    status, stopped_in = "interrupted", epoch + 1
                    break
                epoch_time = state.seconds + time.perf_counter() - t0
                run.train_time += epoch_time
                epoch_times.append(epoch_time)
                improved = _end_epoch(run, epoch, state, val_map, val_loss, epoch_time, stop)
                last_done = epoch
                lr = run.optimizer.param_groups[0]["lr"]
                shown = "-  (no val split)" if val_map is None else f"{val_map:.4f}{' *' if improved else ''}"
                wait = f"  data wait {100 * state.data_seconds / max(state.seconds, 1e-9):.0f}%" if progress else ""
                echo(f"epoch {epoch + 1}/{cfg.epochs}  loss {run.final_loss or 0:.4f}  lr {lr:.5f}  "
                     f"val mAP@0.5 {shown}  {epoch_time:.0f}s{wait}")
                if cfg.time is not None and epoch + 1 < cfg.epochs:
                    _keep_to_budget(run, epoch, epoch_times, echo)
                if cfg.patience and data.val and epoch - run.best_epoch >= cfg.patience:
                    echo(f"Early stop: no better val mAP@0.5 for {cfg.patience} epochs "
                         f"(best {run.best_map:.4f} at epoch {run.best_epoch + 1})")
                    status = "early-stopped"
                    break
    except KeyboardInterrupt:
        # Ctrl-C three times, or outside the main thread: in the middle of a step, so the
        # last epoch boundary (the last.pt on disk) is where a resume starts.
        status, stopped_in, exact = "interrupted", last_done + 2, False
    except NonFiniteLoss:
        status = "stopped: non-finite loss"
        raise
    finally:
        if last_done >= run.start_epoch or status != "finished":
            folder.log_run({
                "backbone": cfg.model.backbone, "data": str(data.root), "epochs": cfg.epochs, "batch": cfg.batch_size,
                "lr": cfg.lr, "input_size": cfg.model.input_size, "anchor_scales": join_numbers(cfg.model.anchor_scales),
                "anchor_ratios": join_numbers(cfg.model.anchor_ratios), "weights": run.weights_source,
                "best_val_map50": f"{max(run.best_map, 0):.4f}" if data.val else "-",
                "train_time_min": f"{run.train_time / 60:.2f}", "status": status,
            })
    return TrainResult(run=folder, status=status, best_map50=max(run.best_map, 0.0) if data.val else None,
                       best_epoch=run.best_epoch + 1, train_time=run.train_time, config=cfg, stopped_in=stopped_in,
                       resume_exact=exact, model=model, iterations=iterations, main=dist.main)


def _later(run: _Run, epoch: int) -> float:
    """Seconds the run is expected to take after the training steps of ``epoch``: its
    validation and the epochs after it (for the progress bar's run ETA)."""
    val = run.pace.val_seconds(len(run.data.val), bool(run.cfg.val_loss)) if run.pace else 0.0
    return val + (run.cfg.epochs - epoch - 1) * run.epoch_estimate


# A --time run re-fits its epochs when they take this much longer (or shorter) than planned.
OVERRUN = 1.05


def _keep_to_budget(run: _Run, epoch: int, epoch_times: Sequence[float], echo: Echo) -> None:
    """After ``epoch``: when the epochs of this call (``epoch_times``, their median, so that one
    epoch slowed by another program does not decide) take longer than the estimate the
    ``time`` budget was planned with, fewer epochs fit; when they take less and the run is
    still in its first half (where stretching the schedule barely moves the learning rate),
    more fit, up to a recipe's cap. Rank 0 decides; the schedule is re-fitted to the new
    length on every rank."""
    cfg, budget = run.cfg, run.cfg.time * 60
    epochs = cfg.epochs
    if run.dist.main and epoch_times:
        pace = statistics.median(epoch_times)
        fit = epoch + 1 + max(0, int((budget - run.train_time) // pace))
        if cfg.max_epochs is not None:
            fit = min(fit, cfg.max_epochs)
        slower = pace > run.epoch_estimate * OVERRUN and fit < cfg.epochs
        faster = pace * OVERRUN < run.epoch_estimate and fit > cfg.epochs and 2 * (epoch + 1) <= cfg.epochs
        if slower or faster:
            epochs = fit
            budget_name = f"--time {cfg.time:g}" if cfg.max_epochs is None else f"The {cfg.recipe} recipe's {cfg.time:g} min"
            planned = "planned with" if run.refitted else "measured before training"
            echo(f"{budget_name}: an epoch takes {format_duration(pace)}, not the "
                 f"{format_duration(run.epoch_estimate)} {planned}; {epochs} epochs fit the budget "
                 f"(the schedule is re-fitted to them)", err=True)
            run.epoch_estimate, run.refitted = pace, True
    epochs = run.dist.broadcast(epochs)
    if epochs == cfg.epochs:
        return
    cfg.epochs = epochs
    run.folder.checkpoint_base["args"]["epochs"] = epochs
    run.scheduler.lr_lambdas = [lr_lambda(epochs=epochs, iters_per_epoch=len(run.train_loader),
                                          warmup_iters=cfg.warmup_iters, schedule=cfg.schedule)]


def _validate(run: _Run, epoch: int, stop) -> tuple[float | None, float | None, bool]:
    """Val mAP@0.5 and (with ``val_loss``) the val loss after an epoch, on rank 0; the third
    value says Ctrl-C stopped the pass."""
    val_map = evaluate(run.model, run.val_loader, run.truths, run.data.classes, run.device, stop=stop)
    if val_map is None:
        return None, None, True
    if not run.cfg.val_loss:
        return val_map, None, False
    losses = validation_loss(run.model, run.val_loader, run.device, seed=run.cfg.seed * 10_000 + epoch,
                             amp_dtype=run.amp_dtype, stop=stop)
    if losses is None:
        return val_map, None, True
    return val_map, losses.get("loss"), False


def _end_epoch(run: _Run, epoch: int, state: EpochState, val_map: float | None, val_loss: float | None,
               epoch_time: float, stop) -> bool:
    """Record a finished epoch (results.csv, best.pt when it improved, then last.pt); returns
    whether it improved."""
    lr = run.optimizer.param_groups[0]["lr"]
    losses = state.means()
    run.folder.add_epoch({"epoch": epoch + 1, **{k: round(losses.get(k, 0.0), 5) for k in ("loss", *LOSS_KEYS)},
                          "lr": f"{lr:.6g}", "val_loss": "" if val_loss is None else round(val_loss, 5),
                          "val_map50": "" if val_map is None else round(val_map, 5),
                          "epoch_time_s": round(epoch_time, 1)})
    # Without a val split the last epoch is the best one can say.
    improved = val_map is None or val_map > run.best_map
    if improved:
        run.best_map, run.best_epoch = (run.best_map if val_map is None else val_map), epoch
    metrics = {"map50": val_map, "best_map50": run.best_map if run.data.val else None, "best_epoch": run.best_epoch + 1}
    state_dict = run.model.state_dict()
    run.final_loss = losses.get("loss")
    cost = run.cost(epoch + 1)
    with stop.save():
        # best.pt first: last.pt records the best epoch, so it must never be on disk before
        # the best.pt it describes.
        if improved:
            run.folder.save("best", model_state=state_dict, epoch=epoch, metrics=metrics, training=cost)
        run.folder.save("last", model_state=state_dict, epoch=epoch, metrics=metrics, train_state=run.train_state(),
                        training=cost)
    return improved


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision. On CUDA (on by default there): bfloat16 where the GPU has it (no loss
    scaling needed), else float16 with the gradient scaler. On the CPU, with ``--amp``:
    bfloat16, which pays only on CPUs with bfloat16 instructions (AVX-512 BF16, AMX).
    None: full precision."""
    if device.type == "cuda" and cfg.amp is not False:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cfg.amp:
        return None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("--amp on a CPU without bfloat16 instructions: expect slower training, not faster")
    return torch.bfloat16


def _resume_checkpoint(cfg: TrainConfig, dist: Dist = Dist()) -> dict[str, Any] | None:
    """The ``last.pt`` a config resumes from (None for a new run), checked against the config:
    only :data:`RESUMABLE` settings may differ from the run's own, and a run stopped in the
    middle of an epoch resumes on as many processes as it ran on."""
    if cfg.resume is None:
        return None
    ckpt = load_checkpoint(cfg.resume)
    partial = (ckpt.get("train_state") or {}).get("partial")
    if partial and partial.get("world", 1) != dist.world:
        raise UsageError(f"{cfg.resume}: stopped in the middle of an epoch with {partial.get('world', 1)} "
                         f"process(es); resume it with as many (torchrun --nproc_per_node {partial.get('world', 1)})")
    if "train_state" not in ckpt:
        raise UsageError(f"{cfg.resume}: has no training state to resume from; pass the run's last.pt")
    stored, given = _flat(TrainConfig.from_dict(ckpt["args"])), _flat(cfg)
    changed = sorted(k for k in given if k not in RESUMABLE and given[k] != stored.get(k))
    if changed:
        raise UsageError(f"{cfg.resume}: resuming with other settings ({', '.join(changed)}); build the config "
                         "with detect.training.trainer.resume_config, which allows only --epochs, --time, --patience, --device, "
                         "--workers to change")
    return ckpt


def _check_same_split(cfg: TrainConfig, ckpt: dict[str, Any], data: Data) -> None:
    """A resumed run must see the images it trained on: the same train and val ids (its data
    may have moved, ``--data``)."""
    recorded = (ckpt.get("data") or {}).get("splits") or {}
    for split in ("train", "val"):
        if split not in recorded:
            continue
        have, had = set(data.split_info.get(split, ())), set(recorded[split])
        if have != had:
            missing = sorted(had - have)
            extra = sorted(have - had)
            first = f"{len(missing)} missing (first {show(missing[0])})" if missing else f"{len(extra)} new (first {show(extra[0])})"
            raise UsageError(f"{show(cfg.data)}: its {split} split is not the one {cfg.resume.parent.name} trained on "
                             f"({first}); resume on the same data (moved: --data NEW_PLACE), or start a new run "
                             f"from its weights: python -m detect.train --weights {show(cfg.resume)} ...")


def _flat(cfg: TrainConfig) -> dict[str, Any]:
    """Every option by its command-line name: the model's fields beside the others."""
    values = cfg.as_dict()
    return {**{k: v for k, v in values.items() if k != "model"}, **values["model"]}


def _repair_best(run: RunFolder, ckpt: dict[str, Any], best_epoch: int, partial: EpochState | None,
                 echo: Echo) -> tuple[float, int]:
    """``best.pt`` went missing (deleted, or a disk error): restore it from ``last.pt`` when
    that holds the best epoch, else start the best over. Returns the best mAP and epoch."""
    if best_epoch == ckpt["epoch"] and partial is None:
        run.save("best", model_state=ckpt["model"], epoch=ckpt["epoch"],
                 metrics={k: v for k, v in ckpt["metrics"].items() if k != "interrupted"},
                 training=ckpt.get("training"))
        echo(f"{run.best} was missing; restored it from last.pt (epoch {best_epoch + 1})", err=True)
        return ckpt["train_state"]["best_map50"], best_epoch
    echo(f"{run.best} is missing and its weights (epoch {best_epoch + 1}) are lost; the next finished epoch "
         "writes a new best.pt", err=True)
    return -1.0, -1


def _banner(echo: Echo, run: _Run) -> None:
    cfg, data, model, dist = run.cfg, run.data, run.model, run.dist
    procs = f" x {dist.world} processes (DistributedDataParallel)" if dist.active else ""
    amp = f", AMP {str(run.amp_dtype).replace('torch.', '')}" if run.amp_dtype else ""
    echo(f"Run {run.folder.path}: {cfg.model.backbone}, {len(data.classes)} classes ({', '.join(map(show, data.classes))}), "
         f"{len(data.train)} train / {len(data.val)} val images, input {cfg.model.input_size}px{data.input_note}, "
         f"device {run.device}{procs}{amp}")
    echo(f"Recipe {cfg.recipe}: {RECIPE_REASONS.get(cfg.recipe, 'as the run recorded')}; each value can be "
         "overridden (--box-head-dim, --roi-batch, ..., or --recipe)")
    if cfg.exif == "ignore":
        echo("EXIF orientation: ignored (--exif ignore): boxes and images in the stored frame")
    mc = model.config
    blocks = f" (MobileNetV3 blocks {'/'.join(map(str, mc.feature_blocks))} + max-pool)" if mc.feature_blocks else ""
    echo(f"Features: FPN at strides {'/'.join(map(str, feature_strides(mc)))}{blocks}, {mc.fpn_channels} channels, FPN norm {mc.fpn_norm}; "
         f"box head {mc.box_head_dim} wide, RoIAlign sampling {mc.roi_sampling_ratio}, "
         f"{mc.rpn_post_nms} proposals, {mc.roi_batch} sampled per image")
    echo(f"RPN anchors ({'/'.join(str(n) for n in anchors_per_location(model))} per location):")
    echo("  " + describe_anchors(model.rpn.anchor_generator).replace("\n", "\n  "))
    echo(f"  matched by IoU: foreground >= {mc.rpn_fg_iou}, background < {mc.rpn_bg_iou}")
    echo(f"  {model.weights_report.summary()}")
    if not data.val:
        echo("No val split: val mAP is not measured, and best.pt is the last epoch (pass --val-fraction, or "
             "ImageSets/Main/val.txt, to measure it)")
    _estimate(echo, run)
    batch = f"batch {cfg.batch_size}" + (f" x {dist.world} = {cfg.batch_size * dist.world}" if dist.active else "")
    echo(f"Optimizer {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}, "
         f"{min(cfg.warmup_iters, len(run.train_loader))} warm-up iterations), "
         f"{batch}, {cfg.epochs} epochs, augment {cfg.augment}")
    if cfg.balance == "repeat":
        _balance_banner(echo, run)


def _balance_banner(echo: Echo, run: _Run) -> None:
    """--balance repeat: each class's repeat factor and the epoch's size, and a hint when
    the factors are all 1."""
    per_class, _ = repeat_factors(run.cfg, run.data)
    factors = ", ".join(f"{show(c)} x{r:.2f}" for c, r in per_class.items())
    echo(f"Balance: repeat-factor sampling (t={run.cfg.balance_t:g}): {factors}; an epoch is "
         f"{run.sampler.epoch_size} images drawn from {len(run.data.train)} train images")
    if all(r == 1 for r in per_class.values()):
        echo(f"  every class is in at least {run.cfg.balance_t:g} of the train images (--balance-t), so this changes "
             "nothing: raise --balance-t")


LONG_RUN_S = 3600  # an estimate past this says what would shorten it


def _estimate(echo: Echo, run: _Run) -> None:
    """The run's expected cost on this machine, from the steps measured before training;
    a ``time`` budget's plan; and, for a long run, what would shorten it."""
    cfg, pace = run.cfg, run.pace
    if pace is None:
        return
    steps, left = len(run.train_loader), cfg.epochs - run.start_epoch
    val = pace.val_seconds(len(run.data.val), bool(cfg.val_loss))
    parts = f"{steps} steps x {pace.step_s:.2f} s" + (f" + validation {format_duration(val)}" if run.data.val else "")
    total = run.epoch_estimate * left
    echo(f"Estimate on this machine (from {pace.steps} steps measured before training): "
         f"{format_duration(run.epoch_estimate)} an epoch ({parts}), {format_duration(total)} for "
         f"{'the ' + str(left) + ' epochs left' if run.start_epoch else str(left) + ' epochs'}")
    if cfg.time is not None and cfg.max_epochs is not None:
        fit = "they fit" if cfg.epochs == cfg.max_epochs else f"only {cfg.epochs} fit on this machine"
        echo(f"Budget of the {cfg.recipe} recipe: {cfg.max_epochs} epochs within {cfg.time:g} min ({fit}; --epochs "
             f"or --time to choose)")
    elif cfg.time is not None:
        spent = f", {format_duration(run.train_time)} of it spent" if run.start_epoch else ""
        echo(f"--time {cfg.time:g} min{spent}: {cfg.epochs} epochs fit it; the learning-rate schedule "
             f"(warm-up, {cfg.schedule}) is fitted to {cfg.epochs} epochs")
    elif total > LONG_RUN_S:
        echo(f"That is long. To shorten it: --time MINUTES (the epochs that fit the budget), a smaller "
             f"--input-size (now {cfg.model.input_size} px; a step's cost grows with it), or a GPU")
