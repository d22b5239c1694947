"""The backbone table: every fact about a backbone, in one place.

:data:`BACKBONES` maps a name (``--backbone``) to a :class:`Backbone`: the strides of the
feature maps the RPN sees, the base anchor size of each level, the default anchor scales,
how many stages can be trained, which torchvision classifier and weights it is built
from, and settings torchvision's own detector uses with it. :mod:`detect.model.build` builds
from it; the trainer, the checker (small-box and anchor-fit rules) and the benchmarks
read it. A third backbone of a family :mod:`detect.model.build` knows (``mobilenet``,
``resnet``) is one more row here.

The table is plain data and imports nothing heavy, so the annotation checker can read it
on a machine without torch; weights are named as ``"EnumClass.MEMBER"`` of
``torchvision.models`` / ``torchvision.models.detection`` and resolved by the model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["BACKBONES", "DEFAULT_ANCHOR_RATIOS", "Backbone", "get_backbone"]

DEFAULT_ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
"""Height/width ratios of the anchors (torchvision's ``aspect_ratios``: h/w)."""


@dataclass(frozen=True)
class Backbone:
    """One backbone of the detector.

    Attributes:
        name: the ``--backbone`` value.
        title: what it is, for people.
        family: how :mod:`detect.model.build` turns the classifier into FPN features
            (``"mobilenet"``: an FPN on the ``feature_blocks`` of the classifier's
            ``features``; ``"resnet"``: torchvision's ``_resnet_fpn_extractor``).
        classifier: the ``torchvision.models`` builder of the classification network.
        feature_strides: stride, in input pixels, of each feature map the RPN sees.
        base_sizes: base anchor size of each level, in pixels of the resized input;
            anchor sizes are ``base * scale``.
        default_scales: the anchor scales when none are given (3 of them: with 3 ratios,
            9 anchors per location).
        max_trainable_layers: stages that can be trained (``--trainable-layers``).
        coco_weights: torchvision's COCO detector weights for this backbone.
        imagenet_weights: torchvision's ImageNet classifier weights.
        detector_defaults: keyword arguments torchvision's detector uses with it.
        feature_blocks: (``mobilenet`` family) indices into the classifier's ``features``
            whose outputs feed the FPN, one per level below the extra max-pool level.
    """

    name: str
    title: str
    family: str
    classifier: str
    feature_strides: tuple[int, ...]
    base_sizes: tuple[int, ...]
    default_scales: tuple[float, ...]
    max_trainable_layers: int
    coco_weights: str
    imagenet_weights: str
    detector_defaults: Mapping[str, Any] = field(default_factory=dict)
    feature_blocks: tuple[int, ...] = ()

    @property
    def levels(self) -> int:
        return len(self.feature_strides)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            name="mobilenet",
            title="MobileNetV3-Large-FPN",
            family="mobilenet",
            classifier="mobilenet_v3_large",
            # The last block of each of strides 8, 16 and 32 (blocks 6, 12, 16: 40, 112 and
            # 960 channels) plus the extra max-pool level. torchvision's MobileNetV3-FPN
            # feeds only stride 32 (two maps) and stride 64: at 256 px an 8x8 grid, too
            # coarse for bottles 15 px wide. This layout was the biggest single lever on the
            # demo (docs/notes.md, "The demo recipe history"). Checkpoints from before it rebuild the old
            # layout (detect.model.config.LEGACY_MOBILENET).
            feature_strides=(8, 16, 32, 64),
            base_sizes=(16, 32, 64, 128),
            feature_blocks=(6, 12, 16),
            # Half octaves within a level, one octave between levels: 16 .. 256 px.
            default_scales=(1.0, 1.41, 2.0),
            max_trainable_layers=6,
            coco_weights="FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1",
            imagenet_weights="MobileNet_V3_Large_Weights.IMAGENET1K_V1",
            # torchvision's setting for this backbone: drop near-empty proposals early.
            detector_defaults={"rpn_score_thresh": 0.05},
        ),
        Backbone(
            name="resnet50",
            title="ResNet-50-FPN",
            family="resnet",
            classifier="resnet50",
            # P2..P6.
            feature_strides=(4, 8, 16, 32, 64),
            base_sizes=(32, 64, 128, 256, 512),
            # Octave thirds, as in RetinaNet: 32 .. 812 px over five levels.
            default_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
            max_trainable_layers=5,
            coco_weights="FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
            imagenet_weights="ResNet50_Weights.IMAGENET1K_V1",
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The table row of ``name``.

    Raises:
        ValueError: no such backbone (a caller mistake; the CLIs offer only table names).
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None
