"""Track ground truth in the MOT format, as CVAT exports a video task ("MOT 1.1").

A labelled video of the line is a folder (or CVAT's zip of it)::

    gt/gt.txt        one row per box per frame
    gt/labels.txt    the class names, one a line (class_id 1 is the first line)
    seqinfo.ini      optional (MOT's sequence file): frameRate, seqLength, imWidth, imHeight

Each row of ``gt.txt`` (comma-separated, no header)::

    frame_id, track_id, x, y, w, h, not_ignored, class_id, visibility

``frame_id`` counts from 1 (the video's first frame); ``track_id`` is the object (one item on
the belt, the same in every frame it is in); ``x, y`` the box's top-left corner and ``w, h``
its size, in pixels; ``not_ignored`` 1 for a box to score, 0 for one to leave out; ``class_id``
the line of ``labels.txt``; ``visibility`` 0..1 (not used). Rows with 7 fields (no class,
no visibility: the MOT Challenge's own files) are read with no class. This is what CVAT
writes for a video annotated with tracks (Export task dataset, "MOT 1.1") and what Datumaro
reads and writes as ``mot_seq_gt``; :func:`write_mot` writes the same, and
:mod:`detect.demo.conveyor` writes it beside its video.

Torch-free (the standard library and numpy).
"""

from __future__ import annotations

import configparser
import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.common.files import write_atomic

__all__ = ["MotTrack", "MotTruth", "read_mot", "write_mot"]


@dataclass
class MotTrack:
    """One object over the frames it is in.

    Attributes:
        id: its ``track_id``; label: its class (the most frequent over its rows; None when the
            file gives none).
        frames: ``(F,)`` 0-based frame indexes (``frame_id - 1``), ascending.
        boxes: ``(F, 4)`` xmin/ymin/xmax/ymax in pixels, one per frame.
    """

    id: int
    label: str | None
    frames: np.ndarray
    boxes: np.ndarray

    @property
    def first(self) -> int:
        """The frame it enters the view (0-based)."""
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    def box_at(self, frame: int) -> np.ndarray | None:
        """Its box in ``frame`` (0-based), or None when it is not in view then."""
        i = int(np.searchsorted(self.frames, frame))
        return self.boxes[i] if i < len(self.frames) and self.frames[i] == frame else None


@dataclass
class MotTruth:
    """A labelled video: its tracks (ignored boxes left out), classes and, from
    ``seqinfo.ini``, its frame rate and size when given."""

    tracks: list[MotTrack]
    labels: list[str]
    fps: float | None = None
    size: tuple[int, int] | None = None
    frames: int | None = None
    source: str = ""
    ignored: int = 0  # rows with not_ignored 0


