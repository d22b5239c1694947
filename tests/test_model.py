"""The detector builder: 9 anchors per location, weights loading, re-initialised layers."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.faster_rcnn import FasterRCNN_MobileNet_V3_Large_FPN_Weights

from detect.model.build import (
    WeightsError,
    _cached_path,
    anchors_per_location,
    build_model,
    describe_anchors,
    feature_strides,
    make_anchor_generator,
    model_from_checkpoint,
)
from detect.model.anchors import image_anchors, resized_size
from detect.model.backbones import get_backbone
from detect.model.config import ModelConfig


@pytest.mark.parametrize("backbone,levels", [("mobilenet", 4), ("resnet50", 5)])
def test_nine_anchors_per_location(backbone: str, levels: int) -> None:
    model = build_model(backbone=backbone, num_classes=5, input_size=128)
    assert anchors_per_location(model) == [9] * levels
    # The RPN head predicts one objectness score and 4 deltas per anchor.
    assert model.rpn.head.cls_logits.out_channels == 9
    assert model.rpn.head.bbox_pred.out_channels == 36
    # And the anchors the generator really produces match: 9 per feature-map cell.
    model.eval()
    images, _ = model.transform([torch.rand(3, 96, 128)])
    feats = list(model.backbone(images.tensors).values())
    anchors = model.rpn.anchor_generator(images, feats)[0]
    assert anchors.shape == (9 * sum(f.shape[-2] * f.shape[-1] for f in feats), 4)
    assert model.rpn.proposal_matcher.high_threshold == 0.7 and model.rpn.proposal_matcher.low_threshold == 0.3


def test_custom_anchor_layout_and_description() -> None:
    gen = make_anchor_generator(backbone="mobilenet", scales=[1, 2], ratios=[0.5, 1, 2, 3])
    assert gen.num_anchors_per_location() == [8, 8, 8, 8]
    text = describe_anchors(gen)
    assert "level 0: sizes 16/32 px x ratios 0.5/1/2/3 = 8 anchors/location" in text


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(backbone="mobilenet", num_classes=3),
        ModelConfig(backbone="resnet50", num_classes=3),
        ModelConfig(backbone="mobilenet", num_classes=3, anchor_scales=(1, 2), anchor_ratios=(0.37, 1, 2, 3)),
        ModelConfig(backbone="mobilenet", num_classes=3, anchor_scales=(0.71, 1.3, 2.6), anchor_base_sizes=(8, 24, 40, 100)),
        ModelConfig.from_dict({"backbone": "mobilenet", "num_classes": 3}),  # the old checkpoints' layout
    ],
    ids=["mobilenet", "resnet50", "custom-ratios", "custom-bases", "legacy-mobilenet"],
)
def test_numpy_anchors_are_torchvisions(config: ModelConfig) -> None:
    """detect.model.anchors (numpy, torch-free) gives the very anchors the built model's
    AnchorGenerator gives on its real feature maps, to the float, for odd image sizes too."""
    for input_size, (h, w) in [(128, (96, 128)), (160, (37, 250)), (96, (200, 55))]:
        model = build_model(config.replace(input_size=input_size)).eval()
        with torch.no_grad():
            images, _ = model.transform([torch.rand(3, h, w)])
            feats = list(model.backbone(images.tensors).values())
            expected = model.rpn.anchor_generator(images, feats)[0].numpy()
        rh, rw = images.image_sizes[0]
        assert (rh, rw) == resized_size(w, h, input_size)
        layout = image_anchors(model.config, rh, rw)
        assert layout.anchors.dtype == expected.dtype and np.array_equal(layout.anchors, expected)
        assert [lv.grid_h * lv.grid_w for lv in layout.levels] == [f.shape[-2] * f.shape[-1] for f in feats]
        assert [lv.per_location for lv in layout.levels] == anchors_per_location(model)


def test_config_rebuilds_same_architecture() -> None:
    model = build_model(backbone="mobilenet", num_classes=3, input_size=160, rpn_batch_size_per_image=64)
    again = build_model(model.config)
    assert [k for k in model.state_dict()] == [k for k in again.state_dict()]
    assert again.rpn.fg_bg_sampler.batch_size_per_image == 64 and again.transform.max_size == 160


def test_mobilenet_features_at_strides_8_to_64() -> None:
    model = build_model(backbone="mobilenet", num_classes=3, input_size=128).eval()
    images, _ = model.transform([torch.rand(3, 128, 128)])
    feats = model.backbone(images.tensors)
    # The backbone table's strides, and what the feature maps really are.
    assert feature_strides(model.config) == get_backbone("mobilenet").feature_strides == (8, 16, 32, 64)
    assert [f.shape[-1] for f in feats.values()] == [128 // s for s in (8, 16, 32, 64)]
    assert model.config.feature_blocks == (6, 12, 16)


def test_demo_head_options_build_what_they_say() -> None:
    model = build_model(backbone="mobilenet", num_classes=3, input_size=128, fpn_norm="gn", box_head_dim=256,
                        roi_sampling_ratio=1)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.fpn.modules()) == 6  # 3 inner + 3 output
    assert model.roi_heads.box_head.fc7.out_features == 256 and model.roi_heads.box_predictor.cls_score.in_features == 256
    assert model.roi_heads.box_roi_pool.sampling_ratio == 1
    again = build_model(model.config)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in again.state_dict().items()]
    with pytest.raises(ValueError, match="fpn_norm"):
        build_model(backbone="mobilenet", num_classes=3, fpn_norm="bn")


def test_checkpoints_from_before_the_fine_layout_rebuild_as_they_were(tmp_path: Path) -> None:
    # Such a checkpoint's model_config has no feature_blocks or anchor_base_sizes: it was
    # torchvision's MobileNet extractor (stride 32, 32, 64) with base anchors 32, 64, 128.
    old = build_model(backbone="mobilenet", num_classes=3, input_size=128, feature_blocks=[], anchor_scales=[1, 2, 4])
    config = {k: v for k, v in old.config.as_dict().items() if k not in ("feature_blocks", "anchor_base_sizes", "fpn_norm",
                                                                "box_head_dim", "roi_sampling_ratio")}
    rebuilt, _ = model_from_checkpoint({"model_config": config, "model": old.state_dict()})
    assert rebuilt.rpn.anchor_generator.sizes == ((32, 64, 128), (64, 128, 256), (128, 256, 512))
    assert feature_strides(rebuilt.config) == (32, 32, 64)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), old.state_dict().values()))
    # And as a starting point for the fine layout, its top FPN level carries over.
    torch.save(old.state_dict(), tmp_path / "old.pt")
    new = build_model(backbone="mobilenet", num_classes=3, input_size=128, weights=str(tmp_path / "old.pt"))
    assert torch.equal(new.state_dict()["backbone.fpn.inner_blocks.2.0.weight"],
                       old.state_dict()["backbone.fpn.inner_blocks.1.0.weight"])
    assert "backbone.fpn.inner_blocks.0.0.weight" in new.weights_report.reinitialised


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(backbone="vgg", num_classes=3)
    with pytest.raises(ValueError, match="trainable_layers"):
        build_model(backbone="resnet50", num_classes=3, trainable_layers=6)
    with pytest.raises(WeightsError, match="not a file"):
        build_model(backbone="mobilenet", num_classes=3, weights="no/such.pt")


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail the way it does on a machine without internet."""
    tried: list[str] = []

    def refuse(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tried


def test_coco_weights_from_hub_cache_reinitialise_mismatched_layers(torch_home: Path, monkeypatch) -> None:
    tried = _offline(monkeypatch)
    # What torch hub would have cached after a real download: a 91-class COCO detector
    # with torchvision's stock 15-anchor RPN head.
    stock = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    cached = _cached_path(FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(stock.state_dict(), cached)

    model = build_model(backbone="mobilenet", num_classes=5, input_size=128, weights="coco")
    report = model.weights_report
    assert tried == []  # the cache was used, nothing fetched
    assert "coco" in report.source and report.loaded > 200
    reinit = set(report.reinitialised)
    assert {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
            "rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight"} <= reinit
    assert "rpn.head.conv.0.0.weight" not in reinit  # same shape: loaded
    # Loaded tensors carry the cached values; re-initialised ones do not.
    state = stock.state_dict()
    assert torch.equal(model.state_dict()["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    # torchvision's COCO MobileNet has two FPN levels (stride 32, from blocks 13 and 16), ours
    # three (blocks 6, 12, 16): they are matched from the top, so the stride-32 block of
    # 960 channels and the top two output convolutions load, and the finer ones start
    # afresh and are listed.
    own = model.state_dict()
    assert torch.equal(own["backbone.fpn.inner_blocks.2.0.weight"], state["backbone.fpn.inner_blocks.1.0.weight"])
    assert torch.equal(own["backbone.fpn.layer_blocks.2.0.weight"], state["backbone.fpn.layer_blocks.1.0.weight"])
    assert torch.equal(own["backbone.fpn.layer_blocks.1.0.weight"], state["backbone.fpn.layer_blocks.0.0.weight"])
    assert {"backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.inner_blocks.1.0.weight",
            "backbone.fpn.layer_blocks.0.0.weight"} <= reinit
    assert "backbone.fpn.inner_blocks.2.0.weight" not in reinit
    # The box head has COCO's width by default, so it loads too.
    assert torch.equal(own["roi_heads.box_head.fc6.weight"], state["roi_heads.box_head.fc6.weight"])
    summary = report.summary()
    assert "backbone.fpn.inner_blocks.0.0" in summary and "rpn.head.cls_logits" in summary
    # Pretrained weights mean frozen batch norm and 3 trainable stages by default.
    assert model.config.frozen_bn is True and model.config.trainable_layers == 3

    # auto takes the cached file too.
    assert "coco" in build_model(backbone="mobilenet", num_classes=5, weights="auto").weights_report.source


def test_auto_falls_back_to_scratch_offline_and_none_never_fetches(torch_home: Path, monkeypatch, caplog) -> None:
    tried = _offline(monkeypatch)
    model = build_model(backbone="mobilenet", num_classes=3, weights="none")
    assert tried == [] and model.weights_report.source == "none"
    model = build_model(backbone="mobilenet", num_classes=3, weights="auto")
    assert len(tried) == 1 and model.weights_report.source == "none"
    assert "training from scratch" in model.weights_report.warning
    with pytest.raises(WeightsError, match="could not load"):
        build_model(backbone="mobilenet", num_classes=3, weights="coco")


def test_imagenet_backbone_from_cache(torch_home: Path, monkeypatch) -> None:
    _offline(monkeypatch)
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

    classifier = mobilenet_v3_large(weights=None)
    cached = _cached_path(MobileNet_V3_Large_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(classifier.state_dict(), cached)
    model = build_model(backbone="mobilenet", num_classes=3, weights="imagenet", trainable_layers=0)
    assert "imagenet" in model.weights_report.source
    first_conv = classifier.state_dict()["features.0.0.weight"]
    assert torch.equal(model.state_dict()["backbone.body.0.0.weight"], first_conv)
    # trainable_layers=0: a frozen feature extractor.
    assert not any(p.requires_grad for p in model.backbone.body.parameters())


def test_weights_from_a_file(tmp_path: Path) -> None:
    donor = build_model(backbone="mobilenet", num_classes=3, input_size=128)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    model = build_model(backbone="mobilenet", num_classes=5, input_size=128, weights=str(tmp_path / "w.pt"))
    assert model.weights_report.reinitialised == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
    ]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        build_model(backbone="mobilenet", num_classes=3, weights=str(tmp_path / "junk.pt"))


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_roi_pool_gradient_is_torchvisions(sampling_ratio: int) -> None:
    """The pooling's sparse-matrix gradient (detect/model/roi_align.py) against torchvision's own
    kernel: the same values forward, the same feature gradient backward, on boxes of every
    size, at the image's edges, one cell wide, and a level that gets no box."""
    from torchvision.ops import MultiScaleRoIAlign

    from detect.model.roi_align import FastGradMultiScaleRoIAlign

    torch.manual_seed(0)
    image = (96, 128)  # features at strides 8, 16, 32, 64 of a 96x128 image
    feats = {str(i): torch.randn(2, 8, 96 // s, 128 // s) for i, s in enumerate((8, 16, 32, 64))}
    xy = torch.rand(40, 2) * torch.tensor([120.0, 90.0])
    boxes = torch.cat([xy, xy + torch.rand(40, 2) * 60 + 0.5], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=128)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=96)
    edges = torch.tensor([[0.0, 0.0, 128.0, 96.0], [127.0, 95.0, 128.0, 96.0], [0.0, 40.0, 3.0, 41.0]])
    boxes = [torch.cat([boxes[:20], edges]), boxes[20:]]
    pools = [cls(["0", "1", "2", "3"], 7, sampling_ratio=sampling_ratio).train()
             for cls in (MultiScaleRoIAlign, FastGradMultiScaleRoIAlign)]
    outs, grads = [], []
    for pool in pools:
        x = {k: v.clone().requires_grad_() for k, v in feats.items()}
        out = pool(x, boxes, [image, image])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([x[k].grad for k in sorted(x)])
    assert torch.equal(outs[0], outs[1])
    for ref, fast in zip(*grads):
        assert torch.allclose(ref, fast, rtol=1e-4, atol=1e-5), (ref - fast).abs().max()
    assert any(g.abs().sum() > 0 for g in grads[1])


def test_model_trains_through_the_fast_gradient() -> None:
    """The model's pooling is the fast-gradient one, and training through it gives the
    gradients torchvision's pooling gives."""
    from detect.model.roi_align import FastGradMultiScaleRoIAlign

    model = build_model(backbone="mobilenet", num_classes=3, input_size=96, weights="none")
    assert isinstance(model.roi_heads.box_roi_pool, FastGradMultiScaleRoIAlign)
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([1])}]
    grads = []
    for pool in (model.roi_heads.box_roi_pool, torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)):
        model.roi_heads.box_roi_pool = pool
        model.zero_grad()
        torch.manual_seed(1)  # the same sampled anchors and proposals
        sum(model.train()(images, targets).values()).backward()
        grads.append(model.backbone.fpn.layer_blocks[0][0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_the_exported_level_merge_is_torchvisions_values_without_its_big_scatter() -> None:
    """For export the pooled levels are merged by one gather (detect/model/roi_align.py): the
    traced function gives torchvision's values exactly, on boxes of every level and a level
    with none, and its graph scatters only a 1-D index, not C x 7 x 7 per box."""
    import onnx
    from torchvision.ops import MultiScaleRoIAlign

    from detect.model.roi_align import FastGradMultiScaleRoIAlign

    torch.manual_seed(0)
    image = (96, 128)
    feats = [torch.randn(1, 8, 96 // s, 128 // s) for s in (8, 16, 32, 64)]
    xy = torch.rand(30, 2) * torch.tensor([100.0, 70.0])
    boxes = torch.cat([xy, xy + torch.rand(30, 2) * 80 + 1.0], 1).clamp(max=96)

    class Pool(torch.nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.pool = cls(["0", "1", "2", "3"], 7, sampling_ratio=2).eval()

        def forward(self, f0, f1, f2, f3, b):
            return self.pool({"0": f0, "1": f1, "2": f2, "3": f3}, [b], [image])

    ours, theirs = torch.jit.trace(Pool(FastGradMultiScaleRoIAlign), (*feats, boxes)), \
        torch.jit.trace(Pool(MultiScaleRoIAlign), (*feats, boxes))
    assert torch.equal(ours(*feats, boxes), theirs(*feats, boxes))
    few = boxes[:3] * 0.2  # small boxes only: the upper levels get none
    assert torch.equal(ours(*feats, few), theirs(*feats, few))

    buffer = io.BytesIO()
    torch.onnx.export(Pool(FastGradMultiScaleRoIAlign), (*feats, boxes), buffer, dynamo=False, opset_version=17,
                      input_names=["f0", "f1", "f2", "f3", "b"], dynamic_axes={"b": {0: "n"}})
    graph = onnx.load_from_string(buffer.getvalue()).graph
    scatters = [n for n in graph.node if n.op_type.startswith("Scatter")]
    assert len(scatters) == 1  # the inverse of the level order, N numbers
    assert any(n.op_type == "Gather" for n in graph.node)


def test_fpn_channels_set_the_fpn_rpn_and_box_head_width_and_old_configs_read_as_256() -> None:
    from detect.model.config import ModelConfig

    model = build_model(ModelConfig(backbone="mobilenet", num_classes=3, input_size=96, fpn_channels=128), weights="none")
    assert model.backbone.out_channels == 128
    assert model.rpn.head.conv[0][0].in_channels == 128
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    assert model.config.fpn_channels == 128
    old = {k: v for k, v in ModelConfig(backbone="mobilenet", num_classes=3).as_dict().items() if k != "fpn_channels"}
    assert ModelConfig.from_dict(old).with_defaults().fpn_channels == 256
