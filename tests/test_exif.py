"""EXIF orientation: one rule for the whole project, the upright frame LabelImg
1.8.4+ (Qt's QImageReader with setAutoTransform), OpenCV's imread, PIL's exif_transpose and
browsers show. The annotations are written by LabelImg 1.8.6's own code (:func:`labelimg_xml`):
``<size>`` and boxes in the upright frame, ``xmin``/``ymin`` at least 1, ``truncated`` only
where a box reaches the border."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detect import check_xml
from detect.checks import check_dataset
from detect.data.images import exif_box, image_size, read_image
from detect.data.layout import discover
from detect.data.records import load_records
from detect.data.voc import parse_voc

UPRIGHT = (72, 48)  # width, height of the scene as LabelImg shows it
OBJECT = (4, 30, 40, 42)  # where the can is in that scene (LabelImg coordinates)
_INVERSE = {6: 8, 8: 6}  # the other tags undo themselves


def _exif(tag: int, *, long: bool = False) -> bytes:
    """An EXIF block with one orientation entry (a LONG for values a SHORT cannot hold)."""
    kind, value = (4, struct.pack("<I", tag)) if long else (3, struct.pack("<HH", tag, 0))
    ifd = struct.pack("<H", 1) + struct.pack("<HHI", 0x0112, kind, 1) + value + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def scene() -> np.ndarray:
    """The upright picture: a dark frame with one bright can."""
    w, h = UPRIGHT
    image = np.full((h, w, 3), 30, np.uint8)
    x0, y0, x1, y1 = OBJECT
    image[y0:y1, x0:x1] = (240, 240, 240)
    return image


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # what PIL's exif_transpose does for each tag


def rotated_photo(path: Path, tag: int, *, long: bool = False) -> Path:
    """A photo whose stored pixels, shown with EXIF orientation ``tag``, are :func:`scene`."""
    stored = Image.fromarray(scene())
    if tag in _TRANSPOSE:  # store what the tag turns back into the scene
        stored = stored.transpose(_TRANSPOSE[_INVERSE.get(tag, tag)])
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=95, exif=_exif(tag, long=long))
    return path


def labelimg_xml(image: Path, box) -> Path:
    """The XML LabelImg 1.8.6 itself saves for one box drawn on ``image``: its own way of
    reading the image (``labelImg.read``: Qt's QImageReader with setAutoTransform(True)) and its
    own writer (``LabelFile.save_pascal_voc_format``: the shown size, integer boxes of at least
    1, its truncated rule). The real client, from ``pip install labelImg`` (the test extra)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display: Qt reads images all the same
    pytest.importorskip("PyQt5.QtGui")
    label_file = pytest.importorskip("libs.labelFile", reason="LabelImg is not installed (pip install labelImg)")
    from PyQt5.QtGui import QImageReader

    reader = QImageReader(str(image))
    reader.setAutoTransform(True)
    shown = reader.read()
    assert not shown.isNull()
    x0, y0, x1, y1 = box
    xml = image.with_suffix(".xml")
    shape = {"points": [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], "label": "Lata", "difficult": False}
    label_file.LabelFile().save_pascal_voc_format(str(xml), [shape], str(image), shown)
    return xml


def unaware_tool_xml(image: Path, size: tuple[int, int], box) -> Path:
    """What an EXIF-unaware tool (LabelImg before 1.8.4) saved: ``size`` and ``box`` in the
    stored frame, in LabelImg's layout."""
    w, h = size
    x0, y0, x1, y1 = (int(v) for v in box)
    xml = image.with_suffix(".xml")
    xml.write_text(
        f"<annotation>\n\t<folder>{image.parent.name}</folder>\n\t<filename>{image.name}</filename>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<object>\n\t\t<name>Lata</name>\n\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n"
        f"\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n"
    )
    return xml


def brightness(image: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return float(image[y0 + 1:y1 - 1, x0 + 1:x1 - 1].mean())


@pytest.mark.parametrize("tag", [1, 2, 3, 4, 5, 6, 7, 8])
def test_read_image_is_upright_as_exif_aware_readers_show_it(tmp_path: Path, tag: int) -> None:
    path = rotated_photo(tmp_path / "p.jpg", tag)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    pixels = read_image(path)
    assert np.array_equal(pixels, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))  # OpenCV's imread
    assert np.abs(pixels.astype(int) - reference.astype(int)).max() <= 2  # PIL (another JPEG decoder)
    assert image_size(path) == UPRIGHT == (pixels.shape[1], pixels.shape[0])
    stored = read_image(path, exif="ignore")
    assert image_size(path, exif="ignore") == (stored.shape[1], stored.shape[0])


@pytest.mark.parametrize("tag,long", [(0, False), (9, False), (65537, True)])
def test_an_invalid_tag_is_no_rotation(tmp_path: Path, tag: int, long: bool) -> None:
    path = rotated_photo(tmp_path / "p.jpg", tag, long=long)
    assert Image.open(path).getexif()[0x0112] == tag
    assert image_size(path) == UPRIGHT and brightness(read_image(path), OBJECT) > 200
    root = tmp_path
    labelimg_xml(path, OBJECT)
    report = check_dataset(discover(root), classes=["Lata"])
    assert not {f.code for f in report.findings} & {"VOC405", "VOC406", "VOC409"}


@pytest.mark.parametrize("tag", [2, 3, 4, 5, 6, 7, 8])
def test_labelimg_boxes_train_where_labelimg_showed_the_object(tmp_path: Path, tag: int) -> None:
    """A one-image dataset annotated in LabelImg: the checker accepts it and the training
    sample (records -> dataset, what the trainer feeds the model) has the can under its box."""
    from detect.data.dataset import DetectionDataset

    image = rotated_photo(tmp_path / "data" / "IMG_0001.jpg", tag)
    labelimg_xml(image, OBJECT)
    files = discover(tmp_path / "data")
    report = check_dataset(files, classes=["Lata"])
    assert not report.errors, report.errors
    assert [f.code for f in report.findings if f.code.startswith("VOC4")] == (["VOC406"] if tag in (2, 3, 4) else [])

    (record,) = load_records(files)
    assert record.clipped == record.dropped == 0
    tensor, target, _ = DetectionDataset([record], ["Lata"])[0]
    pixels = (tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    (box,) = target["boxes"].tolist()
    assert box == list(map(float, OBJECT))
    assert brightness(pixels, box) > 200  # the can is where LabelImg showed it

    (stored_rule,) = load_records(files, exif="ignore")  # the old rule learned the wrong place
    stored_pixels = read_image(stored_rule.image, exif="ignore")
    sx0, sy0, sx1, sy1 = stored_rule.annotation.objects[0].box
    assert brightness(stored_pixels, (sx0, sy0, sx1, sy1)) < 200


def test_a_one_image_rotated_dataset_trains(tmp_path: Path, capsys) -> None:
    """Orientation 6 annotated upright: `detect.train` runs its checks and trains (the old
    rule refused it with size and out-of-image errors)."""
    from conftest import TINY_TRAIN
    from detect import train

    data = tmp_path / "data"
    image = rotated_photo(data / "IMG_0002.jpg", 6)
    labelimg_xml(image, OBJECT)
    (data / "classes.txt").write_text("Lata\n")
    argv = ["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(tmp_path / "w"),
            "--epochs", "1", "--weights", "none", "--val-fraction", "0", *TINY_TRAIN]
    code = train.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]


def test_the_stored_frame_is_recognised_and_fixed(tmp_path: Path, capsys) -> None:
    """An EXIF-unaware tool (LabelImg before 1.8.4) drew on the stored pixels of a photo
    that displays turned by 90 degrees: VOC409, and --fix maps the box into the upright frame."""
    data = tmp_path / "data"
    image = rotated_photo(data / "IMG_0003.jpg", 6)
    stored = read_image(image, exif="ignore")
    sw, sh = stored.shape[1], stored.shape[0]
    # where the can is on the stored pixels: the upright box mapped back (6's inverse is 8)
    old_box = exif_box(OBJECT, *UPRIGHT, 8)
    assert brightness(stored, old_box) > 200
    xml = unaware_tool_xml(image, (sw, sh), old_box)
    assert check_xml.main([str(data), "--format", "json"]) == 1
    assert '"VOC409"' in capsys.readouterr().out
    assert check_xml.main([str(data), "--fix"]) == 0, capsys.readouterr()
    ann = parse_voc(xml)
    assert (ann.width, ann.height) == UPRIGHT and tuple(ann.objects[0].box) == tuple(map(float, OBJECT))
    assert brightness(read_image(image), ann.objects[0].box) > 200
    assert xml.with_suffix(".xml.bak").is_file()


def test_pre_annotation_is_what_labelimg_would_save(tmp_path: Path) -> None:
    """--save-xml writes the upright frame (the pixels read_image gives) and LabelImg's own
    conventions, so an untouched pre-annotation does not change when saved in LabelImg."""
    from detect.inference.outputs import voc_annotation

    image = rotated_photo(tmp_path / "IMG_0004.jpg", 8)
    pixels = read_image(image)
    w, h = UPRIGHT
    boxes = np.array([[4.4, 30.2, 39.6, 41.6], [-3.0, 0.4, 20.0, 12.0], [50.0, 20.0, w + 4.0, h - 0.2]])
    result = SimpleNamespace(image=pixels, names=["Lata"] * 3, detections=SimpleNamespace(boxes=boxes))
    ann = voc_annotation(result, image_path=image)
    assert (ann.width, ann.height) == UPRIGHT
    got = [(tuple(o.box), o.truncated) for o in ann.objects]
    assert got == [((4, 30, 40, 42), False), ((1, 1, 20, 12), True), ((50, 20, w, h), True)]
    # LabelImg's save of these boxes (int(), at least 1, its truncated rule) gives the same
    for box, truncated in got:
        x0, y0, x1, y1 = (max(1, int(v)) if i < 2 else int(v) for i, v in enumerate(box))
        assert (x0, y0, x1, y1) == box and truncated == (y1 == h or y0 == 1 or x1 == w or x0 == 1)
