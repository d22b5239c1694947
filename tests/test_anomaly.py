"""The anomaly score of item crops: a PatchCore-style bank of intact items' patches, its numpy
scorer, the k-center coreset, the bank file, and the one-line errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detect.common.errors import UsageError
from detect.demo.cans import _render_can
from detect.model.patchbank import (
    BankError, PatchBank, base_class, greedy_coreset, load_bank, nearest_distances, save_bank,
)

torch = pytest.importorskip("torch")


def can_crop(seed: int) -> np.ndarray:
    """An intact demo can drawn by the demo's sprite function, on a grey belt: RGB uint8."""
    sprite = _render_can(np.random.default_rng(seed), 60, 36, False, 0.3)
    a = sprite.alpha[..., None]
    rgb = sprite.rgb * a + 128.0 * (1.0 - a)
    return np.ascontiguousarray(rgb[..., ::-1].clip(0, 255).astype(np.uint8))


def dented(crop: np.ndarray) -> np.ndarray:
    """The same crop with a dent painted on: a dark hollow and a bright crease."""
    out = crop.copy()
    h, w = out.shape[:2]
    cv2.ellipse(out, (w // 2, h // 2), (w // 4, h // 6), 20, 0, 360, (15, 15, 15), -1)
    cv2.line(out, (2, h // 3), (w - 3, h // 2), (250, 250, 250), 2)
    return out


@pytest.fixture(scope="module")
def extractor():
    from detect.model.anomaly import PatchFeatures
    from detect.model.build import build_model

    torch.manual_seed(0)
    return PatchFeatures(build_model(backbone="mobilenet", num_classes=5, input_size=256), (64, 64))


@pytest.fixture(scope="module")
def bank(extractor):
    from detect.model.anomaly import build_bank

    return build_bank(extractor, {"Lata": [can_crop(i) for i in range(10)]}, bank_size=300)


def test_bank_is_built_per_base_class_with_its_making(bank, extractor):
    assert bank.classes == ["Lata"]
    memory = bank.banks["Lata"]
    assert memory.shape == (300, 152) and memory.dtype == np.float32  # MobileNet: 40 + 112 channels
    assert bank.meta["backbone"] == "mobilenet" and bank.meta["input_size"] == 256
    assert bank.meta["crop_size"] == [64, 64] and bank.meta["crops"] == {"Lata": 10}
    assert bank.meta["fingerprint"] == extractor.fingerprint()


def test_a_dent_scores_higher_than_its_intact_twin(bank, extractor):
    from detect.model.anomaly import item_scores

    intact = [can_crop(100 + i) for i in range(4)]
    defect = [dented(c) for c in intact]
    good = item_scores(extractor, bank, ["Lata"] * 4, intact)
    bad = item_scores(extractor, bank, ["Lata_defectuosa"] * 4, defect)
    assert all(b > g for b, g in zip(bad, good))
    assert min(bad) > max(good)


def test_numpy_scorer_equals_the_torch_reference(bank, extractor):
    from detect.model.anomaly import item_scores, torch_scores

    crops = [can_crop(300), dented(can_crop(301)), can_crop(302)]
    classes = ["Lata", "Lata_defectuosa", "Lata"]
    np.testing.assert_allclose(item_scores(extractor, bank, classes, crops),
                               torch_scores(extractor, bank, classes, crops), rtol=1e-4, atol=1e-6)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 7)).astype(np.float32), rng.normal(size=(30, 7)).astype(np.float32)
    brute = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(a, b), brute, rtol=1e-4, atol=1e-5)


def test_coreset_is_k_center_greedy():
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=(400, 4)).astype(np.float32)
    far = np.array([[40, 0, 0, 0], [0, -40, 0, 0]], np.float32)  # two lone points: the coreset must cover them
    points = np.concatenate([cloud, far])
    keep = greedy_coreset(points, 20, seed=3)
    assert len(set(keep.tolist())) == 20 and {400, 401} <= set(keep.tolist())
    # Its cover radius beats a random subset of the same size.
    random = rng.choice(len(points), 20, replace=False)
    assert nearest_distances(points, points[keep]).max() < nearest_distances(points, points[random]).max()
    assert len(greedy_coreset(points, 1000)) == len(points)


