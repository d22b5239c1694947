"""``Botella`` and ``Botella_defectuosa``: a bottle drawn as a sprite.

Glass (green, brown, blue-ish or clear, translucent) with shoulders, a neck, a cap and a
paper label; a defective bottle has 1-2 of: cracks (thin jagged light/dark lines), a broken
neck (jagged top, no cap), a chipped body (a bite out of the outline).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detect.demo.paint import (
    _CAPS, _GLASS, _PAPER, _PRINT, _Sprite, _blend, _colour, _cyl_light, _ellipse, _fill, _jagged_walk, _lines,
    _pick_defects, _pts, _shade, _smoothstep, _u,
)


BOTTLE_DEFECTS = ("crack", "broken_neck", "chipped")


def _render_bottle(rng, h: int, w: int, defective: bool, light_x: float, exclude: str | None = None) -> _Sprite:
    defects = _pick_defects(rng, BOTTLE_DEFECTS, exclude) if defective else ()
    cx = w / 2.0
    hw_body = w / 2.0 - 0.5
    neck_hw = max(1.0, hw_body * _u(rng, 0.28, 0.42))
    cap_hw = neck_hw * _u(rng, 1.1, 1.25)
    cap_h = max(2.0, h * _u(rng, 0.05, 0.08))
    lip_h = max(1.0, h * 0.02)
    neck_end = h * _u(rng, 0.2, 0.33)
    shoulder_end = neck_end + h * _u(rng, 0.12, 0.22)
    r_bottom = max(1.0, hw_body * _u(rng, 0.15, 0.35))

    def half_width(y):
        y = np.asarray(y, np.float64)
        hwy = np.where(y < cap_h, cap_hw, neck_hw)
        hwy = np.where((y >= cap_h) & (y < cap_h + lip_h), neck_hw * 1.15, hwy)
        sh = neck_hw + (hw_body - neck_hw) * _smoothstep((y - neck_end) / (shoulder_end - neck_end))
        hwy = np.where(y >= neck_end, sh, hwy)
        yb = h - 1.0 - r_bottom
        rounded = hw_body - r_bottom + np.sqrt(np.clip(r_bottom**2 - (y - yb) ** 2, 0.0, None))
        return np.where(y > yb, rounded, hwy)

    y_start = 0.5
    broken = "broken_neck" in defects
    if broken:
        y_start = _u(rng, cap_h + lip_h + 1.0, neck_end + 0.5 * (shoulder_end - neck_end))
    n = int(max(24, min(140, h)))
    ys = np.linspace(y_start, h - 1.0, n)
    half = half_width(ys)
    outline_l = np.stack([cx - half, ys], 1)
    outline_r = np.stack([cx + half, ys], 1)[::-1]
    jag_top = None
    if broken:
        k = int(rng.integers(3, 7))
        xs = np.linspace(cx + half[0], cx - half[0], k + 2)[1:-1]
        amp = max(1.5, half[0] * _u(rng, 0.6, 1.2))
        jy = y_start + rng.uniform(-0.3, 1.0, k) * amp
        jy[::2] -= amp * 0.5
        jag_top = np.concatenate([[outline_r[-1]], np.stack([xs, jy], 1), [outline_l[0]]])
        outline = np.concatenate([outline_l, outline_r, jag_top[1:-1]])
    else:
        outline = np.concatenate([outline_l, outline_r])
    mask = np.zeros((h, w), np.uint8)
    _fill(mask, outline)

    chip = None
    if "chipped" in defects:
        if rng.random() < 0.7:  # a bite out of a side
            side = -1.0 if rng.random() < 0.5 else 1.0
            yb = _u(rng, shoulder_end, h - 1.0 - r_bottom * 1.5)
            p0 = np.array([cx + side * float(half_width(yb)), yb])
            inward = np.array([-side, 0.0])
            tangent = np.array([0.0, 1.0])
        else:  # from the base
            p0 = np.array([cx + _u(rng, -0.4, 0.4) * (hw_body - r_bottom), h - 1.0])
            inward = np.array([0.0, -1.0])
            tangent = np.array([1.0, 0.0])
        depth = hw_body * _u(rng, 0.22, 0.5)
        span = depth * _u(rng, 1.0, 2.2)
        k = int(rng.integers(3, 6))
        ss = np.sort(rng.uniform(-0.4, 0.4, k)) * span
        dd = rng.uniform(0.35, 1.0, k) * depth
        inner = [p0 + tangent * s + inward * d for s, d in zip(ss, dd)]
        chip = np.array([p0 - tangent * span / 2 - inward * 3] + inner + [p0 + tangent * span / 2 - inward * 3])
        cv2.fillPoly(mask, [_pts(chip)], 0, cv2.LINE_AA, 4)

    tint = _colour(rng, _GLASS, 15)
    clear = tint.mean() > 170
    glass_alpha = _u(rng, 0.62, 0.72) if clear else _u(rng, 0.74, 0.88)
    diff, spec, nz = _cyl_light(w, light_x, ambient=0.5, diffuse=0.45, spec=0.8, shininess=_u(rng, 30, 80))
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    diff = diff * (0.75 + 0.25 * nz**0.5)
    rgb = _shade(h, w, tint, diff, spec)
    # A second, thin reflection on the far side.
    far = 1.0 - (0.25 if light_x <= 0 else 0.75)
    rgb += (120.0 * np.exp(-(((u - far) / 0.03) ** 2)))[None, :, None]
    alpha_map = np.broadcast_to((glass_alpha + (1.0 - glass_alpha) * 0.6 * (1.0 - nz))[None, :], (h, w)).copy()
    yy = np.arange(h, dtype=np.float32)[:, None]

    if rng.random() < 0.45:  # liquid inside
        fill_y = _u(rng, shoulder_end, h * 0.8)
        liquid = yy >= fill_y
        rgb *= np.where(liquid, 0.55, 1.0)[..., None]
        alpha_map = np.where(liquid, np.maximum(alpha_map, 0.9), alpha_map)
        meniscus = np.zeros((h, w), np.uint8)
        cv2.line(meniscus, (0, int(fill_y)), (w, int(fill_y)), 255, 1, cv2.LINE_AA)
        _blend(rgb, np.clip(tint * 1.4, 0, 255), meniscus, 0.5)

    # Paper label, edges curved like the glass.
    curve = (max(1.0, w * 0.06) * nz)[None, :]
    lab0 = _u(rng, shoulder_end, shoulder_end + 0.2 * (h - shoulder_end))
    lab1 = min(h - 1.0 - r_bottom, lab0 + (h - shoulder_end) * _u(rng, 0.3, 0.6))
    label_mask = (yy >= lab0 + curve) & (yy < lab1 + curve)
    ldiff, lspec, _ = _cyl_light(w, light_x, ambient=0.4, diffuse=0.6, spec=0.15, shininess=6)
    paper = _colour(rng, _PAPER, 20)
    rgb[label_mask] = _shade(h, w, paper, ldiff, lspec)[label_mask]
    alpha_map[label_mask] = 1.0
    design = np.zeros((h, w), np.uint8)
    if rng.random() < 0.7:
        _ellipse(design, (cx, (lab0 + lab1) / 2 + curve.max() * 0.6), (w * _u(rng, 0.15, 0.32), (lab1 - lab0) * _u(rng, 0.12, 0.3)))
    for _ in range(int(rng.integers(0, 3))):
        ty = _u(rng, lab0 + 1, max(lab0 + 1.5, lab1 - 1)) + curve.max() * 0.6
        cv2.line(design, (int(cx - w * 0.25), int(ty)), (int(cx + w * _u(rng, 0.0, 0.25)), int(ty)), 255, 1, cv2.LINE_AA)
    design &= (label_mask * 255).astype(np.uint8)
    _blend(rgb, _colour(rng, _PRINT, 25) * ldiff.mean(), design, 0.9)

    if not broken:
        cap_rows = yy < cap_h
        cap_colour = _colour(rng, _CAPS, 20)
        cdiff, cspec, _ = _cyl_light(w, light_x, ambient=0.35, diffuse=0.65, spec=0.4, shininess=15)
        cap_layer = _shade(h, w, cap_colour, cdiff, cspec)
        if cap_hw * 2 >= 8:  # knurled edge
            xs = np.arange(w)
            cap_layer[:, (xs % 3) == 0] *= 0.75
        cap_mask = np.broadcast_to(cap_rows, (h, w))
        rgb[cap_mask] = cap_layer[cap_mask]
        alpha_map[cap_mask] = 1.0
        ring = np.zeros((h, w), np.uint8)
        cv2.line(ring, (0, int(cap_h)), (w, int(cap_h)), 255, 1, cv2.LINE_AA)
        _blend(rgb, cap_colour * 0.35, ring, 0.7)
    else:
        rim = np.zeros((h, w), np.uint8)
        _lines(rim, jag_top)
        dark = np.zeros((h, w), np.uint8)
        _lines(dark, jag_top + np.array([0.0, 1.6]))
        _blend(rgb, (15, 20, 15), dark, 0.8)
        _blend(rgb, (240, 248, 245), rim, 1.0)
        alpha_map = np.maximum(alpha_map, rim.astype(np.float32) / 255.0)

    marks = np.zeros((h, w), np.uint8)  # light lines: cracks, chip edges
    shadows = np.zeros((h, w), np.uint8)  # their dark companions
    if "crack" in defects:
        for _ in range(int(rng.integers(1, 4))):
            y0 = _u(rng, neck_end, h - 1.0 - r_bottom)
            x0 = cx + _u(rng, -0.7, 0.7) * float(half_width(y0))
            walk = _jagged_walk(rng, (x0, y0), _u(rng, 0, 2 * math.pi), int(rng.integers(4, 9)), h * _u(rng, 0.03, 0.06), 0.7)
            _lines(marks, walk)
            _lines(shadows, np.asarray(walk) + np.array([1.2, 0.6]))
            if rng.random() < 0.5:  # a branch
                j = int(rng.integers(1, len(walk)))
                branch = _jagged_walk(rng, walk[j], _u(rng, 0, 2 * math.pi), int(rng.integers(2, 5)), h * 0.03, 0.6)
                _lines(marks, branch)
                _lines(shadows, np.asarray(branch) + np.array([1.2, 0.6]))
    if chip is not None:
        _lines(marks, chip[1:-1], thickness=1)
        _lines(shadows, chip[1:-1] + inward * 1.5, thickness=1)
        for p in chip[1:-1]:
            if rng.random() < 0.6:
                end = p + rng.uniform(-1, 1, 2) * hw_body * 0.4
                _lines(shadows, [p, end])
    _blend(rgb, (20, 25, 20), shadows, 0.7)
    _blend(rgb, (238, 245, 245), marks, 0.95)
    alpha_map = np.maximum(alpha_map, np.maximum(marks, shadows).astype(np.float32) / 255.0 * 0.95)

    edge = np.zeros((h, w), np.uint8)
    _lines(edge, outline, closed=True)
    _blend(rgb, tint * 0.35, edge, 0.55)
    alpha_map = np.maximum(alpha_map, edge.astype(np.float32) / 255.0 * 0.9)
    np.clip(rgb, 0, 255, out=rgb)
    return _Sprite(rgb, alpha_map * (mask.astype(np.float32) / 255.0), defects).crop()
