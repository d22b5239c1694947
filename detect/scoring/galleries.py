"""Galleries of images with their boxes drawn: the hardest, the easiest and the falsely alarmed
images of an evaluation (:func:`plot_gallery`, :func:`plot_easiest`, :func:`plot_false_alarms`),
and pairs of an annotation and a model box (:func:`plot_box_pairs`, for the label audit).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the original image throughout.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import patches

from detect.common.types import Detections, GroundTruth
from detect.data.images import ImageError, read_image
from detect.scoring.figures import save_png, subplots
from detect.scoring.metrics import ConfusionResult, box_iou, match_image

log = logging.getLogger(__name__)

__all__ = ["BoxPair", "FalseAlarm", "plot_box_pairs", "plot_easiest", "plot_false_alarms", "plot_gallery",
           "select_easiest", "select_false_alarms", "select_hardest"]


def _shown(d: Detections | None, key: str, score_threshold: float) -> Detections:
    """The detections of image ``key`` at or above the threshold (an empty set when none)."""
    if d is None:
        return Detections(key, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    keep = d.scores >= score_threshold
    return Detections(d.image, d.boxes[keep], d.scores[keep], d.labels[keep])


def select_hardest(truths: Sequence[GroundTruth], confusion: ConfusionResult, *, count: int = 6) -> list[int]:
    """Indices into ``truths`` of the hardest images.

    Rule: images with at least one miss or false alarm at the confusion's score threshold
    (``confusion.per_image``), most misses plus false alarms first; ties in input order.
    """
    ranked = sorted(
        ((fp + fn, i) for i, t in enumerate(truths)
         for _, fp, fn in [confusion.per_image.get(t.image, (0, 0, 0))] if fp + fn > 0),
        key=lambda x: (-x[0], x[1]),
    )
    return [i for _, i in ranked[:count]]


def select_easiest(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], confusion: ConfusionResult, *,
    classes: Sequence[str], count: int = 6,
) -> list[tuple[int, float]]:
    """``(index into truths, lowest correct score)`` of the images the model is surest of.

    Rule: images with at least one object that is not ``difficult``, where at the
    confusion's score threshold every such object is found and there is no false alarm;
    ranked by the lowest score among their correct detections, highest first (the top
    image is the one whose least certain find is still the most certain); ties in input
    order.
    """
    by_image = {d.image: d for d in detections}
    ranked = []
    for i, t in enumerate(truths):
        tp_count, fp, fn = confusion.per_image.get(t.image, (0, 0, 0))
        if fp or fn or not (~t.difficult).any():
            continue
        shown = _shown(by_image.get(t.image), t.image, confusion.score_threshold)
        tp, _, _ = match_image(t, shown, num_classes=len(classes), iou_threshold=confusion.iou_threshold)
        if tp.any():
            ranked.append((float(shown.scores[tp].min()), i))
    ranked.sort(key=lambda x: (-x[0], x[1]))
    return [(i, s) for s, i in ranked[:count]]


@dataclass(frozen=True)
class FalseAlarm:
    """One detection at or above the score threshold that matches no object.

    ``box`` is ``(xmin, ymin, xmax, ymax)`` in original-image pixels, ``label`` in ``1..K``;
    ``kind`` is ``"wrong class"`` (it overlaps an object of another class at the IoU
    threshold), ``"duplicate"`` (an object of its class it overlaps was already claimed by a
    higher score), ``"misplaced"`` (best IoU with any object 0.1 up to the threshold) or
    ``"background"``; ``why`` says it in words.
    """

    index: int  # into the truths
    image: str
    box: tuple[float, float, float, float]
    label: int
    score: float
    kind: str
    why: str


def select_false_alarms(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], *, classes: Sequence[str],
    score_threshold: float, iou_threshold: float, count: int = 6,
) -> list[FalseAlarm]:
    """The ``count`` most confident false alarms.

    Rule: every detection with score >= ``score_threshold`` that VOC matching (as in
    :func:`detect.scoring.metrics.match_image`, at ``iou_threshold``) neither counts as a true
    positive nor ignores (on a ``difficult`` object); highest score first, ties by image
    order, then detection order.
    """
    by_image = {d.image: d for d in detections}
    found: list[tuple[float, int, int, FalseAlarm]] = []
    for i, t in enumerate(truths):
        shown = _shown(by_image.get(t.image), t.image, score_threshold)
        if not len(shown.scores):
            continue
        tp, ignored, _ = match_image(t, shown, num_classes=len(classes), iou_threshold=iou_threshold)
        ious = box_iou(shown.boxes, t.boxes) if len(t.boxes) else np.zeros((len(shown.scores), 0))
        for j in np.flatnonzero(~tp & ~ignored):
            label, score = int(shown.labels[j]), float(shown.scores[j])
            kind, why = "background", "on background"
            if ious.shape[1]:
                g = int(np.argmax(ious[j]))
                best, other = float(ious[j, g]), classes[int(t.labels[g]) - 1]
                if best >= iou_threshold and int(t.labels[g]) != label:
                    kind, why = "wrong class", f"wrong class: the object is a {other}"
                elif best >= iou_threshold:
                    kind, why = "duplicate", f"duplicate of a {other} already found"
                elif best >= 0.1:  # rounded down, so 0.497 never reads as the 0.5 it missed
                    kind, why = "misplaced", f"misplaced: IoU {math.floor(best * 100) / 100:.2f} with a {other}"
            alarm = FalseAlarm(i, t.image, tuple(float(v) for v in shown.boxes[j]), label, score, kind, why)
            found.append((-score, i, int(j), alarm))
    found.sort(key=lambda x: x[:3])
    return [a for *_, a in found[:count]]


def _draw_image(ax, truth: GroundTruth, shown: Detections, image_path: Path, *, classes: Sequence[str],
                iou_threshold: float, highlight: FalseAlarm | None = None, label_correct: bool = False) -> None:
    """One panel: the image, ground truth found (green) or missed (yellow, thick), detections
    correct (blue, dashed; labelled too with ``label_correct``) or false (red, labelled);
    ``highlight`` in magenta, thick."""
    tp, ignored, found = match_image(truth, shown, num_classes=len(classes), iou_threshold=iou_threshold)
    try:  # the one decode path: a FIFO or a decompression bomb is refused here too
        ax.imshow(read_image(image_path))
    except ImageError as exc:
        log.warning("gallery: %s", exc)
    for box, hit, diff in zip(truth.boxes, found, truth.difficult):
        color, lw = ("limegreen", 1.5) if hit or diff else ("yellow", 3.0)
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=color, linewidth=lw, linestyle=":" if diff else "-"))
    # Beside a highlighted false alarm the other detections are drawn faint.
    faint = {"alpha": 0.35, "linewidth": 0.8} if highlight is not None else {"linewidth": 1.3}
    for box, label, score, good, ign in zip(shown.boxes, shown.labels, shown.scores, tp, ignored):
        color = "deepskyblue" if good or ign else "red"
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=color, linestyle="--" if good else "-", **faint))
        if (label_correct or not good) and highlight is None:
            ax.text(box[0], box[1] - 2, f"{classes[label - 1]} {score:.2f}", color="white", fontsize=6,
                    va="bottom", bbox={"facecolor": "tab:blue" if good else color, "alpha": 0.7, "pad": 1,
                                       "edgecolor": "none"})
    if highlight is not None:
        x0, y0, x1, y1 = highlight.box
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="magenta", linewidth=3.0))
        # Inside the box's top-left corner, so it never runs into the panel's title.
        ax.text(x0 + 2, y0 + 2, f"{classes[highlight.label - 1]} {highlight.score:.2f}", color="white", fontsize=7,
                va="top", bbox={"facecolor": "magenta", "alpha": 0.8, "pad": 1, "edgecolor": "none"})


_LEGEND = [
    ("limegreen", "-", 1.5, "ground truth, found"),
    ("yellow", "-", 3.0, "ground truth, missed"),
    ("deepskyblue", "--", 1.3, "detection, correct"),
    ("red", "-", 1.3, "detection, false (class score)"),
]


def _gallery(panels: Sequence[tuple[str, GroundTruth, Detections, Path, FalseAlarm | None]], path: Path, *,
             classes: Sequence[str], iou_threshold: float, title: str, extra_legend=(),
             label_correct: bool = False) -> Path:
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    # At least two panels wide, so the title and the legend fit above and below a single panel.
    fig, axes = subplots(rows, cols, figsize=(max(5.2 * cols, 10.4), 4.4 * rows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (caption, truth, shown, image_path, highlight) in zip(axes.ravel(), panels):
        _draw_image(ax, truth, shown, image_path, classes=classes, iou_threshold=iou_threshold, highlight=highlight,
                    label_correct=label_correct)
        ax.set_title(caption, fontsize=9)
    handles = [patches.Patch(edgecolor=c, fill=False, linestyle=ls, linewidth=lw,
                             label=lab + (" (class score)" if label_correct and c == "deepskyblue" else ""))
               for c, ls, lw, lab in [*_LEGEND, *extra_legend]]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path, tight=False)


def plot_gallery(
    truths: Sequence[GroundTruth],
    detections: Sequence[Detections],
    image_paths: Sequence[Path],
    confusion: ConfusionResult,
    path: Path,
    *,
    classes: Sequence[str],
    count: int = 6,
    title: str = "",
) -> Path | None:
    """The hardest images (:func:`select_hardest`) at the confusion's score threshold:
    ground truth found (green), missed (yellow, thick), detections that are true positives
    (blue, dashed) and false alarms (red). None when no image has an error."""
    by_image = {d.image: d for d in detections}
    chosen = select_hardest(truths, confusion, count=count)
    if not chosen:
        return None
    panels = []
    for i in chosen:
        t = truths[i]
        _, fp, fn = confusion.per_image[t.image]
        panels.append((f"{t.image}: {fn} missed, {fp} false", t,
                       _shown(by_image.get(t.image), t.image, confusion.score_threshold), image_paths[i], None))
    return _gallery(panels, path, classes=classes, iou_threshold=confusion.iou_threshold,
                    title=f"{title}  hardest images: most misses + false alarms at score >= "
                          f"{confusion.score_threshold:g}".strip())


def plot_easiest(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], image_paths: Sequence[Path],
    confusion: ConfusionResult, path: Path, *, classes: Sequence[str], count: int = 6, title: str = "",
) -> tuple[Path | None, list[tuple[int, float]]]:
    """The easiest images (:func:`select_easiest`), drawn like :func:`plot_gallery`; returns
    the figure (None when no image has every object found and no false alarm) and the
    selection."""
    by_image = {d.image: d for d in detections}
    chosen = select_easiest(truths, detections, confusion, classes=classes, count=count)
    if not chosen:
        return None, []
    panels = []
    for i, low in chosen:
        t = truths[i]
        n = int((~t.difficult).sum())
        panels.append((f"{t.image}: {n}/{n} found, lowest score {low:.2f}", t,
                       _shown(by_image.get(t.image), t.image, confusion.score_threshold), image_paths[i], None))
    path = _gallery(panels, path, classes=classes, iou_threshold=confusion.iou_threshold,
                    title=f"{title}  easiest images: all found, no false alarm at score >= "
                          f"{confusion.score_threshold:g}, surest first".strip(), label_correct=True)
    return path, chosen


def plot_false_alarms(
    truths: Sequence[GroundTruth], detections: Sequence[Detections], image_paths: Sequence[Path],
    confusion: ConfusionResult, path: Path, *, classes: Sequence[str], count: int = 6, title: str = "",
) -> tuple[Path | None, list[FalseAlarm]]:
    """The most confident false alarms (:func:`select_false_alarms`), one panel each, the
    alarm in magenta; returns the figure (None when there is no false alarm) and the alarms."""
    alarms = select_false_alarms(truths, detections, classes=classes, score_threshold=confusion.score_threshold,
                                 iou_threshold=confusion.iou_threshold, count=count)
    if not alarms:
        return None, []
    by_image = {d.image: d for d in detections}
    panels = [(f"{a.image}: {classes[a.label - 1]} {a.score:.2f}\n{a.why}", truths[a.index],
               _shown(by_image.get(a.image), a.image, confusion.score_threshold), image_paths[a.index], a)
              for a in alarms]
    path = _gallery(panels, path, classes=classes, iou_threshold=confusion.iou_threshold,
                    title=f"{title}  most confident false alarms (score >= {confusion.score_threshold:g}), "
                          "highest score first".strip(),
                    extra_legend=[("magenta", "-", 3.0, "this false alarm")])
    return path, alarms


@dataclass(frozen=True)
class BoxPair:
    """One panel of :func:`plot_box_pairs`: an image with the annotated box (green) and the
    model's box (magenta), either of which may be None, and a caption."""

    caption: str
    image_path: Path
    annotated: tuple[float, float, float, float] | None
    annotated_label: str
    model: tuple[float, float, float, float] | None
    model_label: str


