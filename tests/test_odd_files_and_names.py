"""Odd files and names: case-twin class names, runs started at once, a stalled stream under Ctrl-C,
spreadsheet-active CSV cells, text files named .jpg, newlines in names, full disks, long names,
foreign ONNX graphs and huge images each give one clean line or the right result."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from detect.checks import check_dataset
from detect.common.files import unique_folder
from detect.data.layout import discover
from detect.data.records import load_records

from conftest import write_sample


def test_exact_name_wins_and_case_twins_are_reported(tmp_path: Path) -> None:
    """`A.jpg` and `a.jpg` in one folder, each with its XML: each XML gets its own image
    (not the first case-insensitive match), and the checker says the pair is fragile."""
    data = tmp_path / "data"
    write_sample(data, data, "A", [("Lata", (10, 10, 40, 40))])
    write_sample(data, data, "a", [("Lata", (50, 30, 90, 70))])
    files = discover(data)
    by_stem = {r.xml.stem: r.image.name for r in load_records(files)}
    assert by_stem == {"A": "A.jpg", "a": "a.jpg"}
    report = check_dataset(files)
    twins = [f for f in report.findings if f.code == "VOC403" and "differs only in case" in f.message]
    assert {f.path.name for f in twins} == {"A.xml", "a.xml"}


def test_case_twins_without_an_exact_name_are_ambiguous_not_guessed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample(data, data, "B", [("Lata", (10, 10, 40, 40))])
    Image.open(data / "B.jpg").save(data / "b.JPG")
    (data / "B.xml").rename(data / "x.xml")
    xml = (data / "x.xml")
    xml.write_text(xml.read_text().replace("<filename>B.jpg</filename>", "<filename>b.jpg</filename>"))
    report = check_dataset(discover(data))
    (f,) = [f for f in report.findings if f.code == "VOC401"]
    assert "ambiguous" in f.message and "'B.jpg'" in f.message and "'b.JPG'" in f.message


def test_two_runs_started_at_once_never_share_a_folder(tmp_path: Path) -> None:
    n = 8
    start = threading.Barrier(n)
    got: list[Path] = []

    def claim() -> None:
        start.wait()
        got.append(unique_folder(tmp_path / "out", "run"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == n and all(p.is_dir() for p in got)
    assert sorted(p.name for p in got) == sorted(["run", *(f"run{i}" for i in range(2, n + 1))])
    (tmp_path / "out" / "empty").mkdir()
    assert unique_folder(tmp_path / "out", "empty").name == "empty2"  # never taken over


class _StalledCapture:
    """A stream whose read() blocks (a stalled HTTP/MJPEG server) until `unblock` is set;
    releasing it while a read() is in progress is what crashed OpenCV with SIGSEGV."""

    def __init__(self) -> None:
        self.unblock = threading.Event()
        self.reading = threading.Event()
        self.released_during_read = False
        self.released = 0

    def read(self):
        self.reading.set()
        self.unblock.wait(10)
        self.reading.clear()
        return False, None

    def release(self) -> None:
        self.released_during_read |= self.reading.is_set()
        self.released += 1


def test_ctrl_c_on_a_stalled_stream_never_releases_the_capture_under_read(monkeypatch) -> None:
    from detect.inference import sources

    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: None)  # the 2 s wait, skipped
    fake = _StalledCapture()
    live = sources.LiveSource.__new__(sources.LiveSource)
    live.__dict__.update(spec="http://cam/mjpg", kind="stream", live=True, target="http://cam/mjpg", read=0, taken=0,
                         dropped=0, ended=None, _latest=None, _cond=threading.Condition(), _stop=threading.Event(),
                         _thread=None, _release_lock=threading.Lock(), _released=False, _what="stream", capture=fake)
    live._thread = threading.Thread(target=live._grab, daemon=True)
    live._thread.start()
    assert fake.reading.wait(5)
    live.close()  # what Ctrl-C does, while the grabber is inside read()
    assert fake.released == 0
    fake.unblock.set()  # FFmpeg's timeout: read() returns, the grabber releases the capture
    monkeypatch.undo()
    live._thread.join(5)
    assert fake.released == 1 and not fake.released_during_read
    live.close()
    assert fake.released == 1


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped() -> None:
    from detect.inference.outputs import csv_cell

    for cell in ("=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(cell) == "'" + cell
    assert csv_cell("conveyor.jpg") == "conveyor.jpg" and csv_cell("") == ""


def test_a_text_file_named_jpg_and_a_newline_in_a_name_give_one_clean_line(tmp_path: Path) -> None:
    import pytest

    from detect.data.images import ImageError, image_size, read_image

    bad = tmp_path / "notes\nerror: forged.jpg"
    bad.write_text("just text")
    for reader in (read_image, image_size):
        with pytest.raises(ImageError) as info:
            reader(bad)
        message = str(info.value)
        assert "\n" not in message and "notes\\nerror: forged.jpg" in message
        assert "BytesIO" not in message and "not an image file" in message


# ---- where the export and the predictor write, and what they are handed ------------------------

def _export(argv: list[str]):
    import contextlib
    import io

    from detect.export import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_export_checks_where_it_writes_before_exporting(tiny_export, tmp_path: Path) -> None:
    """A folder named x.onnx (even with --overwrite) and --out under a file: one line, exit 2,
    at once (no export is run, so no torch time is spent and nothing is written)."""
    pt = str(tiny_export["pt"])
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "somefile.txt").write_text("x")
    for out, words in ((tmp_path / "dir.onnx", "it is a folder"), (tmp_path / "somefile.txt" / "x.onnx", "it is a file")):
        code, stdout, stderr = _export(["--weights", pt, "--out", str(out), "--overwrite"])
        assert code == 2 and stdout == "", stderr
        assert stderr.count("\n") == 1 and words in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx", "somefile.txt"]
    assert list((tmp_path / "dir.onnx").iterdir()) == []


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_export, tmp_path: Path) -> None:
    """A write that fails during the export (here: a file-size limit, as a full disk or a quota
    would) is one line, exit 1, and no file, not even a temporary one, is left."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from conftest import REPO

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out" / "model.onnx"
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, "-m", "detect.export", "--weights", str(tiny_export["pt"]), "--out", str(out),
                           "--verify-images", "0"], cwd=REPO, capture_output=True, text=True, preexec_fn=small_files,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "File too large" in proc.stderr and "nothing was written" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


