"""detect.audit: label audit with a model, picking what to annotate next, K-fold splits.

The detector here is the input, not the thing under test: it implements the
:class:`detect.inference.predictor.Detector` protocol and returns the *clean* ground truth
of a dataset whose annotation files had mistakes planted in them, so the audit must find
exactly those mistakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_sample
from detect import audit as audit_cli
from detect.checks.label_audit import AuditSettings, audit, margin_uncertainty
from detect.common.errors import UsageError
from detect.common.types import Detections
from detect.data.layout import discover, kfold_split, resolve_splits
from detect.data.records import load_records
from detect.data.voc import parse_voc

CLASSES = ("Lata", "Lata_defectuosa")

# Clean truth per image: (class, box). Boxes sit on the 96x80 conftest images.
CLEAN = {
    "a": [("Lata", (5, 5, 30, 40)), ("Lata_defectuosa", (50, 10, 80, 60))],
    "b": [("Lata", (10, 10, 40, 50)), ("Lata", (55, 20, 85, 70))],
    "c": [("Lata_defectuosa", (8, 8, 38, 48)), ("Lata", (52, 12, 82, 62))],
    "d": [("Lata", (20, 15, 50, 60))],
    "e": [("Lata", (5, 5, 35, 45)), ("Lata_defectuosa", (60, 20, 90, 70))],
}
# What the annotation files say instead: one planted mistake in each of a..d.
PLANTED = {
    "a": [CLEAN["a"][0]],                                                       # missing: second box removed
    "b": [("Lata_defectuosa", (10, 10, 40, 50)), CLEAN["b"][1]],                # wrong class
    "c": [CLEAN["c"][0], ("Lata", (62, 22, 92, 72))],                          # loose: shifted by 10 px of 30
    "d": [CLEAN["d"][0], ("Lata", (70, 5, 90, 25))],                            # spurious: a box around nothing
    "e": CLEAN["e"],
}
KIND = {"a": "missing", "b": "wrong_class", "c": "loose", "d": "spurious"}


class TruthDetector:
    """Returns the clean truth of each image (score 0.9), keyed by sample id."""

    batch_size = 2

    def __init__(self, truth=CLEAN, classes=CLASSES, meta=None):
        self.truth, self.classes = truth, tuple(classes)
        self.info = {"format": "test", "run": "truth", "box_score_thresh": 0.05}
        self.meta = meta or {"run": "truth", "classes": list(classes), "data": {}}
        self.seen: list[str] = []

    def detect(self, images, keys):
        out = []
        for image, key in zip(images, keys):
            assert image.ndim == 3 and image.dtype == np.uint8
            self.seen.append(key)
            objs = self.truth.get(Path(key).stem, [])
            label = {c: i + 1 for i, c in enumerate(self.classes)}
            out.append(Detections(key, np.array([b for _, b in objs], float).reshape(-1, 4),
                                  np.full(len(objs), 0.9), np.array([label.get(n, 1) for n, _ in objs], np.int64)))
        return out


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for stem, objects in PLANTED.items():
        write_sample(root, root, stem, objects)
    return root


@pytest.fixture
def use_detector(monkeypatch):
    """Make `detect.audit --weights ...` load the given detector (the loader is not under test)."""
    def install(detector):
        monkeypatch.setattr("detect.inference.loader.load_detector", lambda *a, **k: detector)
        return detector
    return install


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_audit_finds_exactly_the_planted_mistakes(planted, tmp_path, use_detector, capsys):
    use_detector(TruthDetector())
    before = _snapshot(planted)
    review = tmp_path / "review"
    rc = audit_cli.main(["--weights", "model.onnx", "--data", str(planted), "--format", "json", "--out",
                         str(tmp_path / "out"), "--save-xml", str(review), "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    got = {(Path(f["path"]).stem, f["kind"]) for f in doc["findings"]}
    assert got == set(KIND.items())
    by_kind = {f["kind"]: f for f in doc["findings"]}
    assert by_kind["wrong_class"]["code"] == "AUD102" and by_kind["wrong_class"]["model_class"] == "Lata"
    assert by_kind["loose"]["line"] is not None and by_kind["loose"]["class"] == "Lata"
    assert doc["summary"]["gallery"] and Path(doc["summary"]["gallery"]).name == "audit.png"
    # The user's files are untouched; the corrections are the clean truth, in a folder of their own.
    assert _snapshot(planted) == before
    for stem in KIND:
        fixed = parse_voc(review / f"{stem}.xml")
        assert sorted((o.name, tuple(o.box)) for o in fixed.objects) == sorted(
            (n, tuple(map(float, b))) for n, b in CLEAN[stem])
    assert not (review / "e.xml").exists()


def test_top_limits_the_corrections_written(planted, tmp_path, use_detector, capsys):
    use_detector(TruthDetector())
    review = tmp_path / "review"
    rc = audit_cli.main(["--weights", "model.onnx", "--data", str(planted), "--format", "json", "--gallery", "0",
                         "--save-xml", str(review), "--top", "1", "--no-progress"])
    assert rc == 0
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert [p.stem for p in review.rglob("*.xml")] == [Path(finding["path"]).stem]


def test_text_and_github_formats_are_the_checkers(planted, use_detector, capsys, tmp_path):
    use_detector(TruthDetector())
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--gallery", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{planted / 'b.xml'}:") and " AUD102 warning likely wrong class" in line for line in out)
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--gallery", "0", "--format", "github",
                           "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("::warning file=") and "title=AUD10" in line for line in lines)


def test_audit_core_on_clean_data(tmp_path):
    root = tmp_path / "clean"
    for stem, objects in CLEAN.items():
        write_sample(root, root, stem, objects)
    records = load_records(discover(root))
    dets = TruthDetector().detect([np.zeros((2, 2, 3), np.uint8)] * len(records), [r.sample_id for r in records])
    assert audit(records, dets, CLASSES, AuditSettings()).findings == []


def test_model_with_other_classes_is_one_line_exit_2(planted, use_detector, capsys):
    use_detector(TruthDetector(classes=("Botella", "Botella_defectuosa")))
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'Lata'" in err[0] and "Botella" in err[0]


def test_missing_image_is_named(planted, use_detector, capsys):
    use_detector(TruthDetector())
    (planted / "c.jpg").unlink()
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "c.xml" in err and "not found" in err and "Traceback" not in err


def test_warns_when_audited_images_are_in_the_training_split(planted, use_detector, capsys):
    meta = {"run": "r", "data": {"root": str(planted), "splits": {"train": ["a", "b", "c"], "val": ["d", "e"]}}}
    use_detector(TruthDetector(meta=meta))
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--gallery", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "3 of the 5 audited images are in the model's training split" in err and "--folds K --fold I" in err
    # Its val split only: nothing it trained on, no warning, and only those images are run.
    det = use_detector(TruthDetector(meta=meta))
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--split", "val", "--gallery", "0",
                           "--no-progress"]) == 0
    assert "training split" not in capsys.readouterr().err
    assert sorted(det.seen) == ["d", "e"]


def test_select_picks_the_smallest_margins(tmp_path, use_detector, capsys):
    pool = tmp_path / "pool"
    box = (10, 10, 40, 50)
    for stem in ("sure", "torn", "faint", "empty"):
        write_sample(tmp_path / "unused", pool, stem, [("Lata", box)])

    class Controlled(TruthDetector):
        def detect(self, images, keys):
            table = {  # key -> [(label, score)] all on one box
                "sure.jpg": [(1, 0.97)],                    # margin 0.97 - 0.03 = 0.94
                "torn.jpg": [(1, 0.50), (2, 0.45)],         # margin 0.05: intact or defective?
                "faint.jpg": [(2, 0.60)],                   # margin 0.60 - 0.40 (background) = 0.20
                "empty.jpg": [],                            # nothing: ranked last
            }
            return [Detections(k, np.array([box] * len(table[k]), float).reshape(-1, 4),
                               np.array([s for _, s in table[k]]), np.array([lab for lab, _ in table[k]], np.int64))
                    for k in keys]

    use_detector(Controlled())
    out = tmp_path / "out"
    assert audit_cli.main(["--weights", "m.onnx", "--select", "2", "--images", str(pool), "--out", str(out),
                           "--name", "next", "--no-progress"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "torn.jpg" in text[0] and "margin 0.050" in text[0] and "faint.jpg" in text[1]
    picked = out / "next"
    assert sorted(p.name for p in picked.iterdir()) == ["faint.jpg", "faint.xml", "selected.txt", "torn.jpg", "torn.xml"]
    # Pre-annotated at --conf 0.5: torn keeps its Lata 0.50, faint its Lata_defectuosa 0.60.
    assert [o.name for o in parse_voc(picked / "torn.xml").objects] == ["Lata"]
    assert [o.name for o in parse_voc(picked / "faint.xml").objects] == ["Lata_defectuosa"]


def test_margin_measure():
    d = Detections("x", np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], float),
                   np.array([0.7, 0.2, 0.9]), np.array([1, 2, 1]))
    u = margin_uncertainty(d, CLASSES)
    assert u.objects == 2 and u.margin == pytest.approx(0.5)  # 0.7 vs 0.2 (background 0.1)
    assert (u.best, u.runner_up) == ("Lata", "Lata_defectuosa")
    assert margin_uncertainty(Detections("y", np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)), CLASSES).margin == 1.0


def test_select_and_data_are_exclusive(tmp_path, capsys):
    assert audit_cli.main(["--weights", "m.onnx", "--select", "2"]) == 2
    assert "--images" in capsys.readouterr().err
    assert audit_cli.main(["--weights", "m.onnx"]) == 2


def test_save_xml_refuses_the_dataset_folder(planted, use_detector, capsys):
    use_detector(TruthDetector())
    before = _snapshot(planted)
    assert audit_cli.main(["--weights", "m.onnx", "--data", str(planted), "--gallery", "0", "--save-xml",
                           str(planted / "fixed"), "--no-progress"]) == 2
    assert "outside" in capsys.readouterr().err
    assert _snapshot(planted) == before


def test_kfold_is_deterministic_and_covers_every_id_once():
    ids = [f"img_{i:03d}" for i in range(23)]
    folds = [kfold_split(ids, folds=5, fold=i) for i in range(5)]
    assert folds == [kfold_split(list(reversed(ids)), folds=5, fold=i) for i in range(5)]
    vals = [v for f in folds for v in f["val"]]
    assert sorted(vals) == ids  # every id is val exactly once
    assert {len(f["val"]) for f in folds} <= {4, 5}
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and sorted(f["train"] + f["val"]) == ids
    assert folds[0]["val"] != sorted(ids)[:5]  # shuffled, not cut by name
    with pytest.raises(UsageError, match="--fold 5"):
        kfold_split(ids, folds=5, fold=5)
    with pytest.raises(UsageError, match="2 or more"):
        kfold_split(ids, folds=1, fold=0)


def test_resolve_splits_with_folds(planted):
    files = discover(planted)
    seen = []
    for i in range(2):
        splits, source = resolve_splits(files, folds=2, fold=i)
        assert f"fold {i} of 2" in source
        seen += splits["val"]
    assert sorted(seen) == sorted(PLANTED)


def test_train_options_reach_the_config():
    from detect.train import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--folds", "5", "--fold", "2"]))
    assert (cfg.folds, cfg.fold) == (5, 2)


def test_a_model_box_is_quoted_to_a_tenth_of_a_pixel():
    from detect.checks.label_audit import _model_box_text

    assert _model_box_text([257.14263916015625, 127.71810150146484, 358.0, 229]) == "257.1,127.7,358,229"
