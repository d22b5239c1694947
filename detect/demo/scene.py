"""One demo image: a background, 0 to 6 cans and bottles placed back to front, global effects.

About 5% of the images have no object; objects are 12% to 60% of the image height, later
ones occlude earlier ones (a placement that would hide more than 60% of an object already
there is refused), and some are cut by the image border (``truncated``). Boxes are the
extent of the visible pixels (the VOC rule), in whole pixels on continuous coordinates
(``xmax = last column + 1``). :class:`_Scene` is also what :mod:`detect.demo.conveyor`
draws its items with.
"""

from __future__ import annotations

import cv2
import numpy as np

from detect.data.voc import Box, VocObject
from detect.demo.background import _background
from detect.demo.bottles import _render_bottle
from detect.demo.cans import _render_can
from detect.demo.paint import _Sprite, _u

__all__ = ["DEMO_CLASSES"]

DEMO_CLASSES = ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")

_NEGATIVE_FRACTION = 0.05
_MAX_OBJECTS = 6
_MAX_HIDDEN = 0.60  # an object already placed must keep at least 40% of its pixels
_MIN_INSIDE = 0.60  # an object cut by the border keeps at least 60% of its pixels inside


def _clip_region(x0: int, y0: int, w: int, h: int, W: int, H: int):
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


