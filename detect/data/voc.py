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
out of the record, and parsing goes on as far as the document allows. Each error has a
``kind`` and the ``element`` it is about, and the records keep what a checker needs to
report and repair a file (raw coordinate text, lines, encoding, BOM) in fields that take no
part in equality. :func:`parse_xml_tree` is the safe parse itself, for tools that edit a
file in place.

It imports only :mod:`detect.common.errors` and :mod:`detect.common.files` from the rest of the project.

One module of ~540 lines: the parser and the writer of one format, kept together so what is
read and what is written cannot drift apart.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple

from lxml import etree

from detect.common.errors import DetectError, show
from detect.common.files import read_regular, write_atomic

__all__ = [
    "Annotation",
    "Box",
    "VocError",
    "VocObject",
    "annotation_to_xml",
    "detect_encoding",
    "format_number",
    "parse_voc",
    "parse_voc_bytes",
    "parse_xml_tree",
    "write_voc",
]


class VocError(DetectError):
    """A problem in one VOC file: ``path:line: message``.

    Attributes:
        path: the XML file (or ``"<bytes>"`` when parsed from memory).
        line: 1-based XML line of the offending element, or None when not known.
        column: 1-based column where the XML parser reports one (well-formedness errors).
        kind: a short stable tag for the kind of problem (``"unreadable"``, ``"malformed"``,
            ``"doctype"``, ``"structure"``, ``"missing"``, ``"bad-number"``,
            ``"several-bndbox"``), for tools that group problems; the message is for people.
        element: the element the problem is about (``"filename"``, ``"size"``, ``"width"``,
            ``"name"``, ``"bndbox"``, ``"xmin"``, ...), or None for the whole document.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        message: str,
        *,
        kind: str = "invalid",
        column: int | None = None,
        element: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.kind = kind
        self.message = message
        self.element = element
        where = show(self.path) if line is None else f"{show(self.path)}:{line}"
        super().__init__(f"{show(where)}: {message}")


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
    """One ``<object>``: a class name and a box. ``line`` is where it stands in the XML.

    The fields after ``line`` describe how the object was written and take no part in
    equality: ``index`` is its 0-based position among the file's ``<object>`` elements
    (broken ones included, so it names the element even when others were left out),
    ``raw_box`` the coordinate texts as written (``"45.5"``, ``"1e3"``) and ``box_line``
    the line of ``<bndbox>``.
    """

    name: str
    box: Box
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"
    line: int | None = field(default=None, compare=False)
    index: int | None = field(default=None, compare=False)
    raw_box: tuple[str, str, str, str] | None = field(default=None, compare=False)
    box_line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Annotation:
    """One VOC file: the image it describes and its objects.

    ``width``/``height``/``depth`` are what ``<size>`` says (0 where the file says 0; the
    checker compares them with the real image). ``source`` is the XML file the record came
    from and does not take part in equality, nor do the fields after it, which describe
    how the file was written: ``encoding`` (``"UTF-8"``, ``"ISO-8859-1"``, ``"UTF-16"``...),
    ``has_bom`` (a byte-order mark precedes the XML), ``lines`` (1-based line of
    ``"annotation"`` and of ``"filename"``, ``"path"``, ``"size"`` where present) and ``object_elements`` (how many ``<object>`` elements the file has, broken
    ones included).
    """

    filename: str
    width: int
    height: int
    depth: int = 3
    objects: tuple[VocObject, ...] = ()
    folder: str = ""
    path: str = ""
    source: Path | None = field(default=None, compare=False)
    encoding: str = field(default="UTF-8", compare=False)
    has_bom: bool = field(default=False, compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)
    object_elements: int = field(default=0, compare=False)


_PARSER_OPTIONS = dict(
    resolve_entities=False,
    load_dtd=False,
    no_network=True,
    dtd_validation=False,
    huge_tree=False,
    remove_pis=True,
)

_BOMS = (
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)

# lxml's message ends with "line N, column M"; that position is carried separately.
_POSITION_SUFFIX = re.compile(r",? line \d+, column \d+\s*$")


def _parser(*, keep_comments: bool = False) -> etree.XMLParser:
    # A fresh parser per document: lxml parsers keep error logs and are not thread-safe.
    return etree.XMLParser(remove_comments=not keep_comments, **_PARSER_OPTIONS)


def detect_encoding(data: bytes, declared: str | None = None) -> tuple[str, bool]:
    """``(encoding, has_bom)`` of an XML document: the byte-order mark wins, then the
    declaration (``declared``, as lxml reports it), then XML's default, UTF-8."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, True
    return (declared or "UTF-8").upper(), False


