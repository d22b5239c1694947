"""The line: a predictor's results over a video, camera or frame sequence, with a track id per
detection and the items counted as they cross the counting line.

* :class:`LineSession`: what ``python -m detect.predict --track`` runs, usable from a script: one
  :class:`~detect.line.counting.ItemCounter` over any number of sources (a ByteTracker per
  source), ``events.jsonl`` written as items are counted (:class:`~detect.inference.outputs.ItemLog`),
  the per-frame cost of the model and of tracking, and :class:`LineListener` s told of every
  frame, item and the end (the live page and MQTT of ``detect.station`` listen this way)::

      session = LineSession(predictor, folder=Path("predictions/line"), listeners=[my_listener])
      for result in session.run(open_source("conveyor.mp4")):
          ...                                  # result.track_ids, result.counted
      counting = session.counting()            # the "counting" object of summary.json
      session.close({"counting": counting})

* :func:`track` opens a source and runs :func:`track_frames` over it with a counter of your
  own; both are generators that run in constant memory however long the source is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.common.types import Detections
from detect.inference.predictor import Predictor, Result
from detect.inference.sources import Frame, Source, open_source
from detect.line.belt import BeltMotion
from detect.line.counting import DEFECT_SHARE, CountingLine, ItemCounter, parse_count_line
from detect.line.tracking import LOST, ByteTracker, drop_spanning, merge_classes
from detect.line.verdict import ItemVerdicts, describe

__all__ = ["LISTENER_BUDGET_S", "LineListener", "LineSession", "track", "track_frames", "tracking_needs_frames"]

log = logging.getLogger(__name__)

LISTENER_BUDGET_S = 2.0
"""A listener call that takes longer than this is dropped: the line does not wait for a consumer."""


class LineListener(Protocol):
    """Told of what happens on the line. Calls come from the line's own thread, in order; a
    listener must return at once (hand the work to its own thread or queue). One that raises,
    or takes longer than :data:`LISTENER_BUDGET_S`, is logged once and dropped: it never stops
    the line."""

    def on_frame(self, result: Result, counter: ItemCounter) -> None:
        """Every tracked frame: its :class:`~detect.inference.predictor.Result` (with
        ``track_ids`` and ``counted``) and the counter (its ``counts``, ``status()``)."""
        ...

    def on_item(self, event: dict) -> None:
        """Each item as it is counted: the dict written to ``events.jsonl``."""
        ...

    def on_close(self, summary: dict) -> None:
        """At the end: the dict written to ``summary.json`` (its ``counting`` object holds the counts)."""
        ...


class LineSession:
    """Counts items over one or more sources with one counter, writes ``events.jsonl`` and
    tells the listeners.

    Args:
        predictor: the :class:`~detect.inference.predictor.Predictor`; its classes, defect
            classes and ``--conf`` thresholds are the counter's (the line votes at them).
        folder: where ``events.jsonl`` (and ``crops/items/`` with ``save_crops``) go; None
            with ``events`` None: no event file (listeners still get every event).
        events: the event file (default: ``folder / "events.jsonl"``); ``events_stdout``: a
            stream each event line goes to as well.
        line: a :class:`~detect.line.counting.CountingLine`, ``"default"`` (across the
            middle, perpendicular to ``belt``) or None (count a track when it ends after
            ``min_frames``); ``belt``, ``min_frames``, ``defect_frames``, ``defect_share``,
            ``defect_threshold``: as :class:`~detect.line.counting.ItemCounter`; with a ``verdict``
            classifier, ``defect_threshold`` is its threshold instead (on ``defect_probability``).
        belt_speed: pixels the belt moves a frame along ``belt`` (default: measured from the
            detections by :class:`~detect.line.belt.BeltMotion`).
        track_buffer: frames a lost track is kept (default: one second of the source, at least 10).
        low: lowest score that keeps a track alive (ByteTrack's low detections).
        listeners: :class:`LineListener` s.
        gate_delay: seconds from the counting line to the reject gate: each event says by when
            to act on it (see :class:`~detect.line.counting.ItemCounter`); None: no gate.
        verdict: the item classifier (``detect.inference.loader.load_verdict_beside(weights,
            classes)``: ``verdict.pt`` or ``verdict.onnx``): each item's defect flag and
            ``defect_probability`` come from its crops (:mod:`detect.line.verdict`); None: the
            detector's vote.
        anomaly: an :class:`~detect.line.anomaly.ItemAnomaly`: each item's event gains its anomaly
            score, and an anomalous item is flagged too; None: no anomaly score.
    """

    def __init__(self, predictor: Predictor, *, folder: Path | None = None, events: Path | None = None,
                 events_stdout=None, line: CountingLine | str | None = "default", belt: str = "left-right",
                 min_frames: int = 3, defect_frames: int = 2, defect_share: float = DEFECT_SHARE,
                 defect_threshold: float | None = None, belt_speed: float | None = None, save_crops: bool = False,
                 track_buffer: int | None = None, low: float = 0.1, listeners: Sequence[LineListener] = (),
                 verdict: Any = None, anomaly: Any = None, gate_delay: float | None = None) -> None:
        from detect.inference.outputs import ItemLog

        self.predictor = predictor
        self.track_buffer, self.low = track_buffer, low
        self.belt, self.belt_speed = belt, belt_speed
        self.listeners = list(listeners)
        self.verdicts = ItemVerdicts(verdict, defect_classes=predictor.defect_classes) if verdict is not None else None
        self.verdict_note = describe(verdict, threshold=defect_threshold)  # the banner's line
        if self.verdicts is not None and defect_threshold is not None:
            # the operating point detect.eval --items found on the classifier's defect_probability
            self.verdicts.threshold, defect_threshold = defect_threshold, None
        judge, self._on_tracks = self.verdicts, self.verdicts.on_frame if self.verdicts else None
        if anomaly is not None:
            judge, self._on_tracks = anomaly.compose(judge, self._on_tracks)
        self.item_log = (ItemLog(folder if folder is not None else Path(events).parent, path=events,
                                 save_crops=save_crops, stdout=events_stdout)
                         if folder is not None or events is not None else None)
        self.counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.thresholds,
                                   line=parse_count_line(None, belt) if line == "default" else line, belt=belt,
                                   min_frames=min_frames, defect_frames=defect_frames, defect_share=defect_share,
                                   defect_threshold=defect_threshold,
                                   keep_crops=save_crops and self.item_log is not None, on_item=self._on_item,
                                   judge=judge, gate_delay=gate_delay)
        self.frames = 0
        self.model_seconds = self.track_seconds = 0.0
        self._closed = False

    def run(self, source: Source, frames: Iterable[Frame] | None = None) -> Iterator[Result]:
        """Track and count over one opened ``source`` (``frames``: its frames as read ahead by
        :func:`detect.inference.sources.prefetch`; default: the source). A generator; the
        items still in view are settled when the source ends."""
        # One belt estimate per source: a conveyor moves one way at a nearly constant speed.
        tracker = ByteTracker(buffer=self.track_buffer or max(10, round(source.fps or 30)),
                              motion=BeltMotion(self.belt, speed=self.belt_speed))
        if self.verdicts is not None:
            self.verdicts.reset()
        for result in track_frames(self.predictor, source, self.counter, tracker=tracker, low=self.low,
                                   frames=frames, on_tracks=self._on_tracks):
            if result.error is None:
                self.frames += 1
                self.model_seconds += result.infer_seconds
                self.track_seconds += result.track_seconds
                if result.image is not None:
                    self._tell("on_frame", result, self.counter)
            yield result

    def feed(self, source: Source, frames: Iterable[Frame] | None = None) -> None:
        """:meth:`run` to the end of ``source``, for a caller that only wants the counts and events."""
        for _ in self.run(source, frames):
            pass

    def status(self) -> str:
        """The counter's one line: ``Lata 124, Lata_defectuosa 3 (2.4 %), ...; 11.8 items/min``."""
        return self.counter.status()

    def counting(self) -> dict[str, Any]:
        """The ``counting`` object of ``summary.json``: the counter's summary, the cost per
        frame (model; tracking and counting) and where the events went. Closes the event file."""
        if self.item_log is not None:
            self.item_log.close()
        data = self.counter.summary()
        n = max(1, self.frames)
        data["ms_per_frame"] = {"model": round(1000 * self.model_seconds / n, 2),
                                "tracking_and_counting": round(1000 * self.track_seconds / n, 2)}
        data["events"] = str(self.item_log.path) if self.item_log is not None else None
        return data

    def close(self, summary: dict | None = None) -> dict:
        """The end: the listeners' ``on_close`` with ``summary`` (the dict written to
        ``summary.json``; default ``{"counting": self.counting()}``). Returns it. Safe to call twice."""
        if summary is None:
            summary = {"counting": self.counting()}
        if not self._closed:
            self._closed = True
            if self.item_log is not None:
                self.item_log.close()
            self._tell("on_close", summary)
        return summary

    def report_lines(self, counting: dict[str, Any]) -> list[str]:
        """What ``detect.predict --track`` prints at the end, from :meth:`counting`'s dict."""
        c = self.counter
        rate = f" ({100 * counting['defect_rate']:.1f} %)" if counting["defect_rate"] is not None else ""
        lines = [f"items counted: {c.items}, {c.defective} defective{rate}; {show(c.status())}"]
        if counting.get("per_direction"):
            d = counting["per_direction"]
            lines.append(f"direction: {d['forward']} forward, {d['backward']} backward")
        if counting.get("gate"):
            g = counting["gate"]
            lines.append(f"reject gate {g['delay_s']:g} s after the line: {g['late']} item(s) decided late, "
                         f"{g['decided_unseen_at_line']} decided on their predicted path (lost just before the line)")
        if c.in_view_at_end:
            lines.append(f"{c.in_view_at_end} tracked item(s) were still short of the line when the source ended "
                         "and are not counted")
        ms = counting["ms_per_frame"]
        lines.append(f"cost per frame: model {ms['model']:.1f} ms, tracking and counting "
                     f"{ms['tracking_and_counting']:.2f} ms")
        if self.item_log is not None:
            lines.append(f"events: {self.item_log.written} line(s) in {self.item_log.path}")
        return lines

    def _on_item(self, item, crop) -> None:
        if self.item_log is not None:
            self.item_log.on_item(item, crop)  # sets item.crop first when it writes the crop
        self._tell("on_item", item.event())

    def _tell(self, what: str, *payload) -> None:
        for listener in list(self.listeners):
            t0 = time.perf_counter()
            try:
                getattr(listener, what)(*payload)
            except Exception as exc:  # a listener never stops the line: log it once, then drop it
                self.listeners.remove(listener)
                log.warning("line listener %s failed in %s (%s: %s); it gets no more events",
                            type(listener).__name__, what, type(exc).__name__, show(exc))
                continue
            if what != "on_close" and time.perf_counter() - t0 > LISTENER_BUDGET_S:  # the end may linger (--serve-wait)
                self.listeners.remove(listener)
                log.warning("line listener %s took %.1f s in %s (more than %g s); it gets no more events",
                            type(listener).__name__, time.perf_counter() - t0, what, LISTENER_BUDGET_S)


def track_frames(predictor: Predictor, source: Source, counter: ItemCounter, *, tracker: ByteTracker | None = None,
                 low: float = 0.1, frames: Iterable[Frame] | None = None,
                 on_tracks: Callable | None = None) -> Iterator[Result]:
    """Track and count over one opened source (see :func:`track`); ``frames``: its frames
    as read ahead by :func:`detect.inference.sources.prefetch` (default: the source itself);
    ``on_tracks(tracks, ended, image)``: each frame's tracks before they are counted (the verdict stage)."""
    if tracker is None:
        tracker = ByteTracker(buffer=max(10, round(source.fps or 30)), motion=BeltMotion(counter.belt))
    start = time.perf_counter()
    last_index, last_time = 0, 0.0
    thresholds = predictor.thresholds
    for result in predictor.predict_frames(source if frames is None else frames, live=source.live, floor=low):
        if result.error or result.image is None:
            yield result
            continue
        t0 = time.perf_counter()
        d = result.detections
        observations = merge_classes(d.boxes, d.scores, d.labels, len(predictor.classes))
        for o in observations:
            o.high = bool((o.class_scores[1:] >= thresholds[1:]).any())
        observations = drop_spanning(observations)  # a box over two neighbours would count them twice
        tracks = tracker.update(observations, thresholds)
        if on_tracks is not None:
            on_tracks(tracks, tracker.removed, result.image)
        index = result.frame.index
        video_time = index / source.fps if source.fps and not source.live else time.perf_counter() - start
        last_index, last_time = index, video_time
        # the frame's capture on the wall clock: a gate's deadline runs from when the camera saw it
        captured = time.time() - (time.perf_counter() - result.frame.captured) if result.frame.captured else None
        lost = [t for t in tracker.tracks if t.confirmed and t.state == LOST] if counter.gate_delay is not None else ()
        items = counter.update(tracks, frame=index, video_time=video_time, source=source.name,
                               image=result.image, ended=tracker.removed, lost=lost, captured=captured)
        shown = [t for t in tracks if t.observation.high]
        result.detections = Detections(
            d.image, np.array([t.observation.box for t in shown]).reshape(-1, 4),
            np.array([t.observation.score for t in shown], np.float64),
            np.array([t.observation.label for t in shown], np.int64))
        result.track_ids = np.array([t.id for t in shown], np.int64)
        result.counted = items
        result.overlay = counter.draw
        result.track_seconds = time.perf_counter() - t0
        yield result
    counter.finish(tracker.finish(), frame=last_index, video_time=last_time, source=source.name)


def track(predictor: Predictor, source: str | Source, counter: ItemCounter | None = None, *, sequence: bool = False,
          recursive: bool = False, low: float = 0.1) -> Iterator[Result]:
    """Results for a video, camera, stream (or, with ``sequence``, images in name order)
    with a track id per detection (``result.track_ids``) and the items counted in each
    frame (``result.counted``); a generator, in constant memory however long it runs.

    ``counter``: an :class:`~detect.line.counting.ItemCounter` (default: the line across the
    middle, belt left to right); its ``on_item`` sees every item, those counted when the
    source ends too. Detections down to ``low`` feed ByteTrack's second association; the
    results show those at or above ``--conf``.

    Raises:
        UsageError: the source is still images and ``sequence`` is not set.
    """
    if counter is None:
        counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.thresholds,
                              line=parse_count_line(None))
    src = open_source(source, recursive=recursive) if isinstance(source, str) else source
    try:
        if src.kind == "images" and not sequence:
            raise UsageError(tracking_needs_frames(src.name))
        yield from track_frames(predictor, src, counter, low=low)
    finally:
        src.close()


def tracking_needs_frames(name: str) -> str:
    """The message for ``--track`` on still images."""
    return (f"{name}: tracking needs a video, a camera, a stream or an ordered frame sequence, and these are "
            "still images; give a video file or a camera, or add --sequence if these images are consecutive "
            "frames of one camera (they are taken in name order: frame_000001.jpg, frame_000002.jpg, ...)")
