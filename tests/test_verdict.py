"""The verdict stage: a classifier on each item's crop, trained from the VOC boxes, its frames
combined per item, stored beside the detector and checked against its classes, and the
threshold chosen for a false-reject rate."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import CLASSES, make_devkit
from detect.common.errors import UsageError
from detect.data.layout import discover
from detect.data.records import load_records
from detect.data.voc import Annotation, Box, VocObject, write_voc
from detect.line.verdict import ItemVerdicts, combine, threshold_for_false_reject


def records_of(root: Path):
    return load_records(discover(root))


def test_letterbox_keeps_the_aspect_and_crop_item_adds_the_margin() -> None:
    from detect.model.verdict import crop_item, letterbox

    image = np.zeros((100, 200, 3), np.uint8)
    assert crop_item(image, [50, 20, 70, 60], 0.1).shape == (48, 24, 3)  # 40 x 20 box + 10 % a side
    assert crop_item(image, [195, 95, 260, 130], 0.0).shape == (5, 5, 3)  # clipped to the image
    assert crop_item(image, [300, 300, 320, 320]) is None
    tall = np.full((60, 20, 3), 255, np.uint8)
    square = letterbox(tall, 30)
    assert square.shape == (30, 30, 3)
    assert (square[:, 15] == 255).all() and (square[:, 0] == 124).all()  # 10 px wide, grey either side


def test_train_verdict_runs_on_a_tiny_devkit_and_round_trips(tmp_path: Path) -> None:
    import torch

    from detect.model.verdict import load_verdict, save_verdict
    from detect.training.verdict import train_verdict

    records = records_of(make_devkit(tmp_path / "data", n=6))
    verdict = train_verdict(records, CLASSES, arch="mobilenet_v3_small", size=32, batch_size=4, epochs=1, max_iters=2)
    assert verdict.defect_classes == ["Lata_defectuosa", "Botella_defectuosa"]
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 40, 50], [50, 20, 90, 70], [200, 200, 210, 210]], np.float64)
    probs = verdict.probabilities(image, boxes)
    assert probs.shape == (3, 4) and np.allclose(probs[:2].sum(1), 1) and np.isnan(probs[2]).all()
    path = save_verdict(verdict, tmp_path / "verdict.pt")
    again = load_verdict(path, CLASSES)
    assert np.allclose(again.probabilities(image, boxes[:2]), probs[:2], atol=1e-6)
    assert set(torch.load(path, weights_only=True)) == {"metadata", "state_dict"}


def _disc(dented: bool, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    img = np.full((size, size, 3), 90, np.uint8)
    r = int(rng.integers(18, 26))
    c = (size // 2 + int(rng.integers(-3, 4)), size // 2 + int(rng.integers(-3, 4)))
    cv2.circle(img, c, r, (190, 190, 200), -1)
    if dented:  # a dark notch on the rim: a few pixels, as a dent is
        a = rng.uniform(0, 2 * np.pi)
        p = (int(c[0] + 0.8 * r * np.cos(a)), int(c[1] + 0.8 * r * np.sin(a)))
        cv2.circle(img, p, 5, (40, 40, 40), -1)
    return img


def _write_discs(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        dented = i % 2 == 1
        img = _disc(dented, rng)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"d{i:03d}.png"), img)
        ann = Annotation(filename=f"d{i:03d}.png", width=64, height=64,
                         objects=(VocObject("Lata_defectuosa" if dented else "Lata", Box(6.0, 6.0, 58.0, 58.0)),))
        write_voc(ann, root / "Annotations" / f"d{i:03d}.xml")
    return root


def test_the_classifier_learns_dented_from_plain_well_above_chance(tmp_path: Path) -> None:
    from detect.training.verdict import train_verdict

    train = records_of(_write_discs(tmp_path / "train", 48, seed=1))
    test = records_of(_write_discs(tmp_path / "test", 24, seed=2))
    verdict = train_verdict(train, ["Lata", "Lata_defectuosa"], arch="small_cnn", size=48, epochs=12, batch_size=16,
                            lr=1e-2, seed=0)
    right = 0
    for r in test:
        image = cv2.cvtColor(cv2.imread(str(r.image)), cv2.COLOR_BGR2RGB)
        o = r.annotation.objects[0]
        p = verdict.defect_probability(verdict.probabilities(image, np.array([list(o.box)])))[0]
        right += (p >= 0.5) == (o.name == "Lata_defectuosa")
    assert right >= 0.8 * len(test), f"{right} of {len(test)} right"


def test_a_classifier_for_other_classes_is_refused_in_one_line(tmp_path: Path) -> None:
    from detect.model.build import build_model  # noqa: F401  (the detector's layer loads)
    from detect.model.verdict import VerdictClassifier, VerdictError, build_verdict, load_verdict, save_verdict

    v = VerdictClassifier(build_verdict(2, arch="small_cnn"), ["cat", "dog"], [], arch="small_cnn")
    path = save_verdict(v, tmp_path / "verdict.pt")
    with pytest.raises(VerdictError) as exc:
        load_verdict(path, CLASSES)
    assert "\n" not in str(exc.value) and "cat, dog" in str(exc.value) and "Lata" in str(exc.value)
    assert issubclass(VerdictError, UsageError) and VerdictError.exit_code == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VerdictError, match="not a verdict classifier file"):
        load_verdict(tmp_path / "junk.pt", CLASSES)


def test_mean_log_odds_combines_frames() -> None:
    assert combine([0.9, 0.9, 0.9]) == pytest.approx(0.9)
    assert combine([0.9, 0.1]) == pytest.approx(0.5)
    assert combine([0.99, 0.6, 0.6, 0.6]) > 0.6 > combine([0.01, 0.6, 0.6, 0.6])
    assert np.isnan(combine([float("nan")]))


class _Fixed:
    """A classifier whose defect probability is the box's xmin / 100: known answers."""

    classes = ["Lata", "Lata_defectuosa"]
    threshold = 0.5

    def probabilities(self, image, boxes):
        p = np.asarray(boxes)[:, 0] / 100
        return np.stack([1 - p, p], 1)

    def defect_probability(self, probs):
        return probs[:, 1]


