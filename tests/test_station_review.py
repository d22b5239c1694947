"""The audit's review page (``python -m detect.audit --data DIR --review PORT``) in a real
headless chromium: one finding at a time, keyboard shortcuts, accept writes the XML through
the safe writer (a .bak kept), a file changed on disk since it was shown is refused and shown
again, progress survives a reload, and a second audit does not show what was rejected."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, make_devkit, make_tiny_checkpoint, need_browser_and_station

need_browser_and_station()

from detect.audit import main  # noqa: E402
from detect.data.voc import parse_voc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def post(url: str, doc: dict) -> int:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Audit:
    """``python -m detect.audit --review PORT`` running in a child process."""

    def __init__(self, pt: Path, data: Path, out: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # As from a terminal: a test run in the background (nohup, CI) starts with SIGINT ignored,
        # which the child would inherit, and then Ctrl-C would never stop the review.
        argv = ["--weights", str(pt), "--data", str(data), "--out", str(out), "--gallery", "0", "--no-progress",
                "--review", str(self.port)]
        code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                f"from detect.audit import main; sys.exit(main({argv!r}))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
        wait_for(lambda: get_json(self.url + "/api/current"), 120, "the review page")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C: the review ends, nothing lost
        _, err = self.proc.communicate(timeout=20)
        return err


@pytest.fixture
def audited(tmp_path):
    data = make_devkit(tmp_path / "data", n=6)
    pt = make_tiny_checkpoint(tmp_path / "run" / "best.pt", data)
    return pt, data, tmp_path / "audit"


def test_review_accepts_rejects_refuses_a_changed_file_and_remembers(audited, browser) -> None:
    from selenium.webdriver.common.by import By

    pt, data, out = audited
    audit = Audit(pt, data, out)
    try:
        browser.get(audit.url + "/")
        first = wait_for(lambda: get_json(audit.url + "/api/current")["finding"], 10, "a finding")
        total = get_json(audit.url + "/api/current")["total"]
        assert total >= 3  # the untrained model disagrees with the labels
        wait_for(lambda: first["code"] in browser.find_element(By.ID, "title").text, 20, "the finding on the page")
        assert browser.find_element(By.ID, "message").text == first["message"]
        img = browser.find_element(By.ID, "image")
        wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", img) == first["width"], 20, "the image")
        shown_boxes = [b for b in ("ann", "model") if browser.find_element(By.ID, b).is_displayed()]
        assert shown_boxes == [n for n, b in (("ann", first["box"]), ("model", first["model_box"])) if b]

        # r: rejected, the next finding shown
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("r")
        second = wait_for(lambda: (c := get_json(audit.url + "/api/current")["finding"]) and c["id"] != first["id"] and c,
                          10, "the next finding")
        wait_for(lambda: "1 rejected" in browser.find_element(By.ID, "progress").text, 10, "the progress")

        # a: accepted, written into the XML by the safe writer
        xml = data / "Annotations" / second["xml"]
        before = xml.read_bytes()
        objects = len(parse_voc(xml).objects)
        body.send_keys("a")
        wait_for(lambda: "1 accepted" in browser.find_element(By.ID, "progress").text, 10, "the accept")
        assert xml.with_name(xml.name + ".bak").read_bytes() == before
        change = {"missing": 1, "spurious": -1}.get(second["kind"], 0)
        assert len(parse_voc(xml).objects) == objects + change and xml.read_bytes() != before

        # progress survives a reload
        browser.refresh()
        wait_for(lambda: "2 of" in browser.find_element(By.ID, "progress").text, 10, "the progress after a reload")
        third = get_json(audit.url + "/api/current")["finding"]
        wait_for(lambda: third["code"] in browser.find_element(By.ID, "title").text, 10, "the third finding")

        # the file changes on disk after it was shown: refused, shown again as it is now
        changed = data / "Annotations" / third["xml"]
        edited = changed.read_bytes().replace(b"</annotation>", b"<!-- edited in LabelImg -->\n</annotation>")
        changed.write_bytes(edited)
        browser.find_element(By.ID, "accept").click()
        wait_for(lambda: "changed on disk" in browser.find_element(By.ID, "notice").text, 10, "the refusal")
        assert changed.read_bytes() == edited  # nothing written
        assert get_json(audit.url + "/api/current")["finding"]["id"] == third["id"]
    finally:
        audit.stop()
    state = json.loads((out / "review.json").read_text())
    decisions = next(iter(state.values()))
    assert decisions == {first["id"]: "rejected", second["id"]: "accepted"}

    # a second audit does not show the rejected finding again
    again = Audit(pt, data, out)
    try:
        seen = []
        for _ in range(get_json(again.url + "/api/current")["remaining"]):
            f = get_json(again.url + "/api/current")["finding"]
            seen.append(f["id"])
            assert post(again.url + "/api/decide", {"id": f["id"], "decision": "skip", "token": f["token"]}) == 200
        assert first["id"] not in seen and second["id"] not in seen and third["id"] in seen
    finally:
        again.stop()


def test_review_needs_a_free_port_and_the_text_format(audited, capsys) -> None:
    pt, data, out = audited
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--weights", str(pt), "--data", str(data), "--review", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(port) in err[0] and "in use" in err[0], err
    assert main(["--weights", str(pt), "--data", str(data), "--format", "json", "--review"]) == 2
    assert "--review" in capsys.readouterr().err
