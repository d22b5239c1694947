"""Hostile and careless input, built at test time the way an attacker (or a tired user) would.

One test (or a few) per item of the hardening issue: nothing written outside the dataset,
nothing lost, no traceback, one clear line with the right exit status.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detect import check_xml
from detect import eval as E
from detect import train as T
from detect.training import data_prep, trainer
from detect.model.checkpoint import load_checkpoint
from detect.data.dataset import collate
from detect.data.layout import discover
from detect.data.voc import Annotation, Box, VocObject, annotation_to_xml

from conftest import TINY_TRAIN, assert_same_run, make_devkit, write_sample

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--weights", "none", *TINY_TRAIN]


def train(data: Path, out: Path, *extra: str) -> int:
    return T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), *TINY, *extra])


def one_line_error(err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return make_devkit(tmp_path / "data", n=6)


def xml_bytes(objects, *, filename="a.jpg", size=(64, 48)) -> bytes:
    ann = Annotation(filename=filename, width=size[0], height=size[1],
                     objects=tuple(VocObject(n, Box(*b)) for n, b in objects))
    return annotation_to_xml(ann)


def image(path: Path, size=(64, 48)) -> Path:
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


# --------------------------------------------------------------------------------------
# 1, 2: the fix writer


def test_fix_never_writes_through_a_backup_symlink(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image(data / "x.jpg")
    (data / "x.xml").write_bytes(b"\xef\xbb\xbf" + xml_bytes([("Lata", (10, 10, 40, 30))], filename="x.jpg"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (data / "x.xml.bak").symlink_to(victim)
    code = check_xml.main([str(data), "--fix"])
    err = capsys.readouterr().err
    assert victim.read_text() == "precious"  # the link's target is untouched
    assert code == 1 and "x.xml.bak exists and is not a regular file" in err and "Traceback" not in err
    assert (data / "x.xml").read_bytes().startswith(b"\xef\xbb\xbf")  # refused: the file is as it was


def test_fix_refuses_files_reached_through_links_outside_the_dataset(tmp_path: Path, capsys) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "y.xml"
    target.write_bytes(b"\xef\xbb\xbf" + xml_bytes([("Lata", (10, 10, 40, 30))], filename="y.jpg"))
    data = tmp_path / "data"
    data.mkdir()
    image(data / "y.jpg")
    (data / "y.xml").symlink_to(target)
    before = target.read_bytes()
    check_xml.main([str(data), "--fix"])
    assert target.read_bytes() == before and "symbolic link" in capsys.readouterr().err
    assert not list(outside.glob("*.bak*"))


def test_backups_keep_the_first_original_and_unsafe_fixes_leave_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image(data / "x.jpg")
    # 10.4 rounds to 10: the two objects become identical, which the same run must drop.
    original = xml_bytes([("Lata", (10.4, 10, 40, 30)), ("Lata", (10, 10, 40, 30))], filename="x.jpg")
    (data / "x.xml").write_bytes(original)
    assert check_xml.main([str(data), "--unsafe-fixes"]) == 0
    fixed = (data / "x.xml").read_bytes()
    assert fixed.count(b"<object>") == 1 and b"10.4" not in fixed
    assert (data / "x.xml.bak").read_bytes() == original
    # A second run finds nothing left to fix: it writes nothing, and the original stays.
    assert check_xml.main([str(data), "--fix"]) == 0
    assert check_xml.main([str(data), "--unsafe-fixes"]) == 0
    assert (data / "x.xml").read_bytes() == fixed and not (data / "x.xml.bak2").exists()
    # A later fix keeps its own backup and never replaces the first.
    (data / "x.xml").write_bytes(b"\xef\xbb\xbf" + fixed)
    assert check_xml.main([str(data), "--fix"]) == 0
    assert (data / "x.xml.bak").read_bytes() == original
    assert (data / "x.xml.bak2").read_bytes() == b"\xef\xbb\xbf" + fixed


# --------------------------------------------------------------------------------------
# 3: best.pt, full disks, killed writes, duplicate rows


def test_best_is_written_before_last(small: Path, tmp_path: Path, monkeypatch) -> None:
    order: list[str] = []
    real = trainer.RunFolder.save

    def spy(self, which, **kw):
        order.append(which)
        return real(self, which, **kw)

    monkeypatch.setattr(trainer.RunFolder, "save", spy)
    assert train(small, tmp_path / "w", "--epochs", "2") == 0
    # Whenever both are written, best.pt comes first: a crash between the two leaves a
    # last.pt that never names a best.pt that is not there.
    assert order[0] == "best" and order[1] == "last"
    assert all(order[i + 1] == "last" for i, w in enumerate(order) if w == "best")


def test_resume_restores_a_missing_best_and_never_lies_about_it(small: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    assert train(small, out, "--epochs", "1") == 0
    run = out / "mobilenet"
    (run / "best.pt").unlink()  # lost between the two saves, or deleted
    assert T.main(["--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    assert (run / "best.pt").is_file()
    assert "restored it from last.pt" in captured.err or "writes a new best.pt" in captured.err
    assert str(run / "best.pt") in captured.out


def test_a_full_disk_gives_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from detect.model.checkpoint import save_checkpoint
        from detect.common.errors import DetectError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a disk with 200 kB left
        try:
            save_checkpoint({{"model": {{"w": torch.zeros(1_000_000)}}}}, {str(tmp_path / "last.pt")!r})
        except DetectError as exc:
            print("error:", exc)
            sys.exit(exc.exit_code)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "cannot be written" in done.stdout and "Traceback" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []  # neither last.pt nor a hidden .tmp


def test_resume_clears_killed_writes_and_duplicate_rows(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "w"
    assert train(small, out, "--epochs", "1") == 0
    run = out / "mobilenet"
    stale = run / ".last.pt.0123abcd.tmp"  # what SIGKILL during a save leaves
    stale.write_bytes(b"\0" * 1000)
    with (run / "results.csv").open("a", newline="") as fh:  # a kill after the row, before last.pt
        csv.writer(fh).writerow([2, 1.0, 0, 0, 0, 0, 0.001, 0.1, 1.0])
    assert T.main(["--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    assert not stale.exists()
    assert [r["epoch"] for r in csv.DictReader((run / "results.csv").open())] == ["1", "2"]


# --------------------------------------------------------------------------------------
# 4, 12: checkpoints that are empty, damaged or malicious


def test_zero_byte_and_bit_flipped_checkpoints(small: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert T.main(["--resume", str(empty)]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "empty (0 bytes)" in err
    assert E.main(["--weights", str(empty), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "empty (0 bytes)" in err and "Traceback" not in err

    out = tmp_path / "w"
    assert train(small, out) == 0
    last = out / "mobilenet" / "last.pt"
    payload = load_checkpoint(last)
    flipped = tmp_path / "flipped.pt"
    raw = bytearray(last.read_bytes())
    # Flip one bit inside the largest tensor's stored bytes (found by its contents).
    weight = max(payload["model"].values(), key=lambda t: t.numel())
    blob = weight.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64]
    at = bytes(raw).find(blob)
    assert at > 0
    raw[at + 3] ^= 0x04
    flipped.write_bytes(bytes(raw))
    assert T.main(["--resume", str(flipped)]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "do not match the checksum" in err


def test_a_malicious_pickle_is_refused_without_unsafe_advice(small: Path, tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Payload()}, evil)
    as_weights = ["--data", str(small), "--classes", str(small / "classes.txt"), "--out", str(tmp_path / "w"),
                  "--no-check", "--weights", str(evil)]
    for argv, status in ((["--resume", str(evil)], 2), (as_weights, 2)):
        assert T.main(argv) == status
        err = capsys.readouterr().err
        assert "not a checkpoint of this project" in err and "weights_only=False" not in err
    assert E.main(["--weights", str(evil), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not a checkpoint of this project" in err and "weights_only" not in err
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------------------
# 5: option values


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--input-size", "1"], "--input-size must be from 32 to 8192, got 1"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--weight-decay", "-5"], "--weight-decay must be a finite number >= 0, got -5"),
        (["--anchor-scales", "nan"], "--anchor-scales expected positive numbers"),
        (["--workers", "-1"], "--workers must be from 0 to 256, got -1"),
        (["--trainable-layers", "99"], "--trainable-layers for mobilenet must be from 0 to 6, got 99"),
        (["--rpn-batch", "0"], "--rpn-batch must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ],
)
def test_bad_option_values_give_one_line_and_exit_2(extra, needle, small: Path, tmp_path: Path, capsys) -> None:
    code = None
    try:
        code = train(small, tmp_path / "w", *extra)
    except SystemExit as exc:  # argparse's own parse errors (a list that is no list of numbers)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err)
    assert needle in err


def test_an_unwritable_out_is_refused_before_any_data_is_read(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for out in (afile, afile / "runs"):
        # --data does not exist either: the output folder is checked first.
        assert T.main(["--data", str(tmp_path / "nowhere"), "--out", str(out), "--weights", "none"]) == 2
        err = capsys.readouterr().err
        one_line_error(err)
        assert f"--out {out}: cannot write there" in err


# --------------------------------------------------------------------------------------
# 6: decompression bombs


def _bomb(path: Path) -> None:
    """A 20000 x 20000 PNG of one colour: a few hundred kB on disk, 400 megapixels decoded."""
    Image.new("L", (20000, 20000)).save(path)


def test_a_decompression_bomb_is_an_unreadable_image_for_training_and_eval(small: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    assert train(small, out) == 0
    capsys.readouterr()
    bomb = small / "JPEGImages" / "img_000.jpg"  # a val image (ImageSets/Main/val.txt)
    bomb.unlink()
    _bomb(bomb.with_suffix(".png"))
    xml = small / "Annotations" / "img_000.xml"
    xml.write_text(xml.read_text().replace("img_000.jpg", "img_000.png"))
    for run in (lambda: train(small, out, "--no-check"),
                lambda: E.main(["--weights", str(out / "mobilenet" / "best.pt"), "--no-progress"])):
        assert run() in (1, 2)
        err = capsys.readouterr().err
        assert "img_000.png" in err and "too large to decode safely" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# 7: predictions files


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[" * 100_000 + "]" * 100_000, "nests lists or objects thousands of levels deep"),
        ('[{"image": "img_000.jpg", "label": "Lata", "score": ' + "9" * 400 + ', "bbox": [1, 2, 3, 4]}]',
         "record 0: score is 9999"),
        ('[{"image": "img_000.jpg", "label": "Lata", "score": ' + "9" * 5000 + ', "bbox": [1, 2, 3, 4]}]',
         "a number with thousands of digits"),
        ('[{"image": "img_000.jpg", "label": "Lata", "score": 0.5, "bbox": [1, 2, 3, ' + "9" * 400 + ']}]',
         "record 0: bbox"),
    ],
)
def test_hostile_predictions_files(text: str, needle: str, small: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "p.json"
    pred.write_text(text)
    assert E.main(["--data", str(small), "--predictions", str(pred), "--no-progress"]) == 1
    err = capsys.readouterr().err
    one_line_error(err)
    assert needle in err and len(err) < 600


# --------------------------------------------------------------------------------------
# 8: denial of service in the checker


def test_twenty_thousand_boxes_in_one_file(tmp_path: Path) -> None:
    from detect.checks import check_dataset

    data = tmp_path / "data"
    data.mkdir()
    image(data / "many.jpg", (2000, 2000))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1900, (20_000, 2)).round(0)
    objects = [("Lata", (x, y, x + 20 + i % 7, y + 20 + i % 5)) for i, (x, y) in enumerate(xy)]
    objects.append(("Lata", (objects[0][1][0] + 1, *objects[0][1][1:])))  # one near copy of the first
    (data / "many.xml").write_bytes(xml_bytes(objects, filename="many.jpg", size=(2000, 2000)))
    report = check_dataset(discover(data))
    overlaps = [f for f in report.findings if f.code == "VOC207"]
    # Exactly the planted pair (random 20-px boxes rarely overlap this much), or a few more.
    assert any(f.line is not None and "IoU 0.9" in f.message for f in overlaps)
    assert len(overlaps) <= 51


def test_a_fifo_named_like_an_annotation_does_not_hang(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image(data / "a.jpg")
    (data / "a.xml").write_bytes(xml_bytes([("Lata", (10, 10, 40, 30))]))
    os.mkfifo(data / "b.xml")
    os.mkfifo(data / "c.jpg")
    done = subprocess.run([sys.executable, "-m", "detect.check_xml", str(data), "--severity", "warning"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "b.xml: VOC503 warning stray file (not a regular file" in done.stdout
    assert "c.jpg: VOC503 warning" in done.stdout


def test_a_fifo_image_does_not_hang_training_or_the_image_reader(tmp_path: Path) -> None:
    from detect.data.images import ImageError, read_image

    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path / "x.jpg")


def test_a_50_mb_text_node_is_explained_in_our_words(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image(data / "a.jpg")
    (data / "a.xml").write_bytes(b"<annotation><filename>" + b"a" * (50 * 2**20) + b"</filename></annotation>")
    assert check_xml.main([str(data), "--severity", "error"]) == 1
    out = capsys.readouterr().out
    assert "longer than 10 MB" in out and "XML_PARSE_HUGE" not in out


# --------------------------------------------------------------------------------------
# 9, 10, 11: resume and Ctrl-C


def test_resume_honours_more_epochs_and_refuses_other_changes(small: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    assert train(small, out) == 0
    last = out / "mobilenet" / "last.pt"
    capsys.readouterr()
    assert T.main(["--resume", str(last), "--epochs", "3", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "--lr cannot change" in err
    assert T.main(["--resume", str(last), "--epochs", "1"]) == 2
    assert "has already trained 1 epoch(s)" in capsys.readouterr().err
    assert T.main(["--resume", str(last), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "epoch 2/1" not in printed
    assert load_checkpoint(last)["epoch"] == 1


def _interrupt_at(monkeypatch, call: int) -> None:
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return collate(batch)

    monkeypatch.setattr(data_prep, "collate", interrupting)


def test_ctrl_c_mid_epoch_resumes_exactly(small: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # --val-loss: the CPU recipes leave it out, and a resumed run must reproduce it too.
    args = ["--epochs", "2", "--seed", "5", "--val-loss"]
    straight = tmp_path / "straight"
    assert train(small, straight, *args) == 0
    # 5 train images in batches of 2 (2 batches an epoch) and 1 val batch, read twice (val
    # mAP, val loss): call 6 is the second batch of epoch 2, so one step of epoch 2 is done
    # when Ctrl-C comes.
    _interrupt_at(monkeypatch, 6)
    cut = tmp_path / "cut"
    assert train(small, cut, *args) == 130
    assert "where epoch 2 stopped" in capsys.readouterr().err
    last = load_checkpoint(cut / "mobilenet" / "last.pt")
    assert last["epoch"] == 0 and last["train_state"]["partial"]["iteration"] == 1
    monkeypatch.setattr(data_prep, "collate", collate)
    assert T.main(["--resume", str(cut / "mobilenet" / "last.pt")]) == 0
    assert_same_run(straight / "mobilenet", cut / "mobilenet")


def test_a_second_ctrl_c_during_the_save_cannot_break_it(small: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import detect.training.run_folder as runs

    real = runs.save_checkpoint
    sent = {"n": 0}

    def save_while_pressing(payload, path):
        if Path(path).name == "last.pt" and sent["n"] < 2:
            sent["n"] += 1
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the save: first, then again
        return real(payload, path)

    monkeypatch.setattr(runs, "save_checkpoint", save_while_pressing)
    assert train(small, tmp_path / "w", "--epochs", "3") == 130
    err = capsys.readouterr().err
    last = load_checkpoint(tmp_path / "w" / "mobilenet" / "last.pt")  # complete and loadable
    assert last["metrics"].get("interrupted") and "still finishing" in err
    assert "Interrupted before training started" not in err


# --------------------------------------------------------------------------------------
# 13: control characters in names


def test_control_characters_in_class_names_are_escaped(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image(data / "a.jpg")
    sneaky = "Lata\nREAL: all checks passed\r\u202eX"
    (data / "a.xml").write_bytes(xml_bytes([(sneaky, (10, 10, 40, 30))]))
    (data / "classes.txt").write_text("Lata\n")
    check_xml.main([str(data), "--classes", str(data / "classes.txt"), "--severity", "error"])
    out = capsys.readouterr().out
    assert "\u202e" not in out and "\r" not in out
    finding = next(line for line in out.splitlines() if "VOC301" in line)
    assert "Lata\\nREAL: all checks passed\\r\\u202eX" in finding
    assert not any(line.startswith("REAL") for line in out.splitlines())


# --------------------------------------------------------------------------------------
# 14: the wrong warning


def test_an_unparseable_xml_does_not_also_orphan_its_image(tmp_path: Path) -> None:
    from detect.checks import check_dataset

    data = tmp_path / "data"
    data.mkdir()
    image(data / "a.jpg")
    (data / "a.xml").write_bytes(b"<annotation><filename>a.jpg</filename>")  # cut off
    codes = {f.code for f in check_dataset(discover(data)).findings}
    assert "VOC101" in codes and "VOC402" not in codes


# --------------------------------------------------------------------------------------
# 15: training on nothing, and runs without a val split


def test_only_negatives_is_refused(tmp_path: Path, capsys) -> None:
    data = tmp_path / "neg"
    for i in range(4):
        write_sample(data, data, f"n{i}", [])
    (data / "classes.txt").write_text("Lata\nBotella\n")
    assert train(data, tmp_path / "w") == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "no objects of the classes" in err


def test_a_run_without_val_split_says_so(tmp_path: Path, capsys) -> None:
    data = make_devkit(tmp_path / "data", n=4, splits=False)
    assert train(data, tmp_path / "w", "--val-fraction", "0", "--epochs", "2") == 0
    out = capsys.readouterr().out
    assert "no val split" in out and "val mAP@0.5 0.0000" not in out and " *" not in out
    best = load_checkpoint(tmp_path / "w" / "mobilenet" / "best.pt")
    assert best["epoch"] == 1 and best["metrics"]["map50"] is None
    log = list(csv.DictReader((tmp_path / "w" / "runs.csv").open()))
    assert log[-1]["best_val_map50"] == "-"


# --------------------------------------------------------------------------------------
# The trainer against hostile data: a val image cut short, data moved before a resume, many processes


def test_a_val_image_with_cut_data_is_left_out_not_an_epoch_lost(small: Path, tmp_path: Path, capsys) -> None:
    # img_000 is in the val split (make_devkit puts the first quarter there): its header is
    # whole, so the checker passes it, but its data stops half-way.
    victim = small / "JPEGImages" / "img_000.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) * 2 // 3])
    assert train(small, tmp_path / "w") == 0
    captured = capsys.readouterr()
    assert "leaving out of the val split an image that does not decode" in captured.err and "img_000.jpg" in captured.err
    assert (tmp_path / "w" / "mobilenet" / "last.pt").is_file() and "Done:" in captured.out


def test_resume_follows_its_data_to_a_new_place_and_refuses_other_data(small: Path, tmp_path: Path, capsys) -> None:
    import shutil

    out = tmp_path / "w"
    assert train(small, out) == 0
    last = out / "mobilenet" / "last.pt"
    moved = tmp_path / "moved"
    shutil.move(str(small), moved)
    capsys.readouterr()
    # The recorded folder is gone: one line that says how to point the run at the new place.
    assert T.main(["--resume", str(last), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "is not there any more" in err and "--data NEW_PLACE" in err
    assert T.main(["--resume", str(last), "--epochs", "2", "--data", str(moved)]) == 0
    assert load_checkpoint(last)["epoch"] == 1
    # Other data (one image fewer) is not the run's data.
    (moved / "Annotations" / "img_005.xml").unlink()
    (moved / "JPEGImages" / "img_005.jpg").unlink()
    capsys.readouterr()
    assert T.main(["--resume", str(last), "--epochs", "3", "--data", str(moved)]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "is not the one mobilenet trained on" in err and "img_005" in err


def test_only_the_first_process_reports_the_run(tmp_path: Path, capsys) -> None:
    from detect.training.run_folder import RunFolder
    from detect.training.trainer import TrainResult

    result = TrainResult(run=RunFolder(tmp_path / "run", writes=False), status="finished", best_map50=0.5,
                         best_epoch=1, train_time=1.0, config=None, main=False)
    assert T._report(result) == 0
    assert capsys.readouterr().out == ""
    assert T._report(dataclasses.replace(result, main=True)) == 0
    assert "Done:" in capsys.readouterr().out


def test_a_foreign_folder_where_the_demo_goes_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DETECT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "demo-8").mkdir(parents=True)
    (tmp_path / "cache" / "demo-8" / "notes.txt").write_text("mine")
    assert T.main(["--demo-images", "8", "--out", str(tmp_path / "w"), *TINY]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "demo-8" in err and "DETECT_CACHE" in err
    assert (tmp_path / "cache" / "demo-8" / "notes.txt").read_text() == "mine"
