"""Evaluate trained detectors (or predictions made elsewhere) on annotated images.

    python -m detect.eval                                   # every weights/<run>/best.pt, on its val split
    python -m detect.eval --weights A.pt B.pt --split test
    python -m detect.eval --data DIR --predictions pi.json  # score a predictions file; no model loaded
    python -m detect.eval --json eval.json --report eval_report/

For each checkpoint the ground truth comes from the data it records (``data.root`` and the
ids of the ``--split`` it records); ``--data DIR`` evaluates on another folder (the
checkpoint's split lists are used when DIR is the folder it was trained on, else DIR's own
``ImageSets/Main`` lists or a hash split). ``--split all`` takes every annotated image.

One table is printed, one row per run, best VOC mAP first and marked ``*``: VOC mAP at
``--iou`` (default 0.5, all-point; ``--voc07`` for 11-point), COCO mAP@[.5:.95], AP50 and
AP75 (pycocotools), VOC AP per class, inference speed on this machine (model time per image,
first batch excluded), parameters and checkpoint size. Then per run and class: ground truth
count, precision, recall and F1 at ``--conf``.

Ground truth: boxes are clipped into the image and boxes under 1 px wide or high dropped,
the rule training applies (:func:`detect.data.sanitize_objects`); ``difficult`` objects are
ignored (VOC) / crowd regions (COCO). Metrics: :mod:`detect.metrics`. Predictions format:
:mod:`detect.predict`.

Exit status: 0 success; 1 a run could not be evaluated (bad checkpoint, data it cannot
read, bad predictions file; the others are still evaluated and printed); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

import numpy as np

from detect.layout import DatasetError, DatasetFiles, discover, resolve_splits
from detect.metrics import (
    CocoResult,
    ConfusionResult,
    Detections,
    GroundTruth,
    VocResult,
    coco_evaluate,
    detection_confusion,
    voc_evaluate,
)
from detect.voc import VocError, parse_voc

log = logging.getLogger("detect.eval")

SPLITS = ("val", "test", "train", "all")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """The command line asks for something impossible: exit 2."""


class EvalError(Exception):
    """One run cannot be evaluated: exit 1 (after the other runs)."""


# --------------------------------------------------------------------------------------
# Ground truth


@dataclass
class EvalSet:
    """The annotated images one evaluation runs on.

    ``keys[i]`` is the :attr:`GroundTruth.image` of ``image_paths[i]``: the file name as in
    the XML ``<filename>`` (the sample id where two images share a name). ``objects[i]``
    holds ``(class name, (xmin, ymin, xmax, ymax), difficult)`` after clipping.
    """

    root: Path
    split: str
    split_source: str
    ids: list[str]
    keys: list[str]
    image_paths: list[Path]
    objects: list[list[tuple[str, tuple[float, float, float, float], bool]]]
    locations: dict[str, str]  # class name -> first "file.xml:line" it occurs at
    aliases: dict[str, str] = field(default_factory=dict)
    all_classes: list[str] = field(default_factory=list)  # every class of the whole dataset

    @property
    def class_counts(self) -> Counter:
        return Counter(name for objs in self.objects for name, _, _ in objs)

    def truths(self, classes: Sequence[str]) -> list[GroundTruth]:
        """One :class:`GroundTruth` per image; objects of classes not in ``classes`` are left out."""
        label_of = {c: i + 1 for i, c in enumerate(classes)}
        out = []
        for key, objs in zip(self.keys, self.objects):
            kept = [o for o in objs if o[0] in label_of]
            out.append(GroundTruth(
                image=key,
                boxes=np.array([o[1] for o in kept], dtype=np.float64).reshape(-1, 4),
                labels=np.array([label_of[o[0]] for o in kept], dtype=np.int64),
                difficult=np.array([o[2] for o in kept], dtype=bool),
            ))
        return out

    def describe(self) -> str:
        return f"the {self.split} split of {self.root} ({len(self.ids)} images)"


def sanitize_box(box: Sequence[float], *, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Clip ``(xmin, ymin, xmax, ymax)`` into the image; None when under 1 px wide or high.

    The rule of :func:`detect.data.sanitize_objects` (that module imports torch; scoring a
    predictions file should not), so evaluation sees the boxes training saw.
    """
    x0, y0, x1, y1 = box
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        return None
    return (cx0, cy0, cx1, cy1)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as exc:
        raise EvalError(f"{path}: cannot be read as an image ({exc}); re-export it or remove it") from None


