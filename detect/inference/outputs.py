"""What ``detect.predict`` writes: annotated images and videos, JSON, CSV, crops, VOC XML, a summary.

:class:`PredictionWriter` takes :class:`~detect.inference.predictor.Result` objects one at a time
(so an endless camera never piles up in memory beyond the per-detection rows) and writes
into one run folder, ``predictions/<name>/``:

=====================  ===================================================================
file                   what
=====================  ===================================================================
``<image name>``       each image with its boxes drawn (``--no-save-images``: none)
``<video stem>.mp4``   each video, camera or stream, annotated, at the source's frame rate
``predictions.json``   ``--save-json``: the predictions format ``detect.eval --predictions`` scores
``predictions.csv``    ``--save-csv``: one row per detection
``crops/<class>/``     ``--save-crops``: each detection cut out of the original frame
``summary.json``       images or frames seen, detections per class, images with a defect,
                       failed inputs, dropped frames
=====================  ===================================================================

``--save-ls FILE`` writes the same pre-annotation for Label Studio: its task import JSON, one
task per image with ``data.image`` (the image path, percent-encoded, after ``ls_prefix``,
by default Label Studio's local-files URL) and ``predictions`` (``model_version``, the lowest box score as the
task's ``score``, and one ``rectanglelabels`` result per box in percent of the image, with
its score and ``original_width``/``original_height``), for the labeling config
``<Image name="image" value="$image"/>`` + ``<RectangleLabels name="label" toName="image">``.
Video and camera frames are left out of it (they have no image file).

``--save-xml`` writes Pascal VOC pre-annotation: one XML per image **beside the image**
(where LabelImg looks for it), written as LabelImg 1.8.4+ would save it (upright frame,
whole pixels, ``xmin``/``ymin`` at least 1, its ``truncated`` rule), so an annotator
corrects instead of drawing; an existing XML is left alone (and listed) unless
``overwrite``. Video and camera frames have no image file: the frame is saved as a JPEG
in ``frames/`` with its XML beside it.

Every file goes through :mod:`detect.common.files` (a temporary file renamed into place). A
video is recorded into a hidden temporary file and renamed when it is closed, which
:meth:`PredictionWriter.close` does on every way out, Ctrl-C included, so what was
recorded stays playable.

Torch-free (OpenCV, numpy).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import cv2
import numpy as np

from detect.common.errors import show
from detect.common.files import write_atomic
from detect.common.types import Detections
from detect.scoring.predictions_json import write_predictions
from detect.inference.predictor import Result
from detect.inference.sources import Source
from detect.data.voc import Annotation, Box, VocObject, write_voc

log = logging.getLogger(__name__)

__all__ = ["CSV_FIELDS", "ItemLog", "PredictionWriter", "Summary", "voc_annotation"]

CSV_FIELDS = ["image", "source", "frame", "label", "score", "xmin", "ymin", "xmax", "ymax", "defect"]
_IMAGE_WRITE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_MAX_REPEAT = 300  # a live recording repeats a frame for the frames dropped before it, up to this many


@dataclass
class Summary:
    """Counts of one prediction run (written as ``summary.json``)."""

    images: int = 0
    frames: int = 0
    failed: list[str] = field(default_factory=list)
    detections: Counter = field(default_factory=Counter)
    with_defect: int = 0
    with_detection: int = 0
    dropped: int = 0
    xml_written: int = 0
    xml_skipped: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.images + self.frames

    def as_dict(self, classes: Sequence[str], defect_classes: Sequence[str]) -> dict[str, Any]:
        return {
            "images": self.images,
            "frames": self.frames,
            "failed": self.failed,
            "detections": {c: self.detections.get(c, 0) for c in classes},
            "defect_classes": list(defect_classes),
            "with_defect": self.with_defect,
            "with_detection": self.with_detection,
            "dropped_frames": self.dropped,
            "xml_written": self.xml_written,
            "xml_skipped": self.xml_skipped,
            "videos": self.videos,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that begins with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return would be a formula, so it gets a leading ``'``
    (OWASP's CSV-injection advice). Only names go through here; numbers stay numbers."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def voc_annotation(result: Result, *, image_path: Path) -> Annotation:
    """A result as the annotation LabelImg would save for ``image_path``, so that opening an
    untouched pre-annotation in LabelImg and saving it changes nothing: boxes in the upright
    frame LabelImg shows (the frame :func:`~detect.data.images.read_image` decodes, with
    ``<size>`` from it), rounded to whole pixels inside the image with ``xmin``/``ymin`` at
    least 1 (LabelImg's lower bound), ``truncated`` by LabelImg's rule (``xmin`` or ``ymin``
    is 1, or ``xmax``/``ymax`` reaches the width/height); boxes under 1 px and exact
    duplicates after rounding are dropped."""
    h, w = result.image.shape[:2]
    objects: list[VocObject] = []
    seen: set[tuple] = set()
    for name, box in zip(result.names, result.detections.boxes):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        x0, y0, x1, y1 = max(1, x0), max(1, y0), min(w, x1), min(h, y1)
        if x1 - x0 < 1 or y1 - y0 < 1 or (name, x0, y0, x1, y1) in seen:
            continue
        seen.add((name, x0, y0, x1, y1))
        touches = x0 == 1 or y0 == 1 or x1 == w or y1 == h
        objects.append(VocObject(name, Box(float(x0), float(y0), float(x1), float(y1)), truncated=touches))
    return Annotation(filename=image_path.name, width=w, height=h, depth=3, objects=tuple(objects),
                      folder=image_path.parent.name, path=str(image_path.resolve()))


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def _encode(image_rgb: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, _bgr(image_rgb), [cv2.IMWRITE_JPEG_QUALITY, 90] if suffix in (".jpg", ".jpeg") else [])
    if not ok:
        raise OSError(f"OpenCV cannot encode a {suffix} image")
    return data.tobytes()


class _Video:
    """An annotated video recorded into a temporary file, renamed into place on close."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise OSError(f"OpenCV cannot write an MP4 video to {path.parent}")
        self.size = size
        self.last_index: int | None = None
        self.frames = 0

    def write(self, frame_rgb: np.ndarray, index: int) -> None:
        bgr = _bgr(frame_rgb)
        if (bgr.shape[1], bgr.shape[0]) != self.size:  # a stream that changes resolution mid-way
            bgr = cv2.resize(bgr, self.size)
        # Live sources skip frames; repeating this one for them keeps the recording in real time.
        repeat = 1 if self.last_index is None else max(1, min(index - self.last_index, _MAX_REPEAT))
        for _ in range(repeat):
            self.writer.write(bgr)
        self.frames += repeat
        self.last_index = index

    def close(self) -> Path | None:
        self.writer.release()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        return self.path


LS_LOCAL_FILES = "/data/local-files/?d="


def ls_image_url(path: Path, prefix: str = LS_LOCAL_FILES) -> str:
    """``data.image`` of an image file: ``prefix`` then its absolute path without the leading
    ``/``, percent-encoded (UTF-8; only ``/`` kept), so Label Studio, which URL-decodes the
    ``?d=`` value, finds ``lot 7 & line#2+x.jpg`` or ``café 100%.jpg`` and not another file."""
    return prefix + quote(path.resolve().as_posix().lstrip("/"), safe="/")


def label_studio_task(result: Result, image_url: str, model_version: str) -> dict:
    """One Label Studio import task with the result's boxes as a prediction (percent
    coordinates of the image, as Label Studio stores rectangles)."""
    h, w = result.image.shape[:2]
    det = result.detections
    boxes = []
    for i, (name, box, score) in enumerate(zip(result.names, det.boxes, det.scores)):
        x0, y0 = max(float(box[0]), 0.0), max(float(box[1]), 0.0)
        x1, y1 = min(float(box[2]), w), min(float(box[3]), h)
        boxes.append({
            "id": f"r{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w,
                      "height": 100 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": [name]},
            "score": float(score),
        })
    lowest = float(min(det.scores)) if len(det.scores) else 1.0
    return {"data": {"image": image_url},
            "predictions": [{"model_version": model_version, "score": lowest, "result": boxes}]}


class PredictionWriter:
    """Writes the outputs of a prediction run into ``folder`` (see the module docstring).

    Args:
        folder: the run folder (created on the first write).
        classes: class names of the model; defect_classes: those that count as defects.
        save_images: annotated images and videos; save_json, save_csv, save_xml,
            save_crops: the other outputs; overwrite: replace existing XML annotations.
        line_width: box line width in pixels (None: from the image size).
    """

    def __init__(
        self,
        folder: Path,
        *,
        classes: Sequence[str],
        defect_classes: Sequence[str] = (),
        save_images: bool = True,
        save_json: bool = False,
        save_csv: bool = False,
        save_xml: bool = False,
        save_crops: bool = False,
        overwrite: bool = False,
        line_width: int | None = None,
        save_ls: Path | None = None,
        ls_prefix: str = LS_LOCAL_FILES,
        model_version: str = "",
    ) -> None:
        self.folder = Path(folder)
        self.classes = tuple(classes)
        self.defect_classes = tuple(defect_classes)
        self.save_images, self.save_json, self.save_csv = save_images, save_json, save_csv
        self.save_xml, self.save_crops, self.overwrite = save_xml, save_crops, overwrite
        self.line_width = line_width
        self.save_ls, self.ls_prefix, self.model_version = save_ls, ls_prefix, model_version
        self._ls: list[dict] = []
        self.summary = Summary()
        self._json: list[Detections] = []
        self._csv: list[list[Any]] = []
        self._xml_for: dict[str, str] = {}  # XML path -> the image it was written for
        self._videos: dict[str, _Video] = {}
        self._names: set[str] = set()
        self._written: set[str] = set()
        self._closed = False

    # -- per result

    def add(self, result: Result, source: Source) -> None:
        """Write what ``result`` gives; a frame that failed to read is counted in ``summary.failed``."""
        s = self.summary
        if result.error:
            s.failed.append(result.error)
            return
        if source.kind == "images":
            s.images += 1
        else:
            s.frames += 1
        names = result.names
        s.detections.update(names)
        s.with_detection += bool(names)
        s.with_defect += result.has_defect
        video = source.kind != "images"
        if names:
            if self.save_json:
                self._json.append(result.detections)
            if self.save_csv:
                frame = result.frame.index if video else ""
                for rec in result.records():
                    self._csv.append([csv_cell(result.key), csv_cell(source.name), frame, csv_cell(rec["label"]),
                                      f"{rec['score']:.6f}",
                                      *(f"{v:.2f}" for v in rec["bbox"]), int(rec["defect"])])
            if self.save_crops:
                self._crops(result)
        if self.save_images:
            drawn = result.plot(line_width=self.line_width)
            if video:
                self._video_frame(drawn, result, source)
            else:
                path = self._image_path(result.key)
                write_atomic(path, _encode(drawn, path.suffix.lower()), fsync=False)
        if self.save_xml:
            self._xml(result, video=video)
        if self.save_ls is not None and not video and result.frame.path is not None:
            self._ls.append(label_studio_task(result, ls_image_url(result.frame.path, self.ls_prefix),
                                              self.model_version))

    def _image_path(self, key: str) -> Path:
        """Where the annotated image of ``key`` goes; two sources with an image of the same
        name (``a/x.jpg``, ``b/x.jpg``) get ``x.jpg`` and ``x_2.jpg``, never one over the other."""
        path = self.folder / key
        if path.suffix.lower() not in _IMAGE_WRITE_EXTENSIONS:
            path = path.with_name(path.name + ".jpg")
        candidate, n = path, 2
        while str(candidate) in self._written:
            candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
            n += 1
        self._written.add(str(candidate))
        return candidate

    def _video_frame(self, drawn: np.ndarray, result: Result, source: Source) -> None:
        video = self._videos.get(source.spec)
        if video is None:
            name = source.stem
            while name in self._names:  # two sources with the same stem: conveyor.mp4, conveyor2.mp4
                name += "_"
            self._names.add(name)
            h, w = drawn.shape[:2]
            video = _Video(self.folder / f"{name}.mp4", source.fps or 25.0, (w, h))
            self._videos[source.spec] = video
        video.write(drawn, result.frame.index)

    def _crops(self, result: Result) -> None:
        image = result.image
        h, w = image.shape[:2]
        stem = Path(result.key).stem if result.frame.path is not None else result.key
        for i, (name, box) in enumerate(zip(result.names, result.detections.boxes)):
            x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
            x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            path = self.folder / "crops" / name / f"{stem.replace('/', '_')}_{i}.jpg"
            write_atomic(path, _encode(image[y0:y1, x0:x1], ".jpg"), fsync=False)

    def _xml(self, result: Result, *, video: bool) -> None:
        if video:
            image_path = self.folder / "frames" / f"{result.key}.jpg"
            write_atomic(image_path, _encode(result.image, ".jpg"), fsync=False)
        else:
            image_path = result.frame.path
        xml = image_path.with_suffix(".xml")
        first = self._xml_for.setdefault(str(xml), str(image_path))
        if first != str(image_path):  # x.jpg and x.png in one folder: LabelImg reads x.xml for both
            self.summary.failed.append(
                f"{show(image_path)}: no pre-annotation written: {show(xml.name)} was written for "
                f"{show(Path(first).name)} in this run, and LabelImg pairs an XML with an image by name alone; "
                "rename one of the images")
            return
        if xml.exists() and not self.overwrite:
            self.summary.xml_skipped.append(str(xml))
            return
        try:
            write_voc(voc_annotation(result, image_path=image_path), xml)
        except OSError as exc:
            self.summary.failed.append(f"{show(xml)}: cannot write the annotation ({exc.strerror or exc}); "
                                       "check that the image folder is writable")
            return
        self.summary.xml_written += 1

    # -- per source and at the end

    def end_source(self, source: Source, *, stopped: str | None = None) -> None:
        """Close the source's video (if one is being recorded); count its dropped frames, and
        ``stopped``: why a live source stopped before it was asked to."""
        video = self._videos.pop(source.spec, None)
        if video is not None:
            path = video.close()
            if path is not None:
                self.summary.videos.append(str(path))
        self.summary.dropped += getattr(source, "dropped", 0)
        if stopped:
            self.summary.stopped.append(stopped)

    def close(self, *, seconds: float = 0.0, counting: dict[str, Any] | None = None) -> Summary:
        """Close every open video and write the JSON, CSV and summary files (``counting``: the
        item counts of ``--track``, written under that key). Safe to call twice."""
        if self._closed:
            return self.summary
        self._closed = True
        for spec in list(self._videos):
            video = self._videos.pop(spec)
            path = video.close()
            if path is not None:
                self.summary.videos.append(str(path))
        self.summary.seconds = seconds
        if self.save_json:
            write_predictions(self.folder / "predictions.json", self._json, self.classes)
        if self.save_csv:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(CSV_FIELDS)
            w.writerows(self._csv)
            write_atomic(self.folder / "predictions.csv", buf.getvalue())
        if self.save_ls is not None:
            write_atomic(self.save_ls, json.dumps(self._ls, ensure_ascii=False, indent=1) + "\n")
        if self.summary.seen or self.summary.failed or counting:
            data = self.summary.as_dict(self.classes, self.defect_classes)
            if counting is not None:
                data["counting"] = counting
            write_atomic(self.folder / "summary.json", json.dumps(data, indent=1) + "\n")
        return self.summary


class ItemLog:
    """``events.jsonl``: one JSON line per counted item, written and flushed as it is counted
    (append-only, so a crash or Ctrl-C loses no line already written, and every line is
    whole); with ``stdout``, each line goes to standard output too. With ``save_crops``
    the item's best crop is written first, as ``crops/items/<track id>_<class>.jpg``
    (its path relative to the folder is in the event).

    Use ``on_item`` as :class:`~detect.line.counting.ItemCounter`'s callback.
    """

    def __init__(self, folder: Path, *, save_crops: bool = False, stdout=None, path: Path | None = None) -> None:
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / "events.jsonl"
        self.save_crops = save_crops
        self.stdout = stdout
        self._fh = None
        self.written = 0

    def on_item(self, item, crop: np.ndarray | None) -> None:
        if self.save_crops and crop is not None and crop.size:
            rel = Path("crops") / "items" / f"{item.source_stem}_{item.track_id:06d}_{item.label}.jpg"
            write_atomic(self.folder / rel, _encode(crop, ".jpg"), fsync=False)
            item.crop = rel.as_posix()
        line = json.dumps(item.event(), ensure_ascii=True) + "\n"
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A fresh file: an existing one (allowed by --overwrite) is replaced, never appended
            # to or written through when it is a link.
            if os.path.lexists(self.path) and not self.path.is_dir():
                os.unlink(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self._fh.write(line)
        self._fh.flush()
        if self.stdout is not None:
            self.stdout.write(line)
            self.stdout.flush()
        self.written += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
