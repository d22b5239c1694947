"""Self-describing checkpoints: written atomically, checksummed, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so
``torch.load(..., weights_only=True)`` takes it) with these keys:

``format``        ``"detect-checkpoint/1"``
``model``         the model's ``state_dict``
``model_config``  the architecture, :meth:`detect.model.config.ModelConfig.as_dict` (older
                  checkpoints: ``build_model`` keywords, which ``ModelConfig.from_dict`` reads)
``classes``       class names; model label ``i`` is ``classes[i - 1]`` (0 is background)
``epoch``         last finished epoch (0-based)
``metrics``       e.g. ``{"map50": 0.71, "best_map50": 0.73, "best_epoch": 12}``
``args``          the training arguments, as a dict
``data``          ``{"root", "images", "layout", "splits": {"train": [ids], "val": [ids], ...}}``
``versions``      torch / torchvision / python versions that wrote it
``history``       the run's ``results.csv`` rows up to ``epoch`` (losses, val loss, val mAP per epoch)
``training``      how the run started and what this checkpoint cost: ``mode`` (from scratch,
                  fine-tuned, feature extraction), ``weights``, ``trainable_layers``,
                  ``epochs``, ``train_time_s``, ``final_loss``, ``peak_rss_mb``, ``peak_cuda_mb``
                  (:func:`detect.training.run_folder.training_record`; absent in older checkpoints)
``train_state``   (``last.pt`` only) optimizer, scheduler, scaler and RNG states for ``--resume``
``sha256``        :func:`payload_digest` of everything else, checked on load: a bit flipped on
                  disk or in a copy is caught (a zip archive alone does not check its data)

Writes go through :func:`detect.common.files.atomic_open`: a crash, a full disk or Ctrl-C leaves
the previous file, never half a file. :func:`safe_load` is the one ``torch.load`` of the
project; :func:`detect.model.build.model_from_checkpoint` rebuilds the model a checkpoint describes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
import torchvision

from detect.common.errors import DetectError, UsageError
from detect.common.files import atomic_open

FORMAT = "detect-checkpoint/1"


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used (missing, corrupt, or not ours)."""


class CheckpointWriteError(DetectError):
    """A checkpoint could not be written (full disk, permissions): exit 1; the previous file
    is still there."""


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def payload_digest(payload: Any) -> str:
    """SHA-256 over a checkpoint's contents: every tensor's dtype, shape and bytes, and every
    other value's ``repr``, dict keys in sorted order, so the same contents always give the
    same digest however the file was written."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"S{value!r}".encode())


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` (with format tag, versions and checksum) to ``path`` atomically.

    Raises:
        CheckpointWriteError: the file cannot be written (a full disk, permissions); the
            previous file at ``path`` is untouched and no temporary file is left.
    """
    path = Path(path)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    payload.pop("sha256", None)
    payload["sha256"] = payload_digest(payload)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(payload, fh)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed"
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there"
        except OSError:
            free = ""
        raise CheckpointWriteError(
            f"{path}: cannot be written ({reason}{free}); the previous file is unchanged. Free disk space or "
            "fix the folder's permissions, then resume"
        ) from None
    return path


def safe_load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, so a file that
    carries code cannot run it.

    Raises:
        CheckpointError: missing, empty, damaged, or holding more than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: the file is empty (0 bytes): it was cut off while being written or copied; use the run's "
            "other checkpoint (best.pt or last.pt) or copy it again"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # PyTorch's refusal, whose advice would be unsafe here
            raise CheckpointError(
                f"{path}: not a checkpoint of this project: it holds Python objects beyond tensors and plain "
                "values, which are refused because loading them could run code. Use a .pt written by "
                "detect.train (or a plain state dict)"
            ) from None
        raise CheckpointError(f"{path}: cannot be loaded: the file is damaged (it does not unpickle); "
                              "use another copy or the run's other checkpoint") from None
    except Exception as exc:
        first = next(iter(str(exc).splitlines()), "")
        detail = f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be loaded as a checkpoint ({detail}); it may be truncated, damaged or not a "
            "PyTorch file: use another copy or the run's other checkpoint"
        ) from None


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (:func:`safe_load`), check it is ours and verify its checksum.

    Raises:
        CheckpointError: not loadable, not ours, incomplete, or damaged (checksum mismatch).
    """
    path = Path(path)
    ckpt = safe_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a detect.train checkpoint (no '{FORMAT}' format tag); "
            "for plain torchvision weights use `--weights PATH` when training"
        )
    for key in ("model", "model_config", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    stored = ckpt.get("sha256")
    if stored is not None:  # checkpoints written before checksums were added have none
        body = {k: v for k, v in ckpt.items() if k != "sha256"}
        if payload_digest(body) != stored:
            raise CheckpointError(
                f"{path}: the file is damaged: its contents do not match the checksum stored in it (a disk or "
                "copy error); use another copy, or the run's other checkpoint (best.pt / last.pt)"
            )
    return ckpt