def _base_name(filename: str) -> str:
    return PureWindowsPath(filename).name if "\\" in filename else PurePosixPath(filename).name


def load_eval_set(files: DatasetFiles, ids: Sequence[str] | None, *, split: str, split_source: str) -> EvalSet:
    """Parse the XML of ``ids`` (every XML when None), find the images, clip the boxes.

    Raises:
        EvalError: XML files that cannot be parsed, or images that cannot be found (up to
            10 are listed).
    """
    by_id = {files.sample_id(x): x for x in files.xml_files}
    wanted = list(by_id) if ids is None else list(ids)
    missing = [i for i in wanted if i not in by_id]
    if missing:
        log.warning(
            "%d id(s) of the %s split have no XML under %s (first: %s); they are skipped",
            len(missing), split, files.root, missing[0],
        )
        wanted = [i for i in wanted if i in by_id]
    if not wanted:
        raise EvalError(f"the {split} split of {files.root} has no annotated image to evaluate")

    problems: list[str] = []
    names, paths, objects, xml_names = [], [], [], []
    locations: dict[str, str] = {}
    dropped = clipped = 0
    for sample_id in wanted:
        xml = by_id[sample_id]
        try:
            ann = parse_voc(xml)
        except VocError as exc:
            problems.append(str(exc))
            continue
        image = files.find_image(xml, ann.filename)
        if image is None:
            problems.append(f"{xml}: image '{ann.filename}' not found; fix <filename> or pass --images DIR")
            continue
        width, height = _image_size(image)
        objs = []
        for o in ann.objects:
            locations.setdefault(o.name, f"{xml}:{o.line}" if o.line else str(xml))
            box = sanitize_box(o.box, width=width, height=height)
            if box is None:
                dropped += 1
                continue
            clipped += box != tuple(o.box)
            objs.append((o.name, box, o.difficult))
        names.append(ann.filename)
        paths.append(image)
        objects.append(objs)
        xml_names.append(sample_id)
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise EvalError(
            f"{len(problems)} annotation file(s) cannot be used:\n  " + "\n  ".join(problems[:10]) + more
            + f"\nRun `python tools/check_xml.py {files.root}` for details."
        )
    if dropped or clipped:
        done = [f"{dropped} box(es) under 1 px wide or high dropped"] if dropped else []
        done += [f"{clipped} box(es) clipped into the image"] if clipped else []
        log.warning("ground truth of the %s split: %s, as in training", split, " and ".join(done))

    keys = [(_base_name(n) if n else "") or p.name for n, p in zip(names, paths)]
    count = Counter(keys)
    if any(c > 1 for c in count.values()):
        clash = sorted(k for k, c in count.items() if c > 1)
        log.warning("%d image name(s) occur in several XML files (first: %s); those images are "
                    "keyed by sample id instead", len(clash), clash[0])
        keys = [sid if count[k] > 1 else k for k, sid in zip(keys, xml_names)]

    # Every name a predictions record may use for an image, when it names one image only.
    candidates: dict[str, set[str]] = {}
    for key, raw, path, sid in zip(keys, names, paths, xml_names):
        rel = Path(os.path.relpath(path, files.root)).as_posix()
        for alias in {key, raw, _base_name(raw) if raw else key, path.name, sid, rel}:
            candidates.setdefault(alias, set()).add(key)
    aliases = {a: next(iter(k)) for a, k in candidates.items() if len(k) == 1}
    aliases.update({k: k for k in keys})
    return EvalSet(
        root=files.root, split=split, split_source=split_source, ids=xml_names, keys=keys,
        image_paths=paths, objects=objects, locations=locations, aliases=aliases,
    )


def dataset_classes(files: DatasetFiles) -> list[str]:
    """Every class name in the dataset's XML files, sorted (unparsable files are skipped here;
    :func:`load_eval_set` reports them)."""
    names: set[str] = set()
    for xml in files.xml_files:
        try:
            names.update(o.name for o in parse_voc(xml).objects)
        except VocError:
            continue
    return sorted(names)


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
    timing: Any = None  # detect.predict.Timing for checkpoints
    params: int | None = None
    checkpoint_bytes: int | None = None
    checkpoint_info: dict[str, Any] | None = None
    best: bool = False


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


