"""The anomaly score of each counted item, beside the supervised verdict, and its threshold.

:class:`ItemAnomaly` keeps, per track, one crop: the frame where the detector was most sure of
the item with its box whole in view (a box cut by the frame's edge only when no whole one was
seen). When the item is counted, that one crop is scored (``scorer``: the PatchCore bank of
:mod:`detect.model.anomaly`, or any callable ``scorer(image, boxes, labels, classes) -> scores``),
once per item: the cost is one crop's features and nearest-neighbour search, not one per
detection per frame. The item's event gains ``anomaly``, ``anomaly_threshold`` and
``anomalous``; with ``flag`` (``--anomaly-flags``) the item is defective when the supervised
verdict (the classifier, or the detector's vote) or the anomaly says so, else the verdict
alone decides; ``flagged_by`` says which.

:func:`anomaly_thresholds` picks each base class's threshold from held-out intact items'
scores for a false-reject rate (:func:`detect.line.verdict.threshold_for_false_reject`),
refusing a rate that too few items cannot measure. Torch-free (numpy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from detect.common.errors import UsageError
from detect.line.counting import _crop, intact_counterpart
from detect.line.tracking import REMOVED
from detect.line.verdict import check_false_reject, kind_of, threshold_for_false_reject

__all__ = ["DEFAULT_FALSE_REJECT", "ItemAnomaly", "anomaly_thresholds", "check_supported"]

log = logging.getLogger(__name__)

DEFAULT_FALSE_REJECT = 0.02
"""Share of intact items the anomaly threshold may flag on the val split, when none is asked."""

EDGE = 2
"""A box within this many pixels of the frame's edge is cut by it: not the item whole."""


def check_supported(counts: Mapping[str, int], rate: float, *, where: str = "the val split") -> float:
    """``rate`` when each base class has at least ``1 / rate`` held-out intact items (fewer cannot
    show one false reject in ``rate`` of them).

    Raises:
        UsageError: ``rate`` outside (0, 0.5] or too few items of a class (one line).
    """
    rate = check_false_reject(rate)
    for cls, n in sorted(counts.items()):
        need = int(np.ceil(1 / rate - 1e-9))
        if n < need:
            raise UsageError(f"--max-false-reject {rate:g}: {where} has {n} intact {cls} box(es), too few to choose a "
                             f"threshold for {100 * rate:g} % false rejects (at least {need} needed); give a larger "
                             "rate or more validation data")
    return rate


def anomaly_thresholds(scores: Mapping[str, Sequence[float]], rate: float) -> dict[str, float]:
    """Per base class, the anomaly score at or above which an item is anomalous, such that at
    most ``rate`` of that class's held-out intact ``scores`` are (:func:`check_supported` first)."""
    check_supported({c: int(np.isfinite(np.asarray(s, float)).sum()) for c, s in scores.items()}, rate)
    return {c: threshold_for_false_reject(s, rate) for c, s in sorted(scores.items())}


@dataclass
class _Best:
    track: Any  # the Track object: ids restart with each source's tracker, the object does not
    crop: np.ndarray
    key: tuple[bool, float]  # (whole in view, detection score): the larger is kept