def parse_xml_tree(
    data: bytes, *, source: str | os.PathLike[str] | None = None, keep_comments: bool = False
) -> etree._Element:
    """Parse bytes into an lxml root element with the safe parser, refusing a DOCTYPE.

    This is the single place XML is parsed; :func:`parse_voc_bytes` builds on it, and tools
    that edit a file in place (the checker's fixes) use it with ``keep_comments=True`` so
    a rewrite keeps the comments.

    Raises:
        VocError: empty input (kind ``"malformed"``), not well-formed XML (``"malformed"``,
            with line and column), or a DOCTYPE (``"doctype"``).
    """
    label = str(source) if source is not None else "<bytes>"
    if not data.strip():
        raise VocError(label, None, "file is empty; re-save it from the annotation tool", kind="malformed")
    doctype = _find_doctype(data)
    if doctype is not None:
        # Refused before parsing: libxml2 is never asked to read an internal subset.
        raise VocError(label, doctype, _DOCTYPE_MESSAGE, kind="doctype", element="DOCTYPE")
    try:
        root = etree.fromstring(data, parser=_parser(keep_comments=keep_comments))
    except etree.XMLSyntaxError as exc:
        line, col = (exc.position if exc.position else (None, None))
        msg = _POSITION_SUFFIX.sub("", exc.msg or str(exc)).strip() or "syntax error"
        if "XML_PARSE_HUGE" in msg or "huge" in msg.lower():
            # libxml2's wording ("use XML_PARSE_HUGE option") names a switch users cannot reach.
            raise VocError(
                label,
                line or None,
                "a text or name in the file is longer than 10 MB, which no annotation holds: the file is "
                "damaged or not an annotation; re-save it from the annotation tool",
                kind="malformed",
                column=col or None,
            ) from None
        raise VocError(
            label,
            line or None,
            f"not well-formed XML: {msg}; open the file in a text editor and repair it there, "
            "or re-save it from the annotation tool",
            kind="malformed",
            column=col or None,
        ) from None
    except ValueError as exc:  # e.g. unicode strings with encoding declarations
        raise VocError(label, None, f"not well-formed XML: {show(exc)}", kind="malformed") from None
    if root is None:
        raise VocError(label, None, "file holds no XML element; re-save it from the annotation tool", kind="malformed")

    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # spelled in a way the scan missed
        raise VocError(label, 1, _DOCTYPE_MESSAGE, kind="doctype", element="DOCTYPE")
    return root


_DOCTYPE_MESSAGE = (
    "DOCTYPE declarations are refused (they carry entities, a way to read local files or "
    "exhaust memory); remove the <!DOCTYPE ...> line"
)
_DOCTYPE_SPELLINGS = tuple(
    ("<!DOCTYPE".encode(codec), codec, "\n".encode(codec)) for codec in ("utf-8", "utf-16-le", "utf-16-be")
)


def _find_doctype(data: bytes) -> int | None:
    """The 1-based line of a ``<!DOCTYPE`` in the document, or None."""
    for needle, _, newline in _DOCTYPE_SPELLINGS:
        at = data.find(needle)
        if at >= 0:
            return data.count(newline, 0, at) + 1
    return None


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
        data = read_regular(path)
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

    def problem(line: int | None, message: str, kind: str, element: str | None = None) -> None:
        err = VocError(label, line, message, kind=kind, element=element)
        if problems is None:
            raise err
        problems.append(err)

    root = parse_xml_tree(data, source=label)
    encoding, has_bom = detect_encoding(data, root.getroottree().docinfo.encoding)
    first, object_elements = _children(root, "object")
    lines: dict[str, int] = {"annotation": root.sourceline or 1}
    for key in ("filename", "path", "size"):
        el = first.get(key)
        if el is not None and el.sourceline:
            lines[key] = el.sourceline

    if root.tag != "annotation":
        problem(root.sourceline, f"root element is <{show(root.tag)}>, expected <annotation>", "structure", "annotation")

    filename = _stripped(first.get("filename"))
    if not filename:
        problem(
            lines.get("filename", root.sourceline),
            "missing <filename>; set it to the image file name (e.g. <filename>img_001.jpg</filename>)",
            "missing",
            "filename",
        )
        filename = ""

    width = height = 0
    depth = 3
    size = first.get("size")
    if size is None:
        problem(
            root.sourceline,
            "missing <size>; add <size><width>, <height>, <depth> of the image (check_xml --fix fills it in from the image)",
            "missing",
            "size",
        )
    else:
        dims, _ = _children(size)
        width = _int_field(size, dims, "width", problem)
        height = _int_field(size, dims, "height", problem)
        if _stripped(dims.get("depth")):
            depth = _int_field(size, dims, "depth", problem)

    objects: list[VocObject] = []
    for index, obj in enumerate(object_elements):
        parsed = _parse_object(obj, index, problem)
        if parsed is not None:
            objects.append(parsed)

    return Annotation(
        filename=filename,
        width=width,
        height=height,
        depth=depth,
        objects=tuple(objects),
        folder=_stripped(first.get("folder")) or "",
        path=_stripped(first.get("path")) or "",
        source=where,
        encoding=encoding,
        has_bom=has_bom,
        lines=lines,
        object_elements=len(object_elements),
    )


