"""Static int8 export, the accuracy gate, the torch-free int8 path, OpenVINO and detect.benchmark.

All on the tiny checkpoint of the conftest (an untrained MobileNet at 128 px): they check
what is built and refused, never a time.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import NO_TORCH, REPO

from detect.data.images import read_image


def _export(argv: list[str]) -> tuple[int, str, str]:
    from detect.export import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 initialisers that the QDQ graph dequantises (the Conv/Gemm weights)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[0]]) for n in proto.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]


@pytest.fixture(scope="module")
def int8_export(tiny_export, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    code, stdout, stderr = _export(["--weights", str(tiny_export["pt"]), "--int8", "--calibrate", "4",
                                    "--verify-images", "1", "--out", str(out)])
    return {"path": out, "code": code, "stdout": stdout, "stderr": stderr}


def test_int8_export_keeps_metadata_and_detections_close_to_float32(tiny_export, int8_export) -> None:
    from detect.inference.onnx_runtime import OnnxDetector

    assert int8_export["code"] == 0, int8_export["stdout"] + int8_export["stderr"]
    assert "int8 (" in int8_export["stdout"] and "val mAP@0.5" in int8_export["stdout"]
    q = OnnxDetector(int8_export["path"])
    f = OnnxDetector(tiny_export["onnx"])
    assert q.classes == f.classes and q.meta["input_size"] == f.meta["input_size"]
    assert q.meta["int8"]["format"] == "QDQ" and q.meta["int8"]["calibration_images"] == 4
    assert q.meta["int8"]["float_nodes"]  # the box regressions stay float
    assert set(q.meta["accuracy"]) >= {"map50_reference", "map50", "drop", "max_drop"}
    assert int8_export["path"].stat().st_size < 0.5 * tiny_export["onnx"].stat().st_size
    # 7-bit weights, on every CPU: AVX2 kernels sum uint8 x int8 pairs in 16 bits, which 2 x 255 x 127 overflows.
    weights = _int8_weights(int8_export["path"])
    assert len(weights) >= 70 and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    # Parity on the devkit's images. The tolerance is loose on purpose, and was set by
    # measuring: the tiny model is untrained, its scores are near-ties (0.33 against 0.34)
    # and its boxes barely depend on the image, so int8 rounding reorders them and changes
    # which overlapping boxes survive NMS (measured: float32's five best boxes meet an int8
    # box at mean IoU 0.26-0.47 per image, best scores within 0.16). What must hold: the same
    # number of detections, labels among the classes, the best score within 0.25, and
    # float32's five best boxes found near int8 ones (mean best IoU >= 0.15 per image). How
    # close int8 stays on a trained model is what the accuracy gate measures (val mAP@0.5;
    # docs/performance.md has the demo model's figures), and the test below shows it refuses.
    images = sorted((tiny_export["data"] / "JPEGImages").glob("*.jpg"))
    for p in images:
        a = f.detect([read_image(p)], ["a"])[0]
        b = q.detect([read_image(p)], ["b"])[0]
        assert len(a.labels) == len(b.labels) and set(b.labels) <= {1, 2, 3, 4}
        assert abs(a.scores[0] - b.scores[0]) < 0.25
        assert _iou(a.boxes[:5], b.boxes).max(axis=1).mean() >= 0.15, p.name
    blank = q.detect([np.zeros((80, 96, 3), np.uint8)], ["blank"])[0]  # runs on an empty frame
    assert blank.boxes.shape[1:] == (4,)


def test_the_gate_refuses_a_badly_calibrated_int8_export(tiny_export, tmp_path) -> None:
    """Val ground truth is the float model's own best boxes, so float32 scores well; int8
    calibrated on black frames clips every real activation and must lose more than 0.01."""
    from detect.inference.onnx_runtime import OnnxDetector
    from detect.data.voc import Annotation, Box, VocObject, write_voc
    from conftest import CLASSES, make_devkit, make_tiny_checkpoint

    data = make_devkit(tmp_path / "data", n=6)
    pt = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data)
    f = OnnxDetector(tiny_export["onnx"])
    for p in sorted((data / "JPEGImages").glob("*.jpg"))[:2]:  # the val split
        image = read_image(p)
        d = f.detect([image], [p.stem])[0]
        objects = tuple(VocObject(CLASSES[int(l) - 1], Box(*map(float, b))) for b, l in zip(d.boxes[:3], d.labels[:3]))
        write_voc(Annotation(filename=p.name, width=image.shape[1], height=image.shape[0], objects=objects),
                  data / "Annotations" / f"{p.stem}.xml")
    black = tmp_path / "black"
    black.mkdir()
    for i in range(2):
        cv2.imwrite(str(black / f"b{i}.png"), np.zeros((96, 128, 3), np.uint8))
    out = tmp_path / "bad.onnx"
    argv = ["--weights", str(pt), "--int8", "--calibrate-on", str(black), "--verify-images", "0", "--out", str(out)]
    code, stdout, stderr = _export(argv)
    assert code == 1, stdout + stderr
    assert "nothing was written" in stderr and "(PyTorch float32) ->" in stderr and "limit 0.01" in stderr
    assert not out.exists() and not list(out.parent.glob(".variant-*"))
    code, stdout, stderr = _export(argv + ["--force"])
    assert code == 0, stdout + stderr
    assert "written because of --force" in stderr
    meta = OnnxDetector(out).meta["accuracy"]
    assert meta["forced"] is True and meta["drop"] > 0.01


def test_int8_quantisation_and_running_it_do_not_import_torch(tiny_export, tmp_path) -> None:
    code = NO_TORCH + f"""
