"""Issue 16, part 2: the shortfalls a hostile probe found, one test (or a few) each."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from detect.checks import check_dataset
from detect.common.files import unique_folder
from detect.data.layout import discover
from detect.data.records import load_records

from conftest import write_sample


def test_exact_name_wins_and_case_twins_are_reported(tmp_path: Path) -> None:
    """`A.jpg` and `a.jpg` in one folder, each with its XML: each XML gets its own image
    (not the first case-insensitive match), and the checker says the pair is fragile."""
    data = tmp_path / "data"
    write_sample(data, data, "A", [("Lata", (10, 10, 40, 40))])
    write_sample(data, data, "a", [("Lata", (50, 30, 90, 70))])
    files = discover(data)
    by_stem = {r.xml.stem: r.image.name for r in load_records(files)}
    assert by_stem == {"A": "A.jpg", "a": "a.jpg"}
    report = check_dataset(files)
    twins = [f for f in report.findings if f.code == "VOC403" and "differs only in case" in f.message]
    assert {f.path.name for f in twins} == {"A.xml", "a.xml"}


def test_case_twins_without_an_exact_name_are_ambiguous_not_guessed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample(data, data, "B", [("Lata", (10, 10, 40, 40))])
    Image.open(data / "B.jpg").save(data / "b.JPG")
    (data / "B.xml").rename(data / "x.xml")
    xml = (data / "x.xml")
    xml.write_text(xml.read_text().replace("<filename>B.jpg</filename>", "<filename>b.jpg</filename>"))
    report = check_dataset(discover(data))
    (f,) = [f for f in report.findings if f.code == "VOC401"]
    assert "ambiguous" in f.message and "'B.jpg'" in f.message and "'b.JPG'" in f.message


def test_two_runs_started_at_once_never_share_a_folder(tmp_path: Path) -> None:
    n = 8
    start = threading.Barrier(n)
    got: list[Path] = []

    def claim() -> None:
        start.wait()
        got.append(unique_folder(tmp_path / "out", "run"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == n and all(p.is_dir() for p in got)
    assert sorted(p.name for p in got) == sorted(["run", *(f"run{i}" for i in range(2, n + 1))])
    (tmp_path / "out" / "empty").mkdir()
    assert unique_folder(tmp_path / "out", "empty").name == "empty2"  # never taken over
