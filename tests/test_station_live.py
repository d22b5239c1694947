"""The live page (``python -m detect.predict SOURCE --track --serve PORT``) in a real headless
chromium: what the page shows matches ``/api/summary`` and ``summary.json``, a defective item's
crop appears, the page works after a reload, no file outside the page's own is served, a port
in use is one line (exit 2), and the event streams are bounded."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, make_devkit, make_tiny_checkpoint, need_browser_and_station

need_browser_and_station()

from detect.demo.conveyor import write_conveyor  # noqa: E402
from detect.predict import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_for(check, timeout: float = 60.0, what: str = "the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def line_run(tmp_path_factory):
    """``predict --track --serve`` on a 6-item demo conveyor with a tiny untrained model (seeded:
    it calls items defective), the page kept up after the source ends."""
    root = tmp_path_factory.mktemp("live")
    data = make_devkit(root / "data", n=6)
    pt = make_tiny_checkpoint(root / "run" / "best.pt", data)
    write_conveyor(root / "conv", 6, speed=8.0, seed=4)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "detect.predict", "--weights", str(pt), str(root / "conv" / "conveyor.mp4"), "--track",
         "--serve", str(port), "--serve-wait", "120", "--out", str(root / "out"), "--name", "run", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get_json(url + "/api/summary")["finished"], 240, "the run to end")
        yield {"url": url, "folder": root / "out" / "run", "proc": proc}
    finally:
        proc.kill()
        proc.communicate()


def test_the_page_shows_the_summary_and_defect_crops_and_survives_a_reload(line_run, browser) -> None:
    from selenium.webdriver.common.by import By

    url, folder = line_run["url"], line_run["folder"]
    api = get_json(url + "/api/summary")
    written = json.loads((folder / "summary.json").read_text())["counting"]
    assert api["counting"] == written  # the same numbers as summary.json
    events = (folder / "events.jsonl").read_text().splitlines()
    assert len(events) == written["items"] > 0
    assert written["defective"] > 0  # the seeded tiny model calls some items defective
    for attempt in range(2):  # the first load, then a reload
        if attempt:
            browser.refresh()
        else:
            browser.get(url + "/")
        wait_for(lambda: browser.find_element(By.ID, "items").text == str(written["items"]), 30, "the item count")
        for name, n in written["per_class"].items():
            row = browser.find_element(By.CSS_SELECTOR, f'tr[data-class="{name}"]')
            assert row.find_elements(By.TAG_NAME, "td")[1].text == str(n)
        assert browser.find_element(By.ID, "defective").text == str(written["defective"])
        assert browser.find_element(By.ID, "run-rate").text == f"{100 * written['defect_rate']:.1f} %"
        assert "ended" in browser.find_element(By.ID, "health").text
        crops = wait_for(lambda: [i for i in browser.find_elements(By.CSS_SELECTOR, "#defects img")
                                  if browser.execute_script("return arguments[0].naturalWidth", i) > 0], 20,
                         "a defect crop to load")
        assert crops
        # the page is a second consumer of the event stream: every event of events.jsonl arrives
        wait_for(lambda: browser.find_element(By.ID, "events").text == f"{len(events)} received", 20, "the events")
        frame = browser.find_element(By.ID, "frame")
        assert wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", frame), 20, "the frame") == 320


def raw_get(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.putrequest("GET", path, skip_accept_encoding=True)
    c.endheaders()
    status = c.getresponse().status
    c.close()
    return status


def test_no_path_outside_the_static_folder_is_served() -> None:
    from detect.station.live import LiveStation

    station = LiveStation("127.0.0.1", 0)
    port = station.sock.getsockname()[1]
    try:
        assert raw_get(port, "/static/live.js") == 200
        for path in ("/static/../live.py", "/static/..%2flive.py", "/static/%2e%2e%2f%2e%2e%2fpredict.py",
                     "/static/..%5c..%5cpredict.py", "/../../../etc/passwd", "/static//etc/passwd",
                     "/static/%2fetc%2fpasswd", "/static/.hidden", "/static/__init__.py"):
            assert raw_get(port, path) == 404, path
    finally:
        station.close()


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # the port is checked before the model loads: the weights need not even exist
        code = main(["--weights", str(tmp_path / "none.pt"), "video.mp4", "--track", "--serve", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(port) in err[0] and "in use" in err[0], err
    assert main(["--weights", "x.pt", "video.mp4", "--track", "--serve", "no.such.host.invalid:8000"]) == 2
    assert "does not resolve" in capsys.readouterr().err
    assert main(["--weights", "x.pt", "video.mp4", "--serve", "8000"]) == 2  # without --track
    assert "--track" in capsys.readouterr().err


def test_event_streams_are_bounded_and_a_dropped_browser_frees_its_place() -> None:
    from detect.station.live import MAX_STREAMS, LiveStation

    station = LiveStation("127.0.0.1", 0)
    port = station.sock.getsockname()[1]
    conns = []
    try:
        statuses = []
        for _ in range(MAX_STREAMS + 6):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/api/events")
            statuses.append(c.getresponse().status)
            conns.append(c)
        assert statuses.count(200) == MAX_STREAMS and statuses.count(503) == 6
        for c in conns:  # the browsers go away mid-stream
            c.close()
        wait_for(lambda: station._streams == 0, 15, "the streams to be freed")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/events")
        assert c.getresponse().status == 200
        c.close()
    finally:
        station.close()
