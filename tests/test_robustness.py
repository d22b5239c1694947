"""The robustness report: corruptions change images but not their size or boxes,
severities are ordered, detect.eval --corruptions fills every cell, bad names exit 2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from detect import eval as E
from detect.scoring.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption, psnr
from detect.demo.dataset import render_demo_image
from detect.data.dataset import build_transforms

from conftest import make_devkit, make_tiny_checkpoint

IMAGES = [render_demo_image(0, k, (96, 80))[0] for k in range(3)]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_changes_the_image_keeps_size_and_boxes(name: str) -> None:
    image = IMAGES[0]
    boxes = np.array([[10, 12, 40, 60], [50, 5, 90, 70]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pixel transforms only: "no transform to process" the boxes
        pipeline = A.Compose([corruption(name, 2)], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    pipeline.set_random_seed(1)
    out = pipeline(image=image, bboxes=boxes, labels=np.array([1, 2]))
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
    assert np.array_equal(np.asarray(out["bboxes"], np.float32), boxes)
    changed = corrupt(image, name, 2, "a.jpg")
    assert changed.shape == image.shape and not np.array_equal(changed, image)
    assert np.array_equal(changed, corrupt(image, name, 2, "a.jpg"))  # seeded by the image's key


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severities_are_ordered(name: str) -> None:
    means = [np.mean([psnr(im, corrupt(im, name, s, f"{k}.jpg")) for k, im in enumerate(IMAGES)]) for s in SEVERITIES]
    assert means[0] > means[1] > means[2], means


def test_the_line_preset_trains_on_line_corruptions() -> None:
    t = build_transforms("line", input_size=96)
    kinds = {type(x).__name__ for x in t.transforms} | {type(y).__name__ for x in t.transforms
                                                         for y in getattr(x, "transforms", [])}
    assert {"MotionBlur", "Defocus", "GaussNoise", "ImageCompression"} <= kinds
    out = t(image=IMAGES[1], bboxes=np.array([[10, 10, 50, 60]], np.float32), labels=np.array([1]),
            indices=np.array([0]))
    assert out["image"].shape[2] == 3


def test_eval_corruptions_fills_every_cell(tmp_path: Path, capsys) -> None:
    data = make_devkit(tmp_path / "data", n=4)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt", data)
    out_json, report = tmp_path / "e.json", tmp_path / "rep"
    assert E.main(["--weights", str(ckpt), "--corruptions", "--json", str(out_json), "--report", str(report),
                   "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "relative" in printed and "severity 3" in printed
    rob = json.loads(out_json.read_text())["results"][0]["robustness"]
    assert set(rob["corrupted"]) == set(CORRUPTIONS)
    for name in CORRUPTIONS:
        assert set(rob["corrupted"][name]) == {"1", "2", "3"}
        assert all(0 <= v <= 1 for v in rob["corrupted"][name].values())
    assert {"clean", "mean_corrupted", "relative"} <= set(rob)
    md = (report / "report.md").read_text()
    assert "![robustness heat-map](robustness.png)" in md and (report / "robustness.png").stat().st_size > 0
    grid = [line for line in md.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in CORRUPTIONS]
    assert len(grid) == len(CORRUPTIONS)
    assert all("| - |" not in line for line in grid)  # a number in every cell
    assert all(len(line.strip("|").split("|")) == 1 + len(SEVERITIES) + 1 for line in grid)


def test_an_unknown_corruption_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    data = make_devkit(tmp_path / "data", n=3)
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt", data)
    assert E.main(["--weights", str(ckpt), "--corruptions", "fog"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "fog" in lines[0] and "gaussian_noise" in lines[0] and "Traceback" not in err
