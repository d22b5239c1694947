"""Write the procedural demo dataset (cans and bottles, whole and defective) as a VOC devkit.

    python -m detect.make_demo_data OUT --images 400 [--seed 0] [--size 320x240] [--val-fraction 0.2]
    python -m detect.make_demo_data OUT --defect-rate 0.05     (rare defects: 5 % of objects defective)
    python -m detect.make_demo_data OUT --holdout-defect torn_label   (a defect kind shown only in val)
    python -m detect.make_demo_data OUT --conveyor 40 [--speed 4] [--spacing 130] [--fps 25]
    python tools/make_demo_data.py OUT ...     (from a clone; make-demo-data once installed)

Prints one summary line. Exit status: 0 done, 1 the files could not be written, 2 usage
error (bad option, or OUT is a non-empty folder that is not a demo dataset).
See :mod:`detect.demo.dataset` for what is drawn. ``--conveyor N`` writes a video of N items
passing on a belt instead, with its ground truth (:mod:`detect.demo.conveyor`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from detect.common.errors import DetectError, UsageError, show
from detect.demo.dataset import DEFECT_KINDS, DEMO_CLASSES, make_demo_dataset, read_marker
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, run_command


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not WIDTHxHEIGHT, e.g. 320x240") from None
    if not (32 <= width <= 8192 and 32 <= height <= 8192):
        raise argparse.ArgumentTypeError(f"'{text}': width and height must be 32 to 8192 pixels")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="make_demo_data.py",
        description="Draw a synthetic Pascal VOC dataset of cans and bottles, whole and defective "
        f"(classes: {', '.join(DEMO_CLASSES)}).",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (a VOC devkit: Annotations/, JPEGImages/, ImageSets/)")
    parser.add_argument("--images", type=Number(int, 1, 1_000_000), default=400, metavar="N", help="number of images (default 400)")
    parser.add_argument("--seed", type=Number(int, 0), default=0, metavar="S", help="random seed (default 0); same seed, same files")
    parser.add_argument("--size", type=_size, default=(320, 240), metavar="WxH", help="image size (default 320x240)")
    parser.add_argument("--val-fraction", type=Number(float, 0, 1, hi_open=True), default=0.2, metavar="F",
                        help="share of images listed in ImageSets/Main/val.txt (default 0.2)")
    parser.add_argument("--defect-rate", type=Number(float, 0, 1), metavar="P",
                        help="each object is defective with probability P (e.g. 0.05 for rare defects); default: "
                        "the four classes equally likely")
    kinds = [k for ks in DEFECT_KINDS.values() for k in ks]
    parser.add_argument("--holdout-defect", choices=kinds, metavar="KIND",
                        help="draw defect KIND only in val images (an unseen defect), and write defects.json, "
                        f"each object's defect kinds; one of {', '.join(kinds)} (default: none)")
    c = parser.add_argument_group("a conveyor video (instead of the dataset)")
    c.add_argument("--conveyor", type=Number(int, 1, 100_000), metavar="N",
                   help="write OUT/conveyor.mp4, N items crossing the frame, and OUT/conveyor.json, the ground truth")
    c.add_argument("--speed", type=Number(float, 0.1, 1000), default=4.0, metavar="PX",
                   help="belt speed in pixels per frame (default 4)")
    c.add_argument("--spacing", type=Number(float, 10, 100_000), default=130.0, metavar="PX",
                   help="distance between items, centre to centre, +-20%% (default 130)")
    c.add_argument("--fps", type=Number(float, 1, 240), default=25.0, help="frames per second (default 25)")
    return parser


def _conveyor(args, started: float) -> int:
    from detect.demo.conveyor import write_conveyor

    try:
        truth = write_conveyor(args.out, args.conveyor, seed=args.seed, size=args.size, speed=args.speed,
                               spacing=args.spacing, fps=args.fps)
    except OSError as exc:
        raise DetectError(f"{show(args.out)}: cannot write the conveyor video there ({show(exc)})") from None
    counts = ", ".join(f"{k} {v}" for k, v in truth["counts"].items())
    print(f"conveyor: {args.conveyor} items ({counts}), {truth['frames']} frames at {args.fps:g} FPS "
          f"({truth['frames'] / args.fps:.1f} s) -> {show(args.out)}/conveyor.mp4 and conveyor.json "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)
    return run_command(lambda: _conveyor(args, time.perf_counter()) if args.conveyor else _dataset(args),
                       interrupted="interrupted; a half-made dataset is never left as finished (run it again)")


def _dataset(args) -> int:
    started = time.perf_counter()
    try:
        out = make_demo_dataset(
            args.out, num_images=args.images, seed=args.seed, image_size=args.size, val_fraction=args.val_fraction,
            defect_rate=args.defect_rate, holdout_defect=args.holdout_defect,
        )
    except (FileExistsError, ValueError) as exc:
        raise UsageError(show(exc)) from None
    except OSError as exc:
        raise DetectError(f"{show(args.out)}: cannot write the demo dataset there ({show(exc)})") from None
    elapsed = time.perf_counter() - started
    marker = read_marker(out) or {}
    counts = marker.get("objects", {})
    per_class = ", ".join(f"{name} {counts.get(name, '?')}" for name in DEMO_CLASSES)
    width, height = args.size
    print(
        f"{args.images} images {width}x{height} (seed {args.seed}; {marker.get('negatives', '?')} without objects; "
        f"train {marker.get('train', '?')} / val {marker.get('val', '?')}), objects: {per_class} -> {show(out)} "
        f"({elapsed:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
