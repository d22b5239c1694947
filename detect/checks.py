"""Annotation checks: every mistake a VOC dataset can carry into training, as findings.

:func:`check_dataset` reads each XML once with the lenient parser of :mod:`detect.voc`,
reads each image's header (size, EXIF orientation; the whole image with ``deep=True``), and
returns a :class:`CheckReport` of :class:`Finding` records, each with a stable code:

======  ========  ===============================================================
code    severity  problem
======  ========  ===============================================================
VOC1xx            structure of one XML file
VOC2xx            geometry of boxes, duplicate objects
VOC3xx            class names
VOC4xx            the XML against its image
VOC5xx            dataset level: duplicated images, split leakage, stray files
VOC6xx            anchor fit: can the model's anchors reach the boxes
======  ========  ===============================================================

:data:`CODES` lists every code with its severity and a one-line title. Errors make a file
unusable for training (``CheckReport.files_with_errors``); warnings are likely mistakes;
infos are facts worth knowing.

Some findings carry a :class:`Fix`. :func:`plan_fixes` turns the fixes of a report into
new file contents (the XML is edited in place, so everything else in it is kept) and
:func:`apply_fixes` writes them, keeping a ``.bak`` copy of each original. Safe fixes
re-encode as UTF-8 without BOM, fill a missing or 0x0 ``<size>`` from the real image and
drop byte-identical duplicate objects; unsafe fixes add clamping boxes into the image,
rounding decimal coordinates and renaming a class to its unambiguous closest match.
Images are never touched.

This module logs and never prints; ``tools/check_xml.py`` is the command line.

torch, torchvision and :mod:`detect.model` (the anchor definition) are imported on first
use, not with this module: the per-file checks need none of them, and with ``jobs > 1``
the files are checked in worker processes while the main process loads them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import hashlib
import logging
import math
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

from lxml import etree
from PIL import Image

from detect.layout import ClassesError, DatasetFiles, file_name, read_classes
from detect.voc import (
    Annotation,
    VocError,
    VocObject,
    detect_encoding,
    format_number,
    parse_voc_bytes,
    parse_xml_tree,
    write_atomic,
)

if TYPE_CHECKING:  # imported on first use at run time (see the module docstring)
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "CODES",
    "AnchorFit",
    "CheckReport",
    "ClassesError",
    "FilePlan",
    "Finding",
    "Fix",
    "ImageInfo",
    "anchor_fit",
    "apply_fixes",
    "check_dataset",
    "format_finding",
    "plan_fixes",
    "read_classes",
    "read_image_info",
]

SEVERITIES = ("error", "warning", "info")

CODES: dict[str, tuple[str, str]] = {
    # code: (severity, title)
    "VOC100": ("error", "XML file cannot be read"),
    "VOC101": ("error", "not well-formed XML"),
    "VOC102": ("error", "DOCTYPE / entities refused"),
    "VOC103": ("error", "root element is not <annotation>"),
    "VOC104": ("error", "missing <filename>"),
    "VOC105": ("error", "missing or invalid <size>, <width> or <height>"),
    "VOC106": ("error", "object without <name>"),
    "VOC107": ("error", "object without <bndbox> or a coordinate"),
    "VOC108": ("error", "non-numeric, NaN or infinite coordinate"),
    "VOC109": ("error", "several <bndbox> in one object"),
    "VOC110": ("info", "decimal coordinates"),
    "VOC111": ("info", "absolute <path> from another machine"),
    "VOC112": ("warning", "not UTF-8, or a byte-order mark"),
    "VOC113": ("info", "no objects (background-only image)"),
    "VOC201": ("error", "xmin >= xmax or ymin >= ymax"),
    "VOC202": ("error", "box width or height under 1 px"),
    "VOC203": ("error", "box outside the image beyond 1 px"),
    "VOC204": ("info", "box touches the border but truncated = 0"),
    "VOC205": ("warning", "box too small for the model at the input size"),
    "VOC206": ("warning", "identical duplicate objects"),
    "VOC207": ("warning", "same-class boxes overlap at IoU > 0.9"),
    "VOC208": ("warning", "one box labelled with two classes"),
    "VOC301": ("error", "unknown class"),
    "VOC302": ("error", "case or whitespace variant of a class"),
    "VOC303": ("warning", "class in the list never used"),
    "VOC304": ("warning", "strong class imbalance"),
    "VOC401": ("error", "image missing"),
    "VOC402": ("warning", "image without XML"),
    "VOC403": ("warning", "<filename> differs from the file's stem or extension"),
    "VOC404": ("warning", "<size> is 0x0"),
    "VOC405": ("error", "<size> differs from the real image"),
    "VOC406": ("warning", "EXIF orientation other than 1"),
    "VOC407": ("error", "image unreadable"),
    "VOC408": ("error", "image truncated or corrupt (--deep)"),
    "VOC501": ("warning", "same image content under two names"),
    "VOC502": ("error", "same image in two splits (leakage)"),
    "VOC503": ("warning", "stray file"),
    "VOC504": ("warning", "split list names an id with no XML"),
    "VOC601": ("info", "anchor fit (best possible recall)"),
    "VOC602": ("info", "box no anchor reaches at IoU >= 0.5"),
    "VOC603": ("warning", "poor anchor coverage, with suggested anchors"),
}

BORDER_TOLERANCE = 1.0
"""Pixels a box may stand outside the image (VOC's 1-based coordinates reach width)."""
DUPLICATE_IOU = 0.9
IMBALANCE_RATIO = 10.0
FEATURE_STRIDES: dict[str, tuple[int, ...]] = {
    # Strides of the feature maps the RPN sees: ResNet-50-FPN's P2..P6 and torchvision's
    # MobileNetV3-FPN (two maps at stride 32 plus the extra max-pool level).
    "resnet50": (4, 8, 16, 32, 64),
    "mobilenet": (32, 32, 64),
}
SIZE_DIVISIBLE = 32  # GeneralizedRCNNTransform pads batches to a multiple of this
POOR_FIT_05 = 0.95
POOR_FIT_07 = 0.5
ADVICE_MIN_BOXES = 30  # fewer boxes say too little about a dataset to re-shape its anchors
_MAX_SIDE = 100_000  # larger claimed image sides are nonsense; no anchors are built for them

_ORIENTATION = {
    2: ("mirrored left-right", "mirror left-right"),
    3: ("rotated 180 degrees", "turn 180 degrees"),
    4: ("mirrored top-bottom", "mirror top-bottom"),
    5: ("transposed (mirrored and turned 90 degrees)", "transpose (mirror across the diagonal)"),
    6: ("rotated 90 degrees clockwise", "turn 90 degrees counter-clockwise"),
    7: ("transversed (mirrored and turned 90 degrees)", "transverse (mirror across the anti-diagonal)"),
    8: ("rotated 90 degrees counter-clockwise", "turn 90 degrees clockwise"),
}
_STRAY_HINT = {
    ".DS_Store": "macOS folder metadata",
    "Thumbs.db": "Windows thumbnail cache",
    "desktop.ini": "Windows folder settings",
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Fix:
    """A repair :func:`plan_fixes` can make: ``level`` is ``"safe"`` or ``"unsafe"``,
    ``action`` one of ``reencode``, ``fill-size``, ``drop-duplicate``, ``clamp``,
    ``round``, ``rename``, and ``args`` its parameters."""

    level: str
    action: str
    args: tuple = ()


@dataclass(frozen=True)
class Finding:
    """One problem: ``path:line:col: CODE severity message``.

    ``path`` is the XML file (or image, split list, classes file, dataset folder for
    dataset-level findings); ``line``/``col`` are 1-based where known, else None.
    """

    path: Path
    line: int | None
    col: int | None
    code: str
    severity: str
    message: str
    fix: Fix | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix.level if self.fix else None,
        }


def format_finding(f: Finding) -> str:
    """The flake8-style line: ``path:line:col: CODE severity message``.

    A finding about a whole file or folder has no line and reads ``path: CODE ...``.
    A fixable finding ends with ``[--fix]`` or ``[--unsafe-fixes]``.
    """
    where = str(f.path)
    if f.line is not None:
        where += f":{f.line}:{f.col or 1}"
    text = f"{where}: {f.code} {f.severity} {f.message}"
    if f.fix is not None:
        text += " [--fix]" if f.fix.level == "safe" else " [--unsafe-fixes]"
    return text


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says (``deep=True``: and whether it decodes)."""

    path: Path
    width: int = 0
    height: int = 0
    bands: int = 0
    format: str | None = None
    orientation: int = 1
    error: str | None = None
    deep_error: str | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


@dataclass
class AnchorFit:
    """How well the model's anchors reach the ground-truth boxes ("best possible recall").

    ``best_iou[i]`` is the highest IoU any anchor has with box ``i`` (in the model's input
    frame); ``share_07``/``share_05`` the fraction of boxes reaching 0.7 / 0.5, the RPN's
    foreground threshold and a looser one.
    """

    backbone: str
    input_size: int
    scales: tuple[float, ...]
    ratios: tuple[float, ...]
    anchors_per_location: int
    best_iou: list[float]
    share_07: float
    share_05: float
    suggestion: AnchorFit | None = None

    @property
    def n_boxes(self) -> int:
        return len(self.best_iou)

    @property
    def poor(self) -> bool:
        """Coverage worth changing the anchors for (VOC603), on enough boxes to tell."""
        return self.n_boxes >= ADVICE_MIN_BOXES and (self.share_05 < POOR_FIT_05 or self.share_07 < POOR_FIT_07)

    def flags(self) -> str:
        """This layout as ``detect.train`` / ``check_xml`` options."""
        return (
            f"--anchor-scales {','.join(f'{v:g}' for v in self.scales)} "
            f"--anchor-ratios {','.join(f'{v:g}' for v in self.ratios)}"
        )

    def describe(self) -> str:
        return (
            f"{self.share_05:.1%} of {self.n_boxes} boxes reach IoU >= 0.5, "
            f"{self.share_07:.1%} reach IoU >= 0.7"
        )


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`."""

    files: DatasetFiles
    findings: list[Finding]
    classes: tuple[str, ...] | None = None
    class_counts: Counter = field(default_factory=Counter)
    images_used: int = 0
    anchor: AnchorFit | None = None
    elapsed: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "info"]

    @property
    def files_with_errors(self) -> set[Path]:
        """The XML files that have at least one error (training skips or refuses them)."""
        xmls = set(self.files.xml_files)
        return {f.path for f in self.findings if f.severity == "error" and f.path in xmls}

    def fixable(self, *, unsafe: bool = False) -> list[Finding]:
        levels = ("safe", "unsafe") if unsafe else ("safe",)
        return [f for f in self.findings if f.fix is not None and f.fix.level in levels]

    def summary(self) -> dict[str, Any]:
        """The summary as data (``--format json``)."""
        sev = Counter(f.severity for f in self.findings)
        return {
            "data": str(self.files.root),
            "layout": self.files.layout,
            "xml_files": len(self.files.xml_files),
            "images": len(self.files.image_files),
            "images_used": self.images_used,
            "objects": sum(self.class_counts.values()),
            "objects_per_class": dict(self.class_counts.most_common()),
            "classes": list(self.classes) if self.classes is not None else None,
            "errors": sev["error"],
            "warnings": sev["warning"],
            "infos": sev["info"],
            "files_with_errors": len(self.files_with_errors),
            "by_code": dict(sorted(Counter(f.code for f in self.findings).items())),
            "anchor_fit": None
            if self.anchor is None
            else {
                "backbone": self.anchor.backbone,
                "input_size": self.anchor.input_size,
                "anchors_per_location": self.anchor.anchors_per_location,
                "boxes": self.anchor.n_boxes,
                "share_iou_0.7": round(self.anchor.share_07, 4),
                "share_iou_0.5": round(self.anchor.share_05, 4),
            },
            "seconds": round(self.elapsed, 2),
        }

    def summary_lines(self) -> list[str]:
        s = self.summary()
        lines = [
            f"checked {s['data']} ({s['layout']} layout): {plural(s['xml_files'], 'XML file')}, "
            f"{plural(s['images'], 'image')} ({s['images_used']} with an XML) in {self.elapsed:.1f} s",
        ]
        if self.class_counts:
            per_class = ", ".join(f"{name} {n}" for name, n in self.class_counts.most_common())
            lines.append(f"objects: {s['objects']} in {plural(len(self.class_counts), 'class')}: {per_class}")
        else:
            lines.append("objects: 0")
        if self.classes is None:
            lines.append("classes: taken from the data (pass --classes FILE to check names against a list)")
        if self.anchor is not None and self.anchor.n_boxes:
            a = self.anchor
            lines.append(
                f"anchor fit ({a.backbone}, input {a.input_size}, {a.anchors_per_location} anchors/location): "
                + a.describe()
            )
        by_code = ", ".join(f"{code} x{n}" for code, n in sorted(s["by_code"].items()))
        lines.append(
            f"{plural(s['errors'], 'error')}, {plural(s['warnings'], 'warning')}, {plural(s['infos'], 'info')}"
            + (f" ({by_code})" if by_code else "")
        )
        if s["errors"]:
            lines.append(f"files with errors: {s['files_with_errors']} of {plural(s['xml_files'], 'XML file')}")
        return lines


