"""Resuming a run from its ``last.pt``: the checkpoint checked against the config
(:func:`checkpoint`), the run's data checked to be the data it trained on
(:func:`check_data_there`, :func:`check_same_data`), and the optimizer, schedule, scaler, the
best so far and an unfinished epoch put back (:func:`restore`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detect.common.errors import UsageError, show
from detect.model.checkpoint import load_checkpoint
from detect.training.config import RESUMABLE, Echo, TrainConfig
from detect.training.data_prep import Data
from detect.training.distributed import Dist
from detect.training.engine import EpochState
from detect.training.run_folder import RunFolder
from detect.training.run_state import Run

__all__ = ["check_data_there", "check_same_data", "checkpoint", "restore"]


def checkpoint(cfg: TrainConfig, dist: Dist = Dist()) -> dict[str, Any] | None:
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


def check_data_there(cfg: TrainConfig) -> None:
    """A resumed run's data folder and class list are still where it recorded them (before
    any data is read: the message says how to point it at them)."""
    if cfg.data is not None and not Path(cfg.data).exists():
        raise UsageError(f"{show(cfg.data)}: the data {cfg.resume.parent.name} trained on is not there any more; if it "
                         f"moved, resume with --data NEW_PLACE (the same images): python -m detect.train --resume "
                         f"{show(cfg.resume)} --data NEW_PLACE")
    if cfg.classes is not None and not Path(cfg.classes).exists():
        raise UsageError(f"{show(cfg.classes)}: the class list {cfg.resume.parent.name} trained with is not there any "
                         "more; give it again with --classes FILE")


def check_same_data(cfg: TrainConfig, ckpt: dict[str, Any], data: Data) -> None:
    """A resumed run must see the classes and images it trained on: the same class list and
    the same train and val ids (its data may have moved, ``--data``)."""
    if list(ckpt["classes"]) != data.classes:
        raise UsageError(f"{show(cfg.resume)}: trained on classes {ckpt['classes']}, but the data now has {data.classes}")
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


def restore(run: Run, ckpt: dict[str, Any], echo: Echo) -> None:
    """Optimizer, schedule, scaler, the best so far and an unfinished epoch, from ``last.pt``."""
    st, opt, progress, folder, dist = ckpt["train_state"], run.opt, run.progress, run.folder, run.plan.dist
    opt.optimizer.load_state_dict(st["optimizer"])
    opt.scheduler.load_state_dict(st["scheduler"])
    opt.scaler.load_state_dict(st["scaler"])
    progress.start_epoch = progress.epochs_done = ckpt["epoch"] + 1
    progress.best_map, progress.best_epoch, progress.train_time = st["best_map50"], st["best_epoch"], st["train_time"]
    if st.get("partial"):
        progress.partial = EpochState.from_dict({**st["partial"], "rng": st["partial"]["rng"][dist.rank]})
    folder.tidy_for_resume(epochs_done=progress.start_epoch)
    if dist.main and not folder.best.exists() and progress.best_epoch >= 0:
        progress.best_map, progress.best_epoch = _repair_best(folder, ckpt, progress.best_epoch, progress.partial, echo)
    progress.best_map, progress.best_epoch = dist.broadcast((progress.best_map, progress.best_epoch))
    where = f"epoch {progress.start_epoch + 1}" + (f", iteration {progress.partial.iteration + 1}" if progress.partial else "")
    echo(f"Resuming {folder.path} at {where} of {run.plan.cfg.epochs}")


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
