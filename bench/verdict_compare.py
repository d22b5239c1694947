"""Per-item verdicts side by side on rendered belts: the detector's vote against the verdict classifier.

    python bench/verdict_compare.py --weights runs/demo/best.pt [--verdict runs/demo/verdict.pt]
        [--items 60] [--speeds 20 120] [--size 640 480] [--first 1 2 3 5] [--max-false-reject 0.02]

Belts come from :mod:`detect.demo.conveyor` at the camera's size (``--size``, default 640x480),
with seeds the demo dataset never used (``--seed``: the test belt; ``--seed + 1``: a
calibration belt that only chooses thresholds). Each belt is run at each ``--speeds``
(pixels per frame; 20 and 120 at 640 px give ~30 and ~6 frames per item in view). Every item is
followed on its **ground-truth** boxes, so the verdicts are compared on the same frames and
items, apart from tracking:

* (a) ``detector vote``: the detector runs on each frame (shrunk to its input size); its boxes
  merged across classes (:func:`detect.line.tracking.merge_classes`) are matched to the item's
  true box (IoU >= 0.5) and fed, as the item's track, to :class:`~detect.line.counting.ItemCounter`
  with the line's defaults (``--conf`` 0.3, ``--defect-frames`` 2, ``--defect-share``); an item
  the detector never finds is intact for it;
* (b) ``classifier``: the verdict classifier on the item's crop from the full-size frame, each
  frame's defect probability combined over the item's frames (mean log-odds,
  :mod:`detect.line.verdict`), at the threshold that flags <= ``--max-false-reject`` of the
  **calibration** belt's intact items (and, for reference, at the threshold stored in verdict.pt);
* (c) the same with only the first k frames in which the item is whole in view (what a gate
  close to the camera leaves time for).

Prints per-item defect recall and intact items flagged for each, the ROC area of (b), and the
cost: detector ms per frame, classifier ms per crop. Without ``--verdict`` a classifier is trained
first on the detector's training split (``--verdict-epochs``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.line.counting import DEFECT_SHARE, ItemCounter
from detect.line.tracking import merge_classes
from detect.scoring.metrics import box_iou
from detect.line.verdict import combine, threshold_for_false_reject


@dataclass
class _Track:  # what ItemCounter reads of a track
    id: int
    observation: object
    box: np.ndarray


def belt(items: int, seed: int, size: tuple[int, int], speed: float):
    """``(plan, frames)``: frames as ``(RGB image, [(item id, label, box)])``."""
    plan = plan_conveyor(items, seed=seed, size=size, speed=speed, spacing=0.4 * size[0])
    frames = [(img[:, :, ::-1].copy(), boxes) for _, img, boxes in render_conveyor(plan, size=size, seed=seed)]
    return plan, frames


def classify(verdict, frames, size):
    """``{item id: [(whole in view, defect probability), ...]}`` in frame order, and seconds per crop."""
    out: dict[int, list[tuple[bool, float]]] = {}
    t, n = 0.0, 0
    for image, boxes in frames:
        if not boxes:
            continue
        b = np.array([bx for _, _, bx in boxes])
        t0 = time.perf_counter()
        p = verdict.defect_probability(verdict.probabilities(image, b))
        t += time.perf_counter() - t0
        n += len(b)
        for (iid, _, bx), pi in zip(boxes, p):
            whole = bx[0] > 1 and bx[2] < size[0] - 1
            out.setdefault(iid, []).append((whole, float(pi)))
    return out, t / max(1, n)


def vote(detector, frames, classes, defect_classes):
    """``{item id: (defect flag, defect_score)}`` by the detector's vote, items seen in >= 1 frame, seconds per frame."""
    counter = ItemCounter(classes, defect_classes, np.array([0.0] + [0.3] * len(classes)), line=None, min_frames=1,
                          defect_share=DEFECT_SHARE)
    flags: dict[int, tuple[bool, float]] = {}
    counter.on_item = lambda item, crop: flags.__setitem__(item.track_id, (item.defect, item.defect_score))
    alive: dict[int, _Track] = {}
    found: set[int] = set()
    t = 0.0
    for f, (image, boxes) in enumerate(frames):
        t0 = time.perf_counter()
        d = detector.detect([image], [str(f)])[0]
        t += time.perf_counter() - t0
        keep = d.scores >= 0.1
        obs = merge_classes(d.boxes[keep], d.scores[keep], d.labels[keep], len(classes))
        ids = [iid for iid, _, _ in boxes]
        tracks = []
        if obs and boxes:
            iou = box_iou(np.array([bx for _, _, bx in boxes]), np.array([o.box for o in obs]))
            for i, iid in enumerate(ids):
                j = int(iou[i].argmax())
                if iou[i, j] >= 0.5:
                    tracks.append(_Track(iid, obs[j], obs[j].box))
                    found.add(iid)
        ended = [alive.pop(k) for k in list(alive) if k not in ids]
        for tr in tracks:
            alive[tr.id] = tr
        counter.update(tracks, frame=f, video_time=f / 30, source="belt", ended=ended)
    counter.update([], frame=len(frames), video_time=len(frames) / 30, source="belt", ended=list(alive.values()))
    return flags, found, t / max(1, len(frames))


def item_probability(per_frame, first: int | None) -> float:
    """All frames (``first`` None), or the first ``first`` frames in which the item is whole in view."""
    if first is None:
        return combine([p for _, p in per_frame])
    whole = [p for w, p in per_frame if w] or [p for _, p in per_frame]
    return combine(whole[:first])


