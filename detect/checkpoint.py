"""Self-describing checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so
``torch.load(..., weights_only=True)`` takes it) with these keys:

``format``        ``"detect-checkpoint/1"``
``model``         the model's ``state_dict``
``model_config``  keyword arguments of :func:`detect.model.build_model` that rebuild the
                  architecture (``weights`` is always ``"none"`` there)
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
                  (:func:`detect.runs.training_record`; absent in older checkpoints)
``train_state``   (``last.pt`` only) optimizer, scheduler, scaler and RNG states for ``--resume``
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision

from detect.errors import UsageError
from detect.fsutil import atomic_open

FORMAT = "detect-checkpoint/1"


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used (missing, corrupt, or not ours)."""


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`detect.fsutil.atomic_open`): a crash
    or Ctrl-C mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs) and check it is ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded as a checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "it may be truncated or not written by detect.train"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a detect.train checkpoint (no '{FORMAT}' format tag); "
            "for plain torchvision weights use `--weights PATH` when training"
        )
    for key in ("model", "model_config", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike[str], *, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes, load its weights, and put it in eval mode.

    Returns:
        ``(model, ckpt)``: the ``FasterRCNN`` on ``device`` and the checkpoint dict.
    """
    from detect.model import build_model  # the checkpoint format itself needs no model code

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    config = dict(ckpt["model_config"])
    config["weights"] = "none"
    model = build_model(**config)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt
