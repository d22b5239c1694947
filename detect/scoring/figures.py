"""Figures drawn to PNG files: matplotlib's object API with the Agg canvas (no pyplot, so no
window, no display needed, and the user's matplotlib backend is left alone), atomic writes,
and line plots that carry the numbers they draw (:func:`read_plotted_data`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detect.common.files import atomic_open

__all__ = ["colors", "figure_data", "read_plotted_data", "save_png", "subplots"]

DPI = 110
DATA_KEY = "plotted-data"  # the PNG text chunk that holds a line plot's numbers


def subplots(*grid: int, figsize: tuple[float, float], layout: str | None = None, **kwargs: Any):
    """A figure and its axes drawn by Agg to files: matplotlib's object API, not pyplot, so
    no window opens, no display is needed, and the user's backend choice is left alone."""
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kwargs)


def colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_data(fig) -> dict[str, Any]:
    """What the figure's axes draw: axes title -> line label -> ``{"x": [...], "y": [...]}``
    (lines whose label starts with ``_``, matplotlib's "not in the legend", are left out)."""
    suptitle = fig._suptitle  # Figure.get_suptitle() needs matplotlib 3.8; we support 3.7
    data: dict[str, Any] = {"title": suptitle.get_text() if suptitle is not None else "", "axes": {}}
    for ax in fig.axes:
        lines = {}
        for line in ax.get_lines():
            label = str(line.get_label())
            if label.startswith("_"):
                continue
            lines[label] = {"x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()]}
        data["axes"][ax.get_title()] = lines
    return data


def read_plotted_data(path: Path) -> dict[str, Any]:
    """The numbers a line plot of this module drew (see :func:`figure_data`), read back
    from its PNG; ``{}`` when it carries none."""
    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(DATA_KEY)
    return json.loads(text) if text else {}


def save_png(fig, path: Path, *, tight: bool = True, embed: bool = False) -> Path:
    """Write the figure as PNG, atomically; ``embed``: with its line data as a text chunk."""
    try:
        if tight:
            fig.tight_layout()
        metadata = {DATA_KEY: json.dumps(figure_data(fig))} if embed else None
        with atomic_open(path, "wb", fsync=False) as fh:
            fig.savefig(fh, format="png", dpi=DPI, metadata=metadata)
    finally:
        fig.clear()  # a pyplot-free figure is freed with its last reference; drop the artists now
    return path
