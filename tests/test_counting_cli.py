"""``detect.predict --track`` end to end on a rendered conveyor, with the tiny ONNX export
(an untrained model: what it counts is not the point here, the outputs and errors are)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from detect.demo.conveyor import write_conveyor
from detect.predict import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def conveyor(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conveyor")
    truth = write_conveyor(out, 3, speed=16.0, spacing=100.0, seed=4)
    assert (out / "conveyor.mp4").stat().st_size > 0
    assert sum(truth["counts"].values()) == 3 and len(truth["items"]) == 3
    assert json.loads((out / "conveyor.json").read_text()) == truth
    return out / "conveyor.mp4"


def test_track_writes_counts_events_and_summary(tiny_export, conveyor, tmp_path, capsys) -> None:
    code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--out", str(tmp_path),
                 "--no-progress", "--conf", "0.05", "--save-crops"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "items counted:" in out and "tracking and counting" in out
    folder = tmp_path / "tiny"
    summary = json.loads((folder / "summary.json").read_text())
    counting = summary["counting"]
    assert counting["settings"]["count_line"] == "0.5,0,0.5,1" and counting["settings"]["defect_frames"] == 2
    assert sum(counting["per_class"].values()) == counting["items"]
    assert counting["ms_per_frame"]["model"] > 0
    events = folder / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    assert len(lines) == counting["items"]
    for line in lines:
        e = json.loads(line)
        assert e["source"] == str(conveyor) and e["crop"] and (folder / e["crop"]).is_file()
    assert (folder / "conveyor.mp4").stat().st_size > 0


@pytest.mark.parametrize("given, said", [([], "conf 0.3"), (["--conf", "Lata=0.7"], "conf 0.3 (Lata 0.7)"),
                                         (["--conf", "0.6"], "conf 0.6")])
def test_track_thresholds_default_to_the_tracking_one(tiny_export, conveyor, tmp_path, capsys, given, said) -> None:
    code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--out", str(tmp_path),
                 "--no-progress", "--no-save-images", *given])
    err = capsys.readouterr().err
    assert code == 0, err
    assert said in err


def test_events_to_stdout_keep_stdout_json_only(tiny_export, conveyor, tmp_path, capsys) -> None:
    code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--events", "-", "--out",
                 str(tmp_path), "--no-progress", "--conf", "0.05", "--count-line", "none", "--no-save-images"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "items counted:" in err
    for line in out.splitlines():
        json.loads(line)


def test_the_onnx_path_tracks_without_torch(tiny_export, conveyor, tmp_path) -> None:
    from conftest import NO_TORCH

    code = NO_TORCH + textwrap.dedent(f"""
        import detect.predict
        code = detect.predict.main(["--weights", {str(tiny_export['onnx'])!r}, {str(conveyor)!r}, "--track",
                                    "--out", {str(tmp_path)!r}, "--no-progress", "--no-save-images"])
        assert "torch" not in sys.modules
        print("exit", code)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "exit 0" in done.stdout, done.stdout + done.stderr


def test_track_on_still_images_and_bad_lines_are_usage_errors(tiny_export, conveyor, tmp_path, capsys) -> None:
    data = tiny_export["data"] / "JPEGImages"
    code = main(["--weights", str(tiny_export["onnx"]), str(data), "--track", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "tracking needs a video, a camera, a stream or an ordered frame sequence" in err
    assert "--sequence" in err and "Traceback" not in err
    code = main(["--weights", str(tiny_export["onnx"]), str(data), "--track", "--sequence", "--out", str(tmp_path),
                 "--no-progress", "--count-line", "none"])
    assert code == 0, capsys.readouterr().err
    for line, words in (("0.5,0,0.5,0", "same point"), ("1,2", "x1,y1,x2,y2"), ("400,0,400,240", "leaves the 320x240")):
        code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--count-line", line,
                     "--out", str(tmp_path), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
    assert main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--count-line", "none"]) == 2
    assert "only apply with --track" in capsys.readouterr().err
    for given, words in ((["--track", "--count-line", "none"], "counts from the counting line"),
                         ([], "only apply with --track")):
        code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--out", str(tmp_path), "--no-progress",
                     "--gate-delay", "0.45", *given])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--gate-delay", "0"])
    assert exit_.value.code == 2 and "--gate-delay must be a finite number > 0" in capsys.readouterr().err


def test_with_a_gate_every_event_says_by_when_to_act(tiny_export, conveyor, tmp_path, capsys) -> None:
    code = main(["--weights", str(tiny_export["onnx"]), str(conveyor), "--track", "--out", str(tmp_path),
                 "--no-progress", "--conf", "0.05", "--no-save-images", "--gate-delay", "0.45"])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = tmp_path / "tiny"
    gate = json.loads((folder / "summary.json").read_text())["counting"]["gate"]
    assert gate["delay_s"] == 0.45 and "reject gate 0.45 s after the line" in out
    lines = (folder / "events.jsonl").read_text().splitlines()
    assert lines, out
    for line in lines:
        e = json.loads(line)
        written = __import__("datetime").datetime.fromisoformat(e["time"]).timestamp()
        act_by = __import__("datetime").datetime.fromisoformat(e["act_by"]).timestamp()
        # act_by is the crossing frame's capture plus the delay: after the event, unless it says late
        assert e["late"] == (written > act_by + 0.001) or abs(written - act_by) < 0.002
        assert abs((act_by - written) * 1000 - e["gate_in_ms"]) < 2 and isinstance(e["seen_at_line"], bool)
    assert gate["late"] == sum(json.loads(x)["late"] for x in lines)


def test_ctrl_c_leaves_valid_events_and_summary(tiny_export, tmp_path) -> None:
    video = write_conveyor(tmp_path / "long", 6, speed=4.0, seed=5) and tmp_path / "long" / "conveyor.mp4"
    code = textwrap.dedent(f"""
        import signal, sys, detect.predict
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.exit(detect.predict.main(["--weights", {str(tiny_export['onnx'])!r}, {str(video)!r}, "--track",
                                      "--out", {str(tmp_path / 'out')!r}, "--conf", "0.05"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait until frames are being recorded
            if list((tmp_path / "out").glob("*/.conveyor*tmp*")):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    folder = tmp_path / "out" / "tiny"
    counting = json.loads((folder / "summary.json").read_text())["counting"]
    events = folder / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    assert len(lines) == counting["items"] and all(json.loads(x) for x in lines)


def test_make_demo_data_conveyor_writes_the_video_and_its_truth(tmp_path, capsys) -> None:
    from detect.make_demo_data import main as make

    assert make([str(tmp_path / "belt"), "--conveyor", "2", "--speed", "24", "--seed", "3"]) == 0
    assert "conveyor: 2 items" in capsys.readouterr().out
    truth = json.loads((tmp_path / "belt" / "conveyor.json").read_text())
    assert [i["cross_frame"] for i in truth["items"]] == sorted(i["cross_frame"] for i in truth["items"])
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "belt" / "conveyor.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == truth["frames"]
    cap.release()
