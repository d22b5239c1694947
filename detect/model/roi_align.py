"""RoIAlign with a fast gradient on the CPU: the box head's feature pooling for training.

torchvision's CPU ``roi_align`` backward walks every RoI, channel, bin and sample point in
one thread, recomputing the bilinear weights for each channel. Profiled on the demo
recipe (2 cores), it took 19% of a training step in full precision and 24% under bfloat16
autocast, more than any op but the convolutions' backward (``python bench/training_speed.py
--profile``, docs/performance.md, "Training speed").

The gradient of RoIAlign is linear in the output gradient: each output bin is a weighted
sum of at most ``4 * sampling_ratio**2`` feature-map cells, so the gradient is a sparse
matrix (feature cells x output bins, 4 weights per sample point) times the output
gradient. Built from the same sample points as torchvision's kernel and multiplied by
``torch.sparse.mm``, it agrees with torchvision's to float rounding (``tests/test_model.py``)
at a tenth of the time. The forward is torchvision's own op, unchanged, so the values,
inference, evaluation and ONNX export are exactly torchvision's; for export the levels'
results are merged by one gather instead of torchvision's element-wise scatter (the same
numbers, a faster graph: :meth:`FastGradMultiScaleRoIAlign._traced`).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
# torchvision's own helpers, so that levels, scales and RoI format are exactly its module's.
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["FastGradMultiScaleRoIAlign", "roi_align"]


def _corners(rois: Tensor, shape: torch.Size, output_size: tuple[int, int], spatial_scale: float,
             sampling_ratio: int) -> tuple[Tensor, Tensor]:
    """For each output bin, the flat feature-map cells (``b*H*W + y*W + x``) its sample
    points read and their bilinear weights (already divided by the sample count), as
    torchvision's ``roi_align`` (``aligned=False``) computes them.

    Args:
        rois: ``[K, 5]`` float32, ``(batch index, x1, y1, x2, y2)`` in image pixels.
        shape: the feature map's ``(B, C, H, W)``.

    Returns:
        ``(cells, weights)``, both ``[K, PH, PW, 4 * sampling_ratio**2]``.
    """
    _, _, height, width = shape
    ph, pw = output_size
    s = sampling_ratio
    start = rois[:, 1:3] * spatial_scale  # (K, 2): x, y
    # torchvision (aligned=False) makes every RoI at least one cell wide and tall.
    extent = (rois[:, 3:5] * spatial_scale - start).clamp(min=1.0)
    offsets = (torch.arange(s, dtype=rois.dtype) + 0.5) / s

    def axis(first: Tensor, length: Tensor, bins: int, size: int):
        # Sample coordinates along one axis, (K, bins, s), then torchvision's bilinear rule:
        # a point more than one cell outside the map reads nothing, one within clamps to
        # the edge, the last row/column has no upper neighbour.
        pos = first[:, None, None] + (torch.arange(bins, dtype=rois.dtype)[None, :, None]
                                      + offsets[None, None, :]) * (length / bins)[:, None, None]
        inside = (pos >= -1.0) & (pos <= size)
        pos = pos.clamp(min=0.0)
        low = pos.floor().long()
        edge = low >= size - 1
        low = low.clamp(max=size - 1)
        high = torch.where(edge, low, low + 1)
        frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
        return low, high, 1.0 - frac, frac, inside

    x_lo, x_hi, x_wlo, x_whi, x_in = axis(start[:, 0], extent[:, 0], pw, width)
    y_lo, y_hi, y_wlo, y_whi, y_in = axis(start[:, 1], extent[:, 1], ph, height)

    def ys(t: Tensor) -> Tensor:  # (K, PH, s) -> (K, PH, 1, s, 1)
        return t[:, :, None, :, None]

    def xs(t: Tensor) -> Tensor:  # (K, PW, s) -> (K, 1, PW, 1, s)
        return t[:, None, :, None, :]

    base = (rois[:, 0].long() * (height * width))[:, None, None, None, None]
    cells = torch.stack([base + ys(y) * width + xs(x) for y in (y_lo, y_hi) for x in (x_lo, x_hi)], -1)
    inside = (ys(y_in) & xs(x_in)).to(rois.dtype)[..., None] / (s * s)
    weights = torch.stack([ys(wy) * xs(wx) for wy in (y_wlo, y_whi) for wx in (x_wlo, x_whi)], -1) * inside
    k = rois.shape[0]
    return cells.reshape(k, ph, pw, -1), weights.reshape(k, ph, pw, -1)


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.geometry = (features.shape, features.dtype, output_size, spatial_scale, sampling_ratio)
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (rois,) = ctx.saved_tensors
        shape, dtype, output_size, spatial_scale, sampling_ratio = ctx.geometry
        batch, channels, height, width = shape
        cells, weights = _corners(rois, shape, output_size, spatial_scale, sampling_ratio)
        k, ph, pw, per_bin = cells.shape
        bins = torch.arange(k * ph * pw).repeat_interleave(per_bin)
        adjoint = torch.sparse_coo_tensor(torch.stack([cells.reshape(-1), bins]), weights.reshape(-1),
                                          (batch * height * width, k * ph * pw), check_invariants=False)
        rows = grad_out.float().permute(0, 2, 3, 1).reshape(k * ph * pw, channels)
        grad = torch.sparse.mm(adjoint, rows).view(batch, height, width, channels).permute(0, 3, 1, 2)
        return grad.contiguous().to(dtype), None, None, None, None


def roi_align(features: Tensor, rois: Tensor, *, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``), with the sparse-matrix gradient when
    it pays: CPU features that need a gradient and a fixed ``sampling_ratio > 0`` (the
    adaptive ``0`` samples a different grid per RoI).

    Args:
        features: ``[B, C, H, W]``.
        rois: ``[K, 5]``, ``(batch index, x1, y1, x2, y2)`` in image pixels.

    Returns:
        ``[K, C, PH, PW]`` in the features' dtype.
    """
    if not (features.requires_grad and torch.is_grad_enabled() and features.device.type == "cpu"
            and sampling_ratio > 0 and rois.shape[0] > 0):
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, False)
    # torchvision's autocast rule for roi_align: compute in float32, return the input dtype.
    with torch.autocast("cpu", enabled=False):
        out = _RoIAlign.apply(features.float(), rois.float(), output_size, spatial_scale, sampling_ratio)
    return out.to(features.dtype)


class FastGradMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, levels and values) whose
    training pass on the CPU pools through :func:`roi_align`, and whose traced form (ONNX
    export) merges the levels with one gather (:meth:`_traced`). In eval mode and on a GPU it
    is torchvision's module as is."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        if torchvision._is_tracing():
            return self._traced(x, boxes, image_shapes)
        if not self.training or self.sampling_ratio <= 0:
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        if features[0].device.type != "cpu":
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(features) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        # As torchvision's _multiscale_roi_align: each RoI pooled from the level its size maps to.
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            keep = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[keep], output_size=self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio)
            result[keep] = pooled.to(result.dtype)
        return result

    def _traced(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """torchvision's pooling for export, the same values, with the levels merged by a
        concatenation and one gather. torchvision's traced merge scatters each level's result
        into a zero tensor through an index expanded to every element (C x 7 x 7 per RoI): in
        onnxruntime those ScatterElements took 32 % of the int8 model's time at 300 proposals
        (docs/notes.md, "Static int8 and the exported RoI merge")."""
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return tv_roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        pooled, taken = [], []
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            keep = torch.where(levels == level)[0]
            pooled.append(tv_roi_align(feature, rois[keep], self.output_size, scale, self.sampling_ratio))
            taken.append(keep)
        order = torch.cat(taken)  # the RoI each row of the concatenation belongs to
        # Its inverse (a 1-D scatter of N numbers): row i of the result is row back[i] of the concatenation.
        back = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], device=order.device))
        return torch.cat(pooled)[back]
