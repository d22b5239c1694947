"""The RPN's anchors, torch-free: the exact boxes torchvision's ``AnchorGenerator`` makes.

The one source of the anchor layout: :func:`anchor_sizes` (each FPN level's base size times
the scales) is what :func:`detect.model.build.make_anchor_generator` hands to torchvision,
and :func:`image_anchors` rebuilds, in numpy, the anchors that generator produces for one
image, so the annotation checker's anchor fit (:mod:`detect.checks.anchor_fit`) measures
the model's real anchors without importing torch.

How torchvision makes them, step for step (float32 throughout, as torchvision does):

* per level, one zero-centred anchor per (ratio, scale), ratios outer: width
  ``size / sqrt(ratio)``, height ``size * sqrt(ratio)`` (ratio = h/w), corners rounded
  half to even;
* the batch is padded to a multiple of :data:`SIZE_DIVISIBLE`; a level of stride ``s`` has
  a ``ceil(padded / s)`` grid (the FPN's max-pool level rounds up too), and its anchors step
  by ``padded // grid`` pixels: the stride torchvision infers, which for the stride-64
  level of an odd number of 32-px blocks is less than 64;
* anchors are listed level by level, then row by row, column by column, and the anchors
  of one location together.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the resized (model input) image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.model.config import ModelConfig

__all__ = [
    "SIZE_DIVISIBLE",
    "AnchorLayout",
    "Level",
    "anchor_layout",
    "anchor_sizes",
    "cell_anchors",
    "feature_strides",
    "image_anchors",
    "resized_size",
]

SIZE_DIVISIBLE = 32
"""GeneralizedRCNNTransform pads each batch to a multiple of this many pixels."""


def anchor_sizes(
    backbone: str, scales: Sequence[float], base_sizes: Sequence[int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes per feature level: each level's base size (default: the backbone
    table's) times each scale, rounded to whole pixels."""
    bases = tuple(base_sizes) if base_sizes else get_backbone(backbone).base_sizes
    return tuple(tuple(int(round(base * s)) for s in scales) for base in bases)


def feature_strides(config: ModelConfig) -> tuple[int, ...]:
    """Strides (input pixels) of the FPN levels of the model ``build_model(config)`` builds."""
    spec = get_backbone(config.backbone)
    if spec.family == "mobilenet" and config.feature_blocks is not None and not config.feature_blocks:
        return (32, 32, 64)  # torchvision's extractor, the layout of old checkpoints (LEGACY_MOBILENET)
    return spec.feature_strides


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """The zero-centred anchors of one level, ``[len(ratios) * len(sizes), 4]`` float32,
    ratios outer and sizes inner (torchvision's ``AnchorGenerator.generate_anchors``)."""
    scales = np.asarray(sizes, dtype=np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, dtype=np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))  # np.round: half to even, as torch


def resized_size(width: int, height: int, input_size: int) -> tuple[int, int]:
    """``(height, width)`` of an image after GeneralizedRCNNTransform with
    ``min_size = max_size = input_size`` (the longest side becomes ``input_size``)."""
    scale = min(input_size / min(width, height), input_size / max(width, height))
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


@dataclass(frozen=True)
class Level:
    """One feature level's anchors within :attr:`AnchorLayout.anchors`: rows
    ``offset .. offset + grid_h * grid_w * per_location``, the cell anchors ``cells``
    (``[per_location, 4]``) stepped by ``stride_h`` / ``stride_w`` pixels."""

    offset: int
    grid_h: int
    grid_w: int
    stride_h: int
    stride_w: int
    cells: np.ndarray

    @property
    def per_location(self) -> int:
        return len(self.cells)


@dataclass(frozen=True)
class AnchorLayout:
    """The anchors of one (resized) image size: ``anchors`` ``[N, 4]`` float32 in
    torchvision's order, and where each level's block starts."""

    anchors: np.ndarray
    levels: tuple[Level, ...]


def anchor_layout(
    height: int, width: int, *, strides: Sequence[int], sizes: Sequence[Sequence[float]],
    ratios: Sequence[float],
) -> AnchorLayout:
    """The anchors torchvision's ``AnchorGenerator(sizes, (ratios,) * levels)`` makes for a
    batch of one image resized to ``height x width``, on feature maps of ``strides``."""
    if len(strides) != len(sizes):
        raise ValueError(f"{len(sizes)} anchor size groups for {len(strides)} feature levels")
    ph = int(math.ceil(height / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    pw = int(math.ceil(width / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    blocks, levels = [], []
    offset = 0
    for stride, level_sizes in zip(strides, sizes):
        gh, gw = int(math.ceil(ph / stride)), int(math.ceil(pw / stride))
        sh, sw = ph // gh, pw // gw
        cells = cell_anchors(level_sizes, ratios)
        shift_y, shift_x = np.meshgrid(np.arange(gh, dtype=np.int64) * sh, np.arange(gw, dtype=np.int64) * sw,
                                       indexing="ij")
        shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1).astype(np.float32)
        blocks.append((shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4))
        levels.append(Level(offset, gh, gw, sh, sw, cells))
        offset += gh * gw * len(cells)
    return AnchorLayout(np.concatenate(blocks), tuple(levels))


def image_anchors(config: ModelConfig, height: int, width: int) -> AnchorLayout:
    """The anchors of the model ``build_model(config)`` for an image it resized to
    ``height x width`` (see :func:`resized_size`): ``config``'s scales, ratios and base
    sizes, or the backbone's where they are None."""
    filled = config.with_defaults()
    return anchor_layout(
        height, width, strides=feature_strides(filled),
        sizes=anchor_sizes(filled.backbone, filled.anchor_scales, filled.anchor_base_sizes),
        ratios=filled.anchor_ratios or DEFAULT_ANCHOR_RATIOS,
    )
