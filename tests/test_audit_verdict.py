"""The label audit's intact-vs-defective findings from the verdict classifier (verdict.pt beside the model).

The classifier here is a real ``small_cnn`` whose weights are set by hand so that it reads the
crop's colour: red items are defective, blue ones intact (its defect probability is a sigmoid
of the red-minus-blue area). The images are drawn from the truth, the XML says the labels, so
a label that contradicts the item's colour is a mistake the classifier can see.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detect import audit as audit_cli
from detect.checks.label_audit import AuditSettings, ItemVerdicts, audit, defect_pairs
from detect.common.types import Detections
from detect.data.layout import discover
from detect.data.records import load_records
from detect.data.voc import Annotation, Box, VocObject, write_voc
from detect.model.verdict import VerdictClassifier, build_verdict, save_verdict

CLASSES = ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")
RED, BLUE = (230, 20, 20), (20, 20, 230)
BOX, BOX2 = (10, 10, 40, 50), (55, 15, 85, 65)

# stem -> [(label in the XML, box, item colour in the image, the detector's class at 0.9)]
SCENE = {
    "a": [("Lata", BOX, RED, "Lata")],                               # dented, labelled intact: the classifier sees it
    "b": [("Lata_defectuosa", BOX, BLUE, "Lata_defectuosa")],         # intact, labelled dented: the classifier sees it
    "c": [("Lata", BOX, BLUE, "Lata_defectuosa")],                    # the detector's intact/defect doubt, overruled
    "d": [("Botella", BOX, BLUE, "Lata")],                            # can vs bottle: still the detector's rule
    "e": [("Lata_defectuosa", BOX, RED, "Lata_defectuosa"), ("Lata", BOX2, BLUE, "Lata")],  # all agree
}


def colour_verdict(classes=CLASSES, threshold: float = 0.5) -> VerdictClassifier:
    """small_cnn with hand-set weights: channel 0 = relu(r - b), channel 1 = relu(b - r) in 0..1
    RGB, carried through the four blocks; defect logits +k (c0 - c1), intact ones -k (c0 - c1)."""
    model = build_verdict(len(classes), arch="small_cnn")
    blocks = [m for m in model if isinstance(m, torch.nn.Sequential)]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for i, block in enumerate(blocks):
            conv, bn = block[0], block[1]
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            if i == 0:  # undo ImageNet's normalisation: r - b = 0.229 R' - 0.225 B' + 0.485 - 0.406
                conv.weight[0, 0, 1, 1], conv.weight[0, 2, 1, 1] = 0.229, -0.225
                conv.weight[1, 0, 1, 1], conv.weight[1, 2, 1, 1] = -0.229, 0.225
                bn.bias[0], bn.bias[1] = 0.079, -0.079
            else:
                conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        head = model[-1]
        for k, c in enumerate(classes):
            sign = 1.0 if "defect" in c else -1.0
            head.weight[k, 0], head.weight[k, 1] = 20.0 * sign, -20.0 * sign
            head.bias[k] = 0.0 if c.startswith("Lata") else -5.0  # a can, for this classifier
    model.eval()
    return VerdictClassifier(model, list(classes), [c for c in classes if "defect" in c], arch="small_cnn",
                             threshold=threshold)


class SceneDetector:
    """Sees each scene object where it is, as the class SCENE gives it, at 0.9."""

    batch_size = 1

    def __init__(self, classes=CLASSES):
        self.classes = tuple(classes)
        self.info = {"format": "test", "run": "scene", "box_score_thresh": 0.05}
        self.meta = {"run": "scene", "classes": list(classes), "data": {}}

    def detect(self, images, keys):
        out = []
        for key in keys:
            objs = SCENE[Path(key).stem]
            out.append(Detections(key, np.array([b for _, b, _, _ in objs], float).reshape(-1, 4),
                                  np.full(len(objs), 0.9),
                                  np.array([self.classes.index(d) + 1 for *_, d in objs], np.int64)))
        return out


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for stem, objects in SCENE.items():
        image = np.full((80, 96, 3), 90, np.uint8)
        for _, (x0, y0, x1, y1), colour, _ in objects:
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
        cv2.imwrite(str(root / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        write_voc(Annotation(filename=f"{stem}.png", width=96, height=80,
                             objects=tuple(VocObject(n, Box(*map(float, b))) for n, b, _, _ in objects)),
                  root / f"{stem}.xml")
    return root


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch) -> Path:
    """A folder for the model file; `detect.audit --weights` loads SceneDetector (the loader is not under test)."""
    folder = tmp_path / "model"
    folder.mkdir()
    monkeypatch.setattr("detect.inference.loader.load_detector", lambda *a, **k: SceneDetector())
    return folder


def _audit_json(weights: Path, data: Path, capsys) -> dict:
    rc = audit_cli.main(["--weights", str(weights), "--data", str(data), "--format", "json", "--gallery", "0",
                         "--no-progress"])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_the_classifier_reads_the_colour():
    verdict = colour_verdict()
    image = np.full((80, 96, 3), 90, np.uint8)
    cv2.rectangle(image, (10, 10), (39, 49), RED, -1)
    cv2.rectangle(image, (55, 15), (84, 64), BLUE, -1)
    p = verdict.defect_probability(verdict.probabilities(image, np.array([BOX, BOX2], float)))
    assert p[0] > 0.99 and p[1] < 0.01


def test_verdict_decides_intact_vs_defective(scene, model_dir, capsys):
    save_verdict(colour_verdict(), model_dir / "verdict.pt")
    doc = _audit_json(model_dir / "model.onnx", scene, capsys)
    got = {Path(f["path"]).stem: f for f in doc["findings"]}
    assert set(got) == {"a", "b", "d"}  # c: the classifier agrees with the label; e: everyone does
    assert all(f["kind"] == "wrong_class" and f["code"] == "AUD102" for f in got.values())
    a, b, d = got["a"], got["b"], got["d"]
    assert (a["by"], a["class"], a["model_class"]) == ("verdict", "Lata", "Lata_defectuosa")
    assert a["defect_probability"] > 0.99 and a["confidence"] == a["defect_probability"] and a["model_box"] is None
    assert (b["by"], b["class"], b["model_class"]) == ("verdict", "Lata_defectuosa", "Lata")
    assert b["defect_probability"] < 0.01 and b["confidence"] == pytest.approx(1 - b["defect_probability"], abs=1e-4)
    assert (d["by"], d["model_class"], d["score"]) == ("detector", "Lata", 0.9)
    assert "verdict classifier" in a["message"] and "defect probability 1.00" in a["message"]
    assert doc["summary"]["wrong_class_by"] == "verdict" and doc["summary"]["verdict_threshold"] == 0.5


def test_text_line_says_the_classifier_and_its_probability(scene, model_dir, capsys):
    save_verdict(colour_verdict(), model_dir / "verdict.pt")
    rc = audit_cli.main(["--weights", str(model_dir / "model.onnx"), "--data", str(scene), "--gallery", "0",
                         "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    [line] = [x for x in out if x.startswith(f"{scene / 'a.xml'}:")]
    assert "AUD102" in line and "the verdict classifier (verdict.pt) on its crop says Lata_defectuosa" in line
    assert "(defect probability 1.00, defective from 0.50)" in line
    assert any(x.startswith("wrong class, intact vs defective: judged by the verdict classifier") for x in out)


def test_without_verdict_pt_the_detector_decides_as_before(scene, model_dir, capsys):
    doc = _audit_json(model_dir / "model.onnx", scene, capsys)
    got = {Path(f["path"]).stem: (f["kind"], f["by"], f["model_class"]) for f in doc["findings"]}
    assert got == {"c": ("wrong_class", "detector", "Lata_defectuosa"), "d": ("wrong_class", "detector", "Lata")}
    assert doc["summary"]["wrong_class_by"] == "detector" and doc["summary"]["verdict_threshold"] is None
    assert audit_cli.main(["--weights", str(model_dir / "model.onnx"), "--data", str(scene), "--gallery", "0",
                           "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wrong class: judged by the detector's detections (no verdict.pt beside the model)" in out
    assert "verdict classifier" not in out


def test_verdict_with_other_classes_is_one_line_exit_2(scene, model_dir, capsys):
    save_verdict(colour_verdict(classes=("Lata", "Lata_defectuosa")), model_dir / "verdict.pt")
    rc = audit_cli.main(["--weights", str(model_dir / "model.onnx"), "--data", str(scene), "--no-progress"])
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "verdict.pt" in err[0] and "Botella" in err[0]
    assert captured.out == ""


def test_the_stored_threshold_decides_and_sureness_is_the_suggested_side(tmp_path):
    records = load_records_of(tmp_path / "x", {"x": [("Lata", BOX), ("Lata_defectuosa", BOX2)]})
    dets = [Detections("x", np.array([BOX, BOX2], float), np.full(2, 0.9), np.array([1, 2], np.int64))]
    # p = 0.7 on both: defective from 0.8 means both items are intact, so only the defect label is wrong.
    verdicts = ItemVerdicts([np.array([0.7, 0.7])], 0.8, ("Lata_defectuosa", "Botella_defectuosa"))
    [f] = audit(records, dets, CLASSES, AuditSettings(), verdicts).findings
    assert (f.name, f.model_name, f.by) == ("Lata_defectuosa", "Lata", "verdict")
    assert f.confidence == pytest.approx(0.3) and f.defect_probability == 0.7 and f.threshold == 0.8
    # From 0.6 both are defective: now the intact label is the wrong one.
    verdicts = ItemVerdicts([np.array([0.7, 0.7])], 0.6, ("Lata_defectuosa", "Botella_defectuosa"))
    [f] = audit(records, dets, CLASSES, AuditSettings(), verdicts).findings
    assert (f.name, f.model_name, f.confidence) == ("Lata", "Lata_defectuosa", pytest.approx(0.7))


def test_a_box_without_a_verdict_keeps_the_detectors_rule(tmp_path):
    records = load_records_of(tmp_path / "x", {"x": [("Lata", BOX)]})
    dets = [Detections("x", np.array([BOX], float), np.array([0.9]), np.array([2], np.int64))]
    verdicts = ItemVerdicts([np.array([np.nan])], 0.5, ("Lata_defectuosa", "Botella_defectuosa"))
    [f] = audit(records, dets, CLASSES, AuditSettings(), verdicts).findings
    assert (f.by, f.model_name, f.score) == ("detector", "Lata_defectuosa", 0.9)


def test_defect_pairs():
    assert defect_pairs(CLASSES, ("Lata_defectuosa", "Botella_defectuosa")) == {
        "Lata": "Lata_defectuosa", "Lata_defectuosa": "Lata", "Botella": "Botella_defectuosa",
        "Botella_defectuosa": "Botella"}
    assert defect_pairs(("cell", "broken_neck"), ("broken_neck",)) == {}


def load_records_of(root: Path, scene: dict):
    """Records of grey images whose XML holds ``scene``'s (class, box) pairs."""
    root.mkdir()
    for stem, objects in scene.items():
        cv2.imwrite(str(root / f"{stem}.png"), np.full((80, 96, 3), 90, np.uint8))
        write_voc(Annotation(filename=f"{stem}.png", width=96, height=80,
                             objects=tuple(VocObject(n, Box(*map(float, b))) for n, b in objects)),
                  root / f"{stem}.xml")
    return load_records(discover(root))


def test_gallery_draws_the_classifiers_findings(scene, model_dir, tmp_path, capsys):
    save_verdict(colour_verdict(), model_dir / "verdict.pt")
    rc = audit_cli.main(["--weights", str(model_dir / "model.onnx"), "--data", str(scene), "--out",
                         str(tmp_path / "out"), "--no-progress"])
    assert rc == 0 and "top findings drawn in" in capsys.readouterr().out
    assert len(list((tmp_path / "out").rglob("audit.png"))) == 1
