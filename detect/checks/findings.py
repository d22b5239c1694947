"""What the annotation checker reports: check codes, findings, and the report of a dataset.

:data:`CODES` lists every code with its severity and a one-line title:

======  ===============================================================
code    problem
======  ===============================================================
VOC1xx  structure of one XML file
VOC2xx  geometry of boxes, duplicate objects
VOC3xx  class names
VOC4xx  the XML against its image
VOC5xx  dataset level: duplicated images, split leakage, stray files
VOC6xx  anchor fit: can the model's anchors reach the boxes
======  ===============================================================

Errors make a file unusable for training (:attr:`CheckReport.files_with_errors`); warnings
are likely mistakes; infos are facts worth knowing. A :class:`Finding` formats as one
flake8-style line, ``path:line:col: CODE severity message``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detect.common.errors import show
from detect.data.layout import DatasetFiles
from detect.data.voc import format_number

__all__ = [
    "CODES",
    "SEVERITIES",
    "AnchorFit",
    "CheckReport",
    "Finding",
    "Fix",
    "box_text",
    "finding",
    "format_finding",
    "github_line",
    "num",
    "plural",
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
    "VOC406": ("warning", "EXIF orientations whose frame <size> cannot tell (once per dataset)"),
    "VOC407": ("error", "image unreadable"),
    "VOC408": ("error", "image truncated or corrupt (--deep)"),
    "VOC409": ("error", "boxes on the stored pixels of a photo shown rotated (EXIF-unaware tool)"),
    "VOC501": ("warning", "same image content under two names"),
    "VOC502": ("error", "same image in two splits (leakage)"),
    "VOC503": ("warning", "stray file"),
    "VOC504": ("warning", "split list names an id with no XML"),
    "VOC601": ("info", "anchor fit (best possible recall)"),
    "VOC602": ("info", "box no anchor reaches at IoU >= 0.5"),
    "VOC603": ("warning", "poor anchor coverage, with suggested anchors"),
}

POOR_FIT_05 = 0.95
POOR_FIT_07 = 0.5
ADVICE_MIN_BOXES = 30  # fewer boxes say too little about a dataset to re-shape its anchors


@dataclass(frozen=True)
class Fix:
    """A repair :func:`plan_fixes` can make: ``level`` is ``"safe"`` or ``"unsafe"``,
    ``action`` one of ``reencode``, ``fill-size``, ``drop-duplicate``, ``clamp``,
    ``round``, ``rename``, ``exif-upright``, and ``args`` its parameters."""

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
    where = show(f.path)
    if f.line is not None:
        where += f":{f.line}:{f.col or 1}"
    # show(): names from the files are in the message, and whoever wrote a file controls them.
    text = f"{where}: {f.code} {f.severity} {show(f.message)}"
    if f.fix is not None:
        text += " [--fix]" if f.fix.level == "safe" else " [--unsafe-fixes]"
    return text


def _github_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def github_line(f: Finding) -> str:
    """The finding as a GitHub Actions workflow command (``--format github``): an annotation
    on the file and line in the pull request."""
    kind = {"error": "error", "warning": "warning", "info": "notice"}[f.severity]
    props = [f"file={_github_escape(show(f.path), prop=True)}"]
    if f.line is not None:
        props.append(f"line={f.line}")
        if f.col is not None:
            props.append(f"col={f.col}")
    props.append(f"title={f.code}")
    return f"::{kind} {','.join(props)}::{_github_escape(show(f.message))}"


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
    exif: str = "apply"

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
            "exif": self.exif,
            "seconds": round(self.elapsed, 2),
        }

    def summary_lines(self) -> list[str]:
        s = self.summary()
        lines = [
            f"checked {s['data']} ({s['layout']} layout): {plural(s['xml_files'], 'XML file')}, "
            f"{plural(s['images'], 'image')} ({s['images_used']} with an XML) in {self.elapsed:.1f} s",
        ]
        if self.class_counts:
            per_class = ", ".join(f"{show(name)} {n}" for name, n in self.class_counts.most_common())
            lines.append(f"objects: {s['objects']} in {plural(len(self.class_counts), 'class')}: {per_class}")
        else:
            lines.append("objects: 0")
        if self.exif == "ignore":
            lines.append("EXIF orientation: ignored (--exif ignore): boxes are checked against the stored pixels")
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


def finding(code: str, path: Path, line: int | None, message: str, *, col=None, fix=None, severity=None) -> Finding:
    """A :class:`Finding` of ``code`` with the code's severity (unless ``severity`` is given)."""
    return Finding(Path(path), line, col, code, severity or CODES[code][0], message, fix)


def num(value: float) -> str:
    """A coordinate for a message: VOC text, or 3 significant digits when huge."""
    return format_number(value) if abs(value) < 1e15 else f"{value:.3g}"


def box_text(box) -> str:
    """``xmin,ymin,xmax,ymax`` for a message."""
    return ",".join(num(v) for v in box)

