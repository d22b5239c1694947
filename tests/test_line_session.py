"""The line as a library: :class:`detect.line.session.LineSession` over a rendered conveyor video,
with a detector that reports each frame's true boxes (so items are counted), and its listeners."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from detect.common.types import Detections
from detect.demo.conveyor import plan_conveyor, render_conveyor, write_conveyor
from detect.demo.scene import DEMO_CLASSES
from detect.inference.predictor import Predictor
from detect.inference.sources import open_source
from detect.line.session import LineSession, track

ITEMS, SEED, SPEED, SPACING = 4, 5, 16.0, 100.0


class TruthDetector:
    """A :class:`detect.inference.predictor.Detector` that finds the conveyor's true boxes, frame
    after frame, in the order the video is read (batch 1)."""

    classes = tuple(DEMO_CLASSES)
    info = {"format": "truth"}
    meta: dict = {}
    batch_size = 1

    def __init__(self) -> None:
        plan = plan_conveyor(ITEMS, seed=SEED, speed=SPEED, spacing=SPACING)
        self.frames = [boxes for _, _, boxes in render_conveyor(plan, draw=False)]
        self.calls = 0

    def detect(self, images, keys):
        out = []
        for key in keys:
            boxes = self.frames[self.calls] if self.calls < len(self.frames) else []
            self.calls += 1
            out.append(Detections(key, np.array([b for _, _, b in boxes], float).reshape(-1, 4),
                                  np.full(len(boxes), 0.9), np.array([self.classes.index(c) + 1 for _, c, _ in boxes],
                                                                     np.int64)))
        return out


class Recorder:
    def __init__(self) -> None:
        self.frames, self.items, self.closed = [], [], []

    def on_frame(self, result, counter) -> None:
        self.frames.append((result.frame.index, counter.items, list(result.track_ids)))

    def on_item(self, event: dict) -> None:
        self.items.append(event)

    def on_close(self, summary: dict) -> None:
        self.closed.append(summary)


class Raising(Recorder):
    def on_frame(self, result, counter) -> None:
        super().on_frame(result, counter)
        raise RuntimeError("the page went away")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("line")
    truth = write_conveyor(out, ITEMS, seed=SEED, speed=SPEED, spacing=SPACING)
    assert sum(truth["counts"].values()) == ITEMS
    return out / "conveyor.mp4"


def test_listeners_get_every_frame_item_and_the_end_as_written(video, tmp_path, caplog) -> None:
    predictor = Predictor(TruthDetector(), conf=0.5)
    good, bad, late = Recorder(), Raising(), Recorder()
    session = LineSession(predictor, folder=tmp_path, listeners=[good, bad, late])
    with caplog.at_level(logging.WARNING, logger="detect.line.session"):
        results = list(session.run(open_source(str(video))))
    counting = session.counting()
    summary = session.close({"counting": counting, "frames": len(results)})
    session.close()  # twice: the listeners hear the end once

    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(written) == counting["items"] == sum(counting["per_class"].values()) > 0
    assert good.items == written == late.items  # the same dicts, in the same order
    assert [f[0] for f in good.frames] == [r.frame.index for r in results] == [f[0] for f in late.frames]
    assert good.frames[-1][1] <= counting["items"] and any(ids for _, _, ids in good.frames)
    assert good.closed == late.closed == [summary] and summary["counting"] == counting
    # the raising listener was told once, then dropped, with one warning; the others and the line went on
    assert len(bad.frames) == 1 and bad.items == [] and bad.closed == []
    warnings = [r for r in caplog.records if "Raising" in r.getMessage()]
    assert len(warnings) == 1 and "the page went away" in warnings[0].getMessage()


def test_feed_without_a_folder_still_tells_the_listeners(video) -> None:
    rec = Recorder()
    session = LineSession(TruthPredictor(), line=None, min_frames=3, listeners=[rec])
    session.feed(open_source(str(video)))
    summary = session.close()
    assert summary["counting"]["events"] is None and summary["counting"]["settings"]["count_line"] == "none"
    assert len(rec.items) == summary["counting"]["items"] > 0 and rec.closed == [summary]


def test_track_with_a_counter_of_ones_own_keeps_working(video) -> None:
    from detect.line.counting import ItemCounter, parse_count_line

    predictor = TruthPredictor()
    seen = []
    counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.thresholds,
                          line=parse_count_line(None), on_item=lambda item, crop: seen.append(item))
    results = list(track(predictor, str(video), counter))
    assert results and len(seen) == counter.items > 0


def TruthPredictor() -> Predictor:
    return Predictor(TruthDetector(), conf=0.5)
