"""Tracking and counting without a model: ByteTrack's association rules, the per-item vote,
the counting line, and the whole chain on the ground-truth boxes of a rendered conveyor
with dropped detections, jitter and flickering labels."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest

from detect.common.errors import UsageError
from detect.demo.conveyor import plan_conveyor, render_conveyor
from detect.demo.scene import DEMO_CLASSES
from detect.line.counting import DEFECT_SHARE, CountingLine, ItemCounter, parse_count_line
from detect.line.tracking import ByteTracker, Observation, merge_classes

DEFECTS = ("Lata_defectuosa", "Botella_defectuosa")
THRESH = np.full(len(DEMO_CLASSES) + 1, 0.5)
LABEL = {c: i + 1 for i, c in enumerate(DEMO_CLASSES)}
FLIP = {"Lata": "Lata_defectuosa", "Lata_defectuosa": "Lata", "Botella": "Botella_defectuosa",
        "Botella_defectuosa": "Botella"}


def obs(box, score=0.9, label=1) -> Observation:
    scores = np.zeros(len(DEMO_CLASSES) + 1)
    scores[label] = score
    return Observation(np.asarray(box, float), score, label, scores, high=score >= 0.5)


def step(tracker: ByteTracker, *observations: Observation) -> dict[int, Observation]:
    return {t.id: t.observation for t in tracker.update(list(observations), THRESH)}


def run_chain(plan, *, drop=0.2, jitter=2.0, flip=0.1, seed=0, line="auto", stop_at=None, **counter_args):
    """Feed the conveyor's ground-truth boxes through tracker and counter; returns (items, counter).

    ``drop``: share of detections removed at random; ``jitter``: box noise (px, sd); ``flip``:
    a defective item is called intact in this share of its frames, and every intact item is
    called defective in one frame of its life (one bad frame)."""
    rng = np.random.default_rng(seed)
    bad_frame = {p.id: int(rng.integers(p.start + 5, p.exit(320) - 5)) if flip else -1 for p in plan}
    tracker = ByteTracker(buffer=25)
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(line), **counter_args)
    image = np.zeros((240, 320, 3), np.uint8)
    items, f = [], 0
    for f, _, boxes in render_conveyor(plan, draw=False):
        if stop_at is not None and f > stop_at:
            break
        kept = [b for b in boxes if rng.random() >= drop]
        labels = [LABEL[FLIP[c]] if (c in DEFECTS and rng.random() < flip) or (c not in DEFECTS and f == bad_frame[i])
                  else LABEL[c] for i, c, _ in kept]
        xy = np.array([b for _, _, b in kept], float).reshape(-1, 4) + rng.normal(0, jitter, (len(kept), 4))
        observations = merge_classes(xy, rng.uniform(0.6, 0.95, len(kept)), np.array(labels, int), len(DEMO_CLASSES))
        for o in observations:
            o.high = True
        tracks = tracker.update(observations, THRESH)
        items += counter.update(tracks, frame=f, video_time=f / 25, source="conveyor.mp4", image=image,
                                ended=tracker.removed)
    items += counter.finish(tracker.finish(), frame=f, video_time=f / 25, source="conveyor.mp4")
    return items, counter


# -- ByteTrack's rules


def test_a_low_score_detection_keeps_the_track_and_alone_starts_none() -> None:
    tr = ByteTracker()
    assert list(step(tr, obs([10, 10, 50, 90]))) == [1]  # first frame: confirmed at once
    assert list(step(tr, obs([14, 10, 54, 90], score=0.3))) == [1]  # second association, low score
    assert list(step(tr, obs([18, 10, 58, 90]))) == [1]
    tr2 = ByteTracker()
    step(tr2)
    for x in (10, 14, 18):
        assert step(tr2, obs([x, 10, x + 40, 90], score=0.3)) == {}  # low detections never start a track
    assert tr2.tracks == []


def test_one_stray_detection_makes_no_track_and_a_new_one_needs_its_margin() -> None:
    tr = ByteTracker()
    step(tr)
    assert step(tr, obs([100, 10, 140, 90])) == {}  # unconfirmed
    assert step(tr) == {}  # not seen again: dropped
    assert tr.tracks == []
    assert step(tr, obs([100, 10, 140, 90], score=0.55)) == {} and tr.tracks == []  # 0.55 < 0.5 + 0.1
    step(tr, obs([100, 10, 140, 90]))
    assert list(step(tr, obs([104, 10, 144, 90]))) == [1]  # seen twice: confirmed, id 1


def test_a_lost_track_is_found_again_within_the_buffer_and_forgotten_after() -> None:
    tr = ByteTracker(buffer=5)
    step(tr, obs([10, 10, 50, 90]))
    for x in (14, 18):
        step(tr, obs([x, 10, x + 40, 90]))
    for _ in range(3):  # hidden for 3 frames, still moving 4 px a frame
        assert step(tr) == {}
    assert list(step(tr, obs([34, 10, 74, 90]))) == [1]  # the Kalman prediction found it again
    for _ in range(6):
        step(tr)
    assert [t.id for t in tr.removed] == [1] or tr.tracks == []
    assert list(step(tr, obs([60, 10, 100, 90]))) == []  # a new object now (unconfirmed)


def test_tracking_ignores_the_class_and_merge_folds_one_object_in_two_classes() -> None:
    merged = merge_classes(np.array([[10, 10, 50, 90], [11, 10, 50, 91], [200, 10, 240, 90]], float),
                           np.array([0.8, 0.4, 0.7]), np.array([1, 2, 3]), 4)
    assert len(merged) == 2
    assert merged[0].class_scores[1] == 0.8 and merged[0].class_scores[2] == 0.4
    tr = ByteTracker()
    step(tr, obs([10, 10, 50, 90], label=1))
    assert list(step(tr, obs([14, 10, 54, 90], label=2))) == [1]  # the label flickers: same track


# -- the vote


def vote_counter(defect_frames=2, defect_share=0.0) -> tuple[ItemCounter, ByteTracker]:
    return ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=None, defect_frames=defect_frames, defect_share=defect_share,
                       min_frames=1), ByteTracker()


def vote(counter: ItemCounter, tr: ByteTracker, labels: list[int]):
    """One object moving right, detected in each frame with the given label; its counted item."""
    image = np.zeros((100, 300, 3), np.uint8)
    for i, label in enumerate(labels):
        tracks = tr.update([obs([10 + 2 * i, 10, 50 + 2 * i, 90], score=0.9 if label == 1 else 0.7, label=label)],
                           THRESH)
        counter.update(tracks, frame=i, video_time=i / 25, source="v", image=image)
    [item] = counter.finish(tr.finish(), frame=len(labels), video_time=0, source="v")
    assert item.frames == len(labels)
    return item


@pytest.mark.parametrize("defect_frames_seen, flagged", [(1, False), (2, True)])
def test_one_defect_frame_neither_hides_nor_invents_a_defect(defect_frames_seen, flagged) -> None:
    item = vote(*vote_counter(defect_frames=2), [2] * defect_frames_seen + [1] * 6)
    assert (item.label, item.defect) == (("Lata_defectuosa", True) if flagged else ("Lata", False))


@pytest.mark.parametrize("defect_frames_seen, flagged", [(3, False), (8, False), (9, True), (20, True)])
def test_on_a_long_track_a_defect_needs_its_share_of_the_frames(defect_frames_seen, flagged) -> None:
    # 30 frames at --defect-share 0.3: 9 defect frames flag the item, 8 (or 3) stray ones do not,
    # wherever in the track they fall
    labels = [1] * (30 - defect_frames_seen)
    for k in range(defect_frames_seen):
        labels.insert(k * 30 // defect_frames_seen, 2)
    item = vote(*vote_counter(defect_frames=2, defect_share=0.3), labels)
    assert (item.label, item.defect) == (("Lata_defectuosa", True) if flagged else ("Lata", False))


def test_the_default_share_is_the_counters_and_the_commands() -> None:
    from detect.predict import build_parser

    assert ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=None).defect_share == DEFECT_SHARE
    args = build_parser().parse_args(["--weights", "m.onnx", "--track", "v.mp4"])
    assert args.defect_share == DEFECT_SHARE
    assert DEFECT_SHARE > 0  # long tracks need a share, not only --defect-frames (docs/performance.md)


# -- the line


def test_count_line_parsing_and_bad_lines() -> None:
    assert parse_count_line(None) == CountingLine(0.5, 0, 0.5, 1)
    assert parse_count_line(None, "top-down") == CountingLine(0, 0.5, 1, 0.5)
    assert parse_count_line("none") is None
    assert parse_count_line("160,0,160,240").fractions is False
    for bad, words in (("0.5,0.5,0.5,0.5", "same point"), ("1,2,3", "x1,y1,x2,y2"), ("a,b,c,d", "x1,y1,x2,y2"),
                       ("-1,0,5,5", "leaves the frame")):
        with pytest.raises(UsageError, match=words):
            parse_count_line(bad)
    with pytest.raises(UsageError, match="leaves the 320x240 frame"):
        parse_count_line("400,0,400,240").pixels(320, 240)
    with pytest.raises(UsageError, match="--belt"):
        parse_count_line(None, "sideways")


def test_an_item_that_turns_back_before_the_line_is_not_counted_and_a_crossing_counts_once() -> None:
    counter = ItemCounter(DEMO_CLASSES, DEFECTS, THRESH, line=parse_count_line(None))
    tr = ByteTracker()
    image = np.zeros((240, 320, 3), np.uint8)
    xs = list(range(20, 140, 6)) + list(range(140, 20, -6))  # up to x=160 (centre) and back: never across
    xs_b = list(range(100, 220, 6)) + list(range(220, 100, -6)) + list(range(100, 220, 6))  # across, back, across
    items = []
    for f, (xa, xb) in enumerate(zip(xs, xs_b)):
        tracks = tr.update([obs([xa - 20, 20, xa + 20, 100]), obs([xb - 20, 130, xb + 20, 210], label=3)], THRESH)
        items += counter.update(tracks, frame=f, video_time=f / 25, source="v", image=image)
    items += counter.finish(tr.finish(), frame=f, video_time=f / 25, source="v")
    assert [(i.label, i.direction) for i in items] == [("Botella", "forward")]
    assert counter.directions == {"forward": 1, "backward": 0}


# -- the chain on the rendered conveyor


def test_conveyor_ground_truth_with_dropouts_jitter_and_flicker_counts_exactly() -> None:
    plan = plan_conveyor(24, seed=3)
    items, counter = run_chain(plan, drop=0.2, jitter=2.0, flip=0.1)
    truth = {c: sum(p.label == c for p in plan) for c in DEMO_CLASSES}
    assert counter.counts == truth
    assert len({i.track_id for i in items}) == len(items) == len(plan)  # each item once
    crossings = [p.crossing(320) for p in plan]
    assert [i.frame for i in items] == sorted(i.frame for i in items)  # events in crossing order...
    assert [i.label for i in items] == [p.label for p in plan]  # ...of the items in the order they pass
    assert all(abs(i.frame - c) <= 6 for i, c in zip(items, crossings))
    summary = counter.summary()
    assert summary["items"] == 24 and summary["defective"] == sum(p.defective for p in plan)
    json.dumps(summary)
    event = items[0].event()
    assert set(event) >= {"time", "source", "frame", "video_time", "track_id", "class", "defect", "best_score",
                          "frames_seen", "box", "crop"}


def test_a_video_that_ends_mid_crossing_does_not_count_the_item_half() -> None:
    plan = plan_conveyor(3, seed=1)
    stop = plan[1].crossing(320) - 3  # item 2 is in view, short of the middle
    items, counter = run_chain(plan, drop=0.0, jitter=0.0, flip=0.0, stop_at=stop)
    assert [i.label for i in items] == [plan[0].label] and counter.in_view_at_end >= 1
    items, counter = run_chain(plan, drop=0.0, jitter=0.0, flip=0.0, stop_at=stop, line="none", min_frames=3)
    # with no line, a track the video ends is counted when it has its frames (both end together
    # when the first item is still in view)
    assert sorted(i.label for i in items[:2]) == sorted([plan[0].label, plan[1].label])


def test_without_a_line_tracks_are_counted_when_they_end() -> None:
    plan = plan_conveyor(10, seed=2)
    # a can entering the frame is a 10 px sliver for a few frames, which 2 px jitter can split
    # from its track: --min-frames is the guard against counting that stub
    items, counter = run_chain(plan, line="none", min_frames=10)
    assert counter.counts == {c: sum(p.label == c for p in plan) for c in DEMO_CLASSES}
    assert all(i.direction is None for i in items)


def test_exactly_one_working_cv2() -> None:
    import cv2

    assert cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[0]
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    found = sorted(n for n in names if n.startswith("opencv"))
    assert len(found) == 1, f"more than one OpenCV distribution installed: {found}"


def test_a_box_over_two_neighbours_or_around_a_surer_box_is_left_out_and_a_part_changes_nothing() -> None:
    from detect.line.tracking import Observation, drop_spanning

    def obs(box, score, high=True):
        return Observation(np.array(box, float), score, 1, np.array([0.0, score]), high)

    left, right = obs([200, 150, 340, 320], 0.8), obs([350, 120, 493, 316], 0.75)
    spanning = obs([196, 152, 490, 322], 0.9)  # over both, even surer than either
    assert drop_spanning([left, right, spanning]) == [left, right]
    # the detector's looser guess at one item, reaching into its neighbour
    item, loose = obs([362, 178, 482, 360], 0.74), obs([301, 171, 493, 368], 0.5)
    assert drop_spanning([item, loose]) == [item]
    # a can and the label on it (a small box inside): both stay; so does a surer box around a weaker one
    can, label = obs([100, 100, 160, 220], 0.9), obs([105, 150, 155, 175], 0.95)
    assert drop_spanning([can, label]) == [can, label]
    weak = obs([362, 178, 482, 360], 0.4)
    assert drop_spanning([loose, weak]) == [loose, weak]
    # parts below their class's threshold do not count
    assert drop_spanning([obs(left.box, 0.2, high=False), obs(right.box, 0.2, high=False), spanning])[-1] is spanning
