"""What the line station costs the line, side by side in one run.

    python bench/line_station.py --weights weights/mobilenet/best.onnx [--items 20] [--repeat 2]

On one rendered demo conveyor (``detect.demo.conveyor``), the track loop's frames/s:

* no station; the live page served but not watched; 1 watcher (a real headless chromium,
  when installed); 50 watchers (one client process doing what 50 pages do: the newest frame
  every 150 ms, the numbers every second, an event stream each); no station while another
  2-thread program (numpy matrix products) keeps the box busy, and the page with 1 watcher
  under that load;
* MQTT, with a real mosquitto (when installed) on a free local port: the latency from the
  frame's arrival to the event at a subscriber (p50/p99), and the events delivered when the
  broker is restarted in the middle of the run.

Every configuration runs ``--repeat`` times, interleaved; the median is printed, with the
ratio to the first. Prints the CPU. Timings on a shared machine vary: compare the ratios.
"""

from __future__ import annotations

import _repo  # noqa: F401

import argparse
import atexit
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WATCHER = r"""
import asyncio, sys, httpx
async def page(c, stop):
    async def frames():
        while not stop.is_set():
            try: await c.get("/api/frame.jpg")
            except Exception: pass
            await asyncio.sleep(0.15)
    async def numbers():
        while not stop.is_set():
            try: await c.get("/api/summary")
            except Exception: pass
            await asyncio.sleep(1.0)
    async def events():
        try:
            async with c.stream("GET", "/api/events") as r:
                async for _ in r.aiter_lines():
                    if stop.is_set(): return
        except Exception: pass
    await asyncio.gather(frames(), numbers(), events())
async def main(url, n):
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=4 * n)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        task = asyncio.gather(*(page(c, stop) for _ in range(n)))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stop.set()
        task.cancel()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

LOAD = r"""
import os, sys, time, numpy as np
a = np.random.rand(600, 600)
while True:
    a = (a @ a) / 600.0
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_line(predictor, video: Path, listeners) -> tuple[float, int]:
    """The track loop over ``video`` with ``listeners``; returns (frames/s, frames)."""
    from detect.line.counting import ItemCounter, parse_count_line
    from detect.line.session import track

    counter = ItemCounter(predictor.classes, predictor.defect_classes, predictor.thresholds, line=parse_count_line(None),
                          on_item=lambda item, crop: [x.on_item(item.event()) for x in listeners])
    n = 0
    start = time.perf_counter()
    for result in track(predictor, str(video), counter):
        for x in listeners:
            x.on_frame(result, counter)
        n += 1
    seconds = time.perf_counter() - start
    for x in listeners:
        x.on_close({"counting": counter.summary()})
    return n / seconds, n


def chromium_watcher(url: str):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    d.get(url)
    return d


def measure_fps(predictor, video: Path, config: str) -> float:
    from detect.station.live import LiveStation

    helpers: list = []
    listeners: list = []
    try:
        if config.startswith("busy"):
            helpers.append(subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "2",
                                            "OPENBLAS_NUM_THREADS": "2"}))
            time.sleep(1.0)
        if config != "none" and config != "busy":
            station = LiveStation("127.0.0.1", 0)
            listeners.append(station)
            if config in ("1 watcher", "busy + 1 watcher"):
                browser = chromium_watcher(station.url)
                if browser is None:
                    return float("nan")
                helpers.append(browser)
            elif config == "50 watchers":
                helpers.append(subprocess.Popen([sys.executable, "-c", WATCHER, station.url.rstrip("/"), "50"],
                                                stdin=subprocess.PIPE, text=True))
            time.sleep(2.0)
        fps, _ = run_line(predictor, video, listeners)
        return fps
    finally:
        for x in listeners:
            x.close()
        for h in helpers:
            if hasattr(h, "quit"):
                h.quit()
            elif h.stdin is not None:
                h.stdin.close()
                h.wait(20)
            else:
                h.kill()
                h.wait()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)


