"""Pascal VOC XML: one safe parser and one writer, used by training, evaluation and the checker.

A VOC file (as LabelImg writes it) becomes an :class:`Annotation` record::

    Annotation(filename="img_001.jpg", width=640, height=480, depth=3,
               objects=(VocObject(name="Lata_defectuosa",
                                  box=Box(xmin=48.0, ymin=240.0, xmax=195.0, ymax=371.0),
                                  difficult=False, truncated=False),))

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the original image, as floats and on
continuous coordinates: VOC's 1-based integer convention is kept as written (no +1/-1 is
applied), so ``parse(write(x)) == x`` holds exactly.

Safety: the XML is read as bytes (so the declared encoding and a BOM are honoured) by an
lxml parser with entity resolution, DTD loading and network access off; a document with a
DOCTYPE is refused outright, because entities are how XXE and "billion laughs" attacks
arrive and no annotation tool writes one.

Errors: every problem is a :class:`VocError` carrying the file path and the XML line.
``parse_voc(path)`` raises on the first problem. ``parse_voc(path, problems=[])`` is the
lenient mode the checker uses: problems are appended to the list, broken objects are left
out of the record, and parsing goes on as far as the document allows.

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lxml import etree

__all__ = [
    "Annotation",
    "Box",
    "VocError",
    "VocObject",
    "annotation_to_xml",
    "parse_voc",
    "parse_voc_bytes",
    "write_voc",
]


class VocError(Exception):
    """A problem in one VOC file: ``path:line: message``.

    Attributes:
        path: the XML file (or ``"<bytes>"`` when parsed from memory).
        line: 1-based XML line of the offending element, or None when not known.
        column: 1-based column where the XML parser reports one (well-formedness errors).
        kind: a short stable tag for the kind of problem (``"malformed"``, ``"doctype"``,
            ``"missing"``, ``"bad-number"``, ``"several-bndbox"``, ...), for tools that
            group problems; the message is for people.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        message: str,
        *,
        kind: str = "invalid",
        column: int | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.kind = kind
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class Box(NamedTuple):
    """An axis-aligned box ``(xmin, ymin, xmax, ymax)`` in pixels, floats."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: a class name and a box. ``line`` is where it stands in the XML."""

    name: str
    box: Box
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Annotation:
    """One VOC file: the image it describes and its objects.

    ``width``/``height``/``depth`` are what ``<size>`` says (0 where the file says 0; the
    checker compares them with the real image). ``source`` is the XML file the record came
    from and does not take part in equality.
    """

    filename: str
    width: int
    height: int
    depth: int = 3
    objects: tuple[VocObject, ...] = ()
    folder: str = ""
    path: str = ""
    source: Path | None = field(default=None, compare=False)


