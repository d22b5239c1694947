"""A training run's folder, and everything written into it.

``<out>/<run>/`` holds:

=================  ================================================================
``best.pt``        weights of the epoch with the best val mAP@0.5
``last.pt``        the last epoch, with the training state for ``--resume``
``results.csv``    one row per epoch: losses, lr, val loss, val mAP@0.5, epoch time
``results.png``    those curves, redrawn after every epoch (:func:`detect.scoring.report.plot_training_curves`)
``args.json``      every training option
``split.json``     the exact train/val ids used, and where they came from
=================  ================================================================

and ``<out>/runs.csv`` gets one row per run (the experiment log). :class:`RunFolder` owns
these files and the checkpoint payload, so the training loop only says what happened.
Checkpoints are written atomically (:func:`detect.model.checkpoint.save_checkpoint`).

Besides the weights, every checkpoint records what it cost and how it came about, so
``detect.eval`` needs no log file: ``history`` (the ``results.csv`` rows up to its epoch)
and ``training`` (:func:`training_mode` plus :func:`training_record`: mode, weights source,
trainable layers, epochs, training time, final training loss, peak memory).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from detect.model.backbones import get_backbone
from detect.model.checkpoint import save_checkpoint
from detect.common.errors import UsageError
from detect.common.files import remove_stale_temps, unique_folder, write_atomic
from detect.scoring.report import plot_training_curves, read_results

log = logging.getLogger(__name__)

__all__ = ["RESULT_FIELDS", "RUN_FIELDS", "RunFolder", "peak_memory", "training_mode", "training_record"]

RESULT_FIELDS = ["epoch", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
                 "lr", "val_loss", "val_map50", "epoch_time_s"]
# results.csv column -> TensorBoard tag (the losses go under train/<name>)
TB_TAGS = {"lr": "train/lr", "val_loss": "val/loss", "val_map50": "val/map50", "epoch_time_s": "time/epoch_s"}
RUN_FIELDS = ["run", "backbone", "data", "epochs", "batch", "lr", "input_size", "anchor_scales",
              "anchor_ratios", "weights", "best_val_map50", "train_time_min", "status", "finished"]


class RunFolder:
    """``<out>/<name>/`` and the files of one run.

    Args:
        path: the run folder (created on first write).
        checkpoint_base: what every checkpoint of the run holds besides weights, epoch and
            metrics: ``model_config``, ``classes``, ``backbone``, ``run``, ``args``, ``data``
            (see :mod:`detect.model.checkpoint`).
        writes: False makes every method a no-op (the other processes of a torchrun job:
            only rank 0 writes).
    """

    def __init__(self, path: Path, checkpoint_base: Mapping[str, Any] | None = None, *, writes: bool = True,
                 tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.checkpoint_base = dict(checkpoint_base or {})
        self.writes = writes
        self.tensorboard = tensorboard
        self._tb = None

    @classmethod
    def new(cls, out: Path, name: str) -> "RunFolder":
        """``out/name``, or ``out/name2``, ``name3``... rather than overwrite a run, claimed
        atomically (:func:`~detect.common.files.unique_folder`): two runs started at once never share it."""
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
        writer = self._writer()
        if writer is not None:  # the run's settings, as TensorBoard's text and hparams views show them
            writer.add_text("args", "```\n" + json.dumps(_jsonable(args), indent=2) + "\n```", 0)
            writer.flush()

    @property
    def results(self) -> Path:
        return self.path / "results.csv"

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
        """Append one epoch to ``results.csv`` (the header is written first when new) and
        redraw ``results.png``. A run resumed from an older version keeps its file's columns."""
        if not self.writes:
            return
        path = self.results
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = RESULT_FIELDS
        if path.exists():
            with path.open(newline="") as fh:
                fields = next(csv.reader(fh), None) or RESULT_FIELDS
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(fields)
            w.writerow([row.get(k, "") for k in fields])
        self._scalars(row)
        self.plot()

    def _writer(self):
        """TensorBoard's writer on the run folder (``--tensorboard``), opened on first use."""
        if not (self.tensorboard and self.writes):
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UsageError("--tensorboard needs the tensorboard package: pip install 'can-detect[tensorboard]'") \
                    from None
            self._tb = SummaryWriter(log_dir=str(self.path))
        return self._tb

    def _scalars(self, row: Mapping[str, Any]) -> None:
        """The ``results.csv`` row as TensorBoard scalars at step = epoch: the same record, no
        second copy of the numbers (``train/<loss>``, ``train/lr``, ``val/loss``, ``val/map50``,
        ``time/epoch_s``)."""
        writer = self._writer()
        if writer is None:
            return
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or value in ("", None):
                continue
            writer.add_scalar(TB_TAGS.get(key, f"train/{key}"), float(value), epoch)
        writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (if one was opened)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def plot(self) -> Path | None:
        """Draw ``results.png`` from ``results.csv``; a figure that cannot be drawn is logged,
        never a reason to stop training."""
        if not self.writes:
            return None
        root = (self.checkpoint_base.get("data") or {}).get("root")
        title = f"{self.name}: training curves" + (f" on {root}" if root else "")
        try:
            return plot_training_curves(read_results(self.results), self.path / "results.png", title=title)
        except Exception as exc:  # matplotlib or the disk: the run matters more than its picture
            log.warning("could not draw %s: %s", self.path / "results.png", exc)
            return None

    def save(self, which: str, *, model_state, epoch: int, metrics: Mapping[str, Any],
             train_state: Mapping[str, Any] | None = None, training: Mapping[str, Any] | None = None) -> Path:
        """Write ``last.pt`` or ``best.pt`` (``which``): the base payload plus these, and the
        ``history`` of ``results.csv`` up to ``epoch`` (0-based)."""
        if not self.writes:
            return self.path / f"{which}.pt"
        payload = {**self.checkpoint_base, "model": model_state, "epoch": epoch, "metrics": dict(metrics),
                   "history": [r for r in read_results(self.results) if r["epoch"] <= epoch + 1]}
        if training is not None:
            payload["training"] = dict(training)
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