class Evaluator:
    """Holds the command line's settings and the ground truth already loaded."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._files: dict[tuple[str, str | None], DatasetFiles] = {}
        self._sets: dict[tuple, EvalSet] = {}

    def files(self, root: Path, images: str | None, *, usage: bool) -> DatasetFiles:
        key = (str(root.resolve()), images)
        if key not in self._files:
            try:
                self._files[key] = discover(root, images=images)
            except DatasetError as exc:
                raise (UsageError if usage else EvalError)(str(exc)) from None
        return self._files[key]

    def eval_set(self, files: DatasetFiles, ids: Sequence[str] | None, split_source: str) -> EvalSet:
        key = (str(files.root.resolve()), str(files.images_override), self.args.split,
               None if ids is None else tuple(ids))
        if key not in self._sets:
            self._sets[key] = load_eval_set(files, ids, split=self.args.split, split_source=split_source)
        return self._sets[key]

    def split_ids(self, files: DatasetFiles, *, recorded: dict | None, val_fraction: float) -> tuple[list[str] | None, str]:
        split = self.args.split
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
                f"{files.root} has no '{split}' split ({source} gives {', '.join(splits)}); "
                "pick another --split, or --split all"
            )
        return splits[split], source

    # ----------------------------------------------------------------------------------

    def checkpoint_run(self, path: Path, device) -> RunResult:
        from detect.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
        from detect.predict import predict

        args = self.args
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise EvalError(str(exc)) from None
        classes = [str(c) for c in ckpt["classes"]]
        data = ckpt.get("data") or {}
        train_args = ckpt.get("args") or {}
        val_fraction = float(train_args.get("val_fraction", 0.2) or 0.2)
        recorded_splits = data.get("splits") or None
        recorded_root = _resolve_root(data["root"], path) if data.get("root") else None
        if args.data:
            root = Path(args.data)
            images = args.images
            files = self.files(root, images, usage=True)
            if recorded_root is None or not _same_folder(root, recorded_root):
                recorded_splits = None
        else:
            if not data.get("root"):
                raise EvalError(f"{path}: the checkpoint records no data folder; pass --data DIR")
            if recorded_root is None:
                raise EvalError(
                    f"{path}: the data it was trained on, '{data['root']}', is not here (looked in "
                    f"{Path.cwd()} and {PROJECT_ROOT}); pass --data DIR"
                )
            root = recorded_root
            images = args.images or data.get("images")
            files = self.files(root, images, usage=False)
        ids, source = self.split_ids(files, recorded=recorded_splits, val_fraction=val_fraction)
        eval_set = self.eval_set(files, ids, source)

        unknown = sorted(set(eval_set.class_counts) - set(classes))
        if unknown:
            where = "; ".join(f"'{n}' ({eval_set.class_counts[n]}x, first at {eval_set.locations[n]})"
                              for n in unknown[:5])
            raise EvalError(
                f"{path}: the model knows the classes {', '.join(classes)}, but {eval_set.describe()} "
                f"has {where}. Evaluate it on the data it was trained on (--data), or fix the labels"
            )

        try:
            model, _ = model_from_checkpoint(ckpt, device=device)
        except Exception as exc:  # build/load errors of a checkpoint written by other code
            raise EvalError(
                f"{path}: the model it describes cannot be rebuilt ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]})"
            ) from None
        params = sum(p.numel() for p in model.parameters())
        run = str(ckpt.get("run") or path.parent.name)
        log.info("%s: %s on %s", path, run, eval_set.describe())
        from detect.data import DataError

        try:
            dets = predict(model, eval_set.image_paths, device=device, batch_size=args.batch_size,
                           progress=not args.no_progress, keys=eval_set.keys)
        except DataError as exc:  # an image that cannot be decoded
            raise EvalError(str(exc)) from None
        del model
        backbone = str(ckpt.get("backbone") or (ckpt.get("model_config") or {}).get("backbone") or "?")
        info = {"epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics"), "run": run}
        return score(
            name=run if path.name == "best.pt" else f"{run}/{path.stem}", backbone=backbone, kind="checkpoint",
            source=path, eval_set=eval_set, classes=classes, detections=list(dets), iou=args.iou,
            voc07=args.voc07, conf=args.conf, timing=dets.timing, params=params,
            checkpoint_bytes=path.stat().st_size, checkpoint_info=info,
        )

    def predictions_run(self, path: Path) -> RunResult:
        from detect.predict import PredictionsError, read_predictions

        args = self.args
        files = self.files(Path(args.data), args.images, usage=True)
        ids, source = self.split_ids(files, recorded=None, val_fraction=args.val_fraction)
        eval_set = self.eval_set(files, ids, source)
        if not eval_set.all_classes:
            eval_set.all_classes = dataset_classes(files)
        classes = eval_set.all_classes
        if not classes:
            raise EvalError(f"{files.root}: no object in any XML file, nothing to score predictions against")
        hint = (f"among the {len(eval_set.ids)} images of the {args.split} split of {files.root}"
                + ("" if args.split == "all" else " (--split all takes every image)"))
        try:
            dets = read_predictions(path, classes=classes, images=eval_set.aliases, context=hint)
        except PredictionsError as exc:
            raise EvalError(str(exc)) from None
        covered = sum(1 for d in dets if len(d.scores))
        if covered < len(dets):
            log.warning("%s: predictions for %d of %d images; the other %d count as detecting nothing",
                        path, covered, len(dets), len(dets) - covered)
        return score(name=path.stem, backbone="predictions", kind="predictions", source=path,
                     eval_set=eval_set, classes=classes, detections=dets, iou=args.iou,
                     voc07=args.voc07, conf=args.conf)


# --------------------------------------------------------------------------------------
# Output


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def _sort_key(r: RunResult) -> tuple:
    m = r.voc.map
    return (math.isnan(m), -(0.0 if math.isnan(m) else m), r.name)


def all_classes(results: Sequence[RunResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        for c in r.classes:
            seen.setdefault(c, None)
    return list(seen)


def table_rows(results: Sequence[RunResult], *, iou: float) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (results already sorted, best first)."""
    classes = all_classes(results)
    pct = f"{iou * 100:g}"
    header = ["run", "backbone", "images", f"VOC mAP{pct}", "COCO mAP", "COCO AP50", "COCO AP75",
              *[f"{c}" for c in classes], "img/s", "ms/img", "params", "size"]
    rows = []
    for r in results:
        t = r.timing
        rows.append([
            ("* " if r.best else "  ") + r.name, r.backbone, str(len(r.eval_set.ids)), _f(r.voc.map),
            _f(r.coco.stats["AP"]), _f(r.coco.stats["AP50"]), _f(r.coco.stats["AP75"]),
            *[_f(r.voc.ap.get(c)) for c in classes],
            "-" if t is None else f"{t.images_per_second:.2f}", "-" if t is None else f"{t.ms_per_image:.0f}",
            _params(r.params), _size(r.checkpoint_bytes),
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
    c = r.confusion
    header = ["class", "objects", f"AP{r.voc.iou_threshold * 100:g}", "COCO AP", "P", "R", "F1", "TP", "FP", "FN"]
    rows = [[name, str(r.voc.n_positives[name]), _f(r.voc.ap[name]), _f(r.coco.per_class[name]),
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
    c = r.confusion
    return {
        "name": r.name,
        "backbone": r.backbone,
        "kind": r.kind,
        "source": str(r.source),
        "best": r.best,
        "data": {
            "root": str(r.eval_set.root), "split": r.eval_set.split, "split_source": r.eval_set.split_source,
            "images": len(r.eval_set.ids), "objects": {n: r.voc.n_positives[n] for n in r.classes},
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
    }


def write_json(path: Path, results: Sequence[RunResult], settings: dict[str, Any]) -> None:
    payload = {"results": [result_json(r) for r in results], "best": next((r.name for r in results if r.best), None),
               "settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m detect.eval",
        description="Evaluate detectors (VOC and COCO AP, P/R/F1, speed) on annotated images.",
        epilog="Predictions file format: see `python -c 'import detect.predict as p; print(p.__doc__)'`.",
    )
    p.add_argument("--weights", nargs="+", metavar="PT",
                   help="checkpoints (or run folders holding best.pt); default: every weights/*/best.pt")
    p.add_argument("--weights-dir", default="weights", metavar="DIR",
                   help="where runs are looked for when --weights is not given (default: weights)")
    p.add_argument("--predictions", nargs="+", metavar="JSON",
                   help="score predictions files (needs --data); no model is loaded")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one each checkpoint records)")
    p.add_argument("--images", metavar="DIR", help="folder to look for images in first")
    p.add_argument("--split", choices=SPLITS, default="val", help="images to evaluate on (default: val)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="val share of the hash split of a dataset without split lists (default: 0.2)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a detection needs to count (default: 0.5)")
    p.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP instead of all-point")
    p.add_argument("--conf", type=float, default=0.5,
                   help="score threshold for precision/recall/F1, confusion matrix and gallery (default: 0.5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    p.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    p.add_argument("--report", metavar="DIR", help="write plots and report.md to this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def _find_checkpoints(args: argparse.Namespace) -> list[Path]:
    if args.weights:
        found = []
        for w in args.weights:
            path = Path(w)
            if path.is_dir():
                if (path / "best.pt").is_file():
                    found.append(path / "best.pt")
                else:
                    inside = sorted(path.glob("*/best.pt"))
                    if not inside:
                        raise UsageError(f"{path}: no best.pt in it or in its sub-folders")
                    found.extend(inside)
            elif path.is_file():
                found.append(path)
            else:
                raise UsageError(f"{path}: no such checkpoint file")
        unique: dict[Path, Path] = {}
        for f in found:
            unique.setdefault(f.resolve(), f)
        return list(unique.values())
    if args.predictions:
        return []
    bases = [Path(args.weights_dir)]
    if args.weights_dir == "weights" and not bases[0].is_dir():
        bases.append(PROJECT_ROOT / "weights")
    for base in bases:
        found = sorted(base.glob("*/best.pt"))
        if found:
            return found
    raise UsageError(
        f"no checkpoint found: no {args.weights_dir}/<run>/best.pt; train one (python -m detect.train) "
        "or pass --weights FILE.pt or --predictions FILE.json --data DIR"
    )


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def _check_args(args: argparse.Namespace) -> None:
    if not 0.0 < args.iou <= 1.0:
        raise UsageError(f"--iou {args.iou}: must be in (0, 1]")
    if not math.isfinite(args.conf):
        raise UsageError(f"--conf {args.conf}: must be a number")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    if args.predictions and not args.data:
        raise UsageError("--predictions needs --data DIR: the annotated images the predictions are for")
    for p in args.predictions or ():
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such predictions file")
    if args.data and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.eval``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        _check_args(args)
        checkpoints = _find_checkpoints(args)
        device = _device(args.device) if checkpoints else None
        evaluator = Evaluator(args)
        results: list[RunResult] = []
        failures: list[str] = []
        for path in checkpoints:
            try:
                results.append(evaluator.checkpoint_run(path, device))
            except EvalError as exc:
                failures.append(str(exc))
                print(f"error: {exc}", file=sys.stderr)
        for p in args.predictions or ():
            try:
                results.append(evaluator.predictions_run(Path(p)))
            except EvalError as exc:
                failures.append(str(exc))
                print(f"error: {exc}", file=sys.stderr)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    if not results:
        return 1
    _dedupe_names(results)
    results.sort(key=_sort_key)
    if not math.isnan(results[0].voc.map):
        results[0].best = True
    settings = {"iou": args.iou, "voc07": args.voc07, "conf": args.conf, "split": args.split,
                "device": args.device, "batch_size": args.batch_size}

    header, rows = table_rows(results, iou=args.iou)
    print(format_table(header, rows))
    metric = "11-point" if args.voc07 else "all-point"
    speed = (f"; speed: model time per image on {args.device}, batch {args.batch_size}"
             if any(r.timing is not None for r in results) else "")
    print(f"* best VOC mAP@{args.iou:g} ({metric}); COCO numbers by pycocotools (mAP = AP@[.5:.95]); "
          f"class columns: VOC AP@{args.iou:g}, '-' = no ground truth{speed}")
    if len({tuple(r.eval_set.keys) for r in results}) > 1:
        print("note: the runs were evaluated on different images (see 'images'); compare them with care")
    for r in results:
        h, rws = class_rows(r)
        print(f"\n{r.name}: {r.eval_set.describe()}, split: {r.eval_set.split_source}; "
              f"P/R/F1 at score >= {args.conf:g}, IoU >= {args.iou:g}")
        print(format_table(h, rws, left=1))

    try:
        if args.json:
            write_json(Path(args.json), results, settings)
            print(f"\nwrote {args.json}")
        if args.report:
            from detect.report import write_report

            md = write_report(Path(args.report), results, settings=settings,
                              table_markdown=format_table(header, rows, markdown=True))
            print(f"wrote {md}")
    except OSError as exc:
        print(f"error: cannot write output: {exc}", file=sys.stderr)
        return 1
    return 1 if failures else 0


def _dedupe_names(results: list[RunResult]) -> None:
    seen: Counter = Counter()
    for r in results:
        seen[r.name] += 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"


if __name__ == "__main__":
    sys.exit(main())