_PARSER_OPTIONS = dict(
    resolve_entities=False,
    load_dtd=False,
    no_network=True,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


def _parser() -> etree.XMLParser:
    # A fresh parser per document: lxml parsers keep error logs and are not thread-safe.
    return etree.XMLParser(**_PARSER_OPTIONS)


def parse_voc(
    path: str | os.PathLike[str], *, problems: list[VocError] | None = None
) -> Annotation:
    """Parse one VOC XML file into an :class:`Annotation`.

    Args:
        path: the XML file.
        problems: None (default) to raise :class:`VocError` on the first problem; a list
            to collect problems into it and return the best record the file allows.

    Raises:
        VocError: on the first problem when ``problems`` is None, or when the file cannot
            be read or is not well-formed XML at all (then even lenient mode has no record
            to return).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VocError(path, None, f"cannot read file: {exc.strerror or exc}", kind="unreadable") from None
    return parse_voc_bytes(data, source=path, problems=problems)


def parse_voc_bytes(
    data: bytes,
    *,
    source: str | os.PathLike[str] | None = None,
    problems: list[VocError] | None = None,
) -> Annotation:
    """Parse VOC XML from bytes; see :func:`parse_voc`. ``source`` names it in errors."""
    where = Path(source) if source is not None else None
    label = str(where) if where is not None else "<bytes>"

    def problem(line: int | None, message: str, kind: str) -> None:
        err = VocError(label, line, message, kind=kind)
        if problems is None:
            raise err
        problems.append(err)

    if not data.strip():
        raise VocError(label, None, "file is empty; re-save it from the annotation tool", kind="malformed")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        line, col = (exc.position if exc.position else (None, None))
        msg = exc.msg or str(exc)
        # lxml's own text ends with "(line N, column M)"; we carry those separately.
        msg = msg.split(", line ")[0]
        raise VocError(
            label, line, f"not well-formed XML: {msg}", kind="malformed", column=col
        ) from None
    except ValueError as exc:  # e.g. unicode strings with encoding declarations
        raise VocError(label, None, f"not well-formed XML: {exc}", kind="malformed") from None

    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise VocError(
            label,
            1,
            "DOCTYPE declarations are refused (they carry entities, a way to read local "
            "files or exhaust memory); remove the <!DOCTYPE ...> line",
            kind="doctype",
        )
    if root.tag != "annotation":
        problem(root.sourceline, f"root element is <{root.tag}>, expected <annotation>", "structure")

    filename = _text(root, "filename")
    if not filename:
        problem(_line(root, "filename"), "missing <filename>; set it to the image file name", "missing")
        filename = ""

    width = height = 0
    depth = 3
    size = root.find("size")
    if size is None:
        problem(root.sourceline, "missing <size>; add <size><width>, <height>, <depth> of the image", "missing")
    else:
        width = _int_field(size, "width", problem)
        height = _int_field(size, "height", problem)
        if size.find("depth") is not None and _text(size, "depth"):
            depth = _int_field(size, "depth", problem)

    objects: list[VocObject] = []
    for obj in root.iterfind("object"):
        parsed = _parse_object(obj, problem)
        if parsed is not None:
            objects.append(parsed)

    return Annotation(
        filename=filename,
        width=width,
        height=height,
        depth=depth,
        objects=tuple(objects),
        folder=_text(root, "folder") or "",
        path=_text(root, "path") or "",
        source=where,
    )


def _parse_object(obj: etree._Element, problem) -> VocObject | None:
    name = _text(obj, "name")
    if not name:
        problem(obj.sourceline, "object without <name>; give it a class name", "missing")
        return None
    # Only direct <bndbox> children count: <part> sub-boxes (VOC person layout) are not objects.
    boxes = obj.findall("bndbox")
    if not boxes:
        problem(obj.sourceline, f"object '{name}' has no <bndbox>; draw its box again", "missing")
        return None
    if len(boxes) > 1:
        problem(
            boxes[1].sourceline,
            f"object '{name}' has {len(boxes)} <bndbox> elements; keep one per object",
            "several-bndbox",
        )
    bb = boxes[0]
    coords = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        el = bb.find(key)
        if el is None or el.text is None or not el.text.strip():
            problem(
                bb.sourceline,
                f"object '{name}': <bndbox> is missing <{key}>; draw its box again",
                "missing",
            )
            return None
        try:
            value = float(el.text.strip())
        except ValueError:
            problem(
                el.sourceline,
                f"object '{name}': <{key}> is '{el.text.strip()}', not a number",
                "bad-number",
            )
            return None
        if not math.isfinite(value):
            problem(el.sourceline, f"object '{name}': <{key}> is {el.text.strip()}, not a finite number", "bad-number")
            return None
        coords.append(value)
    return VocObject(
        name=name,
        box=Box(*coords),
        difficult=_flag(obj, "difficult"),
        truncated=_flag(obj, "truncated"),
        pose=_text(obj, "pose") or "Unspecified",
        line=obj.sourceline,
    )


def _text(parent: etree._Element, tag: str) -> str | None:
    el = parent.find(tag)
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _line(parent: etree._Element, tag: str) -> int | None:
    el = parent.find(tag)
    return (el if el is not None else parent).sourceline


def _int_field(parent: etree._Element, tag: str, problem) -> int:
    el = parent.find(tag)
    text = _text(parent, tag)
    if not text:
        problem((el if el is not None else parent).sourceline, f"<size> is missing <{tag}>", "missing")
        return 0
    try:
        value = float(text)
    except ValueError:
        problem(el.sourceline, f"<{tag}> is '{text}', not a number", "bad-number")
        return 0
    if not math.isfinite(value) or value < 0 or value != int(value):
        problem(el.sourceline, f"<{tag}> is '{text}', not a whole number of pixels", "bad-number")
        return 0
    return int(value)


def _flag(obj: etree._Element, tag: str) -> bool:
    text = _text(obj, tag)
    if not text:
        return False
    try:
        return float(text) != 0
    except ValueError:
        return text.lower() in ("true", "yes")


def _format_number(value: float) -> str:
    # Integers stay integers ("45"), so LabelImg and every VOC reader take the file;
    # other values keep full precision so a round trip is exact.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def annotation_to_xml(ann: Annotation) -> bytes:
    """Serialise an :class:`Annotation` as LabelImg-style VOC XML (UTF-8, no BOM)."""
    root = etree.Element("annotation")
    etree.SubElement(root, "folder").text = ann.folder
    etree.SubElement(root, "filename").text = ann.filename
    etree.SubElement(root, "path").text = ann.path or ann.filename
    source = etree.SubElement(root, "source")
    etree.SubElement(source, "database").text = "Unknown"
    size = etree.SubElement(root, "size")
    etree.SubElement(size, "width").text = str(ann.width)
    etree.SubElement(size, "height").text = str(ann.height)
    etree.SubElement(size, "depth").text = str(ann.depth)
    etree.SubElement(root, "segmented").text = "0"
    for obj in ann.objects:
        el = etree.SubElement(root, "object")
        etree.SubElement(el, "name").text = obj.name
        etree.SubElement(el, "pose").text = obj.pose
        etree.SubElement(el, "truncated").text = str(int(obj.truncated))
        etree.SubElement(el, "difficult").text = str(int(obj.difficult))
        bb = etree.SubElement(el, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            etree.SubElement(bb, key).text = _format_number(value)
    return etree.tostring(root, pretty_print=True, encoding="utf-8")


def write_voc(ann: Annotation, path: str | os.PathLike[str]) -> None:
    """Write ``ann`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(annotation_to_xml(ann))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
