"""Tracking at line speed: items counted and ids per item, IoU-only ByteTrack against ByteTrack
moved by the belt's motion, side by side on the same boxes, at several belt speeds.

    python bench/belt_tracking.py [--items 40] [--speeds 9 48 64] [--drop 0.1] [--jitter 2]
    python bench/belt_tracking.py --weights weights/mobilenet/best.onnx     # a model's detections

Renders the ground-truth boxes of :mod:`detect.demo.conveyor` (320x240, seed 0) at each
speed (pixels a frame), drops a share of them at random and jitters the rest (the same
boxes for both trackers), and runs each tracker with the counter (line across the middle),
as ``detect.predict --track`` does. Each run's events are scored by
:func:`detect.scoring.items.score_items` against the render's truth; also the distinct
track ids each true item carried over all its frames (splits at entry and exit included)
and the tracking cost per frame (ratio to the IoU-only tracker: the machine may be shared).
With ``--weights`` the frames are drawn and the model's detections replace the true boxes
(each frame detected once, the same detections for both trackers).
docs/counting.md quotes it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.data.mot import MotTrack, MotTruth
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.demo.scene import DEMO_CLASSES
from detect.line.belt import BeltMotion
from detect.line.counting import ItemCounter, parse_count_line
from detect.line.tracking import ByteTracker, merge_classes
from detect.scoring.items import score_items
from detect.scoring.metrics import box_iou

DEFECTS = ("Lata_defectuosa", "Botella_defectuosa")
CONF = 0.3  # detect.predict --track's default (TRACK_CONF); the true boxes score 0.6-0.95


def feed(plan, rng, drop, jitter, detector=None):
    """Per frame: (frame, observations, true boxes (K, 4), true item ids); and the truth.

    Without a detector the observations are the true boxes, ``drop`` of them dropped and the
    rest jittered (all high); with one, what it finds in the rendered frame, as
    ``detect.predict --track`` feeds the tracker (``--conf`` 0.3, low detections to 0.1)."""
    frames, rows = [], {}
    k = len(DEMO_CLASSES)
    for f, image, boxes in render_conveyor(plan, draw=detector is not None):
        for i, c, b in boxes:
            rows.setdefault(i, (c, [], []))[1].append(f)
            rows[i][2].append(b)
        if detector is None:
            kept = [b for b in boxes if rng.random() >= drop]
            xy = np.array([b for _, _, b in kept], float).reshape(-1, 4) + rng.normal(0, jitter, (len(kept), 4))
            obs = merge_classes(xy, rng.uniform(0.6, 0.95, len(kept)),
                                np.array([DEMO_CLASSES.index(c) + 1 for _, c, _ in kept], int), k)
        else:
            [d] = detector.detect([image[:, :, ::-1].copy()], [str(f)])
            low = d.scores >= 0.1
            obs = merge_classes(d.boxes[low], d.scores[low], d.labels[low], k)
        for o in obs:
            o.high = bool((o.class_scores[1:] >= CONF).any())
        frames.append((f, obs, np.array([b for _, _, b in boxes], float).reshape(-1, 4), [i for i, _, _ in boxes]))
    truth = MotTruth([MotTrack(i, c, np.array(fs), np.array(bs)) for i, (c, fs, bs) in sorted(rows.items())],
                     list(DEMO_CLASSES), fps=25.0)
    return frames, truth


def run(frames, motion):
    th = np.full(len(DEMO_CLASSES) + 1, CONF)
    tracker = ByteTracker(buffer=25, motion=motion)
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, th, line=parse_count_line(None))
    image = np.zeros((240, 320, 3), np.uint8)
    ids: dict[int, set[int]] = {}
    items, seconds, f = [], 0.0, 0
    for f, obs, true_boxes, true_ids in frames:
        t0 = time.perf_counter()
        tracks = tracker.update(obs, th)
        items += counter.update(tracks, frame=f, video_time=f / 25, source="belt", image=image, ended=tracker.removed)
        seconds += time.perf_counter() - t0
        if tracks and len(true_ids):
            iou = box_iou(np.array([t.observation.box for t in tracks]), true_boxes)
            for t, row in zip(tracks, iou):
                if row.max() >= 0.3:
                    ids.setdefault(true_ids[int(row.argmax())], set()).add(t.id)
    items += counter.finish(tracker.finish(), frame=f, video_time=f / 25, source="belt")
    return [i.event() for i in items], ids, 1000 * seconds / max(1, len(frames))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--speeds", type=float, nargs="+", default=[9.0, 48.0, 64.0])
    p.add_argument("--drop", type=float, default=0.1)
    p.add_argument("--jitter", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", help="a .pt or .onnx model: its detections instead of the true boxes")
    args = p.parse_args()
    detector = None
    if args.weights:
        from detect.inference.loader import load_detector

        detector = load_detector(args.weights)
    header = ["px/frame", "frames in view", "tracker", "counted / items", "missed", "phantom",
              "events per item", "ids per item (all frames)", "class right", "defect recall / false reject",
              "latency, frames (median)", "ms/frame (ratio)"]
    rows = []
    for speed in args.speeds:
        plan = plan_conveyor(args.items, seed=args.seed, speed=speed)
        frames, truth = feed(plan, np.random.default_rng(args.seed), args.drop, args.jitter, detector)
        in_view = np.mean([len(t.frames) for t in truth.tracks])
        base_ms = None
        for name, motion in (("IoU only", None), ("belt motion", BeltMotion("left-right"))):
            events, ids, ms = run(frames, motion)
            s = score_items(truth, events)
            all_ids = [len(ids.get(t.id, ())) for t in truth.tracks]
            base_ms = base_ms or ms
            rows.append([f"{speed:g}", f"{in_view:.1f}", name, f"{s.events} / {s.items}", str(len(s.missed)),
                         str(s.phantoms), "-" if s.ids_per_item is None else f"{s.ids_per_item:.2f}",
                         f"{np.mean([n for n in all_ids if n] or [0]):.2f}", f"{s.class_right} / {s.counted}",
                         f"{s.flag_recall:.2f} / {s.flag_false_reject:.2f}",
                         f"{s.latency_frames['median']:g}" if s.latency_frames else "-", f"{ms:.2f} ({ms / base_ms:.2f})"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    given = (f"the detections of {args.weights}" if args.weights else
             f"the true boxes, {100 * args.drop:g} % dropped, jitter {args.jitter:g} px")
    print(f"\n{args.items} items, seed {args.seed}, {given}; "
          "events per item: events matched to a counted item (1: counted once); ids per item: distinct track ids "
          "a true item carried in any frame")


if __name__ == "__main__":
    main()
