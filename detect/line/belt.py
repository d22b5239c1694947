"""The belt's motion: how far everything on it moves from one frame to the next.

On a conveyor every item moves one way at nearly the belt's speed. At a line's speed (an item
in view for ~6 frames, moving about half its width a frame) the boxes of one item barely
overlap from frame to frame, so a tracker that waits for overlap (ByteTrack's IoU, its Kalman
filter starting at rest) never links them. :class:`BeltMotion` gives the tracker the belt's
displacement per frame, ``(dx, dy)`` pixels, and :class:`detect.line.tracking.ByteTracker`
moves every track by it before associating, so a box is compared with where its item is now.

The displacement is either given (``--belt-speed`` pixels a frame along ``--belt``) or
estimated from the detections themselves: for two consecutive frames every pair of boxes of
similar size proposes a shift (how far the centre moved, or the edge that moved where a box
is cut by the frame's edge); the shift
that brings the most boxes of the new frame onto a box of the old one (within a quarter of
the box) wins (of equals, the one nearest the belt's displacement so far), refined to the
median of those pairs; the belt's displacement is the median of the latest frames' winners
(:data:`WINDOW`), robust to a frame where one item leaves as another enters. Winners that scatter (:attr:`BeltMotion.steady`) are items mistaken for their
neighbours, not a belt: then the tracker keeps its own velocities.

Two things a camera can show that tracking cannot work with are said in one line each:

* the objects move against ``--belt`` (the counting line and the direction would be wrong):
  a :class:`~detect.common.errors.UsageError` (exit 2);
* each object is seen in about one frame (nothing to link: the belt is too fast for the
  camera's frame rate or field of view): a warning, once.

Torch-free (numpy).
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from detect.common.errors import UsageError

__all__ = ["BELTS", "WINDOW", "BeltMotion", "frame_shift"]

log = logging.getLogger(__name__)

# The ways a belt can move (--belt), as unit vectors in image coordinates (y down).
BELTS = {"left-right": (1.0, 0.0), "right-left": (-1.0, 0.0), "top-down": (0.0, 1.0), "bottom-up": (0.0, -1.0)}

# Frames whose shifts the belt's displacement is the median of: about a second of video.
WINDOW = 25
# How far the shifts of a belt may scatter, as a share of the boxes' shorter side.
STEADY = 0.15
# Frames with a shift before the direction is judged, and frames with detections before the
# "one frame per item" rule is judged (the first WARM_UP of them left out of it).
JUDGE_AFTER = 10
ONE_FRAME_AFTER = 20
WARM_UP = 5


def _pair_shifts(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """``(N, M, 2)``: how far box ``j`` of ``cur`` is from box ``i`` of ``prev``, along x and y.

    The centres' move, except where the two edges moved apart (a box cut by the frame's edge
    as its item enters or leaves: one edge stays at the border while the other moves with the
    belt, so the centre moves at half the speed): there the edge that moved more."""
    out = np.empty((len(prev), len(cur), 2))
    for axis in (0, 1):
        lo = cur[None, :, axis] - prev[:, None, axis]
        hi = cur[None, :, axis + 2] - prev[:, None, axis + 2]
        size = np.maximum(cur[None, :, axis + 2] - cur[None, :, axis], prev[:, None, axis + 2] - prev[:, None, axis])
        cut = np.abs(hi - lo) > 0.15 * np.maximum(size, 1.0)
        out[..., axis] = np.where(cut, np.where(np.abs(hi) > np.abs(lo), hi, lo), (lo + hi) / 2)
    return out


def frame_shift(prev: np.ndarray, cur: np.ndarray, *, prior: np.ndarray | None = None, size_ratio: float = 1.25,
                tolerance: float = 0.25) -> tuple[np.ndarray, int] | None:
    """The shift ``(dx, dy)`` that best maps the boxes of one frame onto the next, and how many
    boxes of ``cur`` it brings within ``tolerance`` x their size of a box of ``prev``.

    ``prev`` (N, 4) and ``cur`` (M, 4): xmin/ymin/xmax/ymax boxes. Two boxes may be one object
    when their heights or their widths (one of them is cut where an item enters or leaves the
    frame) differ by less than ``size_ratio``. Of shifts that explain as many boxes, the one
    nearest ``prior`` (the belt's displacement so far; default: none, the smallest move) wins.
    None when no pair qualifies.
    """
    prev = np.asarray(prev, np.float64).reshape(-1, 4)
    cur = np.asarray(cur, np.float64).reshape(-1, 4)
    if not len(prev) or not len(cur):
        return None
    wp, hp = prev[:, 2] - prev[:, 0], prev[:, 3] - prev[:, 1]
    wc, hc = cur[:, 2] - cur[:, 0], cur[:, 3] - cur[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        same_h = np.abs(np.log(np.maximum(hc[None, :], 1e-6) / np.maximum(hp[:, None], 1e-6))) < np.log(size_ratio)
        same_w = np.abs(np.log(np.maximum(wc[None, :], 1e-6) / np.maximum(wp[:, None], 1e-6))) < np.log(size_ratio)
    ok = same_h | same_w  # (N, M)
    if not ok.any():
        return None
    shifts = _pair_shifts(prev, cur)  # (N, M, 2)
    tol = tolerance * np.maximum(np.minimum(wc, hc), 1.0)  # (M,)
    candidates = shifts[ok]  # (K, 2)
    # err[k, i, j]: how far box j of cur is from box i of prev moved by candidate k
    err = np.linalg.norm(shifts[None] - candidates[:, None, None, :], axis=-1)
    fits = (err <= tol[None, None, :]) & ok[None]
    support = fits.any(axis=1).sum(axis=1)  # (K,) boxes of cur explained
    # ties (one item leaving as another enters): the move nearest the belt's so far
    near = np.linalg.norm(candidates - (np.zeros(2) if prior is None else np.asarray(prior)), axis=1)
    best = int(np.lexsort((near, -support))[0])
    inliers = shifts[fits[best]]
    return np.median(inliers, axis=0), int(support[best])


class BeltMotion:
    """The belt's displacement per frame for :class:`~detect.line.tracking.ByteTracker`.

    Args:
        belt: the way the belt moves (``--belt``: ``left-right``, ``right-left``, ``top-down``,
            ``bottom-up``); the objects must move roughly this way.
        speed: the belt's speed in pixels a frame (``--belt-speed``), or None to estimate it.
        window: frames whose shifts the estimate is the median of.

    Call :meth:`update` with each frame's boxes (those at or above ``--conf``) before the
    tracker associates them; :meth:`record` after, with how many of them continued a track.
    """

    def __init__(self, belt: str = "left-right", *, speed: float | None = None, window: int = WINDOW) -> None:
        if belt not in BELTS:
            raise UsageError(f"--belt {belt}: use one of {', '.join(BELTS)}")
        if speed is not None and not (np.isfinite(speed) and speed >= 0):
            raise UsageError(f"--belt-speed {speed:g}: give the pixels the belt moves a frame (0 or more)")
        self.belt = belt
        self.unit = np.array(BELTS[belt], np.float64)
        self.fixed = None if speed is None else float(speed) * self.unit
        self.shifts: deque[np.ndarray] = deque(maxlen=int(window))
        self.sizes: deque[float] = deque(maxlen=int(window))  # each shift's frame: its boxes' median shorter side
        self.judged = 0  # shifts seen (for the direction rule)
        self._prev: np.ndarray | None = None
        self.frames = 0  # frames seen
        self.busy = 0  # frames with boxes
        self.boxes = 0  # boxes in them, after the first WARM_UP such frames
        self.linked = 0  # of which continued a track seen in the frame before
        self._one_frame_judged = False
        self.too_fast = False  # objects were seen in about one frame each
        self._current: np.ndarray | None = None  # the estimate after the latest frame

    @property
    def displacement(self) -> np.ndarray | None:
        """``(dx, dy)`` pixels a frame: the given speed, else the median of the latest shifts
        (None before any, and while they are not :attr:`steady`)."""
        return self.fixed if self.fixed is not None else self._current

    def _estimate(self) -> np.ndarray | None:
        if not self.shifts or not self.steady:
            return None
        return np.median(np.array(self.shifts), axis=0)

    @property
    def steady(self) -> bool:
        """The latest shifts agree (their median distance from their median is under
        :data:`STEADY` x the boxes' size), as on a belt; undecided (True) before 3 of them.
        Shifts that scatter are items mistaken for their neighbours, not a belt."""
        if len(self.shifts) < 3:
            return True
        shifts = np.array(self.shifts)
        spread = float(np.median(np.linalg.norm(shifts - np.median(shifts, axis=0), axis=1)))
        return spread <= STEADY * float(np.median(self.sizes))

    def update(self, boxes: np.ndarray) -> np.ndarray | None:
        """Take one frame's boxes (K, 4); return the displacement to move the tracks by.

        Raises:
            UsageError: the objects move against ``belt`` (judged once :data:`JUDGE_AFTER`
                frames have given a shift).
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.frames += 1
        if self.fixed is None and self._prev is not None:
            found = frame_shift(self._prev, boxes, prior=self.displacement)
            if found is not None:
                self.shifts.append(found[0])
                self.sizes.append(float(np.median(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))))
                self._current = self._estimate()
                self.judged += 1
                if self.judged >= JUDGE_AFTER:
                    self._check_direction()
        self._prev = boxes
        return self.displacement

    def record(self, boxes: int, linked: int) -> None:
        """After association: of a frame's ``boxes``, ``linked`` continued a track seen in the
        frame before.

        Objects seen in about one frame each are one warning (and :attr:`too_fast` set): judged
        once, after :data:`ONE_FRAME_AFTER` frames with boxes (at least half the frames), when
        fewer than half the boxes after the first :data:`WARM_UP` frames continued a track and
        the shifts are not a belt's. Tracking goes on; what it counts is not to be trusted.
        """
        if boxes == 0:
            return
        self.busy += 1
        if self.busy <= WARM_UP:  # the first shifts link whatever they were drawn from
            return
        self.boxes += boxes
        self.linked += linked
        if self._one_frame_judged or self.busy < ONE_FRAME_AFTER:
            return
        self._one_frame_judged = True
        if self.busy >= self.frames / 2 and self.linked < 0.5 * self.boxes and not self.steady:
            self.too_fast = True
            log.warning(
                f"objects are seen in about one frame each ({self.boxes} detections in {self.busy - WARM_UP} frames, "
                f"{self.linked} of them followed from the frame before): tracking needs each item in view for a few "
                "frames (3 or more); slow the belt, raise the camera's frame rate or widen its view")

    def _check_direction(self) -> None:
        d = self.displacement
        if d is None:  # no steady motion: nothing to judge
            return
        speed = float(np.linalg.norm(d))
        if speed < 1.0 or float(d @ self.unit) >= 0.5 * speed:  # still, or within 60 degrees of the belt
            return
        seen = max(BELTS, key=lambda name: float(d @ np.array(BELTS[name])))
        raise UsageError(
            f"--belt {self.belt}: the objects in this video move {seen} (about {speed:.0f} px a frame), not "
            f"{self.belt}; give --belt {seen} (and a --count-line across that way, if you set one)")
