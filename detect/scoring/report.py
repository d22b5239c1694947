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
    the images with most misses plus false alarms at ``--conf`` (:func:`select_hardest`),
    ground truth and predictions drawn.
``easiest.png``
    the images the model is surest of (:func:`select_easiest`): every object found, no false
    alarm at ``--conf``, ranked by the lowest score among their correct detections.
``false_alarms.png``
    the most confident false alarms (:func:`select_false_alarms`): detections at ``--conf``
    or above that match no object, highest score first, each with why it is false (another
    class, a duplicate, misplaced, or background).

``DIR/training_curves.png`` draws the training curves of every run evaluated (train loss,
val loss, val mAP@0.5 per epoch; :func:`plot_training_comparison`), and with several runs
``DIR/comparison.png`` sets their per-class AP side by side.

The galleries are :mod:`detect.scoring.galleries`; the drawing helpers
:mod:`detect.scoring.figures`. During training, :func:`plot_training_curves` draws a run's ``results.png`` from its
``results.csv`` (:func:`read_results`). The line plots carry the numbers they draw in the
PNG's text chunk ``plotted-data`` (:func:`detect.scoring.figures.read_plotted_data`), so a figure can be checked
against its data.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the original image throughout.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from detect.common.files import write_atomic
from detect.scoring.evaluation import RunResult, class_rows
from detect.scoring.figures import colors, save_png, subplots
from detect.scoring.robustness import plot_robustness, robustness_grid, robustness_summary
from detect.scoring.galleries import plot_easiest, plot_false_alarms, plot_gallery
from detect.scoring.metrics import ConfusionResult, VocResult

log = logging.getLogger(__name__)

__all__ = [
    "plot_ap_bars",
    "plot_comparison",
    "plot_confusion",
    "plot_pr_curves",
    "plot_training_comparison",
    "plot_training_curves",
    "read_results",
    "run_history",
    "write_report",
]

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def plot_pr_curves(voc: VocResult, path: Path, *, confusion: ConfusionResult | None = None, title: str = "") -> Path:
    """Precision-recall curve of every class with ground truth, one axes."""
    fig, ax = subplots(figsize=(6.4, 5.2))
    present = [c for c in voc.classes if voc.ap[c] is not None]
    for color, name in zip(colors(len(present)), present):
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
    return save_png(fig, path)


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
    fig, ax = subplots(figsize=(size, size * 0.9))
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
    return save_png(fig, path)


def plot_ap_bars(voc: VocResult, path: Path, *, coco_per_class: dict[str, float | None] | None = None,
                 title: str = "") -> Path:
    """Horizontal bars of AP per class, best at the top; classes without ground truth last."""
    present = sorted((c for c in voc.classes if voc.ap[c] is not None), key=lambda c: -voc.ap[c])
    absent = [c for c in voc.classes if voc.ap[c] is None]
    names = present + absent
    y = np.arange(len(names))
    fig, ax = subplots(figsize=(6.4, max(2.2, 0.42 * len(names) + 1.2)))
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
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# Galleries: hard, easy and false-alarm images. Each ``select_*`` function states its rule;
# the ``plot_*`` functions draw what it selects.


def plot_comparison(results: Sequence[RunResult], path: Path) -> Path:
    """Grouped bars: VOC AP per class (and the mean) for every run."""
    classes: dict[str, None] = {}
    for r in results:
        for c in r.classes:
            classes.setdefault(c, None)
    names = ["mean", *classes]
    x = np.arange(len(names))
    width = 0.8 / len(results)
    fig, ax = subplots(figsize=(max(6.4, 0.9 * len(names) * max(1, len(results) / 2)), 4.2))
    for i, (color, r) in enumerate(zip(colors(len(results)), results)):
        vals = [0.0 if math.isnan(r.voc.map) else r.voc.map] + [r.voc.ap.get(c) or 0.0 for c in classes]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width=width, color=color, label=("* " if r.best else "") + r.name)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"VOC AP@{results[0].voc.iou_threshold:g}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("runs compared")
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# Training curves