def _predict(argv: list[str]):
    import contextlib
    import io

    from detect.predict import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--no-progress", *argv])
    return code, out.getvalue(), err.getvalue()


def test_a_legal_244_character_file_name_is_predicted_and_annotated(tiny_export, tmp_path: Path) -> None:
    """The temporary name of an atomic write was '.NAME.RANDOM.tmp': 18 bytes more than NAME,
    so a legal 244-character name stopped the whole run ('File name too long')."""
    from detect.common.files import remove_stale_temps, write_atomic

    stem = "a" * 240
    write_sample(tmp_path / "in", tmp_path / "in", stem, [("Lata", (10, 10, 40, 40))])
    (tmp_path / "in" / f"{stem}.xml").unlink()
    code, stdout, stderr = _predict(["--weights", str(tiny_export["onnx"]), str(tmp_path / "in"), "--save-xml",
                                     "--out", str(tmp_path / "out"), "--name", "run"])
    assert code == 0, stderr
    assert (tmp_path / "in" / f"{stem}.xml").is_file() and (tmp_path / "out" / "run" / f"{stem}.jpg").is_file()
    long = tmp_path / ("é" * 127)  # 254 bytes of UTF-8: the temporary name is cut at a character boundary
    write_atomic(long, b"x")
    assert long.read_bytes() == b"x" and remove_stale_temps(long) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", "out", long.name])