def plural(count: int, word: str) -> str:
    """``"1 error"``, ``"2 errors"``, ``"3 classes"``, ``"2 fixes"``."""
    if count == 1:
        return f"1 {word}"
    return f"{count} {word}{'es' if word.endswith(('s', 'x')) else 's'}"


# --------------------------------------------------------------------------- helpers


def read_image_info(path: Path, *, deep: bool = False) -> ImageInfo:
    """Size, bands, format and EXIF orientation from the image header (no decoding);
    with ``deep=True`` the image is decoded too, catching truncated files."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
            bands = len(im.getbands())
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block is not the image's problem
                orientation = 1
            deep_error = None
            if deep:
                try:
                    im.load()
                except Exception as exc:
                    deep_error = str(exc) or type(exc).__name__
    except Exception as exc:  # PIL raises many kinds for bad files; all mean "unreadable"
        return ImageInfo(path, error=str(exc) or type(exc).__name__)
    return ImageInfo(path, width, height, bands, fmt, orientation, None, deep_error)


def _class_key(name: str) -> str:
    # "lata defectuosa", "Lata-Defectuosa " and "LATA_defectuosa" are one class to a person.
    return re.sub(r"[\s_\-]+", "_", name.strip()).casefold()


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.casefold(), b.casefold()).ratio()


def _closest_classes(name: str, classes: Sequence[str]) -> list[tuple[float, str]]:
    scored = sorted(((_similarity(name, c), c) for c in classes), reverse=True)
    return [(s, c) for s, c in scored if s >= 0.6]


def _is_foreign_absolute(path: str) -> bool:
    if not path:
        return False
    absolute = path.startswith(("/", "\\\\")) or re.match(r"^[A-Za-z]:[\\/]", path) is not None
    if not absolute:
        return False
    try:
        return not os.path.exists(path)
    except (OSError, ValueError):
        return True


def _num(value: float) -> str:
    return format_number(value) if abs(value) < 1e15 else f"{value:.3g}"


def _box_text(box) -> str:
    return ",".join(_num(v) for v in box)


# --------------------------------------------------------------------------- per file


@dataclass
class _Context:
    files: DatasetFiles
    classes: tuple[str, ...] | None
    deep: bool
    images: dict[Path, ImageInfo] = field(default_factory=dict)
    names: dict[str, tuple] = field(default_factory=dict)

    def image_info(self, path: Path) -> ImageInfo:
        info = self.images.get(path)
        if info is None:
            info = self.images[path] = read_image_info(path, deep=self.deep)
        return info


class _Obj(NamedTuple):
    """What the dataset-level checks need of an object (small to send from a worker)."""

    name: str
    box: tuple[float, float, float, float]
    line: int | None


@dataclass
class _FileResult:
    """The per-file checks' output: plain tuples and strings, cheap to pickle back from a
    worker process."""

    xml: Path
    findings: list[Finding]
    names: list[str] = field(default_factory=list)  # the class of every parsed object
    image: Path | None = None
    # (image width, image height, xmin, ymin, xmax, ymax, line, class) of each box inside
    # its image, for the small-box check and the anchor fit
    boxes: list[tuple] = field(default_factory=list)
    valid: list[_Obj] = field(default_factory=list)  # positive boxes, copies left out


# A parser problem's code: by kind for the whole document, else by the element it is
# about, else by kind within an object; "structure" (root element) is the rest.
_CODE_BY_KIND = {"unreadable": "VOC100", "malformed": "VOC101", "doctype": "VOC102"}
_CODE_BY_ELEMENT = {"filename": "VOC104", "name": "VOC106", **dict.fromkeys(("size", "width", "height", "depth"), "VOC105")}
_CODE_BY_OBJECT_KIND = {"several-bndbox": "VOC109", "bad-number": "VOC108", "missing": "VOC107"}


def _error_code(err: VocError) -> str:
    return (
        _CODE_BY_KIND.get(err.kind)
        or _CODE_BY_ELEMENT.get(err.element or "")
        or _CODE_BY_OBJECT_KIND.get(err.kind, "VOC103")
    )


def _finding(code: str, path: Path, line: int | None, message: str, *, col=None, fix=None, severity=None) -> Finding:
    return Finding(Path(path), line, col, code, severity or CODES[code][0], message, fix)


def _check_file(xml: Path, ctx: _Context) -> _FileResult:
    out: list[Finding] = []
    result = _FileResult(xml, out)

    def add(code: str, line: int | None, message: str, **kw) -> None:
        out.append(_finding(code, xml, line, message, **kw))

    try:
        data = xml.read_bytes()
    except OSError as exc:
        add("VOC100", None, f"cannot read the file ({exc.strerror or exc}); check its permissions")
        return result
    problems: list[VocError] = []
    try:
        ann = parse_voc_bytes(data, source=xml, problems=problems)
    except VocError as err:
        add(_error_code(err), err.line, err.message, col=err.column)
        return result
    result.names = [o.name for o in ann.objects]

    # -- the image, read first: several structure fixes need its real size
    image = ctx.files.find_image(xml, ann.filename)
    result.image = image
    info = ctx.image_info(image) if image is not None else None
    real = (info.width, info.height) if info is not None and info.readable else None
    fill = Fix("safe", "fill-size", (real[0], real[1], info.bands or 3)) if real else None
    size_line = ann.lines.get("size")

    size_ok = size_line is not None
    for err in problems:
        code = _error_code(err)
        size_ok = size_ok and code != "VOC105"
        fix = fill if code == "VOC105" and err.kind == "missing" and err.element in ("size", "width", "height") else None
        message = err.message
        if fix is None:
            message = message.replace("check_xml --fix fills it in from the image", "--fix cannot: no readable image")
        add(code, err.line, message, fix=fix)

    # -- structure details the parser accepts
    if ann.has_bom or ann.encoding.replace("-", "").upper() not in ("UTF8", "ASCII", "USASCII"):
        what = f"{ann.encoding} with a byte-order mark" if ann.has_bom else ann.encoding
        add(
            "VOC112",
            1,
            f"file is encoded as {what}; annotation tools and parsers expect UTF-8 without BOM "
            "(--fix re-encodes it)",
            fix=Fix("safe", "reencode"),
        )
    if ann.object_elements == 0:
        add("VOC113", ann.lines.get("annotation"), "no <object>: the image trains as background only; "
            "if it shows cans or bottles, annotate them")
    if _is_foreign_absolute(ann.path):
        add(
            "VOC111",
            ann.lines.get("path"),
            f"<path> is '{ann.path}', an absolute path that does not exist here (written on the "
            "annotator's machine); it is ignored, the image is found from <filename>",
        )

    # -- the XML against its image
    fname_line = ann.lines.get("filename")
    if image is None:
        looked = f"'{file_name(ann.filename)}' (<filename>) or " if ann.filename else ""
        add(
            "VOC401",
            fname_line,
            f"image missing: no {looked}'{xml.stem}' with an image extension was found; put the "
            "image next to the XML (or in JPEGImages/), pass --images DIR, or delete this XML",
        )
    else:
        if ann.filename:
            base = file_name(ann.filename)
            if image.name != base:
                if PurePosixPath(base).stem.casefold() == image.stem.casefold():
                    what = "case" if base.casefold() == image.name.casefold() else "extension"
                    add(
                        "VOC403",
                        fname_line,
                        f"<filename> is '{base}' but the image is '{image.name}' (the {what} differs); "
                        f"set <filename>{image.name}</filename>",
                    )
                else:
                    add(
                        "VOC403",
                        fname_line,
                        f"<filename> '{base}' names no image here; '{image.name}' was found from the XML's "
                        f"own name instead: check that this XML describes that image and set "
                        f"<filename>{image.name}</filename>",
                    )
            elif PurePosixPath(base).stem != xml.stem:
                add(
                    "VOC403",
                    fname_line,
                    f"<filename> '{base}' differs from this XML's name '{xml.name}'; was the XML copied "
                    "from another image? Rename the XML after its image (or fix <filename>)",
                )
        if not info.readable:
            add(
                "VOC407",
                None,
                f"image '{image}' cannot be read ({info.error}); replace it with a readable JPEG/PNG "
                "or delete it and this XML",
            )
        else:
            if info.deep_error:
                extra = " (libjpeg says 'Premature end of JPEG file')" if info.format == "JPEG" and "truncated" in info.deep_error else ""
                add(
                    "VOC408",
                    None,
                    f"image '{image.name}' does not decode: {info.deep_error}{extra}; the file is truncated "
                    "or corrupt, copy it again from the source",
                )
            if size_ok and (ann.width == 0 or ann.height == 0):
                add(
                    "VOC404",
                    size_line,
                    f"<size> is {ann.width}x{ann.height}; the image is {info.width}x{info.height} (--fix fills it in)",
                    fix=fill,
                )
            elif ann.width > 0 and ann.height > 0 and (ann.width, ann.height) != real:
                hint = "re-open the image in LabelImg, check the boxes and save again"
                if (ann.width, ann.height) == (info.height, info.width):
                    hint = (
                        "width and height are swapped: the annotator probably saw the image rotated"
                        + (" by its EXIF orientation (see VOC406)" if info.orientation in (5, 6, 7, 8) else "")
                        + "; check the boxes against the stored pixels"
                    )
                add(
                    "VOC405",
                    size_line,
                    f"<size> says {ann.width}x{ann.height} but the image is {info.width}x{info.height}; "
                    f"the boxes may have been drawn on another version of the image: {hint}",
                )
            if info.orientation != 1:
                shown, move = _ORIENTATION.get(info.orientation, (f"transformed (code {info.orientation})", "move"))
                add(
                    "VOC406",
                    None,
                    f"image '{image.name}' has EXIF orientation {info.orientation}: EXIF-aware viewers show it "
                    f"{shown}, while training reads the stored pixels; if the boxes were drawn on the "
                    f"rotated view, they would have to {move} to fit the stored pixels. Save the image "
                    "upright without the tag (e.g. PIL.ImageOps.exif_transpose) and check its boxes",
                )

    ref = real if real is not None else ((ann.width, ann.height) if ann.width > 0 and ann.height > 0 else None)
    _check_objects(ann, data, ref, ctx, add, result)
    return result


_WHOLE = re.compile(r"[+-]?\d+")


def _describe(obj: VocObject | _Obj) -> str:
    return f"object '{obj.name}' ({_box_text(obj.box)})"


def _check_objects(ann: Annotation, data: bytes, ref, ctx: _Context, add, result: _FileResult) -> None:
    classes = ctx.classes
    seen: dict[VocObject, VocObject] = {}
    tree_objects = None

    for obj in ann.objects:
        box = obj.box
        # -- exact copies: reported once, and not checked again
        first = seen.get(obj)
        if first is not None:
            if tree_objects is None:
                tree_objects = _object_bytes(data)
            same_bytes = (
                tree_objects is not None
                and max(first.index, obj.index) < len(tree_objects)
                and tree_objects[first.index] == tree_objects[obj.index]
            )
            add(
                "VOC206",
                obj.line,
                f"{_describe(obj)} is identical to the object at line {first.line}; delete one"
                + (" (--fix drops the exact copy)" if same_bytes else ""),
                fix=Fix("safe", "drop-duplicate", (obj.index, first.index)) if same_bytes else None,
            )
            continue
        seen[obj] = obj

        # -- class names
        if classes is not None:
            verdict = ctx.names.get(obj.name)
            if verdict is None:
                verdict = ctx.names[obj.name] = _classify_name(obj.name, classes)
            if verdict[0] is not None:
                code, message, new_name = verdict
                add(code, obj.line, message, fix=Fix("unsafe", "rename", (obj.index, new_name)) if new_name else None)

        # -- numbers as written
        if obj.raw_box and not all(t.isdigit() or _WHOLE.fullmatch(t) for t in obj.raw_box):
            add(
                "VOC110",
                obj.box_line,
                f"{_describe(obj)} has decimal coordinates ({', '.join(obj.raw_box)}); VOC tools expect whole "
                "pixels (--unsafe-fixes rounds them)",
                fix=Fix("unsafe", "round", (obj.index,)),
            )

        # -- geometry
        w, h = box.width, box.height
        if w <= 0 or h <= 0:
            axis = []
            if w <= 0:
                axis.append(f"xmin {_num(box.xmin)} >= xmax {_num(box.xmax)}")
            if h <= 0:
                axis.append(f"ymin {_num(box.ymin)} >= ymax {_num(box.ymax)}")
            area = "zero-area" if w == 0 or h == 0 else "inverted"
            add(
                "VOC201",
                obj.box_line,
                f"{_describe(obj)} is a {area} box: {' and '.join(axis)}; delete the object and draw the box again",
            )
            continue
        if w < 1 or h < 1:
            add(
                "VOC202",
                obj.box_line,
                f"{_describe(obj)} is {_num(w)}x{_num(h)} px, under 1 px; delete the object or draw the box again",
            )
            continue
        if ref is not None:
            W, H = ref
            tol = BORDER_TOLERANCE
            if box.xmin < -tol or box.ymin < -tol or box.xmax > W + tol or box.ymax > H + tol:
                cx0, cy0, cx1, cy1 = max(box.xmin, 0), max(box.ymin, 0), min(box.xmax, W), min(box.ymax, H)
                if cx1 - cx0 >= 1 and cy1 - cy0 >= 1:
                    add(
                        "VOC203",
                        obj.box_line,
                        f"{_describe(obj)} reaches outside the {W}x{H} image by more than {tol:g} px; drag it "
                        f"inside (--unsafe-fixes clamps it to {_box_text((cx0, cy0, cx1, cy1))})",
                        fix=Fix("unsafe", "clamp", (obj.index, W, H)),
                    )
                else:
                    add(
                        "VOC203",
                        obj.box_line,
                        f"{_describe(obj)} lies entirely outside the {W}x{H} image; delete the object or draw it again",
                    )
                    continue
            elif not obj.truncated and (box.xmin <= tol or box.ymin <= tol or box.xmax >= W - tol or box.ymax >= H - tol):
                add(
                    "VOC204",
                    obj.line,
                    f"{_describe(obj)} touches the image border but <truncated> is 0; set it to 1 if the object "
                    "is cut off by the frame",
                )
            if 0 < W <= _MAX_SIDE and 0 < H <= _MAX_SIDE:
                x0, y0, x1, y1 = max(box.xmin, 0.0), max(box.ymin, 0.0), min(box.xmax, W), min(box.ymax, H)
                if x1 - x0 >= 1 and y1 - y0 >= 1:
                    result.boxes.append((W, H, x0, y0, x1, y1, obj.box_line, obj.name))
        result.valid.append(_Obj(obj.name, tuple(box), obj.line))


def _overlapping_objects(results: Sequence[_FileResult], block: int = 256) -> list[Finding]:
    """VOC207/VOC208: pairs of boxes in one file with IoU above :data:`DUPLICATE_IOU`.

    Files are packed into blocks of about ``block`` boxes and each block goes through
    ``box_iou`` (in slices of ``block`` rows, so a file with thousands of boxes stays small
    in memory); pairs across files in a block are masked out.
    """
    import torch
    from torchvision.ops import box_iou

    out: list[Finding] = []
    pending: list[_FileResult] = []
    size = 0

    def flush() -> None:
        objects = [(r, o) for r in pending for o in r.valid]
        owner = torch.tensor([k for k, r in enumerate(pending) for _ in r.valid])
        boxes = torch.tensor([list(o.box) for _, o in objects], dtype=torch.float64)
        pairs = []
        for start in range(0, len(objects), block):
            iou = box_iou(boxes[start : start + block], boxes)
            hit = (iou > DUPLICATE_IOU) & (owner[start : start + block, None] == owner[None, :])
            pairs += [(start + i, j, float(iou[i, j])) for i, j in hit.nonzero().tolist() if start + i < j]
        for i, j, value in pairs:
            (r, a), (_, b) = objects[i], objects[j]
            if a.name == b.name:
                message = (
                    f"{_describe(b)} overlaps the '{a.name}' at line {a.line} at IoU {value:.2f}; probably the "
                    "same object drawn twice: delete one"
                )
                out.append(_finding("VOC207", r.xml, b.line, message))
            else:
                message = (
                    f"the box of {_describe(b)} is also labelled '{a.name}' at line {a.line} (IoU {value:.2f}); "
                    "one object has one class: delete the wrong one"
                )
                out.append(_finding("VOC208", r.xml, b.line, message))

    for r in results:
        if len(r.valid) < 2:
            continue
        pending.append(r)
        size += len(r.valid)
        if size >= block:
            flush()
            pending, size = [], 0
    if pending:
        flush()
    return out


def _object_bytes(data: bytes) -> list[bytes] | None:
    # Only parsed again when two objects compare equal, to tell byte-identical copies apart.
    try:
        root = parse_xml_tree(data, keep_comments=True)
    except VocError:
        return None
    return [etree.tostring(el, with_tail=False) for el in root.iterfind("object")]


def _classify_name(name: str, classes: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """(code, message, unambiguous new name) for a class name, or (None, None, None)."""
    if name in classes:
        return None, None, None
    key = _class_key(name)
    variants = [c for c in classes if _class_key(c) == key]
    if len(variants) == 1:
        return (
            "VOC302",
            f"class '{name}' differs from the known class '{variants[0]}' only in case, spaces or "
            f"underscores; rename it to '{variants[0]}' (--unsafe-fixes does)",
            variants[0],
        )
    close = _closest_classes(name, classes)
    if not close:
        return (
            "VOC301",
            f"unknown class '{name}' (not in the class list: {', '.join(classes)}); rename it, or add it "
            "to the classes file",
            None,
        )
    best_score, best = close[0]
    unambiguous = best_score >= 0.8 and (len(close) == 1 or close[1][0] <= best_score - 0.15)
    others = [c for _, c in close[1:3]]
    also = f" (or {' / '.join(others)}?)" if others and not unambiguous else ""
    return (
        "VOC301",
        f"unknown class '{name}' (not in the class list): did you mean '{best}'?{also} Rename it"
        + (" (--unsafe-fixes does)" if unambiguous else "")
        + ", or add it to the classes file",
        best if unambiguous else None,
    )


# --------------------------------------------------------------------------- dataset level


def _hash_file(path: Path) -> str | None:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _duplicate_images(images: Iterable[Path]) -> list[list[Path]]:
    """Groups of byte-identical images; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for img in images:
        try:
            by_size[img.stat().st_size].append(img)
        except OSError:
            continue
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for img in same_size:
            digest = _hash_file(img)
            if digest is not None:
                by_hash[digest].append(img)
        groups.extend(sorted(g) for g in by_hash.values() if len(g) > 1)
    return sorted(groups)