# results.csv column -> (legend label, colour)
_LOSS_LABELS = {
    "loss": ("train loss (sum)", "black"),
    "loss_classifier": ("train: box classifier", "tab:blue"),
    "loss_box_reg": ("train: box regression", "tab:orange"),
    "loss_objectness": ("train: RPN objectness", "tab:green"),
    "loss_rpn_box_reg": ("train: RPN box regression", "tab:purple"),
    "val_loss": ("val loss (sum)", "tab:red"),
}
_MAP_TITLE = "val mAP@0.5 per epoch"
_LOSS_TITLE = "loss per epoch"


def read_results(path: Path) -> list[dict[str, float | None]]:
    """The rows of a ``results.csv`` as numbers (an empty or non-numeric cell is None),
    sorted by epoch; ``[]`` when the file is missing or unreadable."""
    try:
        with Path(path).open(newline="") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    rows = []
    for r in raw:
        row: dict[str, float | None] = {}
        for k, v in r.items():
            try:
                row[k] = float(v) if v not in (None, "") else None
            except ValueError:
                row[k] = None
        if row.get("epoch") is not None:
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return sorted(rows, key=lambda r: r["epoch"])


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["epoch"]), float(r[key])) for r in rows
           if r.get(key) is not None and r.get("epoch") is not None and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def best_epoch(rows: Sequence[dict[str, Any]]) -> tuple[int, float] | None:
    """``(epoch, val mAP@0.5)`` of the first epoch with the highest val mAP@0.5 (the one
    training keeps as ``best.pt``); None when no row has one."""
    xs, ys = _series(rows, "val_map50")
    if not ys:
        return None
    i = int(np.argmax(ys))
    return xs[i], ys[i]


def _epoch_axis(ax, last: int) -> None:
    """Whole epochs 1..last on the x axis (a single epoch too, which would get fractions)."""
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_training_curves(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """A run's ``results.png``: the losses (train sum and components, val sum when
    recorded) and val mAP@0.5 per epoch, the best epoch marked with a star and a dotted line.

    ``rows`` are :func:`read_results` rows (``epoch`` 1-based, ``loss``, ``loss_*``,
    ``val_loss``, ``val_map50``); missing values are left out of their curve.
    """
    fig, (ax_loss, ax_map) = subplots(1, 2, figsize=(11, 5.0))
    for key, (label, color) in _LOSS_LABELS.items():
        xs, ys = _series(rows, key)
        if not xs:
            continue
        main = key in ("loss", "val_loss")
        ax_loss.plot(xs, ys, marker="o", markersize=4 if main else 3, linewidth=2.2 if main else 1.0,
                     linestyle="--" if key == "val_loss" else "-", label=label, color=color,
                     alpha=1.0 if main else 0.8)
    xs, ys = _series(rows, "val_map50")
    ax_map.plot(xs, ys, marker="o", markersize=4, linewidth=2.0, color="tab:blue", label="val mAP@0.5")
    best = best_epoch(rows)
    if best is not None:
        ax_map.plot([best[0]], [best[1]], marker="*", markersize=16, color="gold", markeredgecolor="black",
                    linestyle="none", label=f"best: epoch {best[0]}, mAP {best[1]:.3f}")
        for ax in (ax_loss, ax_map):
            ax.axvline(best[0], color="gray", linestyle=":", linewidth=1.0, label="_best epoch")
    top = max(ys, default=0.0)
    ax_map.set_ylim(0, min(1.05, max(0.1, top * 1.25)))
    ax_loss.set_ylim(bottom=0)
    last = max((int(r["epoch"]) for r in rows if r.get("epoch") is not None), default=1)
    for ax, ylabel, t in ((ax_loss, "loss (mean over the epoch)", _LOSS_TITLE), (ax_map, "VOC mAP@0.5", _MAP_TITLE)):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(t, fontsize=10)
        _epoch_axis(ax, last)
        ax.grid(alpha=0.3)
        # Below the axes: inside, a legend would hide the curves it explains.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(title or "training curves", fontsize=11)
    return save_png(fig, path, embed=True)


def run_history(r: RunResult) -> list[dict[str, Any]]:
    """The per-epoch rows of the run a checkpoint comes from.

    The checkpoint's own ``history`` (epochs up to the checkpoint's), extended by the
    ``results.csv`` beside it when that file is of the same run: its first rows equal the
    recorded history, or, for a checkpoint without history, the folder is named as the
    run. ``[]`` for predictions files and runs without either.
    """
    info = r.checkpoint_info or {}
    recorded = [dict(row) for row in info.get("history") or ()]
    if r.kind != "checkpoint":
        return recorded
    beside = read_results(Path(r.source).parent / "results.csv")

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a.get(k) is None or b.get(k) is None or math.isclose(float(a[k]), float(b[k]), rel_tol=1e-4, abs_tol=1e-6)
                   for k in ("epoch", "loss", "val_map50"))

    if recorded:
        if len(beside) > len(recorded) and all(same(a, b) for a, b in zip(recorded, beside)):
            return beside
        return recorded
    return beside if beside and info.get("run") == Path(r.source).parent.name else []


