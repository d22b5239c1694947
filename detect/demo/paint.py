"""Drawing helpers the demo's sprites and scenes share: random draws, anti-aliased shapes on
masks (OpenCV, 4 fractional bits), alpha blending, cylinder lighting, jagged lines, the colour
palettes and :class:`_Sprite` (a drawn object with its alpha).

Colours are BGR floats 0-255, masks uint8 0-255. Every random draw comes from the caller's
``numpy.random.Generator``, in a fixed order: the demo's files are a function of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Colours are BGR. Normal and defective objects draw from the same palettes.
_METALS = ((200, 200, 205), (175, 180, 185), (140, 175, 200), (120, 150, 190), (210, 205, 195))
_PRINT = (
    (40, 40, 200), (180, 80, 30), (60, 160, 60), (40, 200, 230), (30, 30, 30),
    (235, 235, 235), (30, 120, 240), (140, 50, 120), (200, 160, 40), (90, 60, 160),
)
_GLASS = ((70, 140, 50), (40, 80, 140), (200, 175, 130), (205, 210, 205), (60, 110, 40))
_PAPER = ((235, 240, 245), (200, 230, 240), (60, 60, 180), (170, 120, 40), (50, 170, 220), (40, 40, 40))
_CAPS = ((40, 40, 200), (40, 170, 210), (180, 90, 30), (230, 230, 230), (30, 30, 30), (50, 140, 50))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in ``[lo, hi)``; an empty range (tiny objects) gives ``lo``."""
    return float(rng.uniform(lo, max(lo, hi)))


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _colour(rng: np.random.Generator, palette, jitter: float = 18.0) -> np.ndarray:
    base = np.asarray(_pick(rng, palette), np.float32)
    return np.clip(base + rng.uniform(-jitter, jitter, 3).astype(np.float32), 0, 255)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _pts(points) -> np.ndarray:
    """Float points as int32 with 4 fractional bits, for cv2 drawing with ``shift=4``."""
    return np.round(np.asarray(points, np.float64) * 16.0).astype(np.int32).reshape(-1, 1, 2)


def _fill(mask: np.ndarray, points, value: int = 255) -> None:
    cv2.fillPoly(mask, [_pts(points)], value, cv2.LINE_AA, 4)


def _lines(mask: np.ndarray, points, thickness: int = 1, closed: bool = False, value: int = 255) -> None:
    cv2.polylines(mask, [_pts(points)], closed, value, thickness, cv2.LINE_AA, 4)


def _ellipse(mask, centre, axes, angle=0.0, start=0, end=360, value=255, thickness=-1) -> None:
    c = (int(round(centre[0] * 16)), int(round(centre[1] * 16)))
    a = (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16))))
    cv2.ellipse(mask, c, a, float(angle), start, end, value, thickness, cv2.LINE_AA, 4)


def _blend(dst: np.ndarray, layer, mask: np.ndarray, strength: float = 1.0) -> None:
    """``dst = dst * (1 - m) + layer * m`` in place, ``m`` a uint8 (0-255) or bool mask."""
    if mask.dtype == np.bool_:
        m = mask.astype(np.float32) * strength
    else:
        m = mask.astype(np.float32) * (strength / 255.0)
    m = m[..., None]
    dst *= 1.0 - m
    dst += np.asarray(layer, np.float32) * m


def _cyl_light(w: int, light_x: float, *, ambient: float, diffuse: float, spec: float, shininess: float):
    """Per-column diffuse factor and specular term across a vertical cylinder ``w`` wide."""
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    nx = 2.0 * u - 1.0
    nz = np.sqrt(np.clip(1.0 - nx * nx, 0.0, 1.0))
    lz = math.sqrt(max(0.0, 1.0 - light_x * light_x))
    lam = np.clip(nx * light_x + nz * lz, 0.0, 1.0)
    hx, hz = light_x, lz + 1.0
    hn = math.hypot(hx, hz)
    spec_term = np.clip((nx * hx + nz * hz) / hn, 0.0, 1.0) ** shininess
    return ambient + diffuse * lam, spec * spec_term, nz


def _shade(h: int, w: int, colour, diff, spec) -> np.ndarray:
    row = np.asarray(colour, np.float32)[None, :] * diff[:, None] + 255.0 * spec[:, None]
    return np.ascontiguousarray(np.broadcast_to(row[None], (h, w, 3)), dtype=np.float32)


def _jagged_walk(rng, start, angle, steps, step_len, wobble):
    pts = [start]
    x, y = start
    for _ in range(steps):
        angle += float(rng.normal(0.0, wobble))
        length = step_len * _u(rng, 0.5, 1.3)
        x += math.cos(angle) * length
        y += math.sin(angle) * length
        pts.append((x, y))
    return pts


def _pick_defects(rng, kinds, exclude: str | None = None) -> tuple[str, ...]:
    """1 or 2 of ``kinds`` (``exclude`` left out: a kind held out of the training split)."""
    if exclude is not None:
        kinds = tuple(k for k in kinds if k != exclude)
    n = 1 if rng.random() < 0.6 else 2
    order = rng.permutation(len(kinds))[:n]
    return tuple(kinds[i] for i in sorted(order))


@dataclass
class _Sprite:
    rgb: np.ndarray  # float32 (h, w, 3), BGR 0-255
    alpha: np.ndarray  # float32 (h, w), 0-1
    defects: tuple[str, ...] = ()  # the defect kinds drawn on it

    def crop(self) -> "_Sprite":
        solid = self.alpha > 0.02
        rows = np.flatnonzero(solid.any(axis=1))
        cols = np.flatnonzero(solid.any(axis=0))
        if rows.size == 0:
            return self
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return _Sprite(self.rgb[r0:r1, c0:c1], self.alpha[r0:r1, c0:c1], self.defects)

    def rotated(self, degrees: float) -> "_Sprite":
        h, w = self.alpha.shape
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
        m[0, 2] += nw / 2.0 - w / 2.0
        m[1, 2] += nh / 2.0 - h / 2.0
        rgb = cv2.warpAffine(self.rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        alpha = cv2.warpAffine(self.alpha, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
        return _Sprite(rgb, alpha, self.defects).crop()
