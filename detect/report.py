"""Evaluation plots (matplotlib, PNG) and a ``report.md`` that embeds them.

Per run, under ``DIR/<run>/``:

``pr_curves.png``
    precision against recall per class (VOC matching at the evaluation IoU): the faint line
    is the raw curve, the solid one the interpolated envelope whose area is the AP, the dot
    the operating point at ``--conf``.
``confusion.png``
    the detection confusion matrix at ``--conf`` (rows: ground truth, columns: prediction,
    with a background row for false alarms and a background column for misses); cells are
    coloured by share of their row.
``ap_per_class.png``
    VOC AP and COCO AP@[.5:.95] per class, best at the top, worst at the bottom.
``hardest.png``
    the images with most misses plus false alarms at ``--conf``, ground truth and
    predictions drawn.

With several runs, ``DIR/comparison.png`` sets their per-class AP side by side.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the original image throughout.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window, works without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patches  # noqa: E402

from detect.evaluation import RunResult, class_rows  # noqa: E402
from detect.fsutil import atomic_open, write_atomic  # noqa: E402
from detect.metrics import ConfusionResult, Detections, GroundTruth, VocResult, match_image  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["plot_ap_bars", "plot_comparison", "plot_confusion", "plot_gallery", "plot_pr_curves", "write_report"]

_DPI = 110


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_pr_curves(voc: VocResult, path: Path, *, confusion: ConfusionResult | None = None, title: str = "") -> Path:
    """Precision-recall curve of every class with ground truth, one axes."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    present = [c for c in voc.classes if voc.ap[c] is not None]
    for color, name in zip(_colors(len(present)), present):
        rec, prec = voc.recall[name], voc.precision[name]
        if rec.size:
            envelope = np.maximum.accumulate(prec[::-1])[::-1]
            ax.plot(rec, prec, color=color, alpha=0.3, linewidth=0.8)
            ax.step(np.r_[0.0, rec], np.r_[envelope[0], envelope], where="pre", color=color, linewidth=1.8,
                    label=f"{name}  AP {voc.ap[name]:.3f}")
        else:
            ax.plot([], [], color=color, label=f"{name}  AP 0 (no detection)")
        above = confusion is not None and rec.size and (voc.scores[name] >= confusion.score_threshold).any()
        if above and confusion.recall.get(name) is not None:
            ax.plot(confusion.recall[name], confusion.precision[name], "o", color=color, markersize=6,
                    markeredgecolor="black")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    metric = "11-point" if voc.use_07_metric else "all-point"
    mean = "-" if math.isnan(voc.map) else f"{voc.map:.3f}"
    ax.set_title(f"{title}  VOC mAP@{voc.iou_threshold:g} ({metric}) = {mean}".strip())
    ax.grid(alpha=0.3)
    if present:
        suffix = f"; dots: score >= {confusion.score_threshold:g}" if confusion is not None else ""
        ax.legend(loc="lower left", fontsize=8, title=f"classes{suffix}", title_fontsize=8)
    absent = [c for c in voc.classes if voc.ap[c] is None]
    if absent:
        ax.text(0.99, 0.01, "no ground truth: " + ", ".join(absent), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="gray")
    return _save(fig, path)


def plot_confusion(confusion: ConfusionResult, path: Path, *, title: str = "") -> Path:
    """The (K+1) x (K+1) detection confusion matrix, counts written in the cells."""
    m = confusion.matrix.astype(float)
    n = m.shape[0]
    row_sums = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row_sums, out=np.zeros_like(m), where=row_sums > 0)
    # The background row holds raw false-alarm counts; scale it by its own largest cell.
    if m[-1].max() > 0:
        share[-1] = m[-1] / m[-1].max()
    size = max(4.5, 0.8 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.6 else "black")
    labels = list(confusion.labels)
    ax.set_xticks(range(n), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title}  score >= {confusion.score_threshold:g}, IoU >= {confusion.iou_threshold:g}".strip(),
                 fontsize=10)
    return _save(fig, path)


