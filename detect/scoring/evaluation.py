"""Evaluation: which images a model is scored on, the scores, and the tables that show them.

* :class:`EvalSet` / :func:`load_eval_set`: the annotated images of one split, built on
  :func:`detect.data.records.load_records` (so ground truth goes through the training box rule),
  keyed by the file name in the XML ``<filename>``, with every alias a predictions file may
  use for an image.
* :class:`Evaluator`: resolves the data and split of a checkpoint (what it records) or of the
  command line, caches what it loaded, and scores predictions files.
* :func:`score`: VOC AP, COCO metrics and the confusion matrix of one run's detections
  (:mod:`detect.scoring.metrics`), as a :class:`RunResult`.
* :func:`table_rows`, :func:`class_rows`, :func:`format_table`, :func:`result_json`,
  :func:`write_json`: the comparison table, the per-class table and the ``--json`` file.

Torch-free: scoring a predictions file works on a machine without torch. Running a model is
the inference layer's job (:func:`detect.inference.loader.load_detector`,
:func:`detect.inference.predictor.detect_files`); ``detect.eval`` (the CLI) joins the two.

One module of ~640 lines: eval sets, runs and the tables they print belong together; the
plots are :mod:`detect.scoring.report`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from detect.common.errors import DetectError, UsageError, show
from detect.common.files import write_atomic
from detect.common.thresholds import CONF
from detect.common.types import Timing  # noqa: F401  (re-exported: it lives beside the box types)
from detect.data.layout import DatasetError, DatasetFiles, discover, file_name, resolve_splits
from detect.scoring.metrics import (
    CocoResult,
    ConfusionResult,
    Detections,
    GroundTruth,
    VocResult,
    coco_evaluate,
    detection_confusion,
    voc_evaluate,
)
from detect.scoring.predictions_json import read_predictions
from detect.data.records import Record, classes_in, ground_truths, load_records

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "TRAINING_KEYS",
    "EvalError",
    "EvalSet",
    "EvalSettings",
    "Evaluator",
    "RunResult",
    "Timing",
    "class_rows",
    "format_table",
    "load_eval_set",
    "result_json",
    "score",
    "sort_results",
    "table_rows",
    "training_cost",
    "write_json",
]

SPLITS = ("val", "test", "train", "all")
# A checkpoint's ``training`` record (:func:`detect.training.run_folder.training_record`): how the run
# started and what it cost up to that checkpoint.
TRAINING_KEYS = ("mode", "weights", "trainable_layers", "max_trainable_layers", "epochs", "train_time_s",
                 "final_loss", "peak_rss_mb", "peak_cuda_mb", "device")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class EvalError(DetectError):
    """One run cannot be evaluated: exit 1 (after the other runs)."""


# --------------------------------------------------------------------------------------
# Ground truth


@dataclass
class EvalSet:
    """The annotated images one evaluation runs on.

    ``keys[i]`` is the :attr:`GroundTruth.image` of ``records[i]``: the file name as in
    the XML ``<filename>`` (the sample id where two images share a name). Boxes are
    sanitised as for training (:func:`detect.data.records.sanitize_box`).
    """

    root: Path
    split: str
    split_source: str
    records: list[Record]
    keys: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    all_classes: list[str] = field(default_factory=list)  # every class of the whole dataset

    @property
    def ids(self) -> list[str]:
        return [r.sample_id for r in self.records]

    @property
    def image_paths(self) -> list[Path]:
        return [r.image for r in self.records]

    @property
    def exif(self) -> str:
        """The orientation rule the boxes were loaded in, for reading the images alike."""
        return self.records[0].exif if self.records else "apply"

    @property
    def class_counts(self) -> Counter:
        return Counter(o.name for r in self.records for o in r.annotation.objects)

    @property
    def locations(self) -> dict[str, str]:
        """Class name -> the first ``file.xml:line`` it occurs at."""
        where: dict[str, str] = {}
        for r in self.records:
            for o in r.annotation.objects:
                where.setdefault(o.name, f"{show(r.xml)}:{o.line}" if o.line else show(r.xml))
        return where

    def truths(self, classes: Sequence[str]) -> list[GroundTruth]:
        """One :class:`GroundTruth` per image; objects of classes not in ``classes`` are left out."""
        return ground_truths(self.records, classes, keys=self.keys)

    def describe(self) -> str:
        return f"the {self.split} split of {self.root} ({len(self.records)} images)"


def load_eval_set(files: DatasetFiles, ids: Sequence[str] | None, *, split: str, split_source: str,
                  exif: str = "apply") -> EvalSet:
    """Load the records of ``ids`` (every XML when None) and key them for scoring; ``exif`` is
    the dataset's orientation rule (:func:`detect.data.records.load_records`).

    Ids of the split that have no XML are skipped with a warning; the clipped and dropped
    boxes are reported in one warning for the split.

    Raises:
        EvalError: no image to evaluate, or XML files that cannot be parsed or images that
            cannot be found (up to 10 are listed).
    """
    known = {files.sample_id(x) for x in files.xml_files}
    wanted = list(known) if ids is None else list(ids)
    missing = [i for i in wanted if i not in known]
    if missing:
        log.warning(
            "%d id(s) of the %s split have no XML under %s (first: %s); they are skipped",
            len(missing), split, files.root, missing[0],
        )
        wanted = [i for i in wanted if i in known]
    if not wanted:
        raise EvalError(f"the {split} split of {show(files.root)} has no annotated image to evaluate")
    try:
        records = load_records(files, None if ids is None else wanted, warn_each=False, exif=exif,
                               advice=f"Run `python tools/check_xml.py {show(files.root)}` for details.")
    except UsageError as exc:  # broken XML or images: this run fails, the others go on
        raise EvalError(str(exc)) from None
    dropped = sum(r.dropped for r in records)
    clipped = sum(r.clipped for r in records)
    if dropped or clipped:
        done = [f"{dropped} box(es) under 1 px wide or high dropped"] if dropped else []
        done += [f"{clipped} box(es) clipped into the image"] if clipped else []
        log.warning("ground truth of the %s split: %s, as in training", split, " and ".join(done))

    names = [r.annotation.filename for r in records]
    keys = [(file_name(n) if n else "") or r.image.name for n, r in zip(names, records)]
    count = Counter(keys)
    if any(c > 1 for c in count.values()):
        clash = sorted(k for k, c in count.items() if c > 1)
        log.warning("%d image name(s) occur in several XML files (first: %s); those images are "
                    "keyed by sample id instead", len(clash), clash[0])
        keys = [r.sample_id if count[k] > 1 else k for k, r in zip(keys, records)]

    # Every name a predictions record may use for an image, when it names one image only.
    candidates: dict[str, set[str]] = {}
    for key, raw, r in zip(keys, names, records):
        rel = Path(os.path.relpath(r.image, files.root)).as_posix()
        for alias in {key, raw, file_name(raw) if raw else key, r.image.name, r.sample_id, rel}:
            candidates.setdefault(alias, set()).add(key)
    aliases = {a: next(iter(k)) for a, k in candidates.items() if len(k) == 1}
    aliases.update({k: k for k in keys})
    return EvalSet(root=files.root, split=split, split_source=split_source, records=records, keys=keys,
                   aliases=aliases)


# --------------------------------------------------------------------------------------
# Runs


@dataclass
class RunResult:
    """Everything measured for one checkpoint or predictions file."""

    name: str
    backbone: str
    kind: str  # "checkpoint" or "predictions"
    source: Path
    eval_set: EvalSet
    classes: tuple[str, ...]
    truths: list[GroundTruth]
    detections: list[Detections]
    voc: VocResult
    coco: CocoResult
    confusion: ConfusionResult
    timing: Timing | None = None
    params: int | None = None
    checkpoint_bytes: int | None = None
    checkpoint_info: dict[str, Any] | None = None
    training: dict[str, Any] | None = None  # the checkpoint's ``training`` record (see TRAINING_KEYS)
    best: bool = False
    robustness: Any = None  # a detect.scoring.robustness.Robustness with ``--corruptions``


def score(
    *, name: str, backbone: str, kind: str, source: Path, eval_set: EvalSet, classes: Sequence[str],
    detections: list[Detections], iou: float, voc07: bool, conf: float, **extra: Any,
) -> RunResult:
    """All metrics of one run's detections against ``eval_set``."""
    truths = eval_set.truths(classes)
    t0 = time.perf_counter()
    voc = voc_evaluate(truths, detections, classes=classes, iou_threshold=iou, use_07_metric=voc07)
    t1 = time.perf_counter()
    coco = coco_evaluate(truths, detections, classes=classes)
    t2 = time.perf_counter()
    confusion = detection_confusion(truths, detections, classes=classes, score_threshold=conf, iou_threshold=iou)
    log.info("%s: VOC %.3f s, COCO %.3f s, confusion %.3f s", name, t1 - t0, t2 - t1, time.perf_counter() - t2)
    return RunResult(
        name=name, backbone=backbone, kind=kind, source=source, eval_set=eval_set, classes=tuple(classes),
        truths=truths, detections=detections, voc=voc, coco=coco, confusion=confusion, **extra,
    )


