"""COCO and YOLO in and out: round trips to VOC, files shaped like CVAT's and Label Studio's
COCO exports, bad files (one line, exit 2), the checker and training on COCO/YOLO sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detect import convert as C
from detect.data.layout import discover, resolve_splits
from detect.data.records import load_records

from conftest import BCCD, CLASSES, make_devkit, write_sample

YOLO_PX = 1e-4  # the YOLO reader rounds pixel coordinates to 1e-4 px
COCO_PX = 1e-9  # COCO keeps full float precision: one float rounding (whole pixels: exact)


def boxes_of(data: Path, **kw) -> tuple[dict, list[str], dict]:
    files = discover(data, **kw)
    records = load_records(files, warn_each=False)
    by_image = {r.image.name: sorted((o.name, tuple(o.box), o.difficult) for o in r.annotation.objects)
                for r in records}
    ids = {files.sample_id(x): x for x in files.xml_files}
    splits = {k: sorted(ids_) for k, ids_ in files.split_lists.items() if k != "trainval"}
    return by_image, list(files.classes), splits


def same_boxes(a: dict, b: dict, tol: float, *, difficult: bool = True) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for (n1, b1, d1), (n2, b2, d2) in zip(a[key], b[key]):
            assert n1 == n2, key
            assert max(abs(x - y) for x, y in zip(b1, b2)) <= tol, (key, b1, b2)
            if difficult:
                assert d1 == d2, key


def round_trip(src: Path, tmp: Path, fmt: str) -> tuple[Path, Path]:
    mid, back = tmp / fmt, tmp / f"{fmt}-voc"
    assert C.main([str(src), str(mid), "--to", fmt]) == 0
    assert C.main([str(mid), str(back), "--to", "voc"]) == 0
    return mid, back


@pytest.fixture
def decimals(tmp_path: Path) -> Path:
    """A devkit with fractional coordinates, a difficult object and an empty image."""
    data = make_devkit(tmp_path / "src", n=6)
    from detect.data.voc import Annotation, Box, VocObject, parse_voc, write_voc

    xml = data / "Annotations" / "img_001.xml"
    ann = parse_voc(xml)
    objs = (VocObject("Botella", Box(3.25, 4.5, 40.125, 60.75), difficult=True),) + ann.objects
    write_voc(Annotation(ann.filename, ann.width, ann.height, objects=objs), xml)
    write_sample(data / "Annotations", data / "JPEGImages", "empty", [])
    (data / "ImageSets" / "Main" / "train.txt").write_text(
        (data / "ImageSets" / "Main" / "train.txt").read_text() + "empty\n")
    return data


def test_voc_coco_voc_keeps_boxes_classes_difficult_and_splits(decimals: Path, tmp_path: Path, capsys) -> None:
    coco_dir, back = round_trip(decimals, tmp_path, "coco")
    assert "classes in order: Lata, Lata_defectuosa, Botella, Botella_defectuosa" in capsys.readouterr().out
    a, _, sa = boxes_of(decimals)
    b, _, sb = boxes_of(back)
    same_boxes(a, b, COCO_PX)
    assert sa == sb and (back / "classes.txt").read_text().split() == list(CLASSES)
    assert discover(coco_dir).classes == CLASSES
    # Every whole-pixel box comes back exactly.
    assert (back / "Annotations" / "img_000.xml").read_text() == (decimals / "Annotations" / "img_000.xml").read_text().replace(
        "<folder></folder>", "<folder>JPEGImages</folder>")


def test_pycocotools_reads_the_written_file_with_our_boxes(decimals: Path, tmp_path: Path) -> None:
    """The coordinate convention checked by COCO's own code: scoring the ground truth against
    itself as detections gives AP 1, and areas are w*h (no +1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib, io

    C.main([str(decimals), str(tmp_path / "c"), "--to", "coco"])
    path = tmp_path / "c" / "annotations" / "instances_train.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ann = next(a for a in gt.dataset["annotations"] if a["bbox"][0] == 3.25)
        assert ann["bbox"] == [3.25, 4.5, 36.875, 56.25] and ann["area"] == 36.875 * 56.25
        assert ann["iscrowd"] == 0 and ann["attributes"]["difficult"] is True
        dets = gt.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                            "score": 1.0} for a in gt.dataset["annotations"]])
        ev = COCOeval(gt, dets, "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_voc_yolo_voc_keeps_boxes_classes_and_splits(decimals: Path, tmp_path: Path) -> None:
    yolo_dir, back = round_trip(decimals, tmp_path, "yolo")
    a, _, sa = boxes_of(decimals)
    b, _, sb = boxes_of(back)
    same_boxes(a, b, YOLO_PX, difficult=False)  # YOLO holds no difficult
    assert sa == sb
    assert discover(yolo_dir / "data.yaml").classes == CLASSES
    assert (yolo_dir / "labels" / "empty.txt").read_text() == ""


def test_ultralytics_reads_our_data_yaml_layout(decimals: Path, tmp_path: Path) -> None:
    """The label path rule is Ultralytics' own (img2label_paths) where it is installed."""
    ul = pytest.importorskip("ultralytics.data.utils")
    C.main([str(decimals), str(tmp_path / "y"), "--to", "yolo", "--copy"])
    img = tmp_path / "y" / "images" / "img_000.jpg"
    assert Path(ul.img2label_paths([str(img)])[0]) == tmp_path / "y" / "labels" / "img_000.txt"


@pytest.mark.skipif(not BCCD.is_dir(), reason="BCCD not present (../shared/data/bccd)")
@pytest.mark.parametrize("fmt,tol", [("coco", COCO_PX), ("yolo", YOLO_PX)])
def test_bccd_round_trips(fmt: str, tol: float, tmp_path: Path) -> None:
    _, back = round_trip(BCCD, tmp_path, fmt)
    a, _, sa = boxes_of(BCCD)
    b, _, sb = boxes_of(back)
    same_boxes(a, b, tol, difficult=fmt == "coco")
    assert sa == sb and sum(map(len, a.values())) > 4000


def write_json(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def tool_export(tmp_path: Path, tool: str) -> tuple[Path, dict]:
    """A COCO file as CVAT 2.x ("COCO 1.0") and Label Studio ("COCO") export it, from their
    documented schema and exporter code: CVAT numbers categories from 1 with empty
    supercategory and puts attributes (occluded) under 'attributes'; Label Studio numbers
    categories from 0 and prefixes file names with 'images/'."""
    root = tmp_path / tool
    objects = [("Lata", (10, 12, 40, 60)), ("Botella_defectuosa", (50.5, 5.25, 90, 70))]
    prefix = "images/" if tool == "label-studio" else ""
    write_sample(root, root / "images", "frame_000000", objects)
    (root / "frame_000000.xml").unlink()
    first = 1 if tool == "cvat" else 0
    cats = [{"id": first + i, "name": c, "supercategory": ""} for i, c in enumerate(CLASSES)]
    anns = []
    for k, (name, (x0, y0, x1, y1)) in enumerate(objects):
        a = {"id": k + 1, "image_id": 1 if tool == "cvat" else 0, "category_id": first + CLASSES.index(name),
             "segmentation": [], "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
        if tool == "cvat":
            a["attributes"] = {"occluded": False, "rotation": 0.0}
        else:
            a["ignore"] = 0
        anns.append(a)
    image = {"id": 1 if tool == "cvat" else 0, "width": 96, "height": 80, "file_name": prefix + "frame_000000.jpg"}
    if tool == "cvat":
        image.update({"license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0})
    doc = {"images": [image], "categories": cats, "annotations": anns,
           "info": {"year": 2024, "version": "1.0", "description": "", "contributor": tool, "url": "", "date_created": ""}}
    if tool == "cvat":
        doc["licenses"] = [{"name": "", "id": 0, "url": ""}]
    name = "annotations/instances_default.json" if tool == "cvat" else "result.json"
    return write_json(root / name, doc), dict(objects)


@pytest.mark.parametrize("tool", ["cvat", "label-studio"])
def test_coco_exports_of_cvat_and_label_studio_round_trip(tool: str, tmp_path: Path) -> None:
    path, objects = tool_export(tmp_path, tool)
    back = tmp_path / "voc"
    assert C.main([str(path), str(back), "--to", "voc"]) == 0
    records = load_records(discover(back))
    got = {o.name: tuple(o.box) for o in records[0].annotation.objects}
    assert got == {k: tuple(map(float, v)) for k, v in objects.items()}
    assert discover(path).classes == CLASSES
    again = tmp_path / "coco-again"
    assert C.main([str(back), str(again), "--to", "coco"]) == 0
    doc = json.loads((again / "annotations" / "instances.json").read_text())
    assert [a["bbox"] for a in doc["annotations"]] == [a["bbox"] for a in json.loads(path.read_text())["annotations"]]


def one_line_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert C.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def yolo_src(tmp_path: Path) -> Path:
    data = make_devkit(tmp_path / "src", n=4)
    assert C.main([str(data), str(tmp_path / "yolo"), "--to", "yolo", "--copy"]) == 0
    return tmp_path / "yolo"


@pytest.mark.parametrize("line,needle", [("1 1.2 0.5 0.1 0.1", "cx = 1.2 is outside [0, 1]"),
                                         ("7 0.5 0.5 0.1 0.1", "class id 7 is past the class list")])
def test_bad_yolo_line_is_one_line_with_file_and_line(line: str, needle: str, yolo_src: Path, tmp_path: Path,
                                                      capsys) -> None:
    label = yolo_src / "labels" / "img_001.txt"
    label.write_text(label.read_text() + line + "\n")
    number = len(label.read_text().splitlines())
    one_line_exit_2([str(yolo_src), str(tmp_path / "out"), "--to", "voc"], capsys, f"{label}:{number}:", needle)
    assert not (tmp_path / "out").exists()
    from detect import check_xml
    assert check_xml.main([str(yolo_src)]) == 2
    assert f"{label}:{number}:" in capsys.readouterr().err


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["categories"].pop(), "annotations[1].category_id: 4 is not in categories[]"),
    (lambda d: d["annotations"][0].update(image_id=99), "annotations[0].image_id: 99 names no entry of images[]"),
])
def test_bad_coco_file_is_one_line_with_json_path(edit, needle: str, tmp_path: Path, capsys) -> None:
    path, _ = tool_export(tmp_path, "cvat")
    doc = json.loads(path.read_text())
    doc["annotations"][1]["category_id"] = 4
    edit(doc)
    write_json(path, doc)
    one_line_exit_2([str(path), str(tmp_path / "out"), "--to", "yolo"], capsys, f"{path}#{needle}")


def test_convert_refuses_a_non_empty_destination(devkit: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    one_line_exit_2([str(devkit), str(tmp_path / "taken"), "--to", "coco"], capsys, "not an empty folder")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_checker_reports_yolo_findings_at_their_label_line(yolo_src: Path, capsys) -> None:
    from detect import check_xml

    label = yolo_src / "labels" / "img_002.txt"
    first = label.read_text().splitlines()[0]
    label.write_text(label.read_text() + first + "\n")  # an exact duplicate object
    number = len(label.read_text().splitlines())
    assert check_xml.main([str(yolo_src / "data.yaml"), "--classes", str(yolo_src / "classes.txt")]) in (0, 1)
    out = capsys.readouterr().out
    assert f"{label}:{number}" in out and "VOC206" in out, out


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_training_on_coco_and_yolo_sees_the_voc_records(fmt: str, tmp_path: Path, capsys) -> None:
    from detect import train as T
    from conftest import TINY_TRAIN

    data = make_devkit(tmp_path / "src", n=6)
    conv = tmp_path / fmt
    assert C.main([str(data), str(conv), "--to", fmt]) == 0
    src = conv / "annotations" if fmt == "coco" else conv / "data.yaml"
    def recs(path):
        files = discover(path)
        splits, _ = resolve_splits(files)
        return {k: [(r.sample_id, r.annotation.objects) for r in load_records(files, v)] for k, v in splits.items()}
    assert recs(data) == recs(conv if fmt == "coco" else src)
    out = tmp_path / "weights"
    argv = ["--data", str(conv if fmt == "coco" else src), "--out", str(out), "--epochs", "1", "--weights", "none",
            "--name", fmt, *TINY_TRAIN]
    assert T.main(argv) == 0, capsys.readouterr().err
    split = json.loads((out / fmt / "split.json").read_text())
    assert split["val"] == ["img_000"] and (out / fmt / "best.pt").is_file()


def test_predict_save_ls_writes_label_studio_tasks_with_predictions(tmp_path: Path, capsys) -> None:
    """Label Studio's import schema: data.image, predictions[].model_version/score/result, each
    result a rectanglelabels value in percent of original_width/height."""
    from conftest import make_tiny_checkpoint
    from detect import predict

    data = make_devkit(tmp_path / "data", n=3)
    pt = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data)
    ls = tmp_path / "tasks.json"
    argv = ["--weights", str(pt), str(data / "JPEGImages"), "--save-ls", str(ls), "--conf", "0.0",
            "--no-save-images", "--out", str(tmp_path / "pred"), "--name", "p", "--no-progress"]
    assert predict.main(argv) == 0, capsys.readouterr().err
    tasks = json.loads(ls.read_text())
    assert len(tasks) == 3
    for task in tasks:
        assert task["data"]["image"].startswith("/data/local-files/?d=")
        assert Path("/" + task["data"]["image"].split("?d=", 1)[1]).is_file()
        (pred,) = task["predictions"]
        assert "best.pt" in pred["model_version"] and 0 <= pred["score"] <= 1
        assert pred["result"], "the tiny model detects at conf 0"
        for r in pred["result"]:
            assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
            assert (r["original_width"], r["original_height"]) == (96, 80)
            v = r["value"]
            assert v["rectanglelabels"][0] in CLASSES and 0 <= r["score"] <= 1
            assert 0 <= v["x"] <= 100 and 0 <= v["x"] + v["width"] <= 100 + 1e-9
