"""The audit's review page: a person judges the likely label mistakes one at a time.

``python -m detect.audit --data DIR --weights W --review [[HOST:]PORT]`` serves, after the
audit, a page showing one finding at a time: the image, the annotation's box (yellow) and the
model's (cyan, dashed), the finding's reason, and Accept (``a``) / Reject (``r``) / Skip
(``s``). An accepted correction is written into the XML by the checker's safe writer
(:func:`detect.checks.fixes.apply_fixes`: ``x.xml.bak`` kept, never through a link, never
outside the dataset); a file that changed on disk since it was shown is refused and shown
again as it is now. Decisions are kept in ``review.json`` in the audit's ``--out`` folder as
they are made: closing the page loses nothing, and a later audit does not show again what
was rejected (or accepted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from detect.common.errors import UsageError
from detect.common.files import read_regular, write_atomic
from detect.station.server import ServerThread, banner, bind, parse_address, static_response

log = logging.getLogger(__name__)

__all__ = ["Review", "finding_key", "start_review"]


def finding_key(f, root: Path) -> str:
    """A finding's identity across audits: file, kind, classes and boxes (rounded to a pixel)."""
    try:
        rel = f.record.xml.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(f.record.xml.resolve())
    rnd = lambda b: [round(v) for v in b] if b else None  # noqa: E731
    text = json.dumps([rel, f.kind, f.name, rnd(f.box), f.model_name, rnd(f.model_box)])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Review:
    """The review's state (the findings, the decisions on disk) and its server."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8001, *, state: Path) -> None:
        self.sock = bind("--review", host, port)
        self.banner = banner("review page", self.sock, host)
        self.url = self.banner.split(": ", 1)[1].split(" ", 1)[0]
        self.state_path = Path(state)
        self._lock = threading.Lock()
        self.findings: list = []
        self.queue: list[str] = []
        self.by_key: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}
        self.root = Path(".")
        self.decisions: dict[str, str] = {}
        self.notice: str | None = None
        self._server: ServerThread | None = None

    # -- state

    def load(self, findings: Sequence, root: Path) -> int:
        """Take the audit's findings, leaving out those decided in an earlier review; returns how many remain."""
        self.root = Path(root)
        doc = {}
        if self.state_path.is_file():
            try:
                doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s: unreadable; the review starts afresh (the file is kept as it is)", self.state_path)
        self._doc = doc if isinstance(doc, dict) else {}
        self.decisions = dict(self._doc.get(str(self.root.resolve()), {}))
        for f in findings:
            key = finding_key(f, self.root)
            if key not in self.by_key:
                self.by_key[key] = f
                if key not in self.decisions:
                    self.queue.append(key)
        self.total = len(self.by_key)
        return len(self.queue)

    def _save(self) -> None:
        self._doc[str(self.root.resolve())] = self.decisions
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_path, json.dumps(self._doc, indent=1) + "\n")

    def current(self) -> dict[str, Any]:
        """What the page shows now (and the token of the XML as it is now)."""
        with self._lock:
            done = sum(1 for v in self.decisions.values() if v in ("accepted", "rejected") and v)
            base = {"total": self.total, "decided": done, "remaining": len(self.queue),
                    "accepted": sum(v == "accepted" for v in self.decisions.values()),
                    "rejected": sum(v == "rejected" for v in self.decisions.values()), "notice": self.notice}
            if not self.queue:
                return {**base, "finding": None}
            key = self.queue[0]
            f = self.by_key[key]
            try:
                data = read_regular(f.record.xml)
            except OSError as exc:
                data = b""
                base["notice"] = f"{f.record.xml.name}: cannot read it ({exc.strerror or exc})"
            self.tokens[key] = hashlib.sha256(data).hexdigest()
            width, height = f.record.annotation.width, f.record.annotation.height
            return {**base, "finding": {
                "id": key, "kind": f.kind, "code": f.code, "message": f.message, "xml": f.record.xml.name,
                "line": f.line, "image": f"/api/image/{key}", "width": width, "height": height,
                "box": list(f.box) if f.box else None, "name": f.name, "model_box": list(f.model_box) if f.model_box else None,
                "model_name": f.model_name, "score": f.score, "confidence": round(f.confidence, 3),
                "token": self.tokens[key]}}

    def decide(self, key: str, decision: str, token: str) -> tuple[int, str]:
        """Apply ``accept``/``reject``/``skip`` to finding ``key``; returns (HTTP status, message)."""
        with self._lock:
            self.notice = None
            if not self.queue or self.queue[0] != key:
                return 409, "that finding is no longer the one shown; here is the current one"
            f = self.by_key[key]
            if decision == "skip":
                self.queue.append(self.queue.pop(0))
                return 200, "skipped"
            if decision == "reject":
                self.decisions[key] = "rejected"
                self.queue.pop(0)
                self._save()
                return 200, "rejected"
            if decision != "accept":
                return 400, "decision must be accept, reject or skip"
            message = self._accept(f, token)
            if message:
                self.notice = message
                return 409, message
            self.decisions[key] = "accepted"
            self.queue.pop(0)
            self._save()
            return 200, f"written to {f.record.xml.name} (the file before is kept beside it as .bak)"

    def _accept(self, f, token: str) -> str | None:
        from detect.checks.fixes import FilePlan, apply_fixes
        from detect.checks.label_audit import corrected_annotation
        from detect.data.voc import VocError, annotation_to_xml, parse_voc_bytes

        xml = f.record.xml
        try:
            before = read_regular(xml)
        except OSError as exc:
            return f"{xml.name}: not written: cannot read it ({exc.strerror or exc})"
        if hashlib.sha256(before).hexdigest() != token:
            return f"{xml.name} changed on disk since it was shown: nothing written; here it is as it is now, decide again"
        try:
            ann = parse_voc_bytes(before, source=xml)
        except VocError as exc:
            return f"{xml.name}: not written: {exc}"
        if f.kind != "missing":  # find the annotated object as it is in the file now
            same = [o for o in ann.objects if o.name == f.name and _iou(tuple(o.box), f.box) > 0.9]
            if not same:
                return f"{xml.name}: the annotated {f.name} box is no longer in the file as it was; nothing written"
            f = dataclasses.replace(f, index=same[0].index, line=same[0].line)
        record = dataclasses.replace(f.record, annotation=ann)
        after = annotation_to_xml(corrected_annotation(record, [f]))
        done = apply_fixes([FilePlan(xml, before, after, [])], root=self.root)
        if done.refused:
            return str(done.refused[0])
        return None

    def image(self, key: str) -> bytes | None:
        import cv2

        from detect.data.images import read_image

        f = self.by_key.get(key)
        if f is None:
            return None
        rgb = read_image(f.record.image, exif=getattr(f.record, "exif", "apply"))
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return buf.tobytes() if ok else None

    # -- the server

    def start(self) -> None:
        self._server = ServerThread(self._app(), self.sock)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self.sock.close()

    def serve(self, findings: Sequence, root: Path) -> int:
        """Serve the review of ``findings`` until Ctrl-C; returns how many were left to judge."""
        left = self.load(findings, root)
        self.start()
        log.warning("%s (%d finding(s) to judge, %d decided in earlier reviews); Ctrl-C to stop",
                    self.banner, left, self.total - left)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()
        return len(self.queue)

    def _app(self):
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route

        review = self

        async def page(request):
            return static_response("review.html")

        async def static(request):
            return static_response(request.path_params["name"])

        async def current(request):
            return JSONResponse(await run_in_threadpool(review.current))

        async def image(request):
            data = await run_in_threadpool(review.image, request.path_params["key"])
            if data is None:
                return PlainTextResponse("no such finding", status_code=404)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

        async def decide(request):
            try:
                body = await request.json()
                args = (str(body["id"]), str(body["decision"]), str(body.get("token", "")))
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"message": "send JSON {id, decision, token}"}, status_code=400)
            status, message = await run_in_threadpool(review.decide, *args)
            return JSONResponse({"message": message}, status_code=status)

        return Starlette(routes=[Route("/", page), Route("/static/{name}", static), Route("/api/current", current),
                                 Route("/api/image/{key}", image), Route("/api/decide", decide, methods=["POST"])])


def start_review(args) -> Review | None:
    """The review server ``--review`` asks for, its port bound (not serving yet), or None."""
    if getattr(args, "review", None) is None:
        return None
    if getattr(args, "select", None) or getattr(args, "format", "text") != "text":
        raise UsageError("--review judges an audit's findings: use it with --data and the text --format")
    from detect.station import need_extra

    host, port = parse_address("--review", args.review, default_port=8001)
    need_extra("--review", "starlette")
    need_extra("--review", "uvicorn")
    return Review(host, port, state=Path(args.out) / "review.json")
