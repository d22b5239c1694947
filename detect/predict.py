"""Run a trained detector on images, videos, cameras and streams: ``python -m detect.predict``.

    python -m detect.predict --weights weights/mobilenet/best.pt photos/            # a folder
    python -m detect.predict --weights best.onnx conveyor.mp4 --save-json --save-csv
    python -m detect.predict --weights best.onnx 0                                  # camera 0
    python -m detect.predict --weights best.pt lote2/ --save-xml --conf 0.3          # pre-annotation
    python -m detect.predict --weights best.pt lote2/ --conf 0.5 --conf Lata_defectuosa=0.3

SOURCE: image files, folders (``--recursive``), globs, ``.txt`` lists, video files, camera
indexes, ``rtsp://``/``http://`` streams (:mod:`detect.inference.sources`). ``--weights``: a ``.pt``
checkpoint (PyTorch) or an ``.onnx`` export (onnxruntime; torch is not imported).

Outputs go to ``predictions/<name>/`` (``--out``, ``--name``; default name: the model's
run), never over an earlier run: a number is added. What is written:
:mod:`detect.inference.outputs`. The predictor itself (usable from scripts):
:mod:`detect.inference.predictor`.

A bad input (an image that does not decode, an empty folder, a video that does not open,
a camera that is not there, a stream that drops) gets one line naming it and what to do;
the other inputs are still processed. Exit status: 0 all inputs processed; 1 some input
failed or the model file is unusable; 2 usage error; 130 Ctrl-C (outputs so far are kept,
videos closed properly).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Sequence

from detect.common.errors import UsageError, printable, show
from detect.common.files import outputs_problem, unique_folder
from detect.common.options import (CliParser, Number, add_device_option, add_inference_options, class_list,
                                   run_command, settings_from)
from detect.common.thresholds import CONF, ConfOption, parse_conf
from detect.line.options import TRACK_CONF, add_line_options, check_line_args
from detect.station import add_station_options, start_listeners

_names = class_list  # the --classes reader (imported from here before)


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.predict",
                  description="Detect cans and bottles (and their defects) in images, videos, cameras and streams.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image, folder, glob, .txt list of paths, video file, camera index (0), or stream URL")
    p.add_argument("--weights", required=True, metavar="FILE", help="a .pt checkpoint or an .onnx export")
    p.add_argument("--out", default="predictions", metavar="DIR", help="parent folder of the outputs (default: predictions)")
    p.add_argument("--name", metavar="NAME", help="output folder name (default: the model's run name)")
    p.add_argument("--conf", action="append", type=ConfOption(per_class=True), metavar="S|CLASS=S",
                   help=f"score threshold (default {CONF:g}; {TRACK_CONF:g} with --track, where an item's frames vote); "
                        "repeat with CLASS=S for per-class thresholds, "
                        "e.g. --conf 0.5 --conf Lata_defectuosa=0.3")
    p.add_argument("--classes", metavar="A,B", help="keep only these classes (separated by commas; a name may hold spaces)")
    p.add_argument("--defect-classes", metavar="A,B",
                   help="classes drawn in the warning colour and counted as defects "
                        "(default: names containing defect, damage, broken or crack)")
    p.add_argument("--recursive", action="store_true", help="search folders' sub-folders for images too")
    p.add_argument("--save-json", action="store_true", help="write predictions.json (the detect.eval format)")
    p.add_argument("--save-csv", action="store_true", help="write predictions.csv, one row per detection")
    p.add_argument("--save-xml", action="store_true",
                   help="pre-annotation: a Pascal VOC XML beside each image, for LabelImg")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing XML annotations (--save-xml) and an existing --save-ls or --events file")
    p.add_argument("--save-ls", metavar="FILE", default=None,
                   help="pre-annotation for Label Studio: its task import JSON with the boxes as predictions")
    p.add_argument("--ls-prefix", metavar="URL", default="/data/local-files/?d=",
                   help="with --save-ls: what goes before each image path in data.image (default: Label Studio's "
                        "local-files URL; serve the images with LOCAL_FILES_DOCUMENT_ROOT=/)")
    p.add_argument("--save-crops", action="store_true", help="write each detection's crop into crops/<class>/")
    p.add_argument("--no-save-images", action="store_true", help="write no annotated images or videos")
    p.add_argument("--show", action="store_true", help="show the annotated frames in a window (needs a GUI OpenCV)")
    p.add_argument("--max-frames", type=Number(int, 1), metavar="N", help="stop each video, camera or stream after N frames")
    add_device_option(p)
    p.add_argument("--batch-size", type=Number(int, 1, 1024), default=1, help="images per forward pass (PyTorch; default: 1)")
    p.add_argument("--threads", type=Number(int, 1, 1024), metavar="N", help="CPU threads for inference (default: the library's)")
    p.add_argument("--optimization", default="all", choices=["disable", "basic", "extended", "all"],
                   help="onnxruntime graph optimisation level (default: all)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino"],
                   help="what runs an .onnx export (default: onnxruntime; openvino needs pip install -e \".[openvino]\")")
    add_inference_options(p, what="for a .pt checkpoint; an .onnx export has them fixed")
    add_line_options(p)
    add_station_options(p)
    p.add_argument("--status-every", type=Number(float, 0, lo_open=True), default=5.0, metavar="S",
                   help="seconds between FPS/latency lines on live sources (default: 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def _check_args(args) -> None:
    if args.overwrite and not (args.save_xml or args.save_ls or args.events not in (None, "-")):
        raise UsageError("--overwrite only applies to --save-xml, --save-ls and --events (prediction folders are "
                         "never overwritten)")
    if problem := outputs_problem(args.overwrite, ("--save-ls", args.save_ls),
                                  ("--events", None if args.events == "-" else args.events)):
        raise UsageError(show(problem))
    check_line_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.predict``; returns the exit status (see the module docstring)."""
    return run_command(_predict, build_parser(), argv)


