"""The study's figures and costs: training curves (results.png, val loss), what each checkpoint
records about its training, the eval table's cost columns, the easy / hard / false-alarm
galleries chosen by their stated rules, and bench/train_modes.py.

Training runs here are tiny (a 6-image devkit, 96 px, one or two epochs, weights=None).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detect import train as T
from detect.model.checkpoint import load_checkpoint, save_checkpoint
from detect.eval import main as eval_main
from detect.scoring.evaluation import TRAINING_KEYS
from detect.common.types import Detections, GroundTruth
from detect.scoring.metrics import detection_confusion
from detect.scoring.figures import read_plotted_data
from detect.scoring.galleries import (
    plot_easiest,
    plot_false_alarms,
    plot_gallery,
    select_easiest,
    select_false_alarms,
    select_hardest,
)
from detect.scoring.report import read_results
from detect.training.run_folder import RESULT_FIELDS, RunFolder, training_mode

from conftest import REPO, TINY_TRAIN, make_devkit

TINY = TINY_TRAIN


def train(data: Path, out: Path, *extra: str) -> int:
    return T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), *TINY, *extra])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One 2-epoch run from scratch: <base>/w/scratch/ and its data <base>/data."""
    base = tmp_path_factory.mktemp("figures")
    data = make_devkit(base / "data", n=6)
    # --val-loss: a CPU recipe leaves it out, and these tests read it back.
    assert train(data, base / "w", "--name", "scratch", "--epochs", "2", "--weights", "none", "--val-loss") == 0
    return base


# --------------------------------------------------------------------------------------
# Training: results.csv, results.png, the checkpoint's records


def test_results_csv_and_png_hold_every_epoch(trained: Path) -> None:
    run = trained / "w" / "scratch"
    rows = csv_rows(run / "results.csv")
    assert list(rows[0]) == RESULT_FIELDS and "val_loss" in RESULT_FIELDS
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["val_loss"]) > 0 and float(r["loss"]) > 0 for r in rows)

    # The figure draws exactly these numbers (read back from the PNG's line data).
    drawn = read_plotted_data(run / "results.png")
    assert drawn["title"] == f"scratch: training curves on {trained / 'data'}"
    losses, maps = drawn["axes"]["loss per epoch"], drawn["axes"]["val mAP@0.5 per epoch"]
    for key, label in (("loss", "train loss (sum)"), ("val_loss", "val loss (sum)"),
                       ("loss_classifier", "train: box classifier"), ("loss_objectness", "train: RPN objectness")):
        assert losses[label]["x"] == [1.0, 2.0]
        assert losses[label]["y"] == pytest.approx([float(r[key]) for r in rows]), label
    assert maps["val mAP@0.5"]["y"] == pytest.approx([float(r["val_map50"]) for r in rows])
    # The best epoch is the first with the highest val mAP (the one kept as best.pt).
    values = [float(r["val_map50"]) for r in rows]
    best = values.index(max(values)) + 1
    (star,) = [v for k, v in maps.items() if k.startswith("best: epoch")]
    assert star["x"] == [best] and load_checkpoint(run / "best.pt")["epoch"] == best - 1


