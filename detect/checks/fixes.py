"""Fixes: turning fixable findings into new XML contents, and writing them safely.

Some findings carry a :class:`~detect.checks.findings.Fix`. :func:`plan_fixes` turns the
fixes of a report into new file contents (the XML is edited in place with lxml, so
everything else in it, comments and unknown elements included, is kept) and
:func:`apply_fixes` writes them, keeping a ``.bak`` copy of each original (it never writes
through a link, never outside the dataset folder, never over a backup). Safe fixes
re-encode as UTF-8 without BOM, fill a missing or 0x0 ``<size>`` from the real image and
drop byte-identical duplicate objects, and map the boxes of a photo annotated on its stored
pixels by an EXIF-unaware tool into the upright frame (VOC409); unsafe fixes add clamping boxes into the image,
rounding decimal coordinates and renaming a class to its unambiguous closest match.
Images are never touched.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lxml import etree

from detect.checks.findings import CheckReport, Finding
from detect.common.errors import DetectError, show
from detect.common.files import read_regular, write_atomic, write_new
from detect.data.images import exif_box
from detect.data.voc import VocError, detect_encoding, format_number, parse_xml_tree

log = logging.getLogger(__name__)

__all__ = ["Applied", "FilePlan", "FixRefused", "apply_fixes", "plan_fixes"]


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
                fromfile=f"a/{show(self.path)}",
                tofile=f"b/{show(self.path)}",
            )
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        if any(f.fix and f.fix.action == "reencode" for f in self.findings):
            was = f"{self.encoding} with a byte-order mark" if self.had_bom else self.encoding
            text = f"# {show(self.path)}: re-encoded from {was} to UTF-8 without BOM\n" + text
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


def _to_upright(root, objects, orientation: int, width: int, height: int, up_w: int, up_h: int, depth: int) -> bool:
    """Map every box from the stored ``width x height`` pixels into the upright frame of
    ``orientation`` and set ``<size>`` to it (VOC409). Only while ``<size>`` still says the
    stored frame (the file may have changed since it was checked)."""
    size = root.find("size")
    try:
        now = (int(size.findtext("width").strip()), int(size.findtext("height").strip()))
    except (AttributeError, ValueError):
        return False
    if now != (width, height):
        return False
    for obj in objects:
        bb = obj.find("bndbox")
        if bb is None:
            continue
        els = [bb.find(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            box = [float(el.text.strip()) for el in els]
        except (AttributeError, TypeError, ValueError):
            continue  # a box the checker reports on its own; left as it is
        if not all(math.isfinite(v) for v in box):
            continue
        for el, value in zip(els, exif_box(box, width, height, orientation)):
            el.text = format_number(value)
    _set_size(root, up_w, up_h, depth)
    return True


def _plan_file(path: Path, findings: list[Finding]) -> FilePlan | None:
    try:
        before = read_regular(path)
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
        obj = objects[args[0]] if action not in ("reencode", "fill-size", "exif-upright") and args[0] < len(objects) else None
        if action == "reencode":
            done.append(f)
        elif action == "exif-upright":
            if _to_upright(root, objects, *args):
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
    if done:
        # Edits can make two objects identical (rounding 10.4 and 10 both to 10): those copies
        # go now, as the safe fix would drop them on the next run; one run leaves nothing over.
        seen: set[bytes] = set()
        for index, el in enumerate(objects):
            key = etree.tostring(el, with_tail=False)
            if index not in drops and key in seen:
                drops.add(index)
            seen.add(key)
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


class FixRefused(DetectError):
    """A fix that is not written, to keep the dataset safe; the message says why and what to do."""


@dataclass
class Applied:
    """What :func:`apply_fixes` did: the files rewritten, each with its backup, and the files
    it refused to touch, each with the reason."""

    written: list[Path] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    refused: list[FixRefused] = field(default_factory=list)


def apply_fixes(plans: Iterable[FilePlan], *, root: Path | None = None) -> Applied:
    """Write each plan, keeping a backup of the file as it was.

    What the fix writer will and will not touch:

    * it rewrites only the XML files of the plans, through a fresh temporary file in the
      file's folder and an atomic rename: no existing file or link is ever written through;
    * it refuses an XML that is a symbolic link, that lies outside ``root`` (the dataset
      folder) once links are resolved, or that changed since it was checked;
    * the backup of ``x.xml`` is ``x.xml.bak``, the file as it was before its *first* fix;
      an existing backup is never replaced: later runs keep theirs as ``x.xml.bak2``,
      ``x.xml.bak3``... A backup name taken by anything but a regular file (a link, a
      folder) refuses the fix;
    * images are never touched.
    """
    done = Applied()
    base = os.path.realpath(root) if root is not None else None
    for plan in plans:
        try:
            backup = _write_fix(plan, base)
        except FixRefused as exc:
            log.warning("%s", exc)
            done.refused.append(exc)
            continue
        log.info("fixed %s (%d findings; the file before this fix is kept as %s)",
                 plan.path, len(plan.findings), backup.name)
        done.written.append(plan.path)
        done.backups.append(backup)
    return done


def _write_fix(plan: FilePlan, base: str | None) -> Path:
    path = plan.path
    if path.is_symlink():
        raise FixRefused(f"{show(path)}: not fixed: it is a symbolic link (to {show(os.readlink(path))}); fix the file it "
                         "points to where it lies")
    if base is not None and os.path.commonpath([base, os.path.realpath(path.parent)]) != base:
        raise FixRefused(f"{show(path)}: not fixed: its folder leads outside the dataset folder {show(base)}")
    try:
        current = read_regular(path)
    except OSError as exc:
        raise FixRefused(f"{show(path)}: not fixed: cannot read it ({exc.strerror or exc})") from None
    if current != plan.before:
        raise FixRefused(f"{show(path)}: not fixed: it changed since it was checked; run the checker again")
    backup = _backup_path(path)
    try:
        write_new(backup, plan.before)
        write_atomic(path, plan.after)
    except FileExistsError:  # taken between the look and the write: another process
        raise FixRefused(f"{show(path)}: not fixed: {show(backup.name)} appeared while fixing; run again") from None
    except OSError as exc:
        raise FixRefused(f"{show(path)}: not fixed: cannot write ({exc.strerror or exc}); the file is unchanged") from None
    return backup


def _backup_path(path: Path) -> Path:
    """``x.xml.bak``, or the first free ``x.xml.bakN``; a name taken by anything but a regular
    file (a link a dataset could carry to point a backup elsewhere) refuses the fix."""
    n = 1
    while True:
        candidate = path.with_name(f"{path.name}.bak{n if n > 1 else ''}")
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            return candidate
        if not stat.S_ISREG(mode):
            raise FixRefused(
                f"{show(path)}: not fixed: {show(candidate.name)} exists and is not a regular file (a link or folder); "
                "remove it, then fix again"
            )
        n += 1
