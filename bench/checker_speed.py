"""Time the annotation checker on a generated dataset (default: 10,000 XML + JPEG pairs).

    python bench/checker_speed.py [--n 10000] [--size 96x64] [--deep] [--keep DIR]

Writes a VOC devkit (Annotations/, JPEGImages/, ImageSets/Main/{train,val}.txt) of small,
distinct JPEGs with 1-3 boxes each into a temporary folder, then reports two figures:

* ``check_dataset``: discovery plus every check (the anchor fit too), in this process, one
  process;
* ``command``: ``python tools/check_xml.py DATA`` end to end in a fresh process, the
  figure a user waits for (interpreter start included; the files are read by one worker
  per core). Neither imports torch.

Both are given as wall-clock and CPU seconds: on a shared machine the wall clock includes
waiting for other processes, CPU time does not.

The target is 10,000 pairs in under 10 s without ``--deep`` on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _repo  # noqa: F401,E402  (makes `detect` importable from a clone)

from PIL import Image, ImageDraw  # noqa: E402

from detect.checks import check_dataset  # noqa: E402
from detect.data.layout import discover  # noqa: E402
from detect.data.voc import Annotation, Box, VocObject, annotation_to_xml  # noqa: E402

CLASSES = ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")
REPO = Path(__file__).resolve().parents[1]


def generate(root: Path, n: int, width: int, height: int, seed: int = 0) -> None:
    """``n`` distinct image + XML pairs in a VOC devkit under ``root``."""
    rng = random.Random(seed)
    ann_dir, img_dir, sets = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"
    for d in (ann_dir, img_dir, sets):
        d.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        sample = f"img_{i:05d}"
        ids.append(sample)
        im = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(im)
        objects = []
        for _ in range(rng.randint(1, 3)):
            w = rng.randint(width // 4, width // 2)
            h = rng.randint(height // 4, height // 2)
            x = rng.randint(2, width - w - 2)
            y = rng.randint(2, height - h - 2)
            draw.rectangle((x, y, x + w, y + h), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            objects.append(VocObject(rng.choice(CLASSES), Box(x, y, x + w, y + h)))
        im.save(img_dir / f"{sample}.jpg", quality=85)
        ann = Annotation(filename=f"{sample}.jpg", width=width, height=height, objects=tuple(objects), folder="JPEGImages")
        (ann_dir / f"{sample}.xml").write_bytes(annotation_to_xml(ann))
    cut = n * 4 // 5
    (sets / "train.txt").write_text("\n".join(ids[:cut]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[cut:]) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="XML + image pairs (default 10000)")
    p.add_argument("--size", default="96x64", help="image size WxH (default 96x64)")
    p.add_argument("--deep", action="store_true", help="time with --deep (full decode) too")
    p.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size takes WxH, e.g. 96x64, got {args.size!r}")

    with tempfile.TemporaryDirectory(prefix="check-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "data"
        t0 = time.perf_counter()
        generate(root, args.n, width, height)
        print(f"generated {args.n} XML + {width}x{height} JPEG pairs in {time.perf_counter() - t0:.1f} s under {root}")
        print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

        from detect.checks.anchor_fit import anchor_rule  # imported first: this figure is the checking alone

        t0, c0 = time.perf_counter(), time.process_time()
        report = check_dataset(discover(root), classes=CLASSES, anchor_rule=lambda: anchor_rule)
        inner, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"check_dataset (one process): {inner:.2f} s wall, {cpu:.2f} s CPU for {args.n} files "
              f"({inner / args.n * 1e3:.2f} ms/file), {len(report.errors)} errors, {len(report.warnings)} warnings")

        cmd = [sys.executable, str(REPO / "tools" / "check_xml.py"), str(root), "--format", "json"]
        for label, extra in [("command", [])] + ([("command --deep", ["--deep"])] if args.deep else []):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(cmd + extra, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU (all processes) for {args.n} files, "
                  f"exit {done.returncode}  [{' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd + extra))}]")
            if done.returncode not in (0, 1):
                print(done.stderr, file=sys.stderr)
                return 1
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
              "(other work on the machine slows the wall-clock figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
