"""Records, class maps, box sanitising, negatives, and augmentation that keeps boxes on objects."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from detect.data import dataset as D
from detect.data import records as R
from detect.data.layout import ClassesError, discover, read_classes
from detect.data.voc import Box, VocObject

from conftest import CLASSES, COLOURS, write_sample


def test_records_and_class_map(devkit: Path) -> None:
    files = discover(devkit)
    records = R.load_records(files)
    assert len(records) == 8 and all(r.image.exists() for r in records)
    assert read_classes(devkit / "classes.txt") == list(CLASSES)
    found = R.class_names_from(records)
    assert found == sorted(found) and set(found) <= set(CLASSES)


def test_unknown_class_names_the_files(devkit: Path, tmp_path: Path) -> None:
    write_sample(devkit / "Annotations", devkit / "JPEGImages", "typo", [("Lata_defectousa", (5, 5, 40, 40))])
    records = R.load_records(discover(devkit))
    with pytest.raises(R.DataError) as err:
        R.check_classes(records, CLASSES, classes_file="classes.txt")
    msg = str(err.value)
    assert "'Lata_defectousa'" in msg and "typo.xml" in msg and "classes.txt" in msg


def test_class_file_errors(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("Lata\nLata\n")
    with pytest.raises(ClassesError, match=r"c.txt:2: class 'Lata' is listed twice"):
        read_classes(tmp_path / "c.txt")
    with pytest.raises(ClassesError, match="cannot read"):
        read_classes(tmp_path / "missing.txt")


def test_missing_image_is_named(devkit: Path) -> None:
    (devkit / "JPEGImages" / "img_003.jpg").unlink()
    with pytest.raises(R.DataError, match=r"img_003.xml: image 'img_003.jpg' not found"):
        R.load_records(discover(devkit))


def test_negatives_have_empty_boxes(tmp_path: Path) -> None:
    write_sample(tmp_path / "d", tmp_path / "d", "empty", [], size=(64, 48))
    records = R.load_records(discover(tmp_path / "d"))
    image, target, meta = D.DetectionDataset(records, CLASSES)[0]
    assert image.shape == (3, 48, 64) and image.dtype.is_floating_point and float(image.max()) <= 1.0
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert meta["xml"].endswith("empty.xml")


def test_degenerate_and_outside_boxes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    objs = [("Lata", (10, 10, 10, 30)), ("Lata", (20, 20, 21, 20.5)), ("Botella", (-5, 5, 30, 90)), ("Lata", (5, 5, 20, 20))]
    write_sample(tmp_path / "d", tmp_path / "d", "bad", objs, size=(64, 48))
    with caplog.at_level(logging.WARNING, logger="detect.data.records"):
        records = R.load_records(discover(tmp_path / "d"))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "bad.xml" in warnings[0]
    assert "dropped 2 box(es)" in warnings[0] and "clipped 1 box(es)" in warnings[0]
    _, target, _ = D.DetectionDataset(records, CLASSES)[0]
    assert target["boxes"].tolist() == [[0.0, 5.0, 30.0, 48.0], [5.0, 5.0, 20.0, 20.0]]
    assert target["labels"].tolist() == [3, 1]


def test_sanitize_reports_nothing_for_good_boxes() -> None:
    objs = [VocObject("Lata", Box(0, 0, 64, 48))]
    kept, note = R.sanitize_objects(objs, width=64, height=48)
    assert kept == objs and note is None


@pytest.mark.parametrize("augment", ["light", "strong"])
def test_augmentation_keeps_boxes_on_their_objects(tmp_path: Path, augment: str) -> None:
    """Each object is a solid colour; after augmentation the pixels inside every box must
    still be mostly that object's colour, and no box appears that has no object."""
    objs = [("Lata", (8, 8, 40, 56)), ("Botella", (60, 20, 88, 76))]
    write_sample(tmp_path / "d", tmp_path / "d", "two", objs, size=(96, 80), ext=".png")
    records = R.load_records(discover(tmp_path / "d"))
    ds = D.DetectionDataset(records, CLASSES, D.build_transforms(augment, input_size=96))
    ds.transform.set_random_seed(0)
    moved = 0
    for _ in range(40):
        image, target, _ = ds[0]
        assert len(target["boxes"]) <= 2
        img = (image.permute(1, 2, 0).numpy() * 255).astype(np.float32)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
            # Shrink by 3 px: interpolation blurs the edges.
            inner = img[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3].reshape(-1, 3)
            # Lata is drawn red, Botella blue, the background grey: colour jitter moves
            # the values, but the dominant channel inside a box must stay the object's.
            channel = int(np.argmax(COLOURS[CLASSES[label - 1]]))
            margin = inner[:, channel] - np.delete(inner, channel, axis=1).max(axis=1)
            assert (margin > 20).mean() > 0.8
        if target["boxes"].tolist() != [list(map(float, b)) for _, b in objs]:
            moved += 1
    assert moved > 10  # the augmentation really moves boxes


def test_no_augmentation_is_identity(tmp_path: Path) -> None:
    objs = [("Lata", (8, 8, 40, 56))]
    write_sample(tmp_path / "d", tmp_path / "d", "one", objs, size=(96, 80), ext=".png")
    records = R.load_records(discover(tmp_path / "d"))
    assert D.build_transforms("none") is None
    _, target, _ = D.DetectionDataset(records, CLASSES, D.build_transforms("none", input_size=96))[0]
    assert target["boxes"].tolist() == [[8.0, 8.0, 40.0, 56.0]]
    with pytest.raises(ValueError):
        D.build_transforms("extreme")


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_cached_images_give_the_same_samples(tmp_path: Path, cache: str) -> None:
    objs = [("Lata", (8, 8, 40, 56)), ("Botella", (60, 20, 88, 76))]
    write_sample(tmp_path / "d", tmp_path / "d", "two", objs, size=(96, 80), ext=".png")
    records = R.load_records(discover(tmp_path / "d"))
    fresh = D.DetectionDataset(records, CLASSES, D.build_transforms("none", input_size=48))
    cached = D.DetectionDataset(records, CLASSES, D.build_transforms("none", input_size=48), cache=cache,
                                resize_to=48, cache_dir=tmp_path / "cache")
    for _ in range(2):  # the first read fills the cache, the second reads it
        a, ta, ma = fresh[0]
        b, tb, mb = cached[0]
        assert a.shape == b.shape == (3, 40, 48)
        assert torch.allclose(a, b, atol=1 / 255)
        assert torch.allclose(ta["boxes"], tb["boxes"], atol=1e-4) and ma["orig_size"] == mb["orig_size"] == (80, 96)
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    else:
        assert len(cached._ram) == 1


def test_grouped_batches_hold_one_shape_and_cover_every_image() -> None:
    from torch.utils.data import SequentialSampler

    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1]
    sampler = D.GroupedBatchSampler(SequentialSampler(range(9)), groups, 2, drop_last=False)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(9)) and len(batches) == len(sampler) == 5
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:-1])  # the leftovers come last
    assert len(list(D.GroupedBatchSampler(SequentialSampler(range(9)), groups, 2, drop_last=True))) == 4
