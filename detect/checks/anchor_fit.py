"""Anchor fit: can the model's anchors reach the dataset's boxes (checks VOC601-VOC603).

The "best possible recall" of the RPN: for every ground-truth box, the highest IoU any of
the model's real anchors has with it (built by :func:`detect.model.build.make_anchor_generator`
for the image's resized size, compared with torchvision's ``box_iou``). When coverage is
poor, other scales and ratios with the same number of anchors per location are searched
and suggested as ``--anchor-scales`` / ``--anchor-ratios``.

This is the one annotation check that needs torch; :func:`anchor_rule` is what
:func:`detect.checks.check_dataset` takes as its ``anchor_rule``.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.checks.findings import AnchorFit, Finding, box_text, finding
from detect.model.build import make_anchor_generator

__all__ = ["SIZE_DIVISIBLE", "anchor_fit", "anchor_rule"]

SIZE_DIVISIBLE = 32  # GeneralizedRCNNTransform pads batches to a multiple of this


def _resized_size(width: int, height: int, input_size: int) -> tuple[int, int]:
    """``(height, width)`` after GeneralizedRCNNTransform with min_size = max_size = input_size."""
    scale = min(input_size / min(width, height), input_size / max(width, height))
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def _anchors_for(generator, backbone: str, rh: int, rw: int):
    """The generator's real anchors for one resized image, with each level's layout:
    ``(anchors [N, 4], [(offset, grid_h, grid_w, stride_h, stride_w, per_location)])``."""
    ph = int(math.ceil(rh / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    pw = int(math.ceil(rw / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    grids = [(int(math.ceil(ph / s)), int(math.ceil(pw / s))) for s in get_backbone(backbone).feature_strides]
    # Only shapes matter to the generator: expanded zero-size storage, no memory.
    images = ImageList(torch.zeros(()).expand(1, 3, ph, pw), [(rh, rw)])
    features = [torch.zeros(()).expand(1, 1, gh, gw) for gh, gw in grids]
    anchors = generator(images, features)[0]
    layout = []
    offset = 0
    for (gh, gw), per_location in zip(grids, generator.num_anchors_per_location()):
        layout.append((offset, gh, gw, ph // gh, pw // gw, per_location))
        offset += gh * gw * per_location
    return anchors, layout


def _best_iou_one_size(gt: torch.Tensor, anchors: torch.Tensor, layout, chunk: int = 16) -> torch.Tensor:
    """Highest IoU of each box in ``gt`` with any anchor.

    IoU with an anchor of a fixed shape only falls as the anchor's centre moves away from
    the box's centre along either axis, so for each level and anchor shape the best anchor
    is the one whose grid position puts its centre nearest the box's centre. Those
    candidates (one per shape and level) are compared with torchvision's ``box_iou``,
    which gives the same maximum as comparing every anchor, at a fraction of the work.
    """
    n = gt.shape[0]
    cx = ((gt[:, 0] + gt[:, 2]) / 2)[:, None]
    cy = ((gt[:, 1] + gt[:, 3]) / 2)[:, None]
    candidates = []
    for offset, gh, gw, sh, sw, per_location in layout:
        base = anchors[offset : offset + per_location]  # grid position (0, 0): the shapes
        bx = ((base[:, 0] + base[:, 2]) / 2)[None, :]
        by = ((base[:, 1] + base[:, 3]) / 2)[None, :]
        ix = torch.round((cx - bx) / sw).long().clamp_(0, gw - 1)
        iy = torch.round((cy - by) / sh).long().clamp_(0, gh - 1)
        candidates.append(offset + (iy * gw + ix) * per_location + torch.arange(per_location))
    cand = torch.cat(candidates, dim=1)
    best = torch.empty(n, dtype=gt.dtype)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        best[rows] = box_iou(gt[rows], anchors[torch.unique(cand[rows])]).max(dim=1).values
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
    generator = make_anchor_generator(backbone=backbone, scales=scales, ratios=ratios)
    best = torch.zeros(len(boxes), dtype=torch.float32)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, b in enumerate(boxes):
        by_size[(int(b[0]), int(b[1]))].append(i)
    for (width, height), indices in by_size.items():
        rh, rw = _resized_size(width, height, input_size)
        anchors, layout = _anchors_for(generator, backbone, rh, rw)
        gt = torch.tensor([boxes[i][2:6] for i in indices], dtype=torch.float32)
        gt = gt * torch.tensor([rw / width, rh / height, rw / width, rh / height])
        best[indices] = _best_iou_one_size(gt, anchors, layout)
    n = max(len(boxes), 1)
    fit = AnchorFit(
        backbone=backbone,
        input_size=input_size,
        scales=scales,
        ratios=ratios,
        anchors_per_location=generator.num_anchors_per_location()[0],
        best_iou=best.tolist(),
        share_07=float((best >= 0.7).sum()) / n,
        share_05=float((best >= 0.5).sum()) / n,
    )
    if suggest and fit.poor:
        fit.suggestion = _suggest_anchors(boxes, fit)
    return fit


def _centred(widths: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    return torch.stack([-widths / 2, -heights / 2, widths / 2, heights / 2], dim=1)


def _suggest_anchors(boxes: Sequence[tuple], current: AnchorFit) -> AnchorFit | None:
    """Scales and ratios that fit the dataset's box shapes better, checked on real anchors.

    Candidates are ranked by the IoU of box and anchor shapes with centres aligned (fast);
    the winner is then measured like the current layout, and returned only if it does
    better there.
    """
    backbone, input_size = current.backbone, current.input_size
    step = max(1, len(boxes) // 1000)  # an even sample of about 1000 boxes to search with
    sample = boxes[::step]
    w = torch.tensor([(b[4] - b[2]) * _resized_size(b[0], b[1], input_size)[1] / b[0] for b in sample])
    h = torch.tensor([(b[5] - b[3]) * _resized_size(b[0], b[1], input_size)[0] / b[1] for b in sample])
    gt = _centred(w, h)
    n_ratios, n_scales = len(current.ratios), len(current.scales)
    log_r = torch.log(h / w)
    quantiles = torch.tensor([(i + 0.5) / n_ratios for i in range(n_ratios)], dtype=log_r.dtype)
    median = float(torch.exp(torch.median(log_r)))
    ratio_sets = {current.ratios}
    spread = tuple(round(float(v), 2) for v in torch.exp(torch.quantile(log_r, quantiles)))
    if len(set(spread)) == n_ratios:
        ratio_sets.add(spread)
    for step in (2.0, 2**0.5):
        ratio_sets.add(tuple(round(median * step ** (i - (n_ratios - 1) / 2), 2) for i in range(n_ratios)))
    bases = get_backbone(backbone).base_sizes

    def shape_score(scales, ratios) -> float:
        sizes = torch.tensor([b * s for b in bases for s in scales])
        hr = torch.sqrt(torch.tensor(ratios))
        aw = (sizes[:, None] / hr[None, :]).reshape(-1)
        ah = (sizes[:, None] * hr[None, :]).reshape(-1)
        iou = box_iou(gt, _centred(aw, ah)).max(dim=1).values
        return float((iou >= 0.7).float().mean() + (iou >= 0.5).float().mean() + iou.mean())

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


@contextlib.contextmanager
def _one_torch_thread():
    # The tensors here are tiny: thread start-up and OpenMP spinning cost far more than
    # they save, worst of all on a busy machine. The caller's setting is restored.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    with _one_torch_thread():
        fit = anchor_fit(boxes, backbone=backbone, input_size=input_size, scales=scales, ratios=ratios)
    layout = (
        f"{backbone}, input {input_size}, {fit.anchors_per_location} anchors/location "
        f"(scales {'/'.join(f'{s:g}' for s in fit.scales)}, ratios {'/'.join(f'{r:g}' for r in fit.ratios)})"
    )
    findings.append(finding("VOC601", root, None, f"anchor fit for {layout}: {fit.describe()}"))
    for (W, H, x0, y0, x1, y1, line, _), path, value in zip(boxes, box_paths, fit.best_iou):
        if value < 0.5:
            rh, rw = _resized_size(W, H, input_size)
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