def _children(el: etree._Element, repeated: str | None = None) -> tuple[dict[str, etree._Element], list]:
    """The first child element of each tag, and every child tagged ``repeated``.

    One pass over the children instead of a ``find`` per field: this parser reads
    thousands of files before every training run.
    """
    first: dict[str, etree._Element] = {}
    every: list[etree._Element] = []
    for child in el:
        tag = child.tag
        if not isinstance(tag, str):  # comments and processing instructions
            continue
        if tag == repeated:
            every.append(child)
        if tag not in first:
            first[tag] = child
    return first, every


def _stripped(el: etree._Element | None) -> str | None:
    """The element's stripped text: None without an element, ``""`` when it is empty."""
    if el is None:
        return None
    text = el.text
    return text.strip() if text is not None else ""


def _parse_object(obj: etree._Element, index: int, problem) -> VocObject | None:
    fields, boxes = _children(obj, "bndbox")
    name = _stripped(fields.get("name"))
    if not name:
        problem(obj.sourceline, "object without <name>; give it a class name", "missing", "name")
        return None
    # Only direct <bndbox> children count: <part> sub-boxes (VOC person layout) are not objects.
    if not boxes:
        problem(obj.sourceline, f"object '{show(name)}' has no <bndbox>; draw its box again", "missing", "bndbox")
        return None
    if len(boxes) > 1:
        problem(
            boxes[1].sourceline,
            f"object '{show(name)}' has {len(boxes)} <bndbox> elements; keep one per object "
            "(split it into several objects if each box is a separate thing)",
            "several-bndbox",
            "bndbox",
        )
    bb = boxes[0]
    corners, _ = _children(bb)
    coords = []
    raw = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        el = corners.get(key)
        text = _stripped(el)
        if not text:
            problem(
                (el if el is not None else bb).sourceline,
                f"object '{show(name)}': <bndbox> is missing <{key}>; draw its box again",
                "missing",
                key,
            )
            return None
        try:
            value = float(text)
        except ValueError:
            problem(
                el.sourceline,
                f"object '{show(name)}': <{key}> is '{_clip(text)}', not a number; write the pixel coordinate",
                "bad-number",
                key,
            )
            return None
        if not math.isfinite(value):
            problem(
                el.sourceline,
                f"object '{show(name)}': <{key}> is {_clip(text)}, not a finite number; write the pixel coordinate",
                "bad-number",
                key,
            )
            return None
        coords.append(value)
        raw.append(text)
    return VocObject(
        name=name,
        box=Box(*coords),
        difficult=_flag(_stripped(fields.get("difficult"))),
        truncated=_flag(_stripped(fields.get("truncated"))),
        pose=_stripped(fields.get("pose")) or "Unspecified",
        line=obj.sourceline,
        index=index,
        raw_box=tuple(raw),
        box_line=bb.sourceline,
    )


def _clip(text: str, limit: int = 40) -> str:
    # Fuzzed or damaged files can hold megabytes in one element; messages stay one line.
    text = show(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_field(parent: etree._Element, fields: dict[str, etree._Element], tag: str, problem) -> int:
    el = fields.get(tag)
    text = _stripped(el)
    if not text:
        problem(
            (el if el is not None else parent).sourceline,
            f"<size> is missing <{tag}>; write the image's {tag} in pixels (check_xml --fix fills it in from the image)",
            "missing",
            tag,
        )
        return 0
    try:
        value = float(text)
    except ValueError:
        problem(el.sourceline, f"<{tag}> is '{_clip(text)}', not a number; write the image's {tag} in pixels", "bad-number", tag)
        return 0
    if not math.isfinite(value) or value < 0 or value != int(value):
        problem(
            el.sourceline,
            f"<{tag}> is '{_clip(text)}', not a whole number of pixels; write the image's {tag} in pixels",
            "bad-number",
            tag,
        )
        return 0
    return int(value)


def _flag(text: str | None) -> bool:
    if not text:
        return False
    try:
        return float(text) != 0
    except ValueError:
        return text.lower() in ("true", "yes")


def format_number(value: float) -> str:
    """A coordinate as VOC text: integers stay integers (``"45"``), so LabelImg and every
    VOC reader take the file; other values keep full precision, so a round trip is exact."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def annotation_to_xml(ann: Annotation) -> bytes:
    """Serialise an :class:`Annotation` as LabelImg-style VOC XML (UTF-8, no BOM)."""
    root = etree.Element("annotation")
    etree.SubElement(root, "folder").text = ann.folder
    etree.SubElement(root, "filename").text = ann.filename
    # Written as given (empty when unknown), so that parse(write(x)) == x holds.
    etree.SubElement(root, "path").text = ann.path
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
            etree.SubElement(bb, key).text = format_number(value)
    return etree.tostring(root, pretty_print=True, encoding="utf-8")


def write_voc(ann: Annotation, path: str | os.PathLike[str]) -> None:
    """Write ``ann`` to ``path`` atomically (:func:`detect.common.files.write_atomic`)."""
    write_atomic(path, annotation_to_xml(ann))
