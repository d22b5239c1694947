"""The detector: torchvision's Faster R-CNN on a MobileNetV3-Large-FPN or ResNet-50-FPN backbone.

Everything here is torchvision's own machinery (``FasterRCNN``, ``AnchorGenerator``, the
RPN and its IoU ``Matcher``); this module only chooses and wires the parts:

* the RPN gets **9 anchors per location**, 3 aspect ratios x 3 scales, on every feature
  level, where torchvision's stock detectors use 3 (ResNet-50) or 15 (MobileNet);
* anchors are matched to ground truth by IoU (Jaccard), foreground at >= ``rpn_fg_iou``
  and background below ``rpn_bg_iou``;
* MobileNet feeds the FPN from the last block of strides 8, 16 and 32 (the backbone
  table's ``feature_blocks``), where torchvision's MobileNet detector uses stride 32 only;
* ``weights`` picks where the starting weights come from (COCO detector, ImageNet
  backbone, nothing, or a file), and layers whose shapes differ from the source (the box
  predictor for another class count; the RPN head for another anchor count; FPN levels
  the source lacks) are re-initialised and listed in ``model.weights_report``. FPN levels
  are matched from the top (coarsest) down, so a source with fewer levels, such as
  torchvision's COCO MobileNet, still gives its top levels.

Boxes everywhere are ``(xmin, ymin, xmax, ymax)`` in pixels of the image given to the
model; the model resizes internally (``input_size`` is the longest side it works at) and
maps its predictions back to the input image.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torchvision.models
import torchvision.models.detection
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detect.model.backbones import BACKBONES as BACKBONE_TABLE
from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.model.checkpoint import CheckpointError, load_checkpoint, safe_load
from detect.common.errors import UsageError
from detect.model.roi_align import FastGradMultiScaleRoIAlign

log = logging.getLogger(__name__)

BACKBONES = tuple(BACKBONE_TABLE)
WEIGHT_CHOICES = ("auto", "coco", "imagenet", "none")
FPN_NORMS = ("none", "gn")

# The MobileNet layout of checkpoints written before the backbone table's feature_blocks
# (torchvision's extractor: strides 32, 32, 64): what their model_config lacks.
LEGACY_MOBILENET: dict[str, Any] = {"feature_blocks": [], "anchor_base_sizes": [32, 64, 128]}

__all__ = [
    "BACKBONES",
    "DEFAULT_ANCHOR_RATIOS",
    "FPN_NORMS",
    "LEGACY_MOBILENET",
    "WEIGHT_CHOICES",
    "WeightsError",
    "WeightsReport",
    "align_fpn_levels",
    "anchor_sizes",
    "anchors_per_location",
    "build_model",
    "checkpoint_model_config",
    "count_parameters",
    "describe_anchors",
    "feature_strides",
    "load_matching",
    "make_anchor_generator",
    "model_from_checkpoint",
]


class WeightsError(UsageError):
    """Requested weights cannot be had (not cached and not downloadable, or a bad file)."""


@dataclass
class WeightsReport:
    """Where the starting weights came from and what did not fit."""

    source: str = "none"
    loaded: int = 0
    reinitialised: list[str] = field(default_factory=list)
    warning: str | None = None

    def summary(self) -> str:
        text = f"weights: {self.source}"
        if self.loaded:
            text += f" ({self.loaded} tensors loaded"
            if self.reinitialised:
                text += f"; re-initialised: {', '.join(_group_keys(self.reinitialised))}"
            text += ")"
        return text


def _group_keys(keys: Sequence[str]) -> list[str]:
    # "roi_heads.box_predictor.cls_score.weight" -> "roi_heads.box_predictor.cls_score"
    seen: dict[str, None] = {}
    for k in keys:
        seen[k.rsplit(".", 1)[0]] = None
    return list(seen)


def anchor_sizes(
    backbone: str, scales: Sequence[float], base_sizes: Sequence[int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes per feature level: each level's base size (default: the backbone
    table's) times each scale."""
    bases = tuple(base_sizes) if base_sizes else get_backbone(backbone).base_sizes
    return tuple(tuple(int(round(base * s)) for s in scales) for base in bases)


