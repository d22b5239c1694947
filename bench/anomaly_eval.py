"""Per-item AUROC and recall at 1 % / 2 % false rejects of the anomaly score, on defect kinds
seen and unseen in training.

    python -m detect.make_demo_data demo-holdout --images 600 --val-fraction 0.4 --holdout-defect torn_label
    python bench/anomaly_eval.py demo-holdout [--weights best.pt] [--crop 96] [--bank-size 4000]

Items are the ground-truth boxes (no detector in the loop): the bank of each base class is
built from the intact boxes of the train split, the val split's boxes are scored. A val defect
is *unseen* when one of its kinds (``defects.json``) is the held-out kind, else *seen*. The
false-reject thresholds are the 99th / 98th percentile of the val intact items' scores of
the same base class (so they are fitted on the items they are measured on: optimistic for
small val sets).

Feature sources: ``random`` (the MobileNetV3 backbone at its random initialisation, no
trained weights; its batch-norm statistics measured on the intact training crops, else the
untrained net's activations fade to ~0 by the mid levels) and, with ``--weights``, ``detector`` (that checkpoint's trained backbone);
with ``--weights`` the detector's own defect probability on the same boxes (its box head on
the ground-truth boxes, ``p(defect) / (p(defect) + p(intact))``) and the two combined (an
item is flagged by either; each score mapped to its rank among the val intact items first)
are measured too; with ``--verdict``, so is the item classifier's defect probability (on each
box's crop from its image), alone and combined with the anomaly score. Prints one table row per (source, base class, defect group), and the cost:
milliseconds per item for the features and the numpy scorer, and the bank's memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.data.images import read_image
from detect.data.voc import parse_voc
from detect.model.patchbank import base_class, is_defect_class


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half (the Mann-Whitney U form)."""
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def recall_at(neg: np.ndarray, pos: np.ndarray, frr: float) -> float:
    """Share of ``pos`` above the threshold that rejects ``frr`` of ``neg``."""
    if len(pos) == 0:
        return float("nan")
    thr = np.quantile(neg, 1.0 - frr, method="higher")
    return float((pos > thr).mean())


def load_items(root: Path, split: str, hold: str | None, kinds: dict):
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    items = []
    for sample_id in ids:
        ann = parse_voc(root / "Annotations" / f"{sample_id}.xml")
        image = read_image(root / "JPEGImages" / ann.filename)
        for k, obj in enumerate(ann.objects):
            b = obj.box
            x0, y0, x1, y1 = int(b.xmin), int(b.ymin), int(np.ceil(b.xmax)), int(np.ceil(b.ymax))
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            obj_kinds = kinds.get(sample_id, [[]] * len(ann.objects))[k]
            group = "intact" if not obj_kinds else ("unseen" if hold in obj_kinds else "seen")
            items.append({"id": sample_id, "name": obj.name, "box": (x0, y0, x1, y1), "group": group,
                          "crop": image[y0:y1, x0:x1], "image": image})
    return items


def detector_defect_prob(model, classes, items) -> np.ndarray:
    """The detector's box head on each ground-truth box: p(defect) / (p(defect) + p(intact))."""
    import torch

    out = np.empty(len(items))
    by_image: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_image.setdefault(it["id"], []).append(i)
    with torch.no_grad():
        for idxs in by_image.values():
            img = torch.from_numpy(items[idxs[0]]["image"]).permute(2, 0, 1).float() / 255.0
            boxes = torch.tensor([items[i]["box"] for i in idxs], dtype=torch.float32)
            images, targets = model.transform([img], [{"boxes": boxes, "labels": torch.ones(len(idxs), dtype=torch.int64)}])
            feats = model.backbone(images.tensors)
            pooled = model.roi_heads.box_roi_pool(feats, [targets[0]["boxes"]], images.image_sizes)
            logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
            prob = logits.softmax(-1).numpy()
            for row, i in zip(prob, idxs):
                base = base_class(items[i]["name"], classes)
                defect = [c for c in classes if is_defect_class(c) and base_class(c, classes) == base]
                p_def = sum(row[classes.index(c) + 1] for c in defect)
                p_ok = row[classes.index(base) + 1]
                out[i] = p_def / max(p_def + p_ok, 1e-12)
    return out


def verdict_defect_prob(path: Path, classes, items) -> np.ndarray:
    """The item classifier on each ground-truth box, cut from its image as the line cuts it."""
    from detect.model.verdict import load_verdict

    verdict = load_verdict(path, classes)
    return np.array([float(verdict.defect_probability(verdict.probabilities(it["image"], np.array([it["box"]])))[0])
                     for it in items])


def calibrate_bn(model, crops, crop: int) -> None:
    """Batch-norm running statistics of an untrained backbone measured on ``crops`` (a plain average)."""
    import torch

    from detect.model.anomaly import PatchFeatures

    ex = PatchFeatures(model, (crop, crop))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.backbone.body.train()
    with torch.no_grad():
        for i in range(0, min(len(crops), 256), 32):
            model.backbone.body(ex.prepare(crops[i:i + 32]))
    model.eval()