def test_bank_file_round_trip_and_refusals(bank, tmp_path):
    path = save_bank(bank, tmp_path / "anomaly.npz")
    back = load_bank(path)
    np.testing.assert_array_equal(back.banks["Lata"], bank.banks["Lata"])
    assert back.meta["fingerprint"] == bank.meta["fingerprint"]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BankError, match="junk.npz: not an anomaly bank"):
        load_bank(tmp_path / "junk.npz")


def test_bank_of_another_model_is_refused(bank):
    assert issubclass(BankError, UsageError)  # exit 2
    bank.check_matches(backbone="mobilenet", input_size=256, fingerprint=bank.meta["fingerprint"])
    with pytest.raises(BankError, match="built with backbone 'mobilenet', the model is 'resnet50'"):
        bank.check_matches(backbone="resnet50", input_size=256)
    with pytest.raises(BankError, match="built at input size 256, the model uses 320"):
        bank.check_matches(backbone="mobilenet", input_size=320)
    with pytest.raises(BankError, match="other backbone weights"):
        bank.check_matches(backbone="mobilenet", input_size=256, fingerprint="0" * 16)


def test_too_few_or_no_intact_crops_are_one_line_errors(extractor):
    from detect.model.anomaly import build_bank

    with pytest.raises(BankError, match=r"3 intact Lata crop\(s\), the anomaly bank needs at least 8") as e:
        build_bank(extractor, {"Lata": [can_crop(i) for i in range(3)]})
    assert "\n" not in str(e.value)
    with pytest.raises(BankError, match=r"base class 'Botella' has no intact examples \(5 defective\).*at least 8"):
        build_bank(extractor, {"Lata": [can_crop(i) for i in range(8)], "Botella": []}, defects={"Botella": 5})


def test_base_class_of_a_detection():
    classes = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
    assert base_class("Lata_defectuosa", classes) == "Lata"
    assert base_class("Botella", classes) == "Botella"
    assert PatchBank({"Lata": np.zeros((2, 3), np.float32)}).score("Botella", np.zeros((4, 3), np.float32)) is None


def test_holdout_defect_is_drawn_only_in_val(tmp_path):
    import json

    from detect.data.voc import parse_voc
    from detect.demo.dataset import make_demo_dataset, read_marker

    out = make_demo_dataset(tmp_path / "demo", num_images=40, seed=0, image_size=(160, 120),
                            holdout_defect="torn_label")
    kinds = json.loads((out / "defects.json").read_text())
    train = (out / "ImageSets/Main/train.txt").read_text().split()
    val = (out / "ImageSets/Main/val.txt").read_text().split()
    assert read_marker(out)["holdout_defect"] == "torn_label"
    for sample_id, per_object in kinds.items():
        names = [o.name for o in parse_voc(out / "Annotations" / f"{sample_id}.xml").objects]
        assert len(names) == len(per_object)
        assert all(bool(k) == n.endswith("_defectuosa") for n, k in zip(names, per_object))
    assert not any("torn_label" in k for s in train for k in kinds[s])
    assert any("torn_label" in k for s in val for k in kinds[s])
    with pytest.raises(ValueError, match="holdout defect must be one of dent, crushed, torn_label"):
        make_demo_dataset(tmp_path / "bad", num_images=2, holdout_defect="scratch")
    plain = make_demo_dataset(tmp_path / "plain", num_images=4, seed=0, image_size=(160, 120))
    assert not (plain / "defects.json").exists() and "holdout_defect" not in read_marker(plain)


