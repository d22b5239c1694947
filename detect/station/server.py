"""What both pages share: the address option, a socket bound before the work starts (so a
port in use is said at once), uvicorn in a background thread, and the static files served
by name from the package's ``static/`` folder only."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from detect.common.errors import UsageError, show

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".png": "image/png"}
LOCAL = ("127.0.0.1", "localhost", "::1")


def parse_address(option: str, text: str, *, default_port: int) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[v6]:PORT`` -> ``(host, port)``; host 127.0.0.1 by default."""
    text = str(text).strip()
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port) if port else default_port
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UsageError(f"{option} {show(text)}: give a port (0-65535) or HOST:PORT, e.g. {option} 8000 or "
                         f"{option} 0.0.0.0:8000")
    return host, number


def bind(option: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        UsageError: the host does not resolve or the port is taken.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"{option} {show(host)}:{port}: the host does not resolve; give an address of this "
                         "computer, e.g. 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"{option} {show(host)}:{port}: cannot listen there ({exc.strerror or exc}); the port is "
                         "probably in use: pick another one") from None
    sock.setblocking(False)
    return sock


def banner(what: str, sock: socket.socket, host: str) -> str:
    """``live page: http://127.0.0.1:8000/`` (and a warning when reachable from other computers)."""
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    line = f"{what}: http://{shown}:{port}/"
    if host not in LOCAL:
        line += f" (listening on {host}: other computers on the network can open it)"
    return line


class ServerThread:
    """uvicorn serving ``app`` on the bound ``sock`` in a daemon thread."""

    def __init__(self, app, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, limit_concurrency=200)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="station-http",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


def static_response(name: str):
    """The static file ``name`` (a bare file name, no folders) or a 404: nothing outside
    ``static/`` is ever served, links included."""
    from starlette.responses import PlainTextResponse, Response

    path = (STATIC / name).resolve()
    if ("/" in name or "\\" in name or name.startswith(".") or path.parent != STATIC or path.suffix not in TYPES
            or path.is_symlink() or not path.is_file()):
        return PlainTextResponse("not found", status_code=404)
    return Response(path.read_bytes(), media_type=TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