def plot_training_comparison(runs: Sequence[tuple[str, Sequence[dict[str, Any]], int | None]], path: Path, *,
                             title: str = "") -> Path | None:
    """The training curves of several runs on one figure: train loss, val loss (when any run
    recorded it) and val mAP@0.5 per epoch, one colour per run, a star at the epoch of the
    checkpoint evaluated. ``runs``: ``(name, rows, checkpoint epoch (1-based) or None)``;
    None when no run has a history."""
    runs = [(n, rows, e) for n, rows, e in runs if rows]
    if not runs:
        return None
    keys = [("loss", "train loss (sum) per epoch", "loss (mean over the epoch)")]
    if any(_series(rows, "val_loss")[0] for _, rows, _ in runs):
        keys.append(("val_loss", "val loss (sum) per epoch", "loss (mean over val images)"))
    keys.append(("val_map50", _MAP_TITLE, "VOC mAP@0.5"))
    fig, axes = subplots(1, len(keys), figsize=(5.0 * len(keys), 4.8), squeeze=False, layout="constrained")
    handles = []
    for color, (name, rows, ckpt_epoch) in zip(colors(len(runs)), runs):
        for ax, (key, _, _) in zip(axes[0], keys):
            xs, ys = _series(rows, key)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, color=color, label=name)
            if ckpt_epoch in xs:
                ax.plot([ckpt_epoch], [ys[xs.index(ckpt_epoch)]], marker="*", markersize=13, color=color,
                        markeredgecolor="black", linestyle="none", label=f"{name}: checkpoint evaluated")
        handles.append(line)
    last = max((int(r["epoch"]) for _, rows, _ in runs for r in rows if r.get("epoch") is not None), default=1)
    for ax, (key, t, ylabel) in zip(axes[0], keys):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _epoch_axis(ax, last)
        ax.margins(y=0.1)  # room for the stars at the top
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    star = Line2D([], [], marker="*", markersize=11, color="gray", markeredgecolor="black", linestyle="none",
                      label="checkpoint evaluated")
    fig.legend(handles=[*handles, star], loc="outside lower center", ncol=min(4, len(handles) + 1), fontsize=8,
               frameon=False)
    fig.suptitle(title or "training curves of the runs evaluated (each on its own training data)", fontsize=11)
    return save_png(fig, path, tight=False, embed=True)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _robustness_section(results: Sequence[RunResult], out_dir: Path) -> list[str]:
    """With ``--corruptions``: the summary table, the heat-map and each run's grid."""
    named = [(r.name, r.robustness) for r in results if r.robustness is not None]
    if not named:
        return []
    header, rows = robustness_summary(named)
    plot_robustness(named, out_dir / "robustness.png")
    md = ["## Robustness to camera corruptions", "",
          f"VOC mAP@{named[0][1].iou:g} on the same images corrupted (detect/scoring/corruptions.py: noise, blur, "
          "JPEG, light; three severities, seeded per image); relative = mean corrupted mAP / clean mAP.", "",
          _md_table(header, rows), "", "![robustness heat-map](robustness.png)", ""]
    for name, rob in named:
        header, rows = robustness_grid(rob)
        md += [f"{name}:", "", _md_table(header, rows), ""]
    return md


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
        "excluded. `*` marks the best VOC mAP; `-` means no ground truth (absent, not 0). Training cost, "
        "as each checkpoint records it: minutes, peak memory of the training process (MB), epochs, mean "
        "training loss of the last epoch, mode (backbone stages trained / of) and starting weights; `-` "
        "where a checkpoint records none.",
        "",
        table_markdown,
        "",
    ]
    if len(results) > 1:
        plot_comparison(results, out_dir / "comparison.png")
        md += ["![runs compared](comparison.png)", ""]
    histories = [(r.name, run_history(r), (r.checkpoint_info or {}).get("epoch")) for r in results]
    histories = [(n, rows, None if e is None else int(e) + 1) for n, rows, e in histories]
    curves = plot_training_comparison(histories, out_dir / "training_curves.png")
    if curves is not None:
        drawn = [n for n, rows, _ in histories if rows]
        md += [
            f"Training curves of {', '.join(drawn)} (from each checkpoint's recorded history and the "
            "`results.csv` beside it; each run on its own training data; the star marks the epoch of "
            "the checkpoint evaluated):",
            "",
            "![training curves](training_curves.png)",
            "",
        ]
    md += _robustness_section(results, out_dir)
    md += [
        "Image galleries, per run: **hardest**: the images with the most misses plus false alarms at "
        f"score >= {conf:g}; **easiest**: images where every (non-difficult) object is found and nothing "
        f"else is detected at score >= {conf:g}, ranked by the lowest score among their correct "
        "detections, highest first; **most confident false alarms**: detections at score >= "
        f"{conf:g} that match no object at IoU >= {iou:g}, highest score first, each with why it is "
        "false (another class, a duplicate, misplaced, or background).",
        "",
    ]
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
        paths = r.eval_set.image_paths
        gallery = plot_gallery(r.truths, r.detections, paths, r.confusion,
                               run_dir / "hardest.png", classes=r.classes, title=title)
        easiest, chosen = plot_easiest(r.truths, r.detections, paths, r.confusion, run_dir / "easiest.png",
                                       classes=r.classes, title=title)
        alarms_png, alarms = plot_false_alarms(r.truths, r.detections, paths, r.confusion,
                                               run_dir / "false_alarms.png", classes=r.classes, title=title)
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
        if easiest is not None:
            listed = ", ".join(f"`{r.truths[i].image}` ({low:.2f})" for i, low in chosen)
            md += [f"Easiest images (lowest correct score): {listed}", "", f"![easiest images]({slug}/easiest.png)", ""]
        else:
            md += ["No image has every object found without a false alarm at this threshold.", ""]
        if alarms_png is not None:
            md += ["Most confident false alarms:", "",
                   _md_table(["image", "detected as", "why", "score"],
                             [[f"`{a.image}`", r.classes[a.label - 1], a.why, f"{a.score:.3f}"] for a in alarms],
                             left=3),
                   "", f"![most confident false alarms]({slug}/false_alarms.png)", ""]
        else:
            md += ["No false alarm at this threshold.", ""]
    return write_atomic(out_dir / "report.md", "\n".join(md))