from pathlib import Path
from detect.inference.onnx_runtime import OnnxDetector
from detect.deploy.quantize import calibration_images, quantize_int8
src = Path({str(tiny_export['onnx'])!r})
det = OnnxDetector(src)
images = calibration_images(det.meta, src, 2)
q = quantize_int8(src, Path({str(tmp_path / 'q.onnx')!r}), images)
out = OnnxDetector(q.path).detect([__import__('numpy').zeros((64, 64, 3), 'uint8')], ['x'])
assert 'torch' not in sys.modules and 'torchvision' not in sys.modules
print('ok', len(images), q.quantized)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok 2 ")


def test_openvino_backend_runs_the_export_or_says_how_to_install_it(tiny_export) -> None:
    from detect.common.errors import UsageError
    from detect.inference.loader import load_detector
    from detect.inference.openvino_runtime import available

    if not available():
        with pytest.raises(UsageError, match="pip install"):
            load_detector(tiny_export["onnx"], backend="openvino")
        pytest.skip("OpenVINO is not installed here: the backend refuses cleanly (checked)")
    det = load_detector(tiny_export["onnx"], backend="openvino", threads=1)
    d = det.detect([read_image(sorted((tiny_export["data"] / "JPEGImages").glob("*.jpg"))[0])], ["x"])[0]
    assert det.info["backend"] == "openvino" and d.boxes.shape[1:] == (4,) and len(d.labels) == len(d.scores)


def test_benchmark_smoke(tiny_export, tmp_path) -> None:
    from detect.benchmark import main

    out = tmp_path / "bench.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--weights", str(tiny_export["pt"]), "--threads", "1", "--images", "2", "--calibrate", "2",
                     "--json", str(out), "--no-openvino"])
    assert code == 0, buf.getvalue()
    rows = json.loads(out.read_text())["rows"]
    assert [r["format"] for r in rows] == ["PyTorch eager", "ONNX float32", "ONNX int8"]
    assert all(r["e2e_ips"] > 0 and r["latency"]["1"]["p50"] > 0 for r in rows)
    assert rows[0]["map50_diff"] == 0 and "x eager 1t" in buf.getvalue()


def test_static_int8_keeps_the_zero_proposal_safety(tiny_export, tmp_path) -> None:
    """As tests/test_export.py forces it: the RPN's objectness bias at -10 leaves no proposal;
    the statically quantised graph must still return empty outputs at every optimisation level."""
    import onnx
    from onnx import numpy_helper

    from detect.inference.onnx_runtime import OPTIMIZATION_LEVELS, OnnxDetector
    from detect.deploy.quantize import quantize_int8

    proto = onnx.load(str(tiny_export["onnx"]))
    [bias] = [i for i in proto.graph.initializer if i.name == "rpn.head.cls_logits.bias"]
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, -10, np.float32), bias.name))
    path = tmp_path / "no_proposals.onnx"
    onnx.save(proto, str(path))
    images = sorted((tiny_export["data"] / "JPEGImages").glob("*.jpg"))[:2]
    q = quantize_int8(path, tmp_path / "int8.onnx", images)
    for optimization in OPTIMIZATION_LEVELS:
        [d] = OnnxDetector(q.path, optimization=optimization).detect([read_image(images[0])], ["x"])
        assert d.boxes.shape == (0, 4) and d.labels.shape == (0,), optimization
