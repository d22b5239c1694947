"""Detection metrics: Pascal VOC average precision, COCO metrics, and counts at a score threshold.

Pure numpy (plus pycocotools for the COCO numbers); nothing here imports torch or model code,
so predictions made anywhere can be scored.

Conventions (every function here):

* Boxes are ``(xmin, ymin, xmax, ymax)`` float64 in pixels of the original image, on
  **continuous** coordinates: the area of a box is ``(xmax - xmin) * (ymax - ymin)``, with no
  ``+1`` pixel (py-faster-rcnn and the VOC devkit add 1; COCO, torchvision and this project
  do not). A zero-area box has IoU 0 with everything.
* Labels are ``1..K``: label ``i`` is ``classes[i - 1]``; 0 (background) is never a label.
* Ground truth flagged ``difficult`` is neither a true nor a false positive and is not
  counted among the positives (VOC's rule). In the COCO evaluation it becomes an
  ``iscrowd=1`` region, COCO's way of saying "ignore detections here" (as mmdetection's VOC
  to COCO conversion does).

VOC AP (:func:`voc_evaluate`), per class:

1. every detection of the class, over all images, is sorted once by descending score
   (a stable sort: ties keep input order: images in ``truths`` order, then the order
   within each :class:`Detections`);
2. each detection is matched to the ground truth box of its class *in its image* with
   the largest IoU (already-matched boxes included, as in the VOC devkit);
3. IoU >= ``iou_threshold`` and that box not yet taken: a true positive, and the box is
   taken; IoU >= threshold but the box already taken: a false positive (a duplicate);
   below the threshold: a false positive; the box difficult: ignored;
4. AP is the area under the precision envelope (VOC2010+ "all-point" interpolation), or the
   mean of the envelope at recall 0, 0.1, ..., 1 (VOC2007 11-point, ``use_07_metric``).

A class with no (non-difficult) ground truth has no AP: it is reported as ``None`` and left
out of the mean, never counted as 0.

The greedy matching is vectorised: because step 2 does not depend on what was matched
before, the best box of every detection comes from one IoU evaluation over all
(detection, box) pairs of the same image and class; step 3 is then "the first detection, in
score order, to pick a box wins it". 5,000 images x 50 detections take about 0.2 s on two
CPU cores (``bench/metrics_speed.py``).

One module of ~650 lines: VOC AP, COCO and the confusion counts share the matching code
above; split, they would each need it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from detect.common.thresholds import CONF
from detect.common.types import Detections, GroundTruth, as_boxes

log = logging.getLogger(__name__)

__all__ = [
    "COCO_STATS",
    "CocoResult",
    "ConfusionResult",
    "VocResult",
    "coco_evaluate",
    "box_iou",
    "detection_confusion",
    "match_image",
    "to_coco",
    "voc_evaluate",
]

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of pycocotools' 12 summary numbers, in ``COCOeval.stats`` order."""

BACKGROUND = "background"


@dataclass
class VocResult:
    """VOC average precision per class.

    Attributes:
        classes: the class names; label ``i`` is ``classes[i - 1]``.
        ap: class name -> AP in ``[0, 1]``, or None when the class has no non-difficult
            ground truth (absent, not 0).
        map: mean of the APs that are not None; NaN when every class is absent.
        precision, recall, scores: class name -> ``(D,)`` arrays, one entry per detection of
            the class in descending score order (detections on difficult objects left out):
            the precision and recall of keeping every detection down to that one, and its
            score. These are the points of the precision-recall curve.
        n_positives: class name -> number of non-difficult ground truth objects.
        n_detections: class name -> number of detections given (difficult ones included).
        iou_threshold: the IoU a detection needs to count.
        use_07_metric: True for VOC2007 11-point AP, False for all-point AP.
    """

    classes: tuple[str, ...]
    ap: dict[str, float | None]
    map: float
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    n_positives: dict[str, int]
    n_detections: dict[str, int]
    iou_threshold: float = 0.5
    use_07_metric: bool = False


