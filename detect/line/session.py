"""The track loop: a predictor's results over a video, camera or frame sequence, with a track
id per detection and the items counted as they cross the line.

:func:`track` opens a source and runs :func:`track_frames` over it; both are generators that
run in constant memory however long the source is.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np

from detect.common.errors import UsageError
from detect.common.types import Detections
from detect.inference.predictor import Predictor, Result
from detect.inference.sources import Frame, Source, open_source
from detect.line.counting import ItemCounter, parse_count_line
from detect.line.tracking import ByteTracker, merge_classes

__all__ = ["track", "track_frames", "tracking_needs_frames"]


def track_frames(predictor: Predictor, source: Source, counter: ItemCounter, *, tracker: ByteTracker | None = None,
                 low: float = 0.1, frames: Iterable[Frame] | None = None) -> Iterator[Result]:
    """Track and count over one opened source (see :func:`track`); ``frames``: its frames
    as read ahead by :func:`detect.inference.sources.prefetch` (default: the source itself)."""
    if tracker is None:
        tracker = ByteTracker(buffer=max(10, round(source.fps or 30)))
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
        tracks = tracker.update(observations, thresholds)
        index = result.frame.index
        video_time = index / source.fps if source.fps and not source.live else time.perf_counter() - start
        last_index, last_time = index, video_time
        items = counter.update(tracks, frame=index, video_time=video_time, source=source.name,
                               image=result.image, ended=tracker.removed)
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
