"""detect.export, detect.deploy.onnx_export, detect.inference.onnx_runtime: the ONNX export and its backend.

One tiny untrained model (conftest ``tiny_export``: 128 px, batch-norm statistics set so
that scores differ from box to box) is exported once per session; the tests compare it
with PyTorch, break it on purpose, and run it without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import NO_TORCH, REPO

BLANK = np.full((96, 128, 3), 127, np.uint8)


def one_object() -> np.ndarray:
    image = np.full((96, 128, 3), 90, np.uint8)
    cv2.rectangle(image, (30, 20), (70, 80), (200, 40, 40), -1)
    return image


def crowded() -> np.ndarray:
    rng = np.random.default_rng(1)
    image = np.full((100, 120, 3), 60, np.uint8)
    for _ in range(25):
        x, y = int(rng.integers(0, 100)), int(rng.integers(0, 80))
        cv2.rectangle(image, (x, y), (x + 18, y + 20), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return image


def torch_outputs(pt: Path, images: list[np.ndarray], settings: dict) -> list[dict]:
    """PyTorch's outputs with the inference settings an export fixed (``test_settings``)."""
    import torch

    from detect.data.tensors import image_tensor
    from detect.inference.torch_runtime import set_test_settings
    from detect.model.build import model_from_checkpoint

    model, _ = model_from_checkpoint(pt)
    set_test_settings(model, **settings)
    with torch.inference_mode():
        return [{k: v.numpy() for k, v in model([image_tensor(im)])[0].items()} for im in images]


def test_onnx_matches_pytorch_on_blank_one_object_and_crowded_images(tiny_export) -> None:
    from detect.inference.onnx_runtime import OnnxDetector
    from detect.deploy.onnx_export import compare_detections

    rng = np.random.default_rng(0)
    images = [BLANK, one_object(), crowded(), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)]
    detector = OnnxDetector(tiny_export["onnx"])
    refs = torch_outputs(tiny_export["pt"], images, detector.meta["test_settings"])
    for name, ref, got in zip(["blank", "one object", "crowded", "noise"], refs,
                              detector.detect(images, ["a", "b", "c", "d"])):
        assert len(ref["labels"]) > 0, f"{name}: the test model must detect something"
        assert len(np.unique(ref["scores"])) > 1, f"{name}: scores must differ, or ties decide the order"
        agree = compare_detections(ref, got)
        assert agree.same, f"{name}: labels differ: {ref['labels']} vs {got.labels}"
        assert agree.box_rel <= 1e-3, f"{name}: boxes differ by {agree.box_rel:.2g} (relative)"
        assert agree.score_diff <= 1e-4, f"{name}: scores differ by {agree.score_diff:.2g}"


