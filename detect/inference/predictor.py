"""The streaming predictor: source -> preprocess -> infer -> postprocess, one result per frame.

Used by ``python -m detect.predict`` and from a user's own script::

    from detect.inference.loader import load_detector
    from detect.inference.predictor import Predictor

    predictor = Predictor(load_detector("weights/mobilenet/best.onnx"), conf=0.5)
    for result in predictor.stream("conveyor.mp4"):          # a generator: frame by frame
        if result.has_defect:
            print(result.key, result.names, result.detections.scores)

:class:`Predictor` works with any :class:`Detector`: the onnxruntime one
(:class:`detect.inference.onnx_runtime.OnnxDetector`, torch-free) or the PyTorch one
(:class:`detect.inference.torch_runtime.TorchDetector`); :func:`detect.inference.loader.load_detector` picks by
the file's suffix. It yields one :class:`Result` per image or frame as soon as it is
ready, never a list built at the end, so it runs on an endless camera as well as on a
folder.

Boxes are ``(xmin, ymin, xmax, ymax)`` float64 in pixels of the frame as read (the model
resizes internally and maps its boxes back). Labels are ``1..K``; ``classes[label - 1]``
is the name.

Torch-free: this module, the sources and the ONNX backend run on a box with onnxruntime
and OpenCV only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from detect.inference.drawing import class_colours, draw_detections
from detect.common.errors import DetectError, UsageError
from detect.common.types import Detections, default_defect_classes
from detect.data.images import read_image
from detect.inference.sources import Frame, Source, open_source
from detect.common.types import Timing
from detect.common.thresholds import CONF, ConfThresholds, parse_conf  # ConfThresholds, parse_conf: imported from here before


__all__ = [
    "ConfThresholds",
    "Detector",
    "ModelError",
    "Predictor",
    "RateMeter",
    "Result",
    "default_defect_classes",
    "parse_conf",
]


class ModelError(DetectError):
    """A model file that exists but cannot be used (corrupt, not ours, no metadata): exit 1."""


class Detector(Protocol):
    """What :class:`Predictor` (and ``detect.eval``) needs from a backend.

    Attributes:
        classes: class names; label ``i`` is ``classes[i - 1]``.
        info: what the model file says about itself (``backbone``, ``input_size``,
            ``box_score_thresh``, ``run``, ``format``, ``device``...), for summaries.
        meta: the model file's record of its training (``classes``, ``data`` with its root
            and splits, ``args``, ``run``, ``epoch``, ``metrics``; a checkpoint's
            ``history`` and ``training`` too), for evaluation on the data it was trained on.
        batch_size: images per :meth:`detect` call that suit it (1 for ONNX exports).
    """

    classes: tuple[str, ...]
    info: Mapping[str, Any]
    meta: Mapping[str, Any]
    batch_size: int

    def detect(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[Detections]:
        """Detections for ``H x W x 3`` uint8 RGB images, keyed ``keys``, in input order."""
        ...


@dataclass
class Result:
    """What the detector found in one frame (after the thresholds and the class filter).

    Attributes:
        frame: the :class:`~detect.inference.sources.Frame` (its ``image`` is the RGB array predicted on).
        detections: boxes ``(M, 4)`` float64 xmin/ymin/xmax/ymax in frame pixels, scores
            ``(M,)``, labels ``(M,)`` in ``1..K``, by descending score; empty when
            ``frame.error`` is set.
        classes: the class names (label ``i`` is ``classes[i - 1]``).
        defect_classes: the classes that count as defects.
        infer_seconds: time in the detector for this frame (its share of a batch).
        latency: seconds from reading the frame to this result.
        track_ids: with :func:`detect.line.session.track`, the track id of each detection (None otherwise).
        counted: with :func:`detect.line.session.track`, the items counted in this frame.
        track_seconds: with :func:`detect.line.session.track`, time spent tracking and counting this frame.
        overlay: drawn on top of :meth:`plot` (the counting line and counters when tracking).
    """

    frame: Frame
    detections: Detections
    classes: tuple[str, ...]
    defect_classes: tuple[str, ...] = ()
    infer_seconds: float = 0.0
    latency: float = 0.0
    track_ids: np.ndarray | None = None
    counted: list[Any] = field(default_factory=list)  # detect.line.counting.Item, made by the line
    track_seconds: float = 0.0
    overlay: Callable[[np.ndarray], None] | None = None

    @property
    def key(self) -> str:
        return self.frame.key

    @property
    def image(self) -> np.ndarray | None:
        return self.frame.image

    @property
    def error(self) -> str | None:
        return self.frame.error

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.classes[int(i) - 1] for i in self.detections.labels]

    @property
    def has_defect(self) -> bool:
        return any(n in self.defect_classes for n in self.names)

    def records(self) -> list[dict[str, Any]]:
        """One dict per detection: ``image``, ``label``, ``score``, ``bbox``, ``defect``."""
        d = self.detections
        return [
            {"image": self.key, "label": name, "score": float(s), "bbox": [float(v) for v in b],
             "defect": name in self.defect_classes}
            for name, s, b in zip(self.names, d.scores, d.boxes)
        ]

    def plot(self, *, line_width: int | None = None) -> np.ndarray:
        """The frame with its boxes drawn (a new ``H x W x 3`` uint8 RGB array)."""
        if self.image is None:
            raise ValueError(f"{self.key}: no image to draw on ({self.error})")
        names = self.names
        labels = None
        if self.track_ids is not None:
            labels = [f"#{int(t)} {n}" for t, n in zip(self.track_ids, names)]
        out = draw_detections(self.image, self.detections.boxes, names, self.detections.scores,
                              defect_classes=self.defect_classes, line_width=line_width,
                              colours=class_colours(self.classes, self.defect_classes), labels=labels)
        if self.overlay is not None:
            self.overlay(out)
        return out


def _empty(key: str) -> Detections:
    return Detections(key, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


class Predictor:
    """Runs a :class:`Detector` over sources, yielding one :class:`Result` per frame.

    Args:
        detector: the backend (:func:`detect.inference.loader.load_detector`).
        conf: a score threshold, a :class:`ConfThresholds`, or ``--conf`` strings
            (``["0.5", "Lata_defectuosa=0.3"]``).
        classes: keep only these class names (None: all).
        defect_classes: classes that count as defects (None: :func:`default_defect_classes`).
        batch_size: frames per detector call on finite sources (live sources always take
            one, the newest); None takes the detector's own.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        conf: float | ConfThresholds | Sequence[str] = CONF,
        classes: Sequence[str] | None = None,
        defect_classes: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.detector = detector
        self.classes = tuple(detector.classes)
        self.conf = conf if isinstance(conf, ConfThresholds) else parse_conf(
            [conf] if isinstance(conf, (int, float)) else conf, self.classes)
        unknown = [c for c in (classes or ()) if c not in self.classes]
        unknown += [c for c in (defect_classes or ()) if c not in self.classes]
        if unknown:
            raise UsageError(f"the model has no class {', '.join(repr(c) for c in unknown)} (it has {', '.join(self.classes)})")
        self.keep = tuple(classes) if classes else self.classes
        self.defect_classes = tuple(defect_classes) if defect_classes is not None else default_defect_classes(self.classes)
        self.batch_size = batch_size or getattr(detector, "batch_size", 1) or 1
        self.thresholds = self.conf.vector(self.classes)
        self._thresholds = self.thresholds
        self._wanted = np.array([False] + [c in self.keep for c in self.classes])

    def postprocess(self, dets: Detections, *, floor: float | None = None) -> Detections:
        """Keep the detections at or above their class's threshold (or ``floor``, when lower:
        the tracker's low detections) and of the classes asked for, by descending score."""
        labels = dets.labels
        ok = (labels >= 1) & (labels <= len(self.classes))
        idx = np.clip(labels, 0, len(self.classes))
        thresholds = self._thresholds if floor is None else np.minimum(self._thresholds, floor)
        ok &= self._wanted[idx] & (dets.scores >= thresholds[idx])
        order = np.flatnonzero(ok)
        order = order[np.argsort(-dets.scores[order], kind="stable")]
        return Detections(dets.image, dets.boxes[order], dets.scores[order], dets.labels[order])

    def _run(self, frames: list[Frame], floor: float | None = None) -> Iterator[Result]:
        good = [f for f in frames if f.image is not None]
        found: dict[int, Detections] = {}
        seconds = 0.0
        if good:
            t0 = time.perf_counter()
            dets = self.detector.detect([f.image for f in good], [f.key for f in good])
            seconds = (time.perf_counter() - t0) / len(good)
            found = {id(f): d for f, d in zip(good, dets)}
        for f in frames:
            d = found.get(id(f))
            now = time.perf_counter()
            yield Result(
                frame=f, detections=self.postprocess(d, floor=floor) if d is not None else _empty(f.key),
                classes=self.classes,
                defect_classes=self.defect_classes, infer_seconds=seconds if d is not None else 0.0,
                latency=now - f.captured if f.captured and d is not None else 0.0,
            )

    def predict_frames(self, frames: Iterable[Frame], *, live: bool = False,
                       floor: float | None = None) -> Iterator[Result]:
        """Results for ``frames`` in order, ``batch_size`` frames per detector call (one when ``live``);
        ``floor``: keep detections down to this score too (for :func:`detect.line.session.track_frames`)."""
        size = 1 if live else self.batch_size
        batch: list[Frame] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) >= size:
                yield from self._run(batch, floor)
                batch = []
        if batch:
            yield from self._run(batch, floor)

    def stream(self, source: str | Source | np.ndarray, *, recursive: bool = False) -> Iterator[Result]:
        """Results for a SOURCE string (see :mod:`detect.inference.sources`), an opened
        :class:`~detect.inference.sources.Source`, or one ``H x W x 3`` uint8 RGB array.

        Raises:
            detect.inference.sources.SourceError: the source cannot be opened.
        """
        if isinstance(source, np.ndarray):
            yield from self._run([Frame(source, "image", "<array>", captured=time.perf_counter())])
            return
        src = open_source(source, recursive=recursive) if isinstance(source, str) else source
        try:
            yield from self.predict_frames(src, live=src.live)
        finally:
            src.close()

    __call__ = stream


