"""The training CLI end to end on tiny real data: outputs, checkpoints, resume, NaN guard, exit codes."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from detect.data import dataset as D
from detect import train as T
from detect.common.errors import UsageError
from detect.training import config as train_config, data_prep, trainer
from detect.model.checkpoint import load_checkpoint
from detect.model.build import model_from_checkpoint

from conftest import TINY_TRAIN, make_devkit

TINY = ["--epochs", "1", "--weights", "none", *TINY_TRAIN]


def run(data: Path, out: Path, *extra: str) -> int:
    return T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), *TINY, *extra])


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return make_devkit(tmp_path / "data", n=6)


@pytest.mark.parametrize("backbone", ["mobilenet", "resnet50"])
def test_one_epoch_writes_a_rebuildable_checkpoint(small: Path, tmp_path: Path, backbone: str, capsys) -> None:
    out = tmp_path / "weights"
    assert run(small, out, "--backbone", backbone) == 0
    printed = capsys.readouterr().out
    assert "9 anchors/location" in printed and "val mAP@0.5" in printed
    run_dir = out / backbone
    for name in ("best.pt", "last.pt", "results.csv", "args.json", "split.json"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0 and rows[0]["val_map50"] != ""
    log = list(csv.DictReader((out / "runs.csv").open()))
    assert log[0]["run"] == backbone and log[0]["backbone"] == backbone and log[0]["status"] == "finished"
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"] == "ImageSets/Main" and len(split["val"]) == 1

    # weights_only=True loads it (no pickled code), and it rebuilds its own model.
    raw = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert raw["classes"] == ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
    assert raw["model_config"]["backbone"] == backbone and raw["data"]["splits"]["val"] == split["val"]
    model, ckpt = model_from_checkpoint(run_dir / "best.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    with torch.inference_mode():
        out1 = model([torch.rand(3, 80, 96)])
    assert set(out1[0]) == {"boxes", "scores", "labels"}
    assert "train_state" not in raw and "train_state" in load_checkpoint(run_dir / "last.pt")


def test_runs_are_never_overwritten(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    assert run(small, out, "--name", "exp") == 0
    assert run(small, out, "--name", "exp") == 0
    assert (out / "exp" / "best.pt").is_file() and (out / "exp2" / "best.pt").is_file()
    assert [r["run"] for r in csv.DictReader((out / "runs.csv").open())] == ["exp", "exp2"]


def test_hash_split_written_to_run_folder(tmp_path: Path) -> None:
    data = make_devkit(tmp_path / "data", n=10, splits=False)
    out = tmp_path / "w"
    assert run(data, out, "--val-fraction", "0.3") == 0
    split = json.loads((out / "mobilenet" / "split.json").read_text())
    assert split["source"].startswith("hash") and len(split["val"]) == 3 and len(split["train"]) == 7


def test_resume_continues_at_the_next_epoch_with_same_state(small: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["--epochs", "2", "--seed", "3", "--val-loss"]  # on a CPU the recipe leaves the val loss out
    straight = tmp_path / "straight"
    assert run(small, straight, *args) == 0

    # The same run, interrupted (Ctrl-C) when epoch 2 asks for its first batch.
    calls = {"n": 0}
    collate = D.collate

    def interrupting(batch):
        calls["n"] += 1
        # 6 images: 5 train (2 full batches of 2) and 1 val (1 batch for the mAP, 1 for the
        # val loss) in epoch 1; then the first batch of epoch 2.
        if calls["n"] == 2 + 1 + 1 + 1:
            raise KeyboardInterrupt
        return collate(batch)

    monkeypatch.setattr(data_prep, "collate", interrupting)
    cut = tmp_path / "cut"
    assert run(small, cut, *args) == 130
    err = capsys.readouterr().err
    assert f"python -m detect.train --resume {cut / 'mobilenet' / 'last.pt'}" in err
    last = load_checkpoint(cut / "mobilenet" / "last.pt")
    assert last["epoch"] == 0 and last["metrics"]["interrupted"]
    monkeypatch.setattr(data_prep, "collate", collate)

    assert T.main(["--resume", str(cut / "mobilenet" / "last.pt")]) == 0
    assert "Resuming" in capsys.readouterr().out
    a = load_checkpoint(straight / "mobilenet" / "last.pt")
    b = load_checkpoint(cut / "mobilenet" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    opt_a, opt_b = a["train_state"]["optimizer"], b["train_state"]["optimizer"]
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
    assert opt_a["state"] and opt_a["state"].keys() == opt_b["state"].keys()
    for i, st in opt_a["state"].items():
        for name, value in st.items():  # AdamW moments (from scratch) or SGD momentum
            assert torch.allclose(value.float(), opt_b["state"][i][name].float(), atol=1e-6), (i, name)
    assert a["train_state"]["scheduler"]["last_epoch"] == b["train_state"]["scheduler"]["last_epoch"]
    rows = list(csv.DictReader((cut / "mobilenet" / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # The val loss depends on the weights only, so the resumed run's matches too.
    straight_rows = list(csv.DictReader((straight / "mobilenet" / "results.csv").open()))
    assert rows[1]["val_loss"] == straight_rows[1]["val_loss"] != ""


def test_nan_loss_stops_with_epoch_iteration_and_files(small: Path, tmp_path: Path, capsys) -> None:
    code = run(small, tmp_path / "w", "--lr", "1e12", "--clip-grad", "0", "--warmup-iters", "0", "--epochs", "2")
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "epoch" in err and "iteration" in err
    assert ".jpg" in err and str(small / "JPEGImages") in err
    log = list(csv.DictReader((tmp_path / "w" / "runs.csv").open()))
    assert log[-1]["status"] == "stopped: non-finite loss"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--data", "/no/such/folder"], "no such folder"),
        (["--data", "{empty}"], "no .xml annotation files"),
        (["--data", "{data}", "--weights", "missing.pt"], "--weights missing.pt: not one of auto"),
        (["--data", "{data}", "--epochs", "0"], "--epochs must be at least 1"),
        (["--data", "{data}", "--box-head-dim", "0"], "--box-head-dim must be"),
        (["--data", "{data}", "--roi-sampling-ratio", "-1"], "--roi-sampling-ratio must be"),
        (["--data", "{data}", "--classes", "{data}/nope.txt"], "cannot read the classes file"),
        (["--resume", "/no/such/last.pt"], "no such checkpoint"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, small: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{data}", str(small)).replace("{empty}", str(tmp_path / "empty")) for a in argv]
    try:
        code = T.main(["--out", str(tmp_path / "w"), "--weights", "none", *argv])
    except SystemExit as exc:  # a number out of range is refused by the parser itself (LIMITS)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unknown_backbone_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        T.main(["--backbone", "vgg16"])
    assert exc.value.code == 2 and "invalid choice: 'vgg16'" in capsys.readouterr().err


def test_unknown_class_refused(small: Path, tmp_path: Path, capsys) -> None:
    (small / "two.txt").write_text("Lata\nBotella\n")
    argv = ["--data", str(small), "--classes", str(small / "two.txt"), "--out", str(tmp_path / "w"), *TINY]
    # The checker pass finds them first (exit 1, like tools/check_xml.py) ...
    assert T.main(argv) == 1
    err = capsys.readouterr().err
    assert "VOC301 error unknown class 'Lata_defectuosa'" in err
    # ... and without it the class map itself refuses them, naming the files.
    assert T.main([*argv, "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "class(es) not in" in err and "'Lata_defectuosa' in" in err and ".xml:" in err


def test_default_optimizer_follows_the_starting_weights(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "w"
    assert run(small, out, "--name", "scratch") == 0
    scratch = json.loads((out / "scratch" / "args.json").read_text())
    assert (scratch["optimizer"], scratch["lr"]) == ("adamw", 0.001)
    # Fine-tuning from a checkpoint: SGD at torchvision's lr scaled to the batch (0.02 x 2/16).
    assert run(small, out, "--name", "tuned", "--weights", str(out / "scratch" / "best.pt")) == 0
    tuned = json.loads((out / "tuned" / "args.json").read_text())
    assert (tuned["optimizer"], tuned["lr"]) == ("sgd", 0.0025)
    assert tuned["weights"] == str(out / "scratch" / "best.pt")


def test_checker_refuses_a_dataset_with_errors_unless_skip_invalid(small: Path, tmp_path: Path, capsys) -> None:
    # A box with xmin > xmax: an annotation error the checker reports with file and line.
    bad = small / "Annotations" / "img_004.xml"
    text = bad.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    bad.write_text(text[:start] + "95" + text[text.index("</xmin>"):])
    assert run(small, tmp_path / "w") == 1
    err = capsys.readouterr().err
    assert "annotation error(s)" in err and "img_004.xml:" in err
    assert f"python tools/check_xml.py {small}" in err and "--skip-invalid" in err

    assert run(small, tmp_path / "w", "--skip-invalid") == 0
    captured = capsys.readouterr()
    assert "--skip-invalid: leaving out 1 annotation file(s)" in captured.err
    assert "4 train / 1 val images" in captured.out


def test_recipes_fill_only_what_the_user_left_unset(small: Path) -> None:
    demo = train_config.resolve_config(T.config_from_args(T.build_parser().parse_args([])))
    m = demo.model
    assert (m.input_size, demo.epochs, m.anchor_ratios, demo.val_loss) == (256, 12, (0.5, 1.5, 3.0), False)
    assert (m.fpn_norm, m.box_head_dim, m.roi_sampling_ratio, m.roi_batch) == ("gn", 256, 1, 64)
    data = train_config.resolve_config(T.config_from_args(T.build_parser().parse_args(["--data", str(small), "--anchor-ratios", "1,2"])))
    # A user's data gets its input size from its images (prepare_data), not a fixed 640, and
    # its recipe once the machine and the weights are known (tests/test_budget.py).
    assert (data.recipe, data.model.input_size, data.model.anchor_ratios) == (None, None, (1.0, 2.0))
    # On a GPU: the box head and FPN COCO weights fit.
    m = train_config.resolve_config(data, train_config.RunFacts(cuda=True)).model
    assert (m.fpn_norm, m.box_head_dim, m.roi_sampling_ratio, m.anchor_ratios) == ("none", 1024, 2, (1.0, 2.0))
    given = train_config.resolve_config(T.config_from_args(T.build_parser().parse_args(["--data", str(small), "--input-size", "320"])))
    assert given.model.input_size == 320


@pytest.mark.parametrize("size, cuda, expected", [
    ((200, 200), False, 224),   # not upscaled 3.2x to 640 any more
    ((96, 80), False, 128),     # at least 128
    ((640, 480), False, 640),
    ((1920, 1080), False, 640),  # a CPU trains at most 640
    ((1920, 1080), True, 1024),
    (None, False, 640),
])
def test_input_size_fits_the_data_and_the_machine(size, cuda, expected) -> None:
    assert train_config.input_size_for(size, cuda=cuda) == expected


def test_the_banner_says_where_the_input_size_came_from(tmp_path: Path, capsys) -> None:
    data = make_devkit(tmp_path / "data", n=6, size=(200, 200))
    argv = ["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(tmp_path / "w"),
            *[a for a in TINY if a not in ("--input-size", "96")]]
    assert T.main(argv) == 0
    assert "input 224px (from the data: median image 200x200" in capsys.readouterr().out


def test_amp_on_the_cpu_trains_in_bfloat16_and_keeps_float32_weights(small: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "weights"
    assert run(small, out, "--device", "cpu", "--amp", "--name", "amp") == 0
    assert "AMP bfloat16" in capsys.readouterr().out
    state = load_checkpoint(out / "amp" / "best.pt")["model"]
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.float32}
    assert run(small, out, "--device", "cpu", "--name", "full") == 0
    assert "AMP" not in capsys.readouterr().out


def test_patience_stops_after_that_many_epochs_without_a_better_val_map(small: Path, tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    # Scripted val scores (a tiny model's own mAP is 0 or luck): better at epochs 1 and 3, then
    # two epochs without: --patience 2 stops after epoch 5 of 6; epoch 3 is the best.
    scores = iter([0.5, 0.4, 0.6, 0.3, 0.2, 0.9])
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: next(scores))
    out = tmp_path / "w"
    assert run(small, out, "--epochs", "6", "--patience", "2") == 0
    printed = capsys.readouterr().out
    assert "Early stop: no better val mAP@0.5 for 2 epochs (best 0.6000 at epoch 3)" in printed
    assert "Done: best val mAP@0.5 0.6000 (epoch 3)" in printed and "epoch 6/6" not in printed
    rows = list(csv.DictReader((out / "mobilenet" / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert list(csv.DictReader((out / "runs.csv").open()))[-1]["status"] == "early-stopped"
    assert load_checkpoint(out / "mobilenet" / "best.pt")["epoch"] == 2
    assert load_checkpoint(out / "mobilenet" / "last.pt")["epoch"] == 4


def test_a_changed_config_is_refused_on_resume_with_advice_that_works(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "w"
    assert run(small, out) == 0
    last = out / "mobilenet" / "last.pt"
    changed = dataclasses.replace(train_config.resume_config(last), lr=0.5)
    with pytest.raises(UsageError, match=r"other settings \(lr\); build the config with "
                                         r"detect\.training\.trainer\.resume_config"):
        trainer.train(changed)
    from detect.training.trainer import resume_config  # the function the message names is there

    assert trainer.train(resume_config(last, {"epochs": 2})).status == "finished"
    assert load_checkpoint(last)["epoch"] == 1


def test_channels_last_trains_the_model_in_that_memory_format(small: Path, tmp_path: Path) -> None:
    args = T.build_parser().parse_args(["--data", str(small), "--classes", str(small / "classes.txt"),
                                        "--out", str(tmp_path / "w"), *TINY, "--channels-last"])
    result = trainer.train(T.config_from_args(args))
    assert result.status == "finished"

    def spatial(model):  # the convolution weights whose layout the memory format changes
        return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]

    assert spatial(result.model) and all(p.is_contiguous(memory_format=torch.channels_last) for p in spatial(result.model))
    fresh = trainer.model_for_config(result.config, 5)  # 4 classes and the background, not moved
    assert not any(p.is_contiguous(memory_format=torch.channels_last) for p in spatial(fresh))
