"""Shared fixtures: tiny real VOC datasets on disk (real JPEGs, real XML)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from detect.data.voc import Annotation, Box, VocObject, write_voc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"
CLASSES = ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")

# The smallest training that still exercises every part of detect.train. The narrow box head
# (64 wide, not the data recipe's 1024) is what keeps checkpoints small: at 1024 each run
# folder held ~300 MB (best.pt, and last.pt with optimizer state) and one suite run wrote
# 9 GB, enough to fill a CI machine's disk.
# --no-anomaly: the bank built after training has its own tests (test_anomaly_line.py, TINY_TRAIN_WITH_BANK)
TINY_TRAIN_WITH_BANK = ["--batch-size", "2", "--input-size", "96", "--workers", "0", "--rpn-pre-nms", "100",
                        "--rpn-post-nms", "50", "--roi-batch", "32", "--box-head-dim", "64"]
TINY_TRAIN = [*TINY_TRAIN_WITH_BANK, "--no-anomaly"]
COLOURS = {"Lata": (200, 40, 40), "Lata_defectuosa": (40, 200, 40), "Botella": (40, 40, 200), "Botella_defectuosa": (200, 200, 40)}


def write_sample(
    folder_xml: Path,
    folder_img: Path,
    stem: str,
    objects: list[tuple[str, tuple[float, float, float, float]]],
    *,
    size: tuple[int, int] = (96, 80),
    ext: str = ".jpg",
) -> tuple[Path, Path]:
    """One image with filled rectangles where its boxes are, and its VOC XML."""
    w, h = size
    image = np.full((h, w, 3), 90, np.uint8)
    for name, (x0, y0, x1, y1) in objects:
        cv2.rectangle(image, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), COLOURS.get(name, (255, 255, 255)), -1)
    folder_img.mkdir(parents=True, exist_ok=True)
    img_path = folder_img / f"{stem}{ext}"
    cv2.imwrite(str(img_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    ann = Annotation(
        filename=img_path.name,
        width=w,
        height=h,
        objects=tuple(VocObject(n, Box(*map(float, b))) for n, b in objects),
    )
    xml_path = folder_xml / f"{stem}.xml"
    write_voc(ann, xml_path)
    return xml_path, img_path


def random_objects(rng: np.random.Generator, size: tuple[int, int], k: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    w, h = size
    out = []
    for _ in range(k):
        bw, bh = rng.integers(16, w // 2), rng.integers(16, h // 2)
        x0, y0 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        out.append((CLASSES[rng.integers(0, len(CLASSES))], (int(x0), int(y0), int(x0 + bw), int(y0 + bh))))
    return out


def make_devkit(root: Path, n: int = 8, *, size: tuple[int, int] = (96, 80), seed: int = 0, splits: bool = True) -> Path:
    """A VOC devkit folder with ``n`` images; ImageSets/Main train/val when ``splits``."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        stem = f"img_{i:03d}"
        write_sample(root / "Annotations", root / "JPEGImages", stem, random_objects(rng, size, 1 + i % 3), size=size)
        ids.append(stem)
    if splits:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        n_val = max(1, n // 4)
        (main / "train.txt").write_text("\n".join(ids[n_val:]) + "\n")
        (main / "val.txt").write_text("\n".join(ids[:n_val]) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    return make_devkit(tmp_path / "data")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so no test sees (or writes) the user's real one."""
    import torch

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


def make_tiny_checkpoint(path: Path, data: Path, *, input_size: int = 128, seed: int = 0, val: int = 2) -> Path:
    """An untrained MobileNet detector whose outputs depend on the image, saved as a checkpoint
    that records ``data`` (val split: the first ``val`` images).

    Untrained, torchvision's MobileNetV3 feeds the heads activations near 1e-8, so every box
    gets the same score and ties decide what is kept. Its batch-norm statistics are
    therefore set from a few random images (as if measured on data): then scores differ
    from box to box and image to image. The score threshold is 0, so it always detects.
    """
    import torch

    from detect.model.checkpoint import save_checkpoint
    from detect.model.build import build_model

    torch.manual_seed(seed)
    model = build_model(backbone="mobilenet", num_classes=len(CLASSES) + 1, input_size=input_size, weights="none",
                        box_head_dim=64, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, box_detections_per_img=20,
                        box_score_thresh=0.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration images
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model.backbone(model.transform.normalize(torch.rand(3, input_size * 3 // 4, input_size))[None])
    model.eval()
    ids = sorted(p.stem for p in (data / "Annotations").glob("*.xml"))
    return save_checkpoint({
        "model": model.state_dict(), "model_config": model.config.as_dict(), "classes": list(CLASSES), "epoch": 0,
        "metrics": {"map50": 0.0}, "args": {"val_fraction": 0.2}, "run": "tiny", "backbone": "mobilenet",
        "data": {"root": str(data), "images": None, "layout": "devkit",
                 "splits": {"train": ids[val:], "val": ids[:val]}},
    }, path)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint (:func:`make_tiny_checkpoint`) on a 6-image devkit, and its ONNX export
    by ``python -m detect.export`` (checked against PyTorch on 2 val images):
    ``{"data", "pt", "onnx", "export_exit", "export_output"}``. Exporting takes 10-30 s on 2
    cores, so it is done once."""
    import contextlib
    import io

    from detect.export import main

    root = tmp_path_factory.mktemp("tiny")
    data = make_devkit(root / "data", n=6)
    pt = make_tiny_checkpoint(root / "run" / "best.pt", data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--weights", str(pt), "--verify-images", "2"])
    return {"data": data, "pt": pt, "onnx": root / "run" / "best.onnx", "export_exit": code,
            "export_output": out.getvalue()}


# Prepended to a child process's code: imports of torch fail, as on a small box that
# installed only the core's dependencies.
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def assert_same_run(straight: Path, resumed: Path) -> None:
    """A run stopped and resumed ended as the one never stopped: the same weights, and the same
    loss and val mAP in every results.csv row."""
    import csv

    import torch

    from detect.model.checkpoint import load_checkpoint

    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(resumed / "last.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    rows_a = list(csv.DictReader((straight / "results.csv").open()))
    rows_b = list(csv.DictReader((resumed / "results.csv").open()))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert abs(float(ra["loss"]) - float(rb["loss"])) < 1e-4 and ra["val_map50"] == rb["val_map50"]


# -- the line station's tests: free local ports and a real headless chromium

def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_browser_and_station() -> None:
    """Skip the calling test module (one line) unless the station's extra, chromium and
    chromedriver are all here; call it at module level, before importing what needs them."""
    import shutil

    for module in ("starlette", "uvicorn", "selenium"):
        pytest.importorskip(module, reason=f'{module} is not installed: pip install -e ".[test]"')
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                    allow_module_level=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium, headless, driven by selenium through chromedriver; its profile lives
    in a pytest temporary folder (removed with the others). Flags as root on a closed network:
    no sandbox, no background connections."""
    import shutil

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = binary
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
              "--window-size=1280,900"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=o)
    yield d
    d.quit()
