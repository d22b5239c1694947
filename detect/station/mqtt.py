"""MQTT for the machines: each item's event on ``TOPIC`` (QoS 1, the JSON line of
``events.jsonl``) and a retained status on ``TOPIC/status`` (``running``, the counts, the
last error), whose last will is ``offline``.

A broker that goes away stops nothing: events wait in a bounded buffer (:data:`BUFFER`) until
the broker acknowledges them and are sent again after each reconnect (QoS 1 is "at least
once": a subscriber may see an event twice across a reconnect, never lose one); past the
bound the oldest are dropped and counted (``dropped`` in the status). A broker unreachable at
the start is said once, and retried (1-30 s apart) while the line runs. paho-mqtt.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.parse

from detect.common.errors import UsageError, show

log = logging.getLogger(__name__)

__all__ = ["BUFFER", "MqttPublisher", "parse_mqtt_url"]

BUFFER = 10_000  # events kept unacknowledged while the broker is away
STATUS_EVERY = 1.0  # seconds between retained status updates (and on each item)


def parse_mqtt_url(text: str) -> tuple[str, int, str]:
    """``mqtt://HOST[:PORT]/TOPIC`` -> ``(host, port, topic)``; port 1883 by default.

    Raises:
        UsageError: another scheme, no host, no topic, a bad port, or wildcards in the topic.
    """
    hint = "give mqtt://HOST[:PORT]/TOPIC, e.g. mqtt://localhost:1883/line1/items"
    try:
        u = urllib.parse.urlsplit(text)
        port = u.port or 1883
    except ValueError:
        raise UsageError(f"--mqtt {show(text)}: malformed URL; {hint}") from None
    topic = u.path.lstrip("/")
    if u.scheme != "mqtt" or not u.hostname or not topic or any(c in text for c in "#+?\0"):
        raise UsageError(f"--mqtt {show(text)}: malformed URL; {hint}")
    return u.hostname, port, topic


class MqttPublisher:
    """A line listener publishing to an MQTT broker (see the module docstring)."""

    def __init__(self, host: str, port: int, topic: str, *, buffer: int = BUFFER, client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port, self.topic = host, port, topic
        self.status_topic = f"{topic}/status"
        self.buffer = buffer
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[int, bytes] = collections.OrderedDict()  # seq -> payload, until acked
        self._mids: dict[int, int] = {}  # paho message id -> seq
        self._acks: collections.deque[int] = collections.deque()  # acknowledged ids, from paho's thread
        self._seq = 0
        self.published = self.acked = self.dropped = 0
        self.connected = self._ever_connected = False
        self._said_unreachable = False
        self._last_error: str | None = None
        self._counts: dict | None = None
        self._status_at = 0.0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  protocol=mqtt.MQTTv311)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self.client.connect_async(host, port, keepalive=15)
        self.client.loop_start()
        self._started = time.monotonic()
        timer = threading.Timer(3.0, self._check_started)
        timer.daemon = True
        timer.start()

    # -- the line's side

    def on_frame(self, result, counter) -> None:
        if result.error:
            self._last_error = str(result.error)
        if result.counted or time.monotonic() - self._status_at > STATUS_EVERY:
            self._counts = {"items": counter.items, "defective": counter.defective, "per_class": dict(counter.counts)}
            self._status_at = time.monotonic()
            self._status("running")

    def on_item(self, event: dict) -> None:
        payload = json.dumps(event, ensure_ascii=True).encode()
        with self._lock:
            self._drain()
            self._seq += 1
            self._pending[self._seq] = payload
            while len(self._pending) > self.buffer:
                self._pending.popitem(last=False)
                self.dropped += 1
            if self.connected:
                self._send(self._seq, payload)

    def on_close(self, summary: dict) -> None:
        counting = summary.get("counting") or {}
        if counting:
            self._counts = {k: counting.get(k) for k in ("items", "defective", "per_class")}
        self._status("stopped")

    def close(self, wait: float = 5.0) -> None:
        """Wait up to ``wait`` s for the broker to acknowledge what is pending, then disconnect."""
        end = time.monotonic() + wait
        while self.pending() and time.monotonic() < end and self.connected:
            time.sleep(0.05)
        if self.pending():
            log.warning("MQTT: %d event(s) not acknowledged by %s:%d at the end", self.pending(), self.host, self.port)
        self.client.disconnect()
        self.client.loop_stop()

    def pending(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._lock:
            self._drain()
            return len(self._pending)

    def _drain(self) -> None:  # under self._lock
        while self._acks:
            seq = self._mids.pop(self._acks.popleft(), None)
            if seq is not None and self._pending.pop(seq, None) is not None:
                self.acked += 1

    # -- paho's side (its network thread)

    def _send(self, seq: int, payload: bytes) -> None:
        info = self.client.publish(self.topic, payload, qos=1)
        if info.rc == 0:
            self._mids[info.mid] = seq
            self.published += 1

    def _status(self, state: str) -> None:
        doc = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(self._counts or {}),
               "pending": len(self._pending), "dropped": self.dropped, "last_error": self._last_error}
        if self.connected:
            self.client.publish(self.status_topic, json.dumps(doc).encode(), qos=1, retain=True)

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            self._on_connect_fail(client, userdata)
            return
        if self._said_unreachable:
            log.warning("MQTT: connected to %s:%d", self.host, self.port)
        with self._lock:
            self.connected = self._ever_connected = True
            self._drain()
            self._mids.clear()
            for seq, payload in list(self._pending.items()):  # all not acknowledged, in order
                self._send(seq, payload)
        self._status("running")

    def _on_disconnect(self, client, userdata, flags, reason, properties=None) -> None:
        with self._lock:
            self.connected = False
        self._last_error = f"broker disconnected ({reason})"

    def _on_publish(self, client, userdata, mid, reason=None, properties=None) -> None:
        # paho holds its message lock here, and the line may hold ours while publishing: no lock taken
        self._acks.append(mid)

    def _on_connect_fail(self, client, userdata) -> None:
        self._last_error = f"cannot reach the broker {self.host}:{self.port}"
        self._say_unreachable()

    def _check_started(self) -> None:
        if not self._ever_connected:
            self._say_unreachable()

    def _say_unreachable(self) -> None:
        if not self._said_unreachable:
            self._said_unreachable = True
            log.warning("MQTT: cannot reach the broker %s:%d; the line goes on, events are kept (up to %d) and sent "
                        "when it answers", self.host, self.port, self.buffer)
