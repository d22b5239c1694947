"""The anomaly score on the line: each counted item's event carries it (from its best crop),
the item is flagged by the verdict or the anomaly, the threshold meets the asked false-reject
rate, and detect.train builds the bank at the end of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detect.common.errors import UsageError
from detect.line.anomaly import ItemAnomaly, anomaly_thresholds, check_supported
from detect.line.counting import CountingLine, ItemCounter
from detect.line.tracking import Observation, Track

torch = pytest.importorskip("torch")

from test_anomaly import can_crop, dented  # noqa: E402  (the sprites and the painted dent)

CLASSES = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
DEFECTS = ["Lata_defectuosa", "Botella_defectuosa"]


def test_threshold_reproduces_the_asked_rate() -> None:
    rng = np.random.default_rng(0)
    scores = {"Lata": rng.gamma(4.0, 10.0, 500), "Botella": rng.normal(50, 5, 200)}
    for rate in (0.01, 0.02, 0.05):
        t = anomaly_thresholds(scores, rate)
        assert (scores["Lata"] >= t["Lata"]).sum() == int(rate * 500)
        assert (scores["Botella"] >= t["Botella"]).sum() == int(rate * 200)


def test_a_rate_too_few_items_cannot_measure_is_one_line() -> None:
    check_supported({"Lata": 100}, 0.01)
    with pytest.raises(UsageError) as e:
        check_supported({"Lata": 100, "Botella": 20}, 0.01)
    assert str(e.value) == ("--max-false-reject 0.01: the val split has 20 intact Botella box(es), too few to choose a "
                            "threshold for 1 % false rejects (at least 100 needed); give a larger rate or more "
                            "validation data")
    with pytest.raises(UsageError, match="above 0 and at most 0.5"):
        anomaly_thresholds({"Lata": [1.0] * 10}, 0.7)


@pytest.fixture(scope="module")
def scorer():
    """A real bank of intact can sprites and its scorer (an untrained MobileNet's features)."""
    from detect.model.anomaly import ItemScorer, PatchFeatures, build_bank
    from detect.model.build import build_model

    torch.manual_seed(0)
    model = build_model(backbone="mobilenet", num_classes=5, input_size=256, weights="none")
    bank = build_bank(PatchFeatures(model, (64, 64)), {"Lata": [can_crop(i) for i in range(10)]}, bank_size=300)
    s = ItemScorer(model, bank)
    intact = [s(c, np.array([[0, 0, c.shape[1], c.shape[0]]]), np.array([1]), CLASSES)[0]
              for c in (can_crop(100 + i) for i in range(20))]  # held-out intact cans
    return s, anomaly_thresholds({"Lata": intact}, 0.05)


def frame_with(crop: np.ndarray, x: int, size=(160, 240)) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame with ``crop`` pasted at column ``x`` (clipped at the edge), and its box."""
    image = np.full((*size, 3), 128, np.uint8)
    h, w = crop.shape[:2]
    x0, x1 = max(0, x), min(size[1], x + w)
    image[40:40 + h, x0:x1] = crop[:, x0 - x:x1 - x]
    return image, np.array([x0, 40, x1, 40 + h], float)


def run_item(counter: ItemCounter, on_tracks, frames: list[tuple[np.ndarray, np.ndarray, float, int]]):
    """One track across the counting line (x = 120) through ``frames`` of (image, box, score, label)."""
    track = Track(np.zeros(8), np.eye(8), start=0, last=0, id=1, confirmed=True)
    items = []
    for i, (image, box, score, label) in enumerate(frames):
        scores = np.zeros(len(CLASSES) + 1)
        scores[label] = score
        track.observation = Observation(box, score, label, scores)
        track.last = i
        if on_tracks is not None:
            on_tracks([track], [], image)
        items += counter.update([track], frame=i, video_time=i / 10, source="belt", image=image)
    return [it.event() for it in items]


def counter_with(anomaly: ItemAnomaly | None) -> tuple[ItemCounter, object]:
    judge, on_tracks = anomaly.compose(None, None) if anomaly is not None else (None, None)
    counter = ItemCounter(CLASSES, DEFECTS, np.full(len(CLASSES) + 1, 0.3), line=CountingLine(0.5, 0, 0.5, 1),
                          judge=judge)
    return counter, on_tracks


def test_events_carry_the_anomaly_and_who_flagged_the_item(scorer) -> None:
    s, thresholds = scorer
    anomaly = ItemAnomaly(s, CLASSES, DEFECTS, thresholds=thresholds, max_false_reject=0.05, flag=True)
    intact, dent = can_crop(1), dented(can_crop(1))  # a can like those of the bank, and its dented twin

    counter, on_tracks = counter_with(anomaly)
    [good] = run_item(counter, on_tracks, [(*frame_with(intact, x), 0.9, 1) for x in (60, 90, 130)])
    assert good["anomaly"] < good["anomaly_threshold"] == round(thresholds["Lata"], 4)
    assert good["anomalous"] is False and good["flagged_by"] == [] and good["defect"] is False
    assert good["class"] == "Lata"

    counter, on_tracks = counter_with(anomaly)
    [bad] = run_item(counter, on_tracks, [(*frame_with(dent, x), 0.9, 1) for x in (60, 90, 130)])
    assert bad["anomaly"] > bad["anomaly_threshold"] and bad["anomalous"] is True
    assert bad["defect"] is True and bad["flagged_by"] == ["anomaly"] and bad["class"] == "Lata_defectuosa"
    assert counter.defective == 1 and counter.counts["Lata_defectuosa"] == 1
    assert anomaly.scored == 2 and anomaly.ms_per_item() > 0  # one crop scored per item, not per frame

    counter, on_tracks = counter_with(anomaly)  # the detector saw a defect; the crop looks intact
    [voted] = run_item(counter, on_tracks, [(*frame_with(intact, x), 0.9, 2) for x in (60, 90, 130)])
    assert voted["defect"] is True and voted["flagged_by"] == ["detector"] and voted["anomalous"] is False

    # without --anomaly-flags the dent is reported anomalous, and the verdict (here the vote: intact) decides
    counter, on_tracks = counter_with(ItemAnomaly(s, CLASSES, DEFECTS, thresholds=thresholds))
    [reported] = run_item(counter, on_tracks, [(*frame_with(dent, x), 0.9, 1) for x in (60, 90, 130)])
    assert reported["anomalous"] is True and reported["defect"] is False and reported["flagged_by"] == []
    assert reported["class"] == "Lata" and counter.defective == 0


def test_the_crop_scored_is_the_surest_one_whole_in_view(scorer) -> None:
    s, thresholds = scorer
    anomaly = ItemAnomaly(s, CLASSES, DEFECTS, thresholds=thresholds)
    intact, dent = can_crop(2), dented(can_crop(2))
    counter, on_tracks = counter_with(anomaly)
    # The dent is seen only cut by the frame's edge, at the best score: the whole intact view is scored.
    [event] = run_item(counter, on_tracks, [(*frame_with(dent, -10), 0.99, 1), (*frame_with(intact, 90), 0.6, 1),
                                            (*frame_with(intact, 130), 0.5, 1)])
    assert event["anomalous"] is False
    counter, on_tracks = counter_with(anomaly)
    [event] = run_item(counter, on_tracks, [(*frame_with(intact, 60), 0.6, 1), (*frame_with(dent, 90), 0.95, 1),
                                            (*frame_with(intact, 130), 0.7, 1)])
    assert event["anomalous"] is True


def test_without_a_bank_events_are_as_before() -> None:
    counter, on_tracks = counter_with(None)
    [event] = run_item(counter, on_tracks, [(*frame_with(can_crop(5), x), 0.9, 1) for x in (60, 90, 130)])
    assert not {"anomaly", "anomaly_threshold", "anomalous", "flagged_by"} & set(event)


def tiny_run(tmp_path: Path, *, val: int = 16) -> Path:
    from conftest import make_devkit, make_tiny_checkpoint

    data = make_devkit(tmp_path / "data", n=48)
    return make_tiny_checkpoint(tmp_path / "run" / "best.pt", data, val=val)


def test_command_stores_the_threshold_and_refuses_an_unsupported_rate(tmp_path, capsys) -> None:
    from detect.anomaly import main
    from detect.model.patchbank import load_bank

    weights = tiny_run(tmp_path)
    assert main(["--weights", str(weights), "--max-false-reject", "0.01", "--crop", "48"]) == 2
    err = capsys.readouterr().err
    assert "too few to choose a threshold for 1 % false rejects" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "best.anomaly.npz").exists()
    assert main(["--weights", str(weights), "--max-false-reject", "0.5", "--crop", "48", "--bank-size", "64"]) == 0
    meta = load_bank(tmp_path / "run" / "best.anomaly.npz").meta
    assert meta["max_false_reject"] == 0.5 and set(meta["thresholds"]) == {"Lata", "Botella"}
    assert all(n >= 2 for n in meta["val_intact"].values())


def test_predict_track_events_carry_the_anomaly_with_a_bank(tmp_path, capsys) -> None:
    from detect.anomaly import main as build
    from detect.demo.conveyor import write_conveyor
    from detect.predict import main as predict

    weights = tiny_run(tmp_path)
    write_conveyor(tmp_path / "belt", 3, speed=16.0, spacing=100.0, seed=4)
    video = str(tmp_path / "belt" / "conveyor.mp4")

    def events(name: str) -> list[dict]:
        assert predict(["--weights", str(weights), video, "--track", "--out", str(tmp_path / "out"), "--name", name,
                        "--no-progress", "--conf", "0.05", "--no-save-images", "--count-line", "none",
                        "--anomaly-flags"]) == 0
        path = tmp_path / "out" / name / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    plain = events("plain")
    assert plain and not any("anomaly" in e or "flagged_by" in e for e in plain)
    assert build(["--weights", str(weights), "--max-false-reject", "0.5", "--crop", "48", "--bank-size", "64"]) == 0
    capsys.readouterr()
    scored = events("scored")
    assert "anomaly: scored from each item's best crop; anomalous at" in capsys.readouterr().err
    assert len(scored) == len(plain)
    for e in scored:
        assert e["anomaly"] is not None and e["anomaly_threshold"] is not None
        assert e["anomalous"] == (e["anomaly"] >= e["anomaly_threshold"])
        assert ("anomaly" in e["flagged_by"]) == e["anomalous"] and e["defect"] == bool(e["flagged_by"])


def test_training_builds_the_bank_and_no_anomaly_skips_it(tmp_path, capsys) -> None:
    from conftest import TINY_TRAIN_WITH_BANK as TINY_TRAIN, make_devkit

    import detect.train as T
    from detect.model.patchbank import load_bank

    data = make_devkit(tmp_path / "data", n=48)  # 12 val images: a few intact boxes per class
    argv = ["--data", str(data), "--classes", str(data / "classes.txt"), "--epochs", "1", "--weights", "none",
            *TINY_TRAIN, "--out", str(tmp_path / "w")]
    assert T.main([*argv, "--name", "skip", "--no-anomaly"]) == 0
    assert not (tmp_path / "w" / "skip" / "best.anomaly.npz").exists()
    assert "anomaly bank" not in capsys.readouterr().out
    assert T.main([*argv, "--name", "built", "--anomaly-max-false-reject", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert "anomaly bank:" in out, err
    bank = load_bank(tmp_path / "w" / "built" / "best.anomaly.npz")
    assert bank.meta["max_false_reject"] == 0.5 and set(bank.meta["thresholds"]) == {"Lata", "Botella"}
    assert (tmp_path / "w" / "built" / "best.anomaly.onnx").is_file()


def test_a_bank_that_cannot_be_built_does_not_fail_training(tmp_path, capsys) -> None:
    from conftest import TINY_TRAIN_WITH_BANK as TINY_TRAIN, make_devkit

    import detect.train as T

    data = make_devkit(tmp_path / "data", n=6)  # 2 to 5 intact boxes a class: too few for a bank
    assert T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--epochs", "1", "--weights", "none",
                   *TINY_TRAIN, "--out", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "anomaly" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: no anomaly bank for")
    assert (tmp_path / "w" / "mobilenet" / "best.pt").is_file()
    assert not (tmp_path / "w" / "mobilenet" / "best.anomaly.npz").exists()
