"""Training a detector: :func:`train` from top to bottom.

:func:`train` reads like torchvision's reference ``main``: the config resolved once the
facts it depends on are known (:func:`_config_and_data`) -> data -> model -> loaders -> a few
measured steps (the estimate, the epochs of a ``time`` budget) -> run folder -> optimizer and
schedule; then a flat epoch loop (:func:`_epochs`): train one epoch
(:func:`detect.training.engine.train_one_epoch`), validate, checkpoint, stop? The run's state
is in a few named parts (:mod:`detect.training.run_state`); resuming is
:mod:`detect.training.resume`, what the run says :mod:`detect.training.banner`, the run folder
and its files :class:`detect.training.run_folder.RunFolder`, Ctrl-C :mod:`detect.training.stop`.

The library never prints: the run's narrative (the banner, one line per epoch) goes to
the ``echo`` callback, which ``python -m detect.train`` prints and which logs by default.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from detect.common.device import resolve_device
from detect.common.errors import UsageError, show
from detect.common.files import check_writable
from detect.data.records import ground_truths
from detect.model.build import StartWeights, build_model, start_weights
from detect.model.config import ModelConfig
from detect.training import distributed, resume
from detect.training.banner import banner, epoch_line
from detect.training.budget import format_duration, measure
from detect.training.config import Echo, RunFacts, TrainConfig, budget_epochs, log_echo, resolve_config, resume_config
from detect.training.data_prep import Data, data_facts, load_data, make_loaders, open_data
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
from detect.training.run_folder import RunFolder, join_numbers, training_mode
from detect.training.run_state import Loaders, Optimisation, Pacing, Progress, Run, RunPlan, TrainResult
from detect.training.stop import GracefulStop, shared_stop

log = logging.getLogger(__name__)

# resume_config: the documented way to build a resumed run's config, also from here.
__all__ = ["TrainResult", "model_for_config", "resume_config", "train"]


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
        say = echo if dist.main else _silent
        run = _start(cfg, dist, device, say, clock)
        return _fit(run, say, progress and dist.main)
    finally:
        dist.close()


def _silent(text: str, *, err: bool = False) -> None:
    pass


# --- the start: every part of the run, built once --------------------------------------------


def _start(cfg: TrainConfig, dist: Dist, device: torch.device, echo: Echo, clock: Callable[[], float]) -> Run:
    """Config and data -> model -> loaders -> a few measured steps (the estimate, the epochs of
    a ``time`` budget) -> run folder -> optimizer and schedule, for a new run or one resumed
    from its ``last.pt``; prints the banner."""
    ckpt = resume.checkpoint(cfg, dist)
    cfg, data, start = _config_and_data(cfg, ckpt, dist, device, echo)
    model = _model(cfg, data, ckpt, start)
    earlier = (ckpt or {}).get("training")
    plan = RunPlan(cfg, data, dist, device, _amp_dtype(cfg, device), ground_truths(data.val, data.classes),
                   mode=_how_it_started(cfg, model, ckpt, earlier),
                   weights_source="resumed" if ckpt else model.weights_report.source, earlier=earlier)
    model, net = _placed(model, plan)
    loaders = Loaders(*make_loaders(cfg, data, dist, device))
    pacing = _pace(plan, model, loaders, clock)
    # The one default that waits for measured steps: the epochs of a time budget (what is left
    # of it, resuming). Before the run folder: a budget too small for one epoch leaves nothing.
    cfg.epochs = budget_epochs(cfg, RunFacts(epoch_seconds=pacing.epoch_estimate,
                                             spent_seconds=ckpt["train_state"]["train_time"] if ckpt else 0.0,
                                             epochs_done=ckpt["epoch"] + 1 if ckpt else 0))
    folder = _folder(plan, ckpt)
    run = Run(plan, folder, loaders, _optimisation(plan, model, net, loaders),
              Progress(final_loss=(earlier or {}).get("final_loss")), pacing)
    if ckpt is not None:
        resume.restore(run, ckpt, echo)
    else:
        folder.start(cfg.as_dict(), data.split_info)
    folder.checkpoint_base = _checkpoint_base(plan, model, folder)
    banner(echo, run)
    return run


def _config_and_data(cfg: TrainConfig, ckpt: dict[str, Any] | None, dist: Dist, device: torch.device,
                     echo: Echo) -> tuple[TrainConfig, Data, StartWeights | None]:
    """The run's config, resolved once the facts it depends on are known, and its data.

    Each step's input is named: ``options`` are the options as given, checked before any
    work (and with the demo's recipe, which needs no facts: it says what demo to make); the
    facts come from the data and the starting weights (the images' median size, pretrained
    or not) and the machine (processes, CUDA); ``resolve_config(options, facts)`` decides
    every default once. Only the epochs of a ``time`` budget wait for measured steps
    (:func:`detect.training.config.budget_epochs`, in :func:`_start`). Returns the config, the data and the starting weights (None resuming).
    """
    options = resolve_config(cfg)  # every option checked before any work
    out = options.resume.parent if ckpt is not None else options.out
    try:  # before any data is read: a run that cannot save is no run
        if dist.main:
            check_writable(out)
    except OSError as exc:
        raise UsageError(f"--out {show(out)}: cannot write there ({exc.strerror or exc}); "
                         "pass a folder you can write to") from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)
    random.seed(options.seed)
    if ckpt is not None:
        resume.check_data_there(options)
    options, files = open_data(options, echo, dist=dist)
    median, input_note = data_facts(options, files)
    start = None if ckpt else start_weights(options.model.backbone, options.weights)
    facts = RunFacts(median_size=median, pretrained=bool(start and start.pretrained), world=dist.world,
                     cuda=device.type == "cuda")
    cfg = resolve_config(options, facts)  # the run's config: every default decided, once
    data = load_data(cfg, files, echo)
    data.input_note = input_note
    if ckpt is not None:
        resume.check_same_data(cfg, ckpt, data)
    return cfg, data, start


def _model(cfg: TrainConfig, data: Data, ckpt: dict[str, Any] | None, start: StartWeights | None) -> torch.nn.Module:
    """The detector: a resumed run's is rebuilt from its checkpoint's own description. Every
    rank starts from the same seed, and DDP broadcasts rank 0's weights besides."""
    if ckpt is None:
        return model_for_config(cfg, len(data.classes) + 1, start)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model


def _how_it_started(cfg: TrainConfig, model, ckpt: dict[str, Any] | None, earlier: dict[str, Any] | None) -> dict:
    """How the run started, for the comparison table; a resumed run keeps its record (one
    from before these records knows its weights only when they were not "auto")."""
    return earlier or training_mode(
        weights=model.weights_report.source if not ckpt else None if cfg.weights == "auto" else cfg.weights,
        backbone=cfg.model.backbone, trainable_layers=model.config.trainable_layers)


def _placed(model: torch.nn.Module, plan: RunPlan) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model on its device (SyncBatchNorm, channels-last as asked), and what steps run
    through: the model, or its DistributedDataParallel wrapper."""
    cfg, dist, device = plan.cfg, plan.dist, plan.device
    if dist.active and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if dist.active:
        return model, torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, model


def _pace(plan: RunPlan, model: torch.nn.Module, loaders: Loaders, clock: Callable[[], float]) -> Pacing:
    """A few measured steps: the banner's estimate and what a ``time`` budget is planned with
    (rank 0 measures, every rank plans with its figures)."""
    cfg, data, dist = plan.cfg, plan.data, plan.dist
    pace = dist.broadcast(measure(model, loaders.train, loaders.val if data.val else None, plan.device,
                                  optimizer=cfg.optimizer, lr=cfg.lr, amp_dtype=plan.amp_dtype,
                                  load_in_step=cfg.workers == 0, clock=clock) if dist.main else None)
    return Pacing(pace, pace.epoch_seconds(len(loaders.train), len(data.val), bool(cfg.val_loss)))


def _folder(plan: RunPlan, ckpt: dict[str, Any] | None) -> RunFolder:
    """The run folder: rank 0 claims it (a new name when the default is taken), the others follow."""
    cfg, dist = plan.cfg, plan.dist
    path = cfg.resume.parent if ckpt else (RunFolder.new(cfg.out, cfg.name or cfg.model.backbone).path if dist.main else None)
    folder = RunFolder(Path(dist.broadcast(str(path) if path else None)), writes=dist.main, tensorboard=cfg.tensorboard)
    cfg.name = folder.name
    return folder


def _optimisation(plan: RunPlan, model: torch.nn.Module, net: torch.nn.Module, loaders: Loaders) -> Optimisation:
    """The optimizer over the trainable parameters, its schedule over the run's epochs, the scaler."""
    cfg = plan.cfg
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        epochs=cfg.epochs, iters_per_epoch=len(loaders.train), warmup_iters=cfg.warmup_iters, schedule=cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=plan.amp_dtype == torch.float16)
    return Optimisation(model, net, optimizer, scheduler, scaler)


