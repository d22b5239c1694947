"""The procedural demo dataset (detect.demo.dataset) and its CLI (detect/make_demo_data.py, tools/make_demo_data.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from detect.demo.dataset import DEMO_CLASSES, MARKER_NAME, is_complete, make_demo_dataset, read_marker, render_demo_image
from detect.data.voc import parse_voc

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 96)


def _ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))


def _read_list(root: Path, name: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{name}.txt").read_text(encoding="utf-8").split()


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """60 small images, enough for every class and some negatives to turn up."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "many", num_images=60, seed=1, image_size=(64, 48))


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = make_demo_dataset(tmp_path / "a", num_images=8, seed=3, image_size=SIZE)
    b = make_demo_dataset(tmp_path / "b", num_images=8, seed=3, image_size=SIZE)
    c = make_demo_dataset(tmp_path / "c", num_images=8, seed=4, image_size=SIZE)
    assert a == tmp_path / "a"
    assert _ids(a) == _ids(b) == _ids(c)
    for i in _ids(a):
        xml = f"Annotations/{i}.xml"
        assert (a / xml).read_bytes() == (b / xml).read_bytes()
        img_a = cv2.imread(str(a / "JPEGImages" / f"{i}.jpg"))
        img_b = cv2.imread(str(b / "JPEGImages" / f"{i}.jpg"))
        assert np.array_equal(img_a, img_b)
    for name in ("train", "val", "trainval"):
        assert _read_list(a, name) == _read_list(b, name)
    assert any((a / f"Annotations/{i}.xml").read_bytes() != (c / f"Annotations/{i}.xml").read_bytes() for i in _ids(a))
    assert any(
        not np.array_equal(cv2.imread(str(a / f"JPEGImages/{i}.jpg")), cv2.imread(str(c / f"JPEGImages/{i}.jpg")))
        for i in _ids(a)
    )


def test_image_k_does_not_depend_on_num_images(tmp_path):
    small = make_demo_dataset(tmp_path / "small", num_images=4, seed=9, image_size=SIZE)
    large = make_demo_dataset(tmp_path / "large", num_images=7, seed=9, image_size=SIZE)
    for i in _ids(small):
        assert (small / f"Annotations/{i}.xml").read_bytes() == (large / f"Annotations/{i}.xml").read_bytes()
        assert (small / f"JPEGImages/{i}.jpg").read_bytes() == (large / f"JPEGImages/{i}.jpg").read_bytes()


def test_render_matches_written_annotations(tmp_path):
    root = make_demo_dataset(tmp_path / "d", num_images=3, seed=5, image_size=SIZE)
    for k, i in enumerate(_ids(root)):
        image, objects = render_demo_image(5, k, SIZE)
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
        assert parse_voc(root / f"Annotations/{i}.xml").objects == objects


def test_devkit_layout(many):
    ids = _ids(many)
    assert len(ids) == 60
    assert sorted(p.stem for p in (many / "JPEGImages").glob("*.jpg")) == ids
    assert (many / "classes.txt").read_text(encoding="utf-8").splitlines() == list(DEMO_CLASSES)
    train, val, trainval = (_read_list(many, n) for n in ("train", "val", "trainval"))
    assert sorted(trainval) == ids
    assert not set(train) & set(val)
    assert sorted(train + val) == ids
    assert len(val) == 12  # val_fraction 0.2
    for i in ids:
        ann = parse_voc(many / f"Annotations/{i}.xml")
        assert ann.filename == f"{i}.jpg"
        assert (ann.width, ann.height, ann.depth) == (64, 48, 3)
        image = cv2.imread(str(many / "JPEGImages" / ann.filename))
        assert image.shape == (48, 64, 3)


def test_boxes_inside_image_and_all_classes_present(many):
    counts: Counter[str] = Counter()
    negatives = 0
    truncated = 0
    for xml in sorted((many / "Annotations").glob("*.xml")):
        ann = parse_voc(xml)
        negatives += not ann.objects
        assert len(ann.objects) <= 6
        for obj in ann.objects:
            assert obj.name in DEMO_CLASSES
            b = obj.box
            assert 0 <= b.xmin < b.xmax <= ann.width
            assert 0 <= b.ymin < b.ymax <= ann.height
            assert all(float(v).is_integer() for v in b)
            counts[obj.name] += 1
            truncated += obj.truncated
    assert set(counts) == set(DEMO_CLASSES)
    assert min(counts.values()) >= 10
    assert negatives >= 1
    marker = read_marker(many)
    assert marker["objects"] == dict(counts)
    assert marker["negatives"] == negatives


