"""Drawing detections on a frame: a box per detection, its class and score on a label.

Defect classes are drawn in warning colours (red, orange, magenta) with a thicker line;
the other classes in calm ones (greens, blues), so a defect stands out at a glance on a
screen at the line. Labels sit above the box (inside it when the box touches the top
edge), white or black text on a filled tab of the box colour, sized to the image.

Works on ``H x W x 3`` uint8 RGB arrays with OpenCV; torch-free.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["DEFECT_COLOURS", "NORMAL_COLOURS", "class_colours", "draw_detections"]

# RGB. Warning colours for defects; calm, clearly different ones for the rest.
DEFECT_COLOURS = ((230, 25, 25), (255, 140, 0), (220, 0, 200), (255, 215, 0))
NORMAL_COLOURS = ((0, 200, 80), (30, 144, 255), (0, 190, 190), (120, 120, 255), (90, 160, 40), (70, 130, 180))


def class_colours(classes: Sequence[str], defect_classes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per class: defects from :data:`DEFECT_COLOURS`, the others from :data:`NORMAL_COLOURS`."""
    out: dict[str, tuple[int, int, int]] = {}
    d = n = 0
    for c in classes:
        if c in defect_classes:
            out[c] = DEFECT_COLOURS[d % len(DEFECT_COLOURS)]
            d += 1
        else:
            out[c] = NORMAL_COLOURS[n % len(NORMAL_COLOURS)]
            n += 1
    return out


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    names: Sequence[str],
    scores: Sequence[float],
    *,
    defect_classes: Sequence[str] = (),
    colours: dict[str, tuple[int, int, int]] | None = None,
    line_width: int | None = None,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image`` (``H x W x 3`` uint8 RGB) with each box ``(xmin, ymin, xmax,
    ymax)`` in pixels drawn and labelled ``"<class> <score>"`` (``labels[i]`` in place of the
    class, e.g. ``"#12 Lata"`` with a track id); lowest scores are drawn first so the most
    confident labels stay on top."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    colours = colours or class_colours(sorted(set(names), key=list(names).index), defect_classes)
    base = line_width or max(1, round((h + w) / 600))
    scale = max(0.35, min(1.2, (h + w) / 1400))
    thick_text = max(1, round(scale * 1.5))
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    for i in order:
        name, score = names[i], float(scores[i])
        colour = colours.get(name, (255, 255, 255))
        lw = base + 1 if name in defect_classes else base
        x0, y0, x1, y1 = (int(round(float(v))) for v in boxes[i])
        x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
        x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, lw, cv2.LINE_AA)
        text = f"{labels[i] if labels is not None else name} {score:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick_text)
        tab_h = th + baseline + 2
        top = y0 - tab_h if y0 - tab_h >= 0 else y0  # above the box, or inside it at the top edge
        left = min(x0, max(0, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + tab_h), colour, -1)
        cv2.putText(out, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, _text_colour(colour),
                    thick_text, cv2.LINE_AA)
    return out
