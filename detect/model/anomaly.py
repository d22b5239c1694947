"""Patch features of item crops from the detector's backbone, and the per-class memory bank.

PatchCore (Roth et al. 2022), as anomalib implements it, on the items a detector finds:

1. Each crop is resized to ``crop_size`` and run through the backbone's body up to two
   mid-level feature maps (stride 8 and 16 on MobileNetV3, ResNet's layer2 and layer3);
   each map is averaged over 3x3 neighbourhoods (a patch sees its neighbours), the coarser
   one upsampled to the finer grid, and the two concatenated: one ``D``-vector per patch.
2. The bank of a base class (``Lata``, ``Botella``) holds the patches of its intact training
   crops, subsampled by k-center greedy (:func:`detect.model.patchbank.greedy_coreset`).
3. An item's score is the largest distance of its patches to their nearest bank patch
   (:meth:`detect.model.patchbank.PatchBank.score`, numpy); :func:`torch_scores` is the
   torch reference it is tested against.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detect.model.patchbank import (
    BANK_FORMAT, BankError, PatchBank, bank_path, base_class, box_crops, check_intact_counts, greedy_coreset,
    is_defect_class,
)

__all__ = ["ItemScorer", "scorer_beside", "PatchFeatures", "export_features", "bank_for_checkpoint",
           "bank_path", "build_bank", "checkpoint_crops", "intact_crops", "item_scores", "torch_scores"]

log = logging.getLogger(__name__)

# What detect.train builds at the end of training and detect.anomaly by default: sized so the
# build takes seconds on the demo's training split (docs/anomaly.md, "Cost").
DEFAULT_CROP = (64, 64)
DEFAULT_BANK_SIZE = 1000
DEFAULT_MAX_CROPS = 200
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchFeatures(nn.Module):
    """Patch features of item crops from a detector's backbone body (frozen, eval mode).

    Args:
        model: a torchvision ``FasterRCNN`` built by :func:`detect.model.build.build_model`
            (its ``backbone.body`` returns an ordered dict of feature maps).
        crop_size: ``(height, width)`` every crop is resized to.

    Call with crops (a list of ``H x W x 3`` uint8 RGB arrays): returns ``[N, P, D]`` float32,
    ``P`` patches per crop (the finer level's grid) of ``D`` channels.
    """

    def __init__(self, model: nn.Module, crop_size: tuple[int, int] = DEFAULT_CROP) -> None:
        super().__init__()
        body = model.backbone.body
        names = list(dict.fromkeys(body.return_layers.values()))
        # ResNet: layer1..layer4 -> use layer2, layer3 (PatchCore's); MobileNet: strides 8 and 16.
        self.layers = names[1:3] if len(names) >= 4 else names[:2]
        self.body = body
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        transform = getattr(model, "transform", None)
        mean = getattr(transform, "image_mean", _IMAGENET_MEAN)
        std = getattr(transform, "image_std", _IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        config = getattr(model, "config", None)
        self.backbone = getattr(config, "backbone", "unknown")
        self.input_size = getattr(config, "input_size", None)
        self.eval()
        self.requires_grad_(False)

    def fingerprint(self) -> str:
        """A digest of the backbone weights the features come from (a bank is only valid with them)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.body.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def prepare(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Crops as one normalised ``[N, 3, h, w]`` batch at ``crop_size``."""
        h, w = self.crop_size
        batch = []
        for crop in crops:
            t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
            batch.append(F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False))
        x = torch.cat(batch) if batch else torch.zeros((0, 3, h, w))
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        x = self.prepare(crops)
        if len(x) == 0:
            return torch.zeros((0, 0, 0))
        return self.patches(x)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, P, D]`` patch features of a normalised ``[N, 3, h, w]`` batch."""
        found: dict[str, torch.Tensor] = {}
        wanted = set(self.layers)
        for name, module in self.body.items():  # IntermediateLayerGetter: its children, in order
            x = module(x)
            out = self.body.return_layers.get(name)
            if out in wanted:
                found[out] = x
                if len(found) == len(wanted):
                    break  # the deeper blocks are not needed
        maps = [F.avg_pool2d(found[k], 3, 1, 1) for k in self.layers]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        feats = torch.cat(maps, dim=1)  # [N, D, h', w']
        return feats.flatten(2).transpose(1, 2).contiguous()

    def meta(self) -> dict:
        return {"backbone": self.backbone, "input_size": self.input_size, "crop_size": list(self.crop_size),
                "layers": list(self.layers), "fingerprint": self.fingerprint(), "format": BANK_FORMAT}


class _FeatureGraph(nn.Module):
    """What the ONNX file computes: RGB crops in [0, 1] at the crop size -> patch features."""

    def __init__(self, extractor: PatchFeatures) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor.patches((x - self.extractor.mean) / self.extractor.std)


def export_features(extractor: PatchFeatures, path: str | Path, *, opset: int = 17) -> Path:
    """Write the patch feature extractor as ONNX: input ``crops`` ``[N, 3, h, w]`` float32 RGB in
    ``[0, 1]`` at ``crop_size``, output ``patches`` ``[N, P, D]``; the torch-free line runs it with
    onnxruntime (:class:`detect.model.patchbank.OnnxPatchFeatures`)."""
    import io

    from detect.common.files import atomic_open

    h, w = extractor.crop_size
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice: dynamo=False on purpose, as the detector's
        torch.onnx.export(_FeatureGraph(extractor).eval(), (torch.rand(2, 3, h, w),), buffer, dynamo=False,
                          opset_version=opset, input_names=["crops"], output_names=["patches"],
                          dynamic_axes={"crops": {0: "items"}, "patches": {0: "items"}}, do_constant_folding=True)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
    return Path(path)


def build_bank(
    extractor: PatchFeatures,
    crops: Mapping[str, Iterable[np.ndarray]],
    *,
    defects: Mapping[str, int] | None = None,
    bank_size: int = DEFAULT_BANK_SIZE,
    batch: int = 32,
    seed: int = 0,
    min_crops: int | None = None,
    max_crops: int | None = None,
) -> PatchBank:
    """A :class:`PatchBank` from intact crops per base class.

    Args:
        extractor: the patch feature extractor.
        crops: base class -> its intact crops (``H x W x 3`` uint8 RGB).
        defects: base class -> how many defect crops it has (to name a class seen only as defects).
        bank_size: patches kept per class (k-center greedy coreset of all its patches).
        max_crops: at most this many crops per class, drawn at random (seeded): the build's
            time grows with the crops, the bank's cover much less once the views are sampled.

    Raises:
        BankError: a base class has no intact crops or fewer than the minimum.
    """
    lists = {cls: list(c) for cls, c in crops.items()}
    kwargs = {} if min_crops is None else {"minimum": min_crops}
    check_intact_counts({c: len(v) for c, v in lists.items()}, defects or {}, **kwargs)
    if max_crops is not None:
        rng = np.random.default_rng(seed)
        lists = {c: v if len(v) <= max_crops else [v[i] for i in sorted(rng.choice(len(v), max_crops, replace=False))]
                 for c, v in lists.items()}
    banks: dict[str, np.ndarray] = {}
    for cls, items in sorted(lists.items()):
        parts = []
        for i in range(0, len(items), batch):
            feats = extractor(items[i:i + batch])
            parts.append(feats.reshape(-1, feats.shape[-1]).numpy())
        patches = np.concatenate(parts)
        keep = greedy_coreset(patches, bank_size, seed=seed)
        banks[cls] = np.ascontiguousarray(patches[keep], np.float32)
        log.info("anomaly bank %s: %d crops, %d patches -> %d", cls, len(items), len(patches), len(keep))
    meta = extractor.meta()
    meta["crops"] = {c: len(v) for c, v in lists.items()}
    return PatchBank(banks, meta)


def item_scores(extractor: PatchFeatures, bank: PatchBank, classes: Sequence[str],
                crops: Sequence[np.ndarray], *, batch: int = 32) -> list[float | None]:
    """Scores of ``crops`` (item ``i`` of class ``classes[i]``): torch features, numpy nearest
    neighbours (:meth:`PatchBank.score`); None for a class the bank has no base class for."""
    out: list[float | None] = []
    for i in range(0, len(crops), batch):
        feats = extractor(crops[i:i + batch]).numpy()
        out.extend(bank.score(cls, f) for cls, f in zip(classes[i:i + batch], feats))
    return out


@torch.no_grad()
def torch_scores(extractor: PatchFeatures, bank: PatchBank, classes: Sequence[str],
                 crops: Sequence[np.ndarray]) -> list[float]:
    """The reference scores (``torch.cdist``) of ``crops``, item ``i`` of class ``classes[i]``."""
    feats = extractor(crops)
    out = []
    for cls, patches in zip(classes, feats):
        memory = torch.from_numpy(bank.banks[base_class(cls, list(bank.banks))])
        out.append(float(torch.cdist(patches[None], memory[None])[0].min(dim=1).values.max()))
    return out


def intact_crops(records, classes: Sequence[str]) -> tuple[dict[str, list[np.ndarray]], dict[str, int]]:
    """The ground-truth boxes of ``records`` (:class:`detect.data.records.Record`) cut out of
    their images (RGB, upright): intact crops per base class, and defect counts per base class."""
    from detect.data.images import read_image

    crops: dict[str, list[np.ndarray]] = {c: [] for c in classes if not is_defect_class(c)}
    defects: dict[str, int] = {}
    for record in records:
        wanted = [o for o in record.annotation.objects if not is_defect_class(o.name)]
        for obj in record.annotation.objects:
            if is_defect_class(obj.name):
                base = base_class(obj.name, classes)
                defects[base] = defects.get(base, 0) + 1
        if not wanted:
            continue
        image = read_image(record.image, exif=record.exif)
        for obj in wanted:
            b = obj.box
            x0, y0 = int(b.xmin), int(b.ymin)
            x1, y1 = int(np.ceil(b.xmax)), int(np.ceil(b.ymax))
            if x1 - x0 >= 4 and y1 - y0 >= 4:  # a box under 4 px has no patch grid to speak of
                crops.setdefault(obj.name, []).append(image[y0:y1, x0:x1])
    return crops, defects


def checkpoint_crops(weights: str | Path, *, data: str | Path | None = None, splits: Sequence[str] = ("train",)):
    """The detector of a ``detect.train`` checkpoint and the ground-truth crops of splits of the
    dataset it names (``data`` when it has moved): ``(model, checkpoint, {split: (intact crops per
    base class, defect counts per base class)})`` (:func:`intact_crops`; a split the checkpoint
    does not have, other than train, gives none).

    Raises:
        BankError: the checkpoint names no dataset.
        detect.data.layout.DatasetError, detect.data.records.DataError: the data cannot be read.
    """
    from detect.data.layout import discover
    from detect.data.records import load_records

    from detect.model.build import model_from_checkpoint

    model, ckpt = model_from_checkpoint(weights)
    info = ckpt.get("data") or {}
    root = data or info.get("root")
    if root is None:
        raise BankError(f"{weights}: the checkpoint names no dataset; give --data")
    files = discover(root, images=None if data else info.get("images"))
    out = {}
    for split in splits:
        ids = (info.get("splits") or {}).get(split)
        if split != "train" and not ids:
            out[split] = ({}, {})
            continue
        records = load_records(files, ids, exif=info.get("exif", "apply"), warn_each=False)
        out[split] = intact_crops(records, list(ckpt["classes"]))
    return model, ckpt, out


def bank_for_checkpoint(weights: str | Path, *, data: str | Path | None = None, crop_size=DEFAULT_CROP,
                        bank_size: int = DEFAULT_BANK_SIZE, max_crops: int | None = DEFAULT_MAX_CROPS,
                        seed: int = 0) -> tuple[PatchBank, PatchFeatures]:
    """Build the bank of a ``detect.train`` checkpoint from the intact boxes of its training split
    (the dataset it names, or ``data`` when it has moved); returns it and its feature extractor.

    Raises:
        BankError: too few or no intact crops of a base class.
        detect.data.layout.DatasetError, detect.data.records.DataError: the data cannot be read.
    """
    model, _, found = checkpoint_crops(weights, data=data)
    crops, defects = found["train"]
    extractor = PatchFeatures(model, crop_size)
    bank = build_bank(extractor, crops, defects=defects, bank_size=bank_size, seed=seed, max_crops=max_crops)
    return bank, extractor


class ItemScorer:
    """Anomaly scores of a frame's detections: crops of their boxes, patch features, the bank.

    Args:
        model: the detector (its backbone gives the features).
        bank: its :class:`PatchBank`, checked against the model (:meth:`PatchBank.check_matches`).
    """

    def __init__(self, model: nn.Module, bank: PatchBank, *, source: str = "the bank") -> None:
        self.extractor = PatchFeatures(model, tuple(bank.meta.get("crop_size", DEFAULT_CROP)))
        bank.check_matches(backbone=self.extractor.backbone, input_size=self.extractor.input_size,
                           fingerprint=self.extractor.fingerprint(), source=source)
        self.bank = bank

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """``(M,)`` scores of the boxes ``(M, 4)`` xmin/ymin/xmax/ymax (pixels of the RGB ``image``) with
        labels ``1..K``; NaN for a box under 2 px or a class without a bank."""
        out = np.full(len(np.asarray(boxes).reshape(-1, 4)), np.nan)
        crops, where = box_crops(image, boxes)
        if crops:
            names = [classes[int(labels[i]) - 1] for i in where]
            for i, s in zip(where, item_scores(self.extractor, self.bank, names, crops)):
                out[i] = np.nan if s is None else s
        return out


def scorer_beside(detector, weights) -> ItemScorer:
    """The :class:`ItemScorer` of the bank beside the checkpoint ``weights`` (``python -m
    detect.anomaly``, ``detect.train``) for its loaded PyTorch detector (an ``.onnx`` export
    takes :func:`detect.model.patchbank.onnx_scorer_beside`, without torch).

    Raises:
        BankError: the bank is not one, or was built for another model.
    """
    from detect.common.errors import show
    from detect.model.patchbank import bank_path, load_bank

    path = bank_path(weights)
    return ItemScorer(detector.model, load_bank(path), source=show(path))