def _check_splits(files: DatasetFiles, known_ids: set[str], image_of: dict[str, Path], dup_groups) -> list[Finding]:
    out: list[Finding] = []
    lists = files.split_lists
    if not lists:
        return out

    def where(split: str, index: int) -> tuple[Path, int | None]:
        src = files.split_path(split)
        numbers = files.split_lines.get(split, ())
        return src, numbers[index] if index < len(numbers) else None

    for split, ids in lists.items():
        for i, sample in enumerate(ids):
            if sample not in known_ids:
                path, line = where(split, i)
                out.append(
                    _finding(
                        "VOC504",
                        path,
                        line,
                        f"'{sample}' is listed in {split}.txt but there is no Annotations/{sample}.xml; "
                        "remove the line or add the annotation",
                    )
                )

    # The sets a sample may be in only once: train (or trainval minus val, as training reads
    # it), val and test; and trainval, which holds val by design, against test.
    val = set(lists.get("val", ()))
    groups: dict[str, list[str]] = {}
    if "train" in lists:
        groups["train"] = list(lists["train"])
    elif "trainval" in lists:
        groups["trainval"] = [i for i in lists["trainval"] if i not in val]
    groups.update((name, list(lists[name])) for name in ("val", "test") if name in lists)
    names = list(groups)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if "train" in lists and "trainval" in lists and "test" in lists:
        groups["trainval"] = list(lists["trainval"])
        pairs.append(("trainval", "test"))
    for a, b in pairs:
        in_a = set(groups[a])
        for i, sample in enumerate(lists[b]):
            if sample in in_a:
                path, line = where(b, i)
                out.append(
                    _finding(
                        "VOC502",
                        path,
                        line,
                        f"'{sample}' is in both {a}.txt and {b}.txt: the model would be evaluated on an "
                        f"image it trained on; remove it from one of the lists",
                    )
                )

    # The same picture under two ids in two splits leaks just as well.
    split_of: dict[Path, tuple[str, str]] = {}
    for name in names:
        for sample in groups[name]:
            img = image_of.get(sample)
            if img is not None:
                split_of.setdefault(img, (name, sample))
    for group in dup_groups:
        placed = [split_of[img] for img in group if img in split_of]
        if len(placed) < 2:
            continue
        split_a, id_a = placed[0]
        for split_b, id_b in placed[1:]:
            if split_b == split_a:
                continue
            path, line = where(split_b, lists[split_b].index(id_b))
            out.append(
                _finding(
                    "VOC502",
                    path,
                    line,
                    f"'{id_b}' ({split_b}) is the same image as '{id_a}' ({split_a}); keep one copy "
                    "and remove the other from its list",
                )
            )
    return out


