"""The anomaly bank of a checkpoint with its threshold: what ``python -m detect.anomaly`` builds,
and ``detect.train`` at the end of training (one pass over the training crops, no epochs).

:func:`build_anomaly`: the bank of the intact boxes of the checkpoint's train split
(:func:`detect.model.anomaly.build_bank`), then the scores of the val split's intact
boxes, from which each base class's threshold is chosen for a false-reject rate
(:func:`detect.line.anomaly.anomaly_thresholds`); the thresholds go into the bank's JSON record,
where ``detect.predict --track`` reads them. :func:`anomaly_for_run`: the same after training,
where a bank that cannot be built is a warning, never a failed run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from detect.common.errors import DetectError, UsageError, show
from detect.line.anomaly import DEFAULT_FALSE_REJECT, anomaly_thresholds, check_supported
from detect.model.anomaly import (DEFAULT_BANK_SIZE, DEFAULT_CROP, DEFAULT_MAX_CROPS, PatchFeatures, build_bank,
                                  checkpoint_crops, export_features, item_scores)
from detect.model.patchbank import PatchBank, bank_path, check_intact_counts, save_bank

__all__ = ["anomaly_for_run", "build_anomaly", "write_anomaly"]

log = logging.getLogger(__name__)


def build_anomaly(weights: str | Path, *, data: str | Path | None = None, crop_size=DEFAULT_CROP,
                  bank_size: int = DEFAULT_BANK_SIZE, max_crops: int | None = DEFAULT_MAX_CROPS,
                  max_false_reject: float = DEFAULT_FALSE_REJECT, seed: int = 0) -> tuple[PatchBank, PatchFeatures]:
    """The bank of checkpoint ``weights`` with its per-class thresholds in ``meta["thresholds"]``
    (and ``max_false_reject``, ``val_intact``: the val items they were chosen on).

    Raises:
        UsageError: too few val intact items for the rate (checked before the bank is built),
            too few training crops (:class:`~detect.model.patchbank.BankError`).
    """
    model, _, found = checkpoint_crops(weights, data=data, splits=("train", "val"))
    (crops, defects), (val, _) = found["train"], found["val"]
    check_intact_counts({c: len(v) for c, v in crops.items()}, defects)
    counts = {c: len(v) for c, v in val.items()}
    if not any(counts.values()):
        raise UsageError(f"{show(weights)}: its val split has no intact item to choose the anomaly threshold on; "
                         "give a dataset with a validation split holding intact objects")
    check_supported(counts, max_false_reject)  # before the build: a refused rate costs no time
    extractor = PatchFeatures(model, crop_size)
    bank = build_bank(extractor, crops, defects=defects, bank_size=bank_size, seed=seed, max_crops=max_crops)
    scores = {c: [s for s in item_scores(extractor, bank, [c] * len(v), v) if s is not None]
              for c, v in val.items() if c in bank.banks}
    bank.meta.update(thresholds=anomaly_thresholds(scores, max_false_reject), max_false_reject=max_false_reject,
                     val_intact={c: len(s) for c, s in scores.items()})
    return bank, extractor


def write_anomaly(bank: PatchBank, extractor: PatchFeatures, target: str | Path) -> Path:
    """Write the bank to ``target`` and its feature extractor as ONNX beside it (``.onnx``: the
    torch-free line's features); returns the ONNX path.

    Raises:
        DetectError: a file cannot be written.
    """
    target = Path(target)
    graph = target.with_suffix(".onnx")
    try:
        save_bank(bank, target)
        export_features(extractor, graph)
    except OSError as exc:
        raise DetectError(f"{show(target)}: cannot write the bank there ({exc.strerror or exc})") from None
    return graph


def anomaly_for_run(result, *, max_false_reject: float = DEFAULT_FALSE_REJECT,
                    echo: Callable[..., None] | None = None) -> Path | None:
    """After ``detect.train``: the bank of the run's ``best.pt`` beside it, with the default crops
    and bank size, its thresholds for ``max_false_reject``. Returns its path; None when the run left no ``best.pt`` or
    the bank could not be built (one warning line; the checkpoint stands)."""
    if echo is None:
        def echo(text: str, err: bool = False) -> None:
            (log.warning if err else log.info)(text)
    best = Path(result.run.path) / "best.pt"
    if not best.is_file():
        return None
    started = time.perf_counter()
    try:
        bank, extractor = build_anomaly(best, max_false_reject=max_false_reject, seed=result.config.seed)
        write_anomaly(bank, extractor, bank_path(best))
    except (UsageError, DetectError, OSError) as exc:
        echo(f"warning: no anomaly bank for {show(best)}: {show(exc)} "
             "(the detector is saved; python -m detect.anomaly --weights BEST builds one later)", err=True)
        return None
    thresholds = ", ".join(f"{c} {t:.3f}" for c, t in sorted(bank.meta["thresholds"].items()))
    echo(f"anomaly bank: {show(bank_path(best))} ({', '.join(f'{c} {n} crops' for c, n in bank.meta['crops'].items())}; "
         f"thresholds {thresholds} for {100 * bank.meta['max_false_reject']:g} % false rejects on the val split); "
         f"{time.perf_counter() - started:.1f} s")
    return bank_path(best)