def test_item_verdicts_follow_each_track_and_stop_at_max_frames() -> None:
    v = ItemVerdicts(_Fixed(), max_frames=2)
    image = np.zeros((10, 10, 3), np.uint8)
    v.observe([1, 2], np.array([[90, 0, 95, 5], [10, 0, 15, 5]]), image)
    v.observe([1, 2], np.array([[90, 0, 95, 5], [10, 0, 15, 5]]), image)
    v.observe([1, 2], np.array([[1, 0, 5, 5], [99, 0, 100, 5]]), image)  # past max_frames: ignored
    one, two = v.judge(1), v.judge(2)
    assert one["defect"] and one["defect_probability"] == pytest.approx(0.9) and one["verdict_frames"] == 2
    assert not two["defect"] and two["defect_probability"] == pytest.approx(0.1)
    assert v.judge(3)["defect_probability"] is None and not v.judge(3)["defect"]


@pytest.mark.parametrize("rate", [0.005, 0.01, 0.02, 0.05, 0.2])
def test_the_threshold_reproduces_the_asked_false_reject_rate(rate: float) -> None:
    rng = np.random.default_rng(0)
    intact = rng.beta(2, 8, 2000)  # held-out good items' defect probabilities
    t = threshold_for_false_reject(intact, rate)
    flagged = (intact >= t).mean()
    assert flagged <= rate and flagged > rate - 1 / len(intact) - 1e-12
    fresh = rng.beta(2, 8, 20000)  # new items from the same line: near the asked rate
    assert abs((fresh >= t).mean() - rate) < max(0.005, 0.3 * rate)
    single = intact.astype(np.float32)  # a classifier's float32 scores keep the rate too
    assert (single >= threshold_for_false_reject(single, rate)).mean() <= rate


@pytest.mark.parametrize("rate", [0, -0.1, 0.51, 1.0, float("nan")])
def test_a_false_reject_rate_outside_the_range_is_a_usage_error(rate: float) -> None:
    with pytest.raises(UsageError, match="max-false-reject"):
        threshold_for_false_reject([0.1, 0.2], rate)


