"""Tracking at line speed: the belt's motion moves every track before association, so an item
in view for ~6 frames (moving half its width a frame) keeps one id; a belt that moves against
--belt is one line (exit 2), a video that shows each item in one frame one warning line."""

from __future__ import annotations

import numpy as np
import pytest

from detect.common.errors import UsageError
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.demo.scene import DEMO_CLASSES
from detect.line.belt import BeltMotion, frame_shift
from detect.line.counting import ItemCounter, parse_count_line
from detect.line.tracking import ByteTracker, merge_classes

THRESH = np.full(len(DEMO_CLASSES) + 1, 0.5)
LABEL = {c: i + 1 for i, c in enumerate(DEMO_CLASSES)}
DEFECTS = ("Lata_defectuosa", "Botella_defectuosa")


def run_belt(plan, motion, *, jitter=2.0, mirror=False, seed=0):
    """The plan's ground-truth boxes (jittered, mirrored for a right-left belt) through the
    tracker and the counter; returns ({item: {track ids}}, items counted)."""
    rng = np.random.default_rng(seed)
    tracker = ByteTracker(buffer=25, motion=motion)
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(None),
                          belt="right-left" if mirror else "left-right")
    image = np.zeros((240, 320, 3), np.uint8)
    ids: dict[int, set[int]] = {}
    counted, f = [], 0
    for f, _, boxes in render_conveyor(plan, draw=False):
        xy = np.array([b for _, _, b in boxes], float).reshape(-1, 4)
        if mirror:
            xy = np.c_[320 - xy[:, 2], xy[:, 1], 320 - xy[:, 0], xy[:, 3]]
        xy = xy + rng.normal(0, jitter, xy.shape)
        observations = merge_classes(xy, rng.uniform(0.6, 0.95, len(xy)),
                                     np.array([LABEL[c] for _, c, _ in boxes], int), len(DEMO_CLASSES))
        for o in observations:
            o.high = True
        tracks = tracker.update(observations, THRESH)
        for t in tracks:  # the item whose true box this observation is
            j = int(np.argmin(np.abs(xy - t.observation.box).sum(axis=1)))
            ids.setdefault(boxes[j][0], set()).add(t.id)
        counted += counter.update(tracks, frame=f, video_time=f / 25, source="belt", image=image, ended=tracker.removed)
    counted += counter.finish(tracker.finish(), frame=f, video_time=f / 25, source="belt")
    return ids, counted


def frames_per_item(plan) -> float:
    return float(np.mean([p.exit(320) - p.start for p in plan]))


@pytest.mark.parametrize("speed, frames", [(48.0, (5, 9)), (9.0, (35, 45))])
def test_at_six_and_at_forty_frames_per_item_each_item_keeps_one_id_and_is_counted_once(speed, frames) -> None:
    # 48 px a frame: a line's speed, about half an item's width a frame; 9: a slow belt, where
    # a box grows and shrinks over several frames at the edges of the view
    plan = plan_conveyor(20, seed=5, speed=speed)
    assert frames[0] <= frames_per_item(plan) <= frames[1]
    motion = BeltMotion("left-right")
    ids, counted = run_belt(plan, motion)
    assert not motion.too_fast and abs(motion.displacement[0] - speed) < 0.1 * speed
    assert {p.id: len(ids.get(p.id, ())) for p in plan} == {p.id: 1 for p in plan}
    every = [i for s in ids.values() for i in s]
    assert len(every) == len(set(every))  # and no id is shared by two items
    assert [i.label for i in counted] == [p.label for p in plan]


def test_a_given_belt_speed_tracks_as_well_and_a_mirrored_belt_needs_its_direction() -> None:
    plan = plan_conveyor(12, seed=6, speed=48.0)
    ids, counted = run_belt(plan, BeltMotion("right-left", speed=48.0), mirror=True)
    assert all(len(ids.get(p.id, ())) == 1 for p in plan) and len(counted) == len(plan)
    assert all(i.direction == "forward" for i in counted)


def test_a_belt_against_the_motion_seen_is_one_usage_error() -> None:
    plan = plan_conveyor(12, seed=6, speed=48.0)
    with pytest.raises(UsageError, match="--belt left-right: the objects in this video move right-left .*give --belt right-left"):
        run_belt(plan, BeltMotion("left-right"), mirror=True)
    plan = plan_conveyor(12, seed=6, speed=8.0)  # slow: judged the same way
    with pytest.raises(UsageError, match="give --belt left-right"):
        run_belt(plan, BeltMotion("right-left"))