def _predict(args) -> int:
    _check_args(args)
    args.listeners = start_listeners(args)  # before the model loads: a port in use or a bad URL fails at once
    try:
        return _load_and_run(args)
    finally:
        args.listeners.close()  # the page's server and the broker connection, however the run ended


def _load_and_run(args) -> int:
    settings = settings_from(args)
    from detect.inference.loader import load_detector  # torch only for a .pt file

    detector = load_detector(args.weights, device=args.device, threads=args.threads, batch_size=args.batch_size,
                             optimization=args.optimization, test_settings=settings,
                             backend=args.backend)
    from detect.inference.predictor import Predictor

    classes = tuple(detector.classes)
    # --track counts lower: an item's frames vote (without a plain --conf; CLASS=S items still apply)
    conf = parse_conf(args.conf, classes, default=TRACK_CONF if args.track else CONF)
    predictor = Predictor(detector, conf=conf, classes=class_list("--classes", args.classes, classes),
                          defect_classes=class_list("--defect-classes", args.defect_classes, classes),
                          batch_size=args.batch_size)
    return _run(args, detector, predictor)


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # clear of the progress bar
    sys.stderr.flush()


def _run(args, detector, predictor) -> int:
    from detect.inference.outputs import PredictionWriter
    from detect.inference.session import PredictSession, gui_available, summary_lines
    from detect.inference.sources import open_sources

    window = args.show
    if window and not gui_available():
        print("warning: --show needs OpenCV with a GUI, and this one is opencv-python-headless (no windows); "
              "the annotated results are written to the output folder instead", file=sys.stderr)
        window = False

    sources, errors = open_sources(args.sources, recursive=args.recursive)
    if args.track and not args.sequence:
        from detect.line.session import tracking_needs_frames

        still = [s for s in sources if s.kind == "images"]
        if still:
            for s in sources:
                s.close()
            raise UsageError(tracking_needs_frames(show(still[0].name)))
    for e in errors:
        print(f"error: {printable(e)}", file=sys.stderr)
    if not sources:
        print("error: no source could be opened; nothing was predicted", file=sys.stderr)
        return 1

    info = detector.info
    run = str(info.get("run") or Path(args.weights).stem)
    try:
        folder = unique_folder(Path(args.out), args.name or run)
    except OSError as exc:
        print(f"error: {show(args.out)}: cannot create the output folder ({exc.strerror or exc}); "
              "choose another --out", file=sys.stderr)
        return 1
    writer = PredictionWriter(
        folder, classes=predictor.classes, defect_classes=predictor.defect_classes,
        save_images=not args.no_save_images, save_json=args.save_json, save_csv=args.save_csv,
        save_xml=args.save_xml, save_crops=args.save_crops, overwrite=args.overwrite,
        save_ls=Path(args.save_ls) if args.save_ls else None, ls_prefix=args.ls_prefix,
        model_version=f"{run} ({Path(args.weights).name})",
    )
    # an anomaly bank beside the model scores each written detection and each line item: loaded once for both
    scorer = _anomaly_scorer(args, detector) if args.save_json or args.save_csv or args.track else None
    if scorer is not None and (args.save_json or args.save_csv):
        from detect.model.patchbank import score_writes

        score_writes(writer, scorer)
    print(f"model {show(args.weights)} ({info.get('format')}, {show(info.get('backbone'))}, input "
          f"{info.get('input_size')} px); classes {show(', '.join(predictor.classes))}; defects "
          f"{show(', '.join(predictor.defect_classes)) or 'none'}; conf {show(predictor.conf.describe())}", file=sys.stderr)

    line = None
    if args.track:
        from detect.inference.loader import load_verdict_beside
        from detect.line.session import LineSession

        verdict = load_verdict_beside(args.weights, predictor.classes, threads=args.threads)  # the item classifier
        anomaly = _line_anomaly(args, scorer, predictor)
        line = LineSession(predictor, folder=folder, line=args.line, belt=args.belt, min_frames=args.min_frames,
                           defect_frames=args.defect_frames, defect_share=args.defect_share,
                           defect_threshold=args.defect_threshold, belt_speed=args.belt_speed,
                           save_crops=args.save_crops, track_buffer=args.track_buffer, low=args.track_low,
                           events=Path(args.events) if args.events and args.events != "-" else None,
                           events_stdout=sys.stdout if args.events == "-" else None,
                           listeners=args.listeners.listeners,  # the live page, MQTT
                           verdict=verdict, anomaly=anomaly, gate_delay=args.gate_delay)
        print(line.verdict_note, file=sys.stderr)
        if anomaly is not None:
            print(anomaly.describe(), file=sys.stderr)
    outcome = PredictSession(predictor, writer, stage=line, say=_say, window=window, max_frames=args.max_frames,
                             status_every=args.status_every, progress=not args.no_progress).run(sources)
    if outcome.write_error is not None:
        e = outcome.write_error
        where = f"{show(e.filename)}: " if e.filename else ""
        print(f"error: cannot write the outputs to {show(folder)}: {where}{show(e.strerror or e)}", file=sys.stderr)
        return 1
    with contextlib.redirect_stdout(sys.stderr) if args.events == "-" else contextlib.nullcontext():
        lines = summary_lines(outcome.summary, predictor, folder)
        print("\n".join(lines + (line.report_lines(outcome.counting) if line is not None else [])))
    if outcome.interrupted:
        print(f"interrupted: the outputs so far are in {show(folder)} (videos closed, playable)", file=sys.stderr)
        return 130
    summary = outcome.summary
    failed = len(errors) + len(summary.failed) + len(summary.stopped)
    return 1 if failed else 0


def _anomaly_scorer(args, detector):
    """The anomaly scorer of the bank beside the model (detect.anomaly, detect.train), or None:
    PyTorch features for a checkpoint, the bank's ONNX features (no torch) for an export."""
    from detect.inference.loader import is_onnx
    from detect.model.patchbank import bank_path

    if not bank_path(args.weights).is_file():
        return None
    if is_onnx(args.weights):
        from detect.model.patchbank import onnx_scorer_beside

        return onnx_scorer_beside(detector, args.weights, threads=args.threads)
    from detect.model.anomaly import scorer_beside

    return scorer_beside(detector, args.weights)


def _line_anomaly(args, scorer, predictor):
    """The line's anomaly stage around ``scorer`` (the bank beside the model), or None without one."""
    if scorer is None:
        return None
    from detect.line.anomaly import ItemAnomaly

    return ItemAnomaly.from_meta(scorer, scorer.bank.meta, predictor.classes, predictor.defect_classes,
                                 flag=args.anomaly_flags)


if __name__ == "__main__":
    sys.exit(main())
