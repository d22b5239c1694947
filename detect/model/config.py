"""The one description of a detector's architecture: :class:`ModelConfig`.

The training config holds one, :func:`detect.model.build.build_model` takes one, and
checkpoints and ONNX exports store one (as :meth:`ModelConfig.as_dict`), so a model is
rebuilt from its file alone. Torch-free: the checker, evaluation and the ONNX runtime read
it without torch.

``None`` in a field means "not decided yet": the training recipe
(:mod:`detect.training.config`) or the backbone table (:mod:`detect.model.backbones`)
fills it, and the ``config`` attribute of a built model has every field resolved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone

__all__ = ["FPN_NORMS", "LEGACY_MOBILENET", "ModelConfig"]

FPN_NORMS = ("none", "gn")

# The MobileNet layout of checkpoints written before the backbone table's feature_blocks
# (torchvision's extractor: strides 32, 32, 64): what their model_config lacks.
LEGACY_MOBILENET: dict[str, Any] = {"feature_blocks": (), "anchor_base_sizes": (32, 64, 128)}

# Keys of model configs stored before this class: torchvision's keyword -> our field.
_LEGACY_KEYS = {
    "rpn_pre_nms_top_n_train": "rpn_pre_nms",
    "rpn_post_nms_top_n_train": "rpn_post_nms",
    "rpn_batch_size_per_image": "rpn_batch",
    "box_batch_size_per_image": "roi_batch",
}
_TUPLES = ("anchor_scales", "anchor_ratios", "anchor_base_sizes", "feature_blocks")


@dataclass(frozen=True)
class ModelConfig:
    """A Faster R-CNN's architecture and its sampling budgets.

    Attributes:
        backbone: a name in :data:`detect.model.backbones.BACKBONES` (``mobilenet``, ``resnet50``).
        num_classes: box-predictor outputs **including background** (K classes -> K + 1).
        input_size: the longest image side, in pixels, the model resizes to.
        anchor_scales: multipliers of each FPN level's base anchor size (None: the backbone's).
        anchor_ratios: anchor height/width ratios; anchors per location = scales x ratios.
        anchor_base_sizes: base anchor size per FPN level, in pixels (None: the backbone's).
        feature_blocks: (MobileNet) ``features`` blocks feeding the FPN (None: the
            backbone's; ``()``: torchvision's own extractor, the layout of old checkpoints).
        fpn_norm: ``"gn"`` (GroupNorm after each FPN convolution) or ``"none"`` (torchvision's).
        fpn_channels: channels of every FPN level (None: torchvision's 256); the RPN head and
            the box head's input follow it. MobileNet only (ResNet-50 keeps torchvision's 256).
        box_head_dim: width of the box head's two fully connected layers.
        roi_sampling_ratio: RoIAlign sampling points per bin side.
        trainable_layers: backbone stages that train (None: 3 with pretrained weights, all without).
        frozen_bn: frozen BatchNorm in the backbone (None: with pretrained weights).
        rpn_fg_iou, rpn_bg_iou: IoU at or above which an anchor is foreground, below which background.
        rpn_pre_nms, rpn_post_nms: proposals kept before and after the RPN's NMS, per image,
            in training and at test time alike (None: torchvision's 2000/2000 and 1000/1000).
        rpn_batch: anchors sampled per image for the RPN loss (None: torchvision's 256).
        roi_batch: proposals sampled per image for the box-head loss (None: torchvision's 512).
        detector: any other keyword argument of torchvision's ``FasterRCNN`` (e.g.
            ``box_detections_per_img``), passed as it is.
    """

    backbone: str = "mobilenet"
    num_classes: int | None = None
    input_size: int | None = None
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    anchor_base_sizes: tuple[int, ...] | None = None
    feature_blocks: tuple[int, ...] | None = None
    fpn_norm: str | None = None
    fpn_channels: int | None = None
    box_head_dim: int | None = None
    roi_sampling_ratio: int | None = None
    trainable_layers: int | None = None
    frozen_bn: bool | None = None
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_pre_nms: int | None = None
    rpn_post_nms: int | None = None
    rpn_batch: int | None = None
    roi_batch: int | None = None
    detector: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TUPLES:  # lists from JSON or a CLI become tuples: the config is hashable and compares equal
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "detector", dict(self.detector))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def with_defaults(self) -> "ModelConfig":
        """Every field the backbone table and torchvision's defaults decide, filled in
        (``trainable_layers`` and ``frozen_bn`` stay None: they depend on the weights)."""
        spec = get_backbone(self.backbone)
        blocks = spec.feature_blocks if self.feature_blocks is None else self.feature_blocks
        legacy = spec.family == "mobilenet" and not blocks
        bases = self.anchor_base_sizes or (LEGACY_MOBILENET["anchor_base_sizes"] if legacy else spec.base_sizes)
        return dataclasses.replace(
            self,
            input_size=800 if self.input_size is None else self.input_size,
            anchor_scales=tuple(float(s) for s in self.anchor_scales or spec.default_scales),
            anchor_ratios=tuple(float(r) for r in self.anchor_ratios or DEFAULT_ANCHOR_RATIOS),
            anchor_base_sizes=tuple(int(b) for b in bases),
            feature_blocks=tuple(int(b) for b in blocks),
            fpn_norm=self.fpn_norm or "none",
            fpn_channels=self.fpn_channels or 256,
            box_head_dim=self.box_head_dim or 1024,
            roi_sampling_ratio=2 if self.roi_sampling_ratio is None else self.roi_sampling_ratio,
        )

    def detector_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of torchvision's ``FasterRCNN`` this config sets: the one place
        our names become torchvision's (the proposal budget is the same in training and at test
        time, since inference cost is mostly the box head running on every proposal)."""
        out: dict[str, Any] = {}
        if self.rpn_pre_nms is not None:
            out["rpn_pre_nms_top_n_train"] = out["rpn_pre_nms_top_n_test"] = self.rpn_pre_nms
        if self.rpn_post_nms is not None:
            out["rpn_post_nms_top_n_train"] = out["rpn_post_nms_top_n_test"] = self.rpn_post_nms
        if self.rpn_batch is not None:
            out["rpn_batch_size_per_image"] = self.rpn_batch
        if self.roi_batch is not None:
            out["box_batch_size_per_image"] = self.roi_batch
        return {**out, **self.detector}

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists, not tuples): what checkpoints and ONNX metadata store."""
        out = dataclasses.asdict(self)
        for name in _TUPLES:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """The inverse of :meth:`as_dict`; also reads the keyword dicts that checkpoints stored
        before this class (torchvision's names, a ``weights`` entry, MobileNet checkpoints from
        before ``feature_blocks``, which get their old layout)."""
        values = dict(values)
        values.pop("weights", None)
        known = {f.name for f in dataclasses.fields(cls)}
        detector = dict(values.pop("detector", None) or {})
        fields: dict[str, Any] = {}
        for key, value in values.items():
            if key in known:
                fields[key] = value
            elif key in _LEGACY_KEYS:
                fields.setdefault(_LEGACY_KEYS[key], value)
            elif key in ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test"):
                train_key = key.replace("_test", "_train")
                if values.get(train_key) != value:  # a test budget of its own: kept as torchvision's keyword
                    detector[key] = value
            else:
                detector[key] = value
        if "feature_blocks" not in fields and get_backbone(fields.get("backbone", cls.backbone)).family == "mobilenet":
            for key, value in LEGACY_MOBILENET.items():
                fields.setdefault(key, value)
        return cls(**fields, detector=detector)