@dataclass
class CocoResult:
    """pycocotools' bounding-box evaluation.

    Attributes:
        stats: the 12 summary numbers by name (:data:`COCO_STATS`: ``AP`` is mAP@[.5:.95],
            ``AP50``, ``AP75``, ``APs/APm/APl`` by object size, ``AR1/AR10/AR100`` by
            detections per image, ``ARs/ARm/ARl``). None where pycocotools says -1 (no
            ground truth in that size range).
        per_class: class name -> AP@[.5:.95] (area all, 100 detections), None when absent.
        per_class_ap50: class name -> AP@0.5 with COCO's 101-point interpolation.
        precision: pycocotools' ``eval["precision"]`` array ``[T, R, K, A, M]`` (-1 = absent).
    """

    stats: dict[str, float | None]
    per_class: dict[str, float | None]
    per_class_ap50: dict[str, float | None]
    precision: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


@dataclass
class ConfusionResult:
    """Counts at one score threshold.

    Attributes:
        classes: the class names.
        labels: ``classes + ("background",)``: the row and column names of ``matrix``.
        matrix: ``(K + 1, K + 1)`` int64; rows are the ground truth class, columns the
            predicted class. ``matrix[i, i]``: true positives; ``matrix[i, j]``: an object of
            class i detected only as class j; last column: objects missed altogether; last
            row: detections on no object (false alarms, duplicates included). Difficult
            objects and the detections on them are not counted.
        precision, recall, f1: class name -> value. Precision is 0 when the class has no
            detection above the threshold; recall (and F1) None when it has no ground truth.
        tp, fp, fn: class name -> counts (fp: detections of the class that are not true
            positives; fn: objects of the class not found as that class).
        per_image: image key -> ``(true positives, false positives, misses)``.
        score_threshold, iou_threshold: the settings.
    """

    classes: tuple[str, ...]
    labels: tuple[str, ...]
    matrix: np.ndarray
    precision: dict[str, float]
    recall: dict[str, float | None]
    f1: dict[str, float | None]
    tp: dict[str, int]
    fp: dict[str, int]
    fn: dict[str, int]
    per_image: dict[str, tuple[int, int, int]]
    score_threshold: float
    iou_threshold: float


# --------------------------------------------------------------------------------------
# Flattening and matching


@dataclass
class _Flat:
    """Every box of every image in flat arrays (images in ``truths`` order)."""

    names: list[str]
    gt_img: np.ndarray
    gt_box: np.ndarray
    gt_label: np.ndarray
    gt_diff: np.ndarray
    det_img: np.ndarray
    det_box: np.ndarray
    det_score: np.ndarray
    det_label: np.ndarray