def plot_ap_bars(voc: VocResult, path: Path, *, coco_per_class: dict[str, float | None] | None = None,
                 title: str = "") -> Path:
    """Horizontal bars of AP per class, best at the top; classes without ground truth last."""
    present = sorted((c for c in voc.classes if voc.ap[c] is not None), key=lambda c: -voc.ap[c])
    absent = [c for c in voc.classes if voc.ap[c] is None]
    names = present + absent
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.4, max(2.2, 0.42 * len(names) + 1.2)))
    h = 0.38 if coco_per_class else 0.7
    voc_vals = [voc.ap[c] or 0.0 for c in names]
    ax.barh(y - (h / 2 if coco_per_class else 0), voc_vals, height=h, color="tab:blue",
            label=f"VOC AP@{voc.iou_threshold:g}")
    if coco_per_class:
        ax.barh(y + h / 2, [coco_per_class.get(c) or 0.0 for c in names], height=h, color="tab:orange",
                label="COCO AP@[.5:.95]")
    for yi, c in zip(y, names):
        label = "no ground truth" if voc.ap[c] is None else f"{voc.ap[c]:.3f}"
        ax.text((voc.ap[c] or 0.0) + 0.01, yi - (h / 2 if coco_per_class else 0), label, va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("average precision")
    ax.set_title(title or "AP per class", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


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
    """The ``count`` images with the most misses plus false alarms at the confusion's score
    threshold: ground truth found (green), missed (yellow, thick), detections that are true
    positives (blue, dashed) and false alarms (red). None when no image has an error."""
    from PIL import Image

    by_image = {d.image: d for d in detections}
    ranked = sorted(
        ((fp + fn, fn, fp, i) for i, t in enumerate(truths)
         for _, fp, fn in [confusion.per_image.get(t.image, (0, 0, 0))] if fp + fn > 0),
        key=lambda x: (-x[0], x[3]),
    )[:count]
    if not ranked:
        return None
    cols = min(3, len(ranked))
    rows = math.ceil(len(ranked) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    k = len(classes)
    for ax, (_, fn, fp, i) in zip(axes.ravel(), ranked):
        t = truths[i]
        d = by_image.get(t.image)
        if d is None:
            d = Detections(t.image, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
        keep = d.scores >= confusion.score_threshold
        shown = Detections(d.image, d.boxes[keep], d.scores[keep], d.labels[keep])
        tp, ignored, found = match_image(t, shown, num_classes=k, iou_threshold=confusion.iou_threshold)
        try:
            with Image.open(image_paths[i]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except OSError as exc:
            log.warning("gallery: cannot read %s: %s", image_paths[i], exc)
        for box, label, hit, diff in zip(t.boxes, t.labels, found, t.difficult):
            color, lw = ("limegreen", 1.5) if hit or diff else ("yellow", 3.0)
            ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor=color, linewidth=lw, linestyle=":" if diff else "-"))
        for box, label, score, good, ign in zip(shown.boxes, shown.labels, shown.scores, tp, ignored):
            color = "deepskyblue" if good or ign else "red"
            ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor=color, linewidth=1.3, linestyle="--" if good else "-"))
            if not good:
                ax.text(box[0], box[1] - 2, f"{classes[label - 1]} {score:.2f}", color="white", fontsize=6,
                        va="bottom", bbox={"facecolor": color, "alpha": 0.7, "pad": 1, "edgecolor": "none"})
        ax.set_title(f"{t.image}: {fn} missed, {fp} false", fontsize=9)
    handles = [
        patches.Patch(edgecolor="limegreen", fill=False, label="ground truth, found"),
        patches.Patch(edgecolor="yellow", fill=False, linewidth=3, label="ground truth, missed"),
        patches.Patch(edgecolor="deepskyblue", fill=False, linestyle="--", label="detection, correct"),
        patches.Patch(edgecolor="red", fill=False, label="detection, false (class score)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{title}  hardest images at score >= {confusion.score_threshold:g}".strip(), fontsize=11)
    return _save(fig, path, tight=False)


def plot_comparison(results: Sequence[RunResult], path: Path) -> Path:
    """Grouped bars: VOC AP per class (and the mean) for every run."""
    classes: dict[str, None] = {}
    for r in results:
        for c in r.classes:
            classes.setdefault(c, None)
    names = ["mean", *classes]
    x = np.arange(len(names))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(names) * max(1, len(results) / 2)), 4.2))
    for i, (color, r) in enumerate(zip(_colors(len(results)), results)):
        vals = [0.0 if math.isnan(r.voc.map) else r.voc.map] + [r.voc.ap.get(c) or 0.0 for c in classes]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width=width, color=color, label=("* " if r.best else "") + r.name)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"VOC AP@{results[0].voc.iou_threshold:g}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("runs compared")
    return _save(fig, path)


