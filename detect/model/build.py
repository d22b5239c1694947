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

import dataclasses
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

from detect.common.errors import UsageError
from detect.model.anchors import anchor_sizes, feature_strides
from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.model.checkpoint import CheckpointError, load_checkpoint, safe_load
from detect.model.config import FPN_NORMS, ModelConfig
from detect.model.roi_align import FastGradMultiScaleRoIAlign

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("auto", "coco", "imagenet", "none")

__all__ = [
    "WEIGHT_CHOICES",
    "StartWeights",
    "WeightsError",
    "WeightsReport",
    "align_fpn_levels",
    "anchor_sizes",
    "anchors_per_location",
    "build_model",
    "count_parameters",
    "describe_anchors",
    "feature_strides",
    "load_matching",
    "make_anchor_generator",
    "model_from_checkpoint",
    "start_weights",
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


def make_anchor_generator(
    *,
    backbone: str,
    scales: Sequence[float] | None = None,
    ratios: Sequence[float] = DEFAULT_ANCHOR_RATIOS,
    base_sizes: Sequence[int] | None = None,
) -> AnchorGenerator:
    """torchvision's AnchorGenerator with ``len(scales) * len(ratios)`` anchors per location
    on each of the backbone's feature levels (9 by default); the sizes come from
    :func:`detect.model.anchors.anchor_sizes`, which also rebuilds its anchors without torch."""
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


@dataclass
class StartWeights:
    """The weights a model starts from: a detector state dict (COCO or a file), an ImageNet
    backbone (torchvision fetches it while building), or nothing."""

    detector_state: dict[str, torch.Tensor] | None = None
    backbone_weights: Any = None  # a torchvision weights enum
    report: WeightsReport = field(default_factory=WeightsReport)

    @property
    def pretrained(self) -> bool:
        return self.detector_state is not None or self.backbone_weights is not None


def start_weights(backbone: str, weights: str = "none") -> StartWeights:
    """Fetch (or find in the torch hub cache) the weights ``weights`` names for ``backbone``.

    ``weights``: ``"coco"`` (COCO-trained detector), ``"imagenet"`` (ImageNet backbone),
    ``"none"`` (random init; never touches the network), ``"auto"`` (COCO when cached or
    downloadable, else none with a warning), or a path to a checkpoint or state dict.

    Raises:
        WeightsError: ``coco``/``imagenet``/a path was asked for and cannot be had.
    """
    spec = get_backbone(backbone)
    weights = str(weights)
    out = StartWeights()
    coco = _weights_enum(spec.coco_weights)
    if weights == "auto":
        try:
            out.detector_state = _fetch_state_dict(coco)
            out.report.source = f"coco ({coco})"
        except WeightsError as exc:
            out.report.warning = (
                f"no pretrained weights could be had ({exc}); training from scratch, which "
                "needs far more epochs. Run once online (or put the file in the torch hub cache) "
                "to start from COCO weights."
            )
            log.warning(out.report.warning)
    elif weights == "coco":
        out.detector_state = _fetch_state_dict(coco)
        out.report.source = f"coco ({coco})"
    elif weights == "imagenet":
        out.backbone_weights = _weights_enum(spec.imagenet_weights)
        out.report.source = f"imagenet backbone ({out.backbone_weights})"
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
        state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: holds no state dict")
        out.detector_state = state
        out.report.source = str(path)
    return out


def build_model(config: ModelConfig | None = None, *, weights: str | StartWeights = "none",
                **fields: Any) -> FasterRCNN:
    """Build a Faster R-CNN detector.

    Args:
        config: the architecture (:class:`detect.model.config.ModelConfig`); ``fields``
            replace its fields (``build_model(backbone="mobilenet", num_classes=3)`` is
            ``build_model(ModelConfig(backbone="mobilenet", num_classes=3))``). Unset
            fields take the backbone table's and torchvision's defaults.
            ``num_classes`` counts **background too** (torchvision's convention): a
            dataset with K classes needs ``K + 1``; the model predicts labels ``1..K``.
        weights: where the starting weights come from: a :func:`start_weights` choice or
            what it returned. Layers whose shapes differ from the source (the box
            predictor for another class count; the RPN head for another anchor count; FPN
            levels the source lacks) keep their fresh initialisation and are listed in
            ``model.weights_report``.

    Returns:
        ``FasterRCNN`` in train mode. In training it takes a list of ``[3, H, W]`` float
        images in ``[0, 1]`` and targets ``{"boxes": FloatTensor[N, 4] (xmin, ymin, xmax,
        ymax pixels), "labels": Int64Tensor[N]}`` and returns a dict of losses; in eval
        mode it returns one dict per image with ``boxes [M, 4]``, ``scores [M]``,
        ``labels [M]``. Two attributes are added: ``config`` (the :class:`ModelConfig`
        with every field resolved, which rebuilds this architecture) and
        ``weights_report`` (:class:`WeightsReport`).

    Raises:
        ValueError: bad backbone, class count, FPN norm or layer count.
        WeightsError: ``coco``/``imagenet``/a path was asked for and cannot be loaded.
    """
    config = config or ModelConfig()
    if fields:
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        extra = {k: v for k, v in fields.items() if k not in known}
        config = config.replace(**{k: v for k, v in fields.items() if k in known})
        if extra:
            config = config.replace(detector={**config.detector, **extra})
    spec = get_backbone(config.backbone)
    if config.num_classes is None or config.num_classes < 2:
        raise ValueError(f"num_classes counts background too and must be >= 2, got {config.num_classes}")
    if config.fpn_norm is not None and config.fpn_norm not in FPN_NORMS:
        raise ValueError(f"fpn_norm must be one of {', '.join(FPN_NORMS)}, got {config.fpn_norm!r}")
    config = config.with_defaults()
    start = weights if isinstance(weights, StartWeights) else start_weights(config.backbone, weights)
    report = WeightsReport(source=start.report.source, warning=start.report.warning)

    frozen_bn = start.pretrained if config.frozen_bn is None else config.frozen_bn
    max_layers = spec.max_trainable_layers
    trainable_layers = config.trainable_layers
    if trainable_layers is None:
        trainable_layers = 3 if start.pretrained else max_layers
    if not 0 <= trainable_layers <= max_layers:
        raise ValueError(f"trainable_layers for {config.backbone} must be 0..{max_layers}, got {trainable_layers}")
    norm_layer = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d

    classifier = getattr(torchvision.models, spec.classifier)
    try:
        # torchvision's classification builders fetch through the same hub cache.
        body = classifier(weights=start.backbone_weights, norm_layer=norm_layer)
    except Exception as exc:
        if start.backbone_weights is None:
            raise
        raise WeightsError(f"could not load {start.backbone_weights}: {exc}") from exc
    fpn_norm_layer = (lambda channels: nn.GroupNorm(32, channels)) if config.fpn_norm == "gn" else None
    if spec.family == "mobilenet":
        features = _mobilenet_fpn(body, trainable_layers, list(config.feature_blocks), fpn_norm_layer,
                                  config.fpn_channels)
    else:
        if config.fpn_channels != 256:
            raise ValueError(f"fpn_channels {config.fpn_channels}: {config.backbone} has torchvision's 256-channel FPN")
        features = _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm_layer)
    generator = make_anchor_generator(backbone=config.backbone, scales=config.anchor_scales,
                                      ratios=config.anchor_ratios, base_sizes=config.anchor_base_sizes)
    if len(generator.sizes) != _feature_levels(features):
        raise ValueError(f"{len(config.anchor_base_sizes)} anchor base sizes for {_feature_levels(features)} "
                         "feature levels")

    kwargs = {**spec.detector_defaults, **config.detector_kwargs()}
    # torchvision's RoI pooling (with a faster CPU gradient, detect/model/roi_align.py) and box
    # head, with their width and sampling as options. Names "0".."3": every FPN level but the
    # max-pool one, as in torchvision.
    kwargs.setdefault("box_roi_pool", FastGradMultiScaleRoIAlign(["0", "1", "2", "3"], 7,
                                                                 sampling_ratio=config.roi_sampling_ratio))
    kwargs.setdefault("box_head", TwoMLPHead(features.out_channels * 7 * 7, config.box_head_dim))
    kwargs.setdefault("box_predictor", FastRCNNPredictor(config.box_head_dim, config.num_classes))
    model = FasterRCNN(
        features,
        num_classes=None,
        min_size=config.input_size,
        max_size=config.input_size,
        rpn_anchor_generator=generator,
        rpn_fg_iou_thresh=config.rpn_fg_iou,
        rpn_bg_iou_thresh=config.rpn_bg_iou,
        **kwargs,
    )
    if start.detector_state is not None:
        found = load_matching(model, start.detector_state, source=report.source)
        report.loaded, report.reinitialised = found.loaded, found.reinitialised

    model.config = config.replace(trainable_layers=trainable_layers, frozen_bn=frozen_bn)
    model.weights_report = report
    return model