def make_anchor_generator(
    *,
    backbone: str,
    scales: Sequence[float] | None = None,
    ratios: Sequence[float] = DEFAULT_ANCHOR_RATIOS,
    base_sizes: Sequence[int] | None = None,
) -> AnchorGenerator:
    """torchvision's AnchorGenerator with ``len(scales) * len(ratios)`` anchors per location
    on each of the backbone's feature levels (9 by default)."""
    scales = tuple(scales) if scales else get_backbone(backbone).default_scales
    sizes = anchor_sizes(backbone, scales, base_sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(float(r) for r in ratios),) * len(sizes))


def describe_anchors(generator: AnchorGenerator) -> str:
    """One line per level: ``level 0: sizes 32/40/50 px x ratios 0.5/1/2 = 9 anchors/location``."""
    lines = []
    for i, (sizes, ratios) in enumerate(zip(generator.sizes, generator.aspect_ratios)):
        n = len(sizes) * len(ratios)
        lines.append(
            f"level {i}: sizes {'/'.join(str(s) for s in sizes)} px x ratios "
            f"{'/'.join(f'{r:g}' for r in ratios)} = {n} anchors/location"
        )
    return "\n".join(lines)


def _cached_path(url: str) -> Path:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _weights_enum(name: str):
    """``"FasterRCNN_ResNet50_FPN_Weights.COCO_V1"`` -> torchvision's enum member."""
    cls, member = name.split(".")
    for module in (torchvision.models.detection, torchvision.models):
        if hasattr(module, cls):
            return getattr(getattr(module, cls), member)
    raise ValueError(f"torchvision has no weights {name}")


def _fetch_state_dict(weights_enum) -> dict[str, torch.Tensor]:
    """torch hub's cached copy, or a download (with torchvision's hash check)."""
    try:
        return torch.hub.load_state_dict_from_url(
            weights_enum.url, progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # URLError, hash mismatch, a truncated cache file...
        raise WeightsError(
            f"could not load {weights_enum} from {weights_enum.url} "
            f"(cache: {_cached_path(weights_enum.url)}): {exc}"
        ) from exc


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> WeightsReport:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s; list the rest.

    Model tensors the source has in another shape (a box predictor for another number of
    classes, an RPN head for another number of anchors) keep their fresh initialisation.
    FPN blocks are matched level by level from the top when the source has another number
    of levels (:func:`align_fpn_levels`).
    """
    own = model.state_dict()
    state = align_fpn_levels(state, own)
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reinit = sorted(k for k in own if k in state and own[k].shape != state[k].shape)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    model.load_state_dict(fitting, strict=False)
    if missing:
        log.warning("%s has no values for %d tensors (first: %s)", source, len(missing), missing[0])
    return WeightsReport(source=source, loaded=len(fitting), reinitialised=reinit + missing)


_FPN_BLOCK = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks)\.(\d+)\.(.*)$")


def _fpn_levels(keys) -> int:
    return len({int(m.group(2)) for k in keys if (m := _FPN_BLOCK.match(k))})


def align_fpn_levels(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its FPN blocks renumbered so the levels line up from the top.

    torchvision numbers FPN blocks from the finest level up. A source with two levels
    (torchvision's COCO MobileNet: strides 32 and 32) and a model with three (strides 8,
    16, 32) share their top level, not their first: source block ``i`` becomes model block
    ``i + 3 - 2``. Blocks with no counterpart are dropped (the model's keep their fresh
    values and are reported); shapes are checked by the caller as for any tensor.
    """
    shift = _fpn_levels(own) - _fpn_levels(state)
    if shift == 0 or not _fpn_levels(state):
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _FPN_BLOCK.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) + shift >= 0:
            out[f"{m.group(1)}.{int(m.group(2)) + shift}.{m.group(3)}"] = value
    return out