def roc_auc(defect: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[defect], score[~defect]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def rates(defect: np.ndarray, flagged: np.ndarray) -> str:
    return (f"{int(flagged[defect].sum())}/{int(defect.sum())} = {flagged[defect].mean():.2f}",
            f"{int(flagged[~defect].sum())}/{int((~defect).sum())} = {100 * flagged[~defect].mean():.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--verdict", nargs="+", default=None,
                    help="verdict.pt file(s), each measured (default: beside --weights, else trained here)")
    ap.add_argument("--verdict-epochs", type=int, default=15)
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--speeds", type=float, nargs="+", default=[20.0, 120.0])
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480])
    ap.add_argument("--first", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--max-false-reject", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from detect.inference.loader import load_detector
    from detect.inference.predictor import default_defect_classes
    from detect.model.verdict import load_verdict

    if args.threads:
        torch.set_num_threads(args.threads)
    detector = load_detector(args.weights, threads=args.threads)
    classes = list(detector.classes)
    defect_classes = list(default_defect_classes(classes))
    paths = [Path(v) for v in args.verdict] if args.verdict else [Path(args.weights).with_name("verdict.pt")]
    verdicts = {}
    if all(p.is_file() for p in paths):
        verdicts = {p.as_posix(): load_verdict(p, classes) for p in paths}
    else:
        from detect.data.layout import discover, resolve_splits
        from detect.data.records import load_records
        from detect.training.verdict import train_verdict

        root = Path(detector.meta["data"]["root"])
        files = discover(root)
        splits, _ = resolve_splits(files)
        verdicts["trained here"] = train_verdict(load_records(files, splits["train"]), classes,
                                                 val=load_records(files, splits["val"]), epochs=args.verdict_epochs,
                                                 echo=print)
    size = tuple(args.size)
    report: dict = {"weights": str(args.weights), "size": size, "items": args.items, "speeds": {}}
    print(f"belts {size[0]}x{size[1]}, {args.items} items, test seed {args.seed}, calibration seed {args.seed + 1}; "
          f"detector input {detector.info.get('input_size')}; classifiers: " + "; ".join(
              f"{k} ({v.arch} at {v.size} px, {v.info.get('train_crops')} training crops)" for k, v in verdicts.items()))
    for speed in args.speeds:
        plan_cal, frames_cal = belt(args.items, args.seed + 1, size, speed)
        plan, frames = belt(args.items, args.seed, size, speed)
        label = {it.id: it.defective for it in plan}
        label_cal = {it.id: it.defective for it in plan_cal}
        flags, found, s_frame = vote(detector, frames, classes, defect_classes)
        ids = [it.id for it in plan]
        defect = np.array([label[i] for i in ids])
        rows = []
        v = np.array([flags.get(i, (False, 0.0))[0] for i in ids])
        vote_score = np.array([flags.get(i, (False, -1.0))[1] for i in ids])
        r, fl = rates(defect, v)
        rows.append(("(a) detector vote", "-", r, fl, f"found in >=1 frame: {len(found & set(ids))}/{len(ids)}; "
                     f"ROC area of its defect_score {roc_auc(defect, vote_score):.3f}"))
        vote_fr = float(v[~defect].mean()) if (~defect).any() else 0.0
        costs = {}
        for name_v, verdict in verdicts.items():
            per_item, s_crop = classify(verdict, frames, size)
            per_item_cal, _ = classify(verdict, frames_cal, size)
            costs[name_v] = round(1000 * s_crop, 2)
            intact_cal = [i for i in sorted(per_item_cal) if not label_cal[i]]
            tag = f" [{Path(name_v).stem}]" if len(verdicts) > 1 else ""
            for first in [None] + list(args.first):
                p = np.array([item_probability(per_item.get(i, []), first) for i in ids])
                p_cal = [item_probability(per_item_cal[i], first) for i in intact_cal]
                t = threshold_for_false_reject(p_cal, args.max_false_reject)
                name = "(b) classifier, all frames" if first is None else f"(c) classifier, first {first} whole"
                r, fl = rates(defect, p >= t)
                rows.append((name + tag, f"{t:.3f}", r, fl, f"ROC area {roc_auc(defect, p):.3f}"))
                if first is None:
                    r2, fl2 = rates(defect, p >= verdict.threshold)
                    rows.append(("(b) all frames, stored threshold" + tag, f"{verdict.threshold:.3f}", r2, fl2, ""))
                    if 0 < vote_fr <= 0.5:  # side by side at the vote's own false-reject rate
                        t3 = threshold_for_false_reject(p_cal, vote_fr)
                        r3, fl3 = rates(defect, p >= t3)
                        rows.append((f"(b) all frames, at the vote's {100 * vote_fr:.0f} % rate" + tag, f"{t3:.3f}",
                                     r3, fl3, ""))
        in_view = np.mean([sum(1 for _, b in frames if any(i == iid for i, _, _ in b)) for iid in ids])
        print(f"\nspeed {speed:g} px/frame: {len(ids)} items ({int(defect.sum())} defective), {in_view:.1f} frames "
              f"per item in view; detector {1000 * s_frame:.0f} ms/frame; classifier ms/crop: {costs}")
        print(f"{'verdict':48s} {'threshold':>9s}  {'defect recall':>16s}  {'intact flagged':>16s}")
        for name, t, r, fl, note in rows:
            print(f"{name:48s} {t:>9s}  {r:>16s}  {fl:>16s}  {note}")
        report["speeds"][f"{speed:g}"] = {"frames_per_item": round(float(in_view), 1), "rows": rows,
                                          "detector_ms_per_frame": round(1000 * s_frame, 1),
                                          "classifier_ms_per_crop": costs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