def plot_box_pairs(panels: Sequence[BoxPair], path: Path, *, title: str, zoom: float = 3.0) -> Path:
    """A gallery of annotation-vs-model pairs (``detect.audit``'s ``audit.png``), three
    panels a row; each panel shows the part of the image around both boxes (``zoom`` times
    their extent, the whole image when that is larger)."""
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = subplots(rows, cols, figsize=(max(5.2 * cols, 10.4), 4.4 * rows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes.ravel(), panels):
        try:  # the one decode path
            image = read_image(p.image_path)
        except ImageError as exc:
            log.warning("gallery: %s", exc)
            image = None
        if image is not None:
            ax.imshow(image)
        boxes = [b for b in (p.annotated, p.model) if b is not None]
        for box, color, style, label in ((p.annotated, "limegreen", "-", p.annotated_label),
                                         (p.model, "magenta", "--", p.model_label)):
            if box is None:
                continue
            x0, y0, x1, y1 = box
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                                           linewidth=2.2, linestyle=style))
            ax.text(x0 + 2, y0 + 2 if color == "magenta" else y1 - 2, label, color="white", fontsize=7,
                    va="top" if color == "magenta" else "bottom",
                    bbox={"facecolor": color, "alpha": 0.75, "pad": 1, "edgecolor": "none"})
        if image is not None and boxes:
            h, w = image.shape[:2]
            bx = np.array(boxes)
            cx, cy = (bx[:, 0].min() + bx[:, 2].max()) / 2, (bx[:, 1].min() + bx[:, 3].max()) / 2
            half = max(bx[:, 2].max() - bx[:, 0].min(), bx[:, 3].max() - bx[:, 1].min()) * zoom / 2
            ax.set_xlim(max(0, cx - half), min(w, cx + half))
            ax.set_ylim(min(h, cy + half), max(0, cy - half))
        ax.set_title(p.caption, fontsize=8)
    handles = [patches.Patch(edgecolor="limegreen", fill=False, linewidth=2.2, label="annotation"),
               patches.Patch(edgecolor="magenta", fill=False, linestyle="--", linewidth=2.2, label="model")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path, tight=False)
