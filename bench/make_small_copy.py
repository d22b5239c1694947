"""A small-image copy of a VOC devkit: every image shrunk so its longest side is ``--side`` px,
its boxes scaled with it, the splits kept. It stands in for a user's small defect photos
(a few hundred photos of about 200x200 px) when timing the recipes (docs/performance.md).

    python bench/make_small_copy.py path/to/bccd bccd-200 --side 200
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import _repo  # noqa: F401  (makes `detect` importable from a clone)

import cv2  # noqa: E402

from detect.data.images import read_image  # noqa: E402
from detect.data.voc import Box, parse_voc, write_voc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", type=Path, help="a VOC devkit (Annotations/, JPEGImages/, ImageSets/Main/)")
    p.add_argument("dest", type=Path, help="a new folder")
    p.add_argument("--side", type=int, default=200, help="longest image side in px (default: 200)")
    args = p.parse_args(argv)
    if args.dest.exists():
        print(f"{args.dest}: exists; give a new folder", file=sys.stderr)
        return 2
    (args.dest / "Annotations").mkdir(parents=True)
    (args.dest / "JPEGImages").mkdir()
    for xml in sorted((args.source / "Annotations").glob("*.xml")):
        ann = parse_voc(xml)
        image = read_image(args.source / "JPEGImages" / ann.filename)
        h, w = image.shape[:2]
        s = args.side / max(h, w)
        small = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(args.dest / "JPEGImages" / ann.filename), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        objects = tuple(dataclasses.replace(o, box=Box(*(v * s for v in o.box))) for o in ann.objects)
        write_voc(dataclasses.replace(ann, width=small.shape[1], height=small.shape[0], objects=objects),
                  args.dest / "Annotations" / xml.name)
    if (args.source / "ImageSets").is_dir():
        shutil.copytree(args.source / "ImageSets", args.dest / "ImageSets")
    print(f"{args.dest}: {len(list((args.dest / 'Annotations').glob('*.xml')))} images, longest side {args.side} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