def _concat(arrays: list[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(shape, dtype=dtype)


def _flatten(truths: Sequence[GroundTruth], detections: Sequence[Detections], num_classes: int) -> _Flat:
    names = [t.image for t in truths]
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise ValueError(f"ground truth lists image {dup!r} twice; image keys must be unique")

    gt_counts = np.fromiter((t.boxes.shape[0] for t in truths), dtype=np.int64, count=len(truths))
    gt_img = np.repeat(np.arange(len(truths), dtype=np.int64), gt_counts)
    gt_box = _concat([t.boxes for t in truths], (0, 4), np.float64)
    gt_label = _concat([t.labels for t in truths], (0,), np.int64)
    gt_diff = _concat([t.difficult for t in truths], (0,), bool)

    det_index = []
    for d in detections:
        i = index.get(d.image)
        if i is None:
            raise ValueError(
                f"detections name image {d.image!r}, which has no ground truth entry; "
                "pass a GroundTruth (possibly empty) for every image evaluated"
            )
        det_index.append(i)
    det_counts = np.fromiter((d.boxes.shape[0] for d in detections), dtype=np.int64, count=len(detections))
    det_img = np.repeat(np.asarray(det_index, dtype=np.int64), det_counts)
    det_box = _concat([d.boxes for d in detections], (0, 4), np.float64)
    det_score = _concat([d.scores for d in detections], (0,), np.float64)
    det_label = _concat([d.labels for d in detections], (0,), np.int64)
    # Detections in ground-truth image order, so score ties break the same way whatever
    # order the caller listed the images in.
    order = np.argsort(det_img, kind="stable")
    det_img, det_box, det_score, det_label = det_img[order], det_box[order], det_score[order], det_label[order]

    for what, labels in (("ground truth", gt_label), ("detection", det_label)):
        bad = (labels < 1) | (labels > num_classes)
        if bad.any():
            raise ValueError(
                f"a {what} has label {int(labels[bad][0])}; labels must be 1..{num_classes} "
                "(label i is classes[i - 1]; 0 is background)"
            )
    if not np.isfinite(gt_box).all():
        raise ValueError("ground truth boxes must be finite numbers")
    if not (np.isfinite(det_box).all() and np.isfinite(det_score).all()):
        bad = int(np.flatnonzero(~(np.isfinite(det_box).all(axis=1) & np.isfinite(det_score)))[0])
        raise ValueError(f"detection on image {names[det_img[bad]]!r} has a NaN or infinite box or score")
    return _Flat(names, gt_img, gt_box, gt_label, gt_diff, det_img, det_box, det_score, det_label)


def _box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for (P, 4) arrays; continuous coordinates, 0 where the
    union is empty (two zero-area boxes)."""
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0)
    inter = iw * ih
    # The same operations in the same order as the VOC reference, so results agree bitwise.
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` of ``(N, 4)`` and ``(M, 4)`` xmin/ymin/xmax/ymax boxes (continuous)."""
    a = as_boxes(a, "box_iou a")
    b = as_boxes(b, "box_iou b")
    ia = np.repeat(np.arange(len(a)), len(b))
    ib = np.tile(np.arange(len(b)), len(a))
    return _box_iou_pairs(a[ia], b[ib]).reshape(len(a), len(b))


def _best_match(
    gt_img: np.ndarray,
    gt_label: np.ndarray,
    gt_box: np.ndarray,
    det_img: np.ndarray,
    det_label: np.ndarray,
    det_box: np.ndarray,
    *,
    n_images: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, the ground truth box of the same image and label with the
    largest IoU (the first such box on ties, as ``np.argmax`` would pick) and that IoU.

    Returns ``(best_gt, best_iou)``: ``(D,)`` indices into the gt arrays (-1 where the image
    has no box of that label) and ``(D,)`` IoUs (-inf there).
    """
    n_det = det_img.shape[0]
    best_gt = np.full(n_det, -1, dtype=np.int64)
    best_iou = np.full(n_det, -np.inf)
    if n_det == 0 or gt_img.shape[0] == 0:
        return best_gt, best_iou
    stride = num_classes + 1
    gt_key = gt_img * stride + gt_label
    gt_order = np.argsort(gt_key, kind="stable")  # boxes of one (image, class) stay in input order
    counts = np.bincount(gt_key, minlength=n_images * stride)
    starts = np.cumsum(counts) - counts
    det_key = det_img * stride + det_label
    per_det = counts[det_key]
    n_pairs = int(per_det.sum())
    if n_pairs == 0:
        return best_gt, best_iou
    # All (detection, box) pairs of the same image and class, grouped by detection.
    pair_det = np.repeat(np.arange(n_det), per_det)
    first = np.cumsum(per_det) - per_det
    within = np.arange(n_pairs) - np.repeat(first, per_det)
    pair_gt = gt_order[starts[det_key][pair_det] + within]
    iou = _box_iou_pairs(det_box[pair_det], gt_box[pair_gt])

    has = per_det > 0
    best_iou[has] = np.maximum.reduceat(iou, first[has])
    hit = np.flatnonzero(iou == best_iou[pair_det])
    hit_det = pair_det[hit]
    lead = np.ones(hit.shape[0], dtype=bool)
    lead[1:] = hit_det[1:] != hit_det[:-1]
    best_gt[hit_det[lead]] = pair_gt[hit[lead]]
    return best_gt, best_iou


@dataclass
class _Matched:
    """Per-detection outcome, in (label, descending score) order."""

    order: np.ndarray  # indices into the flat detection arrays
    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray  # bool
    ignored: np.ndarray  # bool: on a difficult object
    best_gt: np.ndarray  # the box each detection was compared with (-1: none)
    best_iou: np.ndarray


def _voc_match(flat: _Flat, *, num_classes: int, iou_threshold: float, keep: np.ndarray | None = None) -> _Matched:
    """VOC greedy matching of the detections selected by ``keep`` (all when None)."""
    sel = np.arange(flat.det_img.shape[0]) if keep is None else np.flatnonzero(keep)
    best_gt, best_iou = _best_match(
        flat.gt_img, flat.gt_label, flat.gt_box,
        flat.det_img[sel], flat.det_label[sel], flat.det_box[sel],
        n_images=len(flat.names), num_classes=num_classes,
    )
    # Stable sorts: by descending score, then by class; ties keep image order.
    by_score = np.argsort(-flat.det_score[sel], kind="stable")
    by_label = np.argsort(flat.det_label[sel][by_score], kind="stable")
    local = by_score[by_label]
    best_gt, best_iou = best_gt[local], best_iou[local]
    over = best_iou >= iou_threshold
    ignored = np.zeros(local.shape[0], dtype=bool)
    ignored[over] = flat.gt_diff[best_gt[over]]
    candidate = np.flatnonzero(over & ~ignored)
    # A box belongs to one class, so box indices are unique across the class segments:
    # the first detection in score order to pick a box is its true positive.
    _, first = np.unique(best_gt[candidate], return_index=True)
    tp = np.zeros(local.shape[0], dtype=bool)
    tp[candidate[first]] = True
    order = sel[local]
    return _Matched(order, flat.det_label[order], flat.det_score[order], tp, ignored, best_gt, best_iou)


def _average_precision(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """AP from a PR curve given in descending-score order (VOC definitions)."""
    if use_07_metric:
        # Envelope: the best precision at this recall or any higher one.
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            i = int(np.searchsorted(recall, t, side="left"))
            ap = ap + (float(envelope[i]) if i < envelope.shape[0] else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(str(c) for c in classes)
    if not classes:
        raise ValueError("classes is empty; give the class names (label i is classes[i - 1])")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}")
    return classes


# --------------------------------------------------------------------------------------
# VOC


def voc_evaluate(
    truths: Sequence[GroundTruth],
    detections: Sequence[Detections],
    *,
    classes: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> VocResult:
    """Pascal VOC average precision per class and its mean (see the module docstring).

    Args:
        truths: one :class:`GroundTruth` per evaluated image (empty ones included: an image
            without objects still counts for false positives). Image keys must be unique.
        detections: :class:`Detections` for any of those images; an image with none may be
            left out; an image listed twice has its detections concatenated.
        classes: class names, label ``i`` is ``classes[i - 1]``.
        iou_threshold: a detection counts when IoU >= this (continuous coordinates).
        use_07_metric: VOC2007 11-point interpolation instead of all-point.

    Raises:
        ValueError: detections for an image not in ``truths``, labels outside ``1..K``,
            NaN boxes or scores, duplicate image keys.
    """
    classes = _check_classes(classes)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_classes = len(classes)
    flat = _flatten(truths, detections, num_classes)
    m = _voc_match(flat, num_classes=num_classes, iou_threshold=iou_threshold)

    positives = np.bincount(flat.gt_label[~flat.gt_diff], minlength=num_classes + 1)
    bounds = np.searchsorted(m.label, np.arange(1, num_classes + 2), side="left")
    ap: dict[str, float | None] = {}
    precision: dict[str, np.ndarray] = {}
    recall: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    n_pos: dict[str, int] = {}
    n_det: dict[str, int] = {}
    for k, name in enumerate(classes, start=1):
        seg = slice(bounds[k - 1], bounds[k])
        keep = ~m.ignored[seg]
        tp = np.cumsum(m.tp[seg][keep]).astype(np.float64)
        fp = np.cumsum(~m.tp[seg][keep]).astype(np.float64)
        npos = int(positives[k])
        n_pos[name] = npos
        n_det[name] = int(bounds[k] - bounds[k - 1])
        scores[name] = m.score[seg][keep]
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        precision[name] = prec
        if npos == 0:
            recall[name] = np.zeros_like(tp)
            ap[name] = None
            continue
        rec = tp / float(npos)
        recall[name] = rec
        ap[name] = _average_precision(rec, prec, use_07_metric=use_07_metric)
    present = [v for v in ap.values() if v is not None]
    mean = float(np.mean(present)) if present else math.nan
    return VocResult(
        classes=classes, ap=ap, map=mean, precision=precision, recall=recall, scores=scores,
        n_positives=n_pos, n_detections=n_det, iou_threshold=float(iou_threshold),
        use_07_metric=bool(use_07_metric),
    )


def match_image(
    truth: GroundTruth, detections: Detections, *, num_classes: int, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VOC matching inside one image (the same outcome the image's boxes get in
    :func:`voc_evaluate`, whose matching never crosses images).

    Returns ``(tp, ignored, found)``: ``(M,)`` bool per detection in input order (true
    positive; on a difficult object) and ``(N,)`` bool per ground truth box (found).
    """
    det = Detections(truth.image, detections.boxes, detections.scores, detections.labels)
    flat = _flatten([truth], [det], num_classes)
    m = _voc_match(flat, num_classes=num_classes, iou_threshold=iou_threshold)
    tp = np.zeros(m.order.shape[0], dtype=bool)
    ignored = np.zeros_like(tp)
    tp[m.order] = m.tp
    ignored[m.order] = m.ignored
    found = np.zeros(flat.gt_img.shape[0], dtype=bool)
    found[m.best_gt[m.tp]] = True
    return tp, ignored, found


# --------------------------------------------------------------------------------------
# Counts at a score threshold


def detection_confusion(
    truths: Sequence[GroundTruth],
    detections: Sequence[Detections],
    *,
    classes: Sequence[str],
    score_threshold: float = CONF,
    iou_threshold: float = 0.5,
) -> ConfusionResult:
    """Precision, recall, F1 and a detection confusion matrix for detections scoring
    ``>= score_threshold``.

    True positives are exactly VOC's (:func:`voc_evaluate`'s matching restricted to those
    detections), so precision and recall here are points of the VOC PR curve. Then each
    remaining false positive, in descending score order, is matched to the unclaimed
    object *of another class* it overlaps most (IoU >= ``iou_threshold``): that is a
    class confusion ("defective can detected as can") and fills ``matrix[true, predicted]``;
    a false positive overlapping no such object is a false alarm (background row). Objects
    found by nothing are misses (background column).

    Boxes ``(xmin, ymin, xmax, ymax)`` in original-image pixels; see :class:`ConfusionResult`.
    """
    classes = _check_classes(classes)
    k_cls = len(classes)
    flat = _flatten(truths, detections, k_cls)
    keep = flat.det_score >= score_threshold
    m = _voc_match(flat, num_classes=k_cls, iou_threshold=iou_threshold, keep=keep)
    bg = k_cls  # index of the background row/column
    matrix = np.zeros((k_cls + 1, k_cls + 1), dtype=np.int64)

    n_gt = flat.gt_img.shape[0]
    claimed = np.zeros(n_gt, dtype=bool)
    claimed[m.best_gt[m.tp]] = True
    np.add.at(matrix, (m.label[m.tp] - 1, m.label[m.tp] - 1), 1)

    # Second pass: false positives against unclaimed, non-difficult boxes of other classes,
    # greedily in descending score, each taking the best-overlapping box still free.
    fp_mask = ~m.tp & ~m.ignored
    fp_idx = np.flatnonzero(fp_mask)
    fp_idx = fp_idx[np.argsort(-m.score[fp_idx], kind="stable")]
    fp_det = m.order[fp_idx]
    # Every (false positive, box of its image) pair at once; only pairs that can confuse
    # (other class, free, IoU >= threshold) survive, usually a few, for the greedy loop.
    gt_order = np.argsort(flat.gt_img, kind="stable")
    counts = np.bincount(flat.gt_img, minlength=len(flat.names))
    starts = np.cumsum(counts) - counts
    per_det = counts[flat.det_img[fp_det]]
    pair_rank = np.repeat(np.arange(fp_det.shape[0]), per_det)
    within = np.arange(pair_rank.shape[0]) - np.repeat(np.cumsum(per_det) - per_det, per_det)
    pair_gt = gt_order[starts[flat.det_img[fp_det]][pair_rank] + within]
    pair_det = fp_det[pair_rank]
    usable = (flat.gt_label[pair_gt] != flat.det_label[pair_det]) & ~flat.gt_diff[pair_gt] & ~claimed[pair_gt]
    pair_rank, pair_gt, pair_det = pair_rank[usable], pair_gt[usable], pair_det[usable]
    iou = _box_iou_pairs(flat.det_box[pair_det], flat.gt_box[pair_gt])
    close = iou >= iou_threshold
    pair_rank, pair_gt, iou = pair_rank[close], pair_gt[close], iou[close]
    # By detection rank, then best IoU first, then box order (np.argmax's tie rule).
    by = np.lexsort((pair_gt, -iou, pair_rank))
    confused_as = np.full(fp_det.shape[0], -1, dtype=np.int64)
    taken: set[int] = set()
    current = -1
    for rank, g in zip(pair_rank[by].tolist(), pair_gt[by].tolist()):
        if rank == current or g in taken:
            continue
        if confused_as[rank] < 0:
            confused_as[rank] = g
            taken.add(g)
            current = rank
    hit = confused_as >= 0
    claimed[confused_as[hit]] = True
    np.add.at(matrix, (flat.gt_label[confused_as[hit]] - 1, flat.det_label[fp_det[hit]] - 1), 1)
    np.add.at(matrix, (np.full(int((~hit).sum()), bg), flat.det_label[fp_det[~hit]] - 1), 1)

    # Misses: non-difficult boxes matched by nothing of any class. (A box taken by a
    # detection of another class is a miss for its own class, but sits off the diagonal.)
    missed = ~claimed & ~flat.gt_diff
    np.add.at(matrix, (flat.gt_label[missed] - 1, bg), 1)

    tp_c = np.bincount(m.label[m.tp], minlength=k_cls + 1)[1:]
    det_c = np.bincount(m.label[~m.ignored], minlength=k_cls + 1)[1:]
    pos_c = np.bincount(flat.gt_label[~flat.gt_diff], minlength=k_cls + 1)[1:]
    precision: dict[str, float] = {}
    recall: dict[str, float | None] = {}
    f1: dict[str, float | None] = {}
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    for i, name in enumerate(classes):
        tp[name], fp[name], fn[name] = int(tp_c[i]), int(det_c[i] - tp_c[i]), int(pos_c[i] - tp_c[i])
        p = tp_c[i] / det_c[i] if det_c[i] else 0.0
        precision[name] = float(p)
        if pos_c[i] == 0:
            recall[name] = f1[name] = None
            continue
        r = tp_c[i] / pos_c[i]
        recall[name] = float(r)
        f1[name] = float(2 * p * r / (p + r)) if p + r > 0 else 0.0

    n_img = len(flat.names)
    img_tp = np.bincount(flat.det_img[m.order[m.tp]], minlength=n_img)
    img_fp = np.bincount(flat.det_img[m.order[fp_mask]], minlength=n_img)
    gt_tp = np.zeros(n_gt, dtype=bool)
    gt_tp[m.best_gt[m.tp]] = True
    img_fn = np.bincount(flat.gt_img[~gt_tp & ~flat.gt_diff], minlength=n_img)
    per_image = {
        name: (int(img_tp[i]), int(img_fp[i]), int(img_fn[i])) for i, name in enumerate(flat.names)
    }
    return ConfusionResult(
        classes=classes, labels=classes + (BACKGROUND,), matrix=matrix, precision=precision,
        recall=recall, f1=f1, tp=tp, fp=fp, fn=fn, per_image=per_image,
        score_threshold=float(score_threshold), iou_threshold=float(iou_threshold),
    )


# --------------------------------------------------------------------------------------
# COCO


def to_coco(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], *, classes: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground truth as a COCO dataset dict and the detections as a COCO results list.

    Image ids are 1.. in ``truths`` order; category id ``i`` is label ``i`` (1..K); annotation
    ids are 1.. in order; ``bbox`` is ``[x, y, width, height]``; ``area`` is the box area
    (there are no masks); difficult objects get ``iscrowd=1``.
    """
    classes = _check_classes(classes)
    flat = _flatten(truths, detections, len(classes))
    images = [{"id": i + 1, "file_name": name} for i, name in enumerate(flat.names)]
    categories = [{"id": k, "name": name} for k, name in enumerate(classes, start=1)]
    xywh = flat.gt_box.copy()
    xywh[:, 2:] -= xywh[:, :2]
    annotations = [
        {
            "id": a + 1,
            "image_id": int(img) + 1,
            "category_id": int(label),
            "bbox": [float(v) for v in box],
            "area": float(box[2] * box[3]),
            "iscrowd": int(diff),
        }
        for a, (img, label, box, diff) in enumerate(zip(flat.gt_img, flat.gt_label, xywh, flat.gt_diff))
    ]
    dxywh = flat.det_box.copy()
    dxywh[:, 2:] -= dxywh[:, :2]
    results = [
        {"image_id": int(img) + 1, "category_id": int(label), "bbox": [float(v) for v in box], "score": float(s)}
        for img, label, box, s in zip(flat.det_img, flat.det_label, dxywh, flat.det_score)
    ]
    dataset = {"images": images, "categories": categories, "annotations": annotations}
    return dataset, results


def coco_evaluate(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], *, classes: Sequence[str]
) -> CocoResult:
    """pycocotools' bounding-box evaluation of the same inputs as :func:`voc_evaluate`.

    Converted by :func:`to_coco`. With no detections at all (pycocotools' ``loadRes``
    refuses an empty list) an empty result set is evaluated instead: every AP and AR is 0
    where ground truth exists. pycocotools' console output goes to the debug log.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = _check_classes(classes)
    dataset, results = to_coco(truths, detections, classes=classes)
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {"images": list(dataset["images"]), "categories": list(dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("pycocotools:\n%s", chatter.getvalue())

    stats = {name: (None if v < 0 else float(v)) for name, v in zip(COCO_STATS, ev.stats)}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class: dict[str, float | None] = {}
    per_class_ap50: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(np.mean(p[p > -1])) if (p > -1).any() else None
        p50 = precision[0, :, k, 0, -1]
        per_class_ap50[name] = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else None
    return CocoResult(stats=stats, per_class=per_class, per_class_ap50=per_class_ap50, precision=precision)
