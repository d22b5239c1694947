"""The ONNX backend: an exported detector on onnxruntime, without torch.

A model written by ``python -m detect.export`` is one ``.onnx`` file that carries what
prediction and evaluation need in its metadata (``metadata_props``), so nothing else
travels with it to the device at the line. The graph (batch 1; docs/prediction.md,
"The graph"):

=========  ===========  ==============  =================================================
tensor     dtype        shape           meaning
=========  ===========  ==============  =================================================
``image``  float32      ``[3, H, W]``   one RGB image scaled to ``[0, 1]``, any H and W
                                        (the graph resizes it to ``input_size`` and
                                        normalises it itself)
``boxes``  float32      ``[N, 4]``      ``xmin, ymin, xmax, ymax`` in pixels of ``image``
``labels`` int64        ``[N]``         ``1..K``; ``classes[label - 1]`` is the name
``scores`` float32      ``[N]``         confidence, by descending score, >= ``box_score_thresh``
=========  ===========  ==============  =================================================

``N`` may be 0. The metadata key ``detect`` holds one JSON object (:data:`METADATA_FORMAT`):
``classes``, ``input_size``, ``backbone``, ``test_settings`` (``box_score_thresh``,
``box_nms_thresh``, ``box_detections_per_img``, ``rpn_pre_nms_top_n_test``,
``rpn_post_nms_top_n_test``, ``rpn_score_thresh``), ``model_config``, ``run``, ``epoch``,
``metrics``, ``data`` and ``args`` (as in the checkpoint, so ``detect.eval`` finds the val
split), ``opset``, ``versions`` and ``source`` (the checkpoint it came from).

Imports onnxruntime and numpy only: no torch (a test checks it in a subprocess).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.common.types import Detections
from detect.inference.predictor import ModelError

log = logging.getLogger(__name__)

__all__ = ["GRAPH_INPUTS", "GRAPH_OUTPUTS", "METADATA_FORMAT", "METADATA_KEY", "OPTIMIZATION_LEVELS", "OnnxDetector",
           "check_graph", "image_input", "read_metadata"]

METADATA_KEY = "detect"
METADATA_FORMAT = "detect-onnx/1"
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# The graph detect.export writes: (name, rank, onnxruntime type) of its input and outputs.
GRAPH_INPUTS = (("image", 3, "tensor(float)"),)
GRAPH_OUTPUTS = (("boxes", 2, "tensor(float)"), ("labels", 1, "tensor(int64)"), ("scores", 1, "tensor(float)"))


def check_graph(session, path: str | os.PathLike[str]) -> None:
    """The loaded graph has the input and outputs of a ``detect.export`` model (names, ranks,
    types): metadata copied onto another graph must not reach ``session.run``.

    Raises:
        ModelError: naming the file, what the graph has and what was expected.
    """
    def signature(args) -> list[tuple[str, int | None, str]]:
        return [(a.name, len(a.shape) if isinstance(a.shape, (list, tuple)) else None, a.type) for a in args]

    def words(sig) -> str:
        return ", ".join(f"{name} {kind[7:-1] if kind.startswith('tensor(') else kind} rank {rank}"
                         for name, rank, kind in sig)

    inputs, outputs = signature(session.get_inputs()), signature(session.get_outputs())
    if inputs != list(GRAPH_INPUTS) or outputs[:len(GRAPH_OUTPUTS)] != list(GRAPH_OUTPUTS):
        raise ModelError(
            f"{show(path)}: not a graph written by detect.export although it carries its metadata: it takes "
            f"{show(words(inputs)) or 'nothing'} and gives {show(words(outputs)) or 'nothing'}, expected "
            f"{words(GRAPH_INPUTS)} -> {words(GRAPH_OUTPUTS)}; export the checkpoint again with "
            "`python -m detect.export --weights best.pt`"
        )


SHRINK_ABOVE = 4
"""An image whose longest side is over this many times the model's input size is shrunk
(OpenCV ``INTER_AREA``) to twice the input size before it is handed to the model, and the
boxes are scaled back: the model resizes to its input size anyway, and a 12000 x 9000
photo would otherwise become a 1.3 GB float32 tensor (and several more inside the graph)."""


def shrink_for_model(image: np.ndarray, input_size: int | None) -> tuple[np.ndarray, float]:
    """``image`` reduced for a model of ``input_size`` (see :data:`SHRINK_ABOVE`), and the
    factor that maps its box coordinates back to ``image`` (1.0: unchanged)."""
    if not input_size:
        return image, 1.0
    h, w = image.shape[:2]
    side = max(h, w)
    if side <= SHRINK_ABOVE * int(input_size):
        return image, 1.0
    import cv2

    scale = 2 * int(input_size) / side
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return small, w / small.shape[1]


def image_input(image: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array as the graph's ``image``: float32 ``[3, H, W]`` in ``[0, 1]``
    (the same numbers as :func:`detect.data.tensors.image_tensor`)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise UsageError("running an .onnx model needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def read_metadata(session, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``detect`` metadata of a loaded session, checked.

    Raises:
        ModelError: the file has no (or unreadable, or incomplete) ``detect`` metadata.
    """
    props = session.get_modelmeta().custom_metadata_map
    text = props.get(METADATA_KEY)
    if text is None:
        raise ModelError(
            f"{show(path)}: an ONNX model without can-detect metadata (its classes and input size are unknown); "
            "export the checkpoint with `python -m detect.export --weights best.pt`"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{show(path)}: its '{METADATA_KEY}' metadata is not valid JSON ({exc.msg}); export it again") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(f"{show(path)}: metadata format {show(repr(found))}, expected '{METADATA_FORMAT}'; export it again with "
                         "this version's `python -m detect.export`")
    for key in ("classes", "input_size"):
        if key not in meta:
            raise ModelError(f"{show(path)}: its metadata lacks '{key}'; export it again")
    return meta