def test_command_builds_the_bank_of_a_checkpoint(tmp_path, capsys):
    from conftest import make_devkit, make_tiny_checkpoint

    from detect.anomaly import main
    from detect.model.anomaly import PatchFeatures
    from detect.model.build import model_from_checkpoint

    data = make_devkit(tmp_path / "data", n=48)
    weights = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data, val=16)
    assert main(["--weights", str(weights), "--bank-size", "64", "--crop", "48", "--max-false-reject", "0.5"]) == 0
    assert "best.anomaly.npz" in capsys.readouterr().out
    assert (tmp_path / "run" / "best.anomaly.onnx").stat().st_size > 0
    bank = load_bank(tmp_path / "run" / "best.anomaly.npz")
    model, _ = model_from_checkpoint(weights)
    bank.check_matches(backbone="mobilenet", input_size=128, fingerprint=PatchFeatures(model).fingerprint())
    assert bank.meta["crop_size"] == [48, 48] and all(len(b) == 64 for b in bank.banks.values())
    assert main(["--weights", str(weights)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err

    few = make_devkit(tmp_path / "few", n=6)
    weights = make_tiny_checkpoint(tmp_path / "run2" / "best.pt", few)
    assert main(["--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "the anomaly bank needs at least 8" in err and err.count("\n") == 1
    assert not (tmp_path / "run2" / "best.anomaly.npz").exists()


def test_predict_save_json_carries_the_anomaly_score_with_a_bank(tmp_path, capsys):
    import json

    from conftest import make_devkit, make_tiny_checkpoint

    from detect.anomaly import main as build
    from detect.predict import main as predict

    data = make_devkit(tmp_path / "data", n=48)
    weights = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data, val=16)
    image = str(data / "JPEGImages" / "img_000.jpg")

    def records(name):
        assert predict(["--weights", str(weights), image, "--out", str(tmp_path / "out"), "--name", name,
                        "--save-json", "--no-save-images", "--no-progress"]) == 0
        return json.loads((tmp_path / "out" / name / "predictions.json").read_text())

    plain = records("plain")
    assert plain and not any("anomaly" in r for r in plain)  # no bank: as before
    assert build(["--weights", str(weights), "--bank-size", "64", "--crop", "48", "--max-false-reject", "0.5"]) == 0
    scored = records("scored")
    assert [r["bbox"] for r in scored] == [r["bbox"] for r in plain]
    assert all(r["anomaly"] >= 0 for r in scored if r["bbox"][2] - r["bbox"][0] >= 2)
    assert sum("anomaly" in r for r in scored) >= len(scored) - 1
    capsys.readouterr()

    # the export scores without torch: the bank's ONNX features give the checkpoint's scores
    from detect.export import main as export

    assert export(["--weights", str(weights)]) == 0
    assert predict(["--weights", str(weights.with_suffix(".onnx")), image, "--out", str(tmp_path / "out"), "--name",
                    "onnx", "--save-json", "--no-save-images", "--no-progress"]) == 0
    onnx = json.loads((tmp_path / "out" / "onnx" / "predictions.json").read_text())
    pairs = [(a, b) for a, b in zip(scored, onnx) if np.allclose(a["bbox"], b["bbox"], atol=0.5) and "anomaly" in a]
    assert pairs and len(onnx) == len(scored)
    for a, b in pairs:
        assert b["anomaly"] == pytest.approx(a["anomaly"], rel=1e-3, abs=1e-3)
    capsys.readouterr()
    # an export elsewhere takes the bank with it, under its own name
    line = tmp_path / "line" / "cans.onnx"
    line.parent.mkdir()
    assert export(["--weights", str(weights), "--out", str(line)]) == 0
    assert (line.parent / "cans.anomaly.npz").read_bytes() == (tmp_path / "run" / "best.anomaly.npz").read_bytes()
    assert (line.parent / "cans.anomaly.onnx").is_file()
    capsys.readouterr()

    other = make_tiny_checkpoint(tmp_path / "other" / "best.pt", data, seed=1)  # other weights, the same bank
    (tmp_path / "other" / "best.anomaly.npz").write_bytes((tmp_path / "run" / "best.anomaly.npz").read_bytes())
    assert predict(["--weights", str(other), image, "--out", str(tmp_path / "out"), "--save-json", "--no-progress"]) == 2
    assert "built from other backbone weights than this model's" in capsys.readouterr().err


def test_onnx_features_give_the_pytorch_score(bank, extractor, tmp_path):
    from detect.model.anomaly import export_features, torch_scores
    from detect.model.patchbank import OnnxPatchFeatures

    path = export_features(extractor, tmp_path / "best.anomaly.onnx")
    onnx = OnnxPatchFeatures(path, bank.meta["crop_size"])
    crops = [can_crop(400), dented(can_crop(401)), can_crop(402)[:50, :30]]
    classes = ["Lata", "Lata_defectuosa", "Lata"]
    scores = [bank.score(c, f) for c, f in zip(classes, onnx(crops))]
    np.testing.assert_allclose(scores, torch_scores(extractor, bank, classes, crops), rtol=1e-4)
