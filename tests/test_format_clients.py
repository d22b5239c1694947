"""What detect.convert and --save-ls write, read by the tools users read them with: supervision's
dataset loaders (YOLO and Pascal VOC), pycocotools (COCO) and label-studio-sdk's prediction
validator. Every image is found and every box agrees within 1 px, in the upright frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from conftest import CLASSES, write_sample
from detect.convert import main as convert
from detect.data.layout import discover
from detect.data.records import load_records

PX = 1.0  # what "the same box" means to another tool: within one pixel


def demo_source(root: Path) -> Path:
    from detect.demo.dataset import make_demo_dataset

    return make_demo_dataset(root / "demo", num_images=8, seed=3, image_size=(160, 120))


def folders_source(root: Path) -> Path:
    """The ``annotations/ + images/`` layout (two folders side by side, as many downloads come)."""
    src = root / "raccoons"
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        objects = []
        for name in ("Lata", "Botella")[: 1 + i % 2]:
            x0, y0 = (int(v) for v in rng.integers(0, 40, 2))
            objects.append((name, (x0, y0, x0 + int(rng.integers(10, 50)), y0 + int(rng.integers(10, 40)))))
        write_sample(src / "annotations", src / "images", f"raccoon-{i}", objects)
    return src


SOURCES = {"demo": demo_source, "annotations+images": folders_source}


def expected(src: Path) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """Our records: image name -> sorted (class, box)."""
    return {r.image.name: sorted((o.name, tuple(o.box)) for o in r.annotation.objects)
            for r in load_records(discover(src))}


def same(found: dict, want: dict) -> None:
    assert sorted(found) == sorted(want), "images found differ"
    for name, objects in want.items():
        got = found[name]
        assert [n for n, _ in got] == [n for n, _ in objects], name
        for (_, a), (_, b) in zip(got, objects):
            assert np.abs(np.subtract(a, b)).max() <= PX, (name, a, b)


def from_supervision(dataset) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    out = {}
    for path in dataset.image_paths:
        det = dataset.annotations[path]
        out[Path(path).name] = sorted((dataset.classes[int(c)], tuple(float(v) for v in box))
                                      for box, c in zip(det.xyxy, det.class_id))
    return out


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_supervision_loads_every_image_and_box(source: str, fmt: str, tmp_path: Path) -> None:
    sv = pytest.importorskip("supervision", reason="supervision not installed (pip install -e '.[test]')")
    src = SOURCES[source](tmp_path)
    out = tmp_path / "out"
    assert convert([str(src), str(out), "--to", fmt]) == 0
    if fmt == "yolo":
        ds = sv.DetectionDataset.from_yolo(images_directory_path=str(out / "images"),
                                           annotations_directory_path=str(out / "labels"),
                                           data_yaml_path=str(out / "data.yaml"))
    else:
        ds = sv.DetectionDataset.from_pascal_voc(images_directory_path=str(out / "JPEGImages"),
                                                 annotations_directory_path=str(out / "Annotations"))
    same(from_supervision(ds), expected(src))


def rotated_photo(root: Path) -> Path:
    """A phone photo stored 64 x 48 with EXIF orientation 6 (shown 48 x 64), boxed upright as
    LabelImg 1.8.4+ shows it."""
    from PIL import Image

    from detect.data.voc import Annotation, Box, VocObject, write_voc

    root.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = np.full((48, 64, 3), 90, np.uint8)
    Image.fromarray(pixels).save(root / "phone.jpg", exif=exif)
    write_voc(Annotation("phone.jpg", 48, 64, objects=(VocObject("Lata", Box(2, 3, 30, 60)),)), root / "phone.xml")
    return root


def test_a_rotated_photo_converts_in_the_upright_frame(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    src = rotated_photo(tmp_path / "phone")
    assert convert([str(src), str(tmp_path / "coco"), "--to", "coco"]) == 0
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances.json"))
    img = coco.loadImgs(coco.getImgIds())[0]
    assert (img["width"], img["height"]) == (48, 64)  # upright, as training reads it
    assert coco.loadAnns(coco.getAnnIds())[0]["bbox"] == [2, 3, 28, 57]

    assert convert([str(src), str(tmp_path / "yolo"), "--to", "yolo"]) == 0
    line = (tmp_path / "yolo" / "labels" / "phone.txt").read_text().split()
    cx, cy, w, h = map(float, line[1:])
    assert np.allclose([cx * 48, cy * 64, w * 48, h * 64], [16, 31.5, 28, 57])
    sv = pytest.importorskip("supervision", reason="supervision not installed (pip install -e '.[test]')")
    ds = sv.DetectionDataset.from_yolo(images_directory_path=str(tmp_path / "yolo" / "images"),
                                       annotations_directory_path=str(tmp_path / "yolo" / "labels"),
                                       data_yaml_path=str(tmp_path / "yolo" / "data.yaml"))
    assert np.abs(ds.annotations[ds.image_paths[0]].xyxy[0] - [2, 3, 30, 60]).max() <= PX


LS_PACKAGES = ["label-studio-sdk", "jsonschema", "referencing", "rpds-py", "jsonschema-specifications", "xmljson",
               "jsf", "faker", "smart-open", "wrapt", "rstr", "pyjwt", "cryptography", "cffi", "pycparser", "appdirs"]


@pytest.fixture(scope="session")
def label_interface(tmp_path_factory: pytest.TempPathFactory):
    """label-studio-sdk's ``LabelInterface``, installed with ``--no-deps`` (and the few modules
    its validator imports) into a temporary folder, so its heavy client stack never enters the
    project's environment; skipped where it cannot be had (no network)."""
    try:
        from label_studio_sdk.label_interface import LabelInterface
        return LabelInterface
    except ImportError:
        pass
    target = tmp_path_factory.mktemp("label_studio_sdk")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           *LS_PACKAGES], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip("label-studio-sdk cannot be installed here (no package index): " + done.stderr.strip()[-120:])
    sys.path.insert(0, str(target))
    try:
        from label_studio_sdk.label_interface import LabelInterface
    except ImportError as exc:
        pytest.skip(f"label-studio-sdk installed but its validator does not import: {exc}")
    return LabelInterface


