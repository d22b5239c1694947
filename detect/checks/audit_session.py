"""A label audit and an annotation pick with a trained model: what ``python -m detect.audit`` hands
its options to. The rules (what counts as a likely mistake, the score margin) are in
:mod:`detect.checks.label_audit`; this module loads the records, runs the detector over them,
draws ``audit.png`` and copies the picked images with their pre-annotations.

* :func:`load_detector_and_meta`: the detector and what its file records (classes, data root, splits).
* :func:`verdict_for_audit`: the verdict classifier saved beside the model (``verdict.pt``), or None;
  :func:`verdict_note` says which rule judges intact vs defective.
* :func:`audit_records`: the annotated records of ``--data`` for ``--split``.
* :func:`run_audit`: the findings (:class:`AuditRun`).
* :func:`select_images`: the ``count`` least certain images, copied with a pre-annotation XML each.

Torch-free (a ``.pt`` checkpoint is loaded through :mod:`detect.inference.loader` lazily, and a
``verdict.pt`` through :mod:`detect.model.verdict`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from detect.checks.label_audit import AuditReport, AuditSettings
from detect.common.errors import UsageError, show
from detect.common.files import unique_folder
from detect.common.thresholds import CONF

__all__ = ["AuditRun", "SelectRun", "audit_records", "draw_gallery", "item_verdicts", "load_detector_and_meta",
           "output_folder", "run_audit", "select_images", "verdict_for_audit", "verdict_note"]

log = logging.getLogger(__name__)


def load_detector_and_meta(weights: str, *, device: str, threads: int | None, batch_size: int,
                           score_thresh: float):
    """The detector (a ``.pt`` outputs scores down to ``score_thresh``; an ``.onnx`` has its
    own, fixed at export) and its metadata (classes, data root and splits)."""
    from detect.inference.loader import is_onnx, load_detector

    settings = None if is_onnx(weights) else {"box_score_thresh": score_thresh}
    detector = load_detector(weights, device=device, threads=threads, batch_size=batch_size, test_settings=settings)
    meta = getattr(detector, "meta", None)
    if meta is None:  # a checkpoint: its metadata, without the weights already loaded
        from detect.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(weights)
        meta = {k: ckpt.get(k) for k in ("data", "run", "classes", "args")}
    return detector, meta


def verdict_for_audit(weights: str, classes):
    """The verdict classifier saved with the model ``weights`` (``verdict.onnx`` beside an export,
    on onnxruntime; else ``verdict.pt``), or None when there is none.

    Raises:
        UsageError: it is there but its classes are not ``classes`` (the detector's), or unreadable.
    """
    from detect.inference.loader import load_verdict_beside

    return load_verdict_beside(weights, list(classes))  # imports torch only for verdict.pt


def verdict_note(verdict, weights: str) -> str:
    """One line: what judges intact vs defective in this audit."""
    if verdict is None:
        return "wrong class: judged by the detector's detections (no verdict.pt beside the model)"
    where = show(getattr(verdict, "path", None) or Path(weights).with_name("verdict.pt"))
    return (f"wrong class, intact vs defective: judged by the verdict classifier {where} "
            f"({verdict.arch}) on each annotated box's crop, defective from defect probability "
            f"{verdict.threshold:.2f}; other confusions by the detector")


def item_verdicts(verdict, records, *, progress=None):
    """:class:`~detect.checks.label_audit.ItemVerdicts`: ``verdict``'s defect probability of every
    annotated object of ``records``, on its crop from the image at its own resolution."""
    import numpy as np

    from detect.checks.label_audit import ItemVerdicts
    from detect.data.images import read_image

    defect = []
    for r in records:
        boxes = np.array([tuple(o.box) for o in r.annotation.objects], np.float64).reshape(-1, 4)
        if len(boxes):
            defect.append(verdict.defect_probability(verdict.probabilities(read_image(r.image, exif=r.exif), boxes)))
        else:
            defect.append(np.zeros(0))
        if progress is not None:
            progress(1)
    return ItemVerdicts(defect, float(verdict.threshold), tuple(verdict.defect_classes))


def output_folder(out: str, name: str | None, meta: Mapping[str, Any], weights: str) -> Path:
    """A new folder under ``out`` named ``name`` (default: the model's run), never an earlier one."""
    run = str(name or meta.get("run") or Path(weights).stem)
    try:
        return unique_folder(Path(out), run)
    except OSError as exc:
        raise UsageError(f"--out {show(out)}: cannot create the output folder ({exc.strerror or exc})") from None


def audit_records(data: Path, images: Path | None, split: str, meta: Mapping[str, Any]):
    """``(files, records, where)``: the dataset's files, the annotated records of ``split``
    (the split the model recorded for this folder, else the usual split, or ``all``), and
    those images in words."""
    from detect.data.layout import discover, resolve_splits
    from detect.data.records import load_records

    files = discover(data, images=images)
    ids, where = None, "every annotated image"
    if split != "all":
        recorded_data = meta.get("data") or {}
        recorded = recorded_data.get("splits") or {}
        same = False
        if recorded_data.get("root"):
            root = Path(recorded_data["root"])
            same = root.exists() and root.resolve() == files.root.resolve()
        if same and split in recorded:
            ids, where = list(recorded[split]), f"the model's {split} split, as recorded"
        else:
            val_fraction = float((meta.get("args") or {}).get("val_fraction") or 0.2)
            splits, source = resolve_splits(files, val_fraction=val_fraction)
            if split not in splits:
                raise UsageError(f"{show(files.root)} has no '{split}' split ({source}); pick another --split")
            ids, where = splits[split], f"the {split} split ({source})"
    records = load_records(files, ids, warn_each=False,
                           advice=f"Run `python tools/check_xml.py {files.root}` for details.")
    if not records:
        raise UsageError(f"{show(data)}: no annotated image to audit in {where}")
    return files, records, where


@dataclass
class AuditRun:
    """One audit: the ``report`` (findings, surest first; recall per class), the dataset
    ``files``, which images (``where``), ``overlap`` (images in the model's training split:
    count and a warning line, or None), ``seconds`` and the model's lowest output score ``floor``."""

    report: AuditReport
    files: Any
    where: str
    overlap: tuple[int, str] | None
    seconds: float
    floor: float


def run_audit(detector, meta: Mapping[str, Any], weights: str, data: Path, *, images: Path | None = None,
              split: str = "all", conf: float = CONF, score_thresh: float = 0.05, progress: bool = True,
              verdict=None) -> AuditRun:
    """Run ``detector`` over the annotated images of ``data`` and list the likely mistakes;
    with ``verdict`` (a :class:`~detect.model.verdict.VerdictClassifier`) that classifier judges
    intact vs defective on each annotated box's crop.

    Raises:
        UsageError: the data holds classes the model lacks, or no annotated image.
    """
    from tqdm import tqdm

    from detect.checks.label_audit import audit, class_mismatch, detect_records, training_overlap

    files, records, where = audit_records(data, images, split, meta)
    mismatch = class_mismatch(detector.classes, records)
    if mismatch:
        raise UsageError(f"{show(weights)}: {mismatch}")
    overlap = training_overlap(meta, records, files.root)
    start = time.perf_counter()
    bar = tqdm(total=len(records), unit="img", desc="audit", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        detections = detect_records(detector, records, progress=bar.update)
    finally:
        bar.close()
    verdicts = None
    if verdict is not None:
        bar = tqdm(total=len(records), unit="img", desc="verdict", disable=not progress, dynamic_ncols=True,
                   leave=False)
        try:
            verdicts = item_verdicts(verdict, records, progress=bar.update)
        finally:
            bar.close()
    floor = float(detector.info.get("box_score_thresh") or score_thresh)
    report = audit(records, detections, detector.classes, AuditSettings(conf=conf), verdicts)
    return AuditRun(report, files, where, overlap, time.perf_counter() - start, floor)


def draw_gallery(report: AuditReport, path: Path, count: int) -> Path:
    """``audit.png``: the ``count`` surest findings, the annotation's and the model's box side by side."""
    from detect.scoring.galleries import BoxPair, plot_box_pairs

    panels = []
    for f in report.findings[:count]:
        where = f"{f.record.xml.name}:{f.line}" if f.line else f.record.xml.name
        caption = f"{f.code} {f.kind.replace('_', ' ')} [{f.confidence:.2f}]\n{show(where)}"
        if f.by == "verdict":  # no model box to label: the classifier's answer goes in the caption
            caption += f"\nclassifier: {f.model_name} (p defect {f.defect_probability:.2f})"
        model_label = f"{f.model_name} {f.score:.2f}" if f.model_box else ""
        panels.append(BoxPair(caption, f.record.image, f.box, f.name or "", f.model_box, model_label))
    return plot_box_pairs(panels, path, title=f"likely label mistakes, surest first ({len(panels)} of "
                                              f"{len(report.findings)})")


@dataclass
class SelectRun:
    """An annotation pick: ``lines`` (one per picked image, as in ``selected.txt``), how many
    images were ``measured``, how many could not be read (``errors``, each said), ``folder``
    (None when nothing could be read) and ``seconds``."""

    lines: list[str] = field(default_factory=list)
    measured: int = 0
    errors: int = 0
    folder: Path | None = None
    seconds: float = 0.0


def select_images(detector, images: Path, count: int, make_folder: Callable[[], Path], *, conf: float = CONF,
                  progress: bool = True, say: Callable[[str], None] = log.warning) -> SelectRun:
    """The ``count`` images of ``images`` with the smallest score margin
    (:func:`~detect.checks.label_audit.margin_uncertainty`), copied into ``make_folder()``
    with a pre-annotation XML (detections at or above ``conf``) each, and ``selected.txt``."""
    from tqdm import tqdm

    from detect.checks.label_audit import margin_uncertainty, rank_uncertain
    from detect.common.files import write_atomic
    from detect.data.images import read_image
    from detect.data.voc import write_voc
    from detect.inference.outputs import voc_annotation
    from detect.inference.predictor import Predictor, Result
    from detect.inference.sources import Frame, open_source

    if not images.is_dir():
        raise UsageError(f"--images {show(images)}: no such folder (give the folder of unlabelled images)")
    source = open_source(str(images))
    predictor = Predictor(detector, conf=conf)
    run, measured, found = SelectRun(), [], {}
    start = time.perf_counter()
    bar = tqdm(total=len(source), unit="img", desc="select", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for frame in source:
            bar.update(1)
            if frame.error or frame.path is None:
                say(f"error: {show(frame.error or frame.key)}")
                run.errors += 1
                continue
            (det,) = detector.detect([frame.image], [frame.key])
            measured.append(margin_uncertainty(det, detector.classes))
            found[frame.key] = (Path(frame.path), det)
    finally:
        bar.close()
        source.close()
    run.measured = len(measured)
    if not measured:
        return run
    run.folder = folder = make_folder()
    for u in rank_uncertain(measured, count):
        path, det = found[u.key]
        target = folder / Path(u.key).name
        if target.exists():  # two images of one name in sub-folders: keep both
            target = folder / f"{target.stem}_{len(run.lines)}{target.suffix}"
        shutil.copyfile(path, target)
        frame = Frame(read_image(path), u.key, str(images), path=path)
        result = Result(frame=frame, detections=predictor.postprocess(det), classes=predictor.classes)
        write_voc(voc_annotation(result, image_path=target), target.with_suffix(".xml"))
        what = (f"{u.best} vs {u.runner_up} at {','.join(f'{v:.0f}' for v in u.box)}" if u.box
                else "nothing detected")
        run.lines.append(f"{show(path)}  margin {u.margin:.3f}  {show(what)}")
    write_atomic(folder / "selected.txt", "\n".join(run.lines) + "\n")
    run.seconds = time.perf_counter() - start
    return run