class _Scene:
    """One image: a background, objects placed back to front, global effects."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, defect_rate: float | None = None,
                 exclude: str | None = None) -> None:
        self.rng = rng
        self.W = width
        self.H = height
        self.defect_rate = defect_rate
        self.exclude = exclude  # a defect kind never drawn (held out of the training split)
        self.object_defects: tuple[tuple[str, ...], ...] = ()  # after render(): the defect kinds of each object

    def _make_sprite(self, cls: str, light_x: float, size: float | None = None) -> _Sprite:
        """A can or bottle of class ``cls``, its longest side ``size`` pixels (default: a
        random 12-60 % of the image height, as the demo images have them)."""
        rng, H, W = self.rng, self.H, self.W
        if size is None:
            size = H * _u(rng, 0.12, 0.60)
        if cls.startswith("Lata"):
            lying = rng.random() < 0.15
            length = size
            diameter = length * _u(rng, 0.5, 0.7)
            if lying:
                length = min(length, W * 0.9)
                diameter = length * _u(rng, 0.5, 0.7)
            if not lying and diameter > W * 0.9:
                length, diameter = length * W * 0.9 / diameter, W * 0.9
            h, w = max(10, int(round(length))), max(6, int(round(diameter)))
            sprite = _render_can(rng, h, w, cls.endswith("_defectuosa"), light_x, self.exclude)
            if lying:
                k = 1 if rng.random() < 0.5 else 3
                sprite = _Sprite(np.ascontiguousarray(np.rot90(sprite.rgb, k)), np.ascontiguousarray(np.rot90(sprite.alpha, k)),
                                 sprite.defects)
        else:
            aspect = _u(rng, 0.25, 0.4)
            size = min(size, W * 0.9 / aspect)
            h = max(14, int(round(size)))
            w = max(5, int(round(h * aspect)))
            sprite = _render_bottle(rng, h, w, cls.endswith("_defectuosa"), light_x, self.exclude)
        if rng.random() < 0.3:
            sprite = sprite.rotated(_u(rng, -12, 12))
        return sprite

    def render(self) -> tuple[np.ndarray, tuple[VocObject, ...]]:
        rng, W, H = self.rng, self.W, self.H
        canvas = _background(rng, W, H).astype(np.float32)
        owner = np.full((H, W), -1, np.int16)
        light_x = _u(rng, -0.7, 0.7)
        n_wanted = 0 if rng.random() < _NEGATIVE_FRACTION else int(rng.integers(1, _MAX_OBJECTS + 1))

        placed: list[dict] = []
        for _ in range(n_wanted):
            cls = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
            if self.defect_rate is not None:  # the kind (can, bottle) as drawn; defective or not by the rate
                kind = "Lata" if cls.startswith("Lata") else "Botella"
                cls = f"{kind}_defectuosa" if rng.random() < self.defect_rate else kind
            sprite = self._make_sprite(cls, light_x)
            solid = sprite.alpha > 0.5
            area = int(solid.sum())
            if area < 12:
                continue
            h, w = solid.shape
            for _attempt in range(25):
                spot = self._try_place(solid, area, w, h, placed, owner)
                if spot is not None:
                    break
            else:
                continue
            x0, y0, covered = spot
            for j, c in enumerate(covered):
                placed[j]["visible"] -= int(c)
            self._composite(canvas, sprite, x0, y0)
            (img_sl, spr_sl) = _clip_region(x0, y0, w, h, W, H)
            owner[img_sl][solid[spr_sl]] = len(placed)
            rows = np.flatnonzero(solid.any(axis=1))
            cols = np.flatnonzero(solid.any(axis=0))
            full = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
            truncated = bool(full[0] < 0 or full[1] < 0 or full[2] > W or full[3] > H)
            inside = int(solid[spr_sl].sum())
            placed.append({
                "name": cls,
                "defects": sprite.defects,
                "full": inside,
                "visible": inside,
                "truncated": truncated,
                "region": (max(0, full[0]), max(0, full[1]), min(W, full[2]), min(H, full[3])),
            })

        image = self._finish(canvas)
        objects = []
        kinds = []
        for idx, obj in enumerate(placed):
            x0, y0, x1, y1 = obj["region"]
            vis = owner[y0:y1, x0:x1] == idx
            rows = np.flatnonzero(vis.any(axis=1))
            cols = np.flatnonzero(vis.any(axis=0))
            if rows.size == 0:
                continue
            box = Box(float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
            if box.width < 2 or box.height < 2:
                continue
            objects.append(VocObject(name=obj["name"], box=box, difficult=False, truncated=obj["truncated"]))
            kinds.append(tuple(obj["defects"]))
        self.object_defects = tuple(kinds)
        return image, tuple(objects)

    def _try_place(self, solid, area, w, h, placed, owner):
        rng, W, H = self.rng, self.W, self.H
        lo_x, hi_x = min(0, W - w), max(0, W - w)
        lo_y, hi_y = min(0, H - h), max(0, H - h)
        if rng.random() < 0.15:  # allowed to run off the border
            lo_x, hi_x = lo_x - 0.35 * w, hi_x + 0.35 * w
            lo_y, hi_y = lo_y - 0.35 * h, hi_y + 0.35 * h
        x0 = int(round(_u(rng, lo_x, hi_x)))
        y0 = int(round(_u(rng, lo_y, hi_y)))
        region = _clip_region(x0, y0, w, h, W, H)
        if region is None:
            return None
        img_sl, spr_sl = region
        inside = solid[spr_sl]
        if inside.sum() < _MIN_INSIDE * area:
            return None
        under = owner[img_sl][inside]
        covered = np.bincount(under[under >= 0], minlength=len(placed))[: len(placed)]
        for obj, c in zip(placed, covered):
            if c and obj["visible"] - c < (1.0 - _MAX_HIDDEN) * obj["full"]:
                return None
        return x0, y0, covered

    def _composite(self, canvas, sprite: _Sprite, x0: int, y0: int) -> None:
        rng, W, H = self.rng, self.W, self.H
        h, w = sprite.alpha.shape
        if rng.random() < 0.6:  # soft drop shadow
            sx = int(round(w * _u(rng, 0.04, 0.12) * (1 if rng.random() < 0.5 else -1)))
            sy = int(round(h * _u(rng, 0.01, 0.04)))
            shadow = cv2.GaussianBlur(sprite.alpha, (0, 0), max(1.0, w * 0.06)) * _u(rng, 0.25, 0.45)
            region = _clip_region(x0 + sx, y0 + sy, w, h, W, H)
            if region is not None:
                img_sl, spr_sl = region
                canvas[img_sl] *= (1.0 - shadow[spr_sl])[..., None]
        img_sl, spr_sl = _clip_region(x0, y0, w, h, W, H)
        a = sprite.alpha[spr_sl][..., None]
        sub = canvas[img_sl]
        sub *= 1.0 - a
        sub += sprite.rgb[spr_sl] * a

    def _finish(self, canvas: np.ndarray) -> np.ndarray:
        rng = self.rng
        contrast = _u(rng, 0.8, 1.2)
        brightness = _u(rng, -20, 20)
        gains = rng.uniform(0.94, 1.06, 3).astype(np.float32)
        # (x - 128) * contrast + 128 + brightness, then a slight colour cast, in one pass.
        canvas *= gains * contrast
        canvas += gains * (128.0 * (1.0 - contrast) + brightness) + 0.5
        if rng.random() < 0.3:
            canvas = cv2.GaussianBlur(canvas, (0, 0), _u(rng, 0.4, 1.0))
        sigma = _u(rng, 0.0, 4.0)
        if sigma > 0.5:  # sensor noise, luminance only
            canvas += (rng.standard_normal(canvas.shape[:2], dtype=np.float32) * sigma)[..., None]
        np.clip(canvas, 0, 255, out=canvas)
        return canvas.astype(np.uint8)
