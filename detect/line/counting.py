"""Items, not frames: one decision per tracked object, counted once at a counting line.

:class:`ItemCounter` takes the tracks of each frame (:mod:`detect.line.tracking`) and

* **votes** each track's class over all the frames it has been seen in so far: a class gets
  a frame's score when the detector gave it at or above its ``--conf`` in that frame (the
  sum is a score-weighted vote). The item is **defective** when a defect class was seen at
  its ``--conf`` as the frame's best class (an intact and a defect box often overlap on one
  object: the better score is the frame's class) in at least ``defect_frames`` frames
  (``--defect-frames``, default 2) *and* in at least ``defect_share`` of the frames where any
  class was seen at its ``--conf`` (``--defect-share``, default :data:`DEFECT_SHARE`: on a long
  track a few stray defect frames are noise, not a defect); its class is then the defect
  class with the most votes, else the non-defect class with the
  most votes (the intact counterpart of a defect class, ``Lata`` for ``Lata_defectuosa``,
  when only defect frames were seen). One bad frame neither hides nor invents a defect.
* **counts** a track once, the first time its box centre crosses the counting line (the
  segment, not the infinite line) between two frames it was seen in (its first frame, seen
  before the tracker confirmed it, included); the decision is the
  vote at that moment. The direction is ``forward`` when the move goes along ``--belt``,
  else ``backward``. With no line (``--count-line none``) a track is counted when it ends
  (lost for the tracker's buffer, or the source ends) having been seen in at least
  ``min_frames`` frames.

A track still in view when the source ends, not yet across the line, is not counted (it
has not passed); with no line it is counted if it has ``min_frames``.

**The reject gate** (``gate_delay``, ``--gate-delay``: seconds from the counting line to the
gate). Each item's event then says by when it must be acted on (``act_by``: the capture time of
the frame it crossed in, plus the delay), how much of that was left when it was decided
(``gate_in_ms``; negative: too late) and ``late``. An item the detector loses just before the
line is not left out: while a lost track is kept, its box moves with the belt (the tracker's
prediction), and when that predicted box crosses the line the item is decided on the frames it
was seen in, with ``seen_at_line`` false in its event. So every item that reaches the gate gets
a decision, and one that could not be made in time says so.

Memory is bounded by the tracks alive: a track's vote (and its best crop, when crops are
kept) is dropped when the track ends. Torch-free (numpy).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from detect.common.errors import UsageError
from detect.line.belt import BELTS
from detect.line.tracking import Track

__all__ = ["BELTS", "DEFECT_SHARE", "TRACK_CONF", "CountingLine", "Item", "ItemCounter", "intact_counterpart",
           "parse_count_line"]

# The share of an item's frames a defect class must be seen in: chosen on the rendered conveyor
# with the demo model (docs/performance.md, "Tracking and counting").
DEFECT_SHARE = 0.3
# The score threshold under --track when none is given: a track's frames vote, so one frame's
# weak detection need not be thrown away; at 0.5 the demo model's belt run missed 6 of 20 items
# (docs/performance.md, "Tracking and counting").
TRACK_CONF = 0.3


@dataclass(frozen=True)
class CountingLine:
    """A segment ``(x1, y1, x2, y2)``, in fractions of the frame when ``fractions`` else pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    fractions: bool = True

    def pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The segment in pixels of a ``width x height`` frame.

        Raises:
            UsageError: it has zero length or leaves the frame.
        """
        sx, sy = (width, height) if self.fractions else (1, 1)
        p = (self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)
        if p[0] == p[2] and p[1] == p[3]:
            raise UsageError(f"--count-line {self.spec}: the two ends are the same point; give two different "
                             "points, e.g. --count-line 0.5,0,0.5,1 for a vertical line across the middle")
        if not all(0 <= v <= lim for v, lim in zip(p, (width, height, width, height))):
            raise UsageError(f"--count-line {self.spec}: the line leaves the {width}x{height} frame; give ends "
                             f"inside it (pixels 0..{width} x 0..{height}, or fractions 0..1)")
        return p

    @property
    def spec(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x1, self.y1, self.x2, self.y2))


def default_line(belt: str) -> CountingLine:
    """Across the middle of the frame, perpendicular to the belt."""
    return CountingLine(0.5, 0.0, 0.5, 1.0) if BELTS[belt][0] else CountingLine(0.0, 0.5, 1.0, 0.5)


def parse_count_line(text: str | None, belt: str = "left-right") -> CountingLine | None:
    """``--count-line``: ``x1,y1,x2,y2`` (all in 0..1: fractions of the frame; else pixels),
    ``none`` (count when a track ends), or None/``auto`` (:func:`default_line`).

    Raises:
        UsageError: not four numbers, negative, or zero length.
    """
    if belt not in BELTS:
        raise UsageError(f"--belt {belt}: use one of {', '.join(BELTS)}")
    if text is None or text.strip().lower() in ("", "auto", "middle"):
        return default_line(belt)
    if text.strip().lower() == "none":
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)):
        raise UsageError(f"--count-line {text}: give x1,y1,x2,y2 (fractions of the frame like 0.5,0,0.5,1, "
                         "or pixels like 320,0,320,480), or none")
    if min(values) < 0:
        raise UsageError(f"--count-line {text}: a coordinate is negative, so the line leaves the frame; "
                         "give ends inside the frame")
    line = CountingLine(*values, fractions=max(values) <= 1.0)
    if values[:2] == values[2:]:
        raise UsageError(f"--count-line {text}: the two ends are the same point; give two different points")
    return line


def intact_counterpart(defect: str, classes: Sequence[str], defect_classes: Sequence[str]) -> str | None:
    """The non-defect class a defect class is a kind of: the longest one its name starts with
    (``Lata`` for ``Lata_defectuosa``), or None."""
    fits = [c for c in classes if c not in defect_classes and defect.startswith(c)]
    return max(fits, key=len) if fits else None


@dataclass
class Item:
    """One counted object: what :class:`ItemCounter` decides and the event line says."""

    track_id: int
    label: str
    defect: bool
    best_score: float
    frames: int
    frame: int
    video_time: float
    box: list[float]
    direction: str | None
    source: str
    time: str = ""
    crop: str | None = None
    votes: dict[str, float] = field(default_factory=dict)
    defect_score: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # the verdict stage's fields (defect_probability, ...)
    gate: dict[str, Any] = field(default_factory=dict)  # with a gate delay: act_by, gate_in_ms, late, seen_at_line

    @property
    def source_stem(self) -> str:
        """A file-name-safe short form of the source, for crop names."""
        stem = self.source.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:40] or "source"

    def event(self) -> dict[str, Any]:
        """The JSON object of ``events.jsonl`` (see docs/counting.md#events)."""
        return {
            "time": self.time, "source": self.source, "frame": self.frame, "video_time": round(self.video_time, 3),
            "track_id": self.track_id, "class": self.label, "defect": self.defect,
            "best_score": round(self.best_score, 4), "frames_seen": self.frames,
            "box": [round(v, 1) for v in self.box], "direction": self.direction, "crop": self.crop,
            "defect_score": round(self.defect_score, 4), **self.extra, **self.gate,
        }


@dataclass
class _Vote:
    votes: np.ndarray  # (K + 1,) summed scores at or above --conf
    hits: np.ndarray  # (K + 1,) frames in which the class was the best one at or above its --conf
    frames: int = 0
    seen: int = 0  # frames where some class was at or above its --conf
    best: float = 0.0
    side: float = 0.0  # which side of the line the centre was last seen on (0: not yet)
    side_point: tuple[float, float] | None = None  # where it was seen there
    counted: bool = False
    crop: np.ndarray | None = None
    crop_score: float = -1.0


class ItemCounter:
    """Votes, counts and reports items (see the module docstring).

    Args:
        classes: the model's classes (label ``i`` is ``classes[i - 1]``); defect_classes: the defects.
        thresholds: ``(K + 1,)`` the ``--conf`` threshold per label.
        line: the counting line, or None to count tracks when they end.
        belt: the belt direction (``left-right``, ...), for the direction of a crossing.
        min_frames: with no line, frames a track needs to be counted.
        defect_frames: frames a defect class must be seen in (at its ``--conf``) to flag the item.
        defect_share: and the share of the frames with a class at its ``--conf`` it must be seen in.
        defect_threshold: instead of those two, the item is defective when its defect score (the
            defect classes' share of its votes, the event's ``defect_score``) is at least this
            (``--defect-threshold``, from ``detect.eval --items --max-false-reject``).
        keep_crops: keep each track's best crop, for ``on_item``'s ``crop`` argument.
        on_item: called ``on_item(item, crop)`` for each item when it is counted (``crop`` is
            the best crop so far, RGB, or None); may set ``item.crop``.
        gate_delay: seconds from the counting line to the reject gate (``--gate-delay``): events
            say by when to act, and lost tracks are counted where their predicted box crosses
            the line (see the module docstring); None: no gate.
    """

    def __init__(self, classes: Sequence[str], defect_classes: Sequence[str], thresholds: np.ndarray, *,
                 line: CountingLine | None, belt: str = "left-right", min_frames: int = 3, defect_frames: int = 2,
                 defect_share: float = DEFECT_SHARE, defect_threshold: float | None = None,
                 keep_crops: bool = False, on_item: Callable[[Item, np.ndarray | None], None] | None = None,
                 judge: Callable[[int, str, bool], tuple[str, bool, dict]] | None = None,
                 gate_delay: float | None = None) -> None:
        self.classes = tuple(classes)
        self.defect_classes = tuple(defect_classes)
        self.thresholds = np.asarray(thresholds, np.float64)
        self.line = line
        self.belt = belt
        self.min_frames = int(min_frames)
        self.defect_frames = int(defect_frames)
        self.defect_share = float(defect_share)
        self.defect_threshold = defect_threshold
        self.keep_crops = keep_crops
        self.on_item = on_item
        self.judge = judge  # (track id, voted class, voted defect) -> (class, defect, event fields): the verdict stage
        self.gate_delay = None if gate_delay is None else float(gate_delay)
        self.late = 0  # items decided after their act_by
        self.predicted = 0  # items counted where their lost track's predicted box crossed the line
        self._captured: float | None = None  # wall-clock capture time of the frame being counted
        self._defect = np.array([False] + [c in self.defect_classes for c in self.classes])
        self._votes: dict[int, _Vote] = {}
        self.counts: dict[str, int] = {c: 0 for c in self.classes}
        self.directions: dict[str, int] = {"forward": 0, "backward": 0}
        self.items = 0
        self.defective = 0
        self._done_seconds = 0.0  # video time of the sources finished
        self._now = 0.0  # video time in the current source
        self.in_view_at_end = 0  # tracks a source ended with, not across the line: not counted
        self.started = time.perf_counter()
        self._pixels: tuple[float, float, float, float] | None = None
        self._size: tuple[int, int] | None = None

    # -- the vote

    def _score(self, v: _Vote) -> float:
        """The defect classes' share of the votes (0 without votes): the item's defect score."""
        total = v.votes[1:].sum()
        return float(v.votes[self._defect].sum() / total) if total > 0 else 0.0

    def _decide(self, v: _Vote) -> tuple[str, bool]:
        if self.defect_threshold is not None:  # the operating point: the score alone decides
            defect_ok = self._defect & (v.votes > 0) & (self._score(v) >= self.defect_threshold)
        else:
            defect_ok = self._defect & (v.hits >= self.defect_frames) & (v.hits >= self.defect_share * v.seen)
        if defect_ok.any():
            label = int(np.argmax(np.where(defect_ok, v.votes, -1.0)))
            return self.classes[label - 1], True
        intact = ~self._defect
        intact[0] = False
        if (v.votes[intact] > 0).any():
            return self.classes[int(np.argmax(np.where(intact, v.votes, -1.0))) - 1], False
        top = self.classes[int(np.argmax(v.votes[1:]))]
        return intact_counterpart(top, self.classes, self.defect_classes) or top, False

    # -- per frame

    def update(self, tracks: Sequence[Track], *, frame: int, video_time: float, source: str,
               image: np.ndarray | None = None, ended: Sequence[Track] = (), lost: Sequence[Track] = (),
               captured: float | None = None) -> list[Item]:
        """Take one frame's tracks (those seen in it), the tracks that ended with it and, with a
        gate, the lost tracks still kept (their boxes predicted); return the items counted in this
        frame. ``captured``: the frame's capture time (``time.time()`` clock; default: now)."""
        if image is not None and self.line is not None and self._size != image.shape[1::-1]:
            self._size = image.shape[1::-1]
            self._pixels = self.line.pixels(*self._size)
        self._now = max(self._now, video_time)
        self._captured = captured
        counted: list[Item] = []
        for t in tracks:
            o = t.observation
            v = self._votes.get(t.id)
            if v is None:
                v = self._votes[t.id] = _Vote(np.zeros(len(self.classes) + 1), np.zeros(len(self.classes) + 1, int))
                if self._pixels is not None and t.first_box is not None and t.start < t.last:
                    # where it was first seen, before it was confirmed: at line speed an item can
                    # be confirmed past the line, and its crossing is still a crossing
                    b = t.first_box
                    v.side_point = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                    v.side = self._side(v.side_point)
            seen = o.class_scores >= self.thresholds
            seen[0] = False
            v.votes += np.where(seen, o.class_scores, 0.0)
            if seen.any():  # the frame's class: the best-scoring one at its --conf
                v.hits[int(np.argmax(np.where(seen, o.class_scores, -1.0)))] += 1
                v.seen += 1
            v.frames += 1
            if o.score > v.best:
                v.best = o.score
            if self.keep_crops and image is not None and o.high and o.score > v.crop_score:
                v.crop, v.crop_score = _crop(image, o.box), o.score
            if self.line is not None and self._pixels is not None:
                centre = ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2)
                side = self._side(centre)
                if side and v.side and side != v.side and not v.counted:
                    direction = self._crossing(v.side_point, centre)
                    if direction:
                        counted.append(self._count(t, v, frame, video_time, source, direction))
                if side:  # a centre exactly on the line keeps the side it came from
                    v.side, v.side_point = side, centre
        if self.gate_delay is not None and self._pixels is not None:
            counted += self._predicted_crossings(lost, frame, video_time, source)
        for t in ended:
            v = self._votes.pop(t.id, None)
            if v is not None and self.line is None and not v.counted and v.frames >= self.min_frames:
                counted.append(self._count(t, v, frame, video_time, source, None, box=t.box))
        return counted

    def _predicted_crossings(self, lost: Sequence[Track], frame: int, video_time: float, source: str) -> list[Item]:
        """Lost tracks whose predicted box (carried by the belt) crossed the line since their
        last side: decided now on the frames they were seen in, so the gate still gets an answer."""
        out = []
        for t in lost:
            v = self._votes.get(t.id)
            if v is None or v.counted or not v.side:
                continue
            b = t.box
            centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            side = self._side(centre)
            if side and side != v.side:
                direction = self._crossing(v.side_point, centre)
                if direction:
                    self.predicted += 1
                    out.append(self._count(t, v, frame, video_time, source, direction, box=b, seen=False))
        return out

    def finish(self, tracks: Sequence[Track], *, frame: int, video_time: float, source: str) -> list[Item]:
        """The source ended with ``tracks`` still held: with no line, count those long enough;
        with a line, drop them (not across: not passed). Resets the votes for the next source."""
        if self.line is not None:
            self.in_view_at_end += sum(1 for t in tracks if t.id in self._votes and not self._votes[t.id].counted)
        items = self.update((), frame=frame, video_time=video_time, source=source, ended=tracks)
        self._votes.clear()
        self._size = None
        self._done_seconds += self._now
        self._now = 0.0
        return items

    def _side(self, p: tuple[float, float]) -> float:
        x1, y1, x2, y2 = self._pixels
        return float(np.sign((x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)))

    def _crossing(self, a: tuple[float, float], b: tuple[float, float]) -> str | None:
        """``forward``/``backward`` when the move from ``a`` to ``b`` (on opposite sides) passes
        through the segment, else None."""
        x1, y1, x2, y2 = self._pixels
        d = (x2 - x1, y2 - y1)
        m = (b[0] - a[0], b[1] - a[1])
        denom = d[0] * m[1] - d[1] * m[0]
        if denom == 0:
            return None
        u = ((a[0] - x1) * m[1] - (a[1] - y1) * m[0]) / denom  # where along the line it crossed
        if not 0.0 <= u <= 1.0:
            return None
        bx, by = BELTS[self.belt]
        return "forward" if m[0] * bx + m[1] * by >= 0 else "backward"

    def _count(self, t: Track, v: _Vote, frame: int, video_time: float, source: str, direction: str | None,
               box: np.ndarray | None = None, seen: bool = True) -> Item:
        v.counted = True
        label, defect = self._decide(v)
        label, defect, extra = self.judge(t.id, label, defect) if self.judge is not None else (label, defect, {})
        b = box if box is not None else t.observation.box
        now = time.time()
        item = Item(track_id=t.id, label=label, defect=defect, best_score=v.best, frames=v.frames, frame=frame,
                    video_time=video_time, box=[float(x) for x in b], direction=direction, source=source,
                    time=_iso(now),
                    votes={c: round(float(s), 3) for c, s in zip(self.classes, v.votes[1:]) if s > 0},
                    defect_score=self._score(v), extra=extra)
        if self.gate_delay is not None:
            act_by = (self._captured if self._captured is not None else now) + self.gate_delay
            late = now > act_by
            self.late += late
            item.gate = {"act_by": _iso(act_by), "gate_in_ms": round(1000 * (act_by - now), 1), "late": late,
                         "seen_at_line": seen}
        self.counts[label] += 1
        self.items += 1
        self.defective += defect
        if direction:
            self.directions[direction] += 1
        if self.on_item is not None:
            self.on_item(item, v.crop)
        v.crop = None
        return item

    # -- reporting

    def rate(self, label: str) -> float | None:
        """Defect rate of a defect class among its kind (``Lata_defectuosa / (Lata + Lata_defectuosa)``),
        or among all items when it has no intact counterpart; None before any item."""
        base = intact_counterpart(label, self.classes, self.defect_classes)
        n = self.counts[label] + (self.counts[base] if base else 0) if base else self.items
        return self.counts[label] / n if n else None

    def per_minute(self) -> float:
        """Items per minute of video (of wall-clock time on a camera or stream)."""
        minutes = (self._done_seconds + self._now) / 60
        return self.items / minutes if minutes > 0 else 0.0

    def status(self) -> str:
        """``Lata 124, Lata_defectuosa 3 (2.4 %), Botella 57, ... 11.8 items/min``."""
        parts = []
        for c in self.classes:
            text = f"{c} {self.counts[c]}"
            if c in self.defect_classes:
                r = self.rate(c)
                text += f" ({100 * r:.1f} %)" if r is not None else ""
            parts.append(text)
        return f"{', '.join(parts)}; {self.per_minute():.1f} items/min"

    def summary(self) -> dict[str, Any]:
        """The ``counting`` object of ``summary.json``."""
        return {
            "items": self.items,
            "per_class": dict(self.counts),
            "defective": self.defective,
            "defect_rate": round(self.defective / self.items, 4) if self.items else None,
            "defect_rate_per_class": {c: (round(r, 4) if (r := self.rate(c)) is not None else None)
                                      for c in self.defect_classes},
            "per_direction": dict(self.directions) if self.line is not None else None,
            "items_per_minute": round(self.per_minute(), 2),
            "not_counted_in_view_at_end": self.in_view_at_end,
            "gate": ({"delay_s": self.gate_delay, "late": self.late, "decided_unseen_at_line": self.predicted}
                     if self.gate_delay is not None else None),
            "settings": {"count_line": self.line.spec if self.line else "none", "line_in": (
                "fractions" if self.line and self.line.fractions else "pixels" if self.line else None),
                "belt": self.belt, "min_frames": self.min_frames, "defect_frames": self.defect_frames,
                "defect_share": self.defect_share, "defect_threshold": self.defect_threshold,
                "conf": {c: float(t) for c, t in zip(self.classes, self.thresholds[1:])}},
        }

    def draw(self, image: np.ndarray) -> None:
        """Draw the counting line and the running counters on ``image`` (RGB, in place)."""
        import cv2

        h, w = image.shape[:2]
        if self.line is not None:
            x1, y1, x2, y2 = self.line.pixels(w, h)
            cv2.line(image, (int(x1), int(y1)), (int(x2), int(y2)), (255, 255, 0), max(1, (h + w) // 500), cv2.LINE_AA)
        scale = max(0.35, min(1.0, (h + w) / 1600))
        y = int(18 * scale / 0.45)
        for c in self.classes:
            text = f"{c} {self.counts[c]}"
            colour = (255, 80, 80) if c in self.defect_classes else (255, 255, 255)
            cv2.putText(image, text, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(image, text, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
            y += int(16 * scale / 0.45)


def _iso(seconds: float) -> str:
    """A ``time.time()`` value as local ISO 8601 with milliseconds."""
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _crop(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return image[y0:y1, x0:x1].copy()