def test_detect_train_verdict_saves_verdict_pt_beside_best_pt(tmp_path: Path, torch_home: Path) -> None:
    from conftest import TINY_TRAIN
    from detect import train as T
    from detect.model.verdict import load_verdict

    data = make_devkit(tmp_path / "data", n=12)
    code = T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(tmp_path / "w"),
                   "--epochs", "1", "--weights", "none", *TINY_TRAIN, "--verdict", "--verdict-epochs", "1",
                   "--max-false-reject", "0.5"])  # --verdict-arch auto: no ImageNet weights -> the small CNN
    assert code == 0
    run = tmp_path / "w" / "mobilenet"
    v = load_verdict(run / "verdict.pt", CLASSES)
    assert (run / "best.pt").is_file() and v.max_false_reject == 0.5 and v.info["val_crops"] > 0
    assert v.arch == "small_cnn"
    _the_export_carries_the_classifier_and_the_line_runs_it_without_torch(run, v, tmp_path)


def _the_export_carries_the_classifier_and_the_line_runs_it_without_torch(run: Path, v, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys
    import textwrap

    from conftest import NO_TORCH
    from detect import export as E
    from detect.demo.conveyor import write_conveyor
    from detect.model.verdict_onnx import OnnxVerdict, VerdictError

    assert E.main(["--weights", str(run / "best.pt")]) == 0
    onnx = OnnxVerdict(run / "verdict.onnx", CLASSES)
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 60, 100], [70, 20, 150, 110]], np.float64)
    assert np.allclose(onnx.probabilities(image, boxes), v.probabilities(image, boxes), atol=1e-5)
    assert (onnx.threshold, onnx.max_false_reject, onnx.size) == (v.threshold, v.max_false_reject, v.size)
    with pytest.raises(VerdictError, match="not the detector's"):
        OnnxVerdict(run / "verdict.onnx", ["cat", "dog"])
    # a second export into the same folder would replace it: the one --overwrite rule
    assert E.main(["--weights", str(run / "best.pt")]) == 2
    write_conveyor(tmp_path / "belt", 2, speed=16.0, spacing=100.0, seed=4)
    code = NO_TORCH + textwrap.dedent(f"""
        import detect.predict
        code = detect.predict.main(["--weights", {str(run / 'best.onnx')!r}, {str(tmp_path / 'belt' / 'conveyor.mp4')!r},
                                    "--track", "--conf", "0.01", "--out", {str(tmp_path / 'p')!r}, "--no-progress",
                                    "--no-save-images"])
        assert "torch" not in sys.modules
        print("exit", code)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert "exit 0" in done.stdout, done.stdout + done.stderr
    assert "verdict: classifier (small_cnn on onnxruntime" in done.stderr
    events = (tmp_path / "p" / "mobilenet" / "events.jsonl")
    for line in events.read_text().splitlines() if events.exists() else []:
        assert json.loads(line)["verdict"] in ("classifier", "detector vote")


@pytest.mark.parametrize("value", ["0", "0.6", "-1", "abc"])
def test_detect_train_refuses_a_false_reject_rate_outside_the_range(value: str, capsys) -> None:
    from detect import train as T

    with pytest.raises(SystemExit) as exc:
        T.main(["--verdict", "--max-false-reject", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--max-false-reject" in err and "Traceback" not in err


def test_max_false_reject_without_verdict_is_a_usage_error(tmp_path: Path, capsys) -> None:
    from detect import train as T

    assert T.main(["--max-false-reject", "0.01", "--out", str(tmp_path)]) == 2
    assert "add --verdict" in capsys.readouterr().err


class _Constant:
    """A classifier that calls every crop defective with probability ``p`` and records the crops' frames."""

    classes = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
    defect_classes = ["Lata_defectuosa", "Botella_defectuosa"]
    arch, size, max_false_reject = "constant", 8, None

    def __init__(self, p: float, threshold: float = 0.5) -> None:
        self.p, self.threshold, self.shapes = p, threshold, []

    def probabilities(self, image, boxes):
        self.shapes.append(image.shape)
        out = np.zeros((len(boxes), 4))
        out[:, 0], out[:, 1] = 1 - self.p, self.p
        return out

    def defect_probability(self, probs):
        return probs[:, 1] + probs[:, 3]


@pytest.mark.parametrize("p", [0.9, 0.1])
def test_the_line_judges_items_with_the_classifier_when_it_has_one(p: float, tmp_path: Path) -> None:
    import json

    from test_line_session import ITEMS, SEED, SPACING, SPEED, TruthDetector
    from detect.demo.conveyor import write_conveyor
    from detect.inference.predictor import Predictor
    from detect.inference.sources import open_source
    from detect.line.session import LineSession

    write_conveyor(tmp_path / "v", ITEMS, seed=SEED, speed=SPEED, spacing=SPACING)
    classifier = _Constant(p)
    session = LineSession(Predictor(TruthDetector(), conf=0.5), folder=tmp_path / "out", verdict=classifier)
    session.feed(open_source(str(tmp_path / "v" / "conveyor.mp4")))
    counting = session.counting()
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) == counting["items"] > 0 and "verdict: classifier" in session.verdict_note
    assert all(e["verdict"] == "classifier" and e["defect_probability"] == pytest.approx(p) for e in events)
    assert all(e["defect"] == (p > 0.5) and ("defectuosa" in e["class"]) == (p > 0.5) for e in events)
    assert counting["defective"] == (len(events) if p > 0.5 else 0)  # the counts follow the verdict
    assert classifier.shapes and all(s == (240, 320, 3) for s in classifier.shapes)  # whole frames, not the model's input


