"""A PatchCore-style memory bank of intact items' patch features, and its scorer, in numpy.

The torch side (:mod:`detect.model.anomaly`) turns an item crop into patch features and
builds the bank; everything here runs without torch, so the line path can score items with
only numpy:

* :func:`greedy_coreset`: k-center greedy subsampling of the training patches (PatchCore's
  coreset: each new centre is the patch farthest from those already chosen, distances taken
  on a random projection, as anomalib does).
* :func:`nearest_distances` / :meth:`PatchBank.score`: an item's score is the largest, over
  its patches, of the Euclidean distance to the nearest bank patch of its base class
  (higher = less like the intact items seen).
* :class:`OnnxItemScorer`: a frame's boxes scored with the bank's ONNX feature extractor
  (``best.anomaly.onnx``) and the bank, for the torch-free line (an ``.onnx`` detector);
  :func:`box_crops` cuts the crops both scorers use; :func:`score_writes` gives each detection
  of ``--save-json`` its score.
* :func:`save_bank` / :func:`load_bank`: one ``.npz`` file (``anomaly.npz`` beside
  ``best.pt``): one ``bank/<class>`` array ``[M, D]`` float32 per base class and a JSON
  ``meta`` (backbone, detector input size, crop size, feature levels, weights fingerprint).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.common.files import atomic_open
from detect.common.types import is_defect_class

__all__ = [
    "BANK_FORMAT",
    "BankError",
    "MIN_INTACT_CROPS",
    "OnnxItemScorer",
    "PatchBank",
    "base_class",
    "box_crops",
    "greedy_coreset",
    "load_bank",
    "nearest_distances",
    "onnx_scorer_beside",
    "save_bank",
    "score_writes",
]

BANK_FORMAT = 1
MIN_INTACT_CROPS = 8
"""Fewest intact crops of a base class a bank is built from: fewer cannot cover the views."""

_CHUNK = 4096  # query patches per distance block: bounds the [chunk, M] matrix


class BankError(UsageError):
    """The bank cannot be built or does not fit the model using it (exit 2)."""


def base_class(name: str, classes: Sequence[str]) -> str:
    """The intact class an item belongs to: itself when intact, else the longest intact class
    its name starts with (``Lata`` for ``Lata_defectuosa``); the name itself when none fits."""
    if not is_defect_class(name):
        return name
    fits = [c for c in classes if not is_defect_class(c) and name.startswith(c)]
    return max(fits, key=len) if fits else name


def bank_path(weights: str | os.PathLike[str]) -> Path:
    """Where the bank of checkpoint ``weights`` is stored: beside it, ``best.pt`` -> ``best.anomaly.npz``
    (one per checkpoint: a bank is only valid with the weights it was built from)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".anomaly.npz")