def _checkpoint_base(plan: RunPlan, model: torch.nn.Module, folder: RunFolder) -> dict[str, Any]:
    """What every checkpoint of the run holds besides its weights and epoch."""
    cfg, data = plan.cfg, plan.data
    return {
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


# --- the epochs ---------------------------------------------------------------------------


@dataclass
class _Ended:
    """How the epochs ended (:class:`TrainResult`'s ``status``, ``stopped_in``, ``resume_exact``)."""

    status: str
    stopped_in: int = 0
    exact: bool = True


def _fit(run: Run, echo: Echo, bar: bool) -> TrainResult:
    """The epochs, with Ctrl-C honoured between steps and the run logged in ``runs.csv``
    however they end."""
    ended = _Ended("finished")
    try:
        with GracefulStop(echo) as stop:
            ended = _epochs(run, stop, echo, bar)
    except KeyboardInterrupt:
        # Ctrl-C three times, or outside the main thread: in the middle of a step, so the
        # last epoch boundary (the last.pt on disk) is where a resume starts.
        ended = _Ended("interrupted", stopped_in=run.progress.epochs_done + 1, exact=False)
    except NonFiniteLoss:
        ended = _Ended("stopped: non-finite loss")
        raise
    finally:
        if run.progress.epochs_done > run.progress.start_epoch or ended.status != "finished":
            run.folder.log_run(_run_row(run, ended.status))
    p, data = run.progress, run.plan.data
    return TrainResult(run=run.folder, status=ended.status, best_map50=max(p.best_map, 0.0) if data.val else None,
                       best_epoch=p.best_epoch + 1, train_time=p.train_time, config=run.plan.cfg,
                       stopped_in=ended.stopped_in, resume_exact=ended.exact, model=run.opt.model,
                       iterations=p.iterations, main=run.plan.dist.main)


def _epochs(run: Run, stop: GracefulStop, echo: Echo, bar: bool) -> _Ended:
    """Like torchvision's reference loop: train one epoch, validate (rank 0), save best.pt then
    last.pt, one line per epoch; then re-fit a ``time`` budget and check the patience. A stop
    request saves where it stopped."""
    plan, progress = run.plan, run.progress
    # All processes must stop at the same step: the request is shared (every step on CPUs;
    # every 10 steps on GPUs, where sharing means waiting for the device).
    stop_now = shared_stop(stop, plan.dist, every=10 if plan.device.type == "cuda" else 1)
    epoch = progress.start_epoch
    while epoch < plan.cfg.epochs:  # read each time: a time budget re-fits the epochs
        state, complete = _train_epoch(run, epoch, stop_now, bar)
        t0 = time.perf_counter()
        val_map, val_loss, val_stopped = _validate(run, epoch, complete, stop)
        if not complete or val_stopped or stop_now(force=True):
            _save_stopped(run, state, stop)
            return _Ended("interrupted", stopped_in=epoch + 1)
        seconds = state.seconds + time.perf_counter() - t0
        improved = _end_epoch(run, epoch, state, val_map, val_loss, seconds, stop)
        echo(epoch_line(run, epoch, val_map, improved, seconds,
                        state.data_seconds / max(state.seconds, 1e-9) if bar else None))
        if plan.cfg.time is not None and epoch + 1 < plan.cfg.epochs:
            _keep_to_budget(run, epoch, echo)
        if _out_of_patience(run, epoch, echo):
            return _Ended("early-stopped")
        epoch += 1
    return _Ended("finished")


def _train_epoch(run: Run, epoch: int, stop_now, bar: bool) -> tuple[EpochState, bool]:
    """The training steps of ``epoch`` (what is left of it, resuming in its middle); returns
    where the epoch stands and whether it ran to its end."""
    plan, opt, loaders, progress = run.plan, run.opt, run.loaders, run.progress
    partial, progress.partial = progress.partial, None
    state = partial if partial is not None and partial.epoch == epoch else EpochState(epoch)
    # The epoch's data order, augmentations and samplers follow from (seed, epoch): a
    # resumed epoch replays them (train_one_epoch then restores the streams).
    seed_everything(plan.cfg.seed * 10_000 + epoch, loaders.generator, loaders.train_set.transform)
    loaders.sampler.set_epoch(epoch)
    done_before = state.iteration
    later = run.pacing.later(epoch, plan.cfg.epochs, len(plan.data.val), bool(plan.cfg.val_loss))
    complete = train_one_epoch(opt.net, opt.optimizer, loaders.train, plan.device, state=state, epochs=plan.cfg.epochs,
                               scheduler=opt.scheduler, scaler=opt.scaler, amp_dtype=plan.amp_dtype,
                               clip_grad=plan.cfg.clip_grad, progress=bar, stop=stop_now, later_seconds=later)
    progress.iterations += state.iteration - done_before
    plan.dist.sync_buffers(opt.model)
    return state, complete


def _validate(run: Run, epoch: int, complete: bool, stop) -> tuple[float | None, float | None, bool]:
    """After a whole epoch, on rank 0 and shared with every rank: val mAP@0.5 and (with
    ``val_loss``) the val loss; the third value says Ctrl-C stopped the pass."""
    plan = run.plan
    scores = None, None, False
    if complete and plan.data.val and plan.dist.main and not stop():
        scores = _val_scores(run, epoch, stop)
    return plan.dist.broadcast(scores)


def _val_scores(run: Run, epoch: int, stop) -> tuple[float | None, float | None, bool]:
    plan, model, val = run.plan, run.opt.model, run.loaders.val
    val_map = evaluate(model, val, plan.truths, plan.data.classes, plan.device, stop=stop)
    if val_map is None:
        return None, None, True
    if not plan.cfg.val_loss:
        return val_map, None, False
    losses = validation_loss(model, val, plan.device, seed=plan.cfg.seed * 10_000 + epoch, amp_dtype=plan.amp_dtype,
                             stop=stop)
    if losses is None:
        return val_map, None, True
    return val_map, losses.get("loss"), False


def _save_stopped(run: Run, state: EpochState, stop: GracefulStop) -> None:
    """``last.pt`` where a stop request stopped the run: the epochs done, and the unfinished
    epoch's position with every process's random streams."""
    if state.rng is None:  # stopped after the last batch: validation is what remains
        state.rng = capture_rng()
    rngs = run.plan.dist.gather(state.rng)
    p = run.progress
    with stop.save():
        run.folder.save("last", model_state=run.opt.model.state_dict(), epoch=p.epochs_done - 1,
                        metrics={"map50": None, "best_map50": p.best_map, "best_epoch": p.best_epoch + 1,
                                 "interrupted": True},
                        train_state=run.train_state(state, rngs), training=run.cost(p.epochs_done))


def _end_epoch(run: Run, epoch: int, state: EpochState, val_map: float | None, val_loss: float | None,
               seconds: float, stop: GracefulStop) -> bool:
    """Record a finished epoch (its time, results.csv, best.pt when it improved, then
    last.pt); returns whether it improved."""
    p, folder = run.progress, run.folder
    p.train_time += seconds
    run.pacing.epoch_times.append(seconds)
    lr = run.opt.optimizer.param_groups[0]["lr"]
    losses = state.means()
    folder.add_epoch({"epoch": epoch + 1, **{k: round(losses.get(k, 0.0), 5) for k in ("loss", *LOSS_KEYS)},
                      "lr": f"{lr:.6g}", "val_loss": "" if val_loss is None else round(val_loss, 5),
                      "val_map50": "" if val_map is None else round(val_map, 5),
                      "epoch_time_s": round(seconds, 1)})
    # Without a val split the last epoch is the best one can say.
    improved = val_map is None or val_map > p.best_map
    if improved:
        p.best_map, p.best_epoch = (p.best_map if val_map is None else val_map), epoch
    metrics = {"map50": val_map, "best_map50": p.best_map if run.plan.data.val else None, "best_epoch": p.best_epoch + 1}
    state_dict = run.opt.model.state_dict()
    p.final_loss = losses.get("loss")
    cost = run.cost(epoch + 1)
    with stop.save():
        # best.pt first: last.pt records the best epoch, so it must never be on disk before
        # the best.pt it describes.
        if improved:
            folder.save("best", model_state=state_dict, epoch=epoch, metrics=metrics, training=cost)
        folder.save("last", model_state=state_dict, epoch=epoch, metrics=metrics, train_state=run.train_state(),
                    training=cost)
    p.epochs_done = epoch + 1
    return improved


def _out_of_patience(run: Run, epoch: int, echo: Echo) -> bool:
    """``patience`` epochs passed without a better val mAP (never without a val split)."""
    cfg, p = run.plan.cfg, run.progress
    if not (cfg.patience and run.plan.data.val and epoch - p.best_epoch >= cfg.patience):
        return False
    echo(f"Early stop: no better val mAP@0.5 for {cfg.patience} epochs (best {p.best_map:.4f} at epoch {p.best_epoch + 1})")
    return True


# A --time run re-fits its epochs when they take this much longer (or shorter) than planned.
OVERRUN = 1.05


def _keep_to_budget(run: Run, epoch: int, echo: Echo) -> None:
    """After ``epoch``: when the epochs of this call (their median, so that one epoch slowed
    by another program does not decide) take longer than the estimate the ``time`` budget was
    planned with, fewer epochs fit; when they take less and the run is still in its first
    half (where stretching the schedule barely moves the learning rate), more fit, up to a
    recipe's cap. Rank 0 decides; the schedule is re-fitted to the new length on every rank."""
    cfg, pacing = run.plan.cfg, run.pacing
    epochs = cfg.epochs
    if run.plan.dist.main and pacing.epoch_times:
        pace = statistics.median(pacing.epoch_times)
        fit = epoch + 1 + max(0, int((cfg.time * 60 - run.progress.train_time) // pace))
        if cfg.max_epochs is not None:
            fit = min(fit, cfg.max_epochs)
        slower = pace > pacing.epoch_estimate * OVERRUN and fit < cfg.epochs
        faster = pace * OVERRUN < pacing.epoch_estimate and fit > cfg.epochs and 2 * (epoch + 1) <= cfg.epochs
        if slower or faster:
            epochs = fit
            budget_name = f"--time {cfg.time:g}" if cfg.max_epochs is None else f"The {cfg.recipe} recipe's {cfg.time:g} min"
            planned = "planned with" if pacing.refitted else "measured before training"
            echo(f"{budget_name}: an epoch takes {format_duration(pace)}, not the "
                 f"{format_duration(pacing.epoch_estimate)} {planned}; {epochs} epochs fit the budget "
                 f"(the schedule is re-fitted to them)", err=True)
            pacing.epoch_estimate, pacing.refitted = pace, True
    epochs = run.plan.dist.broadcast(epochs)
    if epochs == cfg.epochs:
        return
    cfg.epochs = epochs
    run.folder.checkpoint_base["args"]["epochs"] = epochs
    run.opt.scheduler.lr_lambdas = [lr_lambda(epochs=epochs, iters_per_epoch=len(run.loaders.train),
                                              warmup_iters=cfg.warmup_iters, schedule=cfg.schedule)]


def _run_row(run: Run, status: str) -> dict[str, Any]:
    """The run's row in ``<out>/runs.csv``."""
    cfg, p, data = run.plan.cfg, run.progress, run.plan.data
    return {"backbone": cfg.model.backbone, "data": str(data.root), "epochs": cfg.epochs, "batch": cfg.batch_size,
            "lr": cfg.lr, "input_size": cfg.model.input_size, "anchor_scales": join_numbers(cfg.model.anchor_scales),
            "anchor_ratios": join_numbers(cfg.model.anchor_ratios), "weights": run.plan.weights_source,
            "best_val_map50": f"{max(p.best_map, 0):.4f}" if data.val else "-",
            "train_time_min": f"{p.train_time / 60:.2f}", "status": status}