def build_model(
    *,
    backbone: str,
    num_classes: int,
    anchor_scales: Sequence[float] | None = None,
    anchor_ratios: Sequence[float] = DEFAULT_ANCHOR_RATIOS,
    input_size: int = 800,
    weights: str = "none",
    trainable_layers: int | None = None,
    rpn_fg_iou: float = 0.7,
    rpn_bg_iou: float = 0.3,
    frozen_bn: bool | None = None,
    feature_blocks: Sequence[int] | None = None,
    anchor_base_sizes: Sequence[int] | None = None,
    fpn_norm: str = "none",
    box_head_dim: int = 1024,
    roi_sampling_ratio: int = 2,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """Build a Faster R-CNN detector.

    Args:
        backbone: ``"mobilenet"`` (MobileNetV3-Large-FPN) or ``"resnet50"`` (ResNet-50-FPN).
        num_classes: number of outputs of the box predictor **including background**
            (torchvision's convention): a dataset with K classes needs ``K + 1``; the model
            predicts labels ``1..K``.
        anchor_scales: multipliers of each level's base anchor size; defaults per backbone
            (``default_scales`` in :data:`detect.model.backbones.BACKBONES`).
        anchor_ratios: anchor height/width ratios. Anchors per location =
            ``len(anchor_scales) * len(anchor_ratios)``.
        input_size: the longest image side the model works at (the image is resized so
            it fits in ``input_size x input_size``, aspect kept).
        weights: ``"coco"`` (COCO-trained detector), ``"imagenet"`` (ImageNet backbone),
            ``"none"`` (random init; never touches the network), ``"auto"`` (COCO when
            cached or downloadable, else random with a warning), or a path to a checkpoint
            or state dict.
        trainable_layers: backbone stages to train (0 = frozen feature extractor; up to 5
            for ResNet-50, 6 for MobileNet). Default: 3 with pretrained weights, all without.
        rpn_fg_iou, rpn_bg_iou: IoU thresholds for RPN anchor matching.
        frozen_bn: use frozen batch norm in the backbone; default True with pretrained
            weights (their statistics are kept), False from scratch.
        feature_blocks: (MobileNet) blocks of the classifier's ``features`` that feed the
            FPN; default the backbone table's; ``[]`` is torchvision's own extractor (the
            layout of older checkpoints, :data:`LEGACY_MOBILENET`).
        anchor_base_sizes: base anchor size per FPN level; default the backbone table's.
        fpn_norm: ``"gn"`` puts GroupNorm (32 groups) after each FPN convolution, which
            trains faster from scratch; ``"none"`` is torchvision's FPN (what COCO
            weights were trained with).
        box_head_dim: width of the box head's two fully connected layers (torchvision:
            1024, the size COCO weights have; 256 is a quarter of the box-head cost).
        roi_sampling_ratio: RoIAlign sampling points per bin side (torchvision: 2).
        **detector_kwargs: passed to torchvision's ``FasterRCNN`` (e.g.
            ``rpn_batch_size_per_image``, ``box_batch_size_per_image``,
            ``rpn_post_nms_top_n_train``, ``box_detections_per_img``, ``image_mean``).

    Returns:
        ``FasterRCNN`` in train mode. In training it takes a list of ``[3, H, W]`` float
        images in ``[0, 1]`` and targets ``{"boxes": FloatTensor[N, 4], "labels":
        Int64Tensor[N]}`` and returns a dict of losses; in eval mode it returns one dict
        per image with ``boxes [M, 4]``, ``scores [M]``, ``labels [M]``. Two attributes
        are added: ``config`` (the keyword arguments that rebuild this architecture with
        ``build_model(**config)``) and ``weights_report`` (:class:`WeightsReport`).

    Raises:
        ValueError: bad backbone, class count or layer count.
        WeightsError: ``coco``/``imagenet``/a path was asked for and cannot be loaded.
    """
    spec = get_backbone(backbone)
    if num_classes < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
    weights = str(weights)
    scales = tuple(float(s) for s in anchor_scales) if anchor_scales else spec.default_scales
    ratios = tuple(float(r) for r in anchor_ratios)
    blocks = [int(b) for b in (spec.feature_blocks if feature_blocks is None else feature_blocks)]
    bases = [int(b) for b in (anchor_base_sizes or (spec.base_sizes if blocks or spec.family != "mobilenet"
                                                    else LEGACY_MOBILENET["anchor_base_sizes"]))]
    if fpn_norm not in FPN_NORMS:
        raise ValueError(f"fpn_norm must be one of {', '.join(FPN_NORMS)}, got {fpn_norm!r}")

    report = WeightsReport()
    detector_state: dict[str, torch.Tensor] | None = None
    backbone_weights = None
    coco = _weights_enum(spec.coco_weights)
    if weights == "auto":
        try:
            detector_state = _fetch_state_dict(coco)
            report.source = f"coco ({coco})"
        except WeightsError as exc:
            report.warning = (
                f"no pretrained weights could be had ({exc}); training from scratch, which "
                "needs far more epochs. Run once online (or put the file in the torch hub cache) "
                "to start from COCO weights."
            )
            log.warning(report.warning)
    elif weights == "coco":
        detector_state = _fetch_state_dict(coco)
        report.source = f"coco ({coco})"
    elif weights == "imagenet":
        backbone_weights = _weights_enum(spec.imagenet_weights)
        report.source = f"imagenet backbone ({backbone_weights})"
    elif weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"{weights}: not a file; --weights takes auto, coco, imagenet, none or a checkpoint path"
            )
        try:
            loaded = safe_load(path)
        except CheckpointError as exc:  # its message names the file and what is wrong with it
            raise WeightsError(f"--weights: not a loadable weights file: {exc}") from None
        detector_state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if not isinstance(detector_state, dict):
            raise WeightsError(f"{path}: holds no state dict")
        report.source = str(path)

    pretrained = detector_state is not None or backbone_weights is not None
    if frozen_bn is None:
        frozen_bn = pretrained
    max_layers = spec.max_trainable_layers
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else max_layers
    if not 0 <= trainable_layers <= max_layers:
        raise ValueError(f"trainable_layers for {backbone} must be 0..{max_layers}, got {trainable_layers}")
    norm_layer = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d

    classifier = getattr(torchvision.models, spec.classifier)
    try:
        # torchvision's classification builders fetch through the same hub cache.
        body = classifier(weights=backbone_weights, norm_layer=norm_layer)
    except Exception as exc:
        if backbone_weights is None:
            raise
        raise WeightsError(f"could not load {backbone_weights}: {exc}") from exc
    fpn_norm_layer = (lambda channels: nn.GroupNorm(32, channels)) if fpn_norm == "gn" else None
    if spec.family == "mobilenet":
        features = _mobilenet_fpn(body, trainable_layers, blocks, fpn_norm_layer)
    else:
        features = _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm_layer)
    generator = make_anchor_generator(backbone=backbone, scales=scales, ratios=ratios, base_sizes=bases)
    if len(generator.sizes) != _feature_levels(features):
        raise ValueError(f"{len(bases)} anchor base sizes for {_feature_levels(features)} feature levels")

    kwargs = {**spec.detector_defaults, **detector_kwargs}
    # torchvision's RoI pooling (with a faster CPU gradient, detect/model/roi_align.py) and box head,
    # with their width and sampling as options. Names "0".."3": every FPN level but the
    # max-pool one, as in torchvision.
    kwargs.setdefault("box_roi_pool", FastGradMultiScaleRoIAlign(["0", "1", "2", "3"], 7,
                                                                 sampling_ratio=roi_sampling_ratio))
    kwargs.setdefault("box_head", TwoMLPHead(features.out_channels * 7 * 7, box_head_dim))
    kwargs.setdefault("box_predictor", FastRCNNPredictor(box_head_dim, num_classes))
    model = FasterRCNN(
        features,
        num_classes=None,
        min_size=input_size,
        max_size=input_size,
        rpn_anchor_generator=generator,
        rpn_fg_iou_thresh=rpn_fg_iou,
        rpn_bg_iou_thresh=rpn_bg_iou,
        **kwargs,
    )
    if detector_state is not None:
        found = load_matching(model, detector_state, source=report.source)
        report.loaded, report.reinitialised = found.loaded, found.reinitialised

    model.config = dict(
        backbone=backbone,
        num_classes=num_classes,
        anchor_scales=list(scales),
        anchor_ratios=list(ratios),
        input_size=input_size,
        weights="none",
        trainable_layers=trainable_layers,
        rpn_fg_iou=rpn_fg_iou,
        rpn_bg_iou=rpn_bg_iou,
        frozen_bn=frozen_bn,
        feature_blocks=blocks,
        anchor_base_sizes=bases,
        fpn_norm=fpn_norm,
        box_head_dim=box_head_dim,
        roi_sampling_ratio=roi_sampling_ratio,
        **detector_kwargs,
    )
    model.weights_report = report
    return model


