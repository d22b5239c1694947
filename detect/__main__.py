"""The front door: ``python -m detect`` (or ``detect``) lists the commands in pipeline order;
``python -m detect COMMAND ...`` runs one, exactly as ``python -m detect.COMMAND ...`` does.

    python -m detect                          # the list
    python -m detect train --backbone mobilenet
    python -m detect predict --weights weights/mobilenet/best.onnx conveyor.mp4 --track

Exit status: the command's own; 0 for the list; 2 for a command that does not exist.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Sequence

__all__ = ["COMMANDS", "main"]

PROG = "python -m detect"

# (name, what it does), in the order a dataset travels through them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("make_demo_data", "write the procedural demo dataset (cans and bottles, whole and defective) as a VOC folder"),
    ("check_xml", "check LabelImg / Pascal VOC annotations for mistakes before training"),
    ("convert", "convert a dataset between Pascal VOC, COCO and YOLO"),
    ("train", "train a Faster R-CNN on your annotated images"),
    ("eval", "score trained models (VOC and COCO AP, precision/recall, speed) on annotated images"),
    ("audit", "find likely label mistakes with a trained model, or pick the images to annotate next"),
    ("anomaly", "build a checkpoint's anomaly bank: detections get a score for defects nobody labelled"),
    ("export", "export a checkpoint to ONNX (float32, int8) for deployment"),
    ("benchmark", "PyTorch, ONNX and OpenVINO side by side on this machine: size, latency, mAP"),
    ("predict", "run a model on images, videos, cameras and streams; --track counts items on a line"),
)


def listing() -> str:
    """The command list ``python -m detect`` prints."""
    width = max(len(name) for name, _ in COMMANDS)
    rows = [f"  {name.ljust(width)}  {what}" for name, what in COMMANDS]
    return (f"usage: {PROG} COMMAND [options]   (or python -m detect.COMMAND; COMMAND --help for its options)\n\n"
            "commands, in pipeline order:\n" + "\n".join(rows) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect [COMMAND [ARGS...]]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(listing())
        if args:  # --help exits as every command's --help does (argparse)
            raise SystemExit(0)
        return 0
    name, rest = args[0].replace("-", "_"), args[1:]
    names = [n for n, _ in COMMANDS]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        from detect.common.errors import show

        print(f"{PROG}: error: no command {show(repr(args[0]))}{hint} (the commands: {', '.join(names)}; "
              f"{PROG} lists them)", file=sys.stderr)
        return 2
    return importlib.import_module(f"detect.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