def _files(path: Path) -> tuple[str, str | None, str | None, str]:
    """The text of gt.txt, labels.txt and seqinfo.ini (None when absent) under ``path``: a
    folder holding gt/, the gt/ folder itself, a gt.txt file, or a zip of any of these."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = {n.replace("\\", "/"): n for n in z.namelist()}
            gt = [n for n in names if n == "gt.txt" or n.endswith("/gt.txt")]
            if not gt:
                raise UsageError(f"{show(path)}: no gt/gt.txt in this zip; export the task from CVAT as "
                                 "'MOT 1.1' (a zip with gt/gt.txt and gt/labels.txt)")
            base = min(gt, key=len)[:-len("gt.txt")]
            read = lambda n: z.read(names[n]).decode("utf-8-sig") if n in names else None  # noqa: E731
            seq = base[:-3] + "seqinfo.ini" if base.endswith("gt/") else base + "seqinfo.ini"
            return read(min(gt, key=len)), read(base + "labels.txt"), read(seq), f"{path}:{min(gt, key=len)}"
    if path.is_dir():
        gt = path / "gt" / "gt.txt" if (path / "gt" / "gt.txt").is_file() else path / "gt.txt"
    else:
        gt = path
    if not gt.is_file():
        raise UsageError(f"{show(path)}: no gt/gt.txt here; give the folder of a MOT 1.1 export (CVAT: Export "
                         "task dataset, MOT 1.1) or its zip")
    folder = gt.parent
    labels = folder / "labels.txt"
    seq = (folder.parent if folder.name == "gt" else folder) / "seqinfo.ini"
    text = lambda p: p.read_text(encoding="utf-8-sig") if p.is_file() else None  # noqa: E731
    return gt.read_text(encoding="utf-8-sig"), text(labels), text(seq), str(gt)


def read_mot(path: str | os.PathLike[str]) -> MotTruth:
    """Read a MOT 1.1 ground truth (see the module docstring).

    Raises:
        UsageError: no gt.txt, or a row that is not a MOT row (named by file and line).
    """
    gt, labels_text, seq_text, where = _files(Path(path))
    labels = [s.strip() for s in (labels_text or "").splitlines() if s.strip()]
    rows: dict[int, list[tuple[int, list[float], int | None]]] = {}
    ignored = 0
    for n, row in enumerate(csv.reader(io.StringIO(gt)), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            frame, track = int(float(row[0])), int(float(row[1]))
            x, y, w, h = (float(v) for v in row[2:6])
            keep = float(row[6]) if len(row) > 6 and row[6].strip() else 1.0
            cls = int(float(row[7])) if len(row) > 7 and row[7].strip() else None
        except (ValueError, IndexError):
            raise UsageError(f"{show(where)}, line {n}: {show(','.join(row))[:80]} is not a MOT row; each row is "
                             "frame_id,track_id,x,y,w,h,not_ignored,class_id,visibility (CVAT's MOT 1.1)") from None
        if frame < 1 or w <= 0 or h <= 0 or not all(np.isfinite([x, y, w, h])):
            raise UsageError(f"{show(where)}, line {n}: frame_id counts from 1 and a box needs a positive width and "
                             f"height; this row has frame {frame}, size {w:g}x{h:g}")
        if cls is not None and cls > len(labels) and labels:
            raise UsageError(f"{show(where)}, line {n}: class_id {cls}, but labels.txt names {len(labels)} classes")
        if keep == 0:
            ignored += 1
            continue
        rows.setdefault(track, []).append((frame - 1, [x, y, x + w, y + h], cls))
    tracks = []
    for tid in sorted(rows):
        r = sorted(rows[tid], key=lambda t: t[0])
        classes = [c for _, _, c in r if c is not None and c >= 1]
        label = None
        if classes:
            top = max(set(classes), key=classes.count)
            label = labels[top - 1] if top <= len(labels) else str(top)
        tracks.append(MotTrack(tid, label, np.array([f for f, _, _ in r], np.int64),
                               np.array([b for _, b, _ in r], np.float64).reshape(-1, 4)))
    truth = MotTruth(tracks, labels, source=where, ignored=ignored)
    if seq_text:
        cp = configparser.ConfigParser()
        try:
            cp.read_string(seq_text)
            s = cp["Sequence"]
            truth.fps = float(s["frameRate"]) if "frameRate" in s else None
            if "imWidth" in s and "imHeight" in s:
                truth.size = (int(s["imWidth"]), int(s["imHeight"]))
            truth.frames = int(s["seqLength"]) if "seqLength" in s else None
        except (configparser.Error, KeyError, ValueError):
            pass  # seqinfo.ini is optional; a broken one is as good as none
    return truth


def write_mot(folder: str | os.PathLike[str], tracks: Sequence[tuple[int, int, str, Sequence[float]]],
              labels: Sequence[str], *, fps: float | None = None, size: tuple[int, int] | None = None,
              frames: int | None = None, name: str = "video") -> Path:
    """Write ``folder/gt/gt.txt`` and ``folder/gt/labels.txt`` (and ``folder/seqinfo.ini`` when
    ``fps`` is given), each atomically; return ``folder``.

    ``tracks``: rows ``(frame index from 0, track id, class name, [xmin, ymin, xmax, ymax])``.
    """
    folder = Path(folder)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    index = {c: i + 1 for i, c in enumerate(labels)}
    lines = []
    for frame, tid, label, box in sorted(tracks, key=lambda r: (r[0], r[1])):
        x0, y0, x1, y1 = (float(v) for v in box)
        lines.append(f"{frame + 1},{tid},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},1,{index[label]},1.0")
    write_atomic(folder / "gt" / "gt.txt", "\n".join(lines) + ("\n" if lines else ""))
    write_atomic(folder / "gt" / "labels.txt", "\n".join(labels) + "\n")
    if fps is not None:
        seq = ["[Sequence]", f"name={name}", "imDir=img1", f"frameRate={fps:g}", f"seqLength={frames or 0}",
               f"imWidth={size[0] if size else 0}", f"imHeight={size[1] if size else 0}", "imExt=.jpg"]
        write_atomic(folder / "seqinfo.ini", "\n".join(seq) + "\n")
    return folder
