"""--tensorboard: the results.csv rows and the run's settings as TensorBoard events in the run
folder, read back with TensorBoard's own event reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from detect import train as T  # noqa: E402

from conftest import TINY_TRAIN, make_devkit  # noqa: E402


def test_tensorboard_events_hold_the_results_csv_numbers(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_devkit(tmp_path / "data", n=6)
    out = tmp_path / "weights"
    argv = ["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), "--epochs", "2",
            "--weights", "none", "--name", "tb", "--tensorboard", "--val-loss", *TINY_TRAIN]  # val loss: logged too
    assert T.main(argv) == 0
    run = out / "tb"
    assert list(run.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 2
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_classifier", "train/lr", "val/loss", "val/map50", "time/epoch_s"} <= tags
    for tag, column in (("train/loss", "loss"), ("train/lr", "lr"), ("val/map50", "val_map50"), ("val/loss", "val_loss")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
    assert "args/text_summary" in acc.Tags()["tensors"]


def test_without_the_option_no_events_are_written(tmp_path: Path) -> None:
    from detect.training.run_folder import RunFolder

    run = RunFolder(tmp_path / "r")
    run.start({"a": 1}, {})
    run.add_epoch({"epoch": 1, "loss": 1.0})
    assert not list((tmp_path / "r").glob("events.*"))
