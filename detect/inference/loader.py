"""``--weights`` -> a detector: ``.onnx`` on onnxruntime, anything else a PyTorch checkpoint.

:func:`load_detector` is the one place that picks the backend, for ``detect.predict``,
``detect.eval`` and users' scripts. It sits in the torch layer because the ``.pt`` branch
needs :mod:`detect.inference.torch_runtime` and :mod:`detect.model.checkpoint`, but it imports them (and so
torch) only inside that branch: the ``.onnx`` branch loads
:class:`detect.inference.onnx_runtime.OnnxDetector`, which is torch-free, and a box with only
onnxruntime installed runs ``detect.predict --weights best.onnx`` without torch ever
being imported. (The core may not import this module, so the choice cannot live lower
down; the predictor in the core takes any :class:`detect.inference.predictor.Detector`.)

On a CPU other programs share, the ``.pt`` branch asks OpenMP (libgomp, which torch's CPU
wheels use) to put waiting threads to sleep at once (``OMP_WAIT_POLICY=PASSIVE``) instead of
spinning for a few milliseconds first: with every core busy, spinning threads take the turns
of the threads they wait for, and PyTorch slowed far more than the load it shared the cores
with (``bench/cpu_load.py`` measures it). libgomp reads the variable once, when torch loads
it, so this only works while torch is not imported yet; a wait policy the user set
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is left alone. :func:`openmp_wait_policy` says which
applies; the detector's ``info["wait_policy"]`` records it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from detect.common.errors import UsageError, show
from detect.inference.predictor import Detector, ModelError

__all__ = ["is_onnx", "load_detector", "load_verdict_beside", "openmp_wait_policy"]

# Variables by which a user chooses how OpenMP threads wait (libgomp's and Intel's).
WAIT_POLICY_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def is_onnx(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def openmp_wait_policy() -> str:
    """Make OpenMP's waiting threads sleep rather than spin, before torch loads it (see the
    module docstring), unless the user chose a policy or torch is already loaded.

    Returns what applies, in words: ``"passive"``, ``"OMP_WAIT_POLICY=..."`` (the user's
    setting, left alone), or ``"spin (torch was imported first)"``.
    """
    chosen = [f"{k}={os.environ[k]}" for k in WAIT_POLICY_ENV if os.environ.get(k)]
    if chosen:
        return " ".join(chosen)
    if "torch" in sys.modules:
        return "spin (torch was imported first)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


def load_detector(
    weights: str | os.PathLike[str],
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 1,
    optimization: str = "all",
    test_settings: dict[str, Any] | None = None,
    backend: str = "auto",
) -> Detector:
    """Load ``weights`` as a :class:`~detect.inference.predictor.Detector`.

    Args:
        weights: an ``.onnx`` export (``detect.export``) or a ``.pt`` checkpoint (``detect.train``).
        device: ``auto``, ``cpu``, ``cuda``...
        threads: CPU threads for inference (None: the library's default).
        batch_size: images per forward pass (PyTorch; an ONNX export runs one at a time).
        optimization: onnxruntime graph optimisation level (ONNX only).
        test_settings: PyTorch only: inference-time settings to change
            (:data:`detect.inference.torch_runtime.TEST_SETTINGS`); an ONNX export has them fixed at export.
        backend: what runs an ``.onnx`` file: ``auto``/``onnxruntime``, or ``openvino``
            (:mod:`detect.inference.openvino_runtime`, optional; a usage error when not installed).

    Raises:
        UsageError: the file does not exist, or an option does not apply.
        ModelError: the file exists but cannot be used (corrupt, not ours, no metadata).
    """
    path = Path(weights)
    if not path.is_file():
        raise UsageError(f"--weights {show(path)}: no such file; give a .pt checkpoint or an .onnx export")
    if is_onnx(path):
        from detect.inference.onnx_runtime import OnnxDetector

        if any(v is not None for v in (test_settings or {}).values()):
            raise UsageError("proposal counts and thresholds of an .onnx model are fixed when it is exported: "
                             "pass them to `python -m detect.export` instead")
        if backend == "openvino":
            from detect.inference.openvino_runtime import OpenVinoDetector

            return OpenVinoDetector(path, threads=threads)
        return OnnxDetector(path, threads=threads, optimization=optimization, device=device)

    if backend not in ("auto", "pytorch"):
        raise UsageError(f"--backend {backend} runs an .onnx export; {path.name} is a PyTorch checkpoint "
                         "(export it with `python -m detect.export`)")
    # PyTorch: the only branch that imports torch (after the wait policy: OpenMP reads it at load).
    wait_policy = openmp_wait_policy()
    import torch

    from detect.model.checkpoint import CheckpointError, load_checkpoint
    from detect.common.device import resolve_device
    from detect.inference.torch_runtime import TorchDetector, set_test_settings
    from detect.model.build import model_from_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:  # the file is there but unusable: a failure, not a usage error
        raise ModelError(f"{show(exc)}; train it again or pick another file (an .onnx export works too)") from None
    dev = resolve_device(device)
    try:
        model, _ = model_from_checkpoint(ckpt, device=dev)
    except Exception as exc:  # a checkpoint written by other code, or for another torchvision
        raise ModelError(f"{show(path)}: the model it describes cannot be rebuilt ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]})") from None
    set_test_settings(model, **(test_settings or {}))
    config = ckpt.get("model_config") or {}
    info = {"path": str(path), "backbone": ckpt.get("backbone") or config.get("backbone"),
            "run": ckpt.get("run") or path.parent.name, "threads": torch.get_num_threads(), "wait_policy": wait_policy}
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "train_state")}
    return TorchDetector(model, classes=[str(c) for c in ckpt["classes"]], device=dev, batch_size=batch_size, info=info,
                         meta=meta)


def load_verdict_beside(weights: str | os.PathLike[str], classes: list[str], *, threads: int | None = None) -> Any:
    """The item classifier saved with the model ``weights`` (docs/verdict.md), or None.

    Beside an ``.onnx`` export, ``verdict.onnx`` runs on onnxruntime (no torch); otherwise, and
    beside a checkpoint, ``verdict.pt`` on PyTorch.

    Raises:
        VerdictError: the file is there but not a classifier for this detector's ``classes``.
    """
    folder = Path(weights).parent
    if is_onnx(weights) and (folder / "verdict.onnx").is_file():
        from detect.model.verdict_onnx import OnnxVerdict

        return OnnxVerdict(folder / "verdict.onnx", classes, threads=threads)
    if (folder / "verdict.pt").is_file():
        openmp_wait_policy()
        from detect.model.verdict import load_verdict

        return load_verdict(folder / "verdict.pt", classes)
    return None
