"""Fuzz the checker: mutated real XML files must give findings, never exceptions.

Seeds are LabelImg-style files written by detect.data.voc (and, when ../shared/data/bccd is
present, a few of BCCD's own files with their images). Each mutation is one that must
break something: truncation, bytes that are never valid UTF-8 or XML, swapped tags, huge
numbers, emptied or deleted elements, a DOCTYPE, absurd nesting. A second test throws
unconstrained random damage at the parser and the checker and only asks that nothing
raises.
"""

from __future__ import annotations

import random
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detect.checks import apply_fixes, check_dataset, format_finding, plan_fixes
from detect.data.layout import discover
from detect.data.voc import Annotation, Box, VocError, VocObject, annotation_to_xml, parse_voc_bytes
from detect import check_xml

BCCD = Path(__file__).resolve().parents[1].parent / "shared/data/bccd"
CLASSES = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]


def _image(path: Path, size=(96, 72)) -> None:
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path)


def _seeds(tmp: Path) -> list[tuple[str, bytes, Path]]:
    """(name, XML bytes, image) of clean seed files."""
    seeds = []
    rng = random.Random(1)
    for i in range(6):
        img = tmp / f"seed{i}.jpg"
        _image(img)
        objects = []
        for k in range(1 + i % 3):
            x, y = rng.randint(5, 40), rng.randint(5, 30)
            objects.append(VocObject(CLASSES[(i + k) % 4], Box(x, y, x + rng.randint(20, 45), y + rng.randint(20, 35))))
        ann = Annotation(filename=img.name, width=96, height=72, objects=tuple(objects), folder="images")
        seeds.append((f"seed{i}", annotation_to_xml(ann), img))
    if BCCD.is_dir():
        for xml in sorted((BCCD / "Annotations").glob("*.xml"))[:4]:
            seeds.append((xml.stem, xml.read_bytes(), BCCD / "JPEGImages" / f"{xml.stem}.jpg"))
    return seeds


# -- mutations: each returns new bytes that must produce a finding


def truncate(data: bytes, rng: random.Random) -> bytes:
    end = data.rindex(b"</annotation>")
    return data[: rng.randrange(1, end)]


def random_bytes(data: bytes, rng: random.Random) -> bytes:
    junk = bytearray(rng.randbytes(rng.randint(0, 12)))
    junk.insert(rng.randrange(len(junk) + 1), 0xFF)  # never valid in UTF-8
    at = rng.randrange(len(data))
    return data[:at] + bytes(junk) + data[at:]


