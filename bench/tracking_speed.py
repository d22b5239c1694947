"""Tracking cost and track splits on a rendered conveyor's ground-truth boxes (no model).

    python bench/tracking_speed.py [--items 40] [--drop 0.2] [--jitter 2]

Feeds the ground-truth boxes of :mod:`detect.demo.conveyor` (a share of them dropped at
random, the rest jittered) to this project's ByteTrack and, when the ``trackers`` package is
importable, to its ByteTrack too; prints ms per frame, track ids per item, and (ours) the
counts at the middle line against the truth. docs/counting.md quotes it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.demo.scene import DEMO_CLASSES
from detect.line.counting import ItemCounter, parse_count_line
from detect.line.tracking import ByteTracker, merge_classes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--drop", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=2.0)
    args = p.parse_args()
    plan = plan_conveyor(args.items, seed=3)
    frames = list(render_conveyor(plan, draw=False))
    rng = np.random.default_rng(0)
    fed = []
    for f, _, boxes in frames:
        kept = [b for b in boxes if rng.random() >= args.drop]
        xy = np.array([b for _, _, b in kept], float).reshape(-1, 4) + rng.normal(0, args.jitter, (len(kept), 4))
        fed.append((f, xy, rng.uniform(0.6, 0.95, len(kept)), [i for i, _, _ in kept],
                    np.array([DEMO_CLASSES.index(c) + 1 for _, c, _ in kept], int)))
    th = np.full(len(DEMO_CLASSES) + 1, 0.5)
    image = np.zeros((240, 320, 3), np.uint8)

    def split(pairs):
        ids: dict[int, set] = {}
        for item, tid in pairs:
            ids.setdefault(item, set()).add(tid)
        return np.mean([len(v) for v in ids.values()]), len(ids)

    tracker = ByteTracker(buffer=25)
    counter = ItemCounter(DEMO_CLASSES, ("Lata_defectuosa", "Botella_defectuosa"), th, line=parse_count_line(None))
    pairs, t_track, t_count = [], 0.0, 0.0
    for f, xy, sc, items, labels in fed:
        t0 = time.perf_counter()
        obs = merge_classes(xy, sc, labels, len(DEMO_CLASSES))
        for o in obs:
            o.high = True
        out = tracker.update(obs, th)
        t1 = time.perf_counter()
        counter.update(out, frame=f, video_time=f / 25, source="bench", image=image, ended=tracker.removed)
        t_count += time.perf_counter() - t1
        t_track += t1 - t0
        for tr in out:
            pairs.append((items[int(np.argmin(np.abs(xy - tr.observation.box).sum(1)))], tr.id))
    n = len(fed)
    truth = {c: sum(p.label == c for p in plan) for c in DEMO_CLASSES}
    print(f"ours: tracking {1000 * t_track / n:.2f} ms/frame, counting {1000 * t_count / n:.2f} ms/frame; "
          f"{split(pairs)[0]:.2f} track ids per item; counts {counter.counts} (truth {truth})")
    try:
        import supervision as sv
        from trackers import ByteTrackTracker
    except ImportError:
        print("trackers: not installed")
        return
    t = ByteTrackTracker(lost_track_buffer=25, frame_rate=25, track_activation_threshold=0.6, high_conf_det_threshold=0.5)
    pairs, dt = [], 0.0
    for f, xy, sc, items, labels in fed:
        d = sv.Detections(xyxy=xy.astype(np.float32), confidence=sc.astype(np.float32), class_id=np.zeros(len(sc), int))
        t0 = time.perf_counter()
        out = t.update(d)
        dt += time.perf_counter() - t0
        for b, tid in zip(out.xyxy, out.tracker_id):
            if tid is not None and tid >= 0:
                pairs.append((items[int(np.argmin(np.abs(xy - b).sum(1)))], int(tid)))
    print(f"trackers: tracking {1000 * dt / n:.2f} ms/frame; {split(pairs)[0]:.2f} track ids per item")


if __name__ == "__main__":
    main()
