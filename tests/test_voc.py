"""The VOC parser and writer: real files, every quirk real annotation tools produce."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from detect.data.voc import Annotation, Box, VocError, VocObject, annotation_to_xml, parse_voc, parse_voc_bytes, write_voc

from conftest import BCCD, REPO

LABELIMG = b"""<annotation>
\t<folder>JPEGImages</folder>
\t<filename>can_001.jpg</filename>
\t<path>C:\\Users\\inspector\\cans\\can_001.jpg</path>
\t<source><database>Unknown</database></source>
\t<size><width>640</width><height>480</height><depth>3</depth></size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>Lata_defectuosa</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>1</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox><xmin>48</xmin><ymin>240.5</ymin><xmax>195</xmax><ymax>371</ymax></bndbox>
\t</object>
\t<object>
\t\t<name>Botella</name>
\t\t<difficult>1</difficult>
\t\t<bndbox><xmin>45.70000076293945</xmin><ymin>10</ymin><xmax>80</xmax><ymax>200</ymax></bndbox>
\t\t<part><name>cap</name><bndbox><xmin>50</xmin><ymin>10</ymin><xmax>70</xmax><ymax>30</ymax></bndbox></part>
\t</object>
</annotation>
"""


def test_parses_labelimg_file(tmp_path: Path) -> None:
    f = tmp_path / "can_001.xml"
    f.write_bytes(LABELIMG)
    ann = parse_voc(f)
    assert ann.filename == "can_001.jpg" and (ann.width, ann.height, ann.depth) == (640, 480, 3)
    assert [o.name for o in ann.objects] == ["Lata_defectuosa", "Botella"]  # <part> is not an object
    assert ann.objects[0].box == Box(48.0, 240.5, 195.0, 371.0)
    assert ann.objects[0].truncated and not ann.objects[0].difficult
    assert ann.objects[1].difficult
    assert ann.objects[1].box.xmin == pytest.approx(45.70000076293945)
    assert ann.objects[0].line == 8
    assert ann.source == f


def test_example_annotation_in_repo_parses() -> None:
    example = REPO / "annotations" / "example_lata_defectuosa.xml"
    ann = parse_voc(example)
    classes = (REPO / "annotations" / "classes.txt").read_text().split()
    assert classes == ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
    assert ann.objects and all(o.name in classes for o in ann.objects)
    assert any(o.name == "Lata_defectuosa" for o in ann.objects)


@pytest.mark.parametrize(
    "encoding,prefix",
    [("utf-8", b"\xef\xbb\xbf"), ("utf-16", b""), ("iso-8859-1", b"")],
)
def test_bom_and_declared_encodings(tmp_path: Path, encoding: str, prefix: bytes) -> None:
    text = f'<?xml version="1.0" encoding="{encoding}"?>\n<annotation><filename>caña.jpg</filename>' \
           "<size><width>10</width><height>10</height></size>" \
           "<object><name>Botella_rota_ñ</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    f = tmp_path / "a.xml"
    f.write_bytes(prefix + text.encode(encoding))
    ann = parse_voc(f)
    assert ann.filename == "caña.jpg" and ann.objects[0].name == "Botella_rota_ñ"


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ann = Annotation(
        filename="b.png", width=320, height=240, depth=3, folder="imgs", path="b.png",
        objects=(
            VocObject("Lata", Box(1.0, 2.0, 30.0, 40.0)),
            VocObject("Botella_defectuosa", Box(0.5, 45.70000076293945, 100.25, 239.0), difficult=True, truncated=True),
        ),
    )
    write_voc(ann, tmp_path / "b.xml")
    assert parse_voc(tmp_path / "b.xml") == ann
    assert parse_voc_bytes(annotation_to_xml(ann)) == ann
    assert b"<xmin>1</xmin>" in annotation_to_xml(ann)  # whole pixels stay integers for LabelImg


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.xml"
    f.write_bytes(b"<annotation>\n<filename>a.jpg</filename>\n<object><name>Lata</name>\n</annotation>\n")
    with pytest.raises(VocError) as err:
        parse_voc(f)
    assert err.value.path == str(f) and err.value.line == 4 and err.value.kind == "malformed"
    assert str(err.value).startswith(f"{f}:4: not well-formed XML")


def test_bad_coordinate_names_line(tmp_path: Path) -> None:
    f = tmp_path / "nan.xml"
    f.write_bytes(
        b"<annotation><filename>a.jpg</filename><size><width>9</width><height>9</height></size>\n"
        b"<object><name>Lata</name><bndbox>\n<xmin>1</xmin>\n<ymin>abc</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>\n"
        b"<object><name>Lata</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>\n"
        b"</annotation>"
    )
    with pytest.raises(VocError, match=r"nan.xml:4: object 'Lata': <ymin> is 'abc', not a number"):
        parse_voc(f)
    problems: list[VocError] = []
    ann = parse_voc(f, problems=problems)
    assert ann.objects == ()  # both objects are broken and left out
    assert [(p.line, p.kind) for p in problems] == [(4, "bad-number"), (5, "bad-number")]


def test_missing_parts_are_problems(tmp_path: Path) -> None:
    f = tmp_path / "m.xml"
    f.write_bytes(b"<annotation>\n<object><bndbox><xmin>1</xmin></bndbox></object>\n<object><name>Lata</name></object></annotation>")
    problems: list[VocError] = []
    parse_voc(f, problems=problems)
    messages = " | ".join(p.message for p in problems)
    assert "missing <filename>" in messages and "missing <size>" in messages
    assert "object without <name>" in messages and "has no <bndbox>" in messages


@pytest.mark.parametrize(
    "payload",
    [
        # XXE: would read a local file into <filename>.
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation><filename>&x;</filename></annotation>',
        # Billion laughs: exponential entity expansion.
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
        b'<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
        b"<annotation><filename>&h;</filename></annotation>",
        # External DTD over the network.
        b'<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd"><annotation/>',
    ],
)
def test_doctype_is_refused_fast(tmp_path: Path, payload: bytes) -> None:
    f = tmp_path / "evil.xml"
    f.write_bytes(payload)
    t0 = time.perf_counter()
    with pytest.raises(VocError) as err:
        parse_voc(f)
    assert time.perf_counter() - t0 < 1.0
    assert err.value.kind in ("doctype", "malformed")
    assert "root:" not in str(err.value)  # /etc/passwd content never appears


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "e.xml").write_bytes(b"")
    with pytest.raises(VocError, match="empty"):
        parse_voc(tmp_path / "e.xml")
    with pytest.raises(VocError, match="cannot read"):
        parse_voc(tmp_path / "missing.xml")


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not present")
def test_bccd_parses_and_round_trips() -> None:
    files = sorted((BCCD / "Annotations").glob("*.xml"))
    assert len(files) > 300
    n = 0
    for f in files:
        ann = parse_voc(f)
        assert parse_voc_bytes(annotation_to_xml(ann)) == ann
        n += len(ann.objects)
    assert n > 4000
