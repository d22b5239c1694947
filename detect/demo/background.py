"""The demo's backgrounds: flat colour, gradients, noise textures, a conveyor belt or tiles,
with clutter shapes that are not objects (a few thin jagged lines too, so that a jagged
line alone does not mean "defect")."""

from __future__ import annotations

import math

import cv2
import numpy as np

from detect.demo.paint import _jagged_walk, _pts, _u


def _background(rng, W: int, H: int) -> np.ndarray:
    kind = int(rng.choice(5, p=[0.15, 0.2, 0.25, 0.28, 0.12]))
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    gray = _u(rng, 60, 200)

    def muted():
        c = rng.uniform(0, 255, 3).astype(np.float32)
        mix = _u(rng, 0.3, 0.8)
        return c * (1 - mix) + gray * mix

    if kind == 0:  # flat
        img = np.broadcast_to(muted(), (H, W, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient
        c1, c2 = muted(), muted()
        ang = _u(rng, 0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 2:  # blotchy noise texture, two octaves
        c1, c2 = muted(), muted()
        t = np.zeros((H, W), np.float32)
        for cell, weight in ((_u(rng, 12, 40), 0.7), (_u(rng, 3, 8), 0.3)):
            small = rng.random((int(H / cell) + 2, int(W / cell) + 2), dtype=np.float32)
            t += weight * cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 3:  # conveyor belt: slats across the belt, metal rails along it
        base = np.full(3, _u(rng, 30, 90), np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
        img = np.broadcast_to(base, (H, W, 3)).astype(np.float32).copy()
        along_x = rng.random() < 0.7
        coord = xx if along_x else yy
        period = max(4.0, _u(rng, 0.025, 0.08) * min(W, H))
        phase = (coord + _u(rng, 0, period)) % period
        img *= np.where(phase < 1.5, 0.6, np.where(phase < 3.0, 1.25, 1.0))[..., None]
        img += (rng.standard_normal((H, W), dtype=np.float32) * 4.0)[..., None]
        if rng.random() < 0.7:
            across = yy if along_x else xx
            extent = H if along_x else W
            r = _u(rng, 0.05, 0.12) * extent
            metal = np.full(3, _u(rng, 140, 200), np.float32)
            for lo in (0.0, extent - r):
                band = np.broadcast_to((across >= lo) & (across < lo + r), (H, W))
                t = np.abs((across - lo) / r - 0.5) * 2
                shade = np.broadcast_to((1.1 - 0.5 * t)[..., None] * metal, (H, W, 3))
                img[band] = shade[band]
    else:  # tiles
        cell = max(8, int(_u(rng, 0.1, 0.25) * min(W, H)))
        c = muted()
        tiles = rng.uniform(0.85, 1.15, (H // cell + 1, W // cell + 1)).astype(np.float32)
        t = cv2.resize(tiles, ((W // cell + 1) * cell, (H // cell + 1) * cell), interpolation=cv2.INTER_NEAREST)[:H, :W]
        img = c * t[..., None]
        grout = np.broadcast_to(((xx % cell) < 1.5) | ((yy % cell) < 1.5), (H, W))
        img[grout] = c * 0.55
    img = np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.uint8)

    # Clutter: shapes that are not objects (a few thin jagged lines too, so that a jagged
    # line alone does not mean "defect").
    if rng.random() < 0.65:
        side = min(W, H)
        for _ in range(int(rng.integers(1, 7))):
            colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
            x, y = _u(rng, 0, W), _u(rng, 0, H)
            s = _u(rng, 0.04, 0.3) * side
            shape = int(rng.integers(7))
            if shape == 0:
                cv2.circle(img, (int(x), int(y)), max(1, int(s / 2)), colour, -1, cv2.LINE_AA)
            elif shape == 1:
                cv2.rectangle(img, (int(x), int(y)), (int(x + s), int(y + s * _u(rng, 0.3, 1.5))), colour, -1)
            elif shape == 2:
                box = cv2.boxPoints(((x, y), (s, s * _u(rng, 0.2, 0.8)), _u(rng, 0, 180)))
                cv2.fillPoly(img, [_pts(box)], colour, cv2.LINE_AA, 4)
            elif shape == 3:
                cv2.line(img, (int(x), int(y)), (int(x + _u(rng, -1, 1) * s * 2), int(y + _u(rng, -1, 1) * s * 2)),
                         colour, int(rng.integers(1, 4)), cv2.LINE_AA)
            elif shape == 4:
                walk = _jagged_walk(rng, (x, y), _u(rng, 0, 2 * math.pi), int(rng.integers(3, 7)), s * 0.3, 0.8)
                cv2.polylines(img, [_pts(walk)], False, colour, 1, cv2.LINE_AA, 4)
            elif shape == 5:
                cv2.ellipse(img, (int(x), int(y)), (max(1, int(s / 2)), max(1, int(s / 4))), _u(rng, 0, 180),
                            0, 360, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
            else:
                tri = np.array([(x, y), (x + s, y + _u(rng, -0.5, 0.5) * s), (x + _u(rng, -0.5, 0.5) * s, y + s)])
                cv2.fillPoly(img, [_pts(tri)], colour, cv2.LINE_AA, 4)
    return img
