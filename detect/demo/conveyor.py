"""A demo conveyor video: the demo's cans and bottles, whole and defective, crossing the frame.

``write_conveyor(out, items=40)`` writes ``out/conveyor.mp4`` and ``out/conveyor.json``, the
ground truth: each item's class, when it enters, when its centre crosses the middle of the
frame and when it leaves, and the count per class; and the same truth box by box, as CVAT
exports a video's tracks ("MOT 1.1": ``out/gt/gt.txt``, ``out/gt/labels.txt``,
``out/seqinfo.ini``; :mod:`detect.data.mot`), which ``detect.eval --items`` scores against. :func:`render_conveyor` yields the same
frames with their ground-truth boxes (or the boxes alone, ``draw=False``, which is fast), for
tests of the tracker and the counter that need no model.

The objects are drawn by :mod:`detect.demo.scene` and its sprites (the same sprites the demo model trains
on), 30-50 % of the frame height tall (:data:`ITEM_HEIGHTS`; the demo images hold 12-60 %),
moving left to right at ``speed`` pixels per frame, ``spacing`` pixels apart (centre to
centre, +-20 %), at a height that varies a little around the middle, over a belt with rails. The same options give the same video.

Torch-free (OpenCV, numpy).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from detect.common.files import write_atomic
from detect.data.mot import write_mot
from detect.demo.paint import _Sprite, _u
from detect.demo.scene import DEMO_CLASSES, _Scene

__all__ = ["CONVEYOR_MIX", "ITEM_HEIGHTS", "ConveyorItem", "plan_conveyor", "render_conveyor", "write_conveyor"]

# An item's longest side, as a share of the frame height: the middle of the demo images' range.
ITEM_HEIGHTS = (0.3, 0.5)
# Share of each demo class on the belt: mostly sound, some defective.
CONVEYOR_MIX = {"Lata": 0.35, "Lata_defectuosa": 0.15, "Botella": 0.35, "Botella_defectuosa": 0.15}


@dataclass
class ConveyorItem:
    """One object on the belt; positions are of its box centre, in pixels."""

    id: int
    label: str
    sprite: _Sprite
    start: int  # frame its centre is at x = -width / 2 (just entering)
    cy: float
    speed: float
    width: int

    def cx(self, frame: int) -> float:
        return -self.width / 2 + (frame - self.start) * self.speed

    def crossing(self, frame_width: int) -> int:
        """The first frame its centre is at or past the middle."""
        return self.start + int(np.ceil((frame_width / 2 + self.width / 2) / self.speed))

    def exit(self, frame_width: int) -> int:
        return self.start + int(np.ceil((frame_width + self.width) / self.speed))

    @property
    def defective(self) -> bool:
        return "defect" in self.label


def plan_conveyor(items: int, *, seed: int = 0, size: tuple[int, int] = (320, 240), speed: float = 4.0,
                  spacing: float = 130.0) -> list[ConveyorItem]:
    """The items of a conveyor, in the order they pass."""
    if items < 1 or speed <= 0 or spacing <= 0:
        raise ValueError("items, speed and spacing must be positive")
    width, height = size
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7_777,)))
    scene = _Scene(rng, width, height)
    names = list(CONVEYOR_MIX)
    p = np.array([CONVEYOR_MIX[n] for n in names])
    plan: list[ConveyorItem] = []
    x = 0.0  # how far the belt has moved when the item enters, in pixels
    for i in range(items):
        label = names[int(rng.choice(len(names), p=p / p.sum()))]
        # Drawn at its size on the belt, not drawn small and enlarged: an enlarged sprite is a
        # blurred one, which the demo model never saw.
        sprite = scene._make_sprite(label, _u(rng, -0.5, 0.5), size=height * _u(rng, *ITEM_HEIGHTS))
        h, w = sprite.alpha.shape
        if w > 0.8 * spacing:  # a lying can wider than the gap between items: shrink it to fit
            k = 0.8 * spacing / w
            nw, nh = max(4, int(round(w * k))), max(4, int(round(h * k)))
            sprite = _Sprite(cv2.resize(sprite.rgb, (nw, nh), interpolation=cv2.INTER_AREA),
                             cv2.resize(sprite.alpha, (nw, nh), interpolation=cv2.INTER_AREA))
        nw = sprite.alpha.shape[1]
        cy = height / 2 + _u(rng, -0.08, 0.08) * height
        plan.append(ConveyorItem(i + 1, label, sprite, start=int(round(x / speed)), cy=cy, speed=speed, width=nw))
        x += spacing * _u(rng, 0.8, 1.2)
    return plan


def _belt(width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 95, np.float32)
    img[:, :, 0] -= 8  # a slightly warm grey (BGR)
    for x in range(0, width, 24):
        img[:, x:x + 2] *= 0.8
    rail = max(2, height // 24)
    img[:rail], img[-rail:] = (160, 165, 170), (160, 165, 170)
    return img


def render_conveyor(plan: list[ConveyorItem], *, size: tuple[int, int] = (320, 240), draw: bool = True,
                    seed: int = 0) -> Iterator[tuple[int, np.ndarray | None, list[tuple[int, str, list[float]]]]]:
    """``(frame index, BGR image or None, [(item id, class, [xmin, ymin, xmax, ymax]), ...])``
    for every frame until the last item has left."""
    width, height = size
    background = _belt(width, height)
    rng = np.random.default_rng(seed)
    last = max(item.exit(width) for item in plan)
    for f in range(last + 1):
        canvas = background.copy() if draw else None
        boxes = []
        for item in plan:
            cx = item.cx(f)
            h, w = item.sprite.alpha.shape
            x0, y0 = int(round(cx - w / 2)), int(round(item.cy - h / 2))
            ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
            if ix1 - ix0 < 1 or iy1 - iy0 < 1:
                continue
            sub_alpha = item.sprite.alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
            solid = sub_alpha > 0.5
            cols, rows = np.flatnonzero(solid.any(axis=0)), np.flatnonzero(solid.any(axis=1))
            if cols.size >= 2 and rows.size >= 2:
                boxes.append((item.id, item.label, [float(ix0 + cols[0]), float(iy0 + rows[0]),
                                                    float(ix0 + cols[-1] + 1), float(iy0 + rows[-1] + 1)]))
            if draw:
                a = sub_alpha[..., None]
                region = canvas[iy0:iy1, ix0:ix1]
                region *= 1.0 - a
                region += item.sprite.rgb[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] * a
        image = None
        if draw:
            canvas += rng.standard_normal((height, width, 1), dtype=np.float32) * 2.0
            image = np.clip(canvas, 0, 255).astype(np.uint8)
        yield f, image, boxes


def truth(plan: list[ConveyorItem], *, size: tuple[int, int], fps: float, seed: int, speed: float,
          spacing: float) -> dict:
    """The ground truth written as ``conveyor.json``."""
    width = size[0]
    counts = {c: sum(i.label == c for i in plan) for c in DEMO_CLASSES}
    return {
        "generator": "detect.demo.conveyor", "seed": seed, "size": list(size), "fps": fps, "speed_px_per_frame": speed,
        "spacing_px": spacing, "frames": max(i.exit(width) for i in plan) + 1, "counts": counts,
        "defective": sum(i.defective for i in plan),
        "items": [{"id": i.id, "class": i.label, "defective": i.defective, "enter_frame": max(0, i.start),
                   "cross_frame": i.crossing(width), "cross_time": round(i.crossing(width) / fps, 3),
                   "exit_frame": i.exit(width)} for i in plan],
    }


def write_conveyor(out: str | os.PathLike[str], items: int = 40, *, seed: int = 0, size: tuple[int, int] = (320, 240),
                   speed: float = 4.0, spacing: float = 130.0, fps: float = 25.0) -> dict:
    """Write ``out/conveyor.mp4``, ``out/conveyor.json`` and the MOT 1.1 truth (``out/gt/``,
    ``out/seqinfo.ini``), each file atomically; return the truth."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_conveyor(items, seed=seed, size=size, speed=speed, spacing=spacing)
    video = out / "conveyor.mp4"
    tmp = out / f".conveyor.{secrets.token_hex(4)}.tmp.mp4"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an MP4 video to {out}")
    rows = []
    try:
        for f, image, boxes in render_conveyor(plan, size=size, seed=seed):
            writer.write(image)
            rows += [(f, item, label, box) for item, label, box in boxes]
        writer.release()
        os.replace(tmp, video)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)
    result = truth(plan, size=size, fps=fps, seed=seed, speed=speed, spacing=spacing)
    write_mot(out, rows, DEMO_CLASSES, fps=fps, size=size, frames=result["frames"], name="conveyor")
    write_atomic(out / "conveyor.json", json.dumps(result, indent=1) + "\n")
    return result
