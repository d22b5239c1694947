"""Annotation records -> a torch Dataset of images and targets, with albumentations augmentation.

Data flows one way: ``detect.layout`` finds files, ``detect.voc`` parses them, this module
turns them into training samples:

* :func:`load_records` pairs every XML with its image and checks classes;
* :func:`sanitize_objects` clips boxes into the image and drops zero-area ones (one warning
  per file), so a bad box can never become a NaN loss;
* :class:`DetectionDataset` yields ``(image, target, meta)`` where ``image`` is a float
  ``[3, H, W]`` tensor in ``[0, 1]``, ``target`` holds ``boxes`` (``FloatTensor[N, 4]``,
  ``xmin, ymin, xmax, ymax`` pixels of *that* tensor) and ``labels`` (``Int64Tensor[N]``,
  ``1..K``; 0 is background), and ``meta`` names the files.

``difficult`` objects are trained on, like detectron2 does (they are real instances of
the class; leaving them out teaches the model that they are background); evaluation
ignores them, as VOC prescribes. Images without objects stay in as negatives with
``boxes`` of shape ``(0, 4)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

# albumentations asks the network for a newer version at import; our users' line PCs
# are often offline, and the check would stall start-up.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from detect.layout import DatasetFiles  # noqa: E402
from detect.voc import Annotation, Box, VocError, VocObject, parse_voc  # noqa: E402

log = logging.getLogger(__name__)

AUGMENT_CHOICES = ("none", "light", "strong")


class DataError(Exception):
    """The dataset cannot be trained on as it is; the message says which files and why."""


@dataclass(frozen=True)
class Record:
    """One annotated image: its id, XML, image file and parsed annotation."""

    sample_id: str
    xml: Path
    image: Path
    annotation: Annotation


def load_records(
    files: DatasetFiles,
    ids: Sequence[str] | None = None,
    *,
    skip: set[Path] | frozenset[Path] = frozenset(),
) -> list[Record]:
    """Parse the XML files of ``ids`` (all when None), find their images, and sanitise boxes.

    Boxes are clipped into the real image size (read from the image header) and boxes
    without area dropped, with one warning per file (:func:`sanitize_objects`).

    Files in ``skip`` (those the checker found errors in, under ``--skip-invalid``) are
    left out.

    Raises:
        DataError: an XML file cannot be parsed or its image cannot be found; the message
            lists every such file (up to 10) with its line.
    """
    by_id = {files.sample_id(x): x for x in files.xml_files}
    wanted = list(by_id) if ids is None else list(ids)
    records: list[Record] = []
    problems: list[str] = []
    for sample_id in wanted:
        xml = by_id.get(sample_id)
        if xml is None:
            problems.append(f"{sample_id}: listed in a split but no such XML file")
            continue
        if xml in skip:
            continue
        try:
            ann = parse_voc(xml)
        except VocError as exc:
            problems.append(str(exc))
            continue
        image = files.find_image(xml, ann.filename)
        if image is None:
            problems.append(
                f"{xml}: image '{ann.filename}' not found next to it, in JPEGImages/ or under "
                f"{files.root}; fix <filename> or pass --images DIR"
            )
            continue
        width, height = image_size(image)
        objects, note = sanitize_objects(ann.objects, width=width, height=height)
        if note:
            log.warning("%s: %s", xml, note)
            ann = replace(ann, objects=tuple(objects))
        records.append(Record(sample_id, xml, image, ann))
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(
            f"{len(problems)} annotation file(s) cannot be used:\n  "
            + "\n  ".join(problems[:10])
            + more
            + "\nRun `python tools/check_xml.py DATA` for details, or --skip-invalid to leave them out."
        )
    return records


def class_names_from(records: Sequence[Record]) -> list[str]:
    """Every class name that occurs in the records, sorted."""
    return sorted({o.name for r in records for o in r.annotation.objects})


def check_classes(records: Sequence[Record], classes: Sequence[str], *, classes_file: str | None = None) -> None:
    """Raise :class:`DataError` when an object's class is not in ``classes``, naming the files."""
    known = set(classes)
    unknown: dict[str, list[str]] = {}
    for r in records:
        for o in r.annotation.objects:
            if o.name not in known:
                unknown.setdefault(o.name, []).append(f"{r.xml}:{o.line}" if o.line else str(r.xml))
    if unknown:
        lines = []
        for name, where in sorted(unknown.items()):
            extra = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
            lines.append(f"'{name}' in {', '.join(where[:3])}{extra}")
        source = classes_file or "the class list"
        raise DataError(
            f"class(es) not in {source}: " + "; ".join(lines)
            + f". Add them to {source} or correct the labels (tools/check_xml.py suggests fixes)."
        )


