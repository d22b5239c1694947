"""Check a VOC (LabelImg) dataset for annotation mistakes before training.

Usage::

    python -m detect.check_xml DATA [--classes annotations/classes.txt] [--images DIR]
        [--format {text,json,github}] [--fix | --unsafe-fixes] [--diff] [--deep] [--exit-zero]
        [--exif {apply,ignore}]
        [--severity {info,warning,error}] [--jobs N]
        [--backbone B] [--input-size PX] [--anchor-scales S] [--anchor-ratios R]

(``check-xml`` once installed; ``python tools/check_xml.py`` from a clone.) One finding a
line, ``path:line:col: CODE severity message``, then a summary. Exit status: 0 no errors
(warnings allowed), 1 errors found, 2 usage error or unreadable DATA; ``--exit-zero`` turns
1 into 0. The checks live in :mod:`detect.checks` (the anchor fit too: numpy, no torch) and
the run, fixes and rendering in :mod:`detect.checks.session`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from detect.checks import CODES, SEVERITIES
from detect.checks.session import CheckRequest, run_check
from detect.common.errors import DetectError, printable
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, number_list
from detect.model.backbones import BACKBONES

PROG = "check_xml"


def _codes_epilog() -> str:
    rows = [f"  {code}  {sev:<7}  {title}" for code, (sev, title) in CODES.items()]
    return "check codes:\n" + "\n".join(rows) + (
        "\n\nexit status: 0 no errors (warnings allowed), 1 errors found, 2 usage error or unreadable DATA"
    )


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog=PROG,
        description="Check Pascal VOC / LabelImg XML annotations and their images for mistakes.",
        epilog=_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="dataset folder: VOC devkit, XMLs beside images, or XML + image folders")
    p.add_argument("--classes", metavar="FILE", help="class names, one a line (e.g. annotations/classes.txt); "
                   "without it the names are taken from the data")
    p.add_argument("--images", metavar="DIR", help="look for images in DIR first")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format (default text)")
    fix = p.add_mutually_exclusive_group()
    fix.add_argument("--fix", action="store_true", help="apply safe fixes (UTF-8 without BOM, fill <size> "
                     "from the image, drop exact duplicate objects); keeps a .bak of each file")
    fix.add_argument("--unsafe-fixes", action="store_true", help="safe fixes plus clamping boxes into the image, "
                     "rounding coordinates and renaming a class to its unambiguous closest match")
    p.add_argument("--diff", action="store_true", help="show what the fixes would change, write nothing")
    p.add_argument("--exif", choices=("apply", "ignore"), default="apply",
                   help="apply (default): boxes are in the upright frame LabelImg 1.8.4+, OpenCV and browsers show "
                   "(the EXIF orientation applied); ignore: the whole dataset was annotated on the stored pixels "
                   "(an EXIF-unaware tool); train it with the same switch")
    p.add_argument("--deep", action="store_true", help="decode every image fully (slow) to catch truncated files")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when errors are found (usage errors still exit 2)")
    p.add_argument("--jobs", type=Number(int, 0, 256), default=0, metavar="N",
                   help="processes for reading XML files and image headers (default: one per CPU core)")
    p.add_argument("--severity", choices=SEVERITIES[::-1], default="info",
                   help="lowest severity to list (default info: everything); the summary counts all")
    model = p.add_argument_group("the model the data is for (small-box and anchor-fit checks), as given to detect.train")
    model.add_argument("--backbone", choices=tuple(BACKBONES), default="mobilenet")
    model.add_argument("--input-size", type=Number(int, 32, 8192), default=640, metavar="PX",
                       help="longest image side the model works at (default 640, detect.train's default for a dataset)")
    model.add_argument("--anchor-scales", type=number_list, nargs="+", metavar="S",
                       help="anchor size multipliers per level, e.g. '1,2,4' (default per backbone)")
    model.add_argument("--anchor-ratios", type=number_list, nargs="+", metavar="R",
                       help="anchor height/width ratios, e.g. '0.5,1,2'")
    return p


def request_from(args: argparse.Namespace) -> CheckRequest:
    """The parsed options as a :class:`detect.checks.session.CheckRequest`."""
    def flat(groups):  # "--anchor-scales 1,2,4" and "--anchor-scales 1 2 4" alike
        return [v for group in groups for v in group] if groups else None

    return CheckRequest(
        data=args.data, classes=args.classes, images=args.images, format=args.format, fix=args.fix,
        unsafe_fixes=args.unsafe_fixes, diff=args.diff, severity=args.severity, jobs=args.jobs, deep=args.deep,
        exif=args.exif, backbone=args.backbone, input_size=args.input_size,
        anchor_scales=flat(args.anchor_scales), anchor_ratios=flat(args.anchor_ratios),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)
    try:
        outcome = run_check(request_from(args))
        status, output = outcome.status, outcome.output
    except DetectError as exc:
        print(f"{PROG}: error: {printable(exc)}", file=sys.stderr)
        status, output = exc.exit_code, ""
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    else:
        for note in outcome.notes:
            print(f"{PROG}: {note}", file=sys.stderr)
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): not our failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if args.exit_zero and status == 1 else status


if __name__ == "__main__":
    sys.exit(main())