def training_mode(*, weights: str | None, backbone: str, trainable_layers: int) -> dict[str, Any]:
    """How a run starts: ``mode`` is ``"from scratch"`` (``weights`` is ``"none"``),
    ``"feature extraction"`` (pretrained, ``trainable_layers`` 0: the backbone is frozen,
    FPN and heads train), ``"fine-tuned"`` (pretrained, some backbone stages train) or
    ``"unknown"`` (``weights`` None: not known)."""
    if weights is None:
        mode = "unknown"
    elif weights == "none":
        mode = "from scratch"
    elif trainable_layers == 0:
        mode = "feature extraction"
    else:
        mode = "fine-tuned"
    return {"mode": mode, "weights": weights, "trainable_layers": int(trainable_layers),
            "max_trainable_layers": get_backbone(backbone).max_trainable_layers}


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak memory of this process so far, in MiB: resident set (``ru_maxrss``; data-loader
    worker processes not included) and, on CUDA, the most its tensors held
    (``max_memory_allocated``, the figure mmdetection logs; the allocator's cache adds to it)."""
    try:
        import resource  # Unix only: on Windows the peak RSS is not recorded
    except ImportError:
        rss_mb = None
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mb = round(rss / 2**20 if sys.platform == "darwin" else rss / 2**10, 1)  # bytes on macOS, KiB on Linux
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": rss_mb, "peak_cuda_mb": None if cuda_mb is None else round(cuda_mb, 1)}


def training_record(mode: Mapping[str, Any], *, epochs: int, train_time: float, final_loss: float | None,
                    device: torch.device, earlier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's ``training`` entry: ``mode`` (:func:`training_mode`), ``epochs``
    trained, ``train_time_s`` (training and validation, summed over epochs), ``final_loss``
    (mean training loss of the last epoch), peak memory (:func:`peak_memory`; the larger of
    this process and ``earlier``, the record of the run before a resume) and ``device``."""
    peaks = peak_memory(device)
    for key, value in (earlier or {}).items():
        if key in peaks and value is not None:
            peaks[key] = max(peaks[key] or 0.0, float(value))
    mode = {k: mode.get(k) for k in ("mode", "weights", "trainable_layers", "max_trainable_layers")}
    return {**mode, "epochs": int(epochs), "train_time_s": round(float(train_time), 1),
            "final_loss": None if final_loss is None else float(final_loss), **peaks, "device": str(device)}


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def join_numbers(values: Sequence[float] | None, default: str = "default") -> str:
    """``[0.5, 1.5, 3.0]`` -> ``"0.5/1.5/3"`` (for the run log)."""
    return "/".join(f"{v:g}" for v in values) if values else default
