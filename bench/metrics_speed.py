"""Time detect.scoring.metrics on a large random problem: VOC AP (ours, vectorised numpy) against
pycocotools' COCO pass on the same data, side by side.

    python bench/metrics_speed.py                      # 5,000 images x 50 detections
    python bench/metrics_speed.py --images 1000 --no-coco

Not a test: the figures depend on the machine. The problem has ``--classes`` classes,
up to ``--objects`` objects per image (10 % difficult), and exactly ``--detections``
detections per image: jittered copies of the objects (some mislabelled) topped up with
boxes anywhere, scores uniform.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import _repo  # noqa: F401,E402  (makes `detect` importable from a clone)

from detect.common.types import Detections, GroundTruth
from detect.scoring.metrics import coco_evaluate, detection_confusion, voc_evaluate  # noqa: E402


def make_problem(*, images: int, detections: int, classes: int, objects: int, seed: int):
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for i in range(images):
        name = f"img_{i:05d}.jpg"
        n = int(rng.integers(1, objects + 1))
        xy = rng.uniform(0, 1000, size=(n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(8, 200, size=(n, 2))])
        labels = rng.integers(1, classes + 1, size=n)
        truths.append(GroundTruth(name, boxes, labels, rng.random(n) < 0.1))
        src = rng.integers(0, n, size=detections)
        on_object = rng.random(detections) < 0.6
        size = np.tile(boxes[src, 2:] - boxes[src, :2], 2)
        d_boxes = np.where(on_object[:, None], boxes[src] + rng.normal(0, 0.1, (detections, 4)) * size,
                           np.hstack([xy := rng.uniform(0, 1000, (detections, 2)),
                                      xy + rng.uniform(8, 200, (detections, 2))]))
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2])
        d_labels = np.where(on_object & (rng.random(detections) < 0.85), labels[src],
                            rng.integers(1, classes + 1, size=detections))
        dets.append(Detections(name, d_boxes, rng.random(detections), d_labels))
    return truths, dets


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--detections", type=int, default=50, help="detections per image")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--objects", type=int, default=15, help="at most this many objects per image")
    p.add_argument("--repeat", type=int, default=3, help="VOC timings are the best of this many runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-coco", action="store_true", help="skip the (slow) pycocotools pass")
    args = p.parse_args(argv)

    truths, dets = make_problem(images=args.images, detections=args.detections, classes=args.classes,
                                objects=args.objects, seed=args.seed)
    classes = [f"class{i}" for i in range(1, args.classes + 1)]
    n_gt = sum(len(t.labels) for t in truths)
    print(f"problem: {args.images} images, {args.images * args.detections} detections, "
          f"{n_gt} objects, {args.classes} classes")

    t_voc, voc = best_of(lambda: voc_evaluate(truths, dets, classes=classes), args.repeat)
    t_voc07, _ = best_of(lambda: voc_evaluate(truths, dets, classes=classes, use_07_metric=True), args.repeat)
    t_conf, _ = best_of(lambda: detection_confusion(truths, dets, classes=classes, score_threshold=0.5), args.repeat)
    rows = [
        ("VOC AP@0.5, all-point (detect.scoring.metrics)", t_voc, f"mAP {voc.map:.4f}"),
        ("VOC AP@0.5, 11-point (detect.scoring.metrics)", t_voc07, ""),
        ("P/R/F1 + confusion @0.5 (detect.scoring.metrics)", t_conf, ""),
    ]
    if not args.no_coco:
        t0 = time.perf_counter()
        coco = coco_evaluate(truths, dets, classes=classes)
        rows.append(("COCO mAP@[.5:.95] (pycocotools, 1 run)", time.perf_counter() - t0,
                     f"AP {coco.stats['AP']:.4f}  AP50 {coco.stats['AP50']:.4f}"))
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'seconds':>8}  {'x VOC':>7}")
    for name, secs, note in rows:
        print(f"{name:{width}}  {secs:8.3f}  {secs / t_voc:7.1f}  {note}")
    if not args.no_coco:
        print(f"pycocotools / VOC: {rows[-1][1] / t_voc:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