def sanitize_objects(
    objects: Sequence[VocObject], *, width: int, height: int
) -> tuple[list[VocObject], str | None]:
    """Clip boxes into ``[0, width] x [0, height]`` and drop boxes under 1 px wide or high.

    A zero-area box makes the box-regression targets infinite (a NaN loss), and a box
    outside the image matches no anchor. Returns the objects kept and, when anything was
    changed, a sentence saying what (for one warning per file).
    """
    kept: list[VocObject] = []
    clipped = dropped = 0
    for o in objects:
        x0, y0, x1, y1 = o.box
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
            dropped += 1
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            clipped += 1
            o = replace(o, box=Box(cx0, cy0, cx1, cy1))
        kept.append(o)
    notes = []
    if dropped:
        notes.append(f"dropped {dropped} box(es) under 1 px wide or high")
    if clipped:
        notes.append(f"clipped {clipped} box(es) reaching outside the {width}x{height} image")
    return kept, ("; ".join(notes) if notes else None)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); re-export it or remove it") from None


def build_transforms(augment: str, *, input_size: int | None = None) -> A.Compose | None:
    """The albumentations pipeline for ``augment`` in ``("none", "light", "strong")``.

    Boxes travel in ``pascal_voc`` format (pixels, xmin/ymin/xmax/ymax) with their labels;
    a box pushed mostly out of the frame (less than 30 % visible) is dropped with its label.
    Returns None when there is nothing to do (``"none"`` without ``input_size``).
    ``input_size`` first shrinks the image so its longest side fits: the model would
    resize to that anyway, and augmenting the small image is several times cheaper.
    """
    if augment not in AUGMENT_CHOICES:
        raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {augment!r}")
    steps: list[A.BasicTransform] = []
    if input_size:
        steps.append(A.LongestMaxSize(max_size=input_size, p=1.0))
    if augment in ("light", "strong"):
        strong = augment == "strong"
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.75, 1.25) if strong else (0.9, 1.1),
                translate_percent=(-0.1, 0.1) if strong else (-0.05, 0.05),
                border_mode=cv2.BORDER_CONSTANT,
                fill=114,
                p=0.7 if strong else 0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6 if strong else 0.4),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=15, p=0.5 if strong else 0.3),
        ]
        if strong:
            steps += [
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.3),
                A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
            ]
    if not steps:
        return None
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "indices"], min_visibility=0.3, min_area=1.0, clip=True
        ),
    )


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an ``H x W x 3`` uint8 RGB array.

    Raises:
        DataError: the file cannot be decoded.
    """
    # EXIF orientation is NOT applied: LabelImg shows (and boxes refer to) the stored
    # pixels; tools/check_xml.py warns about files that carry an orientation tag.
    # np.fromfile + imdecode also reads paths with non-ASCII names on Windows.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot be decoded as an image; re-export it or remove it from the dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class DetectionDataset(Dataset):
    """Records as model inputs.

    ``dataset[i]`` is ``(image, target, meta)``:

    * ``image``: ``FloatTensor[3, H, W]`` in ``[0, 1]`` (after the transform);
    * ``target``: ``{"boxes": FloatTensor[N, 4]`` (xmin, ymin, xmax, ymax in pixels of
      ``image``), ``"labels": Int64Tensor[N]`` (1..K)``}``; N may be 0;
    * ``meta``: ``{"id", "image", "xml", "orig_size": (H, W)}``.
    """

    def __init__(self, records: Sequence[Record], classes: Sequence[str], transform: A.Compose | None = None):
        self.records = list(records)
        self.classes = list(classes)
        self.label_of = {name: i + 1 for i, name in enumerate(self.classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        image = read_image(rec.image)
        h, w = image.shape[:2]
        # Records were sanitised against the header size at load time; the decoded size
        # is the same unless the file changed since, and then clipping again is the fix.
        objects, _ = sanitize_objects(rec.annotation.objects, width=w, height=h)
        boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[o.name] for o in objects], dtype=np.int64)
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels, indices=np.arange(len(labels)))
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
        meta = {"id": rec.sample_id, "image": str(rec.image), "xml": str(rec.xml), "orig_size": (h, w)}
        return tensor, target, meta


def collate(batch):
    """Lists, not stacked tensors: detection images differ in size."""
    images, targets, metas = zip(*batch)
    return list(images), list(targets), list(metas)
