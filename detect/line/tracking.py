"""Multi-object tracking by detection: a ByteTrack tracker, class-agnostic, numpy only.

:class:`ByteTracker` follows the published ByteTrack association (Zhang et al., ECCV 2022,
``yolox/tracker/byte_tracker.py``):

1. every track's box is predicted with a constant-velocity Kalman filter on
   ``(centre x, centre y, aspect ratio, height)``; on a conveyor (``motion``,
   :mod:`detect.line.belt`) the velocity is the belt's displacement per frame, and a track
   is looked for at its last box carried along by the belt (a new track, one at line speed,
   and one whose box grows or shrinks at the frame's edge are found where they are);
2. the *high* detections (score at or above their class's threshold) are matched to the
   tracked and lost tracks by IoU weighted with the detection score (Hungarian assignment,
   cost ``1 - IoU x score`` at most ``match_cost``, 0.8);
3. the *low* detections (``low_thresh`` <= score < threshold) are matched to the tracked
   tracks left over, by IoU (cost at most 0.5): a partly hidden or blurred object keeps
   its track instead of being dropped;
4. tracks started in the previous frame (unconfirmed) take the high detections left over
   (cost at most 0.7); those that find none are dropped, so one stray detection makes
   no track (on a belt, after a second frame without one: the belt says where to look);
5. a high detection matched to nothing starts a track when its score is at least its
   threshold + ``new_track_margin`` (0.1); tracked tracks that found nothing become
   *lost* and are kept ``buffer`` frames (30) to be found again, then removed;
6. a tracked and a lost track that overlap by IoU > 0.85 are the same object: the younger
   is dropped.

Tracking ignores the class (an intact can whose label flickers to defective stays one
track); :func:`merge_classes` first folds the boxes the detector gives one object in
several classes into one box with a score per class, which the item vote
(:mod:`detect.line.counting`) reads.

Torch-free: numpy and scipy (``linear_sum_assignment``) only, so the ONNX path can track.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from detect.scoring.metrics import box_iou

if TYPE_CHECKING:
    from detect.line.belt import BeltMotion

__all__ = ["drop_spanning", "ByteTracker", "KalmanFilter", "Observation", "Track", "merge_classes"]


@dataclass
class Observation:
    """One object in one frame, after :func:`merge_classes`.

    Attributes:
        box: ``(xmin, ymin, xmax, ymax)`` in frame pixels.
        score: the best class score; label: that class (``1..K``).
        class_scores: ``(K + 1,)``, the best score the detector gave this object per class
            (index 0 unused; 0 where the class was not given).
        high: the score is at or above its class's threshold (``--conf``).
    """

    box: np.ndarray
    score: float
    label: int
    class_scores: np.ndarray
    high: bool = True


def drop_spanning(observations: list[Observation], *, inside: float = 0.8, share: float = 0.25,
                  cover: float = 0.6, half: float = 0.35) -> list[Observation]:
    """Leave out the boxes that span two or more items side by side.

    On a crowded belt (4-5 items in view, a gap narrower than an item) the detector also
    proposes one box over two neighbours; tracked, it becomes a second track across the
    line and the item is counted twice. A box goes when at least two other boxes, each seen
    at its class's threshold (``high``), lie within it (``inside`` of their area), each is at
    least ``share`` of its area, and together they cover ``cover`` of it: the items it spans
    were found one by one. A small box inside an item's (a label, a dent) is far below
    ``share`` and changes nothing. Likewise a box that holds a surer box (``inside`` of its
    area within it, at least ``half`` of its own area): the detector's looser second guess at
    one item, reaching into its neighbour, which would start a second track.
    """
    if len(observations) < 2:
        return observations
    b = np.array([o.box for o in observations], np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    x0 = np.maximum(b[:, None, 0], b[None, :, 0])
    y0 = np.maximum(b[:, None, 1], b[None, :, 1])
    x1 = np.minimum(b[:, None, 2], b[None, :, 2])
    y1 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)  # [i, j]: box i and box j
    keep = []
    for i, o in enumerate(observations):
        parts = [j for j in range(len(b)) if j != i and observations[j].high and area[j] > 0
                 and inter[i, j] >= inside * area[j]
                 and area[j] >= share * area[i] and area[j] < area[i]]
        if len(parts) >= 2 and min(1.0, sum(inter[i, j] for j in parts) / max(area[i], 1e-9)) >= cover:
            continue
        if any(observations[j].score > o.score and area[j] >= half * area[i] for j in parts):
            continue
        keep.append(o)
    return keep


def merge_classes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, num_classes: int, *,
                  iou: float = 0.7) -> list[Observation]:
    """Fold same-object boxes of different classes into one :class:`Observation` each.

    Faster R-CNN suppresses overlaps per class only, so one can may come as ``Lata 0.8`` and
    ``Lata_defectuosa 0.4`` on nearly the same box. Greedy by score, every box overlapping
    a kept one by IoU >= ``iou`` is absorbed into it (its class score kept in
    ``class_scores``). ``high`` is left True; the caller sets it.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes, boxes)
    taken = np.zeros(len(boxes), bool)
    out: list[Observation] = []
    for i in order:
        if taken[i]:
            continue
        group = np.flatnonzero(~taken & (overlaps[i] >= iou))
        group = np.union1d(group, [i])
        taken[group] = True
        per_class = np.zeros(num_classes + 1)
        for j in group:
            if 1 <= labels[j] <= num_classes:
                per_class[labels[j]] = max(per_class[labels[j]], scores[j])
        out.append(Observation(boxes[i].copy(), float(scores[i]), int(labels[i]), per_class))
    return out