def test_without_a_classifier_the_line_votes_and_says_so(tmp_path: Path) -> None:
    from test_line_session import TruthDetector
    from detect.inference.predictor import Predictor
    from detect.line.session import LineSession

    session = LineSession(Predictor(TruthDetector(), conf=0.5), folder=tmp_path)
    assert session.verdict_note.startswith("verdict: detector vote")


def test_the_classifier_judges_items_counted_when_their_track_ends_and_on_every_source(tmp_path: Path) -> None:
    # --count-line none counts a track in the frame it ends, and a second video numbers its
    # tracks from 1 again: both used to fall back to the detector's vote
    import json

    from test_line_session import ITEMS, SEED, SPACING, SPEED, TruthDetector
    from detect.demo.conveyor import write_conveyor
    from detect.inference.predictor import Predictor
    from detect.inference.sources import open_source
    from detect.line.session import LineSession

    write_conveyor(tmp_path / "v", ITEMS, seed=SEED, speed=SPEED, spacing=SPACING)
    predictor = Predictor(TruthDetector(), conf=0.5)
    session = LineSession(predictor, folder=tmp_path / "out", verdict=_Constant(0.9), line=None)
    for _ in range(2):
        predictor.detector.calls = 0  # the same video again: the true boxes from its first frame
        session.feed(open_source(str(tmp_path / "v" / "conveyor.mp4")))
    session.counting()
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) >= 2 * ITEMS - 2 and {e["source"] for e in events} == {str(tmp_path / "v" / "conveyor.mp4")}
    assert [e["verdict"] for e in events] == ["classifier"] * len(events)


def test_a_defect_threshold_is_the_classifiers_threshold_when_the_line_has_one(tmp_path: Path) -> None:
    import json

    from test_line_session import ITEMS, SEED, SPACING, SPEED, TruthDetector
    from detect.demo.conveyor import write_conveyor
    from detect.inference.predictor import Predictor
    from detect.inference.sources import open_source
    from detect.line.session import LineSession

    write_conveyor(tmp_path / "v", ITEMS, seed=SEED, speed=SPEED, spacing=SPACING)
    for threshold, defect in ((None, True), (0.7, False), (0.55, True)):
        folder = tmp_path / f"out{threshold}"
        session = LineSession(Predictor(TruthDetector(), conf=0.5), folder=folder, verdict=_Constant(0.6),
                              defect_threshold=threshold)
        session.feed(open_source(str(tmp_path / "v" / "conveyor.mp4")))
        session.counting()
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        assert events and all(e["defect"] is defect and e["verdict"] == "classifier" for e in events)
        assert ("(--defect-threshold)" in session.verdict_note) == (threshold is not None)