def _mobilenet_fpn(body: nn.Module, trainable_layers: int, blocks: list[int], norm_layer) -> BackboneWithFPN:
    """An FPN on the outputs of MobileNetV3 ``features`` blocks ``blocks``, plus the
    max-pool level; ``[]``: torchvision's extractor (stride 32 twice, then 64).

    torchvision's ``returned_layers`` can only name the first (strided) block of a stage;
    the last block of a stage has seen all of it. Stages are frozen as torchvision does.
    """
    if not blocks:
        return _mobilenet_extractor(body, True, trainable_layers, norm_layer=norm_layer)
    trunk = body.features
    if not all(0 <= b < len(trunk) for b in blocks) or list(blocks) != sorted(set(blocks)):
        raise ValueError(f"feature_blocks must rise within 0..{len(trunk) - 1}, got {blocks}")
    stage_starts = [0] + [i for i, b in enumerate(trunk) if getattr(b, "_is_cn", False)] + [len(trunk) - 1]
    freeze_before = len(trunk) if trainable_layers == 0 else stage_starts[len(stage_starts) - trainable_layers]
    for block in trunk[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    return BackboneWithFPN(
        trunk, {str(b): str(i) for i, b in enumerate(blocks)}, [trunk[b].out_channels for b in blocks], 256,
        extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer,
    )


def _feature_levels(features: BackboneWithFPN) -> int:
    return len(features.body.return_layers) + 1  # + the max-pool level


def feature_strides(config: dict[str, Any]) -> tuple[int, ...]:
    """Strides (input pixels) of the FPN levels of the model ``build_model(**config)`` builds."""
    spec = get_backbone(config["backbone"])
    if spec.family == "mobilenet" and not config.get("feature_blocks"):
        # Empty, or absent as in checkpoints from before the table had feature_blocks:
        # torchvision's extractor (LEGACY_MOBILENET).
        return (32, 32, 64)
    return spec.feature_strides


def anchors_per_location(model: FasterRCNN) -> list[int]:
    """Anchors per location on each feature level, as the RPN head sees them."""
    return list(model.rpn.anchor_generator.num_anchors_per_location())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``build_model`` arguments that rebuild a checkpoint's architecture (no weights
    fetched); a MobileNet checkpoint from before ``feature_blocks`` gets its old layout."""
    config = dict(ckpt["model_config"])
    config["weights"] = "none"
    if "feature_blocks" not in config and get_backbone(config["backbone"]).family == "mobilenet":
        config.update(LEGACY_MOBILENET)
    return config


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike[str], *, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes (:mod:`detect.model.checkpoint`), load its weights,
    and put it in eval mode.

    Returns:
        ``(model, ckpt)``: the ``FasterRCNN`` on ``device`` and the checkpoint dict.
    """
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(**checkpoint_model_config(ckpt))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt
