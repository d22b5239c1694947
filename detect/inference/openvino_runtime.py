"""The OpenVINO backend: an ``.onnx`` export run by OpenVINO instead of onnxruntime (optional).

``pip install -e ".[openvino]"``, then ``python -m detect.predict --weights best.onnx
--backend openvino``. OpenVINO reads the ONNX file directly (no conversion step and no
second file): the same graph, the same ``detect`` metadata (read with onnx), the same
tensors (:mod:`detect.inference.onnx_runtime`). Without OpenVINO installed the backend is
refused with a one-line usage error naming the install command; nothing else imports it.

Imports openvino, onnx and numpy only: no torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from detect.common.errors import UsageError
from detect.common.types import Detections
from detect.inference.onnx_runtime import METADATA_FORMAT, METADATA_KEY, image_input
from detect.inference.predictor import ModelError

log = logging.getLogger(__name__)

__all__ = ["OpenVinoDetector", "available"]


def available() -> bool:
    """Whether OpenVINO can be imported here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _ov():
    try:
        import openvino
    except ImportError:
        raise UsageError("--backend openvino needs OpenVINO: pip install -e \".[openvino]\" (or pip install openvino)") \
            from None
    return openvino


def _metadata(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]}); export it again "
                         "with `python -m detect.export`") from None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        meta = json.loads(props[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT or "classes" not in meta:
        raise ModelError(f"{path}: no can-detect metadata ({METADATA_FORMAT}); export the checkpoint with "
                         "`python -m detect.export --weights best.pt`")
    return meta


class OpenVinoDetector:
    """A ``detect.export`` file compiled by OpenVINO for the CPU.

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (None: OpenVINO's default, one per core).
        latency: compile for the latency of one request (``PERFORMANCE_HINT=LATENCY``),
            which is how ``detect.predict`` runs (one frame at a time).
    """

    batch_size = 1

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, latency: bool = True) -> None:
        ov = _ov()
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{self.path}: no such model file")
        self.meta = _metadata(self.path)
        self.classes = tuple(str(c) for c in self.meta["classes"])
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: OpenVINO cannot compile it ({first})") from None
        self.request = self.compiled.create_infer_request()
        self.invalid = 0  # detections dropped for a label outside 1..K (see detect)
        names = [o.get_any_name() for o in self.compiled.outputs]
        if not {"boxes", "labels", "scores"} <= set(names):
            raise ModelError(f"{self.path}: expected outputs boxes, labels, scores; it has {names}")
        self.outputs = {n: self.compiled.output(n) for n in ("boxes", "labels", "scores")}
        self.info = {
            "format": "onnx",
            "backend": "openvino",
            "path": str(self.path),
            "backbone": self.meta.get("backbone"),
            "input_size": self.meta.get("input_size"),
            "run": self.meta.get("run"),
            **(self.meta.get("test_settings") or {}),
            "threads": threads,
            "openvino": ov.__version__ if hasattr(ov, "__version__") else None,
        }

    def detect(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[Detections]:
        """Detections for each ``H x W x 3`` uint8 RGB image (one run per image)."""
        out = []
        for image, key in zip(images, keys):
            result = self.request.infer({0: image_input(image)})
            boxes = np.asarray(result[self.outputs["boxes"]], np.float64).reshape(-1, 4)
            labels = np.asarray(result[self.outputs["labels"]], np.int64).reshape(-1)
            scores = np.asarray(result[self.outputs["scores"]], np.float64).reshape(-1)
            valid = (labels >= 1) & (labels <= len(self.classes))
            if not valid.all():
                # Seen with OpenVINO 2026.4 on the float graph: now and then one detection with label 0
                # (onnxruntime gives none on the same frame). Dropped, counted, logged once.
                self.invalid += int((~valid).sum())
                if self.invalid == int((~valid).sum()):
                    log.warning("%s: OpenVINO returned detections with labels outside 1..%d (dropped; "
                                "onnxruntime does not)", self.path, len(self.classes))
                boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
            out.append(Detections(key, boxes, scores, labels))
        return out