class OnnxDetector:
    """A detector exported by ``detect.export``, run by onnxruntime on the CPU (or CUDA).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's intra-op threads (None: its default, one per physical core).
        optimization: graph optimisation level, one of :data:`OPTIMIZATION_LEVELS`.
        device: ``"auto"``/``"cpu"``/``"cuda"``: CUDA only when asked for (or ``auto``) and
            onnxruntime has it.
        spinning: let idle worker threads spin-wait for work (onnxruntime's default). Off
            here: on a small CPU the same cores decode, draw and write between runs, and
            spinning threads take their time (measured: bench/predict_speed.py).
        profile: write an onnxruntime profile (JSON, for chrome://tracing) with this prefix.

    Raises:
        UsageError: the file does not exist.
        ModelError: onnxruntime cannot load it, or it lacks our metadata.
    """

    batch_size = 1

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        optimization: str = "all",
        device: str = "auto",
        spinning: bool = False,
        profile: str | None = None,
    ) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{show(self.path)}: no such model file")
        if optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(f"optimization {optimization!r}: choose one of {', '.join(OPTIMIZATION_LEVELS)}")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        so.log_severity_level = 3  # onnxruntime's own warnings (unused initialisers...) are noise here
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = profile
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device.startswith("cuda"):
            raise UsageError(f"--device {device}: this onnxruntime has no CUDA ({', '.join(available)}); "
                             "install onnxruntime-gpu or use --device cpu")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile...: all mean "not a usable model"
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ModelError(
                f"{show(self.path)}: onnxruntime cannot load it ({show(first)}); the file is damaged, truncated or not an "
                "ONNX model: export it again with `python -m detect.export`"
            ) from None
        self.meta = read_metadata(self.session, self.path)
        self.classes = tuple(str(c) for c in self.meta["classes"])
        check_graph(self.session, self.path)
        self.input_name = GRAPH_INPUTS[0][0]
        self.output_names = ["boxes", "labels", "scores"]
        self.providers = self.session.get_providers()
        self.info = {
            "format": "onnx",
            "path": str(self.path),
            "backbone": self.meta.get("backbone"),
            "input_size": self.meta.get("input_size"),
            "run": self.meta.get("run"),
            **(self.meta.get("test_settings") or {}),
            "providers": self.providers,
            "device": "onnxruntime " + self.providers[0].replace("ExecutionProvider", "").lower(),
            "threads": threads,
            "spinning": spinning,
            "optimization": optimization,
        }

    def detect(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[Detections]:
        """Detections for each ``H x W x 3`` uint8 RGB image (one graph run per image)."""
        out = []
        for image, key in zip(images, keys):
            image, back = shrink_for_model(image, self.meta.get("input_size"))
            try:
                boxes, labels, scores = self.session.run(self.output_names, {self.input_name: image_input(image)})
            except Exception as exc:  # onnxruntime's Fail / RuntimeException: the graph itself is broken
                first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise ModelError(f"{show(self.path)}: onnxruntime cannot run it on {show(key)} ({show(first)}); "
                                 "export the checkpoint again with `python -m detect.export`") from None
            try:
                out.append(Detections(key, boxes.astype(np.float64) * back, scores.astype(np.float64),
                                      labels.astype(np.int64)))
            except ValueError as exc:  # outputs of the right types that do not fit together: not our detector
                raise ModelError(f"{show(self.path)}: not a detector written by detect.export although it carries its "
                                 f"metadata ({show(exc)} on {show(key)}); export the checkpoint again with "
                                 "`python -m detect.export`") from None
        return out

    def end_profiling(self) -> str | None:
        """Stop profiling; the profile file's path (None when not profiling)."""
        name = self.session.end_profiling()
        return name or None
