"""One decision per item from the verdict classifier's per-frame probabilities.

Each frame an item is seen in, the classifier (:mod:`detect.model.verdict`) gives the
probability ``p`` that the crop is of a defect class. :class:`ItemVerdicts` keeps, per track,
the sum of the log-odds ``log(p / (1 - p))`` and the number of frames, and judges the item by
the **mean log-odds**, mapped back to a probability: one blurred frame moves it a little,
a defect seen in most frames moves it a lot, and the result does not grow with the number of
frames (a long track is not more defective than a short one). The item is defective when that
probability is at or above the threshold, which :func:`threshold_for_false_reject` picks from
held-out intact items' probabilities for a false-reject rate the user states.

Torch-free (numpy): the classifier is any object with ``probabilities(image, boxes) -> (N, K)``,
``defect_probability(probs) -> (N,)``, ``classes`` and ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from detect.common.errors import UsageError
from detect.line.counting import intact_counterpart

__all__ = ["EPS", "ItemVerdicts", "describe", "check_false_reject", "combine", "kind_of", "logit",
           "threshold_for_false_reject"]

EPS = 1e-4
"""Probabilities are clipped to [EPS, 1 - EPS]: one confident frame cannot outvote all the others."""


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def combine(probabilities: Sequence[float]) -> float:
    """The item's defect probability from its frames' probabilities: the mean log-odds, as a
    probability (NaN frames, with no crop, are left out; no frame at all: NaN)."""
    p = np.asarray(probabilities, np.float64)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    return float(1 / (1 + np.exp(-logit(p).mean())))


def check_false_reject(rate: float) -> float:
    """``--max-false-reject``: a share in (0, 0.5].

    Raises:
        UsageError: outside it.
    """
    if not (isinstance(rate, (int, float)) and np.isfinite(rate) and 0 < rate <= 0.5):
        raise UsageError(f"--max-false-reject {rate}: give the share of good items you accept to reject, "
                         "above 0 and at most 0.5 (e.g. 0.01 for 1 %)")
    return float(rate)


def threshold_for_false_reject(intact: Sequence[float], rate: float) -> float:
    """A threshold at which at most ``rate`` of the ``intact`` items' defect probabilities are at
    or above it (flagged): on these items the false-reject rate is ``<= rate``, and as close to
    it as their scores allow (halfway between the highest score left unflagged and the next).

    Raises:
        UsageError: ``rate`` outside (0, 0.5] (:func:`check_false_reject`) or no intact item.
    """
    rate = check_false_reject(rate)
    s = np.sort(np.asarray(intact, np.float64)[np.isfinite(intact)])[::-1]
    if s.size == 0:
        raise UsageError("no held-out intact items to choose the threshold on; give a validation split with "
                         "intact objects")
    allowed = int(np.floor(rate * s.size + 1e-9))  # items that may be flagged
    if allowed >= s.size:
        return float(s[-1])
    # Flag the `allowed` highest scores: a threshold halfway between the next one and the lowest
    # flagged (or 1), which survives scores rounded to float32 and leaves new items a margin.
    above = s[allowed - 1] if allowed else 1.0
    return float((s[allowed] + above) / 2) if above > s[allowed] else float(np.nextafter(s[allowed], np.inf))


@dataclass
class _Track:
    log_odds: float = 0.0
    frames: int = 0
    first: float = float("nan")


class ItemVerdicts:
    """Per-track running verdicts over the frames seen so far.

    ``observe(track_ids, boxes, image)`` each frame (boxes in the image's pixels, RGB image at
    the camera's resolution); ``judge(track_id)`` at the item's decision; ``forget`` when a
    track ends. ``max_frames``: only the first ``max_frames`` frames of a track count (what the
    gate's deadline allows; None: all).
    """

    def __init__(self, classifier: Any, *, max_frames: int | None = None,
                 defect_classes: Sequence[str] | None = None) -> None:
        self.classifier = classifier
        self.classes = list(classifier.classes)
        self.defect_classes = list(getattr(classifier, "defect_classes", None) or defect_classes or ())
        self.threshold = float(classifier.threshold)
        self.max_frames = max_frames
        self._tracks: dict[int, _Track] = {}
        self._judged: set[int] = set()  # decided: their later frames are not classified
        self._ending: list[int] = []  # ended in the frame before: counted by now (with --count-line none, then)
        self.frames_classified = 0

    def reset(self) -> None:
        """A new source: its tracker numbers its tracks from 1 again."""
        self._tracks.clear()
        self._judged.clear()
        self._ending = []

    def observe(self, track_ids: Sequence[int], boxes: np.ndarray, image: np.ndarray) -> None:
        ids = [int(t) for t in track_ids]
        wanted = [i for i, t in enumerate(ids) if t not in self._judged and (
            self.max_frames is None or self._tracks.get(t, _Track()).frames < self.max_frames)]
        if not wanted or image is None:
            return
        p = self.classifier.defect_probability(self.classifier.probabilities(image, np.asarray(boxes)[wanted]))
        self.frames_classified += len(wanted)
        for i, pi in zip(wanted, p):
            if np.isfinite(pi):
                t = self._tracks.setdefault(ids[i], _Track())
                t.log_odds += float(logit(pi))
                t.frames += 1

    def probability(self, track_id: int) -> float:
        t = self._tracks.get(int(track_id))
        if t is None or t.frames == 0:
            return float("nan")
        return float(1 / (1 + np.exp(-t.log_odds / t.frames)))

    def judge(self, track_id: int) -> dict[str, Any]:
        """The event's fields: ``defect_probability`` (None when no frame could be cut),
        ``defect`` (at the threshold), ``verdict_frames`` and ``verdict: "classifier"``."""
        p = self.probability(track_id)
        t = self._tracks.pop(int(track_id), None)
        self._judged.add(int(track_id))
        return {"defect_probability": round(p, 4) if np.isfinite(p) else None,
                "defect": bool(np.isfinite(p) and p >= self.threshold),
                "verdict_frames": t.frames if t else 0, "verdict": "classifier"}

    def forget(self, track_id: int) -> None:
        self._tracks.pop(int(track_id), None)
        self._judged.discard(int(track_id))

    def __call__(self, track_id: int, label: str, defect: bool) -> tuple[str, bool, dict[str, Any]]:
        """:class:`~detect.line.counting.ItemCounter`'s ``judge``: the detector's vote gives the
        kind (can or bottle), the classifier whether it is defective: ``(class, defect, event fields)``.
        With no frame classified the vote stands."""
        fields = self.judge(track_id)
        if fields["defect_probability"] is None:
            return label, defect, {**fields, "defect": defect, "verdict": "detector vote"}
        return self.kind(label, fields["defect"]), fields["defect"], fields

    def kind(self, label: str, defect: bool) -> str:
        """``label`` turned defective (``Lata`` -> ``Lata_defectuosa``) or intact, as ``defect`` says."""
        return kind_of(label, defect, self.classes, self.defect_classes)

    def on_frame(self, tracks: Sequence[Any], ended: Sequence[Any], image: np.ndarray | None) -> None:
        """The line's per-frame hook, before the frame is counted: classify the crops of this
        frame's tracks; forget the tracks that ended a frame ago (those ending now may still be
        counted, and judged, in this frame)."""
        for track_id in self._ending:
            self.forget(track_id)
        self._ending = [t.id for t in ended]
        seen = [t for t in tracks if t.observation is not None]
        if seen and image is not None:
            self.observe([t.id for t in seen], np.array([t.observation.box for t in seen]), image)


def kind_of(label: str, defect: bool, classes: Sequence[str], defect_classes: Sequence[str]) -> str:
    """``label`` turned defective (``Lata`` -> ``Lata_defectuosa``) or intact, as ``defect`` says
    (unchanged when the model has no such class)."""
    if defect and label not in defect_classes:
        fits = [d for d in defect_classes if intact_counterpart(d, classes, defect_classes) == label]
        return fits[0] if fits else label
    if not defect and label in defect_classes:
        return intact_counterpart(label, classes, defect_classes) or label
    return label


def describe(classifier: Any | None, *, threshold: float | None = None) -> str:
    """The banner's line on how items are judged (``threshold``: ``--defect-threshold``, which
    replaces the classifier's own)."""
    if classifier is None:
        return ("verdict: detector vote (the model has no verdict.pt beside it; detect.train --verdict trains "
                "the item classifier)")
    rate = getattr(classifier, "max_false_reject", None)
    chosen = (" (--defect-threshold)" if threshold is not None
              else f", chosen for <= {100 * rate:g} % good items rejected on the val split" if rate else "")
    runtime = " on onnxruntime" if (getattr(classifier, "info", None) or {}).get("runtime") == "onnxruntime" else ""
    at = classifier.threshold if threshold is None else threshold
    return (f"verdict: classifier ({getattr(classifier, 'arch', '?')}{runtime} on each item's crop at "
            f"{getattr(classifier, 'size', '?')} px; defective at probability >= {at:.3f}{chosen})")