def test_one_frame_per_item_is_one_warning_line(caplog) -> None:
    # A belt faster than the view: each item shows once, wherever the shutter caught it
    rng = np.random.default_rng(1)
    motion = BeltMotion("left-right")
    tracker = ByteTracker(buffer=25, motion=motion)
    for _ in range(60):
        n = int(rng.integers(1, 3))
        x, w = rng.uniform(0, 550, n), rng.uniform(50, 90, n)  # a 640 px view
        y, h = rng.uniform(40, 80, n), rng.uniform(70, 120, n)
        observations = merge_classes(np.c_[x, y, x + w, y + h], np.full(n, 0.9), np.ones(n, int), 4)
        tracker.update(observations, THRESH)
    said = [r.getMessage() for r in caplog.records if "about one frame each" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and motion.too_fast
    # the same boxes carried along at 48 px a frame are a belt (no error): see the first test


def test_the_shift_between_two_frames_follows_the_boxes_not_their_neighbours() -> None:
    prev = np.array([[0, 50, 60, 150], [130, 60, 180, 140], [260, 40, 320, 160]], float)
    cur = prev + [40, 0, 40, 0]  # every item 40 px on; the next item is 130 px behind
    d, support = frame_shift(prev, cur)
    assert np.allclose(d, [40, 0]) and support == 3
    assert frame_shift(prev, np.zeros((0, 4))) is None
    with pytest.raises(UsageError, match="--belt-speed"):
        BeltMotion(speed=-1.0)


def test_an_item_missed_in_its_second_frame_and_confirmed_past_the_line_is_counted_once() -> None:
    # 64 px a frame: first seen left of the middle (x 40), not detected in the next frame,
    # then seen twice right of it: a new track may skip a frame on a belt, and the side it
    # was first seen on counts (without either, this item is never counted)
    tracker = ByteTracker(buffer=25, motion=BeltMotion("left-right", speed=64.0))
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(None))
    image = np.zeros((240, 320, 3), np.uint8)
    items = []
    for f, centre in enumerate([None, 40, None, 168, 232, None, None]):
        observations = [] if centre is None else merge_classes(
            np.array([[centre - 30, 60, centre + 30, 160]], float), np.array([0.9]), np.array([1]), 4)
        tracks = tracker.update(observations, THRESH)
        items += counter.update(tracks, frame=f, video_time=f / 25, source="belt", image=image, ended=tracker.removed)
    items += counter.finish(tracker.finish(), frame=f, video_time=f / 25, source="belt")
    assert [(i.label, i.direction, i.frame) for i in items] == [("Lata", "forward", 3)]


def _lost_before_the_line(gate_delay):
    """An item seen three times left of the middle (x 40, 100, 140 at 50 px a frame), then never
    again: the detector lost it just before the line. Returns (items, counter)."""
    tracker = ByteTracker(buffer=25, motion=BeltMotion("left-right", speed=50.0))
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(None), gate_delay=gate_delay)
    image = np.zeros((240, 320, 3), np.uint8)
    items = []
    for f, centre in enumerate([40, 90, 140, None, None, None, None, None]):
        observations = [] if centre is None else merge_classes(
            np.array([[centre - 30, 60, centre + 30, 160]], float), np.array([0.9]), np.array([2]), 4)
        for o in observations:
            o.high = True
        tracks = tracker.update(observations, THRESH)
        lost = [t for t in tracker.tracks if t.confirmed and t.state == "lost"]
        items += counter.update(tracks, frame=f, video_time=f / 25, source="belt", image=image,
                                ended=tracker.removed, lost=lost)
    items += counter.finish(tracker.finish(), frame=f, video_time=f / 25, source="belt")
    return items, counter


def test_with_a_gate_an_item_lost_just_before_the_line_is_decided_where_the_belt_carries_it() -> None:
    items, counter = _lost_before_the_line(0.45)
    # its predicted centre (140 + 50) crosses the middle (160) in the next frame: decided there,
    # on the three frames it was seen in (a defect each time), and it says it was not seen there
    assert [(i.label, i.defect, i.frame, i.direction) for i in items] == [("Lata_defectuosa", True, 3, "forward")]
    event = items[0].event()
    assert event["seen_at_line"] is False and event["late"] is False and 0 < event["gate_in_ms"] <= 450
    assert counter.summary()["gate"] == {"delay_s": 0.45, "late": 0, "decided_unseen_at_line": 1}
    # without a gate the same item is never counted: silence, which the gate's line cannot take
    items, counter = _lost_before_the_line(None)
    assert items == [] and counter.summary()["gate"] is None


def test_an_event_decided_after_its_gate_deadline_says_late_and_is_still_written() -> None:
    import time

    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(None), gate_delay=0.2)
    tracker = ByteTracker(buffer=25, motion=BeltMotion("left-right", speed=50.0))
    image = np.zeros((240, 320, 3), np.uint8)
    items = []
    for f, centre in enumerate([90, 140, 190]):
        observations = merge_classes(np.array([[centre - 30, 60, centre + 30, 160]], float), np.array([0.9]),
                                     np.array([1]), 4)
        for o in observations:
            o.high = True
        tracks = tracker.update(observations, THRESH)
        # the crossing frame was captured 0.5 s before it is counted: a pipeline 0.3 s behind its gate
        captured = time.time() - (0.5 if f == 2 else 0.0)
        items += counter.update(tracks, frame=f, video_time=f / 25, source="belt", image=image, captured=captured)
    assert len(items) == 1
    event = items[0].event()
    assert event["late"] is True and -320 < event["gate_in_ms"] < -290 and event["seen_at_line"] is True
    assert counter.late == 1
    act_by = __import__("datetime").datetime.fromisoformat(event["act_by"]).timestamp()
    assert abs(act_by - (captured + 0.2)) < 0.002
