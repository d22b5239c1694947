"""A training run's folder, and everything written into it.

``<out>/<run>/`` holds:

=================  ================================================================
``best.pt``        weights of the epoch with the best val mAP@0.5
``last.pt``        the last epoch, with the training state for ``--resume``
``results.csv``    one row per epoch: losses, lr, val mAP@0.5, epoch time
``args.json``      every training option
``split.json``     the exact train/val ids used, and where they came from
=================  ================================================================

and ``<out>/runs.csv`` gets one row per run (the experiment log). :class:`RunFolder` owns
these files and the checkpoint payload, so the training loop only says what happened.
Checkpoints are written atomically (:func:`detect.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from detect.checkpoint import save_checkpoint
from detect.fsutil import remove_stale_temps, unique_folder, write_atomic

__all__ = ["RESULT_FIELDS", "RUN_FIELDS", "RunFolder"]

RESULT_FIELDS = ["epoch", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
                 "lr", "val_map50", "epoch_time_s"]
RUN_FIELDS = ["run", "backbone", "data", "epochs", "batch", "lr", "input_size", "anchor_scales",
              "anchor_ratios", "weights", "best_val_map50", "train_time_min", "status", "finished"]


class RunFolder:
    """``<out>/<name>/`` and the files of one run.

    Args:
        path: the run folder (created on first write).
        checkpoint_base: what every checkpoint of the run holds besides weights, epoch and
            metrics: ``model_config``, ``classes``, ``backbone``, ``run``, ``args``, ``data``
            (see :mod:`detect.checkpoint`).
        writes: False makes every method a no-op (the other processes of a torchrun job:
            only rank 0 writes).
    """

    def __init__(self, path: Path, checkpoint_base: Mapping[str, Any] | None = None, *, writes: bool = True) -> None:
        self.path = Path(path)
        self.checkpoint_base = dict(checkpoint_base or {})
        self.writes = writes

    @classmethod
    def new(cls, out: Path, name: str) -> "RunFolder":
        """``out/name``, or ``out/name2``, ``name3``... rather than overwrite a run."""
        return cls(unique_folder(out, name))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def start(self, args: Mapping[str, Any], split: Mapping[str, Any]) -> None:
        """A new run: write ``args.json`` and ``split.json``."""
        if not self.writes:
            return
        write_atomic(self.path / "args.json", json.dumps(_jsonable(args), indent=2) + "\n")
        write_atomic(self.path / "split.json", json.dumps(dict(split), indent=1) + "\n")

    def tidy_for_resume(self, *, epochs_done: int) -> None:
        """Before a resume: remove temporary files a killed process left mid-write, and the
        ``results.csv`` rows of epochs ``last.pt`` does not hold (written before a kill came
        between the row and the checkpoint), so every epoch has one row."""
        if not self.writes:
            return
        for name in ("last.pt", "best.pt", "results.csv", "args.json", "split.json"):
            remove_stale_temps(self.path / name)
        path = self.path / "results.csv"
        if not path.exists():
            return
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs_done]
        if kept != rows:
            buffer = io.StringIO()
            csv.writer(buffer).writerows(kept)
            write_atomic(path, buffer.getvalue())

    def add_epoch(self, row: Mapping[str, Any]) -> None:
        """Append one epoch to ``results.csv`` (the header is written first when new)."""
        if not self.writes:
            return
        path = self.path / "results.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(RESULT_FIELDS)
            w.writerow([row.get(k, "") for k in RESULT_FIELDS])

    def save(self, which: str, *, model_state, epoch: int, metrics: Mapping[str, Any],
             train_state: Mapping[str, Any] | None = None) -> Path:
        """Write ``last.pt`` or ``best.pt`` (``which``): the base payload plus these."""
        if not self.writes:
            return self.path / f"{which}.pt"
        payload = {**self.checkpoint_base, "model": model_state, "epoch": epoch, "metrics": dict(metrics)}
        if train_state is not None:
            payload["train_state"] = dict(train_state)
        return save_checkpoint(payload, self.path / f"{which}.pt")

    def log_run(self, values: Mapping[str, Any]) -> None:
        """Append this run to ``<out>/runs.csv``, the experiment log (fields :data:`RUN_FIELDS`)."""
        if not self.writes:
            return
        path = self.path.parent / "runs.csv"
        new = not path.exists()
        row = {**values, "run": self.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(RUN_FIELDS)
            w.writerow([row.get(k, "") for k in RUN_FIELDS])


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def join_numbers(values: Sequence[float] | None, default: str = "default") -> str:
    """``[0.5, 1.5, 3.0]`` -> ``"0.5/1.5/3"`` (for the run log)."""
    return "/".join(f"{v:g}" for v in values) if values else default