class KalmanFilter:
    """ByteTrack's (and DeepSORT's) constant-velocity filter on ``(cx, cy, a, h)`` and their velocities."""

    std_position = 1.0 / 20
    std_velocity = 1.0 / 160

    def __init__(self) -> None:
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)
        self.H = np.eye(4, 8)

    def initiate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.r_[z, np.zeros(4)]
        h = z[3]
        std = [2 * self.std_position * h, 2 * self.std_position * h, 1e-2, 2 * self.std_position * h,
               10 * self.std_velocity * h, 10 * self.std_velocity * h, 1e-5, 10 * self.std_velocity * h]
        return mean, np.diag(np.square(std))

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        std = [self.std_position * h, self.std_position * h, 1e-2, self.std_position * h,
               self.std_velocity * h, self.std_velocity * h, 1e-5, self.std_velocity * h]
        return self.F @ mean, self.F @ cov @ self.F.T + np.diag(np.square(std))

    def update(self, mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        r = np.diag(np.square([self.std_position * h, self.std_position * h, 1e-1, self.std_position * h]))
        s = self.H @ cov @ self.H.T + r
        gain = np.linalg.solve(s, (cov @ self.H.T).T).T
        mean = mean + gain @ (z - self.H @ mean)
        cov = cov - gain @ s @ gain.T
        return mean, cov


def _xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / max(h, 1e-6), max(h, 1e-6)])


