"""Write the procedural demo dataset (cans and bottles, whole and defective) as a VOC devkit.

    python -m detect.make_demo_data OUT --images 400 [--seed 0] [--size 320x240] [--val-fraction 0.2]
    python tools/make_demo_data.py OUT ...     (from a clone; make-demo-data once installed)

Prints one summary line. Exit status: 0 done, 1 the files could not be written, 2 usage
error (bad option, or OUT is a non-empty folder that is not a demo dataset).
See :mod:`detect.data.demo` for what is drawn.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from detect.common.errors import show
from detect.data.demo import DEMO_CLASSES, make_demo_dataset, read_marker
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)
    started = time.perf_counter()
    try:
        out = make_demo_dataset(
            args.out, num_images=args.images, seed=args.seed, image_size=args.size, val_fraction=args.val_fraction
        )
    except (FileExistsError, ValueError) as exc:
        print(f"make_demo_data.py: error: {show(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"make_demo_data.py: error: {show(exc)}", file=sys.stderr)
        return 1
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
