"""Count error and per-item defect recall of ``--track`` on a rendered conveyor, with a model.

    python bench/counting_accuracy.py --weights weights/mobilenet/best.pt [--items 20] [--out counting-eval]
    python bench/counting_accuracy.py --weights best.onnx --defect-share 0 0.2 0.3 0.5   # the same detections, each rule

Writes the conveyor (:mod:`detect.demo.conveyor`, seed 0) unless it is there, runs
``detect.line.session.track`` on it (what ``python -m detect.predict --track`` runs: default line and
belt, ``--conf``, ``--defect-frames``) and compares with the ground truth:

* count error per class (counted - passed);
* per-item defect recall: defective items whose event names their defect class / defective
  items passed (events are matched to items by IoU with the item's true box at the event's
  frame); also intact items flagged defective;
* per-frame recall, for comparison: boxes found by a detection of their class at ``--conf``
  (IoU >= 0.5) / boxes, over every frame, from the same detector outputs before tracking,
  for every box and for the defective ones;
* the cost per frame: model, and tracking with counting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.demo.conveyor import plan_conveyor, render_conveyor, write_conveyor
from detect.line.counting import DEFECT_SHARE, ItemCounter, parse_count_line
from detect.line.session import track
from detect.inference.loader import load_detector
from detect.inference.predictor import Predictor
from detect.inference.sources import open_source
from detect.scoring.metrics import box_iou


class Recording:
    """The real detector, passed through on the first pass and replayed on the next ones (the
    same detections for every ``--defect-share``); keeps its latest raw output for the
    per-frame figures."""

    def __init__(self, detector):
        self.detector, self.classes, self.info, self.batch_size = detector, detector.classes, detector.info, 1
        self.outputs: list = []
        self.calls = 0
        self.last = None

    def detect(self, images, keys):
        if self.calls == len(self.outputs):
            self.outputs.append(self.detector.detect(images, keys))
        self.last = self.outputs[self.calls]
        self.calls += 1
        return self.last


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--out", default="counting-eval")
    p.add_argument("--conf", default="0.5")
    p.add_argument("--defect-frames", type=int, default=2)
    p.add_argument("--defect-share", type=float, nargs="+", default=[DEFECT_SHARE],
                   help="one or more shares: the counts and recalls of each, from the same detections")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    belt = Path(args.out) / "belt"
    if not (belt / "conveyor.json").exists():
        write_conveyor(belt, args.items, seed=0)
    truth = json.loads((belt / "conveyor.json").read_text())
    size = tuple(truth["size"])
    plan = plan_conveyor(len(truth["items"]), seed=truth["seed"], size=size, speed=truth["speed_px_per_frame"],
                         spacing=truth["spacing_px"])
    gt = {f: boxes for f, _, boxes in render_conveyor(plan, size=size, draw=False)}

    detector = Recording(load_detector(args.weights, threads=args.threads))
    predictor = Predictor(detector, conf=[args.conf])
    for n, share in enumerate(args.defect_share):
        detector.calls = 0
        events: list[dict] = []
        counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.conf.vector(predictor.classes),
                              line=parse_count_line(None), defect_frames=args.defect_frames, defect_share=share,
                              on_item=lambda item, crop: events.append(item.event()))
        hit = total = found = boxes_all = frames = 0
        model_s = track_s = 0.0
        for result in track(predictor, open_source(str(belt / "conveyor.mp4")), counter):
            frames += 1
            model_s += result.infer_seconds
            track_s += result.track_seconds
            if n:
                continue
            # per frame: the plain predictor's detections at --conf, for every box and for the defective ones
            plain = predictor.postprocess(detector.last[0])
            names = [predictor.classes[int(i) - 1] for i in plain.labels]
            truth_boxes = gt.get(result.frame.index, [])
            if truth_boxes:
                iou = box_iou(np.array([b for _, _, b in truth_boxes]), plain.boxes)
                for i, (_, c, _) in enumerate(truth_boxes):
                    right = any(iou[i, j] >= 0.5 and names[j] == c for j in range(len(names)))
                    boxes_all += 1
                    found += right
                    if "defect" in c:
                        total += 1
                        hit += right
        summary = counter.summary()

        print(f"{args.weights}: conveyor of {len(plan)} items, {frames} frames, conf {args.conf}, "
              f"defect-frames {args.defect_frames}, defect-share {share:g}")
        print("class               passed  counted  error")
        for c, k in truth["counts"].items():
            print(f"{c:20s} {k:6d} {summary['per_class'][c]:8d} {summary['per_class'][c] - k:+6d}")
        matched: dict[int, dict] = {}
        for e in events:
            boxes = gt.get(e["frame"], [])
            if boxes:
                iou = box_iou(np.array([e["box"]]), np.array([b for _, _, b in boxes]))[0]
                k = int(np.argmax(iou))
                if iou[k] >= 0.3:
                    matched.setdefault(boxes[k][0], e)
        defective = [i for i in truth["items"] if i["defective"]]
        right = sum(1 for i in defective if i["id"] in matched and matched[i["id"]]["class"] == i["class"])
        false_flags = sum(1 for i in truth["items"] if not i["defective"] and i["id"] in matched
                          and matched[i["id"]]["defect"])
        print(f"items: {len(plan)} passed, {summary['items']} counted, {len(matched)} of them matched to a passing item")
        print(f"per-item defect recall: {right}/{len(defective)} = {right / max(1, len(defective)):.3f}; "
              f"intact items flagged defective: {false_flags}/{len(plan) - len(defective)}")
        if n == 0:
            print(f"per-frame recall, every box: {found}/{boxes_all} = {found / max(1, boxes_all):.3f}; defective "
                  f"boxes: {hit}/{total} = {hit / max(1, total):.3f} (found in their class at conf {args.conf}, "
                  "IoU >= 0.5)")
            print(f"cost per frame: model {1000 * model_s / frames:.1f} ms, tracking and counting "
                  f"{1000 * track_s / frames:.2f} ms")
        print()


if __name__ == "__main__":
    main()