def measure_mqtt(predictor, video: Path, restart: bool) -> dict:
    """Frame-to-subscriber latency and events delivered (with a broker restart mid-run if ``restart``)."""
    import getpass

    import paho.mqtt.client as mqtt

    from detect.station.mqtt import MqttPublisher

    binary = mosquitto_binary()
    folder = Path(tempfile.mkdtemp(prefix="broker-"))
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {folder}/\n"
                    f"log_dest none\nuser {getpass.getuser()}\n")

    def start():
        p = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return p
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    broker = start()
    received: dict[int, float] = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False)
    sub.reconnect_delay_set(0.2, 1)
    sub.on_connect = lambda c, u, f, r, p=None: c.subscribe("bench", qos=1)
    sub.on_message = lambda c, u, m: received.setdefault(json.loads(m.payload)["track_id"], time.time())
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    time.sleep(0.5)
    pub = MqttPublisher("127.0.0.1", port, "bench")
    frame_time: dict[int, float] = {}
    frames = {"n": 0}

    class Clock:  # when each counted item's frame arrived (wall clock)
        def on_frame(self, result, counter):
            frames["n"] += 1
            for item in result.counted:
                frame_time[item.track_id] = time.time() - result.latency - result.track_seconds
            if restart and frames["n"] == total // 2:
                nonlocal broker
                broker.terminate()
                broker.wait()
                time.sleep(1.0)
                broker = start()

        def on_item(self, event):
            pass

        def on_close(self, summary):
            pass

    from detect.inference.sources import open_source

    src = open_source(str(video))
    total = len(src)
    src.close()
    try:
        run_line(predictor, video, [Clock(), pub])
        pub.close(wait=30)
        end = time.time() + 15
        while len(received) < len(frame_time) and time.time() < end:
            time.sleep(0.1)
        lat = sorted(1000 * (received[k] - t) for k, t in frame_time.items() if k in received)
        return {"events": len(frame_time), "delivered": len(set(received) & set(frame_time)), "dropped": pub.dropped,
                "p50_ms": statistics.median(lat) if lat else float("nan"),
                "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")}
    finally:
        sub.loop_stop()
        broker.terminate()
        broker.wait()


def main(argv=None) -> int:
    # Every scratch folder (the video, the broker's, the browser's profile) inside one, removed at exit.
    tempfile.tempdir = tempfile.mkdtemp(prefix="line-station-")
    atexit.register(shutil.rmtree, tempfile.tempdir, ignore_errors=True)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a .pt checkpoint or an .onnx export")
    p.add_argument("--items", type=int, default=20, help="items on the rendered conveyor (default 20)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each configuration (default 2)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the library's)")
    args = p.parse_args(argv)

    from detect.demo.conveyor import write_conveyor
    from detect.inference.loader import load_detector
    from detect.inference.predictor import Predictor
    from detect.line.counting import TRACK_CONF

    work = Path(tempfile.mkdtemp(prefix="line-station-"))
    write_conveyor(work, args.items, speed=6.0, seed=3)
    video = work / "conveyor.mp4"
    detector = load_detector(args.weights, threads=args.threads)
    predictor = Predictor(detector, conf=[f"{TRACK_CONF:g}"])
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; weights {args.weights}; {args.items} items on the demo conveyor")
    configs = ["none", "page, unwatched", "1 watcher", "50 watchers", "busy", "busy + 1 watcher"]
    fps: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeat):
        for c in configs:
            fps[c].append(measure_fps(predictor, video, c))
    base = statistics.median(fps["none"])
    print(f"{'configuration':<20} {'frames/s':>9} {'ratio':>6}")
    for c in configs:
        m = statistics.median(fps[c])
        print(f"{c:<20} {m:9.2f} {m / base:6.2f}")
    if mosquitto_binary():
        for restart in (False, True):
            r = measure_mqtt(predictor, video, restart)
            what = "broker restarted mid-run" if restart else "broker up"
            print(f"MQTT ({what}): {r['delivered']}/{r['events']} events delivered, {r['dropped']} dropped; "
                  f"frame -> subscriber p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
    else:
        print("MQTT: mosquitto is not installed; not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