def control_char(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(data.index(b">") + 1, len(data))
    return data[:at] + bytes([rng.choice([0, 1, 2, 8, 11, 12, 27])]) + data[at:]


def swap_tags(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8")
    boxes = list(re.finditer(r"<xmin>(.*?)</xmin>(.*?)<xmax>(.*?)</xmax>", text, re.S))
    if rng.random() < 0.5:
        # xmin and xmax trade places: the box turns inside out.
        m = rng.choice(boxes)
        swapped = f"<xmax>{m.group(1)}</xmax>{m.group(2)}<xmin>{m.group(3)}</xmin>"
        return (text[: m.start()] + swapped + text[m.end():]).encode("utf-8")
    # An opening tag renamed: the closing tag no longer matches.
    tags = list(re.finditer(r"<(filename|width|name|xmin|ymax|bndbox|object)>", text))
    m = rng.choice(tags)
    other = rng.choice([t for t in ("size", "pose", "folder") if t != m.group(1)])
    return (text[: m.start()] + f"<{other}>" + text[m.end():]).encode("utf-8")


def huge_number(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8")
    fields = list(re.finditer(r"<(xmin|ymin|xmax|ymax|width|height)>[^<]*</\1>", text))
    m = rng.choice(fields)
    value = rng.choice(["1e400", "-1e400", "9" * 400, "123456789012345678901234567890", "-99999999", "nan", "inf"])
    return (text[: m.start()] + f"<{m.group(1)}>{value}</{m.group(1)}>" + text[m.end():]).encode("utf-8")


def empty_element(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8")
    fields = list(re.finditer(r"<(filename|width|height|name|xmin|ymin|xmax|ymax)>[^<]*</\1>", text))
    m = rng.choice(fields)
    empty = rng.choice([f"<{m.group(1)}></{m.group(1)}>", f"<{m.group(1)}/>", f"<{m.group(1)}>   </{m.group(1)}>"])
    return (text[: m.start()] + empty + text[m.end():]).encode("utf-8")


def delete_element(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8")
    fields = list(re.finditer(r"<(filename|size|name|bndbox|xmin|ymax)>.*?</\1>", text, re.S))
    m = rng.choice(fields)
    return (text[: m.start()] + text[m.end():]).encode("utf-8")


def doctype(data: bytes, rng: random.Random) -> bytes:
    decl = rng.choice(
        [
            b'<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n',
            b'<!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>\n',
            b'<!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd">\n',
        ]
    )
    body = data.replace(b"<name>", b"<name>&x;", 1) if b"ENTITY x" in decl else data
    return decl + body


def nesting(data: bytes, rng: random.Random) -> bytes:
    depth = rng.randint(300, 3000)
    at = data.index(b"<annotation>") + len(b"<annotation>")
    return data[:at] + b"<a>" * depth + b"</a>" * depth + data[at:]


MUTATIONS = [truncate, random_bytes, control_char, swap_tags, huge_number, empty_element, delete_element, doctype, nesting]


def test_every_mutation_gives_a_finding_never_an_exception(tmp_path: Path, capsys):
    rng = random.Random(20240601)
    data = tmp_path / "data"
    data.mkdir()
    seeds = _seeds(tmp_path)
    mutated: dict[Path, str] = {}
    n = 0
    for name, original, image in seeds:
        for mutation in MUTATIONS:
            for _ in range(2):
                n += 1
                stem = f"m{n:04d}_{name}"
                # The copy names its own image, so it starts as clean as its seed.
                content = original.replace(image.name.encode(), f"{stem}.jpg".encode())
                applied = []
                others = [m for m in MUTATIONS if m is not mutation]
                for step in [mutation] + rng.sample(others, rng.choice([0, 0, 1, 2])):
                    try:
                        content = step(content, rng)
                        applied.append(step.__name__)
                    except (ValueError, IndexError, UnicodeDecodeError):
                        # An earlier step left nothing this one can work on (e.g. no tag
                        # left after truncation, or bytes that are not text any more).
                        continue
                xml = data / f"{stem}.xml"
                xml.write_bytes(content)
                shutil.copyfile(image, data / f"{stem}.jpg")
                mutated[xml] = "+".join(applied)
    # A clean copy of each seed, so a dataset-level finding cannot hide a missing file one.
    for name, original, image in seeds:
        (data / f"clean_{name}.xml").write_bytes(original.replace(image.name.encode(), f"clean_{name}.jpg".encode()))
        shutil.copyfile(image, data / f"clean_{name}.jpg")

    for classes in (None, CLASSES + ["RBC", "WBC", "Platelets"]):
        report = check_dataset(discover(data), classes=classes, deep=True)
        flagged = {f.path for f in report.findings if f.severity in ("error", "warning")}
        missed = {xml.name: how for xml, how in mutated.items() if xml not in flagged}
        assert not missed, f"mutations without a finding: {missed}"
        for f in report.findings:
            line = format_finding(f)
            assert "\n" not in line and len(line) < 2000
            if f.path in mutated:
                assert f.line is None or f.line >= 1
        clean = {p for p in report.files.xml_files if p.name.startswith("clean_")}
        assert len(clean) == len(seeds)
        assert [format_finding(f) for f in report.findings if f.path in clean and f.severity != "info"] == []

    # Fixing the wreckage never raises either, and only touches XML files.
    images_before = {p: p.read_bytes() for p in data.glob("*.jpg")}
    plans = plan_fixes(report, unsafe=True)
    apply_fixes(plans)
    assert {p: p.read_bytes() for p in data.glob("*.jpg")} == images_before
    for plan in plans:
        parse_voc_bytes(plan.after, problems=[])  # what a fix writes is well-formed XML
    for fmt in ("text", "json", "github"):
        assert check_xml.main([str(data), "--format", fmt]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_random_damage_never_raises(tmp_path: Path):
    """Unconstrained byte flips, cuts and splices: the parser raises only VocError, the
    checker nothing at all (a flip may be harmless, so no finding is required)."""
    rng = random.Random(7)
    seeds = _seeds(tmp_path)
    pool = [s[1] for s in seeds]
    data = tmp_path / "data"
    data.mkdir()
    for i in range(1500):
        buf = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            at = rng.randrange(len(buf)) if buf else 0
            if op < 0.4 and buf:
                buf[at] = rng.randrange(256)
            elif op < 0.6:
                del buf[at : at + rng.randint(1, 40)]
            elif op < 0.8:
                buf[at:at] = rng.choice(pool)[rng.randrange(200) : rng.randrange(200, 400)]
            else:
                buf[at:at] = rng.randbytes(rng.randint(1, 8))
        content = bytes(buf)
        try:
            parse_voc_bytes(content, problems=[])
        except VocError:
            pass
        if i % 15 == 0:
            (data / f"r{i:04d}.xml").write_bytes(content)
            _image(data / f"r{i:04d}.jpg")
    report = check_dataset(discover(data), classes=CLASSES)
    assert len(report.files.xml_files) == 100
    for f in report.findings:
        format_finding(f)
    plan_fixes(report, unsafe=True)


@pytest.mark.parametrize("blob", [b"", b"\x00" * 64, b"\xff\xfe<\x00a\x00>\x00", b"<annotation/>", b"<?xml version='1.0'?>", b"<<<>>>"])
def test_degenerate_files(tmp_path: Path, blob: bytes):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.xml").write_bytes(blob)
    _image(data / "x.jpg")
    report = check_dataset(discover(data))
    assert any(f.path == data / "x.xml" and f.severity == "error" for f in report.findings)
