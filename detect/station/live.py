"""The live page: what the line is doing, for the people at it.

:class:`LiveStation` is a line listener: the track loop hands it each frame (``on_frame``),
each item's event (``on_item``) and the final summary (``on_close``); a Starlette app in a
background thread serves

* ``/``: the page (``static/live.html``: the annotated frame, counters, defect rates,
  frames/s, decision latency, the last defective items with their crops, the source's health);
* ``/api/summary``: the numbers (``counting`` is ``summary.json``'s object, as of now);
* ``/api/events``: the item events as server-sent events (the same JSON as ``events.jsonl``);
* ``/api/frame.jpg`` the newest annotated frame, ``/api/crop/N.jpg`` a defective item's crop.

The line pays only for what is cheap: a reference to the newest result per frame, and a
summary copy when an item is counted. Drawing and JPEG encoding happen in the server's own
thread, at most :data:`FRAME_RATE` times a second and only while a page is watching; event
streams are bounded (:data:`MAX_STREAMS`; a stream that falls :data:`STREAM_QUEUE` events
behind is closed, the browser reconnects and resumes from its last event id).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from detect.station.server import ServerThread, banner, bind, static_response

log = logging.getLogger(__name__)

__all__ = ["LiveStation", "RECENT_ITEMS", "MAX_STREAMS"]

RECENT_ITEMS = 50  # the "last N items" of the recent defect rate
MAX_STREAMS = 64  # event streams served at once; more get 503 (the page still polls the numbers)
STREAM_QUEUE = 1000  # events kept for streams to catch up
FRAME_RATE = 8.0  # annotated frames encoded per second at most, while watched
DEFECTS_SHOWN = 12
NO_FRAME_SECONDS = 5.0


class LiveStation:
    """The live page's state and server (see the module docstring). ``port`` 0 picks a free one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, linger: float = 0.0) -> None:
        self.sock = bind("--serve", host, port)
        self.host = host
        self.url = banner("live page", self.sock, host).split(": ", 1)[1].split(" ", 1)[0]
        self.banner = banner("live page", self.sock, host)
        self.linger = linger
        self._lock = threading.Lock()
        self._latest = None  # the newest Result (drawn on demand)
        self._frame_jpeg = b""
        self._frame_seq = -1
        self._encoded_seq = -1
        self._watched = 0.0
        self.frames = 0
        self._times: collections.deque[float] = collections.deque(maxlen=60)
        self._latency: collections.deque[float] = collections.deque(maxlen=60)
        self._recent: collections.deque[bool] = collections.deque(maxlen=RECENT_ITEMS)
        self._counting: dict[str, Any] | None = None
        self._defects: collections.deque[dict] = collections.deque(maxlen=DEFECTS_SHOWN)
        self._crops: dict[int, bytes] = {}
        self._crop_seq = 0
        self._events: collections.deque[tuple[int, str]] = collections.deque(maxlen=STREAM_QUEUE)
        self._seq = 0
        self._streams = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_frame = time.monotonic()
        self.started = time.monotonic()
        self.finished: dict | None = None
        self.streams_refused = 0
        self.closing = False
        self._server = ServerThread(self._app(), self.sock)
        log.warning("%s", self.banner)

    # -- the line's side: cheap, never blocks on the server

    def on_frame(self, result, counter) -> None:
        now = time.monotonic()
        if result.error:
            self._errors += 1
            self._last_error = str(result.error)
            return
        self.frames += 1
        self._times.append(now)
        self._last_frame = now
        self._latency.append(result.latency + result.track_seconds)
        self._latest = result
        self._frame_seq += 1
        if result.counted or self._counting is None:
            for item in result.counted:
                self._recent.append(bool(item.defect))
                if item.defect:
                    self._add_defect(item, result.image)
            snapshot = counter.summary()
            with self._lock:
                self._counting = snapshot

    def on_item(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=True)
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, line))

    def on_close(self, summary: dict) -> None:
        with self._lock:
            self.finished = summary
            if summary.get("counting"):
                self._counting = summary["counting"]
        if self.linger > 0:
            log.warning("the source ended; the live page stays up %g s (%s)", self.linger, self.url)
            time.sleep(self.linger)

    def close(self) -> None:
        self.closing = True  # the event streams end themselves before the server stops
        time.sleep(0.3)
        self._server.close()

    def _add_defect(self, item, image: np.ndarray | None) -> None:
        import cv2

        self._crop_seq += 1
        key = self._crop_seq
        jpeg = b""
        if image is not None:
            h, w = image.shape[:2]
            x0, y0, x1, y1 = (int(round(v)) for v in item.box)
            crop = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
            if crop.size:
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
                jpeg = buf.tobytes() if ok else b""
        with self._lock:
            self._crops[key] = jpeg
            self._defects.appendleft({"id": key, "class": item.label, "track_id": item.track_id, "time": item.time,
                                      "frame": item.frame, "score": round(item.best_score, 3),
                                      "crop": f"/api/crop/{key}.jpg" if jpeg else None})
            for old in [k for k in self._crops if k <= key - DEFECTS_SHOWN]:
                del self._crops[old]

    # -- the numbers

    def health(self) -> dict[str, Any]:
        """The source's state in words a shift lead reads."""
        idle = time.monotonic() - self._last_frame
        if self.finished is not None:
            state, words = "ended", "The source has ended; the numbers below are final."
        elif self.frames == 0 and not self._errors:
            state, words = "starting", "Waiting for the first frame."
        elif idle > NO_FRAME_SECONDS:
            state, words = "lost", f"No picture for {idle:.0f} s: the camera is lost or reconnecting."
        elif self._errors:
            state, words = "troubled", f"Running; {self._errors} frame(s) could not be read."
        else:
            state, words = "running", "Running: frames are arriving and being checked."
        return {"state": state, "words": words, "frame_errors": self._errors, "last_error": self._last_error,
                "seconds_since_frame": round(idle, 1)}

    def summary(self) -> dict[str, Any]:
        """What ``/api/summary`` returns."""
        times = list(self._times)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        lat = sorted(self._latency)
        recent = list(self._recent)
        with self._lock:
            counting = json.loads(json.dumps(self._counting)) if self._counting is not None else None
            defects = list(self._defects)
        return {
            "counting": counting, "frames": self.frames, "fps": round(fps, 2),
            "latency_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "recent": {"items": len(recent), "defective": int(sum(recent)),
                       "defect_rate": round(sum(recent) / len(recent), 4) if recent else None, "window": RECENT_ITEMS},
            "source": self.health(), "defects": defects, "finished": self.finished is not None,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    def frame_jpeg(self) -> bytes:
        """The newest annotated frame as JPEG, re-encoded at most FRAME_RATE times a second."""
        import cv2

        now = time.monotonic()
        self._watched = now
        result, seq = self._latest, self._frame_seq
        if result is None or seq == self._encoded_seq or now - getattr(self, "_encoded_at", 0.0) < 1 / FRAME_RATE:
            return self._frame_jpeg
        image = result.plot()
        h, w = image.shape[:2]
        if w > 960:
            image = cv2.resize(image, (960, round(h * 960 / w)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self._frame_jpeg, self._encoded_seq, self._encoded_at = buf.tobytes(), seq, now
        return self._frame_jpeg

    # -- the server

    def _app(self):
        import asyncio

        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
        from starlette.routing import Route
        from starlette.concurrency import run_in_threadpool

        station = self
        frame_lock = asyncio.Lock()

        async def page(request):
            return static_response("live.html")

        async def static(request):
            return static_response(request.path_params["name"])

        async def summary(request):
            return JSONResponse(station.summary())

        async def frame(request):
            async with frame_lock:  # one encoder at a time, however many pages watch
                data = await run_in_threadpool(station.frame_jpeg)
            if not data:
                return PlainTextResponse("no frame yet", status_code=503)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

        async def crop(request):
            with station._lock:
                data = station._crops.get(request.path_params["n"])
            if not data:
                return PlainTextResponse("no such crop (only the last few are kept)", status_code=404)
            return Response(data, media_type="image/jpeg")

        async def events(request):
            if station._streams >= MAX_STREAMS:
                station.streams_refused += 1
                return PlainTextResponse(f"too many event streams open ({MAX_STREAMS}); try again later",
                                         status_code=503)
            try:
                last = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
            except ValueError:
                last = 0
            station._streams += 1

            async def stream():
                nonlocal last
                try:
                    yield "retry: 1000\n\n"
                    while True:
                        with station._lock:
                            new = [(s, e) for s, e in station._events if s > last]
                        for s, e in new:
                            last = s
                            yield f"id: {s}\ndata: {e}\n\n"
                        if station.finished is not None and not new:
                            yield "event: end\ndata: {}\n\n"
                            await asyncio.sleep(1.0)
                        if station.closing or await request.is_disconnected():
                            return
                        await asyncio.sleep(0.25)
                finally:
                    station._streams -= 1

            return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

        return Starlette(routes=[
            Route("/", page), Route("/api/summary", summary), Route("/api/events", events),
            Route("/api/frame.jpg", frame), Route("/api/crop/{n:int}.jpg", crop), Route("/static/{name}", static),
        ])