def _resolve_root(recorded: str, ckpt_path: Path) -> Path | None:
    root = Path(recorded)
    if root.is_absolute():
        return root if root.is_dir() else None
    if root.is_dir():  # relative to here, where training usually ran: keep it as written
        return root
    # Else relative to the project folder the checkpoint sits in (<project>/weights/<run>/best.pt).
    for base in (ckpt_path.resolve().parent.parent.parent, PROJECT_ROOT):
        if (base / root).is_dir():
            return Path(os.path.normpath(base / root))
    return None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate on and how to count (the ``detect.eval`` options).

    ``data``/``images``: a dataset folder to evaluate on instead of the one a checkpoint
    records; ``split``: one of :data:`SPLITS`; ``val_fraction``: for the hash split of data
    without split lists; ``iou``, ``voc07``, ``conf``: as in :func:`score`.
    """

    data: Path | None = None
    images: Path | None = None
    split: str = "val"
    val_fraction: float = 0.2
    iou: float = 0.5
    voc07: bool = False
    conf: float = CONF


class Evaluator:
    """Resolves what each run is evaluated on, keeping the datasets already loaded."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self._files: dict[tuple[str, str | None], DatasetFiles] = {}
        self._sets: dict[tuple, EvalSet] = {}

    def files(self, root: Path, images: str | os.PathLike[str] | None, *, usage: bool) -> DatasetFiles:
        """The dataset at ``root``; a folder that cannot be used is a usage error when the
        user named it (``usage``), else this run's failure."""
        key = (str(root.resolve()), None if images is None else str(images))
        if key not in self._files:
            try:
                self._files[key] = discover(root, images=images)
            except DatasetError as exc:
                raise (UsageError if usage else EvalError)(str(exc)) from None
        return self._files[key]

    def eval_set(self, files: DatasetFiles, ids: Sequence[str] | None, split_source: str,
                 exif: str = "apply") -> EvalSet:
        key = (str(files.root.resolve()), str(files.images_override), self.settings.split,
               None if ids is None else tuple(ids), exif)
        if key not in self._sets:
            self._sets[key] = load_eval_set(files, ids, split=self.settings.split, split_source=split_source,
                                            exif=exif)
        return self._sets[key]

    def split_ids(self, files: DatasetFiles, *, recorded: Mapping | None, val_fraction: float) -> tuple[list[str] | None, str]:
        split = self.settings.split
        if split == "all":
            return None, "every annotated image"
        if recorded is not None:
            if split not in recorded:
                raise UsageError(
                    f"the checkpoint records no '{split}' split (it has {', '.join(sorted(recorded)) or 'none'}); "
                    "pick another --split, or --split all"
                )
            return list(recorded[split]), "as recorded in the checkpoint"
        splits, source = resolve_splits(files, val_fraction=val_fraction)
        if split not in splits:
            raise UsageError(
                f"{show(files.root)} has no '{split}' split ({show(source)} gives {', '.join(splits)}); "
                "pick another --split, or --split all"
            )
        return splits[split], source

    def checkpoint_eval_set(self, ckpt: Mapping[str, Any], path: Path) -> tuple[EvalSet, list[str]]:
        """The images a checkpoint is scored on and its classes: the data and split it
        records, or ``settings.data`` (with the recorded split lists when that is the same
        folder).

        Raises:
            EvalError: the recorded data is not here, or holds classes the model lacks.
            UsageError: the split asked for does not exist.
        """
        s = self.settings
        classes = [str(c) for c in ckpt["classes"]]
        data = ckpt.get("data") or {}
        train_args = ckpt.get("args") or {}
        val_fraction = float(train_args.get("val_fraction", 0.2) or 0.2)
        recorded_splits = data.get("splits") or None
        recorded_root = _resolve_root(data["root"], path) if data.get("root") else None
        if s.data:
            files = self.files(Path(s.data), s.images, usage=True)
            if recorded_root is None or not _same_folder(Path(s.data), recorded_root):
                recorded_splits = None
        else:
            if not data.get("root"):
                raise EvalError(f"{show(path)}: the checkpoint records no data folder; pass --data DIR")
            if recorded_root is None:
                raise EvalError(
                    f"{show(path)}: the data it was trained on, '{data['root']}', is not here (looked in "
                    f"{Path.cwd()} and {PROJECT_ROOT}); pass --data DIR"
                )
            files = self.files(recorded_root, s.images or data.get("images"), usage=False)
        ids, source = self.split_ids(files, recorded=recorded_splits, val_fraction=val_fraction)
        eval_set = self.eval_set(files, ids, source, exif=str(data.get("exif") or "apply"))

        counts = eval_set.class_counts
        unknown = sorted(set(counts) - set(classes))
        if unknown:
            locations = eval_set.locations
            where = "; ".join(f"'{n}' ({counts[n]}x, first at {locations[n]})" for n in unknown[:5])
            raise EvalError(
                f"{show(path)}: the model knows the classes {', '.join(classes)}, but {eval_set.describe()} "
                f"has {show(where)}. Evaluate it on the data it was trained on (--data), or fix the labels"
            )
        return eval_set, classes

    def predictions_run(self, path: Path) -> RunResult:
        """Score a predictions file against ``settings.data`` (no model is loaded)."""
        s = self.settings
        files = self.files(Path(s.data), s.images, usage=True)
        ids, source = self.split_ids(files, recorded=None, val_fraction=s.val_fraction)
        eval_set = self.eval_set(files, ids, source)
        if not eval_set.all_classes:
            eval_set.all_classes = classes_in(files)
        classes = eval_set.all_classes
        if not classes:
            raise EvalError(f"{show(files.root)}: no object in any XML file, nothing to score predictions against")
        hint = (f"among the {len(eval_set.records)} images of the {s.split} split of {show(files.root)}"
                + ("" if s.split == "all" else " (--split all takes every image)"))
        dets = read_predictions(path, classes=classes, images=eval_set.aliases, context=hint)
        covered = sum(1 for d in dets if len(d.scores))
        if covered < len(dets):
            log.warning("%s: predictions for %d of %d images; the other %d count as detecting nothing",
                        path, covered, len(dets), len(dets) - covered)
        return self.score(name=path.stem, backbone="predictions", kind="predictions", source=path,
                          eval_set=eval_set, classes=classes, detections=dets)

    def score(self, **kwargs: Any) -> RunResult:
        """:func:`score` with these settings' IoU, metric and score threshold."""
        s = self.settings
        return score(iou=s.iou, voc07=s.voc07, conf=s.conf, **kwargs)


