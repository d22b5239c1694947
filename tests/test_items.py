"""The item-level score: hand-made tracks and events with known answers, the MOT 1.1 truth as
CVAT exports it (folder and zip), the conveyor writing the same, and ``detect.eval --items``."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest

from detect.common.errors import UsageError
from detect.data.mot import read_mot, write_mot
from detect.demo.scene import DEMO_CLASSES
from detect.scoring.items import read_events, roc, score_items

# item id -> (class, frame it enters); each is in view 8 frames, moving 10 px a frame
ITEMS = {1: ("Lata", 10), 2: ("Lata_defectuosa", 20), 3: ("Botella", 30), 4: ("Botella_defectuosa", 40),
         5: ("Lata", 50), 6: ("Lata", 60)}


def box(item: int, frame: int) -> list[float]:
    x = 10.0 * (frame - ITEMS[item][1])
    return [x, 20.0 * item, x + 40, 20.0 * item + 60]


def truth_rows():
    return [(f, i, c, box(i, f)) for i, (c, start) in ITEMS.items() for f in range(start, start + 8)]


def event(item, after, cls, defect, score, track_id):
    f = ITEMS[item][1] + after
    return {"frame": f, "video_time": f / 25, "box": box(item, f), "class": cls, "defect": defect,
            "defect_score": score, "track_id": track_id, "source": "line.mp4"}


EVENTS = [
    event(1, 3, "Lata", False, 0.1, 1),
    event(2, 4, "Lata_defectuosa", True, 0.9, 2),
    event(3, 2, "Botella", False, 0.3, 3),
    event(3, 6, "Botella", False, 0.2, 4),  # the same item again, under a second id
    event(4, 5, "Botella", False, 0.4, 5),  # a defective bottle called intact
    event(5, 3, "Lata", True, 0.6, 6),  # an intact can flagged: a false reject
    {"frame": 12, "video_time": 0.48, "box": [250, 200, 290, 230], "class": "Lata", "defect": False,
     "defect_score": 0.05, "track_id": 7, "source": "line.mp4"},  # overlaps no item: a phantom
]  # item 6 has no event: missed


@pytest.fixture()
def truth_dir(tmp_path):
    write_mot(tmp_path / "line", truth_rows(), DEMO_CLASSES, fps=25, size=(320, 240), frames=80)
    return tmp_path / "line"


def test_hand_made_tracks_give_the_known_answers(truth_dir) -> None:
    s = score_items(read_mot(truth_dir), EVENTS, rates=(0.01, 0.25))
    assert (s.items, s.events, s.count_error, s.counted, s.missed, s.phantoms) == (6, 7, 1, 5, [6], 1)
    assert s.ids_per_item == 1.2 and s.counted_twice == 1
    assert s.class_right == 4
    assert s.confusion == {"Lata": {"Lata": 2, "missed": 1}, "Lata_defectuosa": {"Lata_defectuosa": 1},
                           "Botella": {"Botella": 1}, "Botella_defectuosa": {"Botella": 1}, "none": {"Lata": 1}}
    assert (s.defective, s.intact, s.flag_recall, s.flag_false_reject) == (2, 4, 0.5, 0.25)
    # defective scores {0.9, 0.4} against intact {0.1, 0.3 (first event), 0.6, missed}: 7 of 8 pairs
    assert s.curve["auc"] == pytest.approx(7 / 8)
    assert s.at_rates == {"0.01": {"recall": 0.5, "threshold": 0.9}, "0.25": {"recall": 1.0, "threshold": 0.4}}
    assert s.latency_frames == {"median": 3.0, "p95": 5.0, "max": 5.0} and s.latency_ms()["median"] == 120.0
    json.dumps(s.as_dict())


def test_roc_counts_an_item_not_counted_as_not_rejected() -> None:
    c = roc(np.array([0.8, -math.inf, 0.2, -math.inf]), np.array([True, True, False, False]))
    assert c["auc"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0, 0, 1, 1)
    # flags only (older events): one step
    s = score_items(read_mot_rows(), [{k: v for k, v in e.items() if k != "defect_score"} for e in EVENTS])
    assert s.scored_by == "defect flag" and s.curve["thresholds"][1] == 1.0


def read_mot_rows():
    from detect.data.mot import MotTruth, MotTrack

    return MotTruth([MotTrack(i, c, np.arange(start, start + 8), np.array([box(i, f) for f in range(start, start + 8)]))
                     for i, (c, start) in ITEMS.items()], list(DEMO_CLASSES), fps=25)


def test_cvat_zip_and_folder_read_the_same_and_bad_rows_name_their_line(truth_dir, tmp_path) -> None:
    folder = read_mot(truth_dir)
    assert [(t.id, t.label, t.first, t.last) for t in folder.tracks] == [
        (i, c, start, start + 7) for i, (c, start) in ITEMS.items()]
    assert folder.fps == 25 and folder.size == (320, 240)
    # CVAT's zip: gt/gt.txt and gt/labels.txt, frame ids from 1, x,y,w,h
    zpath = tmp_path / "task.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(truth_dir / "gt" / "gt.txt", "gt/gt.txt")
        z.write(truth_dir / "gt" / "labels.txt", "gt/labels.txt")
    zipped = read_mot(zpath)
    assert [(t.id, t.label) for t in zipped.tracks] == [(t.id, t.label) for t in folder.tracks]
    assert np.allclose(zipped.tracks[2].boxes, folder.tracks[2].boxes) and zipped.fps is None
    first = (truth_dir / "gt" / "gt.txt").read_text().splitlines()[0].split(",")
    assert first[0] == str(ITEMS[1][1] + 1) and first[4:6] == ["40.00", "60.00"] and first[7] == "1"
    bad = tmp_path / "bad" / "gt"
    bad.mkdir(parents=True)
    (bad / "gt.txt").write_text("1,1,0,0,10,10,1,1,1\n2,1,zero,0,10,10,1,1,1\n")
    with pytest.raises(UsageError, match="line 2: .* not a MOT row"):
        read_mot(bad.parent)
    with pytest.raises(UsageError, match="no gt/gt.txt"):
        read_mot(tmp_path / "nothing")


def test_events_from_two_videos_are_refused_and_a_bad_line_is_named(truth_dir, tmp_path) -> None:
    with pytest.raises(UsageError, match="2 sources"):
        score_items(read_mot(truth_dir), [EVENTS[0], dict(EVENTS[1], source="other.mp4")])
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps(EVENTS[0]) + "\n{not json\n")
    with pytest.raises(UsageError, match="line 2: not an item event"):
        read_events(p)


def test_the_conveyor_writes_its_truth_as_mot(tmp_path) -> None:
    from detect.demo.conveyor import write_conveyor

    t = write_conveyor(tmp_path / "belt", 3, speed=40.0, seed=2)
    mot = read_mot(tmp_path / "belt")
    assert [(tr.id, tr.label) for tr in mot.tracks] == [(i["id"], i["class"]) for i in t["items"]]
    assert mot.fps == 25 and mot.frames == t["frames"]
    assert all(tr.first >= i["enter_frame"] and tr.last < i["exit_frame"] for tr, i in zip(mot.tracks, t["items"]))


def test_eval_items_prints_writes_json_and_a_plot(truth_dir, tmp_path, capsys) -> None:
    from detect.eval import main

    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    code = main(["--items", str(events), "--truth", str(truth_dir), "--json", str(tmp_path / "items.json"),
                 "--report", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0
    assert "count error +1" in out and "ROC AUC 0.875" in out and "decision latency" in out
    data = json.loads((tmp_path / "items.json").read_text())["items"]
    assert data["roc_auc"] == pytest.approx(0.875) and data["ids_per_item"] == 1.2
    from detect.scoring.figures import read_plotted_data

    plotted = read_plotted_data(tmp_path / "report" / "items_roc.png")
    assert plotted["axes"]
    assert main(["--items", str(events)]) == 2
    assert "--truth" in capsys.readouterr().err


# -- the operating point


@pytest.mark.parametrize("rate", [0.005, 0.01, 0.02, 0.05])
def test_the_operating_point_reproduces_the_asked_false_reject_rate(rate) -> None:
    from detect.scoring.items import operating_point

    rng = np.random.default_rng(7)
    intact, defect = rng.beta(2, 5, 4000), rng.beta(5, 2, 800)
    scores = np.r_[intact[:2000], defect[:400]]
    positive = np.r_[np.zeros(2000, bool), np.ones(400, bool)]
    p = operating_point(scores, positive, rate)
    assert p["false_reject"] == pytest.approx(np.floor(rate * 2000) / 2000)  # as many as allowed, no more
    held_out = (intact[2000:] >= p["threshold"]).mean()  # items it was not chosen on
    assert abs(held_out - rate) <= 3 * np.sqrt(rate * (1 - rate) / 2000) + 1 / 2000
    assert p["recall"] == pytest.approx((defect[:400] >= p["threshold"]).mean())


def test_a_false_reject_rate_outside_0_to_half_is_one_usage_error(truth_dir, tmp_path, capsys) -> None:
    from detect.eval import main
    from detect.scoring.items import operating_point

    for bad in (0.0, -0.1, 0.6):
        with pytest.raises(UsageError, match="--max-false-reject"):
            operating_point(np.array([0.1, 0.9]), np.array([False, True]), bad)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    assert main(["--items", str(events), "--truth", str(truth_dir), "--max-false-reject", "0.7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-false-reject 0.7" in err[0]
    # intact scores 0.6, 0.3, 0.1 and one not counted: 1 of 4 may be rejected, so the threshold
    # sits between 0.3 and the next score up (0.4): both defective items (0.9, 0.4) are caught
    assert main(["--items", str(events), "--truth", str(truth_dir), "--max-false-reject", "0.25",
                 "--json", str(tmp_path / "op.json")]) == 0
    assert "defect_score >= 0.35" in capsys.readouterr().out
    point = json.loads((tmp_path / "op.json").read_text())["operating_point"]
    assert (point["threshold"], point["false_reject"], point["recall"]) == (0.35, 0.25, 1.0)


@pytest.mark.parametrize("threshold, flagged", [(0.35, True), (0.45, False)])
def test_a_defect_threshold_flags_items_by_their_defect_score(threshold, flagged) -> None:
    from detect.line.counting import ItemCounter
    from detect.line.tracking import ByteTracker, Observation

    counter = ItemCounter(DEMO_CLASSES, ("Lata_defectuosa", "Botella_defectuosa"), np.full(5, 0.5), line=None,
                          min_frames=1, defect_threshold=threshold)
    tracker = ByteTracker()
    for i in range(5):  # Lata 0.9 in 3 frames, Lata_defectuosa 0.9 in 2: the defect's share is 0.4
        scores = np.zeros(5)
        scores[1 if i < 3 else 2] = 0.9
        o = Observation(np.array([10.0 + 2 * i, 10, 50 + 2 * i, 90]), 0.9, 1 if i < 3 else 2, scores)
        counter.update(tracker.update([o], np.full(5, 0.5)), frame=i, video_time=i / 25, source="v")
    [item] = counter.finish(tracker.finish(), frame=5, video_time=0.2, source="v")
    assert item.defect_score == pytest.approx(0.4)
    assert (item.label, item.defect) == (("Lata_defectuosa", True) if flagged else ("Lata", False))


def test_the_classifiers_probability_and_the_anomaly_score_are_scored_when_the_events_carry_them() -> None:
    # the classifier's defect_probability ranks the items the other way round from the vote's
    # defect_score, and an anomaly score ranks them perfectly: each ROC is its own
    flipped = {2: 0.05, 4: 0.1, 1: 0.8, 3: 0.7, 5: 0.9}
    anomaly = {1: 1.0, 2: 9.0, 3: 2.0, 4: 8.0, 5: 3.0}
    events = []
    for e in EVENTS[:-1]:
        item = next(i for i, (c, start) in ITEMS.items() if start <= e["frame"] < start + 8)
        events.append({**e, "defect_probability": flipped[item], "anomaly": anomaly[item]})
    s = score_items(read_mot_rows(), events)
    assert s.scored_by == "defect_probability"
    # defective {0.05, 0.1} against intact {0.8, 0.7, 0.9, missed}: only the missed item is below them
    assert s.curve["auc"] == pytest.approx(2 / 8)
    assert s.anomaly["roc_auc"] == pytest.approx(1.0) and s.anomaly["defect_recall_at_false_reject"]["0.01"]["recall"] == 1.0
    # one event without a probability (no crop could be cut): the vote's score for all
    events[0]["defect_probability"] = None
    assert score_items(read_mot_rows(), events).scored_by == "defect_score"
    assert score_items(read_mot_rows(), EVENTS).anomaly is None