class ItemAnomaly:
    """Anomaly scores of counted items (see the module docstring).

    Args:
        scorer: ``scorer(image, boxes, labels, classes) -> (M,)`` scores (NaN: none).
        classes, defect_classes: the model's (label ``i`` is ``classes[i - 1]``).
        thresholds: base class -> threshold (:func:`anomaly_thresholds`); a class without one
            gets its score but is never flagged by it.
        max_false_reject: the rate the thresholds were chosen for (for the banner).
        flag: an anomalous item is defective too (``--anomaly-flags``); else its event carries
            the score and ``anomalous`` and the supervised verdict alone decides: on the demo,
            flagging by either lowered the verdict's recall at the same false-reject rate
            (docs/anomaly.md).
    """

    def __init__(self, scorer: Callable, classes: Sequence[str], defect_classes: Sequence[str], *,
                 thresholds: Mapping[str, float] | None = None, max_false_reject: float | None = None,
                 flag: bool = False) -> None:
        self.flag = flag
        self.scorer = scorer
        self.classes = list(classes)
        self.defect_classes = list(defect_classes)
        self.thresholds = dict(thresholds or {})
        self.max_false_reject = max_false_reject
        self._best: dict[int, _Best] = {}
        self.scored = 0
        self.seconds = 0.0  # spent scoring, for the cost per item

    @classmethod
    def from_meta(cls, scorer: Callable, meta: Mapping[str, Any], classes: Sequence[str],
                  defect_classes: Sequence[str], *, flag: bool = False) -> "ItemAnomaly":
        """From a bank's JSON record (:mod:`detect.model.patchbank`): its ``thresholds`` and ``max_false_reject``."""
        return cls(scorer, classes, defect_classes, thresholds=meta.get("thresholds"),
                   max_false_reject=meta.get("max_false_reject"), flag=flag)

    def on_frame(self, tracks: Sequence[Any], ended: Sequence[Any], image: np.ndarray | None) -> None:
        """Each frame, before counting: keep each track's best crop so far."""
        gone = {id(t) for t in ended}
        # Tracks that ended earlier were counted by now (or never will be): drop their crops.
        for k in [k for k, b in self._best.items() if b.track.state == REMOVED and id(b.track) not in gone]:
            del self._best[k]
        if image is None:
            return
        h, w = image.shape[:2]
        for t in tracks:
            o = t.observation
            if o is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in o.box)
            whole = x0 >= EDGE and y0 >= EDGE and x1 <= w - EDGE and y1 <= h - EDGE
            key = (whole, float(o.score))
            b = self._best.get(t.id)
            if b is not None and b.track is t and b.key >= key:
                continue
            crop = _crop(image, o.box)
            if crop is not None:
                self._best[t.id] = _Best(t, crop, key)

    def score(self, track_id: int, label: str) -> float | None:
        """The anomaly score of the track's kept crop as a ``label`` (None: no crop, or no bank for its class)."""
        b = self._best.pop(int(track_id), None)
        if b is None or label not in self.classes:
            return None
        h, w = b.crop.shape[:2]
        t0 = time.perf_counter()
        s = float(np.asarray(self.scorer(b.crop, np.array([[0.0, 0.0, w, h]]),
                                         np.array([self.classes.index(label) + 1]), self.classes))[0])
        self.seconds += time.perf_counter() - t0
        self.scored += 1
        return s if np.isfinite(s) else None

    def threshold(self, label: str) -> float | None:
        base = intact_counterpart(label, self.classes, self.defect_classes) or label if label in self.defect_classes else label
        return self.thresholds.get(base)

    def judge(self, inner: Callable | None) -> Callable[[int, str, bool], tuple[str, bool, dict]]:
        """:class:`~detect.line.counting.ItemCounter`'s ``judge``: ``inner``'s decision (the
        verdict classifier's, or None for the detector's vote) with the anomaly fields added."""

        def judged(track_id: int, label: str, defect: bool) -> tuple[str, bool, dict]:
            extra: dict = {}
            if inner is not None:
                label, defect, extra = inner(track_id, label, defect)
            flagged_by = [("verdict" if extra.get("verdict") == "classifier" else "detector")] if defect else []
            score = self.score(track_id, label)
            threshold = self.threshold(label)
            anomalous = None if score is None or threshold is None else bool(score >= threshold)
            if anomalous and self.flag:
                flagged_by.append("anomaly")
                label, defect = kind_of(label, True, self.classes, self.defect_classes), True
            return label, defect, {**extra, "anomaly": None if score is None else round(score, 4),
                                   "anomaly_threshold": None if threshold is None else round(threshold, 4),
                                   "anomalous": anomalous, "flagged_by": flagged_by}

        return judged

    def compose(self, judge: Callable | None, on_tracks: Callable | None) -> tuple[Callable, Callable]:
        """The counter's ``judge`` and the line's ``on_tracks`` with this stage added to the given ones."""

        def both(tracks, ended, image) -> None:
            if on_tracks is not None:
                on_tracks(tracks, ended, image)
            self.on_frame(tracks, ended, image)

        return self.judge(judge), both

    def ms_per_item(self) -> float | None:
        return 1000 * self.seconds / self.scored if self.scored else None

    def describe(self) -> str:
        """The banner's line."""
        if not self.thresholds:
            return ("anomaly: scored from each item's best crop; the bank holds no threshold, so no item is flagged "
                    "by it (python -m detect.anomaly --weights MODEL --overwrite sets one)")
        rate = f" (chosen for <= {100 * self.max_false_reject:g} % good items flagged on the val split)" \
            if self.max_false_reject else ""
        per_class = ", ".join(f"{c} {t:.3f}" for c, t in sorted(self.thresholds.items()))
        use = ("; an anomalous item is rejected too (--anomaly-flags)" if self.flag else
               "; reported in each event, the verdict decides (--anomaly-flags: reject anomalous items too)")
        return f"anomaly: scored from each item's best crop; anomalous at {per_class}{rate}{use}"