def test_an_atomic_write_that_fails_names_the_file_not_its_temporary(tmp_path: Path) -> None:
    import pytest

    from detect.common.files import write_atomic

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "dir", b"x")  # renaming over a folder fails
    assert info.value.filename == str(tmp_path / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_class_names_with_spaces_are_given_with_commas_and_checked(tiny_export) -> None:
    import pytest

    from detect.common.errors import UsageError
    from detect.predict import _names

    classes = ("raccoon face", "Lata", "Botella")
    assert _names("--classes", "raccoon face", classes) == ["raccoon face"]
    assert _names("--classes", " raccoon face , Lata,", classes) == ["raccoon face", "Lata"]
    assert _names("--defect-classes", "Lata Botella", classes) == ["Lata", "Botella"]  # the older form still works
    assert _names("--classes", None, classes) is None and _names("--classes", " , ", classes) is None
    with pytest.raises(UsageError) as info:
        _names("--defect-classes", "raccoon", classes)
    assert "--defect-classes" in str(info.value) and "'raccoon face', 'Lata', 'Botella'" not in str(info.value)
    assert "its classes are raccoon face, Lata, Botella" in str(info.value)
    code, _, stderr = _predict(["--weights", str(tiny_export["onnx"]), str(tiny_export["data"]), "--classes", "Lata,Bote"])
    assert code == 2 and stderr.count("\n") == 1 and "'Bote'" in stderr and "Lata_defectuosa" in stderr, stderr


def test_a_source_that_starts_with_a_dash_gets_the_double_dash_hint(tiny_export, tmp_path: Path, monkeypatch) -> None:
    import pytest

    monkeypatch.chdir(tmp_path)
    write_sample(tmp_path, tmp_path, "-x", [("Lata", (10, 10, 40, 40))])
    with pytest.raises(SystemExit) as info:
        _predict(["--weights", str(tiny_export["onnx"]), "-x.jpg"])
    assert info.value.code == 2
    from detect.inference.sources import SourceError, open_source

    with pytest.raises(SourceError) as missing:
        open_source("-y.jpg")
    assert "use -- before sources that start with -" in str(missing.value)
    code, _, stderr = _predict(["--weights", str(tiny_export["onnx"]), "--out", "p", "--", "-x.jpg"])
    assert code == 0, stderr


def test_the_double_dash_hint_is_on_the_usage_line(tiny_export, tmp_path: Path, monkeypatch, capsys) -> None:
    import pytest

    from detect.predict import main

    monkeypatch.chdir(tmp_path)
    write_sample(tmp_path, tmp_path, "-x", [("Lata", (10, 10, 40, 40))])
    for argv in (["--weights", "m.onnx", "-x.jpg"], ["--weights", "m.onnx", "a.jpg", "-x.jpg"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "use -- before sources that start with - (-- -x.jpg)" in err, err


def test_an_onnx_graph_that_is_not_ours_but_carries_our_metadata_is_one_line(tiny_export, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    ours = onnx.load(str(tiny_export["onnx"]), load_external_data=False)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["boxes"]), helper.make_node("Shape", ["image"], ["labels"]),
         helper.make_node("Identity", ["image"], ["scores"])], "other",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, "h", "w"])])
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    other.ir_version = ours.ir_version
    other.metadata_props.extend(ours.metadata_props)
    path = tmp_path / "other\nmodel.onnx"
    path.write_bytes(other.SerializeToString())
    code, stdout, stderr = _predict(["--weights", str(path), str(tiny_export["data"] / "JPEGImages"),
                                     "--out", str(tmp_path / "p")])
    assert code == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "other\\nmodel.onnx: not a graph written by detect.export" in stderr and "image float rank 4" in stderr
    assert not (tmp_path / "p").exists()


def _one_line_per_mention(text: str, escaped: str, tail: str) -> None:
    """Every line that mentions ``tail`` (the end of a file name holding a newline) shows the
    whole name escaped: the newline never split a message in two."""
    lines = [line for line in text.splitlines() if tail in line]
    assert lines, text
    for line in lines:
        assert escaped in line, text


