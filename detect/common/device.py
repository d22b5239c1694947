"""The one device parser: ``--device`` names -> a ``torch.device``.

``auto`` (every command's default, :data:`detect.common.options.DEVICE_DEFAULT`) is CUDA when a GPU is
available, else the CPU. ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are taken as torch
spells them; a device this machine lacks is a usage error naming what to use instead.
"""

from __future__ import annotations

import torch

from detect.common.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``--device NAME`` as a ``torch.device``.

    Raises:
        UsageError: not a device name, or not available on this machine.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device
