"""Annotated images as records: XML paired with its image, boxes made safe, classes checked.

Data flows one way: :mod:`detect.data.layout` finds the files, :mod:`detect.data.voc` parses them,
this module makes records that training, evaluation and prediction all start from:

* :func:`load_records` pairs every XML with its image and sanitises its boxes;
* :func:`sanitize_box` / :func:`sanitize_objects` are **the** box rule: clip into the image,
  drop boxes under 1 px wide or high (a zero-area box makes the regression targets infinite,
  a NaN loss; a box outside the image matches no anchor). Evaluation applies the same rule
  to ground truth, so it scores the boxes training saw;
* :func:`check_classes` / :func:`class_names_from` / :func:`classes_in` name classes;
* :func:`ground_truths` turns records into :class:`detect.scoring.metrics.GroundTruth` for scoring.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image as LabelImg 1.8.4+ shows it:
upright, its EXIF orientation applied (``exif="ignore"``: the stored pixels; each
:class:`Record` carries the mode, so everything that decodes it sees the same frame). ``difficult``
objects are kept (training uses them, evaluation ignores them).

Torch-free: a box without torch loads records to score predictions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.data.images import check_exif_mode, image_size
from detect.data.layout import DatasetFiles
from detect.common.types import GroundTruth
from detect.data.voc import Annotation, Box, VocError, VocObject

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Found",
    "Record",
    "check_classes",
    "class_names_from",
    "classes_in",
    "ground_truths",
    "load_records",
    "median_image_size",
    "sanitize_box",
    "sanitize_objects",
    "walk",
]

CHECKER_HINT = "Run `python tools/check_xml.py DATA` for details, or --skip-invalid to leave them out."


class DataError(UsageError):
    """The dataset cannot be used as it is; the message says which files and why (exit 2)."""


@dataclass(frozen=True)
class Record:
    """One annotated image: its id, XML, image file and parsed annotation (boxes sanitised).

    ``clipped`` and ``dropped`` count the boxes :func:`sanitize_objects` changed; ``exif``
    is the frame the boxes refer to (:data:`detect.data.images.EXIF_MODES`): decode the
    image with ``read_image(record.image, exif=record.exif)``.
    """

    sample_id: str
    xml: Path
    image: Path
    annotation: Annotation
    clipped: int = field(default=0, compare=False)
    dropped: int = field(default=0, compare=False)
    exif: str = "apply"


def load_records(
    files: DatasetFiles,
    ids: Sequence[str] | None = None,
    *,
    skip: set[Path] | frozenset[Path] = frozenset(),
    advice: str = CHECKER_HINT,
    warn_each: bool = True,
    exif: str = "apply",
) -> list[Record]:
    """Parse the XML files of ``ids`` (all when None), find their images, and sanitise boxes.

    Boxes are clipped into the real image size (read from the image header) and boxes
    without area dropped (:func:`sanitize_objects`); with ``warn_each`` one warning per
    changed file is logged, else the caller reports the counts.

    ``exif`` is the dataset's orientation rule: ``"apply"`` (boxes in the upright frame
    LabelImg 1.8.4+ shows) or ``"ignore"`` (boxes on the stored pixels, ``--exif ignore``).

    Files in ``skip`` (those the checker found errors in, under ``--skip-invalid``) are
    left out.

    Raises:
        DataError: an XML file cannot be parsed or its image cannot be found or read; the
            message lists every such file (up to 10) with its line, then ``advice``.
    """
    check_exif_mode(exif)
    records: list[Record] = []
    found, problems = walk(files, ids, skip=skip, exif=exif)
    for f in found:
        ann = f.annotation
        objects, clipped, dropped = _sanitize(ann.objects, width=f.width, height=f.height)
        if clipped or dropped:
            ann = replace(ann, objects=tuple(objects))
            if warn_each:
                log.warning("%s: %s", f.xml, _note(clipped, dropped, f.width, f.height))
        records.append(Record(f.sample_id, f.xml, f.image, ann, clipped, dropped, exif))
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"{len(problems)} annotation file(s) cannot be used:\n  " + "\n  ".join(problems[:10]) + more
            + "\n" + advice
        )
    return records


@dataclass(frozen=True)
class Found:
    """One annotation file paired with its image, as read (boxes not yet sanitised):
    ``width`` x ``height`` is the image's real size in the frame ``exif`` names (upright
    by default), the frame its boxes refer to."""

    sample_id: str
    xml: Path
    image: Path
    annotation: Annotation
    width: int
    height: int


def walk(
    files: DatasetFiles,
    ids: Sequence[str] | None = None,
    *,
    skip: set[Path] | frozenset[Path] = frozenset(),
    exif: str = "apply",
) -> tuple[list[Found], list[str]]:
    """The one walk XML -> annotation -> image -> size that training, evaluation and
    conversion share: every sample of ``ids`` (all when None) with its image and its size
    read from the header under the ``exif`` rule, and a line for each file that cannot be
    used (unparseable, image not found, id listed without XML). Files in ``skip`` are left out.

    Raises:
        detect.data.images.ImageError: an image's header cannot be read.
    """
    check_exif_mode(exif)
    by_id = {files.sample_id(x): x for x in files.xml_files}
    wanted = list(by_id) if ids is None else list(ids)
    found: list[Found] = []
    problems: list[str] = []
    for sample_id in wanted:
        xml = by_id.get(sample_id)
        if xml is None:
            problems.append(f"{sample_id}: listed in a split but no such XML file")
            continue
        if xml in skip:
            continue
        try:
            ann = files.annotation(xml)
        except VocError as exc:
            problems.append(str(exc))
            continue
        image = files.find_image(xml, ann.filename)
        if image is None:
            problems.append(
                f"{show(xml)}: image '{show(ann.filename)}' not found next to it, in JPEGImages/ or under "
                f"{show(files.root)}; fix <filename> or pass --images DIR"
            )
            continue
        width, height = image_size(image, exif=exif)
        found.append(Found(sample_id, xml, image, ann, width, height))
    return found, problems


def sanitize_box(box: Sequence[float], *, width: float, height: float) -> tuple[float, float, float, float] | None:
    """``(xmin, ymin, xmax, ymax)`` clipped into ``[0, width] x [0, height]``; None when the
    clipped box is under 1 px wide or high."""
    x0, y0, x1, y1 = box
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        return None
    return (cx0, cy0, cx1, cy1)


def sanitize_objects(
    objects: Sequence[VocObject], *, width: int, height: int
) -> tuple[list[VocObject], str | None]:
    """Apply :func:`sanitize_box` to every object. Returns the objects kept and, when
    anything was changed, a sentence saying what (for one warning per file)."""
    kept, clipped, dropped = _sanitize(objects, width=width, height=height)
    return kept, (_note(clipped, dropped, width, height) if clipped or dropped else None)


def _sanitize(objects: Sequence[VocObject], *, width: int, height: int) -> tuple[list[VocObject], int, int]:
    kept: list[VocObject] = []
    clipped = dropped = 0
    for o in objects:
        box = sanitize_box(o.box, width=width, height=height)
        if box is None:
            dropped += 1
            continue
        if box != tuple(o.box):
            clipped += 1
            o = replace(o, box=Box(*box))
        kept.append(o)
    return kept, clipped, dropped


def _note(clipped: int, dropped: int, width: int, height: int) -> str:
    notes = []
    if dropped:
        notes.append(f"dropped {dropped} box(es) under 1 px wide or high")
    if clipped:
        notes.append(f"clipped {clipped} box(es) reaching outside the {width}x{height} image")
    return "; ".join(notes)


def median_image_size(files: DatasetFiles, *, sample: int = 200, exif: str = "apply") -> tuple[int, int] | None:
    """The median ``(width, height)`` of the dataset's images (an even sample of at most
    ``sample`` image headers; unreadable images are skipped), or None without images."""
    images = list(files.image_files)
    step = max(1, len(images) // sample)
    sizes = []
    for path in images[::step]:
        try:
            sizes.append(image_size(path, exif=exif))
        except UsageError:
            continue
    if not sizes:
        return None
    widths, heights = zip(*sizes)
    return int(np.median(widths)), int(np.median(heights))


def class_names_from(records: Sequence[Record]) -> list[str]:
    """Every class name that occurs in the records, sorted."""
    return sorted({o.name for r in records for o in r.annotation.objects})


def classes_in(files: DatasetFiles) -> list[str]:
    """Every class name in the dataset's XML files, sorted (files that cannot be parsed are
    skipped here; :func:`load_records` reports them)."""
    names: set[str] = set()
    for xml in files.xml_files:
        try:
            names.update(o.name for o in files.annotation(xml).objects)
        except VocError:
            continue
    return sorted(names)


def check_classes(records: Sequence[Record], classes: Sequence[str], *, classes_file: str | None = None) -> None:
    """Raise :class:`DataError` when an object's class is not in ``classes``, naming the files."""
    known = set(classes)
    unknown: dict[str, list[str]] = {}
    for r in records:
        for o in r.annotation.objects:
            if o.name not in known:
                unknown.setdefault(o.name, []).append(f"{show(r.xml)}:{o.line}" if o.line else show(r.xml))
    if unknown:
        lines = []
        for name, where in sorted(unknown.items()):
            extra = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
            lines.append(f"'{show(name)}' in {', '.join(where[:3])}{extra}")
        source = classes_file or "the class list"
        raise DataError(
            f"class(es) not in {show(source)}: " + "; ".join(lines)
            + f". Add them to {show(source)} or correct the labels (tools/check_xml.py suggests fixes)."
        )


def ground_truths(
    records: Sequence[Record], classes: Sequence[str], *, keys: Sequence[str] | None = None
) -> list[GroundTruth]:
    """One :class:`GroundTruth` per record, keyed by ``keys[i]`` (default: the sample id).

    Labels are ``1..K`` in ``classes`` order; objects of classes not in ``classes`` are left out.
    """
    label_of: Mapping[str, int] = {c: i + 1 for i, c in enumerate(classes)}
    keys = [r.sample_id for r in records] if keys is None else list(keys)
    out = []
    for key, r in zip(keys, records):
        objs = [o for o in r.annotation.objects if o.name in label_of]
        out.append(
            GroundTruth(
                image=key,
                boxes=np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4),
                labels=np.array([label_of[o.name] for o in objs], dtype=np.int64),
                difficult=np.array([o.difficult for o in objs], dtype=bool),
            )
        )
    return out