def test_a_newline_in_a_file_name_never_makes_an_error_two_lines(tiny_export, tmp_path: Path, capsys) -> None:
    import json

    import pytest

    from detect.check_xml import main as check_xml
    from detect.data.records import DataError, check_classes
    from detect.eval import main as evaluate
    from detect.predict import main as predict

    # check_xml: a broken XML and an XML whose image is missing
    data = tmp_path / "data"
    write_sample(data, data, "ok", [("Lata", (10, 10, 40, 40))])
    (data / "bad\nerror: forged.xml").write_text("<annotation><filename>")
    write_sample(data, data, "gone\nerror: img", [("Lata", (10, 10, 40, 40))])
    (data / "gone\nerror: img.jpg").unlink()
    check_xml([str(data)])
    out = capsys.readouterr()
    _one_line_per_mention(out.out + out.err, "bad\\nerror: forged.xml", "forged.xml")
    _one_line_per_mention(out.out + out.err, "gone\\nerror: img", "error: img")

    # train's data errors: an unknown class, and an image that is not there
    files = discover(data)
    with pytest.raises(Exception) as info:
        load_records(files)
    _one_line_per_mention(str(info.value), "gone\\nerror: img", "error: img")  # a list, one file a line
    _one_line_per_mention(str(info.value), "bad\\nerror: forged.xml", "forged.xml")
    write_sample(tmp_path / "d2", tmp_path / "d2", "odd\nname", [("Raccoon\nface", (10, 10, 40, 40))])
    with pytest.raises(DataError) as info:
        check_classes(load_records(discover(tmp_path / "d2")), ["Lata"], classes_file=str(tmp_path / "c\nlasses.txt"))
    assert "\n" not in str(info.value) and "odd\\nname.xml" in str(info.value) and "Raccoon\\nface" in str(info.value)

    # predict: a source that is not there, an image that does not decode, a model that is not there
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "text\nerror: forged.jpg").write_text("not an image")
    predict(["--weights", str(tiny_export["onnx"]), "--no-progress", "--out", str(tmp_path / "p"),
             str(tmp_path / "no\nerror: such.jpg"), str(tmp_path / "img")])
    out = capsys.readouterr()
    _one_line_per_mention(out.out + out.err, "no\\nerror: such.jpg", "such.jpg")
    _one_line_per_mention(out.out + out.err, "text\\nerror: forged.jpg", "forged.jpg")
    predict(["--weights", str(tmp_path / "m\nerror: odel.onnx"), str(tmp_path / "img")])
    out = capsys.readouterr()
    _one_line_per_mention(out.out + out.err, "m\\nerror: odel.onnx", "odel.onnx")

    # eval: a predictions file that is not JSON, and one whose records are wrong
    bad = tmp_path / "pred\nerror: forged.json"
    bad.write_text("{not json")
    evaluate(["--predictions", str(bad), "--data", str(tiny_export["data"])])
    out = capsys.readouterr()
    _one_line_per_mention(out.out + out.err, "pred\\nerror: forged.json", "forged.json")
    bad.write_text(json.dumps([{"image": "x\nerror: y.jpg", "bbox": [1, 2], "score": 0.5, "label": "Lata"}]))
    evaluate(["--predictions", str(bad), "--data", str(tiny_export["data"])])
    out = capsys.readouterr()
    _one_line_per_mention(out.out + out.err, "pred\\nerror: forged.json", "forged.json")


def test_a_huge_image_is_shrunk_before_the_model_and_its_boxes_scaled_back(tiny_export) -> None:
    """A photo far larger than the model input (here 4000 x 3000 for a 128 px model) is reduced
    before it becomes a float32 tensor (that tensor alone would be 144 MB; a 12000 x 9000 photo
    made 1.3 GB, and predict peaked at 4.4 GB); the boxes still refer to the full photo."""
    import tracemalloc

    import cv2
    import numpy as np

    from detect.inference.onnx_runtime import OnnxDetector, shrink_for_model

    detector = OnnxDetector(tiny_export["onnx"])
    image = np.full((3000, 4000, 3), 90, np.uint8)
    cv2.rectangle(image, (1000, 800), (2600, 2400), (200, 40, 40), -1)
    small, back = shrink_for_model(image, 128)
    assert small.shape == (192, 256, 3) and back == 4000 / 256
    tracemalloc.start()
    try:
        (dets,) = detector.detect([image], ["big"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3000 * 4000 * 3 * 4 / 4, peak  # far below the full-size float32 tensor
    assert len(dets.boxes) and dets.boxes[:, 2].max() > 256 and dets.boxes.max() <= 4000 + 1e-3
    (ref,) = detector.detect([small], ["small"])  # the same numbers as the model on the reduced image
    np.testing.assert_allclose(dets.boxes, ref.boxes * back, rtol=1e-6)
