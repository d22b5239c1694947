"""Rebalancing: repeat factors, the repeat-factor sampler (deterministic, split across
ranks), an exact mid-epoch resume with --balance repeat, the banner's hint when it changes
nothing, the rare-defect demo, bad values."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from detect import train as T
from detect.data.dataset import collate
from detect.demo.dataset import read_marker, render_demo_image
from detect.model.checkpoint import load_checkpoint
from detect.training import data_prep
from detect.training.balance import RepeatFactorSampler, class_repeat_factors, image_repeat_factors

from conftest import TINY_TRAIN, assert_same_run, make_devkit

TINY = ["--epochs", "1", "--weights", "none", *TINY_TRAIN]


def train(data: Path, out: Path, *extra: str) -> int:
    return T.main(["--data", str(data), "--classes", str(data / "classes.txt"), "--out", str(out), *TINY, *extra])


def test_repeat_factors_of_a_hand_made_histogram() -> None:
    # 10 images, one of them empty: A in 9 (f = 0.9), B in 4 (f = 0.4), C in 1 (f = 0.1).
    images = [{"A"}, {"A"}, {"A"}, {"A"}, {"A", "B"}, {"A", "B"}, {"A", "B"}, {"A", "B"}, {"A", "C"}, set()]
    # f(A) = 0.9, f(B) = 0.4, f(C) = 0.1; with t = 0.9: r(A) = 1, r(B) = sqrt(0.9/0.4) = 1.5, r(C) = sqrt(9) = 3.
    r = class_repeat_factors(images, 0.9)
    assert r == pytest.approx({"A": 1.0, "B": 1.5, "C": 3.0})
    assert image_repeat_factors(images, r) == pytest.approx([1, 1, 1, 1, 1.5, 1.5, 1.5, 1.5, 3, 1])
    assert class_repeat_factors(images, 0.05) == {"A": 1.0, "B": 1.0, "C": 1.0}  # none rarer than t


def test_the_sampler_epoch_is_deterministic_and_splits_across_ranks() -> None:
    factors = [1.0, 1.5, 3.0, 1.0, 2.5, 1.2, 1.0]
    whole = RepeatFactorSampler(factors, seed=7)
    whole.set_epoch(3)
    epoch = whole.epoch_indices()
    assert len(epoch) == whole.epoch_size == round(sum(factors)) == len(list(whole))
    again = RepeatFactorSampler(factors, seed=7)
    again.set_epoch(3)
    assert list(again) == list(whole) == epoch
    whole.set_epoch(4)
    assert whole.epoch_indices() != epoch  # another epoch, another draw
    # Two ranks: each its share (as many each), no position twice, together the whole epoch.
    shares = []
    for rank in (0, 1):
        s = RepeatFactorSampler(factors, num_replicas=2, rank=rank, seed=7)
        s.set_epoch(3)
        shares.append(list(s))
        assert len(shares[-1]) == len(s) == math.ceil(len(epoch) / 2)
    padded = epoch + epoch[: 2 * len(shares[0]) - len(epoch)]
    assert [i for pair in zip(*shares) for i in pair] == padded
    # Over many epochs each image appears its factor times on average; the whole part always.
    counts, n = Counter(), 400
    for e in range(n):
        whole.set_epoch(e)
        counts.update(whole.epoch_indices())
    for i, f in enumerate(factors):
        assert counts[i] / n == pytest.approx(f, abs=0.12), i


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return make_devkit(tmp_path / "data", n=6)


def _count_calls(monkeypatch) -> dict:
    calls = {"n": 0}

    def counting(batch):
        calls["n"] += 1
        return collate(batch)

    monkeypatch.setattr(data_prep, "collate", counting)
    return calls


def test_balance_repeat_resumes_mid_epoch_exactly(small: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["--epochs", "2", "--seed", "5", "--balance", "repeat", "--balance-t", "1"]
    straight = tmp_path / "straight"
    calls = _count_calls(monkeypatch)
    assert train(small, straight, *args) == 0
    banner = capsys.readouterr().out
    assert "Balance: repeat-factor sampling (t=1)" in banner and "drawn from 5 train images" in banner
    # Each epoch: B train batches, then the one val batch read twice (val mAP, val loss).
    per_epoch = (calls["n"] - 4) // 2
    assert per_epoch > 2  # the repeated epoch is longer than the 5 images' 2 batches

    interrupted = {"n": 0}

    def interrupting(batch):
        interrupted["n"] += 1
        if interrupted["n"] == per_epoch + 2 + 2:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return collate(batch)

    monkeypatch.setattr(data_prep, "collate", interrupting)
    cut = tmp_path / "cut"
    assert train(small, cut, *args) == 130
    last = load_checkpoint(cut / "mobilenet" / "last.pt")
    assert last["epoch"] == 0 and last["train_state"]["partial"]["iteration"] == 1
    monkeypatch.setattr(data_prep, "collate", collate)
    assert T.main(["--resume", str(cut / "mobilenet" / "last.pt")]) == 0
    assert_same_run(straight / "mobilenet", cut / "mobilenet")


def test_the_banner_says_when_repeat_changes_nothing(small: Path, tmp_path: Path, capsys) -> None:
    # Every class is in more than 1 % of the images: every factor is 1, and the banner says so.
    assert train(small, tmp_path / "r", "--balance", "repeat", "--balance-t", "0.01") == 0
    banner = capsys.readouterr().out
    assert "x1.00" in banner and "so this changes nothing: raise --balance-t" in banner


@pytest.mark.parametrize("argv, needle", [
    (["--balance-t", "-1"], "--balance-t"),
    (["--balance", "often"], "--balance"),
    (["--demo-defect-rate", "2"], "--demo-defect-rate"),
])
def test_bad_balance_values_are_one_line_and_exit_2(argv, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        T.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_the_demo_can_make_defects_rare(tmp_path: Path) -> None:
    none = [o.name for k in range(12) for o in render_demo_image(0, k, (96, 80), defect_rate=0.0)[1]]
    assert none and not any(n.endswith("_defectuosa") for n in none)
    every = [o.name for k in range(12) for o in render_demo_image(0, k, (96, 80), defect_rate=1.0)[1]]
    assert every and all(n.endswith("_defectuosa") for n in every)
    # Without the option the images are the default demo's, and so is the marker.
    image, objects = render_demo_image(0, 3, (96, 80))
    again, same = render_demo_image(0, 3, (96, 80), defect_rate=None)
    assert (image == again).all() and objects == same
    from detect.demo.dataset import make_demo_dataset

    assert "defect_rate" not in read_marker(make_demo_dataset(tmp_path / "d", num_images=3, image_size=(64, 48)))
    assert read_marker(make_demo_dataset(tmp_path / "r", num_images=3, image_size=(64, 48),
                                         defect_rate=0.05))["defect_rate"] == 0.05