def _save(fig, path: Path, *, tight: bool = True) -> Path:
    try:
        if tight:
            fig.tight_layout()
        with atomic_open(path, "wb", fsync=False) as fh:
            fig.savefig(fh, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: Path, results: Sequence[RunResult], *, settings: dict[str, Any],
                 table_markdown: str) -> Path:
    """Write every plot for every run and ``out_dir/report.md``; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iou, conf = settings["iou"], settings["conf"]
    metric = "11-point (VOC2007)" if settings.get("voc07") else "all-point (VOC2010+)"
    md = [
        "# Evaluation report",
        "",
        f"Split `{settings['split']}`; VOC AP at IoU >= {iou:g}, {metric}; COCO numbers by pycocotools; "
        f"precision/recall/F1, confusion matrix and hardest images at score >= {conf:g}. "
        f"Speed: model time per image on `{settings['device']}`, batch {settings['batch_size']}, first batch "
        "excluded. `*` marks the best VOC mAP; `-` means no ground truth (absent, not 0).",
        "",
        table_markdown,
        "",
    ]
    if len(results) > 1:
        plot_comparison(results, out_dir / "comparison.png")
        md += ["![runs compared](comparison.png)", ""]
    used: set[str] = set()
    for r in results:
        slug = _slug(r.name)
        while slug in used:
            slug += "_"
        used.add(slug)
        run_dir = out_dir / slug
        title = r.name
        plot_pr_curves(r.voc, run_dir / "pr_curves.png", confusion=r.confusion, title=title)
        plot_confusion(r.confusion, run_dir / "confusion.png", title=title)
        plot_ap_bars(r.voc, run_dir / "ap_per_class.png", coco_per_class=r.coco.per_class, title=f"{title}: AP per class")
        gallery = plot_gallery(r.truths, r.detections, r.eval_set.image_paths, r.confusion,
                               run_dir / "hardest.png", classes=r.classes, title=title)
        header, rows = class_rows(r)
        c = r.confusion
        cm_rows = [[c.labels[i], *[str(int(v)) for v in c.matrix[i]]] for i in range(len(c.labels))]
        md += [
            f"## {r.name}{' (best)' if r.best else ''}",
            "",
            f"{r.kind} `{r.source}`, backbone {r.backbone}; {r.eval_set.describe()}, split: "
            f"{r.eval_set.split_source}.",
            "",
            _md_table(header, rows),
            "",
            "Confusion matrix (rows: ground truth, columns: prediction):",
            "",
            _md_table(["true \\ predicted", *c.labels], cm_rows),
            "",
            f"![PR curves]({slug}/pr_curves.png) ![AP per class]({slug}/ap_per_class.png)",
            "",
            f"![confusion matrix]({slug}/confusion.png)",
            "",
        ]
        if gallery is not None:
            md += [f"![hardest images]({slug}/hardest.png)", ""]
        else:
            md += ["No image has a miss or a false alarm at this threshold.", ""]
    return write_atomic(out_dir / "report.md", "\n".join(md))
