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
1 into 0. The checks themselves live in :mod:`detect.checks` (and the anchor fit in
:mod:`detect.checks.anchor_fit`, used when torch is installed); this module only prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from detect.model.backbones import BACKBONES
from detect.checks import CODES, SEVERITIES, CheckReport, apply_fixes, check_dataset, format_finding, github_line, plan_fixes, plural
from detect.common.errors import UsageError, DetectError, printable, show
from detect.data.layout import discover, read_classes
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, number_list

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


def _shown(report: CheckReport, minimum: str) -> list:
    allowed = SEVERITIES[: SEVERITIES.index(minimum) + 1]
    return [f for f in report.findings if f.severity in allowed]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)
    for name in ("anchor_scales", "anchor_ratios"):
        if getattr(args, name):  # "--anchor-scales 1,2,4" and "--anchor-scales 1 2 4" alike
            setattr(args, name, [v for group in getattr(args, name) for v in group])
    try:
        status, output = _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    try:
        sys.stdout.write(output)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): not our failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if args.exit_zero and status == 1 else status


def _anchor_rule():
    """The anchor-fit rule's loader (numpy only: the VOC6xx checks run without torch)."""
    from detect.checks.anchor_fit import anchor_rule

    return lambda: anchor_rule


def _run(args: argparse.Namespace) -> tuple[int, str]:
    """Check (and fix) the dataset: the exit status and everything to print."""
    try:
        classes = read_classes(args.classes) if args.classes is not None else None
        files = discover(args.data, images=args.images)
        if files.format != "voc" and (args.fix or args.unsafe_fixes or args.diff):
            raise UsageError(f"{show(args.data)}: fixes rewrite VOC XML only and this is a {files.format.upper()} "
                             "dataset; fix the file the finding names, or convert it (python -m detect.convert "
                             "SRC DST --to voc) and fix that")
    except DetectError as exc:
        print(f"{PROG}: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code, ""

    options = dict(
        classes=classes,
        deep=args.deep,
        backbone=args.backbone,
        input_size=args.input_size,
        anchor_scales=args.anchor_scales,
        anchor_ratios=args.anchor_ratios,
        jobs=args.jobs if args.jobs > 0 else (os.cpu_count() or 1),
        anchor_rule=_anchor_rule(),
        exif=args.exif,
    )
    report = check_dataset(files, **options)
    out: list[str] = []
    fix_lines: list[str] = []
    fixes_json: list[dict] = []
    refused_any = False
    if args.fix or args.unsafe_fixes or args.diff:
        plans = plan_fixes(report, unsafe=args.unsafe_fixes)
        n_fixes = sum(len(p.findings) for p in plans)
        for plan in plans:
            entry = {"path": str(plan.path), "codes": sorted({f.code for f in plan.findings})}
            if args.diff:
                entry["diff"] = plan.diff()
            fixes_json.append(entry)
        level = "--unsafe-fixes" if args.unsafe_fixes else "--fix"
        if args.diff:
            if args.format == "text":
                out.extend(plan.diff() for plan in plans)
            fix_lines.append(
                f"{plural(n_fixes, 'fix')} would change {plural(len(plans), 'file')}; nothing was written "
                f"(run with {level} without --diff to write them)"
            )
        else:
            applied = apply_fixes(plans, root=files.root)
            for refused in applied.refused:
                print(f"{PROG}: {printable(refused)}", file=sys.stderr)
            refused_any = bool(applied.refused)
            if applied.written:
                report = check_dataset(discover(args.data, images=args.images), **options)
            written = set(applied.written)
            n_done = sum(len(p.findings) for p in plans if p.path in written)
            fix_lines.append(
                f"fixed {plural(n_done, 'problem')} in {plural(len(written), 'file')} (each file as it was is kept "
                "as <file>.xml.bak, or .bak2, .bak3... when a backup exists); the findings listed are what remains"
            )
        if not args.unsafe_fixes:
            more = len(report.fixable(unsafe=True)) - len(report.fixable(unsafe=False))
            if more:
                fix_lines.append(
                    f"{plural(more, 'more finding')} can be fixed with --unsafe-fixes (check them with --diff first)"
                )

    shown = _shown(report, args.severity)
    if args.format == "json":
        doc = {"findings": [f.as_dict() for f in shown], "summary": report.summary()}
        if args.fix or args.unsafe_fixes or args.diff:
            doc["fixes"] = fixes_json
            doc["fix_summary"] = fix_lines
        out.append(json.dumps(doc, indent=2) + "\n")
    else:
        lines = [github_line(f) if args.format == "github" else format_finding(f) for f in shown]
        if shown:
            lines.append("")
        lines += report.summary_lines() + fix_lines
        if report.errors:
            lines.append("errors must be fixed before training (or train with --skip-invalid to leave those files out)")
        out.append("\n".join(lines) + "\n")
    return (1 if report.errors or refused_any else 0), "".join(out)


if __name__ == "__main__":
    sys.exit(main())
