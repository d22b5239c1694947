"""detect.scoring.metrics: hand-computed cases, and agreement with independent reference implementations."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from detect.scoring.metrics import (
    COCO_STATS,
    Detections,
    GroundTruth,
    box_iou,
    coco_evaluate,
    detection_confusion,
    match_image,
    to_coco,
    voc_evaluate,
)

CLASSES = ["can", "defect"]


def gt(image, boxes, labels, difficult=None):
    return GroundTruth(image=image, boxes=np.array(boxes, dtype=float).reshape(-1, 4),
                       labels=np.array(labels, dtype=np.int64),
                       difficult=None if difficult is None else np.array(difficult, dtype=bool))


def det(image, boxes, scores, labels):
    return Detections(image=image, boxes=np.array(boxes, dtype=float).reshape(-1, 4),
                      scores=np.array(scores, dtype=float), labels=np.array(labels, dtype=np.int64))


A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
FAR = [50, 50, 60, 60]


# --------------------------------------------------------------------------------------
# Hand-computed VOC cases


def test_perfect_detections_score_one():
    truths = [gt("a", [A, B], [1, 2]), gt("b", [B], [1])]
    dets = [det("a", [A, B], [0.9, 0.8], [1, 2]), det("b", [B], [0.7], [1])]
    r = voc_evaluate(truths, dets, classes=CLASSES)
    assert r.ap == {"can": 1.0, "defect": 1.0}
    assert r.map == 1.0
    # 11 x (1 / 11) is 1.0000000000000002 in floating point, in py-faster-rcnn as here.
    r07 = voc_evaluate(truths, dets, classes=CLASSES, use_07_metric=True)
    assert r07.ap == {"can": pytest.approx(1.0, abs=1e-15), "defect": pytest.approx(1.0, abs=1e-15)}
    assert coco_evaluate(truths, dets, classes=CLASSES).stats["AP"] == pytest.approx(1.0, abs=1e-12)


def test_false_positive_ranked_above_true_positive_halves_ap():
    # One object; an unmatched box scores above the correct one: precision 0 then 1/2 at
    # recall 1, so the envelope is 1/2 everywhere.
    truths = [gt("a", [A], [1])]
    dets = [det("a", [FAR, A], [0.9, 0.8], [1, 1])]
    r = voc_evaluate(truths, dets, classes=CLASSES)
    assert r.ap["can"] == 0.5
    np.testing.assert_array_equal(r.precision["can"], [0.0, 0.5])
    np.testing.assert_array_equal(r.recall["can"], [0.0, 1.0])
    assert voc_evaluate(truths, dets, classes=CLASSES, use_07_metric=True).ap["can"] == pytest.approx(0.5, abs=1e-15)


def test_false_positive_between_true_positives():
    # Two objects: TP, FP, TP -> points (r=1/2, p=1), (1/2, 1/2), (1, 2/3).
    # All-point: 1/2 * 1 + 1/2 * 2/3 = 5/6. 11-point: recall 0..0.5 (6 points) at 1,
    # 0.6..1 (5 points) at 2/3: (6 + 10/3) / 11 = 28/33.
    truths = [gt("a", [A, B], [1, 1])]
    dets = [det("a", [A, FAR, B], [0.9, 0.8, 0.7], [1, 1, 1])]
    all_point = voc_evaluate(truths, dets, classes=CLASSES).ap["can"]
    eleven = voc_evaluate(truths, dets, classes=CLASSES, use_07_metric=True).ap["can"]
    assert all_point == pytest.approx(5 / 6, abs=1e-15)
    assert eleven == pytest.approx(28 / 33, abs=1e-15)
    assert all_point != eleven


def test_difficult_objects_are_neither_rewarded_nor_penalised():
    truths = [gt("a", [A, B], [1, 1], difficult=[False, True])]
    # A detection on the difficult object, ranked first, changes nothing ...
    on_difficult = voc_evaluate(truths, [det("a", [B, A], [0.9, 0.8], [1, 1])], classes=CLASSES)
    # ... and missing it costs no recall.
    missing_it = voc_evaluate(truths, [det("a", [A], [0.8], [1])], classes=CLASSES)
    assert on_difficult.ap["can"] == 1.0
    assert missing_it.ap["can"] == 1.0
    assert on_difficult.n_positives["can"] == 1
    assert len(on_difficult.precision["can"]) == 1  # the ignored detection is not a curve point


def test_only_difficult_objects_make_a_class_absent():
    truths = [gt("a", [A, B], [1, 2], difficult=[False, True])]
    r = voc_evaluate(truths, [det("a", [A, B], [0.9, 0.9], [1, 2])], classes=CLASSES)
    assert r.ap == {"can": 1.0, "defect": None}


def test_duplicate_detections_count_one_true_positive():
    truths = [gt("a", [A, B], [1, 1])]
    # A, A again (duplicate: FP), then B: the same curve as TP, FP, TP above.
    dets = [det("a", [A, [0.5, 0, 10.5, 10], B], [0.9, 0.8, 0.7], [1, 1, 1])]
    r = voc_evaluate(truths, dets, classes=CLASSES)
    assert r.ap["can"] == pytest.approx(5 / 6, abs=1e-15)
    np.testing.assert_array_equal(r.recall["can"], [0.5, 0.5, 1.0])
    # One object, two hits: recall 1 reached at precision 1, so AP is 1.
    one = voc_evaluate([gt("a", [A], [1])], [det("a", [A, A], [0.9, 0.8], [1, 1])], classes=CLASSES)
    assert one.ap["can"] == 1.0
    np.testing.assert_array_equal(one.precision["can"], [1.0, 0.5])


def test_best_overlap_already_taken_is_a_false_positive():
    # VOC's rule: a detection is compared with the box it overlaps most; if that box is taken
    # it is a false positive even when another box of the class overlaps it by >= 0.5.
    left, right = [0, 0, 10, 10], [2, 0, 12, 10]
    second = [0.5, 0, 10.5, 10]  # IoU 0.905 with left, 0.739 with right
    iou = box_iou(np.array([second]), np.array([left, right]))[0]
    assert iou[0] > iou[1] >= 0.5
    r = voc_evaluate([gt("a", [left, right], [1, 1])], [det("a", [left, second], [0.9, 0.8], [1, 1])],
                     classes=CLASSES)
    assert r.ap["can"] == 0.5


def test_no_predictions_score_zero():
    truths = [gt("a", [A], [1]), gt("b", [B], [2])]
    r = voc_evaluate(truths, [], classes=CLASSES)
    assert r.ap == {"can": 0.0, "defect": 0.0}
    assert r.map == 0.0
    c = coco_evaluate(truths, [], classes=CLASSES)
    assert c.stats["AP"] == 0.0 and c.stats["AR100"] == 0.0
    assert c.per_class == {"can": 0.0, "defect": 0.0}


def test_class_without_ground_truth_is_absent_not_zero():
    truths = [gt("a", [A], [1])]
    dets = [det("a", [A, B], [0.9, 0.8], [1, 2])]  # a false "defect" that has no ground truth
    r = voc_evaluate(truths, dets, classes=CLASSES)
    assert r.ap == {"can": 1.0, "defect": None}
    assert r.map == 1.0  # mean over present classes only
    assert r.n_detections["defect"] == 1
    c = coco_evaluate(truths, dets, classes=CLASSES)
    assert c.per_class["defect"] is None
    assert math.isnan(voc_evaluate([gt("a", [], [])], dets, classes=CLASSES).map)


def test_iou_threshold_is_inclusive_on_continuous_coordinates():
    # [0,0,10,20] covers A exactly twice: IoU = 100 / 200 = 0.5 without the +1 pixel
    # (with it, 121 / 231 = 0.524). A hair more and it falls below.
    truths = [gt("a", [A], [1])]
    assert box_iou(np.array([[0, 0, 10, 20]]), np.array([A]))[0, 0] == 0.5
    at = voc_evaluate(truths, [det("a", [[0, 0, 10, 20]], [0.9], [1])], classes=CLASSES)
    below = voc_evaluate(truths, [det("a", [[0, 0, 10, 20.001]], [0.9], [1])], classes=CLASSES)
    assert at.ap["can"] == 1.0
    assert below.ap["can"] == 0.0
    strict = voc_evaluate(truths, [det("a", [[0, 0, 10, 20]], [0.9], [1])], classes=CLASSES, iou_threshold=0.6)
    assert strict.ap["can"] == 0.0


def test_zero_area_boxes_match_nothing():
    truths = [gt("a", [[5, 5, 5, 9], A], [1, 1])]
    r = voc_evaluate(truths, [det("a", [[5, 5, 5, 9], A], [0.9, 0.8], [1, 1])], classes=CLASSES)
    # Two positives; the zero-area one can never be found: FP, then TP at recall 1/2.
    assert r.ap["can"] == 0.25


def test_labels_do_not_cross_classes_or_images():
    truths = [gt("a", [A], [1]), gt("b", [B], [1])]
    dets = [det("a", [A], [0.9], [2]), det("a", [B], [0.8], [1])]  # right box, wrong class / image
    r = voc_evaluate(truths, dets, classes=CLASSES)
    assert r.ap["can"] == 0.0


def test_input_order_does_not_matter():
    rng = np.random.default_rng(3)
    truths, dets = random_problem(rng, n_images=40, n_classes=3)
    r1 = voc_evaluate(truths, dets, classes=["x", "y", "z"])
    r2 = voc_evaluate(truths, list(reversed(dets)), classes=["x", "y", "z"])
    assert r1.ap == r2.ap


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: voc_evaluate([gt("a", [A], [1])], [det("zz", [A], [0.5], [1])], classes=CLASSES), "zz"),
        (lambda: voc_evaluate([gt("a", [A], [1])], [det("a", [A], [0.5], [0])], classes=CLASSES), "label 0"),
        (lambda: voc_evaluate([gt("a", [A], [3])], [], classes=CLASSES), "label 3"),
        (lambda: voc_evaluate([gt("a", [A], [1])], [det("a", [A], [math.nan], [1])], classes=CLASSES), "NaN"),
        (lambda: voc_evaluate([gt("a", [A], [1]), gt("a", [B], [1])], [], classes=CLASSES), "twice"),
        (lambda: voc_evaluate([gt("a", [A], [1])], [], classes=CLASSES, iou_threshold=0), "iou_threshold"),
        (lambda: GroundTruth("a", np.zeros((2, 3)), np.ones(2)), r"\(N, 4\)"),
        (lambda: Detections("a", np.zeros((2, 4)), np.ones(3), np.ones(2)), "scores has 3"),
    ],
)
def test_bad_input_is_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------------------
# Counts at a score threshold


def test_confusion_matrix_by_hand():
    can, defect = 1, 2
    truths = [gt("a", [A, B, [40, 0, 50, 10]], [defect, can, can])]
    dets = [det("a",
                [A, B, FAR, [40, 0, 50, 10]],
                [0.9, 0.8, 0.7, 0.3],            # the last is below the threshold
                [can, can, defect, can])]
    c = detection_confusion(truths, dets, classes=CLASSES, score_threshold=0.5)
    assert c.labels == ("can", "defect", "background")
    np.testing.assert_array_equal(c.matrix, [
        # pred: can defect bg
        [1, 0, 1],   # true can: B found; [40,0,50,10] missed (its detection scored 0.3)
        [1, 0, 0],   # true defect: detected as "can"
        [0, 1, 0],   # background: a "defect" on nothing
    ])
    assert c.tp == {"can": 1, "defect": 0}
    assert c.fp == {"can": 1, "defect": 1}
    assert c.fn == {"can": 1, "defect": 1}
    assert c.precision == {"can": 0.5, "defect": 0.0}
    assert c.recall == {"can": 0.5, "defect": 0.0}
    assert c.f1["can"] == 0.5 and c.f1["defect"] == 0.0
    assert c.per_image == {"a": (1, 2, 2)}


def test_confusion_agrees_with_the_voc_curve_and_adds_up():
    rng = np.random.default_rng(11)
    classes = ["x", "y", "z", "w"]
    truths, dets = random_problem(rng, n_images=120, n_classes=4)
    voc = voc_evaluate(truths, dets, classes=classes)
    for conf in (0.2, 0.5, 0.8):
        c = detection_confusion(truths, dets, classes=classes, score_threshold=conf)
        k = len(classes)
        for i, name in enumerate(classes):
            assert c.matrix[i].sum() == voc.n_positives[name]  # every object lands in one cell
            above = voc.scores[name] >= conf
            assert c.matrix[:, i].sum() == above.sum()  # every counted detection too
            assert c.matrix[i, i] == c.tp[name]
            if above.any():  # precision/recall are the VOC curve's point at that score
                last = np.flatnonzero(above)[-1]
                assert c.precision[name] == pytest.approx(voc.precision[name][last], abs=1e-15)
                assert c.recall[name] == pytest.approx(voc.recall[name][last], abs=1e-15)
        assert c.matrix[k, k] == 0
        per_image = np.array(list(c.per_image.values()))
        assert per_image[:, 0].sum() == sum(c.tp.values())
        assert per_image[:, 1].sum() == sum(c.fp.values())


def test_match_image_agrees_with_voc_evaluate():
    rng = np.random.default_rng(5)
    truths, dets = random_problem(rng, n_images=30, n_classes=3)
    by_image = {d.image: d for d in dets}
    empty = Detections("", np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    total = sum(match_image(t, by_image.get(t.image, empty), num_classes=3)[0].sum() for t in truths)
    c = detection_confusion(truths, dets, classes=["x", "y", "z"], score_threshold=-np.inf)
    assert total == sum(c.tp.values())


# --------------------------------------------------------------------------------------
# Agreement with references on a random problem


def random_problem(rng: np.random.Generator, *, n_images: int, n_classes: int, max_objects: int = 8):
    """Objects with jittered, duplicated, mislabelled and invented detections."""
    truths, dets = [], []
    for i in range(n_images):
        name = f"img_{i:04d}.jpg"
        n = int(rng.integers(0, max_objects + 1))
        xy = rng.uniform(0, 500, size=(n, 2))
        wh = rng.uniform(4, 150, size=(n, 2))
        boxes = np.hstack([xy, xy + wh])
        labels = rng.integers(1, n_classes + 1, size=n)
        difficult = rng.random(n) < 0.1
        truths.append(GroundTruth(name, boxes, labels, difficult))
        d_boxes, d_labels = [], []
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                size = np.r_[box[2:] - box[:2], box[2:] - box[:2]]
                d_boxes.append(box + rng.normal(0, 0.08, 4) * size)
                d_labels.append(label if rng.random() < 0.85 else rng.integers(1, n_classes + 1))
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(4, 150, 2)
            d_boxes.append([x, y, x + w, y + h])
            d_labels.append(rng.integers(1, n_classes + 1))
        m = len(d_boxes)
        d_boxes = np.array(d_boxes, dtype=float).reshape(-1, 4)
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2])
        if i % 7 != 3:  # some images get no detection record at all
            dets.append(Detections(name, d_boxes, rng.random(m), np.array(d_labels, dtype=np.int64)))
    return truths, dets


def reference_voc_ap(rec, prec, use_07_metric=False):
    """py-faster-rcnn's voc_ap, verbatim (lib/datasets/voc_eval.py)."""
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.
    else:
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def reference_voc_eval(truths, dets, classname_label, ovthresh=0.5, use_07_metric=False):
    """py-faster-rcnn's voc_eval for one class, a line-by-line port with two documented
    changes: continuous coordinates (no ``+ 1.``) and ``ovmax >= ovthresh`` (the VOC devkit's
    ``>=``; py-faster-rcnn wrote ``>``). Reads our dataclasses instead of files; the
    detection sort is stable (py-faster-rcnn's default quicksort breaks ties arbitrarily).
    Returns (rec, prec, ap), or None when the class has no non-difficult object."""
    class_recs = {}
    npos = 0
    for t in truths:
        keep = t.labels == classname_label
        bbox = t.boxes[keep]
        difficult = t.difficult[keep].astype(bool)
        det = [False] * len(bbox)
        npos = npos + sum(~difficult)
        class_recs[t.image] = {"bbox": bbox, "difficult": difficult, "det": det}
    image_ids, confidence, BB = [], [], []
    for d in dets:
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            if label == classname_label:
                image_ids.append(d.image)
                confidence.append(score)
                BB.append(box)
    confidence = np.array(confidence)
    BB = np.array(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.)
            ih = np.maximum(iymax - iymin, 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0]) * (bb[3] - bb[1]) +
                   (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax >= ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.
    if npos == 0:
        return None
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, reference_voc_ap(rec, prec, use_07_metric)


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(2024)
    classes = ["c1", "c2", "c3", "c4", "c5", "never"]  # "never" has no objects
    truths, dets = random_problem(rng, n_images=300, n_classes=5)
    return truths, dets, classes


@pytest.mark.parametrize("use07", [False, True])
@pytest.mark.parametrize("iou", [0.5, 0.75, 0.3])
def test_voc_equals_py_faster_rcnn_reference(random_case, use07, iou):
    truths, dets, classes = random_case
    ours = voc_evaluate(truths, dets, classes=classes, iou_threshold=iou, use_07_metric=use07)
    for label, name in enumerate(classes, start=1):
        ref = reference_voc_eval(truths, dets, label, ovthresh=iou, use_07_metric=use07)
        if ref is None:
            assert ours.ap[name] is None
            continue
        assert ours.ap[name] == pytest.approx(ref[2], abs=1e-12, rel=0)
        assert 0.0 < ours.ap[name] < 1.0  # a problem where the numbers mean something
    assert ours.ap["never"] is None
    assert ours.map == pytest.approx(np.mean([v for v in ours.ap.values() if v is not None]), abs=1e-15)


def independent_coco_run(truths, dets, n_classes):
    """pycocotools on COCO dicts built here from the raw arrays, straight from its README."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {t.image: i + 1 for i, t in enumerate(truths)}
    anns = []
    for t in truths:
        for box, label, difficult in zip(t.boxes, t.labels, t.difficult):
            x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": ids[t.image], "category_id": int(label),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(difficult)})
    res = []
    for d in dets:
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            res.append({"image_id": ids[d.image], "category_id": int(label),
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i} for i in ids.values()],
                           "categories": [{"id": k} for k in range(1, n_classes + 1)],
                           "annotations": anns}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_coco_equals_an_independent_pycocotools_run(random_case):
    truths, dets, classes = random_case
    ours = coco_evaluate(truths, dets, classes=classes)
    ev = independent_coco_run(truths, dets, len(classes))
    for name, value in zip(COCO_STATS, ev.stats):
        if value == -1:
            assert ours.stats[name] is None, name
        else:
            assert ours.stats[name] == pytest.approx(value, abs=1e-12, rel=0), name
    assert ours.stats["APs"] is not None and 0 < ours.stats["AP"] < 1
    p = ev.eval["precision"]
    for k, name in enumerate(classes):
        s = p[:, :, k, 0, -1]
        if (s > -1).any():
            assert ours.per_class[name] == pytest.approx(np.mean(s[s > -1]), abs=1e-12, rel=0)
        else:
            assert ours.per_class[name] is None
    np.testing.assert_array_equal(ours.precision, p)
    # COCO's AP50 (101-point) and VOC's all-point AP50 are close, not equal.
    voc = voc_evaluate(truths, dets, classes=classes)
    assert abs(voc.ap["c1"] - ours.per_class_ap50["c1"]) < 0.02


def test_to_coco_ids_and_fields():
    truths = [gt("a", [[1, 2, 11, 22], A], [2, 1], difficult=[False, True]), gt("b", [], [])]
    dataset, results = to_coco(truths, [det("b", [[0, 0, 4, 3]], [0.25], [1])], classes=CLASSES)
    assert [c["id"] for c in dataset["categories"]] == [1, 2]
    assert [i["id"] for i in dataset["images"]] == [1, 2]
    first, second = dataset["annotations"]
    assert first == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 20.0],
                     "area": 200.0, "iscrowd": 0}
    assert second["id"] == 2 and second["iscrowd"] == 1
    assert results == [{"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 3.0], "score": 0.25}]
