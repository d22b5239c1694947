"""Convert a dataset between Pascal VOC, COCO detection JSON and YOLO.

    python -m detect.convert SRC DST --to {voc,coco,yolo} [--from FORMAT] [--copy | --symlink] [--images DIR] [--classes FILE]

SRC is any VOC layout, a COCO ``.json`` (or a folder of them, one per split), a YOLO folder or
its ``data.yaml``; the format is detected unless ``--from`` names it. DST is a new folder,
outside SRC. Images become hard links (copies across file systems) unless ``--copy`` or
``--symlink`` asks otherwise.
Prints one summary line (the class order included). Exit status: 0 done, 1 the files could
not be written, 2 usage error or unreadable source (one line naming the file and line or
JSON path). Details: docs/formats.md.
"""

from __future__ import annotations

import logging
import sys

from detect.common.errors import DetectError, show
from detect.common.logs import setup_logging
from detect.common.options import CliParser, run_command
from detect.data.convert import convert
from detect.data.layout import FORMATS


def build_parser() -> CliParser:
    parser = CliParser(prog="detect.convert", description="Convert a detection dataset between Pascal VOC, "
                       "COCO JSON and YOLO (boxes, classes in order, splits; images linked or copied).")
    parser.add_argument("src", metavar="SRC", help="the dataset: VOC folder, COCO .json (or folder), YOLO folder or data.yaml")
    parser.add_argument("dst", metavar="DST", help="a new folder for the converted dataset")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument("--from", dest="source_format", choices=FORMATS, default=None,
                        help="the source's format (default: detected)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--copy", dest="link", action="store_const", const="copy", default="link",
                     help="copy the images (default: hard links where DST is on the source's file system, else copies)")
    how.add_argument("--symlink", dest="link", action="store_const", const="symlink",
                     help="absolute symbolic links to the images (break when the dataset moves)")
    parser.add_argument("--images", metavar="DIR", default=None, help="folder to look for the source's images in first")
    parser.add_argument("--classes", metavar="FILE", default=None, help="class list, in the order to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)

    def body() -> int:
        try:
            done = convert(args.src, args.dst, to=args.to, source_format=args.source_format, images=args.images,
                           link=args.link, classes_file=args.classes)
        except OSError as exc:
            raise DetectError(f"cannot write {show(exc.filename or args.dst)}: {show(exc.strerror or exc)}") from None
        splits = ", ".join(f"{k} {v}" for k, v in done.splits.items()) or "no splits"
        lost = "; not held by " + done.target_format.upper() + ": " + ", ".join(
            f"{k} on {v} object(s)" for k, v in done.lost.items()) if done.lost else ""
        print(f"{done.source_format.upper()} -> {done.target_format.upper()}: {done.images} images, {done.objects} "
              f"objects ({splits}); classes in order: {', '.join(map(show, done.classes))}{lost} -> {show(done.dst)}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
