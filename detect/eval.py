"""Evaluate trained detectors (or predictions made elsewhere) on annotated images.

    python -m detect.eval                                   # every weights/<run>/best.pt, on its val split
    python -m detect.eval --weights A.pt B.pt --split test
    python -m detect.eval --data DIR --predictions pi.json  # score a predictions file; no model loaded
    python -m detect.eval --json eval.json --report eval_report/

For each checkpoint the ground truth comes from the data it records (``data.root`` and the
ids of the ``--split`` it records); ``--data DIR`` evaluates on another folder (the
checkpoint's split lists are used when DIR is the folder it was trained on, else DIR's own
``ImageSets/Main`` lists or a hash split). ``--split all`` takes every annotated image.

One table is printed, one row per run, best VOC mAP first and marked ``*``: VOC mAP at
``--iou`` (default 0.5, all-point; ``--voc07`` for 11-point), COCO mAP@[.5:.95], AP50 and
AP75 (pycocotools), VOC AP per class, inference speed on this machine (model time per image,
first batch excluded), parameters and checkpoint size. Then per run and class: ground truth
count, precision, recall and F1 at ``--conf``.

Ground truth: boxes are clipped into the image and boxes under 1 px wide or high dropped,
the rule training applies (:func:`detect.data.records.sanitize_box`); ``difficult`` objects are
ignored (VOC) / crowd regions (COCO). Metrics: :mod:`detect.scoring.metrics`; data resolution,
scoring and tables: :mod:`detect.scoring.evaluation`; models are loaded and run through
:func:`detect.inference.loader.load_detector`, as ``detect.predict`` does (torch is imported only
for a ``.pt`` checkpoint); predictions format: :mod:`detect.scoring.predictions_json`. This
module parses the options, runs each model and prints the tables.

Exit status: 0 success; 1 a run could not be evaluated (bad checkpoint, data it cannot
read, bad predictions file; the others are still evaluated and printed); 2 usage error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from detect.common.errors import DetectError, UsageError, printable, show
from detect.scoring.evaluation import (
    PROJECT_ROOT,
    SPLITS,
    EvalError,
    EvalSettings,
    Evaluator,
    RunResult,
    class_rows,
    format_table,
    sort_results,
    table_rows,
    write_json,
)
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, add_device_option, run_command

log = logging.getLogger(__name__)


def build_parser() -> CliParser:
    p = CliParser(
        prog="python -m detect.eval",
        description="Evaluate detectors (VOC and COCO AP, P/R/F1, speed) on annotated images.",
        epilog="Predictions file format: see `python -c 'import detect.scoring.predictions_json as p; print(p.__doc__)'`.",
    )
    p.add_argument("--weights", nargs="+", metavar="PT",
                   help="checkpoints or .onnx exports (or run folders holding best.pt); default: every weights/*/best.pt")
    p.add_argument("--weights-dir", default="weights", metavar="DIR",
                   help="where runs are looked for when --weights is not given (default: weights)")
    p.add_argument("--predictions", nargs="+", metavar="JSON",
                   help="score predictions files (needs --data); no model is loaded")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one each checkpoint records)")
    p.add_argument("--images", metavar="DIR", help="folder to look for images in first")
    p.add_argument("--split", choices=SPLITS, default="val", help="images to evaluate on (default: val)")
    p.add_argument("--val-fraction", type=Number(float, 0, 1, hi_open=True), default=0.2,
                   help="val share of the hash split of a dataset without split lists (default: 0.2)")
    p.add_argument("--iou", type=Number(float, 0, 1, lo_open=True), default=0.5, help="IoU a detection needs to count (default: 0.5)")
    p.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP instead of all-point")
    p.add_argument("--conf", type=Number(float), default=0.5,
                   help="score threshold for precision/recall/F1, confusion matrix and gallery (default: 0.5)")
    add_device_option(p)
    p.add_argument("--batch-size", type=Number(int, 1, 1024), default=4, help="images per forward pass (default: 4)")
    p.add_argument("--corruptions", nargs="*", metavar="NAME",
                   help="robustness report: also the val mAP under camera corruptions (noise, blur, JPEG, light) "
                   "at 3 severities each, seeded per image; no NAME: all of "
                   "gaussian_noise, shot_noise, motion_blur, defocus_blur, jpeg, brightness, dark, contrast")
    p.add_argument("--items", metavar="EVENTS", help="score detect.predict --track's events.jsonl per item (with --truth)")
    p.add_argument("--truth", metavar="MOT", help="with --items: the video's tracks, a MOT 1.1 folder or zip (CVAT's export)")
    p.add_argument("--max-false-reject", type=float, metavar="R",
                   help="with --items: the defect_score threshold that rejects at most R of the intact items (0 < R <= 0.5)")
    p.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    p.add_argument("--report", metavar="DIR", help="write plots and report.md to this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def _find_checkpoints(args) -> list[Path]:
    if args.weights:
        found = []
        for w in args.weights:
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
    if args.predictions:
        return []
    bases = [Path(args.weights_dir)]
    if args.weights_dir == "weights" and not bases[0].is_dir():
        bases.append(PROJECT_ROOT / "weights")
    for base in bases:
        found = sorted(base.glob("*/best.pt"))
        if found:
            return found
    raise UsageError(
        f"no checkpoint found: no {args.weights_dir}/<run>/best.pt; train one (python -m detect.train) "
        "or pass --weights FILE.pt or --predictions FILE.json --data DIR"
    )


def _check_args(args) -> None:
    if args.predictions and not args.data:
        raise UsageError("--predictions needs --data DIR: the annotated images the predictions are for")
    for p in args.predictions or ():
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such predictions file")
    if args.data and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if args.corruptions is not None:
        if args.predictions:
            raise UsageError("--corruptions runs the models on corrupted images; it cannot score a --predictions file")
        from detect.scoring.corruptions import check_names

        try:
            args.corruptions = check_names(args.corruptions)
        except ValueError as exc:
            raise UsageError(f"--corruptions: {exc}") from None


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.eval``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    return run_command(lambda: _evaluate(args))


def _evaluate(args) -> int:
    if args.items or args.truth or args.max_false_reject is not None:  # items of a video (detect.scoring.items)
        from detect.scoring.items import run_items
        return run_items(args.items, args.truth, json_path=args.json, report=args.report,
                         max_false_reject=args.max_false_reject, echo=print)
    _check_args(args)
    checkpoints = _find_checkpoints(args)
    device = None
    if any(p.suffix.lower() != ".onnx" for p in checkpoints):  # an .onnx export needs no torch
        from detect.common.device import resolve_device

        device = resolve_device(args.device)  # a bad --device fails here, before any model loads
    device_name = str(device) if device is not None else args.device
    evaluator = Evaluator(EvalSettings(
        data=Path(args.data) if args.data else None, images=Path(args.images) if args.images else None,
        split=args.split, val_fraction=args.val_fraction, iou=args.iou, voc07=args.voc07, conf=args.conf,
    ))
    results: list[RunResult] = []
    failures: list[str] = []
    runs = [(p, "checkpoint") for p in checkpoints] + [(Path(p), "predictions") for p in args.predictions or ()]
    for path, kind in runs:
        try:
            if kind == "checkpoint":
                results.append(model_run(evaluator, path, device=device_name, batch_size=args.batch_size,
                                         progress=not args.no_progress,
                                         corruptions=args.corruptions or ()))
            else:
                results.append(evaluator.predictions_run(path))
        except UsageError:  # the command line itself is wrong: stop
            raise
        except DetectError as exc:  # this run fails; the others go on
            failures.append(str(exc))
            print(f"error: {printable(exc)}", file=sys.stderr)

    if not results:
        return 1
    sort_results(results)
    settings = {"iou": args.iou, "voc07": args.voc07, "conf": args.conf, "split": args.split,
                "device": device_name, "batch_size": args.batch_size}
    print_results(results, settings)

    try:
        if args.json:
            write_json(Path(args.json), results, settings)
            print(f"\nwrote {show(args.json)}")
        if args.report:
            from detect.scoring.report import write_report

            header, rows = table_rows(results, iou=args.iou)
            md = write_report(Path(args.report), results, settings=settings,
                              table_markdown=format_table(header, rows, markdown=True))
            print(f"wrote {show(md)}")
    except OSError as exc:
        raise DetectError(f"cannot write output: {show(exc.filename or '')}: {exc.strerror or exc}") from None
    return 1 if failures else 0


def print_results(results: Sequence[RunResult], settings: dict[str, Any]) -> None:
    """The comparison table, its legend, and each run's per-class table."""
    iou, conf = settings["iou"], settings["conf"]
    header, rows = table_rows(results, iou=iou)
    print(format_table(header, rows))
    metric = "11-point" if settings["voc07"] else "all-point"
    speed = (f"; speed: model time per image on {settings['device']}, batch {settings['batch_size']}"
             if any(r.timing is not None for r in results) else "")
    print(f"* best VOC mAP@{iou:g} ({metric}); COCO numbers by pycocotools (mAP = AP@[.5:.95]); "
          f"class columns: VOC AP@{iou:g}, '-' = no ground truth{speed}")
    print("training cost, as each checkpoint records it: minutes, peak memory of the training process (MB), "
          "epochs, mean training loss of its last epoch, mode (backbone stages trained / of) and starting "
          "weights; '-' = not recorded")
    if len({tuple(r.eval_set.keys) for r in results}) > 1:
        print("note: the runs were evaluated on different images (see 'images'); compare them with care")
    for r in results:
        h, rws = class_rows(r)
        print(f"\n{r.name}: {r.eval_set.describe()}, split: {r.eval_set.split_source}; "
              f"P/R/F1 at score >= {conf:g}, IoU >= {iou:g}")
        print(format_table(h, rws, left=1))
    print_robustness(results)


def print_robustness(results: Sequence[RunResult]) -> None:
    """With ``--corruptions``: the summary (clean, mean corrupted, relative) and each run's grid."""
    from detect.scoring.robustness import robustness_grid, robustness_summary

    named = [(r.name, r.robustness) for r in results if r.robustness is not None]
    if not named:
        return
    header, rows = robustness_summary(named)
    print(f"\nrobustness: VOC mAP@{named[0][1].iou:g} under camera corruptions (mean of severities 1-3 per "
          "corruption); relative = mean corrupted / clean")
    print(format_table(header, rows, left=1))
    for name, rob in named:
        header, rows = robustness_grid(rob)
        print(f"\n{name}: mAP per corruption and severity")
        print(format_table(header, rows, left=1))


if __name__ == "__main__":
    sys.exit(main())