def test_no_proposal_surviving_gives_empty_outputs_not_a_reshape_error(tiny_export, tmp_path) -> None:
    """The failure torchvision #4623/#8534 report: no RPN proposal left -> Reshape {0,20} in
    roi_heads. Pushing the RPN's objectness bias to -10 (sigmoid 5e-5, under the RPN's 0.05
    score threshold) in the exported file makes every image such a case; it must give empty
    outputs at every graph optimisation level, and after dynamic int8 quantisation (whose
    graph onnxruntime folds into another Reshape {0,5,-1} unless the export avoids it)."""
    import logging

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from detect.inference.onnx_runtime import OPTIMIZATION_LEVELS, OnnxDetector

    proto = onnx.load(str(tiny_export["onnx"]))
    [bias] = [i for i in proto.graph.initializer if i.name == "rpn.head.cls_logits.bias"]
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, -10, np.float32), bias.name))
    path = tmp_path / "no_proposals.onnx"
    onnx.save(proto, str(path))
    level = logging.getLogger().level
    try:
        quantize_dynamic(str(path), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.getLogger().setLevel(level)  # the quantiser lowers the root logger's level
    for model in (path, tmp_path / "int8.onnx"):
        for optimization in OPTIMIZATION_LEVELS:
            [dets] = OnnxDetector(model, optimization=optimization).detect([one_object()], ["x"])
            assert dets.boxes.shape == (0, 4) and dets.scores.shape == (0,) and dets.labels.shape == (0,), \
                (model.name, optimization)


def test_metadata_carries_what_prediction_and_eval_need(tiny_export) -> None:
    from detect.inference.onnx_runtime import OnnxDetector

    d = OnnxDetector(tiny_export["onnx"])
    meta = d.meta
    assert meta["format"] == "detect-onnx/1"
    assert d.classes == ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")
    assert meta["input_size"] == 128 and meta["backbone"] == "mobilenet" and meta["opset"] == 17
    assert meta["test_settings"]["rpn_post_nms_top_n_test"] == 30 and meta["model_config"]["detector"]["box_detections_per_img"] == 20
    assert meta["test_settings"]["box_score_thresh"] == 0.0
    assert meta["model_config"]["num_classes"] == 5
    assert meta["data"]["root"] == str(tiny_export["data"]) and meta["data"]["splits"]["val"]
    assert meta["args"]["val_fraction"] == 0.2
    inputs = d.session.get_inputs()
    assert [i.name for i in inputs] == ["image"] and inputs[0].shape == [3, "height", "width"]
    assert [o.name for o in d.session.get_outputs()] == ["boxes", "labels", "scores"]


def test_predict_and_eval_on_onnx_never_import_torch(tiny_export, tmp_path) -> None:
    code = NO_TORCH + textwrap.dedent(f"""
        import detect.predict, detect.eval
        images = {str(tiny_export['data'] / 'JPEGImages')!r}
        p = detect.predict.main(["--weights", {str(tiny_export['onnx'])!r}, images, "--out", {str(tmp_path)!r},
                                 "--save-json", "--no-progress"])
        e = detect.eval.main(["--weights", {str(tiny_export['onnx'])!r}, "--no-progress"])
        assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))
        print("exit", p, e)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exit 0 0" in done.stdout, done.stdout + done.stderr
    assert len(json.loads((tmp_path / "tiny" / "predictions.json").read_text())) > 0
    assert "VOC mAP50" in done.stdout


def test_eval_scores_the_onnx_export_like_its_checkpoint(tiny_export, tmp_path, capsys) -> None:
    from detect.eval import main

    out = tmp_path / "eval.json"
    assert main(["--weights", str(tiny_export["pt"]), str(tiny_export["onnx"]), "--json", str(out),
                 "--no-progress"]) == 0
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"tiny", "tiny/best.onnx"}
    pt, onnx_ = results["tiny"], results["tiny/best.onnx"]
    assert onnx_["data"]["images"] == pt["data"]["images"] == 2  # the val split recorded in the metadata
    assert onnx_["voc"]["n_detections"] == pt["voc"]["n_detections"]
    assert abs(onnx_["voc"]["map50"] - pt["voc"]["map50"]) <= 0.005
    assert abs(onnx_["coco"]["AP"] - pt["coco"]["AP"]) <= 0.005


def test_export_cli_writes_beside_refuses_to_overwrite_and_checks_options(tiny_export, tmp_path, capsys) -> None:
    from detect.export import main

    assert main(["--weights", str(tiny_export["pt"]), "--out", str(tiny_export["onnx"])]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--weights", str(tiny_export["pt"]), "--opset", "9", "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2
    assert "--opset must be from 11 to 23, got 9" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path / "missing.pt")]) == 2
    assert main(["--weights", str(tiny_export["pt"]), "--out", str(tmp_path / "x.txt")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--weights", str(tiny_export["pt"]), "--proposals", "0", "--out", str(tmp_path / "y.onnx")])
    assert exc.value.code == 2 and "--proposals must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_export_cli_writes_beside_the_checkpoint_and_reports_the_check(tiny_export) -> None:
    """conftest's ``tiny_export`` ran ``python -m detect.export --weights run/best.pt --verify-images 2``."""
    text = tiny_export["export_output"]
    assert tiny_export["export_exit"] == 0, text
    assert f"wrote {tiny_export['onnx']}" in text and "input 128 px, proposals 100/30" in text
    assert "up to 20 detections" in text
    assert "checked against PyTorch on 4 images" in text  # a random and a blank image, 2 val images


def test_export_options_become_the_settings_fixed_in_the_graph() -> None:
    from detect.export import build_parser, settings_from

    args = build_parser().parse_args(["--weights", "x.pt", "--input-size", "320", "--pre-nms", "300",
                                      "--proposals", "100", "--detections", "50", "--score-thresh", "0.1"])
    assert settings_from(args) == {"input_size": 320, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
                                   "box_detections_per_img": 50, "box_score_thresh": 0.1}
    assert set(settings_from(build_parser().parse_args(["--weights", "x.pt"])).values()) == {None}


def test_test_settings_change_what_the_model_does(tiny_export) -> None:
    import torch

    from detect.model.build import model_from_checkpoint
    from detect.data.tensors import image_tensor
    from detect.inference.torch_runtime import set_test_settings, test_settings

    model, _ = model_from_checkpoint(tiny_export["pt"])
    assert test_settings(model)["input_size"] == 128
    applied = set_test_settings(model, input_size=96, rpn_post_nms_top_n_test=5, box_detections_per_img=4)
    assert applied["input_size"] == 96 and applied["rpn_post_nms_top_n_test"] == 5
    seen = {}

    def proposals(module, inputs, output) -> None:
        seen["proposals"] = len(output[0][0])

    def backbone_input(module, inputs, output) -> None:
        seen["shape"] = inputs[0].shape[-2:]

    model.rpn.register_forward_hook(proposals)
    model.backbone.register_forward_hook(backbone_input)
    with torch.inference_mode():
        out = model([image_tensor(crowded())])[0]
    assert seen["proposals"] <= 5 and max(seen["shape"]) <= 96 and len(out["scores"]) <= 4
    with pytest.raises(ValueError, match="unknown test settings"):
        set_test_settings(model, proposals=3)
