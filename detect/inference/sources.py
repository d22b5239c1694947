"""Where prediction gets its pictures: image files, folders, globs, lists, videos, cameras, streams.

:func:`open_sources` turns the ``SOURCE`` arguments of ``detect.predict`` into
:class:`Source` objects; iterating one yields :class:`Frame` objects, one per image or
video frame, as they are read (nothing is collected first):

=====================================  ==================  ===========================
``SOURCE``                              kind                how
=====================================  ==================  ===========================
``photo.jpg``                          ``images``          one image file
``lote1/`` (``--recursive``: and below) ``images``          every image in the folder
``'lote1/*.jpg'``, ``'**/*.png'``      ``images``          a glob (quote it)
``list.txt``                           ``images``          one path per line (relative
                                                           to the list's folder)
``conveyor.mp4``                       ``video``           every frame, with OpenCV
``0``                                  ``camera``          camera index ``0``
``rtsp://...``, ``http://...``         ``stream``          a network stream
=====================================  ==================  ===========================

Images, folders, globs, lists and video files are *finite* (their length is known, so a
progress bar can be shown). Cameras and streams are *live*: a grabber thread reads
frames as fast as they come and keeps only the newest one, so prediction always works on
what the camera sees now, never on a growing backlog; frames replaced before they were
taken are counted in :attr:`LiveSource.dropped`.

A source that cannot be used (no such file, an empty folder, a video OpenCV cannot open,
a camera index with no camera) raises :class:`SourceError` naming it and what to do; an
image that does not decode is yielded as a :class:`Frame` with ``error`` set, so the
caller reports it and goes on with the next one.

Frames are ``H x W x 3`` uint8 **RGB** arrays (OpenCV reads BGR; they are converted once
here). Torch-free (OpenCV, numpy).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from detect.common.errors import DetectError, show
from detect.data.images import ImageError, read_image
from detect.data.layout import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

__all__ = [
    "VIDEO_EXTENSIONS",
    "Frame",
    "ImageSource",
    "LiveSource",
    "Source",
    "SourceError",
    "VideoSource",
    "open_source",
    "open_sources",
    "prefetch",
    "redact",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv", ".ts", ".mjpeg")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
LIST_EXTENSIONS = (".txt", ".lst")


class SourceError(DetectError):
    """A source that cannot be read: the message names it and what to do (exit 1 at the end)."""


@dataclass
class Frame:
    """One picture to predict on.

    Attributes:
        image: ``H x W x 3`` uint8 RGB, or None when ``error`` is set.
        key: the name outputs use: an image's file name (its path relative to the folder
            given when two images share a name), or ``<video stem>_<frame index:06d>``.
        source: the SOURCE argument it came from (a stream's password replaced by ``***``).
        path: the image file, or None for video and camera frames.
        index: 0-based frame number within a video or live source (0 for an image file).
        captured: ``time.perf_counter()`` when the frame was read, for latency.
        error: why the image could not be read (then ``image`` is None).
    """

    image: np.ndarray | None
    key: str
    source: str
    path: Path | None = None
    index: int = 0
    captured: float = 0.0
    error: str | None = None


class Source:
    """A finite or live sequence of frames; iterate it for :class:`Frame` objects.

    Attributes:
        spec: the SOURCE argument as given.
        kind: ``"images"``, ``"video"``, ``"camera"`` or ``"stream"``.
        live: frames come from a camera or stream (newest frame only, drops counted).
        fps: frames per second of a video, camera or stream (None for images, or unknown).
    """

    spec: str
    kind: str
    live: bool = False
    fps: float | None = None

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise TypeError(f"a {self.kind} source has no length")

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds (a capture device, a thread); iterating again is not possible."""

    @property
    def name(self) -> str:
        """The SOURCE for messages and files: a stream's password replaced by ``***``."""
        return redact(self.spec)

    @property
    def stem(self) -> str:
        """A file-name-safe name for outputs about this source as a whole (an annotated video)."""
        return _safe_name(self.spec)


# FFmpeg's own messages ("moov atom not found", "Stream ends prematurely") would come on
# top of our one line per failed source. OpenCV reads this once, when FFmpeg is first used
# in the process, so it is set on import (a user's own setting is kept).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", re.IGNORECASE)


def redact(spec: str) -> str:
    """``rtsp://user:secret@cam/stream`` -> ``rtsp://user:***@cam/stream``: messages, logs and
    output files never show a camera's password."""
    return _CREDENTIALS.sub(r"\1:***@", spec)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own console messages while opening a capture: a source that fails
    gets one line from us naming it and saying what to do."""
    logging_ = cv2.utils.logging
    old = logging_.getLogLevel()
    logging_.setLogLevel(logging_.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_.setLogLevel(old)


def _safe_name(spec: str) -> str:
    if spec.isdigit():
        return f"camera{spec}"
    for scheme in STREAM_SCHEMES:
        if spec.lower().startswith(scheme):
            rest = spec[len(scheme):].split("@")[-1]  # leave credentials out of file names
            name = "".join(c if c.isalnum() or c in "-." else "_" for c in rest).strip("_.")
            return f"stream_{name[:60]}" if name else "stream"
    return Path(spec).stem or "source"


class ImageSource(Source):
    """Image files in a fixed order; keys are file names, made unique by the relative path."""

    kind = "images"

    def __init__(self, spec: str, paths: Sequence[Path], *, root: Path | None = None) -> None:
        self.spec = spec
        self.paths = list(paths)
        self.root = root
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def key_of(self, path: Path) -> str:
        """The file name, or the path relative to the folder given when the name was used already."""
        key = path.name
        if key in self._seen and self.root is not None:
            key = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else path.as_posix()
        self._seen.add(key)
        return key

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            key = self.key_of(path)
            try:
                image = read_image(path)
            except (ImageError, OSError) as exc:
                error = str(exc) if isinstance(exc, ImageError) else f"{show(path)}: cannot be read ({show(exc.strerror or exc)})"
                yield Frame(None, key, self.name, path=path, error=error)
                continue
            yield Frame(image, key, self.name, path=path, captured=time.perf_counter())


class VideoSource(Source):
    """A video file, every frame in order."""

    kind = "video"

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        with _quiet_opencv():
            self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(
                f"{show(path)}: cannot be opened as a video (unknown container or codec, or a damaged file); "
                "convert it to MP4 (H.264) or AVI (MJPEG), e.g. with ffmpeg"
            )
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        self.frame_count = max(0, int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        if self.frame_count == 0:  # no frame announced: see whether one can be read at all
            ok, _ = self.capture.read()
            self.capture.release()
            if not ok:
                raise SourceError(f"{show(path)}: the video holds no frame (an empty or unfinished recording); "
                                  "record it again or leave it out")
            with _quiet_opencv():
                self.capture = cv2.VideoCapture(str(path))

    def __len__(self) -> int:
        return self.frame_count

    @property
    def stem(self) -> str:
        return self.path.stem

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        try:
            while True:
                ok, bgr = self.capture.read()
                if not ok:
                    break
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.path.stem}_{index:06d}", self.name,
                            index=index, captured=time.perf_counter())
                index += 1
        finally:
            self.close()
        if self.frame_count and index < self.frame_count - 1:
            log.warning("%s: the video ends after %d of the %d frames its header announces (a truncated file?)",
                        self.path, index, self.frame_count)

    def close(self) -> None:
        self.capture.release()


class LiveSource(Source):
    """A camera or a network stream, read by a grabber thread that keeps only the newest frame.

    Iterating yields the newest frame each time the consumer is ready for one; frames the
    grabber replaced before the consumer took them are counted in :attr:`dropped`. When
    the camera or stream stops delivering (unplugged, connection lost, end of stream),
    iteration ends and :attr:`ended` says why; what was yielded until then is kept by the
    caller.
    """

    def __init__(self, spec: str, target: int | str, *, kind: str, open_timeout: float = 10.0) -> None:
        self.spec = spec
        self.kind = kind
        self.live = True
        self.target = target
        self.read = 0  # frames read from the device
        self.taken = 0  # frames handed to the consumer
        self.dropped = 0  # frames replaced by a newer one before being taken
        self.ended: str | None = None
        self._latest: tuple[np.ndarray, int, float] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_lock = threading.Lock()
        self._released = False
        what = f"camera {target}" if kind == "camera" else f"stream {show(redact(spec))}"
        self._what = what
        if kind == "stream":
            # FFmpeg gives up on a silent stream after this long (microseconds) instead of hanging.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"timeout;{int(open_timeout * 1e6)}")
        with _quiet_opencv():
            self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            if kind == "camera":
                raise SourceError(
                    f"camera {show(target)}: no camera answers at this index; check that it is plugged in and "
                    "not used by another program, and try another index (0, 1, ...)"
                )
            raise SourceError(
                f"stream {show(redact(spec))}: cannot be opened (wrong address, the camera is off, or the network "
                "blocks it); check the URL in VLC or ffplay"
            )
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None

    def _grab(self) -> None:
        try:
            self._grab_frames()
        finally:
            if self._stop.is_set():  # close() left the capture to us: we were inside read()
                self._release()

    def _grab_frames(self) -> None:
        while not self._stop.is_set():
            ok, bgr = self.capture.read()
            now = time.perf_counter()
            with self._cond:
                if not ok:
                    if self._stop.is_set():  # closed by us (Ctrl-C, --max-frames): not a failure
                        return
                    self.ended = (
                        f"{self._what} stopped delivering frames after {self.read} frame(s) "
                        "(disconnected, or the stream ended)"
                    )
                    self._cond.notify_all()
                    return
                if self._latest is not None:
                    self.dropped += 1
                self._latest = (bgr, self.read, now)
                self.read += 1
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        self._thread = threading.Thread(target=self._grab, name=f"grab-{self.stem}", daemon=True)
        self._thread.start()
        try:
            while True:
                with self._cond:
                    # A timeout, so that Ctrl-C reaches the main thread while it waits.
                    while self._latest is None and self.ended is None:
                        self._cond.wait(0.1)
                    if self._latest is None:
                        return
                    bgr, index, captured = self._latest
                    self._latest = None
                self.taken += 1
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.stem}_{index:06d}", self.name,
                            index=index, captured=captured)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the grabber and release the capture. Releasing it while the grabber is still
        inside ``read()`` (a stalled stream) crashes OpenCV's FFmpeg backend with a
        segmentation fault, so then the grabber releases it itself when ``read()`` returns
        (FFmpeg's timeout), and this returns at once: Ctrl-C still ends the run cleanly."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
            if thread.is_alive():
                log.info("%s: the grabber is still waiting for a frame; it releases the capture when that returns",
                         self._what)
                return
        self._release()

    def _release(self) -> None:
        with self._release_lock:  # once, never from two threads at the same time
            if not self._released:
                self._released = True
                self.capture.release()


def _once(paths) -> list[Path]:
    """``paths`` sorted, each file once: a folder link that loops back (``dir/loop -> ..``)
    would otherwise give one image under ~40 names."""
    seen: set[str] = set()
    out = []
    for p in sorted(paths):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def _images_in(folder: Path, *, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return _once(
        p for p in folder.glob(pattern)
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith("._")
    )


def _list_file(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{show(path)}: cannot be read as a list of image paths ({show(exc)}); "
                          "write one path per line, as UTF-8 text") from None
    paths, missing = [], []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        p = Path(text).expanduser()
        if not p.is_absolute() and ((path.parent / p).exists() or not p.exists()):
            p = path.parent / p  # relative to the list's folder; to the working folder only as a fallback
        if p.is_file():
            paths.append(p)
        else:
            missing.append(f"line {n}: {text}")
    if missing:
        log.warning("%s: %d listed path(s) do not exist and are skipped (first: %s)", path, len(missing), missing[0])
    if not paths:
        raise SourceError(f"{show(path)}: lists no existing image file; write one image path per line "
                          "(relative paths are taken from the list's folder)")
    return paths


def open_source(spec: str, *, recursive: bool = False) -> Source:
    """The :class:`Source` a SOURCE argument names (see the module docstring).

    Raises:
        SourceError: it names nothing usable; the message says what to do.
    """
    text = spec.strip()
    if text.isdigit():
        return LiveSource(spec, int(text), kind="camera")
    if text.lower().startswith(STREAM_SCHEMES):
        return LiveSource(spec, text, kind="stream")
    path = Path(text).expanduser()
    if path.is_dir():
        images = _images_in(path, recursive=recursive)
        if not images:
            below = not recursive and any(_images_in(path, recursive=True))
            hint = ("it has images in sub-folders: add --recursive" if below
                    else f"put images ({', '.join(IMAGE_EXTENSIONS)}) in it or name another folder")
            raise SourceError(f"{show(path)}: folder holds no image; {hint}")
        return ImageSource(spec, images, root=path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return ImageSource(spec, [path], root=path.parent)
        if suffix in VIDEO_EXTENSIONS:
            return VideoSource(spec, path)
        if suffix in LIST_EXTENSIONS:
            return ImageSource(spec, _list_file(path), root=path.parent)
        raise SourceError(
            f"{show(path)}: not an image ({', '.join(IMAGE_EXTENSIONS)}), a video ({', '.join(VIDEO_EXTENSIONS[:5])}, ...) "
            "or a .txt list of image paths; rename it with the right extension"
        )
    if any(c in text for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        images = _once(p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise SourceError(f"{show(spec)}: the pattern matches no image file; check it (quote it so the shell "
                              "leaves it alone; '**' needs --recursive semantics and matches sub-folders)")
        return ImageSource(spec, images, root=Path(os.path.commonpath([str(p.parent) for p in images])))
    dash = "; use -- before sources that start with - (-- -x.jpg)" if text.startswith("-") else ""
    raise SourceError(f"{show(spec)}: no such file or folder (nor a camera index or a stream URL){dash}")


def open_sources(specs: Sequence[str], *, recursive: bool = False) -> tuple[list[Source], list[str]]:
    """Open every SOURCE; returns the usable sources and one error line per unusable one."""
    sources, errors = [], []
    for spec in specs:
        try:
            sources.append(open_source(spec, recursive=recursive))
        except SourceError as exc:
            errors.append(str(exc))
    return sources, errors


_DONE = object()


def prefetch(frames: Iterator[Frame] | Source, depth: int = 2) -> Iterator[Frame]:
    """The frames of a finite source, decoded ``depth`` ahead by a reader thread, in order.

    While the model runs on one frame (onnxruntime and OpenCV release the GIL), the next
    image is read and decoded, so ``detect.predict`` end to end approaches the model's own
    rate. The order is kept (one thread, one FIFO queue). When the consumer stops early
    (``break``, an exception, Ctrl-C in the main thread), closing this generator stops the
    reader and waits for it to finish the frame in hand, so the caller may then close the
    source safely (a capture is never released under a ``read()``). An exception in the
    reader is raised here, at the position it happened. Live sources have their own grabber
    thread: pass them through unchanged.
    """
    if getattr(frames, "live", False):
        yield from frames
        return
    import queue

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
            return
        put(_DONE)

    thread = threading.Thread(target=reader, name="detect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "error":
                raise item[1]
            yield item
    finally:
        stop.set()
        thread.join()