def _mobilenet_fpn(body: nn.Module, trainable_layers: int, blocks: list[int], norm_layer,
                   channels: int = 256) -> BackboneWithFPN:
    """An FPN on the outputs of MobileNetV3 ``features`` blocks ``blocks``, plus the
    max-pool level; ``[]``: torchvision's extractor (stride 32 twice, then 64).

    torchvision's ``returned_layers`` can only name the first (strided) block of a stage;
    the last block of a stage has seen all of it. Stages are frozen as torchvision does.
    """
    if not blocks:
        if channels != 256:
            raise ValueError(f"fpn_channels {channels}: torchvision's MobileNet extractor has 256")
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
        trunk, {str(b): str(i) for i, b in enumerate(blocks)}, [trunk[b].out_channels for b in blocks], channels,
        extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer,
    )


def _feature_levels(features: BackboneWithFPN) -> int:
    return len(features.body.return_layers) + 1  # + the max-pool level


def anchors_per_location(model: FasterRCNN) -> list[int]:
    """Anchors per location on each feature level, as the RPN head sees them."""
    return list(model.rpn.anchor_generator.num_anchors_per_location())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike[str], *, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint describes (:mod:`detect.model.checkpoint`; its
    ``model_config`` is a :meth:`ModelConfig.as_dict`), load its weights, and put it in eval mode.

    Returns:
        ``(model, ckpt)``: the ``FasterRCNN`` on ``device`` and the checkpoint dict.
    """
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt
