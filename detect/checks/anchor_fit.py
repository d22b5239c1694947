"""Anchor fit: can the model's anchors reach the dataset's boxes (checks VOC601-VOC603).

The "best possible recall" of the RPN: for every ground-truth box, the highest IoU any of
the model's real anchors has with it (the anchors torchvision's generator makes for the
image's resized size, rebuilt by :mod:`detect.model.anchors`). When coverage is poor, other
scales and ratios with the same number of anchors per location are searched and suggested
as ``--anchor-scales`` / ``--anchor-ratios``.

Box arithmetic in numpy float32 (torchvision's ``box_iou`` step for step), so the checker
runs it without torch; :func:`anchor_rule` is what :func:`detect.checks.check_dataset`
takes as its ``anchor_rule``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from detect.checks.findings import AnchorFit, Finding, box_text, finding
from detect.model.anchors import AnchorLayout, image_anchors, resized_size
from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.model.config import ModelConfig

__all__ = ["anchor_fit", "anchor_rule", "box_iou"]

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[N, 4]`` with every box in ``b`` ``[M, 4]``, ``[N, M]``;
    ``(xmin, ymin, xmax, ymax)``, computed in the order torchvision's ``box_iou`` does."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _layout(backbone: str, scales, ratios, rh: int, rw: int) -> AnchorLayout:
    """The anchors of the model ``detect.train`` builds with these options, for an image
    it resized to ``rh x rw``."""
    return image_anchors(ModelConfig(backbone=backbone, anchor_scales=tuple(scales), anchor_ratios=tuple(ratios)),
                         rh, rw)


def _best_iou_one_size(gt: np.ndarray, layout: AnchorLayout, chunk: int = 16) -> np.ndarray:
    """Highest IoU of each box in ``gt`` ``[N, 4]`` with any anchor of ``layout``.

    IoU with an anchor of a fixed shape only falls as the anchor's centre moves away from
    the box's centre along either axis, so for each level and anchor shape the best anchor
    is the one whose grid position puts its centre nearest the box's centre. Those
    candidates (one per shape and level) give the same maximum as comparing every anchor,
    at a fraction of the work.
    """
    anchors = layout.anchors
    n = gt.shape[0]
    cx = ((gt[:, 0] + gt[:, 2]) / np.float32(2))[:, None]
    cy = ((gt[:, 1] + gt[:, 3]) / np.float32(2))[:, None]
    candidates = []
    for level in layout.levels:
        k = level.per_location
        base = anchors[level.offset : level.offset + k]  # grid position (0, 0): the shapes
        bx = ((base[:, 0] + base[:, 2]) / np.float32(2))[None, :]
        by = ((base[:, 1] + base[:, 3]) / np.float32(2))[None, :]
        ix = np.clip(np.rint((cx - bx) / np.float32(level.stride_w)).astype(np.int64), 0, level.grid_w - 1)
        iy = np.clip(np.rint((cy - by) / np.float32(level.stride_h)).astype(np.int64), 0, level.grid_h - 1)
        candidates.append(level.offset + (iy * level.grid_w + ix) * k + np.arange(k))
    cand = np.concatenate(candidates, axis=1)
    best = np.empty(n, dtype=gt.dtype)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        best[rows] = box_iou(gt[rows], anchors[np.unique(cand[rows])]).max(axis=1)
    return best


def anchor_fit(
    boxes: Sequence[tuple],
    *,
    backbone: str = "mobilenet",
    input_size: int = 800,
    scales: Sequence[float] | None = None,
    ratios: Sequence[float] | None = None,
    suggest: bool = True,
) -> AnchorFit:
    """Best possible recall of the model's anchors on ``boxes``.

    Args:
        boxes: ``(image_width, image_height, xmin, ymin, xmax, ymax, ...)`` per box, in
            pixels of the original image.
        backbone, input_size, scales, ratios: the model's anchor layout and input size, as
            given to :func:`detect.model.build.build_model`.
        suggest: when coverage is poor, search other scales and ratios (same count, so
            the anchors per location stay the same) and attach the best as ``suggestion``.
    """
    scales = tuple(float(s) for s in scales) if scales else tuple(get_backbone(backbone).default_scales)
    ratios = tuple(float(r) for r in ratios) if ratios else tuple(DEFAULT_ANCHOR_RATIOS)
    best = np.zeros(len(boxes), dtype=np.float32)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, b in enumerate(boxes):
        by_size[(int(b[0]), int(b[1]))].append(i)
    for (width, height), indices in by_size.items():
        rh, rw = resized_size(width, height, input_size)
        gt = np.array([boxes[i][2:6] for i in indices], dtype=np.float32)
        gt = gt * np.array([rw / width, rh / height, rw / width, rh / height], dtype=np.float32)
        best[indices] = _best_iou_one_size(gt, _layout(backbone, scales, ratios, rh, rw))
    n = max(len(boxes), 1)
    fit = AnchorFit(
        backbone=backbone,
        input_size=input_size,
        scales=scales,
        ratios=ratios,
        anchors_per_location=len(scales) * len(ratios),
        best_iou=best.tolist(),
        share_07=float((best >= 0.7).sum()) / n,
        share_05=float((best >= 0.5).sum()) / n,
    )
    if suggest and fit.poor:
        fit.suggestion = _suggest_anchors(boxes, fit)
    return fit


def _centred(widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    two = np.float32(2)
    return np.stack([-widths / two, -heights / two, widths / two, heights / two], axis=1)


def _suggest_anchors(boxes: Sequence[tuple], current: AnchorFit) -> AnchorFit | None:
    """Scales and ratios that fit the dataset's box shapes better, checked on real anchors.

    Candidates are ranked by the IoU of box and anchor shapes with centres aligned (fast);
    the winner is then measured like the current layout, and returned only if it does
    better there.
    """
    backbone, input_size = current.backbone, current.input_size
    step = max(1, len(boxes) // 1000)  # an even sample of about 1000 boxes to search with
    sample = boxes[::step]
    w = np.array([(b[4] - b[2]) * resized_size(b[0], b[1], input_size)[1] / b[0] for b in sample], dtype=np.float32)
    h = np.array([(b[5] - b[3]) * resized_size(b[0], b[1], input_size)[0] / b[1] for b in sample], dtype=np.float32)
    gt = _centred(w, h)
    n_ratios, n_scales = len(current.ratios), len(current.scales)
    log_r = np.log(h / w)
    quantiles = np.array([(i + 0.5) / n_ratios for i in range(n_ratios)], dtype=np.float32)
    median = float(np.exp(np.sort(log_r)[(len(log_r) - 1) // 2]))  # the lower middle value, as torch.median
    ratio_sets = {current.ratios}
    spread = tuple(round(float(v), 2) for v in np.exp(np.quantile(log_r, quantiles).astype(np.float32)))
    if len(set(spread)) == n_ratios:
        ratio_sets.add(spread)
    for step in (2.0, 2**0.5):
        ratio_sets.add(tuple(round(median * step ** (i - (n_ratios - 1) / 2), 2) for i in range(n_ratios)))
    bases = get_backbone(backbone).base_sizes

    def shape_score(scales, ratios) -> float:
        sizes = np.array([b * s for b in bases for s in scales], dtype=np.float32)
        hr = np.sqrt(np.array(ratios, dtype=np.float32))
        aw = (sizes[:, None] / hr[None, :]).reshape(-1)
        ah = (sizes[:, None] * hr[None, :]).reshape(-1)
        iou = box_iou(gt, _centred(aw, ah)).max(axis=1)
        return float(np.float32((iou >= 0.7).mean()) + np.float32((iou >= 0.5).mean()) + iou.mean())

    ranked = []
    for ratios in sorted(ratio_sets):
        for first in (2 ** (i / 4) for i in range(-12, 9)):
            for spacing in (2 ** (1 / 3), 2**0.5, 2.0):
                scales = tuple(round(first * spacing**k, 3) for k in range(n_scales))
                if min(bases) * scales[0] >= 1:
                    ranked.append((shape_score(scales, ratios), scales, ratios))
    ranked.sort(key=lambda t: -t[0])
    # Shapes alone ignore where the grid puts anchor centres (strides up to 64 px), so the
    # best few are measured on the real anchors.
    best = None
    for _, scales, ratios in ranked[:4]:
        if scales == current.scales and ratios == current.ratios:
            continue
        found = anchor_fit(sample, backbone=backbone, input_size=input_size, scales=scales, ratios=ratios, suggest=False)
        if best is None or found.share_05 + found.share_07 > best.share_05 + best.share_07:
            best = found
    if best is None:
        return None
    best = anchor_fit(boxes, backbone=backbone, input_size=input_size, scales=best.scales, ratios=best.ratios, suggest=False)
    if best.share_05 + best.share_07 <= current.share_05 + current.share_07:
        return None
    return best


def anchor_rule(
    boxes: Sequence[tuple], box_paths: Sequence[Path], root: Path, *, backbone: str, input_size: int,
    scales: Sequence[float], ratios: Sequence[float],
) -> tuple[AnchorFit, list[Finding]]:
    """The VOC6xx findings of a dataset's boxes (see :func:`detect.checks.check_dataset`).

    Args:
        boxes: ``(image width, image height, xmin, ymin, xmax, ymax, line, class)`` per box.
        box_paths: the XML file of each box.
        root: the dataset folder (where dataset-wide findings point).
        backbone, input_size, scales, ratios: the model's anchor layout and input size.
    """
    findings: list[Finding] = []
    fit = anchor_fit(boxes, backbone=backbone, input_size=input_size, scales=scales, ratios=ratios)
    layout = (
        f"{backbone}, input {input_size}, {fit.anchors_per_location} anchors/location "
        f"(scales {'/'.join(f'{s:g}' for s in fit.scales)}, ratios {'/'.join(f'{r:g}' for r in fit.ratios)})"
    )
    findings.append(finding("VOC601", root, None, f"anchor fit for {layout}: {fit.describe()}"))
    for (W, H, x0, y0, x1, y1, line, _), path, value in zip(boxes, box_paths, fit.best_iou):
        if value < 0.5:
            rh, rw = resized_size(W, H, input_size)
            findings.append(
                finding(
                    "VOC602",
                    path,
                    line,
                    f"box {box_text((x0, y0, x1, y1))} ({(x1 - x0) * rw / W:.0f}x{(y1 - y0) * rh / H:.0f} px at "
                    f"input size {input_size}) is reached by no anchor at IoU >= 0.5 (best {value:.2f}); "
                    "the RPN learns it only from a weak match: check the box; if many boxes are like it, "
                    "adapt the anchor scales and ratios",
                )
            )
    if fit.poor:
        s = fit.suggestion
        if s is not None:
            advice = (
                f"train with {s.flags()} for {s.describe()} (the same {s.anchors_per_location} "
                "anchors per location)"
            )
        else:
            advice = "no other scales and ratios do better; change --input-size or the backbone"
        findings.append(
            finding("VOC603", root, None, f"poor anchor coverage for {layout}: {fit.describe()}; {advice}")
        )
    return fit, findings