def test_checkpoints_record_cost_mode_and_history(trained: Path) -> None:
    run = trained / "w" / "scratch"
    rows = csv_rows(run / "results.csv")
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    t = last["training"]
    assert set(TRAINING_KEYS) <= set(t)
    assert (t["mode"], t["weights"], t["trainable_layers"], t["max_trainable_layers"]) == ("from scratch", "none", 6, 6)
    assert t["epochs"] == 2 and t["device"] == "cpu" and t["peak_cuda_mb"] is None
    assert t["final_loss"] == pytest.approx(float(rows[-1]["loss"]), abs=1e-5)
    assert t["train_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in rows), abs=0.2)
    assert 100 < t["peak_rss_mb"] < 64_000
    assert [h["epoch"] for h in last["history"]] == [1, 2]
    assert last["history"][1]["val_loss"] == pytest.approx(float(rows[1]["val_loss"]))
    # best.pt describes itself: the history and cost up to its own epoch.
    assert [h["epoch"] for h in best["history"]] == list(range(1, best["epoch"] + 2))
    assert best["training"]["epochs"] == best["epoch"] + 1


def test_feature_extraction_from_a_checkpoint_is_recorded(trained: Path) -> None:
    start = trained / "w" / "scratch" / "best.pt"
    assert train(trained / "data", trained / "w", "--name", "frozen", "--epochs", "1",
                 "--weights", str(start), "--trainable-layers", "0", "--no-val-loss") == 0
    t = load_checkpoint(trained / "w" / "frozen" / "best.pt")["training"]
    assert (t["mode"], t["weights"], t["trainable_layers"], t["epochs"]) == ("feature extraction", str(start), 0, 1)
    # --no-val-loss (the demo recipe's choice): the mAP is measured, the val loss left blank.
    (row,) = csv_rows(trained / "w" / "frozen" / "results.csv")
    assert row["val_loss"] == "" and float(row["val_map50"]) >= 0


def test_training_mode_rule() -> None:
    assert training_mode(weights="none", backbone="resnet50", trainable_layers=5)["mode"] == "from scratch"
    tuned = training_mode(weights="coco (X)", backbone="resnet50", trainable_layers=3)
    assert (tuned["mode"], tuned["trainable_layers"], tuned["max_trainable_layers"]) == ("fine-tuned", 3, 5)
    assert training_mode(weights="w/best.pt", backbone="mobilenet", trainable_layers=0)["mode"] == "feature extraction"
    assert training_mode(weights=None, backbone="mobilenet", trainable_layers=6)["mode"] == "unknown"


def test_results_png_is_redrawn_after_every_epoch(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", {"data": {"root": "somewhere"}})
    row = {"epoch": 1, "loss": 2.0, "loss_classifier": 1.0, "loss_box_reg": 0.5, "loss_objectness": 0.4,
           "loss_rpn_box_reg": 0.1, "lr": "0.001", "val_loss": 1.8, "val_map50": 0.2, "epoch_time_s": 3.0}
    run.add_epoch(row)
    first = read_plotted_data(tmp_path / "r" / "results.png")["axes"]["val mAP@0.5 per epoch"]
    assert first["val mAP@0.5"] == {"x": [1.0], "y": [0.2]}
    run.add_epoch({**row, "epoch": 2, "val_map50": 0.1})
    second = read_plotted_data(tmp_path / "r" / "results.png")["axes"]["val mAP@0.5 per epoch"]
    assert second["val mAP@0.5"] == {"x": [1.0, 2.0], "y": [0.2, 0.1]}
    assert second["best: epoch 1, mAP 0.200"] == {"x": [1.0], "y": [0.2]}


def test_a_run_resumed_from_an_older_results_csv_keeps_its_columns(tmp_path: Path) -> None:
    old = [f for f in RESULT_FIELDS if f != "val_loss"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.csv").write_text(",".join(old) + "\n" + ",".join(["1"] * len(old)) + "\n")
    RunFolder(tmp_path / "r").add_epoch({k: 2 for k in RESULT_FIELDS})
    rows = csv_rows(tmp_path / "r" / "results.csv")
    assert list(rows[1]) == old and rows[1]["epoch"] == "2"
    assert [r["epoch"] for r in read_results(tmp_path / "r" / "results.csv")] == [1, 2]


def test_validation_loss_changes_neither_the_model_nor_the_random_streams(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from detect.data.dataset import DetectionDataset, collate
    from detect.training.engine import validation_loss
    from detect.data.layout import discover
    from detect.model.build import build_model
    from detect.data.records import load_records

    data = make_devkit(tmp_path / "data", n=4)
    records = load_records(discover(data), None)
    loader = DataLoader(DetectionDataset(records, ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"], None),
                        batch_size=3, collate_fn=collate)
    torch.manual_seed(0)
    # From scratch: real BatchNorm layers, whose running statistics a train-mode forward would move.
    model = build_model(backbone="mobilenet", num_classes=5, input_size=96, weights="none",
                        rpn_batch_size_per_image=16, box_batch_size_per_image=16)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    a = validation_loss(model, loader, torch.device("cpu"), seed=5)
    assert set(a) == {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert a["loss"] == pytest.approx(sum(v for k, v in a.items() if k != "loss")) and a["loss"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m.training for m in model.modules())  # modes restored
    assert validation_loss(model, loader, torch.device("cpu"), seed=5) == a  # a function of weights and seed


# --------------------------------------------------------------------------------------
# detect.eval: cost columns, --json, training curves in the report


def test_eval_shows_costs_json_and_training_curves(trained: Path, capsys) -> None:
    from test_eval import make_checkpoint

    run = trained / "w" / "scratch"
    split = json.loads((run / "split.json").read_text())
    old = make_checkpoint(trained / "old" / "best.pt", trained / "data", run="old",
                          classes=["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"],
                          splits={"train": split["train"], "val": split["val"]})
    rep = trained / "rep"
    code = eval_main(["--no-progress", "--weights", str(run / "best.pt"), str(run / "last.pt"), str(old),
                      "--json", str(rep / "e.json"), "--report", str(rep)])
    out = capsys.readouterr().out
    assert code == 0
    header = out.splitlines()[0]
    for column in ("train min", "peak MB", "epochs", "final loss", "mode", "from"):
        assert column in header
    assert "GPU MB" not in header  # no run trained on a GPU
    line = next(ln for ln in out.splitlines() if ln.lstrip("* ").startswith("scratch/last "))
    assert line.split()[-2:] == ["scratch", "none"]
    old_line = next(ln for ln in out.splitlines() if ln.lstrip("* ").startswith("old "))
    assert old_line.split()[-6:] == ["-"] * 6  # an older checkpoint records no cost

    doc = {r["name"]: r for r in json.loads((rep / "e.json").read_text())["results"]}
    last = load_checkpoint(run / "last.pt")["training"]
    assert list(doc["scratch/last"]["training"]) == list(TRAINING_KEYS)
    assert doc["scratch/last"]["training"] == {k: last.get(k) for k in TRAINING_KEYS}
    assert doc["old"]["training"] == dict.fromkeys(TRAINING_KEYS)

    # One figure, every run that has a history; the numbers are the run's results.csv.
    drawn = read_plotted_data(rep / "training_curves.png")["axes"]
    rows = csv_rows(run / "results.csv")
    for name in ("scratch", "scratch/last"):  # best.pt's history is completed from results.csv
        assert drawn["train loss (sum) per epoch"][name]["y"] == pytest.approx([float(r["loss"]) for r in rows])
        assert drawn["val loss (sum) per epoch"][name]["x"] == [1.0, 2.0]
    assert "old" not in drawn["train loss (sum) per epoch"]
    assert drawn["val mAP@0.5 per epoch"]["scratch/last: checkpoint evaluated"]["x"] == [2.0]
    md = (rep / "report.md").read_text()
    assert "![training curves](training_curves.png)" in md and "ranked by the lowest score" in md


# --------------------------------------------------------------------------------------
# Galleries: the images each stated rule picks

CLASSES = ["can", "bottle"]
CAN, BOTTLE = 1, 2


def gt(image: str, boxes, labels, difficult=None) -> GroundTruth:
    return GroundTruth(image, np.array(boxes, float).reshape(-1, 4), np.array(labels, np.int64),
                       None if difficult is None else np.array(difficult, bool))


def det(image: str, boxes, scores, labels) -> Detections:
    return Detections(image, np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(labels, np.int64))


A, B = [10, 10, 40, 40], [50, 10, 80, 60]
TRUTHS = [
    gt("two_found.jpg", [A, B], [CAN, BOTTLE]),          # easy, weakest find 0.90
    gt("one_sure.jpg", [A], [CAN]),                      # easy, weakest find 0.99
    gt("background_alarm.jpg", [A], [CAN]),              # found, plus a false alarm on background
    gt("wrong_class.jpg", [B], [BOTTLE]),                # missed, called a can
    gt("duplicate.jpg", [A], [CAN]),                     # found twice
    gt("empty.jpg", [], []),                             # nothing there, nothing found: not "easy"
    gt("difficult_only.jpg", [A], [CAN], [True]),        # only a difficult object: not "easy"
    gt("low_score.jpg", [A], [CAN]),                     # found below the threshold: a miss
]
DETS = [
    det("two_found.jpg", [A, B], [0.95, 0.90], [CAN, BOTTLE]),
    det("one_sure.jpg", [A, [0, 0, 5, 5]], [0.99, 0.2], [CAN, CAN]),   # the 0.2 box is under --conf
    det("background_alarm.jpg", [A, [60, 60, 90, 75]], [0.97, 0.80], [CAN, BOTTLE]),
    det("wrong_class.jpg", [B], [0.85], [CAN]),
    det("duplicate.jpg", [A, [11, 10, 41, 40]], [0.93, 0.60], [CAN, CAN]),
    det("empty.jpg", [], [], []),
    det("difficult_only.jpg", [A], [0.98], [CAN]),
    det("low_score.jpg", [A, [20, 25, 60, 55]], [0.3, 0.55], [CAN, CAN]),
]


def confusion():
    return detection_confusion(TRUTHS, DETS, classes=CLASSES, score_threshold=0.5, iou_threshold=0.5)


def test_selection_rules_pick_the_stated_images() -> None:
    names = [t.image for t in TRUTHS]
    c = confusion()
    easiest = select_easiest(TRUTHS, DETS, c, classes=CLASSES)
    assert [(names[i], s) for i, s in easiest] == [("one_sure.jpg", 0.99), ("two_found.jpg", 0.90)]
    # Misses + false alarms: wrong_class 2 (a miss and a false can), low_score 2, then 1 each.
    assert [names[i] for i in select_hardest(TRUTHS, c)] == [
        "wrong_class.jpg", "low_score.jpg", "background_alarm.jpg", "duplicate.jpg"]
    alarms = select_false_alarms(TRUTHS, DETS, classes=CLASSES, score_threshold=0.5, iou_threshold=0.5)
    assert [(a.image, a.score, a.kind) for a in alarms] == [
        ("wrong_class.jpg", 0.85, "wrong class"),
        ("background_alarm.jpg", 0.80, "background"),
        ("duplicate.jpg", 0.60, "duplicate"),
        ("low_score.jpg", 0.55, "misplaced"),
    ]
    assert alarms[0].why == "wrong class: the object is a bottle" and alarms[0].box == tuple(map(float, B))
    assert select_false_alarms(TRUTHS, DETS, classes=CLASSES, score_threshold=0.5, iou_threshold=0.5, count=2) == alarms[:2]


def test_galleries_are_written(tmp_path: Path) -> None:
    paths = []
    for t in TRUTHS:
        Image.new("RGB", (96, 80), (90, 90, 90)).save(tmp_path / t.image)
        paths.append(tmp_path / t.image)
    c = confusion()
    png, chosen = plot_easiest(TRUTHS, DETS, paths, c, tmp_path / "easy.png", classes=CLASSES)
    assert png.stat().st_size > 5000 and [TRUTHS[i].image for i, _ in chosen] == ["one_sure.jpg", "two_found.jpg"]
    png, alarms = plot_false_alarms(TRUTHS, DETS, paths, c, tmp_path / "fa.png", classes=CLASSES)
    assert png.stat().st_size > 5000 and len(alarms) == 4
    assert plot_gallery(TRUTHS, DETS, paths, c, tmp_path / "hard.png", classes=CLASSES).stat().st_size > 5000
    perfect = detection_confusion(TRUTHS[:2], DETS[:2], classes=CLASSES)
    assert plot_false_alarms(TRUTHS[:2], DETS[:2], paths[:2], perfect, tmp_path / "none.png", classes=CLASSES) == (None, [])


# --------------------------------------------------------------------------------------
# bench/train_modes.py


def test_train_modes_trains_three_ways_and_compares(tmp_path: Path) -> None:
    from detect.model.build import build_model

    data = make_devkit(tmp_path / "data", n=6)
    torch.manual_seed(0)
    start = build_model(backbone="mobilenet", num_classes=5, input_size=96, weights="none")
    save_checkpoint({"model": start.state_dict(), "model_config": start.config.as_dict(), "classes": ["a", "b", "c", "d"]},
                    tmp_path / "start.pt")
    out = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_modes.py"), "--weights", str(tmp_path / "start.pt"),
         "--data", str(data), "--name", "m", "--out", str(out), "--",
         "--classes", str(data / "classes.txt"), "--epochs", "1", "--no-check", *TINY],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "m-report" / "eval.json").read_text())
    modes = {r["name"]: r["training"] for r in doc["results"]}
    assert {n: (t["mode"], t["trainable_layers"]) for n, t in modes.items()} == {
        "m-scratch": ("from scratch", 6), "m-finetune": ("fine-tuned", 6), "m-features": ("feature extraction", 0)}
    assert modes["m-finetune"]["weights"] == modes["m-features"]["weights"] == str(tmp_path / "start.pt")
    for png in ("training_curves.png", "comparison.png", "report.md"):
        assert (out / "m-report" / png).is_file()
    assert "wall time per mode" in proc.stdout and "features" in proc.stdout


def test_train_modes_refuses_a_missing_starting_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_modes.py"), "--weights", "nope.pt"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "nope.pt: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_importing_the_report_leaves_the_matplotlib_backend_alone() -> None:
    code = ("import matplotlib; matplotlib.use('svg'); import detect.scoring.report; "
            "print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