def _box(mean: np.ndarray) -> np.ndarray:
    cx, cy, a, h = mean[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


TRACKED, LOST, REMOVED = "tracked", "lost", "removed"


@dataclass(eq=False)
class Track:
    """One object followed across frames.

    Attributes:
        id: its number (1, 2, ...; 0 until confirmed).
        state: ``"tracked"`` (seen this frame), ``"lost"`` (not seen, kept) or ``"removed"``.
        confirmed: seen in two consecutive frames (or in the first frame of the stream).
        observation: what matched it in the latest frame it was seen (None if not this frame).
        frames: frames it was seen in; start, last: first and latest frame seen.
        first_box: its box in its first frame (seen before it was confirmed, for the counter);
            last_box: its box in the latest frame it was seen in.
    """

    mean: np.ndarray
    cov: np.ndarray
    start: int
    last: int
    id: int = 0
    state: str = TRACKED
    confirmed: bool = False
    frames: int = 1
    observation: Observation | None = None
    first_box: np.ndarray | None = None
    last_box: np.ndarray | None = None

    @property
    def box(self) -> np.ndarray:
        """The filter's box now (xmin, ymin, xmax, ymax)."""
        return _box(self.mean)


def _assign(cost: np.ndarray, limit: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Minimum-cost matching with every pair's cost at most ``limit``; the rows and columns left."""
    if cost.size == 0:
        return [], list(range(cost.shape[0])), list(range(cost.shape[1]))
    big = limit + 1e5
    c = np.where(cost <= limit, cost, big)
    rows, cols = linear_sum_assignment(c)
    pairs = [(int(r), int(k)) for r, k in zip(rows, cols) if c[r, k] <= limit]
    mr = {r for r, _ in pairs}
    mc = {k for _, k in pairs}
    return pairs, [r for r in range(cost.shape[0]) if r not in mr], [k for k in range(cost.shape[1]) if k not in mc]


class ByteTracker:
    """ByteTrack (see the module docstring). Call :meth:`update` once per frame, in order.

    Args:
        buffer: frames a lost track is kept to be found again (ByteTrack's ``track_buffer``, 30
            at 30 FPS; scale it with the frame rate).
        match_cost: first-association limit on ``1 - IoU x score`` (0.8).
        low_cost: second association (low detections) limit on ``1 - IoU`` (0.5).
        unconfirmed_cost: unconfirmed-track association limit (0.7).
        new_track_margin: a new track needs a score of its threshold + this (0.1).
        duplicate_iou: a tracked and a lost track overlapping more than this are one (0.85).
        motion: the belt's motion (:class:`detect.line.belt.BeltMotion`), or None. With it, every
            track moves by the belt's displacement each frame instead of by its own velocity (a
            new track's is zero, so at line speed its next box would be missed).
    """

    def __init__(self, *, buffer: int = 30, match_cost: float = 0.8, low_cost: float = 0.5,
                 unconfirmed_cost: float = 0.7, new_track_margin: float = 0.1, duplicate_iou: float = 0.85,
                 motion: BeltMotion | None = None) -> None:
        self.motion = motion
        self.buffer = int(buffer)
        self.match_cost, self.low_cost, self.unconfirmed_cost = match_cost, low_cost, unconfirmed_cost
        self.new_track_margin = new_track_margin
        self.duplicate_iou = duplicate_iou
        self.kf = KalmanFilter()
        self.frame = 0
        self.next_id = 1
        self.tracks: list[Track] = []  # tracked (confirmed or not) and lost; removed ones leave
        self.removed: list[Track] = []  # the tracks removed by the latest update (for counting)

    def update(self, observations: list[Observation], thresholds: np.ndarray | None = None) -> list[Track]:
        """Advance one frame with its observations (``high`` set on each: score >= its class's
        threshold; ``thresholds[label]`` is that threshold, for the new-track rule).

        Returns the confirmed tracks seen in this frame (``observation`` set), by id.
        """
        self.frame += 1
        frame = self.frame
        self.removed = []
        for t in self.tracks:
            t.observation = None
        high = [o for o in observations if o.high]
        low = [o for o in observations if not o.high]
        confirmed = [t for t in self.tracks if t.confirmed]
        unconfirmed = [t for t in self.tracks if not t.confirmed]
        belt = self.motion.update(np.array([o.box for o in high]).reshape(-1, 4)) if self.motion else None
        for t in confirmed + unconfirmed:  # predict (a lost track's height stops changing)
            if t.state != TRACKED:
                t.mean[7] = 0.0
            if belt is not None:
                t.mean[4:6] = belt
            t.mean, t.cov = self.kf.predict(t.mean, t.cov)

        # 1. high detections against tracked + lost, IoU fused with the score
        where = self._where(belt, frame)
        boxes = np.array([where(t) for t in confirmed]).reshape(-1, 4)
        hb = np.array([o.box for o in high]).reshape(-1, 4)
        cost = 1.0 - box_iou(boxes, hb) * np.array([o.score for o in high])[None, :]
        pairs, left_tracks, left_high = _assign(cost, self.match_cost)
        linked = sum(confirmed[r].last == frame - 1 for r, _ in pairs)  # continued from the frame before
        for r, k in pairs:
            self._update(confirmed[r], high[k], frame)
        # 2. low detections against the tracked tracks left
        still = [confirmed[r] for r in left_tracks if confirmed[r].state == TRACKED]
        cost = 1.0 - box_iou(np.array([where(t) for t in still]).reshape(-1, 4),
                                np.array([o.box for o in low]).reshape(-1, 4))
        pairs, left, _ = _assign(cost, self.low_cost)
        for r, k in pairs:
            self._update(still[r], low[k], frame)
        for r in left:
            still[r].state = LOST
        # 3. unconfirmed tracks against the high detections left
        rest = [high[k] for k in left_high]
        cost = 1.0 - box_iou(np.array([where(t) for t in unconfirmed]).reshape(-1, 4),
                                np.array([o.box for o in rest]).reshape(-1, 4)) * np.array([o.score for o in rest])[None, :]
        pairs, left_unconf, left_rest = _assign(cost, self.unconfirmed_cost)
        linked += len(pairs)
        if self.motion:
            self.motion.record(len(high), linked)
        for r, k in pairs:
            self._update(unconfirmed[r], rest[k], frame)
            unconfirmed[r].confirmed = True
            unconfirmed[r].id, self.next_id = self.next_id, self.next_id + 1
        for r in left_unconf:  # on a belt a new track may miss one frame: where it went is known
            if self.motion is None or frame - unconfirmed[r].last > 1:
                unconfirmed[r].state = REMOVED
        # 4. new tracks
        for k in left_rest:
            o = rest[k]
            thresh = float(thresholds[o.label]) if thresholds is not None else 0.5
            if o.score < min(thresh + self.new_track_margin, 0.99):
                continue
            mean, cov = self.kf.initiate(_xyah(o.box))
            t = Track(mean, cov, start=frame, last=frame, observation=o, first_box=o.box.copy(), last_box=o.box.copy())
            if frame == 1:  # ByteTrack confirms the tracks of the first frame at once
                t.confirmed, t.id, self.next_id = True, self.next_id, self.next_id + 1
            self.tracks.append(t)
        # 5. lost too long -> removed
        for t in self.tracks:
            if t.state == LOST and frame - t.last > self.buffer:
                t.state = REMOVED
        self._drop_duplicates()
        self.removed = [t for t in self.tracks if t.state == REMOVED and t.confirmed]
        self.tracks = [t for t in self.tracks if t.state != REMOVED]
        return sorted((t for t in self.tracks if t.confirmed and t.observation is not None and t.last == frame),
                      key=lambda t: t.id)

    def finish(self) -> list[Track]:
        """End of the stream: every confirmed track still held, removed (returned)."""
        ended = [t for t in self.tracks if t.confirmed]
        for t in self.tracks:
            t.state = REMOVED
        self.tracks = []
        return ended

    @staticmethod
    def _where(belt: np.ndarray | None, frame: int):
        """Where to look for each track in ``frame``: the filter's box, or on a belt its last
        seen box carried along by the belt (the filter's shape lags a box that grows or
        shrinks where an item enters or leaves the view, and the belt's does not)."""
        if belt is None:
            return lambda t: t.box
        step = np.r_[belt, belt]
        return lambda t: t.last_box + step * (frame - t.last) if t.last_box is not None else t.box

    def _update(self, t: Track, o: Observation, frame: int) -> None:
        t.mean, t.cov = self.kf.update(t.mean, t.cov, _xyah(o.box))
        t.state = TRACKED
        t.last = frame
        t.frames += 1
        t.observation = o
        t.last_box = o.box.copy()

    def _drop_duplicates(self) -> None:
        tracked = [t for t in self.tracks if t.state == TRACKED and t.confirmed]
        lost = [t for t in self.tracks if t.state == LOST]
        if not tracked or not lost:
            return
        iou = box_iou(np.array([t.box for t in tracked]), np.array([t.box for t in lost]))
        for r, k in zip(*np.nonzero(iou > self.duplicate_iou)):
            a, b = tracked[r], lost[k]
            if a.last - a.start > b.last - b.start:
                b.state = REMOVED
            else:
                a.state = REMOVED
