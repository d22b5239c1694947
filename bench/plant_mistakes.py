"""Copy a dataset with known label mistakes planted in it, to measure ``detect.audit``.

    python bench/plant_mistakes.py .cache/demo-480 planted --split val --seed 0
    python bench/plant_mistakes.py .cache/demo-480 planted-train --split train --copy-rest

Seeded: the same source, split and seed give the same mistakes. Of the copied boxes it
removes ``--remove`` (10 %; a missing box), relabels ``--swap`` (5 %; intact <-> defective
where the classes come in such pairs, ``X`` / ``X_defectuosa`` or ``X_defective``, else another
class at random) and shifts or grows ``--shift`` (5 %; by 30-60 % of the box's size), at
most one mistake per box. The copy is LabelImg's layout (``x.xml`` beside ``x.jpg``, same
sample ids); the truth goes to ``DST/planted.json``, read by ``bench/audit_score.py``. The
source is only read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.data.layout import discover, resolve_splits
from detect.data.records import load_records
from detect.data.voc import Box, write_voc


def partner(name: str, classes: list[str], rng: np.random.Generator) -> str:
    for suffix in ("_defectuosa", "_defective"):
        if name.endswith(suffix) and name[: -len(suffix)] in classes:
            return name[: -len(suffix)]
        if name + suffix in classes:
            return name + suffix
    others = [c for c in classes if c != name]
    return str(rng.choice(others))


def moved(box: Box, width: int, height: int, rng: np.random.Generator) -> tuple[str, Box]:
    w, h = box.xmax - box.xmin, box.ymax - box.ymin
    f = rng.uniform(0.3, 0.6)
    if rng.random() < 0.5:  # shift along one or both axes
        dx, dy = rng.choice([-1, 1]) * f * w * rng.integers(0, 2), rng.choice([-1, 1]) * f * h
        if rng.random() < 0.5:
            dx, dy = rng.choice([-1, 1]) * f * w, dy * rng.integers(0, 2)
        how, new = "shift", (box.xmin + dx, box.ymin + dy, box.xmax + dx, box.ymax + dy)
    else:  # grow about the centre
        cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
        how, new = "grow", (cx - w * (1 + f) / 2, cy - h * (1 + f) / 2, cx + w * (1 + f) / 2, cy + h * (1 + f) / 2)
    x0, y0, x1, y1 = (round(v) for v in new)
    x0, y0, x1, y1 = max(1, x0), max(1, y0), min(width, x1), min(height, y1)
    return f"{how} {f:.0%}", Box(float(x0), float(y0), float(x1), float(y1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("dest", type=Path, help="new folder (must not exist)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all")
    p.add_argument("--val-fraction", type=float, default=0.2, help="as the model was trained with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--remove", type=float, default=0.10)
    p.add_argument("--swap", type=float, default=0.05)
    p.add_argument("--shift", type=float, default=0.05)
    p.add_argument("--copy-rest", action="store_true",
                   help="also copy the images outside --split, unchanged (same sample ids, so a training run on the "
                        "copy splits it as the source: mistakes in the train split, a clean val split)")
    args = p.parse_args(argv)
    if args.dest.exists():
        print(f"error: {args.dest} exists; give a new folder", file=sys.stderr)
        return 2
    files = discover(args.source)
    ids = None
    if args.split != "all":
        ids = resolve_splits(files, val_fraction=args.val_fraction)[0][args.split]
    records = load_records(files, None if args.copy_rest else ids)
    classes = sorted({o.name for r in records for o in r.annotation.objects})
    rng = np.random.default_rng(args.seed)
    planted_ids = None if ids is None else set(ids)
    boxes = [(i, j) for i, r in enumerate(records) for j in range(len(r.annotation.objects))
             if planted_ids is None or r.sample_id in planted_ids]
    order = rng.permutation(len(boxes))
    n_remove, n_swap, n_shift = (round(len(boxes) * f) for f in (args.remove, args.swap, args.shift))
    plan = {}
    for k, idx in enumerate(order[: n_remove + n_swap + n_shift]):
        plan[boxes[idx]] = "missing" if k < n_remove else "wrong_class" if k < n_remove + n_swap else "loose"
    args.dest.mkdir(parents=True)
    mistakes = []
    for i, r in enumerate(records):
        ann = r.annotation
        objects = []
        image = args.dest / (r.sample_id.replace("/", "_") + r.image.suffix.lower())
        xml = image.with_suffix(".xml")
        for j, o in enumerate(ann.objects):
            kind = plan.get((i, j))
            entry = {"kind": kind, "xml": xml.name, "class": o.name, "box": list(o.box)}
            if kind is None:
                objects.append(o)
                continue
            if kind == "missing":
                pass
            elif kind == "wrong_class":
                new = partner(o.name, classes, rng)
                objects.append(replace(o, name=new))
                entry.update({"class": new, "was": o.name})
            else:
                how, box = moved(o.box, ann.width, ann.height, rng)
                objects.append(replace(o, box=box))
                entry.update({"box": list(box), "was": list(o.box), "how": how})
            mistakes.append(entry)
        shutil.copyfile(r.image, image)
        write_voc(replace(ann, objects=tuple(objects), filename=image.name, folder=args.dest.name,
                          path=str(image.resolve())), xml)
    truth = {"source": str(args.source), "split": args.split, "seed": args.seed,
             "images": len(records) if ids is None else len(ids), "copied": len(records),
             "boxes": len(boxes), "classes": classes, "mistakes": mistakes}
    (args.dest / "planted.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    counts = {k: sum(m["kind"] == k for m in mistakes) for k in ("missing", "wrong_class", "loose")}
    print(f"{len(records)} images, {len(boxes)} boxes copied to {args.dest}; planted {counts}; truth in "
          f"{args.dest / 'planted.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
