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

import sys
from pathlib import Path
from typing import Sequence

from detect.common.errors import DetectError, UsageError, printable, show
from detect.common.files import outputs_problem
from detect.common.options import CliParser, Number, add_device_option, run_command
from detect.common.thresholds import CONF, ConfOption
from detect.inference.evaluate import evaluate_runs, find_checkpoints, results_text
from detect.scoring.evaluation import SPLITS, EvalSettings, Evaluator, format_table, sort_results, table_rows, write_json



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
    p.add_argument("--conf", type=ConfOption(), default=CONF, metavar="S",
                   help=f"score threshold for precision/recall/F1, confusion matrix and gallery (default: {CONF:g})")
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file or --report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.eval``; returns the exit status (see the module docstring)."""
    return run_command(_evaluate, build_parser(), argv)


def _evaluate(args) -> int:
    items = args.items or args.truth or args.max_false_reject is not None  # items of a video (detect.scoring.items)
    report = args.report and Path(args.report) / ("items.md" if items else "report.md")
    if problem := outputs_problem(args.overwrite, ("--json", args.json), ("--report", report)):
        raise UsageError(show(problem))
    if items:
        from detect.scoring.items import run_items

        return run_items(args.items, args.truth, json_path=args.json, report=args.report,
                         max_false_reject=args.max_false_reject, echo=print)
    _check_args(args)
    checkpoints = find_checkpoints(args.weights, predictions=args.predictions, weights_dir=args.weights_dir)
    device = None
    if any(p.suffix.lower() != ".onnx" for p in checkpoints):  # an .onnx export needs no torch
        from detect.common.device import resolve_device

        device = resolve_device(args.device)  # a bad --device fails here, before any model loads
    device_name = str(device) if device is not None else args.device
    evaluator = Evaluator(EvalSettings(
        data=Path(args.data) if args.data else None, images=Path(args.images) if args.images else None,
        split=args.split, val_fraction=args.val_fraction, iou=args.iou, voc07=args.voc07, conf=args.conf,
    ))
    results, failures = evaluate_runs(
        evaluator, checkpoints, [Path(p) for p in args.predictions or ()], device=device_name, batch_size=args.batch_size,
        progress=not args.no_progress, corruptions=args.corruptions or (),
        on_error=lambda exc: print(f"error: {printable(exc)}", file=sys.stderr))
    if not results:
        return 1
    sort_results(results)
    settings = {"iou": args.iou, "voc07": args.voc07, "conf": args.conf, "split": args.split,
                "device": device_name, "batch_size": args.batch_size}
    print(results_text(results, settings))

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


if __name__ == "__main__":
    sys.exit(main())
