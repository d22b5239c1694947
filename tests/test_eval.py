"""detect.eval (the CLI), detect.scoring.evaluation, detect.inference.torch_runtime, detect.scoring.predictions_json (the format), detect.scoring.report.

The checkpoints here hold an untrained model (weights="none"): it scores about 0, and the
tests check the plumbing. Exact numbers come through predictions files, whose AP is known.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from detect.eval import main
from detect.scoring.evaluation import load_eval_set
from detect.data.layout import discover
from detect.common.types import Detections
from detect.scoring.metrics import voc_evaluate
from detect.scoring.predictions_json import PredictionsError, read_predictions, write_predictions
from detect.data.records import sanitize_box
from detect.data.voc import Annotation, Box, VocObject, write_voc

CLASSES = ["bottle", "can"]
BCCD = Path(__file__).resolve().parents[1].parent / "shared/data/bccd"

# Per image: (class, box, difficult). Images 0-3 train, 4-6 val.
OBJECTS = [
    [("can", (10, 12, 40, 50), False)],
    [("bottle", (50, 5, 70, 60), False), ("can", (5, 30, 30, 60), False)],
    [("can", (20, 20, 60, 50), False)],
    [("bottle", (8, 8, 28, 70), False)],
    [("can", (10, 10, 40, 40), False), ("bottle", (60, 10, 85, 70), False)],
    [("can", (30, 30, 70, 60), False), ("can", (0, 0, 12, 12), True)],
    [("bottle", (40, 4, 60, 70), False), ("can", (-5, 50, 20, 90), False)],  # reaches outside: clipped
]
TRAIN, VAL = [f"img_{i}" for i in range(4)], [f"img_{i}" for i in range(4, 7)]


def make_dataset(root: Path) -> Path:
    """A VOC devkit folder: 7 images of 96 x 80 px with coloured boxes, and split lists."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, objs in enumerate(OBJECTS):
        img = Image.fromarray(rng.integers(90, 140, size=(80, 96, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for name, box, _ in objs:
            draw.rectangle(box, fill=(200, 30, 30) if name == "can" else (30, 30, 200))
        img.save(root / "JPEGImages" / f"img_{i}.jpg", quality=92)
        write_voc(Annotation(filename=f"img_{i}.jpg", width=96, height=80,
                             objects=tuple(VocObject(n, Box(*map(float, b)), difficult=d) for n, b, d in objs)),
                  root / "Annotations" / f"img_{i}.xml")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(VAL) + "\n")
    return root


def make_checkpoint(path: Path, data: Path, *, run: str, classes=CLASSES, splits=None) -> Path:
    import torch

    from detect.model.checkpoint import save_checkpoint
    from detect.model.build import build_model

    torch.manual_seed(0)
    # A small proposal budget keeps CPU inference fast; it is stored in model_config, so the
    # CLI rebuilds the same model.
    model = build_model(backbone="mobilenet", num_classes=len(classes) + 1, input_size=128, weights="none",
                        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, box_detections_per_img=20)
    return save_checkpoint({
        "model": model.state_dict(), "model_config": model.config.as_dict(), "classes": list(classes),
        "epoch": 0, "metrics": {"map50": 0.0}, "args": {"val_fraction": 0.2}, "run": run,
        "backbone": "mobilenet",
        "data": {"root": str(data), "images": None, "layout": "devkit",
                 "splits": splits or {"train": TRAIN, "val": VAL}},
    }, path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: data/ and weights/tiny/best.pt (an untrained model)."""
    base = tmp_path_factory.mktemp("project")
    data = make_dataset(base / "data")
    make_checkpoint(base / "weights" / "tiny" / "best.pt", data, run="tiny")
    return base


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


def run_cli(capsys, *argv):
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def perfect_predictions(path: Path, eval_objects=OBJECTS[4:], names=VAL):
    records = [{"image": f"{n}.jpg", "label": c, "score": 0.9, "bbox": list(map(float, b))}
               for n, objs in zip(names, eval_objects) for c, b, _ in objs]
    path.write_text(json.dumps(records))
    return records


# --------------------------------------------------------------------------------------
# The CLI with checkpoints


def test_default_finds_runs_and_writes_table_json_and_report(in_project, capsys, tmp_path):
    import torch

    from detect.model.checkpoint import save_checkpoint

    second = in_project / "weights" / "tiny2" / "best.pt"
    ckpt = torch.load(in_project / "weights" / "tiny" / "best.pt", weights_only=True)
    ckpt["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint({**ckpt, "run": "tiny2"}, second)
    try:
        code, out, err = run_cli(capsys, "--json", str(tmp_path / "e.json"), "--report", str(tmp_path / "rep"))
    finally:
        shutil.rmtree(second.parent)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "backbone", "images"]
    for column in ("VOC mAP50", "COCO mAP", "COCO AP50", "COCO AP75", "bottle", "can", "img/s", "ms/img",
                   "params", "size"):
        assert column in lines[0]
    rows = [ln for ln in lines[2:4]]
    assert sum(r.startswith("* ") for r in rows) == 1  # the best run is marked once
    assert {r.lstrip("* ").split()[0] for r in rows} == {"tiny", "tiny2"}
    assert "Traceback" not in err

    doc = json.loads((tmp_path / "e.json").read_text())
    assert [r["name"] for r in doc["results"]] == [r.lstrip("* ").split()[0] for r in rows]  # sorted as printed
    r = doc["results"][0]
    assert doc["best"] == r["name"] and r["best"] is True
    assert r["backbone"] == "mobilenet"
    assert set(r["voc"]["ap50"]) == set(CLASSES)
    assert isinstance(r["voc"]["map50"], float)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "per_class"):
        assert key in r["coco"]
    assert set(r["coco"]["per_class"]) == set(CLASSES)
    assert r["data"]["images"] == 3 and r["data"]["split"] == "val"
    assert r["data"]["objects"] == {"bottle": 2, "can": 3}  # the difficult can is not counted
    assert r["speed"]["ms_per_image"] > 0 and r["speed"]["images_per_second"] > 0
    assert r["params"] > 1_000_000 and r["checkpoint_bytes"] > 1_000_000
    assert np.array(r["at_conf"]["confusion"]["matrix"]).shape == (3, 3)
    assert r["at_conf"]["confusion"]["labels"] == ["bottle", "can", "background"]

    rep = tmp_path / "rep"
    md = (rep / "report.md").read_text()
    for run in ("tiny", "tiny2"):
        for png in ("pr_curves.png", "confusion.png", "ap_per_class.png"):
            assert (rep / run / png).stat().st_size > 5000
            assert f"({run}/{png})" in md
    assert (rep / "comparison.png").is_file()
    assert "(best) |" in md


def test_explicit_weights_and_split_all(in_project, capsys, tmp_path):
    code, out, err = run_cli(capsys, "--weights", "weights/tiny", "--split", "all",
                             "--json", str(tmp_path / "a.json"), "--conf", "0.3", "--iou", "0.6", "--voc07")
    assert code == 0, err
    r = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert r["data"]["images"] == 7 and r["data"]["split_source"] == "every annotated image"
    assert r["voc"]["iou_threshold"] == 0.6 and r["voc"]["metric"].startswith("11-point")
    assert r["at_conf"]["score_threshold"] == 0.3
    assert "VOC mAP60" in out.splitlines()[0]


def test_classes_differ_from_data(in_project, capsys, tmp_path):
    bad = make_checkpoint(tmp_path / "other" / "best.pt", in_project / "data", run="other", classes=["bottle", "jar"])
    code, out, err = run_cli(capsys, "--weights", str(bad))
    assert code == 1
    assert "'can'" in err and "bottle, jar" in err and "img_" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_broken_checkpoint_fails_alone(in_project, capsys, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    code, out, err = run_cli(capsys, "--weights", str(broken), "weights/tiny/best.pt")
    assert code == 1
    assert str(broken) in err and "Traceback" not in err
    assert out.splitlines()[2].startswith("* tiny")  # the good run is still evaluated and printed


def test_unreadable_image_is_one_message(project, capsys, tmp_path):
    data = shutil.copytree(project / "data", tmp_path / "data")
    (data / "JPEGImages" / "img_5.jpg").write_bytes(b"\xff\xd8 truncated")
    code, out, err = run_cli(capsys, "--weights", str(project / "weights" / "tiny" / "best.pt"), "--data", str(data))
    assert code == 1 and out == ""
    assert "img_5.jpg: cannot be read as an image" in err and "Traceback" not in err


def test_checkpoint_whose_data_moved(project, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    moved = make_checkpoint(tmp_path / "w" / "best.pt", tmp_path / "gone", run="moved")
    code, _, err = run_cli(capsys, "--weights", str(moved))
    assert code == 1 and "pass --data" in err
    # ... and --data points it at the folder: the recorded split is not for that folder, so
    # its own ImageSets/Main lists are used.
    code, out, err = run_cli(capsys, "--weights", str(moved), "--data", str(project / "data"))
    assert code == 0, err
    assert "ImageSets/Main" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--predictions", "x.json"], "--predictions needs --data"),
        (["--split", "test"], "no 'test' split"),
        (["--weights", "nope.pt"], "nope.pt: no such checkpoint"),
        (["--weights-dir", "nowhere"], "no checkpoint found"),
        (["--iou", "0"], "--iou"),
        (["--batch-size", "0"], "--batch-size"),
        (["--data", "no/such/dir", "--predictions", "p.json"], "no such"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "bogus"], "--device"),
        (["--split", "nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(in_project, capsys, argv, message):
    code = None
    try:
        code = main(["--no-progress", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------
# Predictions files through the CLI


def test_perfect_predictions_score_one(project, capsys, tmp_path):
    pred = tmp_path / "perfect.json"
    perfect_predictions(pred)
    code, out, err = run_cli(capsys, "--data", str(project / "data"), "--predictions", str(pred),
                             "--json", str(tmp_path / "p.json"), "--report", str(tmp_path / "rep"))
    assert code == 0, err
    r = json.loads((tmp_path / "p.json").read_text())["results"][0]
    # The clipped box ([-5, 50, 20, 90] -> [0, 50, 20, 80]) still overlaps its prediction by
    # 20 * 30 / (25 * 40) = 0.6, above 0.5: a hit.
    assert r["voc"]["map50"] == 1.0 and r["voc"]["ap50"] == {"bottle": 1.0, "can": 1.0}
    assert r["kind"] == "predictions" and r["speed"] is None and r["params"] is None
    assert r["at_conf"]["per_class"]["can"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 3, "fp": 0, "fn": 0}
    # A prediction on the difficult object would be ignored, not false: none here.
    assert r["at_conf"]["confusion"]["matrix"] == [[2, 0, 0], [0, 3, 0], [0, 0, 0]]
    row = out.splitlines()[2].split()
    assert row[:5] == ["*", "perfect", "predictions", "3", "1.000"] and row[-4:] == ["-", "-", "-", "-"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "No image has a miss or a false alarm" in md  # no gallery for a perfect run


def test_predictions_hand_computed_ap(project, capsys, tmp_path):
    # Val has 3 cans (one more difficult). Cans: a false box ranked first, then the three.
    records = [
        {"image": "img_4.jpg", "label": "can", "score": 0.95, "bbox": [70, 60, 90, 78]},   # FP
        {"image": "img_4.jpg", "label": "can", "score": 0.9, "bbox": [10, 10, 40, 40]},    # TP
        {"image": "img_5", "label": "can", "score": 0.8, "bbox": [0, 0, 12, 12]},          # difficult: ignored
        {"image": "img_5.jpg", "label": "can", "score": 0.7, "bbox": [30, 30, 70, 60]},    # TP
        {"image": "img_6.jpg", "label": "can", "score": 0.6, "bbox": [0, 50, 20, 80]},     # TP
        {"image": "img_6.jpg", "label": "bottle", "score": 0.3, "bbox": [40, 4, 60, 70]},  # TP, below --conf
    ]
    pred = tmp_path / "hand.json"
    pred.write_text(json.dumps(records))
    code, out, err = run_cli(capsys, "--data", str(project / "data"), "--predictions", str(pred),
                             "--json", str(tmp_path / "h.json"))
    assert code == 0, err
    r = json.loads((tmp_path / "h.json").read_text())["results"][0]
    # cans: precision 0, 1/2, 2/3, 3/4 at recall 0, 1/3, 2/3, 1 -> AP = 3/4; bottle: 1 of 2 found, AP 1/2.
    assert r["voc"]["ap50"]["can"] == pytest.approx(0.75, abs=1e-15)
    assert r["voc"]["ap50"]["bottle"] == 0.5
    assert r["voc"]["map50"] == pytest.approx(0.625, abs=1e-15)
    assert r["at_conf"]["per_class"]["bottle"]["tp"] == 0  # 0.3 < --conf 0.5
    assert r["at_conf"]["per_class"]["can"] == {"precision": 0.75, "recall": 1.0, "f1": pytest.approx(6 / 7),
                                                "tp": 3, "fp": 1, "fn": 0}


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"image": "img_4.jpg", "label": "can", "score": 0.5, "bbox": [1, 2, 3, 4]},\n {"image": ',
         "not valid JSON: Expecting value at line 2"),
        ('{"image": "img_4.jpg"}', "must be a list of records"),
        ('[{"image": "img_9.jpg", "label": "can", "score": 0.5, "bbox": [1, 2, 3, 4]}]',
         "record 0: image 'img_9.jpg' is not among the 3 images of the val split"),
        ('[{"image": "img_0.jpg", "label": "can", "score": 0.5, "bbox": [1, 2, 3, 4]}]',
         "(--split all takes every image)"),
        ('[{"image": "img_4.jpg", "label": "can", "score": 0.5, "bbox": [1, 2, 3, 4]},'
         ' {"image": "img_4.jpg", "label": "jar", "score": 0.5, "bbox": [1, 2, 3, 4]}]',
         "record 1: label 'jar' is not a class of the data (bottle, can)"),
        ('[{"image": "img_4.jpg", "label": "can", "score": 0.5, "bbox": [10, 2, 3, 4]}]',
         "record 0: bbox [10, 2, 3, 4] has xmax < xmin"),
        ('[{"image": "img_4.jpg", "label": "can", "score": NaN, "bbox": [1, 2, 3, 4]}]',
         "record 0: score is nan; it must be a finite number"),
        ('[{"image": "img_4.jpg", "label": "can", "score": 0.5, "bbox": [1, 2, 3]}]', "record 0: bbox is [1, 2, 3]"),
        ('[{"image": "img_4.jpg", "label": "can", "bbox": [1, 2, 3, 4]}, 7, 8]',
         "record 0: lacks 'score'"),
    ],
)
def test_bad_predictions_one_clear_message(project, capsys, tmp_path, content, message):
    pred = tmp_path / "bad.json"
    pred.write_text(content)
    code, out, err = run_cli(capsys, "--data", str(project / "data"), "--predictions", str(pred))
    assert code == 1
    assert message in err and str(pred) in err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_bad_predictions_count_the_other_bad_records(tmp_path):
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps([{"image": "a.jpg", "label": "x", "score": s, "bbox": [0, 0, 1, 1]}
                                for s in (0.5, "high", None, 0.2)]))
    with pytest.raises(PredictionsError) as info:
        read_predictions(pred, classes=["x"], images=["a.jpg"])
    assert info.value.index == 1 and info.value.more == 1
    assert str(info.value) == (f"{pred}: record 1: score is 'high'; it must be a finite number "
                               "(1 more record(s) have problems too)")


def test_predictions_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(1)
    boxes = np.sort(rng.uniform(0, 100, size=(5, 4)), axis=1)[:, [0, 1, 2, 3]]
    boxes = np.c_[boxes[:, 0], boxes[:, 1], boxes[:, 0] + 5 + rng.random(5), boxes[:, 1] + 3 + rng.random(5)]
    dets = [Detections("a.jpg", boxes, rng.random(5), np.array([1, 2, 1, 1, 2])),
            Detections("b.jpg", np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))]
    write_predictions(tmp_path / "p.json", dets, ["x", "y"])
    back = read_predictions(tmp_path / "p.json", classes=["x", "y"], images=["a.jpg", "b.jpg"])
    assert [d.image for d in back] == ["a.jpg", "b.jpg"]
    order = np.argsort(-dets[0].scores)
    np.testing.assert_array_equal(back[0].boxes, dets[0].boxes[order])
    np.testing.assert_array_equal(back[0].scores, dets[0].scores[order])
    np.testing.assert_array_equal(back[0].labels, dets[0].labels[order])
    assert back[1].boxes.shape == (0, 4)
    records = json.loads((tmp_path / "p.json").read_text())
    assert set(records[0]) == {"image", "label", "score", "bbox"}


# --------------------------------------------------------------------------------------
# Inference, ground truth


def test_predict_batches_and_times(project):
    from detect.model.build import model_from_checkpoint
    from detect.inference.torch_runtime import predict

    model, ckpt = model_from_checkpoint(project / "weights" / "tiny" / "best.pt")
    paths = sorted((project / "data" / "JPEGImages").glob("*.jpg"))
    dets = predict(model, paths, device="cpu", batch_size=3, progress=False)
    assert [d.image for d in dets] == [p.name for p in paths]
    t = dets.timing
    assert t.images == 7 and t.timed_images == 4  # the first batch of 3 is not timed
    assert t.ms_per_image > 0 and math.isclose(t.images_per_second, 1000 / t.ms_per_image)
    assert t.total_seconds >= t.model_seconds
    for d in dets:
        if len(d.scores):
            assert d.boxes.dtype == np.float64 and d.labels.dtype == np.int64
            assert (d.boxes[:, 2] <= 96 + 1e-3).all() and (d.boxes[:, 3] <= 80 + 1e-3).all()
            assert set(d.labels.tolist()) <= {1, 2}
    # Batching does not change what the model sees: one image at a time gives the same boxes.
    single = predict(model, paths[:2], device="cpu", batch_size=1, progress=False)
    for a, b in zip(single, dets[:2]):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_ground_truth_keys_aliases_and_clipping(project):
    files = discover(project / "data")
    es = load_eval_set(files, VAL, split="val", split_source="test")
    assert es.keys == ["img_4.jpg", "img_5.jpg", "img_6.jpg"]
    assert es.aliases["img_6"] == "img_6.jpg" and es.aliases["JPEGImages/img_6.jpg"] == "img_6.jpg"
    truths = es.truths(CLASSES)
    np.testing.assert_array_equal(truths[2].boxes, [[40, 4, 60, 70], [0, 50, 20, 80]])
    assert truths[1].difficult.tolist() == [False, True]


def test_sanitize_box_is_the_training_rule():
    from detect.data.records import sanitize_objects

    boxes = [(5, 5, 50, 40), (-3, 2, 10, 90), (10, 10, 10.5, 30), (90, 70, 200, 75), (0, 0, 100, 100), (99, 5, 120, 9)]
    objects = [VocObject("x", Box(*map(float, b))) for b in boxes]
    kept, _ = sanitize_objects(objects, width=96, height=80)
    ours = [sanitize_box(b, width=96, height=80) for b in boxes]
    assert [tuple(o.box) for o in kept] == [b for b in ours if b is not None]
    assert ours[2] is None and ours[5] is None


# --------------------------------------------------------------------------------------
# A real dataset


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is not here")
def test_bccd_predictions_are_scored_like_the_metrics(capsys, tmp_path):
    """BCCD's val split from its ImageSets lists: perfect predictions score 1, and a
    degraded set scores exactly what detect.scoring.metrics computes on the same boxes."""
    files = discover(BCCD)
    es = load_eval_set(files, list(files.split_lists["val"]), split="val", split_source="ImageSets/Main")
    classes = sorted(es.class_counts)
    assert classes == ["Platelets", "RBC", "WBC"] and len(es.keys) == 87
    rng = np.random.default_rng(7)
    records = []
    for key, record in zip(es.keys, es.records):
        for name, box in ((o.name, o.box) for o in record.annotation.objects):
            if rng.random() < 0.8:
                jitter = rng.normal(0, 3, 4)
                b = [box[0] + jitter[0], box[1] + jitter[1], box[2] + jitter[2], box[3] + jitter[3]]
                b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
                records.append({"image": key, "label": name, "score": float(rng.random()), "bbox": b})
        records.append({"image": key, "label": "RBC", "score": float(rng.random()), "bbox": [5, 5, 60, 60]})
    pred = tmp_path / "bccd.json"
    pred.write_text(json.dumps(records))
    code, out, err = run_cli(capsys, "--data", str(BCCD), "--predictions", str(pred), "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    got = json.loads((tmp_path / "b.json").read_text())["results"][0]
    dets = read_predictions(pred, classes=classes, images=es.aliases)
    expected = voc_evaluate(es.truths(classes), dets, classes=classes)
    assert got["voc"]["ap50"] == expected.ap and 0.3 < expected.map < 0.95
    assert got["data"]["images"] == 87
