"""Careless and hostile inputs and outputs, command by command: one row per case.

Each row names a command, the input a new user (or a file from the internet) gives it, and
the promise the command keeps: one line naming the file and the fix (exit 2 usage, 1
failure), no traceback, nothing written outside what the user named, no output replaced
without ``--overwrite``, output paths checked before the work starts.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from conftest import make_devkit, write_sample


@dataclass
class Ctx:
    """What a row sees: its folder, and the tiny model (built once per session) on demand."""

    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    @property
    def model(self) -> dict[str, Path]:
        return self.request.getfixturevalue("tiny_export")

    def devkit(self, n: int = 4) -> Path:
        return make_devkit(self.tmp / "data", n=n)


@dataclass
class Row:
    command: str
    given: str
    argv: Callable[[Ctx], list[str]]
    promise: Callable[[Ctx, int, str, str], None]

    def __str__(self) -> str:
        return f"{self.command}: {self.given}"


def _main(command: str):
    from detect import audit, benchmark, check_xml, convert, eval as evaluate, export, predict

    return {"convert": convert.main, "predict": predict.main, "audit": audit.main, "benchmark": benchmark.main,
            "export": export.main, "eval": evaluate.main, "checker": check_xml.main}[command]


# -- promises -----------------------------------------------------------------------------


def one_line(err: str) -> None:
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:") or line.startswith("check_xml: error:")]
    assert len(lines) == 1 and len(err.strip().splitlines()) <= 2, err


def refused(*needles: str, code: int = 2, also: Callable[[Ctx], None] | None = None):
    def check(ctx: Ctx, rc: int, out: str, err: str) -> None:
        assert rc == code, (rc, err)
        one_line(err)
        for needle in needles:
            assert needle in err, (needle, err)
        if also is not None:
            also(ctx)
    return check


def named(*needles: str):
    """A failure (any non-zero exit) that names the input and what is wrong (a list of
    files may follow its first line)."""
    def check(ctx: Ctx, rc: int, out: str, err: str) -> None:
        assert rc not in (0, None) and "Traceback" not in err, (rc, err)
        assert err.startswith("error:") and all(n in err for n in needles), err
    return check


def done(also: Callable[[Ctx], None], code: int = 0):
    def check(ctx: Ctx, rc: int, out: str, err: str) -> None:
        assert rc == code, (rc, err)
        assert "Traceback" not in err, err
        also(ctx)
    return check


def unchanged(name: str, text: str = "precious\n"):
    def check(ctx: Ctx) -> None:
        assert (ctx.tmp / name).read_text() == text
    return check


def absent(*names: str):
    def check(ctx: Ctx) -> None:
        for name in names:
            assert not os.path.lexists(ctx.tmp / name), name
    return check


def precious(ctx: Ctx, name: str) -> str:
    path = ctx.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("precious\n")
    return str(path)


def image(path: Path, size=(64, 48), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


# -- convert ------------------------------------------------------------------------------


def coco_source(ctx: Ctx, file_names: list[str], *, images: list[Path] | None = None) -> Path:
    root = ctx.tmp / "src"
    for p in images if images is not None else [root / "images" / Path(n).name for n in file_names]:
        image(p)
    doc = {"images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(file_names)],
           "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 6, 20, 10]}
                           for i in range(len(file_names))],
           "categories": [{"id": 1, "name": "Lata"}]}
    path = root / "annotations" / "instances.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def escape_argv(ctx: Ctx) -> list[str]:
    precious(ctx, "a/escape/x.xml")
    return [str(coco_source(ctx, ["../../../escape/x.jpg"])), str(ctx.tmp / "a" / "b" / "out"), "--to", "voc"]


def escape_kept(ctx: Ctx) -> None:
    assert (ctx.tmp / "a" / "escape" / "x.xml").read_text() == "precious\n"
    assert sorted(p.name for p in (ctx.tmp / "a" / "escape").iterdir()) == ["x.xml"]
    assert (ctx.tmp / "a" / "b" / "out" / "JPEGImages" / "x.jpg").is_file()


def absolute_argv(ctx: Ctx) -> list[str]:
    elsewhere = image(ctx.tmp / "elsewhere" / "y.jpg")
    return [str(coco_source(ctx, [str(elsewhere)], images=[elsewhere])), str(ctx.tmp / "out"), "--to", "voc"]


def absolute_kept(ctx: Ctx) -> None:
    assert [p.name for p in (ctx.tmp / "elsewhere").iterdir()] == ["y.jpg"]
    assert (ctx.tmp / "out" / "JPEGImages" / "y.jpg").is_file() and (ctx.tmp / "out" / "Annotations" / "y.xml").is_file()


def folders_source(ctx: Ctx) -> Path:
    root = ctx.tmp / "raccoons"
    for i in (1, 2):
        write_sample(root / "annotations", root / "images", f"raccoon-{i}", [("Lata", (4, 5, 40, 30))])
    return root


def flat_yolo(ctx: Ctx) -> None:
    out = ctx.tmp / "out"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["raccoon-1.jpg", "raccoon-2.jpg"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["raccoon-1.txt", "raccoon-2.txt"]


def hard_linked(ctx: Ctx) -> None:
    for placed in (ctx.tmp / "out" / "JPEGImages").iterdir():
        assert not placed.is_symlink() and placed.is_file()
        assert placed.stat().st_ino == (ctx.tmp / "data" / "JPEGImages" / placed.name).stat().st_ino


def clash_argv(ctx: Ctx) -> list[str]:
    root = ctx.tmp / "src"
    write_sample(root / "train", root / "train", "a", [("Lata", (4, 5, 40, 30))])
    write_sample(root / "val", root / "val", "a", [("Botella", (4, 5, 40, 30))])
    write_sample(root / "val", root / "val", "b", [("Botella", (4, 5, 40, 30))])
    return [str(root), str(ctx.tmp / "out"), "--to", "yolo"]


def clash_kept(ctx: Ctx) -> None:
    labels = ctx.tmp / "out" / "labels"
    assert sorted(p.relative_to(labels).as_posix() for p in labels.rglob("*.txt")) == ["b.txt", "train/a.txt", "val/a.txt"]


def linked_yolo_argv(ctx: Ctx) -> list[str]:
    from detect.convert import main

    assert main([str(folders_source(ctx)), str(ctx.tmp / "yolo"), "--to", "yolo", "--symlink"]) == 0
    return [str(ctx.tmp / "yolo"), str(ctx.tmp / "out"), "--to", "voc"]


def rotated_argv(ctx: Ctx, *, stated: tuple[int, int] = (48, 64), to: str = "coco") -> list[str]:
    from PIL import Image

    root = ctx.tmp / "phone"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 x 48, shown upright as 48 x 64
    Image.new("RGB", (64, 48), (90, 90, 90)).save(root / "p.jpg", exif=exif)
    from detect.data.voc import Annotation, Box, VocObject, write_voc

    write_voc(Annotation("p.jpg", *stated, objects=(VocObject("Lata", Box(2, 3, 30, 60)),)), root / "p.xml")
    return [str(root), str(ctx.tmp / "out"), "--to", to]


def upright_voc(ctx: Ctx) -> None:
    from detect.data.voc import parse_voc

    ann = parse_voc(ctx.tmp / "out" / "Annotations" / "p.xml")
    assert (ann.width, ann.height) == (48, 64) and tuple(ann.objects[0].box) == (2, 3, 30, 60)


def upright_coco(ctx: Ctx) -> None:
    doc = json.loads((ctx.tmp / "out" / "annotations" / "instances.json").read_text())
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (48, 64)
    assert doc["annotations"][0]["bbox"] == [2, 3, 28, 57]


CONVERT = [
    Row("convert", "COCO file_name '../../../escape/x.jpg'", escape_argv, done(escape_kept)),
    Row("convert", "COCO file_name an absolute path", absolute_argv, done(absolute_kept)),
    Row("convert", "DST a new folder inside SRC",
        lambda c: [str(c.devkit()), str(c.tmp / "data" / "converted"), "--to", "coco"],
        refused("inside the source", also=absent("data/converted"))),
    Row("convert", "DST a folder that holds SRC",
        lambda c: [str(make_devkit(c.tmp / "big" / "data", n=2)), str(c.tmp / "big"), "--to", "coco"],
        refused("big")),
    Row("convert", "annotations/ + images/ layout to YOLO",
        lambda c: [str(folders_source(c)), str(c.tmp / "out"), "--to", "yolo"], done(flat_yolo)),
    Row("convert", "default image placement (no --copy)",
        lambda c: [str(c.devkit()), str(c.tmp / "out"), "--to", "voc"], done(hard_linked)),
    Row("convert", "one image name in two folders", clash_argv, done(clash_kept)),
    Row("convert", "COCO file with two images[] entries for one file",
        lambda c: [str(coco_source(c, ["d.jpg", "d.jpg"])), str(c.tmp / "out"), "--to", "voc"],
        refused("images[1].file_name", "images[0]", also=absent("out"))),
    Row("convert", "COCO file naming an image that does not exist",
        lambda c: [str(coco_source(c, ["gone.jpg"], images=[])), str(c.tmp / "out"), "--to", "voc"],
        refused("gone.jpg", also=absent("out"))),
    Row("convert", "YOLO source whose images are symbolic links, to VOC", linked_yolo_argv,
        done(lambda c: [p.name for p in sorted((c.tmp / "out" / "Annotations").iterdir())] == ["raccoon-1.xml", "raccoon-2.xml"]
             or pytest.fail(str(list((c.tmp / "out" / "Annotations").rglob("*")))))),
    Row("convert", "a phone photo with EXIF orientation 6, to COCO", rotated_argv, done(upright_coco)),
    Row("convert", "a phone photo with EXIF orientation 6 whose XML states the stored size, to VOC",
        lambda c: rotated_argv(c, stated=(64, 48), to="voc"), done(upright_voc)),
    Row("convert", "DST an existing file",
        lambda c: [str(c.devkit()), precious(c, "out.txt"), "--to", "voc"], refused("out.txt", also=unchanged("out.txt"))),
]


# -- predict ------------------------------------------------------------------------------


def predict_argv(ctx: Ctx, *extra: str, source: str | None = None) -> list[str]:
    src = source or str(ctx.model["data"] / "JPEGImages" / "img_000.jpg")
    return ["--weights", str(ctx.model["onnx"]), src, "--out", str(ctx.tmp / "pred"), "--no-save-images",
            "--no-progress", *extra]


def awkward_names_argv(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "lot"
    for i, name in enumerate(["lot 7 & line#2+x.jpg", "caf%C3%A9 100%.jpg", "café ñ.jpg"]):
        image(folder / name, seed=i)
    return predict_argv(ctx, "--save-ls", str(ctx.tmp / "tasks.json"), source=str(folder))


def ls_urls_decode(ctx: Ctx) -> None:
    tasks = json.loads((ctx.tmp / "tasks.json").read_text())
    prefix = "/data/local-files/?d="
    found = sorted(Path("/" + unquote(t["data"]["image"][len(prefix):])) for t in tasks)
    assert found == sorted(p.resolve() for p in (ctx.tmp / "lot").iterdir())


def loop_argv(ctx: Ctx) -> list[str]:
    image(ctx.tmp / "dir" / "a.jpg")
    os.symlink("..", ctx.tmp / "dir" / "loop")
    return predict_argv(ctx, "--save-json", source=str(ctx.tmp / "dir" / "**" / "*.jpg"))


def one_prediction(ctx: Ctx) -> None:
    summary = json.loads(next((ctx.tmp / "pred").glob("*/summary.json")).read_text())
    assert summary["images"] == 1, summary


def empty_video_argv(ctx: Ctx) -> list[str]:
    writer = cv2.VideoWriter(str(ctx.tmp / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 80))
    writer.release()
    return predict_argv(ctx, source=str(ctx.tmp / "empty.avi"))


def foreign_graph_argv(ctx: Ctx) -> list[str]:
    """A graph with our input, outputs and metadata whose outputs do not fit together."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v"))

    nodes = [const("b0", np.zeros((3, 4), np.float32)), const("labels", np.ones(3, np.int64)),
             const("scores", np.full(5, 0.9, np.float32)), helper.make_node("Identity", ["b0"], ["boxes"])]
    graph = helper.make_graph(
        nodes, "not-ours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "H", "W"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["M"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ours = onnx.load(str(ctx.model["onnx"]), load_external_data=False)
    for prop in ours.metadata_props:
        entry = model.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    path = ctx.tmp / "foreign.onnx"
    onnx.save(model, str(path))
    return ["--weights", str(path), str(ctx.model["data"] / "JPEGImages" / "img_000.jpg"), "--out",
            str(ctx.tmp / "pred"), "--no-progress"]


PREDICT = [
    Row("predict", "--save-ls FILE that exists",
        lambda c: predict_argv(c, "--save-ls", precious(c, "tasks.json")),
        refused("tasks.json", "--overwrite", also=lambda c: (unchanged("tasks.json")(c), absent("pred")(c)))),
    Row("predict", "--save-ls FILE that exists, with --overwrite",
        lambda c: predict_argv(c, "--save-ls", precious(c, "tasks.json"), "--overwrite"),
        done(lambda c: isinstance(json.loads((c.tmp / "tasks.json").read_text()), list) or pytest.fail("not a list"))),
    Row("predict", "--save-ls a folder",
        lambda c: predict_argv(c, "--save-ls", str(c.tmp)), refused("folder", also=absent("pred"))),
    Row("predict", "--save-ls under a file",
        lambda c: predict_argv(c, "--save-ls", precious(c, "f") + "/tasks.json"), refused("f", also=absent("pred"))),
    Row("predict", "--save-ls images named with space & # + % and accents", awkward_names_argv, done(ls_urls_decode)),
    Row("predict", "a glob over a folder with a link loop", loop_argv, done(one_prediction)),
    Row("predict", "a video with 0 frames", empty_video_argv, named("empty.avi", "no frame")),
    Row("predict", "--track --events FILE that exists",
        lambda c: predict_argv(c, "--track", "--sequence", "--events", precious(c, "events.jsonl")),
        refused("events.jsonl", "--overwrite", also=unchanged("events.jsonl"))),
    Row("predict", "--save-json into a run folder that exists",
        lambda c: (os.makedirs(c.tmp / "pred" / "tiny"), precious(c, "pred/tiny/predictions.json"),
                   predict_argv(c, "--save-json"))[-1],
        done(lambda c: (unchanged("pred/tiny/predictions.json")(c),
                        json.loads((c.tmp / "pred" / "tiny2" / "predictions.json").read_text())))),
    Row("predict", "an ONNX graph that is not our detector but carries our metadata", foreign_graph_argv,
        refused("foreign.onnx", "not a detector", code=1)),
]


# -- audit --------------------------------------------------------------------------------


def audit_argv(ctx: Ctx, *extra: str, data: Path | None = None, out: str | None = None) -> list[str]:
    return ["--weights", str(ctx.model["onnx"]), "--data", str(data or ctx.model["data"]), "--out",
            out or str(ctx.tmp / "audit"), "--no-progress", "--gallery", "0", *extra]


def missing_image_data(ctx: Ctx) -> Path:
    data = make_devkit(ctx.tmp / "data", n=2)
    next((data / "JPEGImages").iterdir()).unlink()
    return data


AUDIT = [
    Row("audit", "--save-xml inside the dataset",
        lambda c: audit_argv(c, "--save-xml", str(c.devkit() / "fixes"), data=c.tmp / "data"),
        refused("--save-xml", also=absent("audit", "data/fixes"))),
    Row("audit", "--save-xml a folder that holds files",
        lambda c: audit_argv(c, "--save-xml", str(Path(precious(c, "review/keep.xml")).parent)),
        refused("--save-xml", "--overwrite", also=lambda c: (unchanged("review/keep.xml")(c), absent("audit")(c)))),
    Row("audit", "--save-xml a file",
        lambda c: audit_argv(c, "--save-xml", precious(c, "review")),
        refused("review", also=lambda c: (unchanged("review")(c), absent("audit")(c)))),
    Row("audit", "--out a file", lambda c: audit_argv(c, out=precious(c, "o")),
        refused("--out", also=unchanged("o"))),
    Row("audit", "--data a folder that does not exist",
        lambda c: audit_argv(c, data=c.tmp / "nowhere"), refused("nowhere")),
    Row("audit", "--data whose XML names an image that does not exist",
        lambda c: audit_argv(c, data=missing_image_data(c)), named("img_001.xml", "not found")),
]


# -- benchmark ----------------------------------------------------------------------------


def bench_argv(ctx: Ctx, *extra: str) -> list[str]:
    # The work must never start in these rows: its first step fails loudly if it does.
    from detect.deploy import onnx_export

    def started(*a, **k):
        raise AssertionError("the benchmark started its work")

    ctx.monkeypatch.setattr(onnx_export, "export_onnx", started)
    return ["--weights", str(ctx.model["pt"]), "--no-e2e", "--no-openvino", *extra]


def link_elsewhere(ctx: Ctx) -> str:
    target = precious(ctx, "elsewhere/real.json")
    os.symlink(target, ctx.tmp / "b.json")
    return str(ctx.tmp / "b.json")


def full_disk_argv(ctx: Ctx) -> list[str]:
    """The whole (tiny) benchmark runs; the disk is full when its JSON is written at the end."""
    import errno

    from detect.common import files

    real = files.write_atomic

    def full(path, data, **kw):
        if Path(path).name == "b.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    ctx.monkeypatch.setattr(files, "write_atomic", full)
    return ["--weights", str(ctx.model["pt"]), "--threads", "1", "--images", "2", "--calibrate", "2", "--no-e2e",
            "--no-openvino", "--json", str(ctx.tmp / "b.json")]


def figures_kept(ctx: Ctx, rc: int, out: str, err: str) -> None:
    assert rc == 1, (rc, err)
    one_line(err)
    assert "b.json" in err and "No space left" in err
    assert "ONNX int8" in out and "p50 1t" in out  # the figures of minutes of work are on the screen


BENCHMARK = [
    Row("benchmark", "--json that cannot be written when the run ends (disk full)", full_disk_argv, figures_kept),
    Row("benchmark", "--json FILE that exists", lambda c: bench_argv(c, "--json", precious(c, "b.json")),
        refused("b.json", "--overwrite", also=unchanged("b.json"))),
    Row("benchmark", "--json a folder", lambda c: bench_argv(c, "--json", str(c.tmp / "d.json") if os.makedirs(c.tmp / "d.json") is None else ""),
        refused("d.json", "folder")),
    Row("benchmark", "--json under a file", lambda c: bench_argv(c, "--json", precious(c, "f") + "/b.json"),
        refused("f")),
    Row("benchmark", "--json a link to a file elsewhere", lambda c: bench_argv(c, "--json", link_elsewhere(c)),
        refused("b.json", "--overwrite", also=unchanged("elsewhere/real.json"))),
    Row("benchmark", "--weights that do not exist",
        lambda c: ["--weights", str(c.tmp / "none.pt"), "--json", str(c.tmp / "b.json")], refused("none.pt")),
    Row("benchmark", "--json not ending in .json", lambda c: bench_argv(c, "--json", str(c.tmp / "b.txt")),
        refused("b.txt", "must end in .json")),
]


# -- export -------------------------------------------------------------------------------


def export_argv(ctx: Ctx, *extra: str) -> list[str]:
    return ["--weights", str(ctx.model["pt"]), "--verify-images", "0", *extra]


def interrupted_check_argv(ctx: Ctx) -> list[str]:
    from detect.deploy import onnx_export

    def stop(*a, **k):
        raise KeyboardInterrupt

    ctx.monkeypatch.setattr(onnx_export, "_compare", stop)
    return export_argv(ctx, "--out", str(ctx.tmp / "m.onnx"))


def interrupted_honestly(ctx: Ctx, rc: int, out: str, err: str) -> None:
    assert rc == 130 and "Traceback" not in err, err
    on_disk = (ctx.tmp / "m.onnx").exists()
    assert not on_disk, "an unchecked export stayed on disk"
    assert "nothing was written" in err


EXPORT = [
    Row("export", "--out FILE that exists", lambda c: export_argv(c, "--out", precious(c, "m.onnx")),
        refused("m.onnx", "--overwrite", also=unchanged("m.onnx"))),
    Row("export", "--out a folder", lambda c: export_argv(c, "--out", str(c.tmp / "d.onnx") if os.makedirs(c.tmp / "d.onnx") is None else ""),
        refused("d.onnx")),
    Row("export", "--out under a file", lambda c: export_argv(c, "--out", precious(c, "f") + "/m.onnx"), refused("f")),
    Row("export", "--out not ending in .onnx", lambda c: export_argv(c, "--out", str(c.tmp / "m.pt")), refused(".onnx")),
    Row("export", "Ctrl-C after the file was written, during its check", interrupted_check_argv, interrupted_honestly),
    Row("export", "--weights a text file", lambda c: ["--weights", precious(c, "w.pt")], refused("w.pt", "not a checkpoint")),
    Row("export", "--weights that do not exist", lambda c: ["--weights", str(c.tmp / "none.pt")], refused("none.pt")),
]


# -- eval ---------------------------------------------------------------------------------


def predictions(ctx: Ctx, records: list | None = None, text: str | None = None) -> str:
    path = ctx.tmp / "p.json"
    default = [{"image": "img_000.jpg", "label": "Lata", "score": 0.9, "bbox": [1, 2, 30, 40]}]
    path.write_text(text if text is not None else json.dumps(records if records is not None else default))
    return str(path)


def eval_argv(ctx: Ctx, *extra: str, preds: str | None = None) -> list[str]:
    return ["--data", str(ctx.devkit()), "--predictions", preds or predictions(ctx), "--split", "all",
            "--no-progress", *extra]


EVAL = [
    Row("eval", "--json FILE that exists", lambda c: eval_argv(c, "--json", precious(c, "e.json")),
        refused("e.json", "--overwrite", also=unchanged("e.json"))),
    Row("eval", "--json FILE that exists, with --overwrite", lambda c: eval_argv(c, "--json", precious(c, "e.json"), "--overwrite"),
        done(lambda c: json.loads((c.tmp / "e.json").read_text()))),
    Row("eval", "--json a folder", lambda c: eval_argv(c, "--json", str(c.tmp)), refused("folder")),
    Row("eval", "--json under a file", lambda c: eval_argv(c, "--json", precious(c, "f") + "/e.json"), refused("f")),
    Row("eval", "--report a file", lambda c: eval_argv(c, "--report", precious(c, "r")),
        refused("--report", also=unchanged("r"))),
    Row("eval", "a predictions file that is not JSON", lambda c: eval_argv(c, preds=predictions(c, text="{oops")),
        refused("p.json", code=1)),
    Row("eval", "predictions naming an image that is not in the data",
        lambda c: eval_argv(c, preds=predictions(c, [{"image": "ghost.jpg", "label": "Lata", "score": 0.9,
                                                     "bbox": [1, 2, 30, 40]}])),
        refused("ghost.jpg", code=1)),
]


# -- checker ------------------------------------------------------------------------------


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width x height`` pixels (header only: nothing to decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def big_image_argv(ctx: Ctx) -> list[str]:
    data = make_devkit(ctx.tmp / "data", n=2)
    first = next((data / "JPEGImages").iterdir())
    png_header(data / "JPEGImages" / "huge.png", 9500, 9500)  # 90 MP: under our limit, over Pillow's warning
    xml = data / "Annotations" / f"{first.stem}.xml"
    xml.write_text(xml.read_text().replace(first.name, "huge.png"))
    return [str(data)]


def no_warning(ctx: Ctx, rc: int, out: str, err: str) -> None:
    assert "DecompressionBombWarning" not in err and "Traceback" not in err, err
    assert rc in (0, 1)


def escaping_filename_argv(ctx: Ctx) -> list[str]:
    data = make_devkit(ctx.tmp / "data", n=2)
    xml = next((data / "Annotations").iterdir())
    text = xml.read_text()
    start, end = text.index("<filename>") + 10, text.index("</filename>")
    xml.write_text(text[:start] + "../../../../../etc/passwd" + text[end:])
    return [str(data)]


def fifo_argv(ctx: Ctx) -> list[str]:
    data = make_devkit(ctx.tmp / "data", n=2)
    os.mkfifo(data / "Annotations" / "zz.xml")
    return [str(data)]


def linked_fix_argv(ctx: Ctx) -> list[str]:
    data = make_devkit(ctx.tmp / "data", n=2)
    outside = ctx.tmp / "outside.xml"
    xml = next((data / "Annotations").iterdir())
    outside.write_bytes(b"\xef\xbb\xbf" + xml.read_bytes())  # a BOM: a safe fix would rewrite it
    xml.unlink()
    os.symlink(outside, xml)
    return [str(data), "--fix"]


CHECKER = [
    Row("checker", "a 90-megapixel image (under the limit)", big_image_argv, no_warning),
    Row("checker", "an XML whose image does not exist",
        lambda c: [str(missing_image_data(c))],
        done(lambda c: None, code=1)),
    Row("checker", "<filename> ../../../../../etc/passwd", escaping_filename_argv,
        lambda c, rc, out, err: (rc == 0 and "passwd" in out and "Traceback" not in err) or pytest.fail(out + err)),
    Row("checker", "a FIFO named like an annotation", fifo_argv,
        lambda c, rc, out, err: (rc == 0 and "zz.xml" in out and "Traceback" not in err) or pytest.fail(out + err)),
    Row("checker", "a folder with no XML", lambda c: [str(c.tmp)], refused("no .xml")),
    Row("checker", "--fix on an XML that links to a file outside the dataset", linked_fix_argv,
        done(lambda c: (c.tmp / "outside.xml").read_bytes().startswith(b"\xef\xbb\xbf") or pytest.fail("written through"),
             code=1)),
]


ROWS = CONVERT + PREDICT + AUDIT + BENCHMARK + EXPORT + EVAL + CHECKER


def test_every_command_has_six_rows() -> None:
    for command in ("convert", "predict", "audit", "benchmark", "export", "eval", "checker"):
        assert sum(r.command == command for r in ROWS) >= 6, command


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_hostile_io(row: Row, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                   capsys) -> None:
    ctx = Ctx(tmp_path, request, monkeypatch)
    argv = row.argv(ctx)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:  # on the command line they would print to stderr
        warnings.simplefilter("always")
        try:
            rc = _main(row.command)(argv)
        except SystemExit as exc:  # argparse's own usage errors, as on the command line
            rc = exc.code
    out, err = capsys.readouterr()
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    row.promise(ctx, rc, out, err)
