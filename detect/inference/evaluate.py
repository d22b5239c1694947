"""Evaluating models and predictions files: what ``python -m detect.eval`` hands its options to.

* :func:`find_checkpoints`: the checkpoints named on the command line, or every
  ``weights/<run>/best.pt``.
* :func:`evaluate_runs`: each checkpoint loaded (:func:`detect.inference.loader.load_detector`, the
  path ``detect.predict`` takes; torch only for a ``.pt``), run on the images it is evaluated
  on and scored, and each predictions file scored; a run that fails is reported and the others go on.
* :func:`model_run` / :func:`corrupted_maps`: one checkpoint, and its mAP under camera corruptions.
* :func:`results_text`: the tables ``detect.eval`` prints.

Scoring itself (data resolution, metrics, tables): :mod:`detect.scoring.evaluation`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from detect.common.errors import DetectError, UsageError
from detect.scoring.evaluation import (
    PROJECT_ROOT,
    EvalError,
    Evaluator,
    RunResult,
    class_rows,
    format_table,
    table_rows,
)

__all__ = ["corrupted_maps", "evaluate_runs", "find_checkpoints", "model_run", "results_text"]

log = logging.getLogger(__name__)


def find_checkpoints(weights: Sequence[str] | None, *, predictions: Sequence[str] | None = None,
                     weights_dir: str = "weights") -> list[Path]:
    """The checkpoints ``detect.eval`` evaluates: each of ``weights`` (a file, or a run folder
    holding ``best.pt``, or a folder of run folders), else every ``WEIGHTS_DIR/<run>/best.pt``
    (none when only ``predictions`` files are scored).

    Raises:
        UsageError: a named file or folder is not there, or no checkpoint is found.
    """
    if weights:
        found = []
        for w in weights:
            path = Path(w)
            if path.is_dir():
                if (path / "best.pt").is_file():
                    found.append(path / "best.pt")
                else:
                    inside = sorted(path.glob("*/best.pt"))
                    if not inside:
                        raise UsageError(f"{path}: no best.pt in it or in its sub-folders")
                    found.extend(inside)
            elif path.is_file():
                found.append(path)
            else:
                raise UsageError(f"{path}: no such checkpoint file")
        unique: dict[Path, Path] = {}
        for f in found:
            unique.setdefault(f.resolve(), f)
        return list(unique.values())
    if predictions:
        return []
    bases = [Path(weights_dir)]
    if weights_dir == "weights" and not bases[0].is_dir():
        bases.append(PROJECT_ROOT / "weights")
    for base in bases:
        found = sorted(base.glob("*/best.pt"))
        if found:
            return found
    raise UsageError(
        f"no checkpoint found: no {weights_dir}/<run>/best.pt; train one (python -m detect.train) "
        "or pass --weights FILE.pt or --predictions FILE.json --data DIR"
    )


def evaluate_runs(evaluator: Evaluator, checkpoints: Sequence[Path], predictions: Sequence[Path] = (), *,
                  device: str, batch_size: int, progress: bool, corruptions: Sequence[str] = (),
                  on_error: Callable[[DetectError], None] | None = None) -> tuple[list[RunResult], list[str]]:
    """Every checkpoint (:func:`model_run`) and predictions file scored, in that order: the
    results, and the messages of the runs that failed (each also handed to ``on_error``).

    Raises:
        UsageError: the command line itself is wrong (a named file is not there): nothing goes on.
    """
    results: list[RunResult] = []
    failures: list[str] = []
    runs = [(p, "checkpoint") for p in checkpoints] + [(Path(p), "predictions") for p in predictions]
    for path, kind in runs:
        try:
            if kind == "checkpoint":
                results.append(model_run(evaluator, path, device=device, batch_size=batch_size, progress=progress,
                                         corruptions=corruptions))
            else:
                results.append(evaluator.predictions_run(path))
        except UsageError:  # the command line itself is wrong: stop
            raise
        except DetectError as exc:  # this run fails; the others go on
            failures.append(str(exc))
            if on_error is not None:
                on_error(exc)
    return results, failures


def model_run(evaluator: Evaluator, path: Path, *, device: str, batch_size: int, progress: bool,
              corruptions: Sequence[str] = ()) -> RunResult:
    """Load a ``.pt`` checkpoint or an ``.onnx`` export through
    :func:`detect.inference.loader.load_detector` (the path ``detect.predict`` takes; torch is
    imported only for a checkpoint), predict on the images it is evaluated on, and score it;
    with ``corruptions``, also its mAP under each at each severity (``result.robustness``)."""
    from detect.data.images import ImageError
    from detect.inference.loader import is_onnx, load_detector
    from detect.inference.predictor import detect_files

    try:
        detector = load_detector(path, device=device, batch_size=batch_size)
    except DetectError as exc:  # corrupt, or not ours: this run fails, not the command
        if isinstance(exc, UsageError) and not path.is_file():
            raise
        raise EvalError(str(exc)) from None
    meta = detector.meta
    eval_set, classes = evaluator.checkpoint_eval_set(meta, path)
    run = str(meta.get("run") or path.parent.name)
    log.info("%s: %s on %s", path, run, eval_set.describe())
    try:
        dets, timing = detect_files(detector, eval_set.image_paths, eval_set.keys, exif=eval_set.exif,
                                    progress=progress)
    except ImageError as exc:
        raise EvalError(str(exc)) from None
    model = getattr(detector, "model", None)
    params = sum(p.numel() for p in model.parameters()) if model is not None else None
    backbone = str(meta.get("backbone") or (meta.get("model_config") or {}).get("backbone") or "?")
    info = {"epoch": meta.get("epoch"), "metrics": meta.get("metrics"), "run": run, "history": meta.get("history")}
    name = f"{run}/{path.name}" if is_onnx(path) else run if path.name == "best.pt" else f"{run}/{path.stem}"
    result = evaluator.score(
        name=name, backbone=backbone, kind="checkpoint", source=path, eval_set=eval_set, classes=classes,
        detections=dets, timing=timing, params=params, checkpoint_bytes=path.stat().st_size, checkpoint_info=info,
        training=meta.get("training"),
    )
    if corruptions:
        result.robustness = corrupted_maps(evaluator, detector, eval_set, classes, result.voc.map, corruptions,
                                           progress=progress)
    return result


def corrupted_maps(evaluator: Evaluator, detector, eval_set, classes, clean: float, corruptions: Sequence[str], *,
                   progress: bool = False):
    """The VOC mAP of ``detector`` on ``eval_set`` under each corruption at each severity
    (:mod:`detect.scoring.corruptions`, seeded per image), as a :class:`detect.scoring.robustness.Robustness`."""
    from detect.scoring.corruptions import SEVERITIES, corrupt, corruption
    from detect.data.images import ImageError
    from detect.inference.predictor import detect_files
    from detect.scoring.metrics import voc_evaluate
    from detect.scoring.robustness import Robustness

    s = evaluator.settings
    truths = eval_set.truths(classes)
    out = Robustness(clean=clean, iou=s.iou)
    for name in corruptions:
        for severity in SEVERITIES:
            t = corruption(name, severity)
            try:
                dets, _ = detect_files(detector, eval_set.image_paths, eval_set.keys, exif=eval_set.exif,
                                       progress=progress,
                                       transform=lambda im, key: corrupt(im, name, severity, key, transform=t))
            except ImageError as exc:
                raise EvalError(str(exc)) from None
            voc = voc_evaluate(truths, dets, classes=classes, iou_threshold=s.iou, use_07_metric=s.voc07)
            out.maps.setdefault(name, {})[severity] = voc.map
            log.info("%s severity %d: mAP %.3f", name, severity, voc.map)
    return out


def results_text(results: Sequence[RunResult], settings: dict[str, Any]) -> str:
    """The comparison table, its legend, each run's per-class table and, with ``--corruptions``,
    the robustness tables: what ``detect.eval`` prints."""
    out: list[str] = []
    add = out.append  # one line (or table) each
    iou, conf = settings["iou"], settings["conf"]
    header, rows = table_rows(results, iou=iou)
    add(format_table(header, rows))
    metric = "11-point" if settings["voc07"] else "all-point"
    speed = (f"; speed: model time per image on {settings['device']}, batch {settings['batch_size']}"
             if any(r.timing is not None for r in results) else "")
    add(f"* best VOC mAP@{iou:g} ({metric}); COCO numbers by pycocotools (mAP = AP@[.5:.95]); "
          f"class columns: VOC AP@{iou:g}, '-' = no ground truth{speed}")
    add("training cost, as each checkpoint records it: minutes, peak memory of the training process (MB), "
          "epochs, mean training loss of its last epoch, mode (backbone stages trained / of) and starting "
          "weights; '-' = not recorded")
    if len({tuple(r.eval_set.keys) for r in results}) > 1:
        add("note: the runs were evaluated on different images (see 'images'); compare them with care")
    for r in results:
        h, rws = class_rows(r)
        add(f"\n{r.name}: {r.eval_set.describe()}, split: {r.eval_set.split_source}; "
              f"P/R/F1 at score >= {conf:g}, IoU >= {iou:g}")
        add(format_table(h, rws, left=1))
    _robustness(results, add)
    return "\n".join(out)


def _robustness(results: Sequence[RunResult], add: Callable[[str], None]) -> None:
    """With ``--corruptions``: the summary (clean, mean corrupted, relative) and each run's grid."""
    from detect.scoring.robustness import robustness_grid, robustness_summary

    named = [(r.name, r.robustness) for r in results if r.robustness is not None]
    if not named:
        return
    header, rows = robustness_summary(named)
    add(f"\nrobustness: VOC mAP@{named[0][1].iou:g} under camera corruptions (mean of severities 1-3 per "
          "corruption); relative = mean corrupted / clean")
    add(format_table(header, rows, left=1))
    for name, rob in named:
        header, rows = robustness_grid(rob)
        add(f"\n{name}: mAP per corruption and severity")
        add(format_table(header, rows, left=1))
