"""What the COCO and YOLO readers hand to :mod:`detect.data.layout`: samples parsed into the
same :class:`detect.data.voc.Annotation` records a VOC file becomes, so the checker, the
split logic, training and evaluation see one kind of record whatever the source format.

A :class:`Sample` names where its annotation came from (``source``): the YOLO label file
(object lines are that file's lines) or ``instances.json#images[3]`` (a JSON path into the
COCO file). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detect.common.errors import UsageError
from detect.data.voc import Annotation

__all__ = ["FormatError", "ForeignData", "Sample", "split_of_name"]


class FormatError(UsageError):
    """A COCO or YOLO file that cannot be read as it is: one line naming the file (and line
    or JSON path), what is wrong and the fix (exit 2)."""


@dataclass(frozen=True)
class Sample:
    """One image of a COCO or YOLO dataset as a VOC-style record."""

    sample_id: str
    source: Path
    image: Path | None
    annotation: Annotation


@dataclass(frozen=True)
class ForeignData:
    """A whole COCO or YOLO dataset: its samples, class order, split lists and images."""

    format: str
    root: Path
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    split_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    split_source: str = ""
    image_files: tuple[Path, ...] = ()


def split_of_name(name: str) -> str | None:
    """``train``/``val``/``test`` from a file or folder name (``instances_train2017.json``,
    ``valid``, ``val.txt``), or None."""
    low = name.lower()
    for key, split in (("trainval", "trainval"), ("train", "train"), ("valid", "val"), ("val", "val"),
                       ("test", "test")):
        if key in low:
            return split
    return None