def nearest_distances(patches: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of ``patches [N, D]`` to its nearest row of ``bank [M, D]``: ``[N]``.

    ``|a|^2 - 2 a.b + |b|^2`` in float32 blocks (a BLAS product, as torch.cdist's
    matmul path); clamped at 0 against rounding.
    """
    patches = np.asarray(patches, np.float32)
    bank = np.asarray(bank, np.float32)
    bank_sq = np.einsum("md,md->m", bank, bank)
    out = np.empty(len(patches), np.float32)
    for start in range(0, len(patches), _CHUNK):
        block = patches[start:start + _CHUNK]
        d2 = np.einsum("nd,nd->n", block, block)[:, None] - 2.0 * (block @ bank.T) + bank_sq[None, :]
        out[start:start + _CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def greedy_coreset(features: np.ndarray, size: int, *, seed: int = 0, project_dim: int = 128) -> np.ndarray:
    """Indices of ``size`` rows of ``features [N, D]`` chosen by k-center greedy.

    Starts from one random row, then repeatedly adds the row farthest from every row chosen
    so far (the minimax cover PatchCore uses). Distances are measured after a Gaussian random
    projection to ``project_dim`` dimensions when ``D`` is larger (Johnson-Lindenstrauss:
    nearly the same distances, much less work); the bank keeps the full features.
    """
    features = np.asarray(features, np.float32)
    n = len(features)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    work = features
    if features.shape[1] > project_dim:
        proj = rng.standard_normal((features.shape[1], project_dim)).astype(np.float32) / np.sqrt(project_dim)
        work = features @ proj
    sq = np.einsum("nd,nd->n", work, work)
    chosen = np.empty(size, np.int64)
    chosen[0] = int(rng.integers(n))
    min_d2 = np.full(n, np.inf, np.float32)
    for i in range(1, size):
        c = work[chosen[i - 1]]
        d2 = sq - 2.0 * (work @ c) + sq[chosen[i - 1]]
        np.minimum(min_d2, d2, out=min_d2)
        chosen[i] = int(np.argmax(min_d2))
    return chosen


@dataclass
class PatchBank:
    """Intact items' patch features, per base class.

    Attributes:
        banks: base class name -> ``[M, D]`` float32 patch features.
        meta: how the features were made: ``backbone``, ``input_size`` (the detector's),
            ``crop_size`` (``[height, width]`` the crops are resized to), ``layers`` (the
            feature levels used), ``fingerprint`` (of the backbone weights), ``crops``
            (intact crops per class), ``format``.
    """

    banks: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(self.banks)

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.banks.values())

    def score(self, cls: str, patches: np.ndarray) -> float | None:
        """The anomaly score of one item of class ``cls`` (intact or defect class name) from
        its patch features ``[P, D]``: the largest nearest-bank distance; None when the bank
        has no base class for it."""
        bank = self.banks.get(base_class(cls, list(self.banks)))
        if bank is None or len(patches) == 0:
            return None
        return float(nearest_distances(patches, bank).max())

    def check_matches(self, *, backbone: str, input_size: int, fingerprint: str | None = None,
                      source: str = "the bank") -> None:
        """Raise :class:`BankError` unless the bank was built with this backbone, detector
        input size and (when given) these backbone weights."""
        meta = self.meta
        if meta.get("backbone") != backbone:
            raise BankError(f"{source}: built with backbone {meta.get('backbone')!r}, the model is {backbone!r}; "
                            "rebuild it for this model (python -m detect.anomaly --weights MODEL)")
        if meta.get("input_size") != input_size:
            raise BankError(f"{source}: built at input size {meta.get('input_size')}, the model uses {input_size}; "
                            "rebuild it for this model (python -m detect.anomaly --weights MODEL)")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise BankError(f"{source}: built from other backbone weights than this model's; "
                            "rebuild it for this model (python -m detect.anomaly --weights MODEL)")


def save_bank(bank: PatchBank, path: str | os.PathLike[str]) -> Path:
    """Write ``bank`` to ``path`` (``.npz``, atomically) and return the path."""
    path = Path(path)
    arrays = {f"bank/{name}": np.ascontiguousarray(b, np.float32) for name, b in bank.banks.items()}
    meta = {**bank.meta, "format": BANK_FORMAT}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
    return path


def load_bank(path: str | os.PathLike[str]) -> PatchBank:
    """Read a bank written by :func:`save_bank` (no pickles).

    Raises:
        BankError: the file cannot be read or is not a bank of this format.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            banks = {k[len("bank/"):]: data[k].astype(np.float32) for k in data.files if k.startswith("bank/")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise BankError(f"{show(path)}: not an anomaly bank ({show(exc)}); rebuild it with "
                        "python -m detect.anomaly --weights MODEL") from None
    if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT or not banks:
        raise BankError(f"{show(path)}: not an anomaly bank of format {BANK_FORMAT}; rebuild it with "
                        "python -m detect.anomaly --weights MODEL")
    dims = {b.shape[1] for b in banks.values() if b.ndim == 2}
    if len(dims) != 1 or any(b.ndim != 2 or len(b) == 0 for b in banks.values()):
        raise BankError(f"{show(path)}: its class banks are not [M, D] arrays of one width; rebuild it")
    return PatchBank(banks, meta)


def check_intact_counts(counts: Mapping[str, int], defects: Mapping[str, int], *, minimum: int = MIN_INTACT_CROPS,
                        where: str = "the training split") -> None:
    """Raise :class:`BankError` when a base class has no intact crop or fewer than ``minimum``.

    ``counts``: intact crops per base class; ``defects``: defect crops per base class (a base
    class seen only as defects is named, with its defect count).
    """
    for cls in sorted(set(counts) | set(defects)):
        n = counts.get(cls, 0)
        if n == 0:
            raise BankError(f"{where}: base class {cls!r} has no intact examples ({defects.get(cls, 0)} defective); "
                            f"the anomaly bank needs at least {minimum} intact {cls} boxes")
        if n < minimum:
            raise BankError(f"{where}: {n} intact {cls} crop(s), the anomaly bank needs at least {minimum}; "
                            "label more intact items")


class OnnxPatchFeatures:
    """The patch features of :func:`detect.model.anomaly.export_features`'s ONNX file, with
    onnxruntime and OpenCV only (no torch): call with RGB uint8 crops, get ``[N, P, D]``."""

    def __init__(self, path: str | os.PathLike[str], crop_size: Sequence[int], *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import cv2

        h, w = self.crop_size
        # Bilinear without antialiasing, pixel centres aligned, in float (uint8 resizing rounds):
        # what torch's interpolate does.
        batch = np.stack([cv2.resize(np.asarray(c, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                          for c in crops]) / np.float32(255.0)
        return self.session.run(None, {"crops": batch.transpose(0, 3, 1, 2).copy()})[0]


def box_crops(image: np.ndarray, boxes: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """The crops of ``boxes`` ``(M, 4)`` xmin/ymin/xmax/ymax in pixels of ``image`` (no margin,
    :func:`detect.model.verdict_onnx.crop_item`), and the row of each (a box under 2 px once
    clipped to the image has none)."""
    from detect.model.verdict_onnx import crop_item

    crops, where = [], []
    for i, box in enumerate(np.asarray(boxes, float).reshape(-1, 4)):
        crop = crop_item(image, box, 0.0)
        if crop is not None:
            crops.append(crop)
            where.append(i)
    return crops, where


class OnnxItemScorer:
    """Anomaly scores of a frame's detections without torch: the bank's feature extractor on
    onnxruntime (``NAME.anomaly.onnx``, written with the bank) and numpy nearest neighbours;
    the same scores as :class:`detect.model.anomaly.ItemScorer` to 1e-4.

    Args:
        bank: the :class:`PatchBank`; features: its ``.onnx`` feature extractor.
        backbone, input_size: the detector's (from its export's metadata), checked against the bank.

    Raises:
        BankError: the bank was built for another backbone or input size, or its extractor is missing.
    """

    def __init__(self, bank: PatchBank, features: str | os.PathLike[str], *, backbone: str, input_size: int,
                 source: str = "the bank", threads: int | None = None) -> None:
        bank.check_matches(backbone=backbone, input_size=input_size, source=source)
        if not Path(features).is_file():
            raise BankError(f"{source}: its feature extractor {show(features)} is missing; rebuild the bank "
                            "(python -m detect.anomaly --weights best.pt --overwrite)")
        self.bank = bank
        self.features = OnnxPatchFeatures(features, bank.meta.get("crop_size", (64, 64)), threads=threads)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """``(M,)`` scores of the boxes (labels ``1..K``); NaN for a box under 2 px or a class without a bank."""
        out = np.full(len(np.asarray(boxes).reshape(-1, 4)), np.nan)
        crops, where = box_crops(image, boxes)
        if crops:
            feats = self.features(crops)
            for i, f in zip(where, feats):
                s = self.bank.score(classes[int(labels[i]) - 1], f)
                out[i] = np.nan if s is None else s
        return out


def onnx_scorer_beside(detector, weights: str | os.PathLike[str], *, threads: int | None = None) -> OnnxItemScorer:
    """The torch-free scorer of the bank beside the export ``weights`` (``best.onnx`` ->
    ``best.anomaly.npz`` and ``best.anomaly.onnx``, made for ``best.pt``), checked against the
    detector's backbone and input size (its ``info``).

    Raises:
        BankError: the bank is not one, was built for another model, or its extractor is missing.
    """
    path = bank_path(weights)
    info = getattr(detector, "info", None) or {}
    return OnnxItemScorer(load_bank(path), path.with_suffix(".onnx"), backbone=info.get("backbone"),
                          input_size=info.get("input_size"), source=show(path), threads=threads)


def score_writes(writer, scorer) -> None:
    """Give each detection its anomaly score (``scorer(image, boxes, labels, classes)``) before
    ``writer`` (a :class:`~detect.inference.outputs.PredictionWriter`) writes it: ``anomaly`` in
    predictions.json."""
    add = writer.add

    def scored(result, source) -> None:
        d = result.detections
        if not result.error and len(d.boxes):
            d.anomaly = scorer(result.frame.image, d.boxes, d.labels, result.classes)
        add(result, source)

    writer.add = scored
