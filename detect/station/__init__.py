"""The line station: a live page for people (:mod:`detect.station.live`), MQTT for machines
(:mod:`detect.station.mqtt`) and a review page for the label audit (:mod:`detect.station.review`).

Each live consumer is a line listener (``on_frame(result, counter)``, ``on_item(event)``,
``on_close(summary)``); none raises into the line or blocks it. The commands add the options
with :func:`add_station_options` / :func:`add_review_option` and start the consumers with
:func:`start_listeners` before the model loads, so a port in use or a bad URL fails at once.
Starlette, uvicorn and paho-mqtt come with ``pip install -e ".[line]"``. Torch-free.
"""

from __future__ import annotations

import logging
from typing import Any

from detect.common.errors import UsageError

__all__ = ["Listeners", "add_review_option", "add_station_options", "need_extra", "start_listeners"]

log = logging.getLogger(__name__)
EXTRA = 'pip install -e ".[line]"'


def need_extra(option: str, module: str) -> None:
    """Import ``module`` or raise the one-line usage error naming the install command."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{option} needs {module.split('.')[0]}, which is not installed: {EXTRA}") from None


def add_station_options(parser) -> None:
    """``--serve [HOST:]PORT``, ``--serve-wait S`` and ``--mqtt URL`` (with ``--track``)."""
    from detect.common.options import Number

    g = parser.add_argument_group("the line station (--track; needs pip install -e \".[line]\"; docs/line.md)")
    g.add_argument("--serve", metavar="[HOST:]PORT",
                   help="serve the live page at http://HOST:PORT/ (default host 127.0.0.1: this computer only)")
    g.add_argument("--serve-wait", type=Number(float, 0), default=0.0, metavar="S",
                   help="keep the page up S seconds after the source ends (default 0)")
    g.add_argument("--mqtt", metavar="mqtt://HOST[:PORT]/TOPIC",
                   help="publish each item's event on TOPIC (QoS 1) and a retained status on TOPIC/status")


class Listeners:
    """The started consumers (``listeners``: each a line listener, handed to
    :class:`~detect.line.session.LineSession`, which keeps a failing one from the line), and
    their one ``close``."""

    def __init__(self, listeners: list[Any]) -> None:
        self.listeners = list(listeners)

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def close(self) -> None:
        """Stop every consumer (the page's server, the broker connection); safe to call twice."""
        while self.listeners:
            x = self.listeners.pop()
            try:
                x.close()
            except Exception as exc:  # closing one must not keep the others open
                log.warning("%s did not close cleanly: %s", type(x).__name__, exc)


def start_listeners(args) -> Listeners:
    """The consumers ``args`` ask for (``--serve``, ``--mqtt``), started: the page's port is
    bound and the broker connection begun. Raises :class:`UsageError` for a port in use, a
    host that does not resolve, a malformed URL or a missing extra."""
    wanted = [o for o, v in (("--serve", getattr(args, "serve", None)), ("--mqtt", getattr(args, "mqtt", None))) if v]
    if wanted and not getattr(args, "track", False):
        raise UsageError(f"{', '.join(wanted)} only apply with --track")
    out: list[Any] = []
    if getattr(args, "mqtt", None):
        from detect.station.mqtt import MqttPublisher, parse_mqtt_url

        target = parse_mqtt_url(args.mqtt)
        need_extra("--mqtt", "paho.mqtt.client")
        out.append(MqttPublisher(*target))
    if getattr(args, "serve", None):
        from detect.station.server import parse_address

        host, port = parse_address("--serve", args.serve, default_port=8000)
        need_extra("--serve", "starlette")
        need_extra("--serve", "uvicorn")
        from detect.station.live import LiveStation

        out.insert(0, LiveStation(host, port, linger=getattr(args, "serve_wait", 0.0)))
    return Listeners(out)


def add_review_option(parser) -> None:
    """``--review [[HOST:]PORT]`` for the audit."""
    parser.add_argument("--review", nargs="?", const="8001", metavar="[HOST:]PORT",
                        help="after the audit, judge the findings one by one in the browser at http://HOST:PORT/ "
                             "(default 127.0.0.1:8001); accepted ones are written to the XML (a .bak is kept)")
