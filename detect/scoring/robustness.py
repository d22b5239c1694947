"""The robustness report's numbers, tables and heat-map: a model's val mAP under each corruption
of :mod:`detect.scoring.corruptions` at each severity, against its clean mAP.

``relative robustness`` = mean corrupted mAP / clean mAP (ImageNet-C's "relative" view, with mAP
for accuracy): 1.0 means the corruptions cost nothing; 0.5, that they halve the mAP on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from detect.scoring.figures import save_png, subplots

__all__ = ["Robustness", "plot_robustness", "robustness_grid", "robustness_summary"]


@dataclass
class Robustness:
    """One model's mAP clean and under each corruption: ``maps[name][severity]``."""

    clean: float
    maps: dict[str, dict[int, float]] = field(default_factory=dict)
    iou: float = 0.5

    def cells(self) -> list[float]:
        return [v for by_sev in self.maps.values() for v in by_sev.values()]

    def mean_corrupted(self) -> float:
        cells = [v for v in self.cells() if not math.isnan(v)]
        return sum(cells) / len(cells) if cells else float("nan")

    def relative(self) -> float:
        """Mean corrupted mAP / clean mAP (NaN when the clean mAP is 0 or unknown)."""
        return self.mean_corrupted() / self.clean if self.clean and not math.isnan(self.clean) else float("nan")

    def per_corruption(self) -> dict[str, float]:
        return {n: sum(s.values()) / len(s) for n, s in self.maps.items() if s}

    def as_dict(self) -> dict[str, Any]:
        """What ``--json`` holds: ``clean``, ``corrupted`` (name -> severity -> mAP), ``mean_corrupted``,
        ``relative``, ``iou``."""
        return {"iou": self.iou, "clean": self.clean,
                "corrupted": {n: {str(s): v for s, v in by.items()} for n, by in self.maps.items()},
                "mean_corrupted": self.mean_corrupted(), "relative": self.relative()}


def _f(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3f}"


def robustness_summary(named: Sequence[tuple[str, Robustness]]) -> tuple[list[str], list[list[str]]]:
    """One row per model: clean mAP, mean corrupted mAP, relative robustness, and the mean over
    severities of each corruption."""
    names = list(dict.fromkeys(n for _, r in named for n in r.maps))
    iou = named[0][1].iou if named else 0.5
    header = ["run", f"clean mAP@{iou:g}", "mean corrupted", "relative", *names]
    rows = []
    for run, r in named:
        per = r.per_corruption()
        rows.append([run, _f(r.clean), _f(r.mean_corrupted()), _f(r.relative()), *[_f(per.get(n, float("nan"))) for n in names]])
    return header, rows


def robustness_grid(r: Robustness) -> tuple[list[str], list[list[str]]]:
    """Corruption x severity: the mAP in every cell, and each corruption's mean."""
    severities = sorted({s for by in r.maps.values() for s in by})
    header = ["corruption", *[f"severity {s}" for s in severities], "mean"]
    rows = [[n, *[_f(by.get(s, float("nan"))) for s in severities], _f(r.per_corruption()[n])]
            for n, by in r.maps.items()]
    return header, rows


def plot_robustness(named: Sequence[tuple[str, Robustness]], path: Path) -> Path:
    """A heat-map per model (rows: corruptions, columns: clean then severities 1-3), mAP in
    each cell, on one colour scale."""
    import numpy as np

    n = len(named)
    rows = list(dict.fromkeys(c for _, r in named for c in r.maps))
    severities = sorted({s for _, r in named for by in r.maps.values() for s in by})
    width = 1.6 + 3.2 * n
    fig, axes = subplots(1, n, figsize=(width, 0.45 * len(rows) + 1.6), squeeze=False)
    # Room for the corruption names left of the first map; the others share its rows.
    fig.subplots_adjust(left=1.4 / width, wspace=0.08)
    top = max([r.clean for _, r in named if not math.isnan(r.clean)] + [1e-9])
    image = None
    for k, (ax, (run, r)) in enumerate(zip(axes[0], named)):
        grid = np.array([[r.clean, *[r.maps.get(c, {}).get(s, np.nan) for s in severities]] for c in rows], dtype=float)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=top, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, _f(grid[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(grid.shape[1]), ["clean", *[str(s) for s in severities]])
        ax.set_yticks(range(len(rows)), rows if k == 0 else [])
        ax.set_xlabel("severity")
        ax.set_title(f"{run}: relative {_f(r.relative())}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="mAP", shrink=0.8)
    return save_png(fig, path, tight=False)
