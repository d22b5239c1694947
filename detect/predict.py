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

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from detect.common.errors import UsageError, printable, show
from detect.common.files import unique_folder
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, add_device_option, add_inference_options, run_command, settings_from
from detect.line.counting import DEFECT_SHARE, TRACK_CONF
from detect.station import add_station_options, start_listeners

log = logging.getLogger(__name__)


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.predict",
                  description="Detect cans and bottles (and their defects) in images, videos, cameras and streams.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image, folder, glob, .txt list of paths, video file, camera index (0), or stream URL")
    p.add_argument("--weights", required=True, metavar="FILE", help="a .pt checkpoint or an .onnx export")
    p.add_argument("--out", default="predictions", metavar="DIR", help="parent folder of the outputs (default: predictions)")
    p.add_argument("--name", metavar="NAME", help="output folder name (default: the model's run name)")
    p.add_argument("--conf", action="append", metavar="S|CLASS=S",
                   help=f"score threshold (default 0.5; {TRACK_CONF:g} with --track, where an item's frames vote); "
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
    p.add_argument("--overwrite", action="store_true", help="with --save-xml: replace existing XML annotations")
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
    t = p.add_argument_group(
        "counting items (--track)",
        "Each detection gets a track id (ByteTrack, class-agnostic) that follows the object from frame to frame; "
        "an item is counted once, when its box centre crosses the counting line. Its class is the score-weighted "
        "vote of all its frames so far (a class votes in a frame where it is seen at its --conf); it is defective "
        "when a defect class was the frame's best class at its --conf in at least --defect-frames frames and in at "
        "least --defect-share of the frames where it was detected. One JSON line per item goes "
        "to events.jsonl as it is counted. Details: docs/counting.md")
    t.add_argument("--track", action="store_true", help="track objects and count items (videos, cameras, streams)")
    t.add_argument("--count-line", metavar="x1,y1,x2,y2|none",
                   help="the counting line, in fractions of the frame (all values 0..1) or pixels; default: across "
                        "the middle, perpendicular to --belt; none: count a track when it ends after --min-frames")
    t.add_argument("--belt", default="left-right", choices=["left-right", "right-left", "top-down", "bottom-up"],
                   help="the way the belt moves (default left-right): the default line and the forward direction")
    t.add_argument("--defect-frames", type=Number(int, 1), default=2, metavar="N",
                   help="frames a defect class must be seen in, at its --conf, to flag the item (default 2)")
    t.add_argument("--defect-share", type=Number(float, 0, 1), default=DEFECT_SHARE, metavar="F",
                   help="and the share of the item's detected frames it must be seen in (default "
                        f"{DEFECT_SHARE:g}; 0: --defect-frames alone)")
    t.add_argument("--min-frames", type=Number(int, 1), default=3, metavar="N",
                   help="with --count-line none: frames a track needs to be counted (default 3)")
    t.add_argument("--events", metavar="FILE|-",
                   help="where the event lines go (default: events.jsonl in the output folder); '-': standard "
                        "output as well (then the summary goes to standard error)")
    t.add_argument("--track-buffer", type=Number(int, 1), metavar="FRAMES",
                   help="frames a lost track is kept to be found again (default: one second of video, at least 10)")
    t.add_argument("--track-low", type=Number(float, 0, 1), default=0.1, metavar="S",
                   help="lowest score a detection needs to keep a track alive (ByteTrack's low detections; default 0.1)")
    t.add_argument("--sequence", action="store_true",
                   help="with --track on images: they are consecutive frames of one camera, in name order")
    add_station_options(p)
    p.add_argument("--status-every", type=Number(float, 0, lo_open=True), default=5.0, metavar="S",
                   help="seconds between FPS/latency lines on live sources (default: 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def _names(option: str, text: str | None, classes) -> list[str] | None:
    """``--classes "raccoon face,Lata"``: names separated by commas, spaces inside a name kept
    (stripped only around the commas), each checked against the model's ``classes``. An item
    that is not a class but whose space-separated words all are (``"Lata Botella"``, the
    older form) is read as those words."""
    if text is None:
        return None
    names: list[str] = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        words = item.split()
        names += words if item not in classes and len(words) > 1 and all(w in classes for w in words) else [item]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise UsageError(f"{option} {show(repr(text))}: the model has no class "
                         f"{show(', '.join(repr(n) for n in unknown))}; its classes are {show(', '.join(classes))} "
                         "(separate names with commas: --classes 'raccoon face,Lata')")
    return names or None


def _check_args(args) -> None:
    if args.overwrite and not args.save_xml:
        raise UsageError("--overwrite only applies to --save-xml (prediction folders are never overwritten)")
    counting = [o for o, v in (("--count-line", args.count_line), ("--events", args.events),
                                ("--sequence", args.sequence), ("--track-buffer", args.track_buffer)) if v]
    if counting and not args.track:
        raise UsageError(f"{', '.join(counting)} only apply with --track")
    if args.track:
        from detect.line.counting import parse_count_line

        args.line = parse_count_line(args.count_line, args.belt)


def _gui_available() -> bool:
    import cv2

    try:
        cv2.namedWindow("detect.predict")
        return True
    except cv2.error:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.predict``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    return run_command(lambda: _predict(args))


def _predict(args) -> int:
    _check_args(args)
    args.listeners = start_listeners(args)  # before the model loads: a port in use or a bad URL fails at once
    settings = settings_from(args)
    from detect.inference.loader import load_detector  # torch only for a .pt file

    detector = load_detector(args.weights, device=args.device, threads=args.threads, batch_size=args.batch_size,
                             optimization=args.optimization, test_settings=settings,
                             backend=args.backend)
    from detect.inference.predictor import Predictor

    classes = tuple(detector.classes)
    conf = list(args.conf or [])
    if args.track and all("=" in c for c in conf):  # no overall threshold given: the tracking one
        conf.insert(0, f"{TRACK_CONF:g}")
    predictor = Predictor(detector, conf=conf, classes=_names("--classes", args.classes, classes),
                          defect_classes=_names("--defect-classes", args.defect_classes, classes),
                          batch_size=args.batch_size)
    return _run(args, detector, predictor)


def _run(args, detector, predictor) -> int:
    import cv2
    from tqdm import tqdm

    from detect.inference.outputs import PredictionWriter
    from detect.inference.predictor import RateMeter
    from detect.inference.sources import open_sources, prefetch

    window = args.show
    if window and not _gui_available():
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
    print(f"model {show(args.weights)} ({info.get('format')}, {show(info.get('backbone'))}, input "
          f"{info.get('input_size')} px); classes {show(', '.join(predictor.classes))}; defects "
          f"{show(', '.join(predictor.defect_classes)) or 'none'}; conf {show(predictor.conf.describe())}", file=sys.stderr)

    counter = log_items = None
    if args.track:
        from detect.line.counting import ItemCounter
        from detect.inference.outputs import ItemLog

        events = Path(args.events) if args.events and args.events != "-" else None
        log_items = ItemLog(folder, path=events, save_crops=args.save_crops, stdout=sys.stdout if args.events == "-" else None)
        counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.conf.vector(predictor.classes),
                              line=args.line, belt=args.belt, min_frames=args.min_frames,
                              defect_frames=args.defect_frames, defect_share=args.defect_share,
                              keep_crops=args.save_crops,
                              on_item=lambda item, crop: (log_items.on_item(item, crop), args.listeners.on_item(item.event())))
    cost = {"frames": 0, "model": 0.0, "tracking": 0.0}

    finite = [s for s in sources if not s.live]
    total = sum(len(s) for s in finite)
    start = time.perf_counter()
    interrupted = quit_requested = False
    write_error: OSError | None = None
    bar = tqdm(total=total or None, unit="img", desc="predict", disable=args.no_progress or not finite,
               dynamic_ncols=True, leave=False)
    try:
        for source in sources:
            meter = RateMeter(args.status_every) if source.live else None
            if source.live:
                bar.write(f"{source.kind} {show(source.name)}: reading the newest frame continuously; Ctrl-C to stop",
                          file=sys.stderr)
            n = 0
            try:
                # A reader thread decodes the next image while the model runs (in order; live sources
                # have their own grabber).
                frames = prefetch(source)
                if counter is not None:
                    from detect.line.session import track_frames
                    from detect.line.tracking import ByteTracker

                    tracker = ByteTracker(buffer=args.track_buffer or max(10, round(source.fps or 30)))
                    results = track_frames(predictor, source, counter, tracker=tracker, low=args.track_low,
                                           frames=frames)
                else:
                    results = predictor.predict_frames(frames, live=source.live)
                for result in results:
                    if counter is not None:
                        args.listeners.on_frame(result, counter)
                    if counter is not None and result.error is None:
                        cost["frames"] += 1
                        cost["model"] += result.infer_seconds
                        cost["tracking"] += result.track_seconds
                        if result.counted:
                            bar.set_postfix_str(counter.status(), refresh=False)
                    if result.error:
                        bar.write(f"error: {printable(result.error)}", file=sys.stderr)
                    before = len(writer.summary.failed)
                    writer.add(result, source)
                    for message in writer.summary.failed[before + bool(result.error):]:  # e.g. an XML not written
                        bar.write(f"error: {printable(message)}", file=sys.stderr)
                    n += 1
                    if meter is not None:
                        line = meter.add(result)
                        if line:
                            items = f"; {show(counter.status())}" if counter is not None else ""
                            print(f"{show(source.name)}: {line}, {getattr(source, 'dropped', 0)} frames dropped{items}",
                                  file=sys.stderr, flush=True)
                    else:
                        bar.update(1)
                    if window and result.image is not None:
                        cv2.imshow("detect.predict", cv2.cvtColor(result.plot(), cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF == ord("q"):  # the viewer asked to stop: not an error
                            quit_requested = True
                            break
                    if args.max_frames and source.kind != "images" and n >= args.max_frames:
                        break
            finally:
                frames.close()  # stops the reader before the source is closed under it
                source.close()
                reached = quit_requested or (bool(args.max_frames) and n >= args.max_frames)
                stopped = None if reached else getattr(source, "ended", None)
                writer.end_source(source, stopped=stopped)
            if stopped:
                bar.write(f"error: {printable(stopped)}; the {n} frame(s) until then are kept", file=sys.stderr)
            if quit_requested:
                break
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:  # the output folder is not writable, the disk is full...
        write_error = exc
    finally:
        bar.close()
        for source in sources:
            source.close()
        if window:
            cv2.destroyAllWindows()
    counting = None
    if counter is not None:
        log_items.close()
        counting = counter.summary()
        n = max(1, cost["frames"])
        counting["ms_per_frame"] = {"model": round(1000 * cost["model"] / n, 2),
                                    "tracking_and_counting": round(1000 * cost["tracking"] / n, 2)}
        counting["events"] = str(log_items.path)
    try:
        summary = writer.close(seconds=time.perf_counter() - start, counting=counting)
    except OSError as exc:
        write_error = write_error or exc
    args.listeners.on_close({**writer.summary.as_dict(predictor.classes, predictor.defect_classes), "counting": counting})
    if write_error is not None:
        where = f"{show(write_error.filename)}: " if write_error.filename else ""
        print(f"error: cannot write the outputs to {show(folder)}: {where}{show(write_error.strerror or write_error)}",
              file=sys.stderr)
        return 1
    import contextlib

    with contextlib.redirect_stdout(sys.stderr) if args.events == "-" else contextlib.nullcontext():
        _print_summary(summary, predictor, folder)
        if counter is not None:
            _print_counting(counter, counting, log_items)
    if interrupted:
        print(f"interrupted: the outputs so far are in {show(folder)} (videos closed, playable)", file=sys.stderr)
        return 130
    failed = len(errors) + len(summary.failed) + len(summary.stopped)
    return 1 if failed else 0


def _print_counting(counter, counting: dict, log_items) -> None:
    rate = f" ({100 * counting['defect_rate']:.1f} %)" if counting["defect_rate"] is not None else ""
    print(f"items counted: {counter.items}, {counter.defective} defective{rate}; {show(counter.status())}")
    if counting.get("per_direction"):
        print(f"direction: {counting['per_direction']['forward']} forward, {counting['per_direction']['backward']} backward")
    if counter.in_view_at_end:
        print(f"{counter.in_view_at_end} tracked item(s) were still short of the line when the source ended and are "
              "not counted")
    ms = counting["ms_per_frame"]
    print(f"cost per frame: model {ms['model']:.1f} ms, tracking and counting {ms['tracking_and_counting']:.2f} ms")
    print(f"events: {log_items.written} line(s) in {log_items.path}")


def _print_summary(summary, predictor, folder: Path) -> None:
    seen = []
    if summary.images:
        seen.append(f"{summary.images} image(s)")
    if summary.frames:
        seen.append(f"{summary.frames} frame(s)")
    rate = f" in {summary.seconds:.1f} s ({summary.seen / summary.seconds:.1f}/s)" if summary.seconds > 0 and summary.seen else ""
    print(f"{' and '.join(seen) or 'nothing'} predicted{rate}")
    if summary.seen:
        per_class = ", ".join(f"{c} {summary.detections.get(c, 0)}" for c in predictor.keep)
        print(f"detections: {show(per_class)}")
        defects = show(", ".join(predictor.defect_classes)) or "none defined"
        print(f"with a defect ({defects}): {summary.with_defect} of {summary.seen}; "
              f"with any detection: {summary.with_detection}")
    if summary.dropped:
        print(f"live frames dropped to stay current: {summary.dropped}")
    if summary.xml_written or summary.xml_skipped:
        print(f"pre-annotation: {summary.xml_written} XML file(s) written")
    if summary.xml_skipped:
        shown = show(", ".join(summary.xml_skipped[:5])) + (" ..." if len(summary.xml_skipped) > 5 else "")
        print(f"skipped {len(summary.xml_skipped)} image(s) that already have an XML annotation "
              f"(--overwrite replaces them): {shown}")
    if summary.failed or summary.stopped:
        print(f"{len(summary.failed) + len(summary.stopped)} input(s) failed (see the error lines above)")
    if folder.is_dir():
        print(f"results in {show(folder)}")


if __name__ == "__main__":
    sys.exit(main())
