"""detect.predict, detect.inference.predictor, detect.inference.sources, detect.inference.outputs, detect.inference.drawing.

Sources are tiny generated images and videos (cv2.VideoWriter); a "stream" is a video
served over HTTP by a local server, which is what OpenCV's FFmpeg reads from a camera's
http:// address. The model is conftest's ``tiny_export`` (untrained, 128 px): the tests
check the plumbing, the formats and the errors, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np
import pytest

from conftest import CLASSES, REPO
from detect.common.types import Detections
from detect.predict import main
from detect.inference.predictor import ConfThresholds, Predictor, parse_conf
from detect.inference.sources import ImageSource, LiveSource, SourceError, VideoSource, open_source


def write_video(path: Path, frames: int = 6, *, size=(96, 80), fps: float = 5.0) -> Path:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    w = cv2.VideoWriter(str(path), fourcc, fps, size)
    assert w.isOpened()
    for i in range(frames):
        f = np.full((size[1], size[0], 3), (40 + 10 * i) % 256, np.uint8)
        cv2.rectangle(f, (10 + i, 10), (40 + i, 60), (30, 30, 220), -1)
        w.write(f)
    w.release()
    return path


def video_frames(path: Path) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, fps


def write_image(path: Path, seed: int = 0, size=(96, 80)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


class MjpegCamera(BaseHTTPRequestHandler):
    """An IP camera's MJPEG stream (multipart/x-mixed-replace, as OpenCV reads from
    ``http://camera/video.mjpg``), paced in real time: ``/cam?frames=N&fps=F``; after N
    frames the connection closes, as when a camera drops off the network."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)
        if not self.path.startswith("/cam"):
            self.send_error(404)
            return
        frames, fps = int(query.get("frames", ["20"])[0]), float(query.get("fps", ["20"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(frames):
                image = np.full((80, 96, 3), (i * 7) % 256, np.uint8)
                cv2.rectangle(image, (10, 10), (50, 60), (30, 30, 220), -1)
                jpg = cv2.imencode(".jpg", image)[1].tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                 + jpg + b"\r\n")
                self.wfile.flush()
                time.sleep(1 / fps)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def camera_url():
    """The base URL of a local :class:`MjpegCamera`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), MjpegCamera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# --------------------------------------------------------------------------------------
# Sources


def test_each_source_kind_yields_its_frames(tmp_path) -> None:
    folder = tmp_path / "imgs"
    a = write_image(folder / "a.jpg", 1)
    write_image(folder / "b.png", 2)
    write_image(folder / "sub" / "a.jpg", 3)  # same name, one level down
    (folder / "notes.txt.bak").write_text("not an image")

    single = open_source(str(a))
    assert isinstance(single, ImageSource) and [f.key for f in single] == ["a.jpg"]
    flat = open_source(str(folder))
    assert [f.key for f in flat] == ["a.jpg", "b.png"]
    deep = open_source(str(folder), recursive=True)
    frames = list(deep)
    assert [f.key for f in frames] == ["a.jpg", "b.png", "sub/a.jpg"]  # a clash keeps the relative path
    assert all(f.image.shape == (80, 96, 3) and f.image.dtype == np.uint8 for f in frames)
    assert str(frames[0].path) == str(a)

    glob_src = open_source(str(folder / "*.jpg"))
    assert [f.key for f in glob_src] == ["a.jpg"]
    assert len(open_source(str(folder / "**" / "*.jpg"))) == 2

    listing = tmp_path / "list.txt"
    listing.write_text(f"# today's photos\nimgs/b.png\n\n{a}\nimgs/missing.jpg\n")
    assert [f.key for f in open_source(str(listing))] == ["b.png", "a.jpg"]

    video = open_source(str(write_video(tmp_path / "clip.avi", 6)))
    assert isinstance(video, VideoSource) and len(video) == 6 and video.fps == pytest.approx(5.0)
    vf = list(video)
    assert [f.key for f in vf] == [f"clip_{i:06d}" for i in range(6)] and [f.index for f in vf] == list(range(6))
    # RGB: the rectangle drawn in BGR (30, 30, 220) reads as red.
    assert vf[0].image[30, 20, 0] > 150 and vf[0].image[30, 20, 2] < 100


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/empty", "folder holds no image"),
    ("{tmp}/nested", "add --recursive"),
    ("{tmp}/nothing.jpg", "no such file or folder"),
    ("{tmp}/*.png", "matches no image"),
    ("{tmp}/broken.mp4", "cannot be opened as a video"),
    ("{tmp}/data.csv", "not an image"),
    ("{tmp}/empty.txt", "lists no existing image"),
    ("97", "camera 97: no camera answers"),
])
def test_unusable_sources_name_themselves_and_the_fix(tmp_path, spec, message) -> None:
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "nested" / "deeper" / "x.jpg")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SourceError, match=message) as exc:
        open_source(spec.format(tmp=tmp_path))
    assert "\n" not in str(exc.value)


def test_live_source_takes_the_newest_frame_and_counts_drops(tmp_path) -> None:
    """A slow consumer of a fast source gets recent frames, never a backlog."""
    live = LiveSource("clip", str(write_video(tmp_path / "clip.avi", 60, fps=30)), kind="stream")
    taken = []
    for frame in live:
        taken.append(frame.index)
        time.sleep(0.02)
    assert live.read == 60
    assert live.taken == len(taken) and live.taken + live.dropped == live.read
    assert live.dropped > 0 and taken == sorted(taken)
    assert live.ended and "stopped delivering frames after 60" in live.ended


def test_stream_url_is_read_live(camera_url) -> None:
    src = open_source(f"{camera_url}/cam?frames=12&fps=50")
    assert isinstance(src, LiveSource) and src.kind == "stream" and src.live
    frames = list(src)
    assert frames and frames[-1].key.startswith("stream_127.0.0.1") and src.read == 12
    assert "stopped delivering frames after 12" in src.ended
    with pytest.raises(SourceError, match="cannot be opened") as exc:
        open_source(camera_url.replace("http://", "http://inspector:s3cret@") + "/missing.mjpg")
    assert "inspector:***@127.0.0.1" in str(exc.value) and "s3cret" not in str(exc.value)


# --------------------------------------------------------------------------------------
# Predictor


class FixedDetector:
    """A detector that returns given boxes: for the predictor's own logic."""

    classes = tuple(CLASSES)
    info = {"format": "test"}
    batch_size = 2

    def __init__(self, boxes, scores, labels):
        self.out = (np.array(boxes, float), np.array(scores, float), np.array(labels))
        self.calls = 0

    def detect(self, images, keys):
        self.calls += 1
        return [Detections(k, *self.out) for k in keys]


def test_per_class_thresholds_and_class_filter() -> None:
    det = FixedDetector([[0, 0, 10, 10]] * 4, [0.4, 0.35, 0.6, 0.2], [1, 2, 2, 4])
    image = np.zeros((20, 20, 3), np.uint8)
    [r] = Predictor(det, conf=["0.5", "Lata_defectuosa=0.3"]).stream(image)
    assert r.names == ["Lata_defectuosa", "Lata_defectuosa"] and list(r.detections.scores) == [0.6, 0.35]
    assert r.has_defect and r.records()[0]["defect"] is True
    [r] = Predictor(det, conf=0.3, classes=["Lata"]).stream(image)
    assert r.names == ["Lata"] and not r.has_defect
    [r] = Predictor(det, conf=["0.5", "Botella_defectuosa=0.1,Lata=0.39"]).stream(image)
    assert r.names == ["Lata_defectuosa", "Lata", "Botella_defectuosa"]

    assert parse_conf(["0.4"], CLASSES) == ConfThresholds(0.4, {})
    with pytest.raises(Exception, match="no class 'Lata_defectosa'"):
        parse_conf(["Lata_defectosa=0.3"], CLASSES)
    with pytest.raises(Exception, match="outside"):
        parse_conf(["1.5"], CLASSES)
    with pytest.raises(Exception, match="2 plain thresholds"):
        parse_conf(["0.5", "0.4"], CLASSES)


def test_predictor_is_a_stream_not_a_list(tmp_path) -> None:
    """Each result comes out before the next frame is read."""
    for i in range(5):
        write_image(tmp_path / f"{i}.jpg", i)
    pulled = []

    def counting():
        for f in open_source(str(tmp_path)):
            pulled.append(f.key)
            yield f

    det = FixedDetector([[1, 1, 5, 5]], [0.9], [1])
    stream = Predictor(det, conf=0.5, batch_size=1).predict_frames(counting())
    first = next(stream)
    assert first.key == "0.jpg" and pulled == ["0.jpg"]
    assert len(list(stream)) == 4 and det.calls == 5


# --------------------------------------------------------------------------------------
# The command


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m detect.predict ARGV --no-progress``: exit status, stdout, stderr (argparse's
    own usage errors exit through SystemExit, as on the command line)."""
    try:
        code = main(argv + ["--no-progress"])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_folder_with_every_output_and_no_overwrite_of_runs(tiny_export, tmp_path, capsys) -> None:
    from detect.scoring.predictions_json import read_predictions

    images = tiny_export["data"] / "JPEGImages"
    out = tmp_path / "predictions"
    code, stdout, err = run(["--weights", str(tiny_export["pt"]), str(images), "--out", str(out), "--conf", "0.2",
                             "--save-json", "--save-csv", "--save-crops", "--detections", "3"], capsys)
    assert code == 0, err
    run_dir = out / "tiny"
    assert sorted(p.name for p in run_dir.glob("*.jpg")) == sorted(p.name for p in images.glob("*.jpg"))
    names = [p.name for p in sorted(images.glob("*.jpg"))]
    dets = read_predictions(run_dir / "predictions.json", classes=CLASSES, images=names)
    total = sum(len(d.scores) for d in dets)
    assert total > 0 and all((d.scores >= 0.2).all() and len(d.scores) <= 3 for d in dets)  # --detections 3
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "image,source,frame,label,score,xmin,ymin,xmax,ymax,defect" and len(rows) == total + 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["images"] == 6 and sum(summary["detections"].values()) == total
    assert summary["defect_classes"] == ["Lata_defectuosa", "Botella_defectuosa"]
    crops = list((run_dir / "crops").glob("*/*.jpg"))
    assert len(crops) == total and {c.parent.name for c in crops} <= set(CLASSES)
    assert "6 image(s) predicted" in stdout and "with a defect" in stdout

    # The annotated image differs from the original where boxes are drawn.
    drawn = cv2.imread(str(run_dir / names[0]))
    assert drawn.shape == cv2.imread(str(images / names[0])).shape

    code, _, _ = run(["--weights", str(tiny_export["onnx"]), str(images / names[0]), "--out", str(out)], capsys)
    assert code == 0 and (out / "tiny2" / names[0]).is_file() and (run_dir / "predictions.json").is_file()


def test_video_becomes_an_annotated_video_at_its_frame_rate(tiny_export, tmp_path, capsys) -> None:
    video = write_video(tmp_path / "belt.mp4", 7, fps=12)
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), str(video), "--out", str(tmp_path / "p"),
                             "--save-csv"], capsys)
    assert code == 0, err
    n, fps = video_frames(tmp_path / "p" / "tiny" / "belt.mp4")
    assert n == 7 and fps == pytest.approx(12)
    assert "7 frame(s) predicted" in stdout
    frames = {row.split(",")[2] for row in (tmp_path / "p" / "tiny" / "predictions.csv").read_text().splitlines()[1:]}
    assert frames <= {str(i) for i in range(7)} and frames
    assert not list((tmp_path / "p" / "tiny").glob(".*tmp*"))


def test_stream_that_drops_keeps_its_recording_and_exits_1(tiny_export, camera_url, tmp_path, capsys) -> None:
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), f"{camera_url}/cam?frames=15&fps=30",
                             "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "stopped delivering frames after 15 frame(s)" in err and "are kept" in err
    [video] = (tmp_path / "tiny").glob("stream_*.mp4")
    n, _ = video_frames(video)
    # Frames dropped while the model was busy are filled by repeating the last processed one.
    assert 1 <= n <= 15
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["frames"] + summary["dropped_frames"] <= 15 and summary["stopped"]


def test_max_frames_stops_a_live_source_cleanly(tiny_export, camera_url, tmp_path, capsys) -> None:
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), f"{camera_url}/cam?frames=1000&fps=30",
                             "--out", str(tmp_path), "--max-frames", "2"], capsys)
    assert code == 0, err
    assert "2 frame(s) predicted" in stdout


def test_pre_annotation_xml_parses_back_checks_clean_and_never_overwrites(tiny_export, tmp_path, capsys) -> None:
    from detect.checks.check import check_dataset
    from detect.data.layout import discover
    from detect.data.voc import parse_voc

    lote = tmp_path / "lote2"
    for i in range(3):
        write_image(lote / f"linea_{i}.jpg", i, size=(120, 90))
    args = ["--weights", str(tiny_export["onnx"]), str(lote), "--out", str(tmp_path / "p"), "--save-xml",
            "--conf", "0.1", "--no-save-images"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    xmls = sorted(lote.glob("*.xml"))
    assert [x.stem for x in xmls] == ["linea_0", "linea_1", "linea_2"] and "3 XML file(s) written" in stdout
    total = 0
    for x in xmls:
        ann = parse_voc(x)
        assert ann.filename == x.stem + ".jpg" and (ann.width, ann.height) == (120, 90)
        for o in ann.objects:
            assert o.name in CLASSES and all(float(v).is_integer() for v in o.box)
            assert 0 <= o.box.xmin < o.box.xmax <= 120 and 0 <= o.box.ymin < o.box.ymax <= 90
        total += len(ann.objects)
    assert total > 0
    report = check_dataset(discover(lote), classes=CLASSES)
    errors = [f for f in report.findings if f.severity == "error"]
    assert not errors, errors

    # A corrected annotation is never replaced without --overwrite.
    xmls[0].write_text(xmls[0].read_text().replace("<segmented>0", "<segmented>0<!-- corrected -->"))
    before = {x: x.read_bytes() for x in xmls}
    code, stdout, _ = run(args, capsys)
    assert code == 0 and {x: x.read_bytes() for x in xmls} == before
    assert "skipped 3 image(s) that already have an XML annotation (--overwrite replaces them)" in stdout
    code, stdout, _ = run(args + ["--overwrite"], capsys)
    assert code == 0 and "corrected" not in xmls[0].read_text() and "3 XML file(s) written" in stdout


def test_bad_inputs_get_one_line_each_and_the_rest_is_processed(tiny_export, tmp_path, capsys) -> None:
    good = write_image(tmp_path / "in" / "good.jpg")
    data = write_image(tmp_path / "in" / "truncated.jpg", 1).read_bytes()
    (tmp_path / "in" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "notanimage.png").write_bytes(b"hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), str(tmp_path / "in"), str(tmp_path / "empty"),
                             str(tmp_path / "bad.mp4"), "96", "--out", str(tmp_path / "p")], capsys)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 5, err
    assert any("truncated.jpg: cannot be decoded" in ln for ln in lines)
    assert any("notanimage.png: cannot be" in ln for ln in lines)
    assert any("empty: folder holds no image" in ln for ln in lines)
    assert any("bad.mp4: cannot be opened as a video" in ln for ln in lines)
    assert any("camera 96: no camera answers" in ln for ln in lines)
    assert "Traceback" not in err and "WARN" not in err
    assert (tmp_path / "p" / "tiny" / good.name).is_file() and "1 image(s) predicted" in stdout
    summary = json.loads((tmp_path / "p" / "tiny" / "summary.json").read_text())
    assert len(summary["failed"]) == 2


def test_unusable_model_files_exit_1_and_usage_errors_exit_2(tiny_export, tmp_path, capsys) -> None:
    import onnx

    img = str(write_image(tmp_path / "x.jpg"))
    corrupt_pt = tmp_path / "corrupt.pt"
    corrupt_pt.write_bytes(tiny_export["pt"].read_bytes()[:5000])
    corrupt_onnx = tmp_path / "corrupt.onnx"
    corrupt_onnx.write_bytes(tiny_export["onnx"].read_bytes()[:5000])
    plain = onnx.load(str(tiny_export["onnx"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    for weights, message in [(corrupt_pt, "cannot be loaded as a checkpoint"),
                             (corrupt_onnx, "onnxruntime cannot load it"),
                             (tmp_path / "plain.onnx", "without can-detect metadata")]:
        code, _, err = run(["--weights", str(weights), img, "--out", str(tmp_path / "p")], capsys)
        assert code == 1, err
        assert err.count("\n") == 1 and str(weights) in err and message in err
    for argv, message in [(["--weights", str(tmp_path / "none.pt"), img], "no such file"),
                          (["--weights", str(tiny_export["onnx"]), img, "--conf", "Lata_defectosa=0.3"], "no class"),
                          (["--weights", str(tiny_export["onnx"]), img, "--overwrite"], "--overwrite only"),
                          (["--weights", str(tiny_export["onnx"]), img, "--proposals", "50"], "fixed when it is exported"),
                          (["--weights", str(tiny_export["onnx"]), img, "--batch-size", "0"], "--batch-size")]:
        code, _, err = run(argv + ["--out", str(tmp_path / "p")], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p").exists()


def test_show_without_a_gui_says_so_and_goes_on(tiny_export, tmp_path, capsys) -> None:
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), str(write_image(tmp_path / "x.jpg")),
                             "--out", str(tmp_path / "p"), "--show"], capsys)
    assert code == 0
    assert "--show needs OpenCV with a GUI" in err and "1 image(s) predicted" in stdout


def test_ctrl_c_on_a_live_source_leaves_a_playable_video(tiny_export, camera_url, tmp_path) -> None:
    """SIGINT while a stream is being recorded: exit 130, the MP4 closed and renamed into place."""
    # As from a terminal: a test run in the background (nohup, CI) starts with SIGINT ignored,
    # which the child would inherit.
    code = textwrap.dedent(f"""
        import signal, sys, detect.predict
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.exit(detect.predict.main(["--weights", {str(tiny_export['onnx'])!r}, "{camera_url}/cam?frames=100000",
                                      "--out", {str(tmp_path)!r}, "--status-every", "0.5"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        seen = ""
        while time.time() < deadline:  # wait for the first FPS line: frames are being recorded
            line = proc.stderr.readline()
            seen += line
            if "FPS, latency" in line or proc.poll() is not None:
                break
        assert "FPS, latency" in seen and "frames dropped" in seen, seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + err
    assert "interrupted" in err and "Traceback" not in err
    [video] = (tmp_path / "tiny").glob("stream_*.mp4")
    n, _ = video_frames(video)
    assert n > 0
    assert not list((tmp_path / "tiny").glob(".*tmp*"))


def test_two_sources_with_the_same_file_name_keep_both_outputs(tiny_export, tmp_path, capsys) -> None:
    a, b = write_image(tmp_path / "a" / "x.jpg", 1), write_image(tmp_path / "b" / "x.jpg", 2)
    code, stdout, err = run(["--weights", str(tiny_export["onnx"]), str(a), str(b), "--out", str(tmp_path / "p")],
                            capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "p" / "tiny").glob("*.jpg")) == ["x.jpg", "x_2.jpg"]


def test_the_readme_api_streams_results_from_a_folder(tiny_export) -> None:
    from detect.inference.loader import load_detector

    predictor = Predictor(load_detector(tiny_export["onnx"]), conf=["0.2", "Lata_defectuosa=0.1"])
    stream = predictor.stream(str(tiny_export["data"] / "JPEGImages"))
    assert iter(stream) is stream  # a generator, not a list
    results = list(stream)
    assert len(results) == 6 and all(r.error is None for r in results)
    r = results[0]
    assert r.plot().shape == r.image.shape and r.detections.boxes.shape[1] == 4
    assert all(s >= (0.1 if n == "Lata_defectuosa" else 0.2) for n, s in zip(r.names, r.detections.scores))


def test_save_xml_failures_are_printed_and_x_jpg_x_png_never_share_an_xml(tiny_export, tmp_path, capsys) -> None:
    """A read-only image folder's failures are printed one line each (not only
    counted), and x.png does not take over the x.xml written for x.jpg in the same run."""
    import os

    lote = tmp_path / "lote3"
    write_image(lote / "x.jpg", 1, size=(120, 90))
    write_image(lote / "x.png", 2, size=(120, 90))
    args = ["--weights", str(tiny_export["onnx"]), str(lote), "--out", str(tmp_path / "p"), "--save-xml",
            "--no-save-images", "--overwrite"]
    code, stdout, err = run(args, capsys)
    assert code == 1 and sorted(p.name for p in lote.glob("*.xml")) == ["x.xml"]
    assert "x.png: no pre-annotation written: x.xml was written for x.jpg" in err
    (lote / "x.xml").unlink()
    (lote / "x.png").unlink()
    os.chmod(lote, 0o555)
    try:
        if os.access(lote, os.W_OK):  # root ignores permissions
            return
        code, stdout, err = run(args, capsys)
    finally:
        os.chmod(lote, 0o755)
    assert code == 1 and "1 input(s) failed" in stdout
    assert [ln for ln in err.splitlines() if "x.xml: cannot write the annotation" in ln]
