"""How the line's detectors thread on a shared CPU: OpenMP's wait policy and torch's thread
count set by the loader before torch starts, onnxruntime's sessions without spinning.

The PyTorch checks run in a child process: OpenMP reads its environment once, when torch
loads it, and ``OMP_DISPLAY_ENV=VERBOSE`` makes libgomp print what it read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, make_devkit, make_tiny_checkpoint

WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("threads")
    return make_tiny_checkpoint(root / "run" / "best.pt", make_devkit(root / "data", n=4))


def load_in_child(weights: Path, env: dict[str, str], **kwargs) -> tuple[dict, str]:
    """``load_detector(weights, **kwargs)`` in a fresh interpreter with ``env`` over a clean
    threading environment: (its info and torch's thread count, libgomp's report on stderr)."""
    code = textwrap.dedent(f"""
        import json, numpy as np
        from detect.inference.loader import load_detector
        det = load_detector({str(weights)!r}, device="cpu", **{kwargs!r})
        det.detect([np.zeros((60, 80, 3), np.uint8)], ["x"])
        import torch
        print(json.dumps({{"info": det.info, "torch_threads": torch.get_num_threads()}}))
    """)
    base = {k: v for k, v in os.environ.items() if k not in WAIT_ENV}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_pt_loader_makes_openmp_threads_sleep_instead_of_spin(tiny_pt) -> None:
    """No policy set by the user: the loader sets OMP_WAIT_POLICY=PASSIVE before torch loads
    libgomp, so its spin count is 0 (libgomp's own default spins 300000 times)."""
    out, err = load_in_child(tiny_pt, {})
    assert "GOMP_SPINCOUNT = '0'" in err, err
    assert out["info"]["wait_policy"] == "passive"


def test_a_wait_policy_the_user_set_is_left_alone(tiny_pt) -> None:
    out, err = load_in_child(tiny_pt, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err and "GOMP_SPINCOUNT = '0'" not in err, err
    assert out["info"]["wait_policy"] == "OMP_WAIT_POLICY=ACTIVE"


def test_threads_option_sets_torch_threads(tiny_pt) -> None:
    out, _ = load_in_child(tiny_pt, {}, threads=1)
    assert out["torch_threads"] == 1 and out["info"]["threads"] == 1


def test_torch_imported_first_is_reported_not_changed(monkeypatch) -> None:
    """Too late to choose once torch is loaded: the environment is not touched, and the
    detector's info says the threads spin."""
    import torch  # noqa: F401

    from detect.inference.loader import openmp_wait_policy

    for key in WAIT_ENV:
        monkeypatch.delenv(key, raising=False)
    assert openmp_wait_policy() == "spin (torch was imported first)"
    assert "OMP_WAIT_POLICY" not in os.environ


def test_onnx_sessions_do_not_spin(tiny_export) -> None:
    """The session options the line's ONNX detector runs with: no spinning, the thread count asked for."""
    from detect.inference.loader import load_detector

    det = load_detector(tiny_export["onnx"], device="cpu", threads=1)
    options = det.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert det.info["spinning"] is False