def test_label_studio_validates_save_ls_and_finds_every_image(label_interface, tiny_export, tmp_path: Path,
                                                              capsys) -> None:
    import shutil

    from detect.predict import main as predict

    folder = tmp_path / "lot 7"
    folder.mkdir()
    sources = sorted((tiny_export["data"] / "JPEGImages").glob("*.jpg"))[:3]
    for src, name in zip(sources, ["a & b#2+x.jpg", "caf%C3%A9 100%.jpg", "café ñ.jpg"]):
        shutil.copyfile(src, folder / name)
    tasks_file = tmp_path / "tasks.json"
    assert predict(["--weights", str(tiny_export["onnx"]), str(folder), "--out", str(tmp_path / "p"), "--conf", "0.0",
                    "--save-ls", str(tasks_file), "--no-save-images", "--no-progress"]) == 0
    capsys.readouterr()
    labels = "".join(f'<Label value="{c}"/>' for c in CLASSES)
    interface = label_interface(f'<View><Image name="image" value="$image"/><RectangleLabels name="label" '
                                f'toName="image">{labels}</RectangleLabels></View>')
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 3 and sum(len(t["predictions"][0]["result"]) for t in tasks) > 0
    for task in tasks:
        for prediction in task["predictions"]:
            assert interface.validate_prediction(prediction, return_errors=True) == []
    prefix = "/data/local-files/?d="
    found = sorted(Path("/" + unquote(t["data"]["image"][len(prefix):])) for t in tasks)
    assert found == sorted(p.resolve() for p in folder.iterdir())