class RateMeter:
    """Frames per second and latency over a sliding window, for the live status line."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._start = time.perf_counter()
        self._frames = 0
        self._latency: list[float] = []
        self._infer: list[float] = []

    def add(self, result: Result) -> str | None:
        """Count a result; every ``every`` seconds, return the status line (else None)."""
        self._frames += 1
        self._latency.append(result.latency)
        self._infer.append(result.infer_seconds)
        now = time.perf_counter()
        if now - self._start < self.every:
            return None
        fps = self._frames / (now - self._start)
        lat = np.asarray(self._latency) * 1000
        line = (f"{fps:.1f} FPS, latency {np.median(lat):.0f} ms median / {lat.max():.0f} ms max, "
                f"model {1000 * float(np.mean(self._infer)):.0f} ms/frame")
        self._start, self._frames, self._latency, self._infer = now, 0, [], []
        return line


def detect_files(detector: Detector, paths: Sequence[Any], keys: Sequence[str], *, exif: str = "apply",
                 progress: bool = False,
                 transform: Callable[[np.ndarray, str], np.ndarray] | None = None) -> tuple[list[Detections], Timing]:
    """Run ``detector`` on image files (read by :func:`detect.data.images.read_image` with the
    ``exif`` rule), ``detector.batch_size`` at a time: the detections keyed ``keys`` in input
    order, and the timing, where the first batch is left out when there is more than one (it
    pays one-off costs: memory allocation, kernel selection). ``transform(image, key)``, when
    given, changes each image before the model sees it (the robustness report's corruptions).

    Raises:
        detect.data.images.ImageError: an image cannot be decoded.
    """
    from tqdm import tqdm

    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} images")
    size = max(1, int(detector.batch_size))
    out: list[Detections] = []
    model_seconds, timed, start = 0.0, 0, time.perf_counter()
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False) as bar:
        for first in range(0, len(paths), size):
            images = [read_image(p, exif=exif) for p in paths[first:first + size]]
            if transform is not None:
                images = [transform(im, k) for im, k in zip(images, keys[first:first + size])]
            t0 = time.perf_counter()
            dets = detector.detect(images, list(keys[first:first + size]))
            if first > 0 or len(paths) <= size:
                model_seconds += time.perf_counter() - t0
                timed += len(dets)
            out.extend(dets)
            bar.update(len(dets))
    return out, Timing(images=len(paths), timed_images=timed, model_seconds=model_seconds,
                       total_seconds=time.perf_counter() - start, batch_size=size,
                       device=str(detector.info.get("device", "?")))
