"""MQTT for the machines (``--mqtt mqtt://HOST:PORT/TOPIC``) against a real mosquitto started
on a free port: every event arrives as the JSON line of events.jsonl, the status is retained
with a last will of ``offline``, a broker restart mid-run loses no event, a broker that is away
at the start is said once and the events wait (bounded, the dropped ones counted), and a
malformed URL is one line (exit 2)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt.client", reason='paho-mqtt is not installed: pip install -e ".[line]"')
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
if not MOSQUITTO:
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)

import paho.mqtt.client as mqtt  # noqa: E402

from conftest import free_port, make_devkit, make_tiny_checkpoint  # noqa: E402
from detect.demo.conveyor import write_conveyor  # noqa: E402
from detect.predict import main  # noqa: E402
from detect.station.mqtt import MqttPublisher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def wait_for(check, timeout: float = 30.0, what: str = "the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Broker:
    """A real mosquitto on 127.0.0.1:port, persistent (subscribers' sessions survive a restart)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # user: as root, mosquitto would switch to its own user, who may not write the persistence file
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nlog_dest none\nuser {getpass.getuser()}\n")
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistent sessions
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber collecting the messages of ``topics``."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-subscriber") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.reconnect_delay_set(0.2, 1)
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p=None: [c.subscribe(t, qos=1) for t in topics]
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def _message(self, client, userdata, m) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload, m.retain))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_predict_publishes_every_event_and_a_retained_status(broker, tmp_path) -> None:
    data = make_devkit(tmp_path / "data", n=6)
    pt = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data)
    write_conveyor(tmp_path / "conv", 4, speed=8.0, seed=4)
    sub = Subscriber(broker.port, ["line1/items"])
    try:
        code = main(["--weights", str(pt), str(tmp_path / "conv" / "conveyor.mp4"), "--track", "--out",
                     str(tmp_path / "out"), "--name", "r", "--no-progress",
                     "--mqtt", f"mqtt://127.0.0.1:{broker.port}/line1/items"])
        assert code == 0
        lines = (tmp_path / "out" / "r" / "events.jsonl").read_text().splitlines()
        assert lines
        wait_for(lambda: len(sub.on("line1/items")) >= len(lines), 10, "the events")
        assert [json.loads(p) for p in sub.on("line1/items")] == [json.loads(x) for x in lines]
    finally:
        sub.close()
    late = Subscriber(broker.port, ["line1/items/status"], client_id="late")  # retained: seen by a late subscriber
    try:
        status = json.loads(wait_for(lambda: late.on("line1/items/status"), 10, "the retained status")[0])
        counting = json.loads((tmp_path / "out" / "r" / "summary.json").read_text())["counting"]
        assert status["state"] == "stopped" and status["items"] == counting["items"]
        assert status["per_class"] == counting["per_class"] and status["dropped"] == 0
    finally:
        late.close()


def test_a_broker_restart_mid_run_loses_no_event(broker) -> None:
    sub = Subscriber(broker.port, ["belt"])
    pub = MqttPublisher("127.0.0.1", broker.port, "belt")
    try:
        wait_for(lambda: pub.connected, 10, "the publisher to connect")
        for i in range(300):
            if i == 100:
                broker.stop()  # mid-run: the line goes on
            if i == 200:
                broker.start()
            pub.on_item({"track_id": i, "class": "Lata", "defect": False})
            time.sleep(0.005)
        pub.close(wait=20)
        assert pub.pending() == 0 and pub.dropped == 0
        got = lambda: {json.loads(p)["track_id"] for p in sub.on("belt")}  # noqa: E731
        try:
            wait_for(lambda: got() == set(range(300)), 20, "all 300 events at the subscriber")
        except AssertionError:
            raise AssertionError(f"events lost: {sorted(set(range(300)) - got())}; {pub.published} published, "
                                 f"{pub.acked} acknowledged") from None
    finally:
        sub.close()


def test_an_absent_broker_is_said_once_and_the_bounded_buffer_counts_what_it_drops(tmp_path, caplog) -> None:
    b = Broker(tmp_path / "broker")  # not started yet
    pub = MqttPublisher("127.0.0.1", b.port, "belt", buffer=5)
    try:
        for i in range(8):
            pub.on_item({"track_id": i})
        time.sleep(3.5)
        said = [r for r in caplog.records if f"cannot reach the broker 127.0.0.1:{b.port}" in r.getMessage()]
        assert len(said) == 1
        assert pub.dropped == 3 and pub.pending() == 5
        b.start()
        sub = Subscriber(b.port, ["belt"])
        try:
            wait_for(lambda: pub.connected, 40, "the publisher to reconnect")
            wait_for(lambda: {json.loads(p)["track_id"] for p in sub.on("belt")} == {3, 4, 5, 6, 7}, 10,
                     "the five kept events")
        finally:
            sub.close()
    finally:
        pub.close(wait=5)
        b.stop()


def test_the_last_will_says_offline_when_the_line_dies(broker) -> None:
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from detect.station.mqtt import MqttPublisher; "
            f"p = MqttPublisher('127.0.0.1', {broker.port}, 'line9'); "
            "time.sleep(0.5); p._counts = {'items': 0}; p._status('running'); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    sub = Subscriber(broker.port, ["line9/status"], client_id="watcher")
    try:
        wait_for(lambda: any(b"running" in p for p in sub.on("line9/status")), 20, "the running status")
        proc.kill()  # no clean disconnect: the broker sends the will
        wait_for(lambda: sub.on("line9/status")[-1] == b"offline", 20, "the last will")
    finally:
        proc.kill()
        proc.wait()
        sub.close()


@pytest.mark.parametrize("url", ["http://localhost/x", "mqtt://localhost", "mqtt://localhost:99999/x",
                                 "mqtt:///topic", "mqtt://localhost/a/#"])
def test_a_malformed_url_is_one_line_and_exit_2(url, tmp_path, capsys) -> None:
    # checked before the model loads: the weights need not exist
    code = main(["--weights", str(tmp_path / "none.pt"), "video.mp4", "--track", "--mqtt", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mqtt://HOST[:PORT]/TOPIC" in err[0], err
