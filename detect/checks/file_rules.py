"""The per-file checks: one XML file against itself, its image and the class list.

:func:`check_file` reads one XML with the lenient parser of :mod:`detect.data.voc` and the header
of its image (size, EXIF orientation; the whole image with ``deep``) and returns a
:class:`FileResult`: the findings of codes VOC1xx-VOC4xx, and what the dataset-level checks
need (class names, boxes). Everything in a :class:`FileResult` is plain data, cheap to send
back from a worker process.

One module of ~530 lines: every rule that reads a single file, in code order, so a finding's
code leads to its rule by reading down.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

from lxml import etree
from PIL import Image

from detect.checks.findings import Finding, Fix, box_text, finding, num
from detect.common.errors import show
from detect.common.files import is_regular, read_regular
from detect.data.images import check_exif_mode, orientation_of, upright_size
from detect.data.layout import IMAGE_EXTENSIONS, DatasetFiles, file_name
from detect.data.voc import Annotation, VocError, VocObject, parse_voc_bytes, parse_xml_tree

__all__ = ["Context", "FileResult", "ImageInfo", "Obj", "check_file", "class_key", "read_image_info"]

BORDER_TOLERANCE = 1.0
"""Pixels a box may stand outside the image (VOC's 1-based coordinates reach width)."""
_MAX_SIDE = 100_000  # larger claimed image sides are nonsense; no anchors are built for them

_ORIENTATION = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirrored and turned 90 degrees)",
    6: "turned 90 degrees clockwise",
    7: "transversed (mirrored and turned 90 degrees)",
    8: "turned 90 degrees counter-clockwise",
}


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says (``deep=True``: and whether it decodes).

    ``width`` x ``height`` is the frame boxes refer to: upright (the EXIF orientation
    applied, as LabelImg 1.8.4+ shows it) or, under ``exif="ignore"``, as stored;
    ``stored`` is the size of the stored pixels; ``orientation`` the valid tag (2-8) or 1.
    """

    path: Path
    width: int = 0
    height: int = 0
    bands: int = 0
    format: str | None = None
    orientation: int = 1
    error: str | None = None
    deep_error: str | None = None
    stored: tuple[int, int] | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


def read_image_info(path: Path, *, deep: bool = False, exif: str = "apply") -> ImageInfo:
    """Size, bands, format and EXIF orientation from the image header (no decoding);
    with ``deep=True`` the image is decoded too, catching truncated files. The size is the
    one :func:`detect.data.images.image_size` gives under the same ``exif`` rule."""
    try:
        if not is_regular(path):  # Pillow would block forever on a FIFO
            return ImageInfo(path, error="not a regular file (a FIFO, a device or a folder)")
        with warnings.catch_warnings():
            # Pillow warns from half its limit on (two lines on stderr); over it, open() fails: an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            fmt = im.format
            bands = len(im.getbands())
            orientation = orientation_of(im)  # invalid values (65537) are no rotation, as for every reader
            deep_error = None
            if deep:
                try:
                    im.load()
                except Exception as exc:
                    deep_error = str(exc) or type(exc).__name__
    except Exception as exc:  # PIL raises many kinds for bad files; all mean "unreadable"
        return ImageInfo(path, error=str(exc) or type(exc).__name__)
    shown = upright_size(width, height, orientation) if exif == "apply" else (width, height)
    return ImageInfo(path, *shown, bands, fmt, orientation, None, deep_error, (width, height))


def class_key(name: str) -> str:
    """The name as people mean it: case, spaces, dashes and underscores folded."""
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


@dataclass
class Context:
    files: DatasetFiles
    classes: tuple[str, ...] | None
    deep: bool
    exif: str = "apply"
    images: dict[Path, ImageInfo] = field(default_factory=dict)
    names: dict[str, tuple] = field(default_factory=dict)

    def image_info(self, path: Path) -> ImageInfo:
        info = self.images.get(path)
        if info is None:
            info = self.images[path] = read_image_info(path, deep=self.deep, exif=check_exif_mode(self.exif))
        return info


class Obj(NamedTuple):
    """What the dataset-level checks need of an object (small to send from a worker)."""

    name: str
    box: tuple[float, float, float, float]
    line: int | None


@dataclass
class FileResult:
    """The per-file checks' output: plain tuples and strings, cheap to pickle back from a
    worker process."""

    xml: Path
    findings: list[Finding]
    names: list[str] = field(default_factory=list)  # the class of every parsed object
    image: Path | None = None
    # (image width, image height, xmin, ymin, xmax, ymax, line, class) of each box inside
    # its image, for the small-box check and the anchor fit
    boxes: list[tuple] = field(default_factory=list)
    valid: list[Obj] = field(default_factory=list)  # positive boxes, copies left out
    # the EXIF orientation of an image whose <size> cannot tell which frame its boxes were
    # drawn in (180 degrees, mirrored, or a square photo): reported once per dataset (VOC406)
    unclear_orientation: int = 0


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


def check_file(xml: Path, ctx: Context) -> FileResult:
    out: list[Finding] = []
    result = FileResult(xml, out)

    def add(code: str, line: int | None, message: str, **kw) -> None:
        out.append(finding(code, xml, line, message, **kw))

    problems: list[VocError] = []
    data = b""
    foreign = ctx.files.foreign.get(xml)  # a COCO/YOLO sample, read (and its format checked) by discover
    try:
        if foreign is not None:
            ann = foreign
        else:
            try:
                data = read_regular(xml)
            except OSError as exc:
                add("VOC100", None, f"cannot read the file ({exc.strerror or exc}); check its permissions")
                return result
            ann = parse_voc_bytes(data, source=xml, problems=problems)
    except VocError as err:
        add(_error_code(err), err.line, err.message, col=err.column)
        # The image beside it is annotated, only badly: no "image without XML" for it too.
        result.image = ctx.files.find_image(xml, None)
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
        ambiguous = _case_variants(ctx.files, xml, ann.filename)
        if ambiguous:
            names = ", ".join(f"'{show(p.name)}'" for p in ambiguous)
            add(
                "VOC401",
                fname_line,
                f"image ambiguous: {names} differ only in case and none is named exactly as <filename> or this "
                "XML; rename the images apart (on Windows and macOS they are one file) and set <filename>",
            )
        else:
            add(
                "VOC401",
                fname_line,
                f"image missing: no {looked}'{xml.stem}' with an image extension was found; put the "
                "image next to the XML (or in JPEGImages/), pass --images DIR, or delete this XML",
            )
    else:
        twins = [p for p in ctx.files.case_variants(image.parent, image.name) if p != image]
        if twins:
            add(
                "VOC403",
                fname_line,
                f"paired with '{show(image.name)}' (its exact name), but {', '.join(repr(show(p.name)) for p in twins)} "
                "in the same folder differs only in case: on Windows and macOS the two are one file; rename one apart",
            )
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
            elif foreign is None and PurePosixPath(base).stem != xml.stem:
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
                f"image '{show(image)}' cannot be read ({info.error}); replace it with a readable JPEG/PNG "
                "or delete it and this XML",
            )
        else:
            # An EXIF-unaware tool (LabelImg before 1.8.4) wrote the stored size of a photo that
            # displays turned by 90 degrees: the one case the size can tell.
            stored_frame = (
                ctx.exif == "apply" and size_ok and info.orientation in (5, 6, 7, 8)
                and info.stored != real and (ann.width, ann.height) == info.stored
            )
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
            elif stored_frame:
                W, H = info.stored
                add(
                    "VOC409",
                    size_line,
                    f"<size> {ann.width}x{ann.height} is the stored frame of '{show(image.name)}', which has EXIF "
                    f"orientation {info.orientation}: LabelImg 1.8.4+, OpenCV and browsers show it "
                    f"{_ORIENTATION[info.orientation]} as {info.width}x{info.height}, so the boxes were drawn with an "
                    "EXIF-unaware tool; --fix maps them into the upright frame (or check and train the whole dataset "
                    "with --exif ignore)",
                    fix=Fix("safe", "exif-upright", (info.orientation, W, H, info.width, info.height, info.bands or 3)),
                )
            elif ann.width > 0 and ann.height > 0 and (ann.width, ann.height) != real:
                hint = "re-open the image in LabelImg, check the boxes and save again"
                if (ann.width, ann.height) == (info.height, info.width):
                    if ctx.exif == "ignore" and info.orientation in (5, 6, 7, 8):
                        hint = (
                            f"width and height are swapped: the XML is in the upright frame its EXIF orientation "
                            f"{info.orientation} shows (LabelImg 1.8.4+), so --exif ignore does not fit this dataset"
                        )
                    else:
                        hint = ("width and height are swapped: the annotator probably saw the image rotated; "
                                "check the boxes against the image")
                add(
                    "VOC405",
                    size_line,
                    f"<size> says {ann.width}x{ann.height} but the image is {info.width}x{info.height}; "
                    f"the boxes may have been drawn on another version of the image: {hint}",
                )
            if ctx.exif == "apply" and info.orientation != 1 and not stored_frame and (
                info.orientation in (2, 3, 4) or info.width == info.height
            ):
                result.unclear_orientation = info.orientation

    if image is not None and info.readable and stored_frame:
        real = info.stored  # the boxes are checked in the frame they were drawn in
    ref = real if real is not None else ((ann.width, ann.height) if ann.width > 0 and ann.height > 0 else None)
    _check_objects(ann, data, ref, ctx, add, result)
    return result


def _case_variants(files: DatasetFiles, xml: Path, filename: str | None) -> list[Path]:
    names = ([file_name(filename)] if filename else []) + [xml.stem + ext for ext in IMAGE_EXTENSIONS]
    folders = [f for f in (files.images_override, xml.parent, files.root / "JPEGImages") if f is not None]
    found: list[Path] = []
    for folder in folders:
        for name in names:
            found += [p for p in files.case_variants(folder, name) if p not in found]
    return found


_WHOLE = re.compile(r"[+-]?\d+")


def describe(obj: VocObject | Obj) -> str:
    return f"object '{show(obj.name)}' ({box_text(obj.box)})"


def _check_objects(ann: Annotation, data: bytes, ref, ctx: Context, add, result: FileResult) -> None:
    classes = ctx.classes
    seen: dict[VocObject, VocObject] = {}
    tree_objects = None

    for obj in ann.objects:
        box = obj.box
        # -- exact copies: reported once, and not checked again
        first = seen.get(obj)
        if first is not None:
            if tree_objects is None:
                tree_objects = _object_bytes(data) if data else None
            same_bytes = (
                tree_objects is not None
                and max(first.index, obj.index) < len(tree_objects)
                and tree_objects[first.index] == tree_objects[obj.index]
            )
            add(
                "VOC206",
                obj.line,
                f"{describe(obj)} is identical to the object at line {first.line}; delete one"
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
                f"{describe(obj)} has decimal coordinates ({', '.join(obj.raw_box)}); VOC tools expect whole "
                "pixels (--unsafe-fixes rounds them)",
                fix=Fix("unsafe", "round", (obj.index,)),
            )

        # -- geometry
        w, h = box.width, box.height
        if w <= 0 or h <= 0:
            axis = []
            if w <= 0:
                axis.append(f"xmin {num(box.xmin)} >= xmax {num(box.xmax)}")
            if h <= 0:
                axis.append(f"ymin {num(box.ymin)} >= ymax {num(box.ymax)}")
            area = "zero-area" if w == 0 or h == 0 else "inverted"
            add(
                "VOC201",
                obj.box_line,
                f"{describe(obj)} is a {area} box: {' and '.join(axis)}; delete the object and draw the box again",
            )
            continue
        if w < 1 or h < 1:
            add(
                "VOC202",
                obj.box_line,
                f"{describe(obj)} is {num(w)}x{num(h)} px, under 1 px; delete the object or draw the box again",
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
                        f"{describe(obj)} reaches outside the {W}x{H} image by more than {tol:g} px; drag it "
                        f"inside (--unsafe-fixes clamps it to {box_text((cx0, cy0, cx1, cy1))})",
                        fix=Fix("unsafe", "clamp", (obj.index, W, H)),
                    )
                else:
                    add(
                        "VOC203",
                        obj.box_line,
                        f"{describe(obj)} lies entirely outside the {W}x{H} image; delete the object or draw it again",
                    )
                    continue
            elif not obj.truncated and (box.xmin <= tol or box.ymin <= tol or box.xmax >= W - tol or box.ymax >= H - tol):
                add(
                    "VOC204",
                    obj.line,
                    f"{describe(obj)} touches the image border but <truncated> is 0; set it to 1 if the object "
                    "is cut off by the frame",
                )
            if 0 < W <= _MAX_SIDE and 0 < H <= _MAX_SIDE:
                x0, y0, x1, y1 = max(box.xmin, 0.0), max(box.ymin, 0.0), min(box.xmax, W), min(box.ymax, H)
                if x1 - x0 >= 1 and y1 - y0 >= 1:
                    result.boxes.append((W, H, x0, y0, x1, y1, obj.box_line, obj.name))
        result.valid.append(Obj(obj.name, tuple(box), obj.line))


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
    key = class_key(name)
    variants = [c for c in classes if class_key(c) == key]
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