def test_negatives_over_many_images():
    negatives = sum(not render_demo_image(2, k, (40, 32))[1] for k in range(150))
    assert 2 <= negatives <= 30


def test_is_complete(tmp_path, many):
    assert is_complete(many, num_images=60, seed=1, image_size=(64, 48))
    assert is_complete(many, num_images=60, seed=1, image_size=(64, 48), val_fraction=0.2)
    assert not is_complete(many, num_images=60, seed=2, image_size=(64, 48))
    assert not is_complete(many, num_images=59, seed=1, image_size=(64, 48))
    assert not is_complete(many, num_images=60, seed=1, image_size=(48, 64))
    assert not is_complete(many, num_images=60, seed=1, image_size=(64, 48), val_fraction=0.3)
    assert not is_complete(tmp_path / "nothing", num_images=60, seed=1, image_size=(64, 48))

    partial = tmp_path / "partial"
    shutil.copytree(many, partial)
    assert is_complete(partial, num_images=60, seed=1, image_size=(64, 48))
    (partial / "JPEGImages" / "demo_00007.jpg").unlink()  # a file missing
    assert not is_complete(partial, num_images=60, seed=1, image_size=(64, 48))
    (partial / MARKER_NAME).unlink()  # no marker: never finished
    assert not is_complete(partial, num_images=60, seed=1, image_size=(64, 48))
    # A folder that is not a finished demo dataset is not overwritten.
    with pytest.raises(FileExistsError):
        make_demo_dataset(partial, num_images=3, seed=1, image_size=SIZE)


def test_no_partial_output_left_behind(tmp_path, monkeypatch):
    import detect.demo.dataset as demo

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(demo, "write_voc", boom)
    with pytest.raises(RuntimeError):
        make_demo_dataset(tmp_path / "d", num_images=3, seed=0, image_size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_regenerate_replaces_and_reuses(tmp_path):
    out = tmp_path / "d"
    make_demo_dataset(out, num_images=3, seed=0, image_size=SIZE)
    stamp = (out / MARKER_NAME).stat().st_mtime_ns
    make_demo_dataset(out, num_images=3, seed=0, image_size=SIZE)  # already there: left alone
    assert (out / MARKER_NAME).stat().st_mtime_ns == stamp
    make_demo_dataset(out, num_images=2, seed=1, image_size=SIZE)  # other parameters: replaced
    assert is_complete(out, num_images=2, seed=1, image_size=SIZE)
    assert len(_ids(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert json.loads((out / MARKER_NAME).read_text())["seed"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": 0},
        {"seed": -1},
        {"image_size": (16, 96)},
        {"image_size": (96,)},
        {"val_fraction": 1.0},
    ],
)
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "d", **{"num_images": 2, "image_size": SIZE, **kwargs})
    assert not (tmp_path / "d").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli(tmp_path):
    # Run from outside the repository: the script finds `detect` by itself.
    out = tmp_path / "out"
    script = str(REPO / "tools" / "make_demo_data.py")
    res = _cli(script, str(out), "--images", "5", "--seed", "2", "--size", "80x64", "--val-fraction", "0.4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert "5 images" in res.stdout and str(out) in res.stdout
    for name in DEMO_CLASSES:
        assert name in res.stdout
    assert is_complete(out, num_images=5, seed=2, image_size=(80, 64), val_fraction=0.4)
    assert len(_read_list(out, "val")) == 2

    res = _cli(script, str(tmp_path / "bad"), "--size", "80by64", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--size" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_as_module(tmp_path):
    res = _cli("-m", "detect.make_demo_data", str(tmp_path / "m"), "--images", "2", "--size", "64x64", cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert is_complete(tmp_path / "m", num_images=2, seed=0, image_size=(64, 64))


def test_cli_main_refuses_foreign_folder(tmp_path, capsys):
    from detect.make_demo_data import main

    (tmp_path / "mine.txt").write_text("keep me")
    assert main([str(tmp_path), "--images", "2", "--size", "64x64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_demo_made_by_earlier_versions_still_counts_as_finished(tmp_path, many):
    # The marker is a stored format: its generator name stays "detect.demo" although the
    # module now lives in detect/data/, so caches made before the move are not refused.
    marker = json.loads((many / MARKER_NAME).read_text())
    assert marker["generator"] == "detect.demo"
    older = tmp_path / "older"
    shutil.copytree(many, older)
    (older / MARKER_NAME).write_text(json.dumps({**marker, "generator": "detect.demo"}))
    assert is_complete(older, num_images=60, seed=1, image_size=(64, 48))