# --------------------------------------------------------------------------- anchor fit


def _resized_size(width: int, height: int, input_size: int) -> tuple[int, int]:
    """``(height, width)`` after GeneralizedRCNNTransform with min_size = max_size = input_size."""
    scale = min(input_size / min(width, height), input_size / max(width, height))
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def _anchors_for(generator, backbone: str, rh: int, rw: int):
    """The generator's real anchors for one resized image, with each level's layout:
    ``(anchors [N, 4], [(offset, grid_h, grid_w, stride_h, stride_w, per_location)])``."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    ph = int(math.ceil(rh / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    pw = int(math.ceil(rw / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    grids = [(int(math.ceil(ph / s)), int(math.ceil(pw / s))) for s in FEATURE_STRIDES[backbone]]
    # Only shapes matter to the generator: expanded zero-size storage, no memory.
    images = ImageList(torch.zeros(()).expand(1, 3, ph, pw), [(rh, rw)])
    features = [torch.zeros(()).expand(1, 1, gh, gw) for gh, gw in grids]
    anchors = generator(images, features)[0]
    layout = []
    offset = 0
    for (gh, gw), per_location in zip(grids, generator.num_anchors_per_location()):
        layout.append((offset, gh, gw, ph // gh, pw // gw, per_location))
        offset += gh * gw * per_location
    return anchors, layout


def _best_iou_one_size(gt: torch.Tensor, anchors: torch.Tensor, layout, chunk: int = 16) -> torch.Tensor:
    """Highest IoU of each box in ``gt`` with any anchor.

    IoU with an anchor of a fixed shape only falls as the anchor's centre moves away from
    the box's centre along either axis, so for each level and anchor shape the best anchor
    is the one whose grid position puts its centre nearest the box's centre. Those
    candidates (one per shape and level) are compared with torchvision's ``box_iou``,
    which gives the same maximum as comparing every anchor, at a fraction of the work.
    """
    import torch
    from torchvision.ops import box_iou

    n = gt.shape[0]
    cx = ((gt[:, 0] + gt[:, 2]) / 2)[:, None]
    cy = ((gt[:, 1] + gt[:, 3]) / 2)[:, None]
    candidates = []
    for offset, gh, gw, sh, sw, per_location in layout:
        base = anchors[offset : offset + per_location]  # grid position (0, 0): the shapes
        bx = ((base[:, 0] + base[:, 2]) / 2)[None, :]
        by = ((base[:, 1] + base[:, 3]) / 2)[None, :]
        ix = torch.round((cx - bx) / sw).long().clamp_(0, gw - 1)
        iy = torch.round((cy - by) / sh).long().clamp_(0, gh - 1)
        candidates.append(offset + (iy * gw + ix) * per_location + torch.arange(per_location))
    cand = torch.cat(candidates, dim=1)
    best = torch.empty(n, dtype=gt.dtype)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        best[rows] = box_iou(gt[rows], anchors[torch.unique(cand[rows])]).max(dim=1).values
    return best


def anchor_fit(
    boxes: Sequence[tuple],
    *,
    backbone: str = "mobilenet",
    input_size: int = 800,
    scales: Sequence[float] | None = None,
    ratios: Sequence[float] | None = None,
    suggest: bool = True,
) -> AnchorFit:
    """Best possible recall of the model's anchors on ``boxes``.

    Args:
        boxes: ``(image_width, image_height, xmin, ymin, xmax, ymax, ...)`` per box, in
            pixels of the original image.
        backbone, input_size, scales, ratios: the model's anchor layout and input size, as
            given to :func:`detect.model.build_model`.
        suggest: when coverage is poor, search other scales and ratios (same count, so
            the anchors per location stay the same) and attach the best as ``suggestion``.
    """
    import torch

    from detect.model import DEFAULT_ANCHOR_RATIOS, DEFAULT_ANCHOR_SCALES, make_anchor_generator

    scales = tuple(float(s) for s in scales) if scales else tuple(DEFAULT_ANCHOR_SCALES[backbone])
    ratios = tuple(float(r) for r in ratios) if ratios else tuple(DEFAULT_ANCHOR_RATIOS)
    generator = make_anchor_generator(backbone=backbone, scales=scales, ratios=ratios)
    best = torch.zeros(len(boxes), dtype=torch.float32)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, b in enumerate(boxes):
        by_size[(int(b[0]), int(b[1]))].append(i)
    for (width, height), indices in by_size.items():
        rh, rw = _resized_size(width, height, input_size)
        anchors, layout = _anchors_for(generator, backbone, rh, rw)
        gt = torch.tensor([boxes[i][2:6] for i in indices], dtype=torch.float32)
        gt = gt * torch.tensor([rw / width, rh / height, rw / width, rh / height])
        best[indices] = _best_iou_one_size(gt, anchors, layout)
    n = max(len(boxes), 1)
    fit = AnchorFit(
        backbone=backbone,
        input_size=input_size,
        scales=scales,
        ratios=ratios,
        anchors_per_location=generator.num_anchors_per_location()[0],
        best_iou=best.tolist(),
        share_07=float((best >= 0.7).sum()) / n,
        share_05=float((best >= 0.5).sum()) / n,
    )
    if suggest and fit.poor:
        fit.suggestion = _suggest_anchors(boxes, fit)
    return fit


def _centred(widths: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.stack([-widths / 2, -heights / 2, widths / 2, heights / 2], dim=1)


def _suggest_anchors(boxes: Sequence[tuple], current: AnchorFit) -> AnchorFit | None:
    """Scales and ratios that fit the dataset's box shapes better, checked on real anchors.

    Candidates are ranked by the IoU of box and anchor shapes with centres aligned (fast);
    the winner is then measured like the current layout, and returned only if it does
    better there.
    """
    import torch
    from torchvision.ops import box_iou

    from detect.model import BASE_SIZES

    backbone, input_size = current.backbone, current.input_size
    step = max(1, len(boxes) // 1000)  # an even sample of about 1000 boxes to search with
    sample = boxes[::step]
    w = torch.tensor([(b[4] - b[2]) * _resized_size(b[0], b[1], input_size)[1] / b[0] for b in sample])
    h = torch.tensor([(b[5] - b[3]) * _resized_size(b[0], b[1], input_size)[0] / b[1] for b in sample])
    gt = _centred(w, h)
    n_ratios, n_scales = len(current.ratios), len(current.scales)
    log_r = torch.log(h / w)
    quantiles = torch.tensor([(i + 0.5) / n_ratios for i in range(n_ratios)], dtype=log_r.dtype)
    median = float(torch.exp(torch.median(log_r)))
    ratio_sets = {current.ratios}
    spread = tuple(round(float(v), 2) for v in torch.exp(torch.quantile(log_r, quantiles)))
    if len(set(spread)) == n_ratios:
        ratio_sets.add(spread)
    for step in (2.0, 2**0.5):
        ratio_sets.add(tuple(round(median * step ** (i - (n_ratios - 1) / 2), 2) for i in range(n_ratios)))
    bases = BASE_SIZES[backbone]

    def shape_score(scales, ratios) -> float:
        sizes = torch.tensor([b * s for b in bases for s in scales])
        hr = torch.sqrt(torch.tensor(ratios))
        aw = (sizes[:, None] / hr[None, :]).reshape(-1)
        ah = (sizes[:, None] * hr[None, :]).reshape(-1)
        iou = box_iou(gt, _centred(aw, ah)).max(dim=1).values
        return float((iou >= 0.7).float().mean() + (iou >= 0.5).float().mean() + iou.mean())

    ranked = []
    for ratios in sorted(ratio_sets):
        for first in (2 ** (i / 4) for i in range(-12, 9)):
            for spacing in (2 ** (1 / 3), 2**0.5, 2.0):
                scales = tuple(round(first * spacing**k, 3) for k in range(n_scales))
                if min(bases) * scales[0] >= 1:
                    ranked.append((shape_score(scales, ratios), scales, ratios))
    ranked.sort(key=lambda t: -t[0])
    # Shapes alone ignore where the grid puts anchor centres (strides up to 64 px), so the
    # best few are measured on the real anchors.
    best = None
    for _, scales, ratios in ranked[:4]:
        if scales == current.scales and ratios == current.ratios:
            continue
        found = anchor_fit(sample, backbone=backbone, input_size=input_size, scales=scales, ratios=ratios, suggest=False)
        if best is None or found.share_05 + found.share_07 > best.share_05 + best.share_07:
            best = found
    if best is None:
        return None
    best = anchor_fit(boxes, backbone=backbone, input_size=input_size, scales=best.scales, ratios=best.ratios, suggest=False)
    if best.share_05 + best.share_07 <= current.share_05 + current.share_07:
        return None
    return best


# --------------------------------------------------------------------------- the check


@contextlib.contextmanager
def _one_torch_thread():
    # The tensors here are tiny: thread start-up and OpenMP spinning cost far more than
    # they save, worst of all on a busy machine. The caller's setting is restored.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_model_module() -> None:
    import detect.model  # noqa: F401  (torch and torchvision with it)


_WORKER: _Context | None = None
PARALLEL_MIN_FILES = 1000  # below this, starting workers costs more than it saves


def _worker_init(ctx: _Context) -> None:
    global _WORKER
    _WORKER = ctx


def _worker_run(chunk: Sequence[Path]) -> list[_FileResult]:
    assert _WORKER is not None
    return [_check_file(xml, _WORKER) for xml in chunk]


def _check_files(xmls: Sequence[Path], ctx: _Context, jobs: int) -> list[_FileResult]:
    """The per-file checks, in ``jobs`` forked worker processes for large datasets, while
    this process imports torch (a few seconds) if it has not yet.

    Workers only parse XML and read image headers, never torch, so forking is safe even
    in a process that has torch loaded; where fork is not available the files are checked
    here, one by one.
    """
    jobs = min(jobs, os.cpu_count() or 1)
    if jobs <= 1 or len(xmls) < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        results = [_check_file(xml, ctx) for xml in xmls]
        _load_model_module()
        return results
    size = max(50, len(xmls) // (jobs * 8))
    chunks = [xmls[i : i + size] for i in range(0, len(xmls), size)]
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(ctx,),
    ) as pool:
        futures = [pool.submit(_worker_run, chunk) for chunk in chunks]  # the workers start here
        _load_model_module()
        return [res for future in futures for res in future.result()]


def check_dataset(
    files: DatasetFiles,
    *,
    classes: Sequence[str] | None = None,
    deep: bool = False,
    backbone: str = "mobilenet",
    input_size: int = 800,
    anchor_scales: Sequence[float] | None = None,
    anchor_ratios: Sequence[float] | None = None,
    jobs: int = 1,
) -> CheckReport:
    """Run every check on a dataset found by :func:`detect.layout.discover`.

    Args:
        files: the dataset.
        classes: the class names the model is trained on; None takes them from the data
            (then unknown names cannot be told, but case variants still are).
        deep: decode every image fully (slow), catching truncated files.
        backbone, input_size, anchor_scales, anchor_ratios: the model the data is meant for,
            as in :func:`detect.model.build_model`; used by the small-box and anchor checks.
        jobs: processes for the per-file checks (XML parsing, image headers); used from
            :data:`PARALLEL_MIN_FILES` files on, where ``fork`` is available.

    Returns:
        a :class:`CheckReport`; it never raises for a problem in the data.

    Raises:
        ValueError: an unknown backbone or an input size under 32 (caller mistakes).
    """
    if backbone not in FEATURE_STRIDES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(FEATURE_STRIDES)}")
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")
    started = time.perf_counter()
    ctx = _Context(files=files, classes=tuple(classes) if classes is not None else None, deep=deep)
    results = _check_files(files.xml_files, ctx, jobs)
    log.debug("%d XML files read in %.2f s", len(files.xml_files), time.perf_counter() - started)
    with _one_torch_thread():
        report = _dataset_checks(
            files,
            results,
            ctx,
            backbone=backbone,
            input_size=input_size,
            anchor_scales=anchor_scales,
            anchor_ratios=anchor_ratios,
        )
    report.elapsed = time.perf_counter() - started
    log.info("checked %d XML files in %.2f s: %d findings", len(files.xml_files), report.elapsed, len(report.findings))
    return report


def _small_boxes(boxes, box_paths, *, backbone: str, input_size: int, scales) -> list[Finding]:
    """VOC205: boxes smaller than the model resolves at its input size.

    The floor is a quarter of the smallest anchor or half the finest feature stride,
    whichever is larger: below it a box covers too little of any anchor and of the
    feature map to be found.
    """
    from detect.model import BASE_SIZES

    stride = FEATURE_STRIDES[backbone][0]
    floor = max(BASE_SIZES[backbone][0] * min(scales) / 4, stride / 2)
    out = []
    for (W, H, x0, y0, x1, y1, line, name), path in zip(boxes, box_paths):
        scale = input_size / max(W, H)
        sw, sh = (x1 - x0) * scale, (y1 - y0) * scale
        if min(sw, sh) < floor:
            out.append(
                _finding(
                    "VOC205",
                    path,
                    line,
                    f"object '{name}' ({_box_text((x0, y0, x1, y1))}) is {_num(round(x1 - x0, 1))}x"
                    f"{_num(round(y1 - y0, 1))} px, {sw:.0f}x{sh:.0f} px at the model's input size {input_size}; "
                    f"the {backbone} model resolves objects from about {floor:.0f} px (feature stride {stride}): "
                    "check the box, or train with a larger --input-size or the resnet50 backbone",
                )
            )
    return out


def _dataset_checks(files: DatasetFiles, results, ctx: _Context, *, backbone, input_size, anchor_scales, anchor_ratios) -> CheckReport:
    from detect.model import DEFAULT_ANCHOR_RATIOS, DEFAULT_ANCHOR_SCALES

    scales = tuple(anchor_scales) if anchor_scales else tuple(DEFAULT_ANCHOR_SCALES[backbone])
    ratios = tuple(anchor_ratios) if anchor_ratios else tuple(DEFAULT_ANCHOR_RATIOS)
    findings: list[Finding] = []
    counts: Counter = Counter()
    boxes: list[tuple] = []
    box_paths: list[Path] = []
    used_images: set[Path] = set()
    image_of: dict[str, Path] = {}
    sample_ids = [files.sample_id(xml) for xml in files.xml_files]
    for res, sample in zip(results, sample_ids):
        findings.extend(res.findings)
        counts.update(res.names)
        if res.image is not None:
            used_images.add(res.image)
            image_of[sample] = res.image
        boxes.extend(res.boxes)
        box_paths.extend([res.xml] * len(res.boxes))
    findings.extend(_overlapping_objects(results))
    findings.extend(_small_boxes(boxes, box_paths, backbone=backbone, input_size=input_size, scales=scales))

    # -- images nobody annotated
    for img in files.image_files:
        if img not in used_images:
            findings.append(
                _finding(
                    "VOC402",
                    img,
                    None,
                    f"image '{img.name}' has no XML; annotate it in LabelImg (an image without objects "
                    "still needs an XML to train as background) or move it out of the dataset",
                )
            )

    # -- the same picture twice
    dup_groups = _duplicate_images(files.image_files)
    for group in dup_groups:
        for img in group[1:]:
            findings.append(
                _finding(
                    "VOC501",
                    img,
                    None,
                    f"image '{img.name}' has the same content as '{group[0]}'; the picture counts twice "
                    "(and can leak between splits): delete one copy and its XML",
                )
            )
    findings.extend(_check_splits(files, set(sample_ids), image_of, dup_groups))

    for stray in files.stray_files:
        what = _STRAY_HINT.get(stray.name, "a macOS resource-fork copy" if stray.name.startswith("._") else "system debris")
        findings.append(
            _finding("VOC503", stray, None, f"stray file ({what}), not part of the dataset; delete it")
        )

    # -- classes
    if ctx.classes is not None:
        for name in ctx.classes:
            if counts[name] == 0:
                findings.append(
                    _finding(
                        "VOC303",
                        files.root,
                        None,
                        f"class '{name}' is in the classes list but no object uses it; the model cannot "
                        "learn it: annotate some, or drop it from the list",
                    )
                )
    else:
        by_key: dict[str, list[str]] = defaultdict(list)
        for name in counts:
            by_key[_class_key(name)].append(name)
        for variants in by_key.values():
            if len(variants) > 1:
                variants.sort(key=lambda v: -counts[v])
                listed = ", ".join(f"'{v}' ({counts[v]})" for v in variants)
                findings.append(
                    _finding(
                        "VOC302",
                        files.root,
                        None,
                        f"class names {listed} differ only in case, spaces or underscores and would be "
                        f"trained as different classes; rename them all to one, e.g. '{variants[0]}' "
                        "(with --classes FILE, --unsafe-fixes renames them)",
                        severity="warning",
                    )
                )
    used = [(n, c) for n, c in counts.most_common() if c > 0 and (ctx.classes is None or n in ctx.classes)]
    if len(used) > 1:
        (top, most), (low, least) = used[0], used[-1]
        ratio = most / least
        if ratio >= IMBALANCE_RATIO:
            findings.append(
                _finding(
                    "VOC304",
                    files.root,
                    None,
                    f"class imbalance {ratio:.1f}:1 ('{top}' {most} objects, '{low}' {least}); the model "
                    f"will favour '{top}': annotate more '{low}', or weight or resample the rare classes",
                )
            )

    # -- anchors
    fit = None
    if boxes:
        fit = anchor_fit(boxes, backbone=backbone, input_size=input_size, scales=scales, ratios=ratios)
        layout = (
            f"{backbone}, input {input_size}, {fit.anchors_per_location} anchors/location "
            f"(scales {'/'.join(f'{s:g}' for s in fit.scales)}, ratios {'/'.join(f'{r:g}' for r in fit.ratios)})"
        )
        findings.append(_finding("VOC601", files.root, None, f"anchor fit for {layout}: {fit.describe()}"))
        for (W, H, x0, y0, x1, y1, line, _), path, value in zip(boxes, box_paths, fit.best_iou):
            if value < 0.5:
                rh, rw = _resized_size(W, H, input_size)
                findings.append(
                    _finding(
                        "VOC602",
                        path,
                        line,
                        f"box {_box_text((x0, y0, x1, y1))} ({(x1 - x0) * rw / W:.0f}x{(y1 - y0) * rh / H:.0f} px at "
                        f"input size {input_size}) is reached by no anchor at IoU >= 0.5 (best {value:.2f}); "
                        "the RPN learns it only from a weak match: check the box; if many boxes are like it, "
                        "adapt the anchor scales and ratios",
                    )
                )
        if fit.poor:
            s = fit.suggestion
            if s is not None:
                advice = (
                    f"train with {s.flags()} for {s.describe()} (the same {s.anchors_per_location} "
                    "anchors per location)"
                )
            else:
                advice = "no other scales and ratios do better; change --input-size or the backbone"
            findings.append(
                _finding(
                    "VOC603",
                    files.root,
                    None,
                    f"poor anchor coverage for {layout}: {fit.describe()}; {advice}",
                )
            )

    findings.sort(key=lambda f: (str(f.path), f.line or 0, f.col or 0, f.code))
    return CheckReport(
        files=files,
        findings=findings,
        classes=ctx.classes,
        class_counts=counts,
        images_used=len(used_images),
        anchor=fit,
    )


# --------------------------------------------------------------------------- fixes


@dataclass
class FilePlan:
    """New contents for one XML file and the findings they resolve."""

    path: Path
    before: bytes
    after: bytes
    findings: list[Finding]
    encoding: str = "UTF-8"
    had_bom: bool = False

    def diff(self) -> str:
        """A unified diff of the change (``--diff``)."""
        old = _decode(self.before, self.encoding)
        new = self.after.decode("utf-8")
        lines = list(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"a/{self.path}",
                tofile=f"b/{self.path}",
            )
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if any(f.fix and f.fix.action == "reencode" for f in self.findings):
            was = f"{self.encoding} with a byte-order mark" if self.had_bom else self.encoding
            text = f"# {self.path}: re-encoded from {was} to UTF-8 without BOM\n" + text
        return text


def _decode(data: bytes, encoding: str) -> str:
    try:
        # Python's "utf-16"/"utf-32" codecs read the byte-order mark themselves.
        text = data.decode("utf-8-sig" if encoding.upper() in ("UTF-8", "UTF8") else encoding)
    except (LookupError, UnicodeDecodeError):
        text = data.decode("latin-1")
    return text.lstrip("\ufeff")


def _set_size(root: etree._Element, width: int, height: int, depth: int) -> None:
    """Fill ``<size>`` (created where LabelImg puts it if missing), indented like the file."""
    first = root.text if isinstance(root.text, str) and "\n" in root.text and not root.text.strip() else "\n\t"
    unit = first.split("\n")[-1] or "\t"
    level1, level2 = "\n" + unit, "\n" + unit * 2
    size = root.find("size")
    if size is None:
        size = etree.Element("size")
        anchor = root.find("segmented")
        if anchor is None:
            anchor = root.find("object")
        if anchor is not None:
            anchor.addprevious(size)
            size.tail = level1
        elif len(root):
            last = root[-1]
            size.tail, last.tail = last.tail, level1
            root.append(size)
        else:
            root.text, size.tail = level1, "\n"
            root.append(size)
    values = {"width": width, "height": height, "depth": depth}
    for key in ("width", "height", "depth"):
        child = size.find(key)
        if child is None:
            child = etree.SubElement(size, key)
            if len(size) == 1:
                size.text, child.tail = level2, level1
            else:
                prev = size[-2]
                child.tail, prev.tail = prev.tail or level1, level2
            child.text = str(values[key])
        elif key != "depth" or (child.text or "").strip() in ("", "0"):
            child.text = str(values[key])


def _edit_coordinates(obj: etree._Element, change) -> None:
    bb = obj.find("bndbox")
    if bb is None:
        return
    for key in ("xmin", "ymin", "xmax", "ymax"):
        el = bb.find(key)
        if el is None or not isinstance(el.text, str):
            return
        try:
            value = float(el.text.strip())
        except ValueError:
            return
        if not math.isfinite(value):
            return
        el.text = format_number(change(key, value))


def _plan_file(path: Path, findings: list[Finding]) -> FilePlan | None:
    try:
        before = path.read_bytes()
        root = parse_xml_tree(before, source=path, keep_comments=True)
    except (OSError, VocError):
        return None
    declared = root.getroottree().docinfo.encoding
    encoding, has_bom = detect_encoding(before, declared)
    objects = list(root.iterfind("object"))
    drops: set[int] = set()
    done: list[Finding] = []
    for f in findings:
        action, args = f.fix.action, f.fix.args
        # Object fixes name the object by its position; the file may have changed since.
        obj = objects[args[0]] if action not in ("reencode", "fill-size") and args[0] < len(objects) else None
        if action == "reencode":
            done.append(f)
        elif action == "fill-size":
            _set_size(root, *args)
            done.append(f)
        elif obj is None:
            continue
        elif action == "rename" and obj.find("name") is not None:
            obj.find("name").text = args[1]
            done.append(f)
        elif action == "round":
            _edit_coordinates(obj, lambda _k, v: math.floor(v + 0.5))
            done.append(f)
        elif action == "clamp":
            limits = {"xmin": args[1], "xmax": args[1], "ymin": args[2], "ymax": args[2]}
            _edit_coordinates(obj, lambda k, v: min(max(v, 0.0), float(limits[k])))
            done.append(f)
        elif action == "drop-duplicate" and args[1] < len(objects):
            # Only an exact copy goes, checked again on the file as it is now.
            if etree.tostring(obj, with_tail=False) == etree.tostring(objects[args[1]], with_tail=False):
                drops.add(args[0])
                done.append(f)
    for index in sorted(drops, reverse=True):
        el = objects[index]
        parent = el.getparent()
        prev = el.getprevious()
        # The element's tail is the indentation of what follows; keep that layout.
        if prev is not None:
            prev.tail = el.tail
        else:
            parent.text = el.tail
        parent.remove(el)
    after = etree.tostring(root.getroottree(), encoding="utf-8", xml_declaration=False)
    old_text = _decode(before, encoding)
    if old_text.lstrip().startswith("<?xml"):
        after = b'<?xml version="1.0" encoding="UTF-8"?>\n' + after
    if old_text.endswith("\n") and not after.endswith(b"\n"):
        after += b"\n"
    if after == before or not done:
        return None
    return FilePlan(path, before, after, done, encoding, has_bom)


def plan_fixes(report: CheckReport, *, unsafe: bool = False) -> list[FilePlan]:
    """New contents for every XML file with fixable findings (safe ones; with ``unsafe``
    the unsafe ones too). Nothing is written; see :func:`apply_fixes`."""
    by_file: dict[Path, list[Finding]] = defaultdict(list)
    xmls = set(report.files.xml_files)
    for f in report.fixable(unsafe=unsafe):
        if f.path in xmls:
            by_file[f.path].append(f)
    plans = []
    for path in sorted(by_file):
        plan = _plan_file(path, by_file[path])
        if plan is not None:
            plans.append(plan)
    return plans


def apply_fixes(plans: Iterable[FilePlan], *, backup_suffix: str = ".bak") -> list[Path]:
    """Write each plan: the original goes to ``<file>.xml.bak``, the new contents replace
    the file atomically with its permissions kept. Returns the files written."""
    written = []
    for plan in plans:
        path = plan.path
        backup = path.with_name(path.name + backup_suffix)
        shutil.copy2(path, backup)
        write_atomic(path, plan.after)
        log.info("fixed %s (%d findings; original kept as %s)", path, len(plan.findings), backup.name)
        written.append(path)
    return written