def rank_among(neg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's share of ``neg`` below it (the intact items' empirical CDF)."""
    s = np.sort(neg)
    return np.searchsorted(s, values, side="left") / max(len(s), 1)


def rows_for(source: str, scores: np.ndarray, val: list, out: list) -> None:
    for base in sorted({base_class(it["name"], ["Lata", "Botella"]) for it in val}):
        mask = np.array([base_class(it["name"], ["Lata", "Botella"]) == base for it in val])
        groups = np.array([it["group"] for it in val])
        neg = scores[mask & (groups == "intact")]
        for group in ("seen", "unseen"):
            pos = scores[mask & (groups == group)]
            if len(pos) == 0:
                continue
            out.append((source, base, group, len(neg), len(pos), auroc(neg, pos), recall_at(neg, pos, 0.01),
                        recall_at(neg, pos, 0.02)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a demo devkit made with --holdout-defect (defects.json)")
    p.add_argument("--weights", type=Path, help="a detector checkpoint: its backbone, and its defect probability")
    p.add_argument("--crop", type=int, default=96, help="crops resized to CROP x CROP (default 96)")
    p.add_argument("--bank-size", type=int, default=2000, help="patches kept per class (default 2000)")
    p.add_argument("--sources", default="random,detector", help="feature sources to measure (default: both)")
    p.add_argument("--verdict", type=Path, help="the item classifier (verdict.pt) trained with the detector: its "
                   "defect probability on each item's crop, alone and combined with the anomaly score")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    import torch

    from detect.model.anomaly import PatchFeatures, build_bank
    from detect.model.build import build_model, model_from_checkpoint

    torch.set_num_threads(1)
    marker = json.loads((args.data / ".complete").read_text())
    hold = marker.get("holdout_defect")
    kinds = json.loads((args.data / "defects.json").read_text()) if (args.data / "defects.json").exists() else {}
    train = load_items(args.data, "train", hold, kinds)
    val = load_items(args.data, "val", hold, kinds)
    classes = list(marker.get("classes", ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]))
    print(f"{args.data.name}: held-out kind {hold}; train items {len(train)}, val items {len(val)} "
          f"(val: {sum(i['group'] == 'intact' for i in val)} intact, {sum(i['group'] == 'seen' for i in val)} seen "
          f"defects, {sum(i['group'] == 'unseen' for i in val)} unseen)")

    sources = []
    torch.manual_seed(0)
    random_net = build_model(backbone="mobilenet", num_classes=len(classes) + 1, input_size=256)
    calibrate_bn(random_net, [it["crop"] for it in train if not is_defect_class(it["name"])], args.crop)
    sources.append(("random", random_net))
    model = None
    if args.weights:
        model, ckpt = model_from_checkpoint(args.weights)
        classes = list(ckpt["classes"])
        sources.append(("detector", model))

    rows: list[tuple] = []
    costs = []
    for name, net in [s for s in sources if s[0] in args.sources.split(",")]:
        ex = PatchFeatures(net, (args.crop, args.crop))
        intact: dict[str, list] = {}
        for it in train:
            if not is_defect_class(it["name"]):
                intact.setdefault(base_class(it["name"], classes), []).append(it["crop"])
        t0 = time.perf_counter()
        bank = build_bank(ex, intact, bank_size=args.bank_size)
        t_bank = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = [ex([it["crop"]]).numpy()[0] for it in val]
        t_feat = (time.perf_counter() - t0) / len(val)
        t0 = time.perf_counter()
        scores = np.array([bank.score(it["name"], f) for it, f in zip(val, feats)])
        t_score = (time.perf_counter() - t0) / len(val)
        costs.append((name, t_bank, t_feat * 1e3, t_score * 1e3, bank.nbytes() / 2**20, feats[0].shape))
        rows_for(f"anomaly ({name} backbone)", scores, val, rows)
        if name == "detector":
            det = detector_defect_prob(model, classes, val)
            rows_for("detector p(defect)", det, val, rows)
            groups = np.array([it["group"] for it in val])
            bases = np.array([base_class(it["name"], classes) for it in val])
            comb = np.empty(len(val))
            for base in set(bases):
                m = bases == base
                neg_m = m & (groups == "intact")
                comb[m] = np.maximum(rank_among(scores[neg_m], scores[m]), rank_among(det[neg_m], det[m]))
            rows_for("combined (either)", comb, val, rows)
            if args.verdict:
                ver = verdict_defect_prob(args.verdict, classes, val)
                rows_for("classifier p(defect)", ver, val, rows)
                for base in set(bases):
                    m = bases == base
                    neg_m = m & (groups == "intact")
                    comb[m] = np.maximum(rank_among(scores[neg_m], scores[m]), rank_among(ver[neg_m], ver[m]))
                rows_for("classifier or anomaly", comb, val, rows)

    print("\n| scores | class | defects | intact | defective | AUROC | recall @1% FR | recall @2% FR |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.2f} | {r[7]:.2f} |")
    print("\n| backbone | bank build (s) | features (ms/item) | nearest-neighbour score (ms/item) | bank (MiB) | patches x dims |")
    print("|---|---:|---:|---:|---:|---|")
    for name, tb, tf, ts, mb, shape in costs:
        print(f"| {name} | {tb:.1f} | {tf:.1f} | {ts:.2f} | {mb:.1f} | {shape[0]} x {shape[1]} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "costs": [c[:5] for c in costs]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