# --------------------------------------------------------------------------------------
# Tables and JSON


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def sort_results(results: list[RunResult]) -> None:
    """Best VOC mAP first (NaN last), marking the best run; names made unique (``name#2``)."""
    seen: Counter = Counter()
    for r in results:
        seen[r.name] += 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"

    def key(r: RunResult) -> tuple:
        m = r.voc.map
        return (math.isnan(m), -(0.0 if math.isnan(m) else m), r.name)

    results.sort(key=key)
    if results and not math.isnan(results[0].voc.map):
        results[0].best = True


def all_classes(results: Sequence[RunResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        for c in r.classes:
            seen.setdefault(c, None)
    return list(seen)


def training_cost(r: RunResult) -> dict[str, Any]:
    """What training the checkpoint cost and how it started, every key of
    :data:`TRAINING_KEYS` present (None when not recorded: predictions files, checkpoints
    from before these records)."""
    recorded = r.training or {}
    return {k: recorded.get(k) for k in TRAINING_KEYS}


def _mode(cost: Mapping[str, Any]) -> str:
    mode = cost.get("mode")
    if not mode:
        return "-"
    short = {"from scratch": "scratch", "feature extraction": "features"}.get(mode, mode)
    if mode == "from scratch" or cost.get("trainable_layers") is None:
        return short
    return f"{short} {cost['trainable_layers']}/{cost.get('max_trainable_layers') or '?'}"


def _weights_from(cost: Mapping[str, Any]) -> str:
    """The weights source, short: ``none``, ``coco``, ``imagenet``, or a checkpoint as ``run/file.pt``."""
    w = cost.get("weights")
    if not w:
        return "-"
    w = str(w)
    if w.split(" ")[0] in ("none", "coco", "imagenet"):
        return w.split(" ")[0]
    parts = Path(w).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else w


def table_rows(results: Sequence[RunResult], *, iou: float) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (results already sorted, best first).

    After accuracy and speed come the training costs the checkpoint records
    (:func:`training_cost`): training minutes, peak resident memory of the training process
    (and peak CUDA memory, when a run trained on a GPU), epochs trained, the final epoch's
    mean training loss, the mode (``scratch``, ``fine-tuned N/M`` or ``features 0/M`` with
    N of M backbone stages trained) and the weights it started from; ``-`` when not recorded.
    """
    classes = all_classes(results)
    pct = f"{iou * 100:g}"
    costs = [training_cost(r) for r in results]
    gpu = any(cost["peak_cuda_mb"] is not None for cost in costs)
    header = ["run", "backbone", "images", f"VOC mAP{pct}", "COCO mAP", "COCO AP50", "COCO AP75",
              *[show(c) for c in classes], "img/s", "ms/img", "params", "size",
              "train min", "peak MB", *(["GPU MB"] if gpu else []), "epochs", "final loss", "mode", "from"]
    rows = []
    for r, cost in zip(results, costs):
        t = r.timing
        rows.append([
            ("* " if r.best else "  ") + r.name, r.backbone, str(len(r.eval_set.records)), _f(r.voc.map),
            _f(r.coco.stats["AP"]), _f(r.coco.stats["AP50"]), _f(r.coco.stats["AP75"]),
            *[_f(r.voc.ap.get(c)) for c in classes],
            "-" if t is None else f"{t.images_per_second:.2f}", "-" if t is None else f"{t.ms_per_image:.0f}",
            _params(r.params), _size(r.checkpoint_bytes),
            "-" if cost["train_time_s"] is None else f"{cost['train_time_s'] / 60:.1f}",
            _f(cost["peak_rss_mb"], 0), *([_f(cost["peak_cuda_mb"], 0)] if gpu else []),
            "-" if cost["epochs"] is None else str(cost["epochs"]), _f(cost["final_loss"]), _mode(cost),
            show(_weights_from(cost)),
        ])
    return header, rows


def format_table(header: list[str], rows: list[list[str]], *, markdown: bool = False, left: int = 2) -> str:
    """Plain-text (or Markdown) table; the first ``left`` columns are left-aligned."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
        for row in rows:
            cells = list(row)
            if cells[0].startswith("* "):  # a bare * would start Markdown emphasis
                cells[0] = f"**{cells[0][2:]}** (best)"
            lines.append("| " + " | ".join(c.strip() or " " for c in cells) + " |")
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def class_rows(r: RunResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one run's per-class table: objects, AP, P/R/F1 and counts at ``--conf``."""
    c = r.confusion
    header = ["class", "objects", f"AP{r.voc.iou_threshold * 100:g}", "COCO AP", "P", "R", "F1", "TP", "FP", "FN"]
    rows = [[show(name), str(r.voc.n_positives[name]), _f(r.voc.ap[name]), _f(r.coco.per_class[name]),
             _f(c.precision[name]), _f(c.recall[name]), _f(c.f1[name]), str(c.tp[name]), str(c.fp[name]),
             str(c.fn[name])] for name in r.classes]
    return header, rows


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars and arrays -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def result_json(r: RunResult) -> dict[str, Any]:
    """One run as the ``--json`` file holds it."""
    c = r.confusion
    return {
        "name": r.name,
        "backbone": r.backbone,
        "kind": r.kind,
        "source": str(r.source),
        "best": r.best,
        "data": {
            "root": str(r.eval_set.root), "split": r.eval_set.split, "split_source": r.eval_set.split_source,
            "images": len(r.eval_set.records), "objects": {n: r.voc.n_positives[n] for n in r.classes},
        },
        "classes": list(r.classes),
        "voc": {
            "iou_threshold": r.voc.iou_threshold,
            "metric": "11-point (VOC2007)" if r.voc.use_07_metric else "all-point (VOC2010+)",
            "map50": r.voc.map,
            "ap50": r.voc.ap,
            "n_positives": r.voc.n_positives,
            "n_detections": r.voc.n_detections,
        },
        "coco": {**r.coco.stats, "per_class": r.coco.per_class, "per_class_ap50": r.coco.per_class_ap50},
        "at_conf": {
            "score_threshold": c.score_threshold,
            "iou_threshold": c.iou_threshold,
            "per_class": {n: {"precision": c.precision[n], "recall": c.recall[n], "f1": c.f1[n],
                              "tp": c.tp[n], "fp": c.fp[n], "fn": c.fn[n]} for n in r.classes},
            "confusion": {"labels": list(c.labels), "rows": "ground truth", "columns": "prediction",
                          "matrix": c.matrix},
        },
        "speed": None if r.timing is None else r.timing.as_dict(),
        "params": r.params,
        "checkpoint_bytes": r.checkpoint_bytes,
        "checkpoint": r.checkpoint_info,
        "training": training_cost(r),
        **({"robustness": r.robustness.as_dict()} if r.robustness is not None else {}),
    }


def write_json(path: Path, results: Sequence[RunResult], settings: dict[str, Any]) -> Path:
    """Write every run's numbers (:func:`result_json`) and the settings to ``path``, atomically."""
    payload = {"results": [result_json(r) for r in results], "best": next((r.name for r in results if r.best), None),
               "settings": settings}
    return write_atomic(path, json.dumps(_clean(payload), indent=2) + "\n")
