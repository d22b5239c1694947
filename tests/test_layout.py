"""Dataset discovery in the three layouts, image lookup, and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detect.data.layout import DatasetError, discover, resolve_splits, split_by_name
from detect.data.voc import parse_voc

from conftest import BCCD, make_devkit, random_objects, write_sample


def test_devkit_layout_and_imagesets(devkit: Path) -> None:
    files = discover(devkit)
    assert files.layout == "devkit"
    assert [files.sample_id(x) for x in files.xml_files] == [f"img_{i:03d}" for i in range(8)]
    splits, source = resolve_splits(files)
    assert source == "ImageSets/Main"
    assert splits["val"] == ["img_000", "img_001"] and len(splits["train"]) == 6
    for xml in files.xml_files:
        assert files.find_image(xml, parse_voc(xml).filename) == devkit / "JPEGImages" / f"{xml.stem}.jpg"


def test_beside_layout_with_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for sub in ("train", "valid"):
        for i in range(3):
            write_sample(tmp_path / sub, tmp_path / sub, f"{sub}_{i}", random_objects(rng, (64, 64), 1), size=(64, 64))
    # The same stem in two folders must not be confused.
    write_sample(tmp_path / "train", tmp_path / "train", "dup", random_objects(rng, (64, 64), 1), size=(64, 64))
    write_sample(tmp_path / "valid", tmp_path / "valid", "dup", random_objects(rng, (64, 64), 1), size=(64, 64))
    files = discover(tmp_path)
    assert files.layout == "beside"
    ids = [files.sample_id(x) for x in files.xml_files]
    assert "train/dup" in ids and "valid/dup" in ids and len(ids) == 8
    for xml in files.xml_files:
        assert files.find_image(xml, parse_voc(xml).filename) == xml.with_suffix(".jpg")


def test_folders_layout_and_stem_fallback(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    xml, img = write_sample(tmp_path / "annots", tmp_path / "images", "a1", random_objects(rng, (64, 64), 1), size=(64, 64))
    # <filename> names a path from the annotator's Windows machine and a wrong extension.
    text = xml.read_text().replace("<filename>a1.jpg</filename>", "<filename>C:\\fotos\\a1.jpeg</filename>")
    xml.write_text(text)
    png_xml, _ = write_sample(tmp_path / "annots", tmp_path / "images", "b2", random_objects(rng, (64, 64), 1), size=(64, 64), ext=".png")
    files = discover(tmp_path)
    assert files.layout == "folders"
    assert files.find_image(xml, parse_voc(xml).filename) == img  # falls back to the stem
    assert files.find_image(png_xml, "b2.png") == tmp_path / "images" / "b2.png"


def test_images_override_is_searched_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xml, _ = write_sample(tmp_path / "data", tmp_path / "data", "x", random_objects(rng, (64, 64), 1), size=(64, 64))
    _, other = write_sample(tmp_path / "elsewhere_xml", tmp_path / "fixed_images", "x", [], size=(64, 64))
    files = discover(tmp_path / "data", images=tmp_path / "fixed_images")
    assert files.find_image(xml, "x.jpg") == other


def test_missing_folder_and_no_xml_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .xml annotation files"):
        discover(tmp_path / "empty")


def test_hash_split_is_deterministic_and_stable() -> None:
    ids = [f"img_{i:04d}" for i in range(200)]
    a = split_by_name(ids, val_fraction=0.2)
    b = split_by_name(list(reversed(ids)), val_fraction=0.2)
    assert a == b and len(a["val"]) == 40 and not set(a["val"]) & set(a["train"])
    grown = split_by_name(ids + [f"new_{i}" for i in range(20)], val_fraction=0.2)
    moved = set(a["val"]) - set(grown["val"])
    assert len(moved) <= 20  # adding 10 % more files moves few old ones
    assert split_by_name(ids, val_fraction=0.0)["val"] == []


def test_split_without_imagesets_uses_hash(tmp_path: Path) -> None:
    root = make_devkit(tmp_path / "d", n=10, splits=False)
    splits, source = resolve_splits(discover(root), val_fraction=0.3)
    assert source.startswith("hash") and len(splits["val"]) == 3 and len(splits["train"]) == 7


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not present")
def test_bccd_devkit() -> None:
    files = discover(BCCD)
    assert files.layout == "devkit" and len(files.xml_files) == 364
    splits, _ = resolve_splits(files)
    assert len(splits["train"]) == 205 and len(splits["val"]) == 87 and len(splits["test"]) == 72
