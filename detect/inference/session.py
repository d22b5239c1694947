"""A prediction run: sources -> predictor (-> an optional stage such as the line) -> outputs.

:class:`PredictSession` is what ``python -m detect.predict`` hands its sources to once the model
is loaded and the output folder chosen: it reads each source (a reader thread decodes ahead),
runs the predictor (or ``stage``, e.g. :class:`detect.line.session.LineSession` for ``--track``,
which runs the predictor itself), hands every result to the
:class:`~detect.inference.outputs.PredictionWriter`, keeps a progress bar or, for live sources,
a status line every ``status_every`` seconds, and closes everything on the way out (videos
stay playable after Ctrl-C). Messages for the user (a bad input, a stream that stopped, the
live status) go to ``say``, one line each; the caller decides where they are printed.

Torch-free, like the predictor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from detect.common.errors import printable, show
from detect.inference.outputs import PredictionWriter, Summary
from detect.inference.predictor import Predictor, RateMeter, Result
from detect.inference.sources import Frame, Source, prefetch

__all__ = ["FrameStage", "PredictSession", "RunOutcome", "gui_available", "summary_lines"]

log = logging.getLogger(__name__)

WINDOW = "detect.predict"


class FrameStage(Protocol):
    """A stage that runs the predictor itself over a source and adds to its results (the line:
    :class:`detect.line.session.LineSession`)."""

    def run(self, source: Source, frames: Iterable[Frame] | None = None) -> Iterator[Result]: ...

    def status(self) -> str: ...

    def counting(self) -> dict[str, Any]: ...

    def close(self, summary: dict | None = None) -> dict: ...


@dataclass
class RunOutcome:
    """How a run ended: ``summary`` (what the writer counted; None when closing it failed),
    ``counting`` (the stage's summary object), ``interrupted`` (Ctrl-C), ``write_error`` (the
    outputs could not be written)."""

    summary: Summary | None
    counting: dict[str, Any] | None = None
    interrupted: bool = False
    write_error: OSError | None = None


def gui_available() -> bool:
    """Whether this OpenCV can open a window (the headless build cannot)."""
    import cv2

    try:
        cv2.namedWindow(WINDOW)
        return True
    except cv2.error:
        return False


class PredictSession:
    """One prediction run over opened sources (see the module docstring).

    Args:
        predictor: the :class:`~detect.inference.predictor.Predictor`.
        writer: where every result goes.
        stage: runs instead of the predictor over each source (``--track``); its
            ``counting()`` goes into ``summary.json`` and its ``close()`` gets that file's dict.
        say: the user's one-line messages (default: logged as warnings).
        window: show each annotated frame in an OpenCV window (``q`` stops).
        max_frames: stop each video, camera or stream after this many frames.
        status_every: seconds between the status lines of a live source.
        progress: a progress bar for files and videos.
    """

    def __init__(self, predictor: Predictor, writer: PredictionWriter, *, stage: FrameStage | None = None,
                 say: Callable[[str], None] | None = None, window: bool = False, max_frames: int | None = None,
                 status_every: float = 5.0, progress: bool = True) -> None:
        self.predictor, self.writer, self.stage = predictor, writer, stage
        self.say = say or log.warning
        self.window, self.max_frames, self.status_every, self.progress = window, max_frames, status_every, progress

    def run(self, sources: Sequence[Source]) -> RunOutcome:
        """Predict on every source in turn, then close the writer (and the stage). Ctrl-C
        stops the run: what was written so far is kept and closed properly."""
        from tqdm import tqdm

        finite = [s for s in sources if not s.live]
        total = sum(len(s) for s in finite)
        start = time.perf_counter()
        outcome = RunOutcome(summary=None)
        bar = tqdm(total=total or None, unit="img", desc="predict", disable=not self.progress or not finite,
                   dynamic_ncols=True, leave=False)
        try:
            for source in sources:
                if self._source(source, bar):
                    break  # the viewer pressed q
        except KeyboardInterrupt:
            outcome.interrupted = True
        except OSError as exc:  # the output folder is not writable, the disk is full...
            outcome.write_error = exc
        finally:
            bar.close()
            for source in sources:
                source.close()
            if self.window:
                import cv2

                cv2.destroyAllWindows()
        if self.stage is not None:
            outcome.counting = self.stage.counting()
        try:
            outcome.summary = self.writer.close(seconds=time.perf_counter() - start, counting=outcome.counting)
        except OSError as exc:
            outcome.write_error = outcome.write_error or exc
        if self.stage is not None:
            doc = (self.writer.summary.as_dict(self.writer.classes, self.writer.defect_classes)
                   if outcome.summary is not None else {})
            self.stage.close({**doc, "counting": outcome.counting})  # what summary.json holds
        return outcome

    def _source(self, source: Source, bar) -> bool:
        """One source to its end (or ``max_frames``); True when the viewer asked to stop."""
        meter = RateMeter(self.status_every) if source.live else None
        if source.live:
            self.say(f"{source.kind} {show(source.name)}: reading the newest frame continuously; Ctrl-C to stop")
        n, quit_requested = 0, False
        # A reader thread decodes the next image while the model runs (in order; live sources
        # have their own grabber).
        frames = prefetch(source)
        try:
            results = (self.stage.run(source, frames) if self.stage is not None
                       else self.predictor.predict_frames(frames, live=source.live))
            for result in results:
                if self.stage is not None and result.error is None and result.counted:
                    bar.set_postfix_str(self.stage.status(), refresh=False)
                if result.error:
                    self.say(f"error: {printable(result.error)}")
                before = len(self.writer.summary.failed)
                self.writer.add(result, source)
                for message in self.writer.summary.failed[before + bool(result.error):]:  # e.g. an XML not written
                    self.say(f"error: {printable(message)}")
                n += 1
                if meter is not None:
                    line = meter.add(result)
                    if line:
                        items = f"; {show(self.stage.status())}" if self.stage is not None else ""
                        self.say(f"{show(source.name)}: {line}, {getattr(source, 'dropped', 0)} frames dropped{items}")
                else:
                    bar.update(1)
                if self.window and result.image is not None and self._show(result):
                    quit_requested = True
                    break
                if self.max_frames and source.kind != "images" and n >= self.max_frames:
                    break
        finally:
            frames.close()  # stops the reader before the source is closed under it
            source.close()
            reached = quit_requested or (bool(self.max_frames) and n >= self.max_frames)
            stopped = None if reached else getattr(source, "ended", None)
            self.writer.end_source(source, stopped=stopped)
        if stopped:
            self.say(f"error: {printable(stopped)}; the {n} frame(s) until then are kept")
        return quit_requested

    def _show(self, result: Result) -> bool:
        import cv2

        cv2.imshow(WINDOW, cv2.cvtColor(result.plot(), cv2.COLOR_RGB2BGR))
        return cv2.waitKey(1) & 0xFF == ord("q")  # the viewer asked to stop: not an error


def summary_lines(summary: Summary, predictor: Predictor, folder: Path) -> list[str]:
    """What ``detect.predict`` prints at the end of a run."""
    lines, seen = [], []
    if summary.images:
        seen.append(f"{summary.images} image(s)")
    if summary.frames:
        seen.append(f"{summary.frames} frame(s)")
    rate = (f" in {summary.seconds:.1f} s ({summary.seen / summary.seconds:.1f}/s)"
            if summary.seconds > 0 and summary.seen else "")
    lines.append(f"{' and '.join(seen) or 'nothing'} predicted{rate}")
    if summary.seen:
        per_class = ", ".join(f"{c} {summary.detections.get(c, 0)}" for c in predictor.keep)
        lines.append(f"detections: {show(per_class)}")
        defects = show(", ".join(predictor.defect_classes)) or "none defined"
        lines.append(f"with a defect ({defects}): {summary.with_defect} of {summary.seen}; "
                     f"with any detection: {summary.with_detection}")
    if summary.dropped:
        lines.append(f"live frames dropped to stay current: {summary.dropped}")
    if summary.xml_written or summary.xml_skipped:
        lines.append(f"pre-annotation: {summary.xml_written} XML file(s) written")
    if summary.xml_skipped:
        shown = show(", ".join(summary.xml_skipped[:5])) + (" ..." if len(summary.xml_skipped) > 5 else "")
        lines.append(f"skipped {len(summary.xml_skipped)} image(s) that already have an XML annotation "
                     f"(--overwrite replaces them): {shown}")
    if summary.failed or summary.stopped:
        lines.append(f"{len(summary.failed) + len(summary.stopped)} input(s) failed (see the error lines above)")
    if folder.is_dir():
        lines.append(f"results in {show(folder)}")
    return lines
