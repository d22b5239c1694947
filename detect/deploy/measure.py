"""Measuring a detector: latency per image and val mAP@0.5.

Shared by ``detect.export`` (the accuracy gate, ``--optimize``), ``detect.benchmark`` and
``bench/predict_speed.py``. Torch-free: any :class:`detect.inference.predictor.Detector`
(onnxruntime, OpenVINO, or a PyTorch one its caller built) is measured the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from detect.data.images import read_image

log = logging.getLogger(__name__)

__all__ = ["map50", "percentile", "time_detector"]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def time_detector(detector, images: Sequence[np.ndarray], *, warmup: int = 3) -> dict[str, float]:
    """Model-only latency over decoded ``images`` (batch 1): ms ``p50``, ``p95``, images/s ``ips``."""
    for im in images[:warmup]:
        detector.detect([im], ["w"])
    ms = []
    for im in images:
        t0 = time.perf_counter()
        detector.detect([im], ["x"])
        ms.append(1000 * (time.perf_counter() - t0))
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "ips": 1000 * len(ms) / sum(ms)}


def map50(detector, record: Mapping[str, Any], path: Path) -> tuple[float, int]:
    """VOC mAP@0.5 of ``detector`` on the val split that ``record`` (a checkpoint, or an
    export's metadata: both carry ``classes``, ``data`` and ``args``) names; and the image count.

    Raises:
        EvalError: the data is not on this machine.
    """
    from detect.scoring.evaluation import EvalSettings, Evaluator

    ev = Evaluator(EvalSettings())
    eval_set, classes = ev.checkpoint_eval_set(record, Path(path))
    dets = []
    for p, key in zip(eval_set.image_paths, eval_set.keys):
        dets.extend(detector.detect([read_image(p)], [key]))
    r = ev.score(name="x", backbone="x", kind="checkpoint", source=Path(path), eval_set=eval_set, classes=classes,
                 detections=dets)
    return float(r.voc.map), len(eval_set.image_paths)
