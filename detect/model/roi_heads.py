"""torchvision's RoI heads with a per-class weight in the box classifier's loss.

``--balance loss`` (detect/training/balance.py) weights the cross-entropy of each sampled
RoI by the weight of its target class (background 1), so that a class that is rare among
the objects counts for more in the classifier's gradient. Everything else (proposal
sampling, the box regression loss, inference) is torchvision's ``RoIHeads`` unchanged, and
the state dict is the same: a checkpoint trained this way loads into a plain model.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

__all__ = ["ClassWeightedRoIHeads", "with_class_weights"]


class ClassWeightedRoIHeads(RoIHeads):
    """``RoIHeads`` (boxes only) whose training ``loss_classifier`` is
    ``F.cross_entropy(logits, labels, weight=class_weights)``: the weighted mean over the
    sampled RoIs. ``class_weights``: float ``[num_classes]`` (index 0 = background), a
    buffer that moves with the module but is not saved."""

    class_weights: torch.Tensor

    def __init__(self, heads: RoIHeads, class_weights: torch.Tensor) -> None:
        if heads.has_mask() or heads.has_keypoint():
            raise ValueError("class weights are for box-only RoI heads")
        super().__init__(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
        )
        self.train(heads.training)
        self.register_buffer("class_weights", class_weights.detach().clone().float(), persistent=False)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, torch.Tensor]]] = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        # torchvision's training branch, with the weighted classifier loss.
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        _, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        loss_classifier = F.cross_entropy(class_logits, torch.cat(labels), weight=self.class_weights)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


def with_class_weights(model: torch.nn.Module, class_weights: torch.Tensor) -> torch.nn.Module:
    """Give ``model`` (a torchvision ``FasterRCNN``) RoI heads whose classifier loss weights
    each class by ``class_weights`` (``[num_classes]``, background first); returns ``model``."""
    n = model.roi_heads.box_predictor.cls_score.out_features
    if class_weights.shape != (n,):
        raise ValueError(f"class_weights must have shape ({n},), got {tuple(class_weights.shape)}")
    model.roi_heads = ClassWeightedRoIHeads(model.roi_heads, class_weights)
    return model
