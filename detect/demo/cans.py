"""``Lata`` and ``Lata_defectuosa``: a can drawn as a sprite.

An upright cylinder with elliptical rims, metallic shading, a printed label band and a pull
tab; a defective can has 1-2 of: a dent (dark crescent and a bent outline), crushed sides
(body pinched in the middle, with creases), a torn label (part missing, jagged edge).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detect.demo.paint import (
    _METALS, _PRINT, _Sprite, _blend, _colour, _cyl_light, _ellipse, _fill, _jagged_walk, _lines,
    _pick_defects, _pts, _shade, _smoothstep, _u,
)


CAN_DEFECTS = ("dent", "crushed", "torn_label")


def _render_can(rng, h: int, w: int, defective: bool, light_x: float, exclude: str | None = None) -> _Sprite:
    defects = _pick_defects(rng, CAN_DEFECTS, exclude) if defective else ()
    cx = w / 2.0
    hw = w / 2.0 - 0.5
    ry = max(1.0, w * _u(rng, 0.09, 0.15))
    top_hw = hw * _u(rng, 0.86, 0.94)
    y_top = ry + 0.5
    y_bot = h - 1.0 - ry
    body_h = max(1.0, y_bot - y_top)
    n = int(max(16, min(96, h)))
    ys = np.linspace(y_top, y_bot, n)
    half = top_hw + (hw - top_hw) * _smoothstep((ys - y_top) / max(1.0, ry * 1.6))
    half = half * (0.95 + 0.05 * _smoothstep((y_bot - ys) / max(1.0, ry)))
    dl = np.zeros(n)
    dr = np.zeros(n)

    dent = None
    if "dent" in defects:
        a = w * _u(rng, 0.13, 0.28)
        b = a * _u(rng, 0.7, 1.6)
        yd = _u(rng, y_top + 0.2 * body_h, y_bot - 0.12 * body_h)
        side = -1.0 if rng.random() < 0.5 else 1.0
        bend = rng.random() < 0.65
        xd = cx + side * hw * (_u(rng, 0.5, 0.75) if bend else _u(rng, -0.4, 0.4))
        if bend:
            depth = a * _u(rng, 0.35, 0.7)
            prof = depth * np.clip(1.0 - ((ys - yd) / max(1.5, b * 1.2)) ** 2, 0.0, None)
            if side < 0:
                dl += prof
            else:
                dr += prof
        dent = (xd, yd, a, b, _u(rng, 0, 180))
    crush = None
    if "crushed" in defects:
        ym = _u(rng, y_top + 0.3 * body_h, y_bot - 0.3 * body_h)
        hh = body_h * _u(rng, 0.12, 0.3)
        tri = np.clip(1.0 - np.abs(ys - ym) / hh, 0.0, None)
        tri = tri ** _u(rng, 0.8, 1.5)
        dl += w * _u(rng, 0.09, 0.22) * tri + tri * rng.uniform(-1, 1, n) * w * 0.025
        dr += w * _u(rng, 0.09, 0.22) * tri + tri * rng.uniform(-1, 1, n) * w * 0.025
        crush = (ym, hh)

    left = cx - half + dl
    right = cx + half - dr
    t_top = np.linspace(math.pi, 2 * math.pi, 24)
    t_bot = np.linspace(0.0, math.pi, 24)
    top_arc = np.stack([cx + top_hw * np.cos(t_top), y_top + ry * np.sin(t_top)], 1)
    bot_arc = np.stack([cx + half[-1] * np.cos(t_bot), y_bot + ry * np.sin(t_bot)], 1)
    outline = np.concatenate([
        top_arc,
        np.stack([right, ys], 1),
        bot_arc,
        np.stack([left, ys], 1)[::-1],
    ])
    mask = np.zeros((h, w), np.uint8)
    _fill(mask, outline)

    metal = _colour(rng, _METALS, 12)
    diff, spec, nz = _cyl_light(w, light_x, ambient=0.3, diffuse=0.7, spec=0.55, shininess=_u(rng, 12, 40))
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    # A second, dark reflection band makes the metal read as metal.
    diff = diff * (1.0 - 0.3 * np.exp(-(((u - _u(rng, 0.6, 0.85)) / 0.09) ** 2)))
    metal_layer = _shade(h, w, metal, diff, spec)
    rgb = metal_layer.copy()

    # Label band, its edges curved like the rims.
    yy = np.arange(h, dtype=np.float32)[:, None]
    lab0 = y_top + ry + body_h * _u(rng, 0.05, 0.2)
    lab1 = y_bot - body_h * _u(rng, 0.05, 0.18)
    curve = (ry * 0.9 * nz)[None, :]
    label_mask = (yy >= lab0 + curve) & (yy < lab1 + curve)
    ldiff, lspec, _ = _cyl_light(w, light_x, ambient=0.35, diffuse=0.65, spec=0.25, shininess=8)
    label_colour = _colour(rng, _PRINT, 25)
    rgb[label_mask] = _shade(h, w, label_colour, ldiff, lspec)[label_mask]
    design = np.zeros((h, w), np.uint8)
    second = _colour(rng, _PRINT, 25)
    if rng.random() < 0.6:  # a stripe round the can
        s0 = _u(rng, lab0, lab1 - 0.2 * (lab1 - lab0))
        s1 = s0 + (lab1 - lab0) * _u(rng, 0.08, 0.3)
        design |= ((yy >= s0 + curve) & (yy < s1 + curve)).astype(np.uint8) * 255
    if rng.random() < 0.7:  # a logo
        _ellipse(design, (cx + _u(rng, -0.15, 0.15) * w, (lab0 + lab1) / 2 + ry * 0.6),
                 (w * _u(rng, 0.12, 0.3), (lab1 - lab0) * _u(rng, 0.1, 0.25)), _u(rng, -20, 20))
    design &= label_mask.astype(np.uint8) * 255
    _blend(rgb, _shade(h, w, second, ldiff, lspec), design)
    text = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        ty = _u(rng, lab0 + 2, max(lab0 + 2.5, lab1 - 2)) + ry * 0.6
        tx = cx + _u(rng, -0.3, 0.1) * w
        cv2.line(text, (int(tx), int(ty)), (int(tx + w * _u(rng, 0.1, 0.35)), int(ty)), 255, 1, cv2.LINE_AA)
    _blend(rgb, (235, 235, 235) if label_colour.mean() < 120 else (25, 25, 25), text & (label_mask * 255).astype(np.uint8), 0.8)

    if "torn_label" in defects:
        # A jagged blob of the label torn away: bare metal inside, white paper fibres at the edge.
        lh = lab1 - lab0
        tcx = cx + _u(rng, -0.45, 0.45) * w
        tcy = _u(rng, lab0 + 0.2 * lh, lab1 - 0.2 * lh) + ry * 0.6
        rad_x = w * _u(rng, 0.2, 0.45)
        rad_y = lh * _u(rng, 0.25, 0.55)
        k = int(rng.integers(9, 16))
        ang = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = rng.uniform(0.55, 1.15, k)
        rad[::2] *= 0.7  # alternate in and out: a torn, jagged edge
        blob = np.stack([tcx + rad_x * rad * np.cos(ang), tcy + rad_y * rad * np.sin(ang)], 1)
        tear = np.zeros((h, w), np.uint8)
        cv2.fillPoly(tear, [_pts(blob)], 255, cv2.LINE_8, 4)
        torn = (tear > 0) & label_mask
        rgb[torn] = metal_layer[torn]
        fringe = (cv2.dilate(tear, np.ones((3, 3), np.uint8)) > 0) & ~(tear > 0) & label_mask
        _blend(rgb, (240, 242, 245), fringe, 0.95)

    # Lid, rim lines and pull tab.
    lid = np.zeros((h, w), np.uint8)
    _ellipse(lid, (cx, y_top), (top_hw, ry))
    lid_colour = np.clip(metal * _u(rng, 0.95, 1.12), 0, 255)
    lid_grad = 0.75 + 0.35 * np.clip(1.0 - u + light_x * 0.3, 0.0, 1.0)
    _blend(rgb, _shade(h, w, lid_colour, lid_grad, np.zeros(w, np.float32)), lid)
    lines = np.zeros((h, w), np.uint8)
    _ellipse(lines, (cx, y_top), (top_hw * 0.8, ry * 0.72), thickness=1)
    _ellipse(lines, (cx, y_top), (top_hw, ry), start=0, end=180, thickness=1)
    _ellipse(lines, (cx, y_bot), (half[-1], ry), start=0, end=180, thickness=1)
    _blend(rgb, metal * 0.35, lines, 0.7)
    tab = np.zeros((h, w), np.uint8)
    tab_c = (cx + top_hw * _u(rng, -0.15, 0.15), y_top - ry * 0.1)
    _ellipse(tab, tab_c, (top_hw * 0.28, ry * 0.42))
    _blend(rgb, np.clip(lid_colour * 1.12, 0, 255), tab)
    tab_lines = np.zeros((h, w), np.uint8)
    _ellipse(tab_lines, tab_c, (top_hw * 0.28, ry * 0.42), thickness=1)
    _ellipse(tab_lines, (tab_c[0] + top_hw * 0.05, tab_c[1]), (top_hw * 0.1, ry * 0.16))
    _blend(rgb, (40, 40, 40), tab_lines, 0.8)

    if dent is not None:
        xd, yd, a, b, ang = dent
        # A hollow: the wall facing the light is in shadow (a dark crescent), the far wall
        # catches the light; then a little blur so it reads as a smooth dent.
        shade = np.ones((h, w), np.float32)
        toward = -1.0 if light_x <= 0 else 1.0  # the side the light comes from
        cv2.ellipse(shade, (int(xd), int(yd)), (max(1, int(a)), max(1, int(b))), ang, 0, 360, 0.4, -1)
        cv2.ellipse(shade, (int(xd - toward * a * 0.35), int(yd + b * 0.1)), (max(1, int(a * 0.75)), max(1, int(b * 0.85))),
                    ang, 0, 360, 0.8, -1)
        cv2.ellipse(shade, (int(xd - toward * a * 0.55), int(yd + b * 0.15)), (max(1, int(a * 0.45)), max(1, int(b * 0.6))),
                    ang, 0, 360, 1.45, -1)
        shade = cv2.GaussianBlur(shade, (0, 0), max(0.6, a * 0.12))
        rgb *= shade[..., None]
        crease = np.zeros((h, w), np.uint8)
        _lines(crease, _jagged_walk(rng, (xd - a * 0.6, yd + _u(rng, -b, b) * 0.3), _u(rng, -0.4, 0.4), 4, a * 0.35, 0.6))
        _blend(rgb, (20, 20, 20), crease, 0.55)
    if crush is not None:
        ym, hh = crush
        band = 1.0 - 0.35 * np.clip(1.0 - np.abs(yy - ym) / hh, 0.0, 1.0) ** 2
        rgb *= band[..., None]
        creases = np.zeros((h, w), np.uint8)
        lights = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(2, 5))):
            y0 = ym + _u(rng, -0.6, 0.6) * hh
            xs = np.linspace(0, w, int(rng.integers(4, 8)))
            zz = y0 + rng.uniform(-0.25, 0.25, xs.size) * hh
            _lines(creases, np.stack([xs, zz], 1))
            _lines(lights, np.stack([xs, zz - 1.2], 1))
        _blend(rgb, (15, 15, 15), creases, 0.75)
        _blend(rgb, (250, 250, 250), lights, 0.45)

    edge = np.zeros((h, w), np.uint8)
    _lines(edge, outline, closed=True)
    _blend(rgb, metal * 0.3, edge, 0.5)
    np.clip(rgb, 0, 255, out=rgb)
    return _Sprite(rgb, mask.astype(np.float32) / 255.0, defects).crop()
