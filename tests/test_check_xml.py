"""The annotation checker (detect/checks/, detect/checks/anchor_fit.py, detect/check_xml.py): one test per check on a
small crafted dataset written to tmp_path, plus fixes, output formats, exit codes and the
real BCCD dataset when ../shared/data/bccd is present."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detect import check_xml, checks
from detect.checks import anchor_fit
from detect.checks import CODES, check_dataset, format_finding, plan_fixes
from detect.data.layout import read_classes
from detect.data.layout import discover
from detect.data.voc import Annotation, Box, VocObject, annotation_to_xml, parse_voc_bytes

REPO = Path(__file__).resolve().parents[1]
BCCD = Path(__file__).resolve().parents[1].parent / "shared/data/bccd"
CLASSES = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]


# --------------------------------------------------------------------------- helpers


def write_image(path: Path, size=(64, 48), *, orientation: int | None = None, fmt: str | None = None) -> Path:
    """A distinct noise image (content seeded by the file name, so no two are equal)."""
    w, h = size
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    im = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kw)
    return path


def obj_xml(name: str, box, truncated: int = 0) -> str:
    x0, y0, x1, y1 = box
    return (
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{truncated}</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
        f"\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n"
        f"\t\t</bndbox>\n\t</object>\n"
    )


def voc_xml(filename="a.jpg", size=(64, 48), objects=(("Lata", (10, 10, 40, 30)),), *, path=None, depth=3) -> str:
    """LabelImg-style XML. ``objects``: (name, box[, truncated]) tuples or raw XML strings."""
    body = "".join(o if isinstance(o, str) else obj_xml(*o) for o in objects)
    size_xml = (
        ""
        if size is None
        else f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n\t\t<depth>{depth}</depth>\n\t</size>\n"
    )
    return (
        f"<annotation>\n\t<folder>images</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<path>{path if path is not None else filename}</path>\n"
        f"\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n{size_xml}\t<segmented>0</segmented>\n"
        f"{body}</annotation>\n"
    )


def pair(root: Path, stem: str, objects=(("Lata", (10, 10, 40, 30)),), *, size=(64, 48), xml_size="same", **kw) -> Path:
    """An image ``stem.jpg`` and its XML ``stem.xml`` side by side; returns the XML."""
    write_image(root / f"{stem}.jpg", size)
    xml = root / f"{stem}.xml"
    xml.write_text(voc_xml(f"{stem}.jpg", size if xml_size == "same" else xml_size, objects, **kw), encoding="utf-8")
    return xml


def check(root: Path, **kw):
    return check_dataset(discover(root), anchor_rule=lambda: anchor_fit.anchor_rule, **kw)


def codes(report, path: Path | None = None) -> set[str]:
    return {f.code for f in report.findings if path is None or f.path == path}


def only(report, code: str) -> list:
    return [f for f in report.findings if f.code == code]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return path


def balanced(root: Path) -> list[Path]:
    """Four clean pairs, one object of each class, nothing near a border."""
    return [pair(root, f"clean{i}", ((c, (18, 10, 40, 32)),)) for i, c in enumerate(CLASSES)]


# --------------------------------------------------------------------------- baseline


def test_codes_table_is_complete_and_grouped():
    for code, (severity, title) in CODES.items():
        assert code.startswith("VOC") and len(code) == 6 and title
        assert severity in ("error", "warning", "info")
    groups = {code[3] for code in CODES}
    assert groups == {"1", "2", "3", "4", "5", "6"}


def test_clean_dataset_has_no_errors_or_warnings(data: Path):
    balanced(data)
    report = check(data, classes=CLASSES)
    assert report.errors == [] and report.warnings == []
    assert codes(report) == {"VOC601"}
    assert report.files_with_errors == set()
    assert report.class_counts == {c: 1 for c in CLASSES}
    assert check_xml.main([str(data)]) == 0


# --------------------------------------------------------------------------- structure


def test_malformed_xml_reports_line_and_column(data: Path):
    balanced(data)
    bad = pair(data, "bad")
    text = bad.read_text().replace("<ymax>30</ymax>", "<ymax>30</ymin>")
    bad.write_text(text)
    report = check(data)
    (f,) = only(report, "VOC101")
    assert f.path == bad and f.severity == "error"
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "<ymax>30</ymin>" in l)
    assert f.line == line and f.col is not None and f.col > 1
    assert "ymax" in f.message and "ymin" in f.message
    assert format_finding(f).startswith(f"{bad}:{line}:{f.col}: VOC101 error not well-formed XML")
    assert report.files_with_errors == {bad}


def test_empty_xml_file_is_malformed(data: Path):
    balanced(data)
    (data / "empty.xml").write_bytes(b"  \n")
    write_image(data / "empty.jpg")
    (f,) = only(check(data), "VOC101")
    assert "empty" in f.message


def test_doctype_xxe_is_refused_without_reading_the_file(data: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    balanced(data)
    xxe = data / "xxe.xml"
    xxe.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        + voc_xml("xxe.jpg", objects=(("&x;", (10, 10, 40, 30)),)).replace("<annotation>", "<annotation>", 1)
    )
    write_image(data / "xxe.jpg")
    report = check(data)
    (f,) = [f for f in report.findings if f.path == xxe]
    assert f.code == "VOC102" and f.severity == "error" and "DOCTYPE" in f.message
    assert all("TOP-SECRET" not in f.message for f in report.findings)
    assert "TOP-SECRET" not in "".join(p.after.decode() for p in plan_fixes(report, unsafe=True))


def test_entity_expansion_bomb_finishes_instantly(data: Path):
    ents = ['<!ENTITY a0 "lollollollollollollollollollol">'] + [
        f'<!ENTITY a{i} "{("&a%d;" % (i - 1)) * 10}">' for i in range(1, 10)
    ]
    bomb = data / "bomb.xml"
    bomb.write_text("<!DOCTYPE annotation [" + "".join(ents) + "]>\n" + voc_xml("bomb.jpg", objects=(("&a9;", (1, 1, 9, 9)),)))
    write_image(data / "bomb.jpg")
    start = time.perf_counter()
    report = check(data)
    assert time.perf_counter() - start < 5
    assert codes(report, bomb) == {"VOC102"}


def test_wrong_root_missing_filename_and_size(data: Path):
    balanced(data)
    root_wrong = pair(data, "root")
    root_wrong.write_text(root_wrong.read_text().replace("annotation>", "annotations>"))
    no_name = pair(data, "noname")
    no_name.write_text(no_name.read_text().replace("\t<filename>noname.jpg</filename>\n", ""))
    no_size = pair(data, "nosize", xml_size=None)
    bad_width = pair(data, "badwidth")
    bad_width.write_text(bad_width.read_text().replace("<width>64</width>", "<width>sixty</width>"))
    report = check(data)
    assert "VOC103" in codes(report, root_wrong)
    (f,) = only(report, "VOC104")
    assert f.path == no_name and "filename" in f.message
    # The image is still found from the XML's own name.
    assert "VOC401" not in codes(report, no_name)
    size_findings = {f.path: f for f in only(report, "VOC105")}
    assert set(size_findings) == {no_size, bad_width}
    assert size_findings[no_size].fix is not None and size_findings[no_size].fix.level == "safe"
    assert "sixty" in size_findings[bad_width].message and size_findings[bad_width].fix is None


def test_object_without_name_or_box_or_coordinate(data: Path):
    balanced(data)
    xml = pair(
        data,
        "parts",
        (
            "\t<object>\n\t\t<name></name>\n\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>\n\t</object>\n",
            "\t<object>\n\t\t<name>Lata</name>\n\t</object>\n",
            "\t<object>\n\t\t<name>Lata</name>\n\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox>\n\t</object>\n",
        ),
    )
    report = check(data)
    assert codes(report, xml) >= {"VOC106", "VOC107"}
    msgs = " ".join(f.message for f in only(report, "VOC107"))
    assert "no <bndbox>" in msgs and "<ymax>" in msgs
    assert len(only(report, "VOC107")) == 2


def test_non_numeric_nan_and_several_boxes(data: Path):
    balanced(data)
    nan = pair(data, "nan", (("Lata", ("nan", 10, 40, 30)),))
    word = pair(data, "word", (("Lata", (10, "ten", 40, 30)),))
    several = pair(
        data,
        "several",
        (
            "\t<object>\n\t\t<name>Lata</name>\n"
            "\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>\n"
            "\t\t<bndbox><xmin>30</xmin><ymin>1</ymin><xmax>50</xmax><ymax>20</ymax></bndbox>\n\t</object>\n",
        ),
    )
    report = check(data)
    bad_numbers = {f.path: f for f in only(report, "VOC108")}
    assert set(bad_numbers) == {nan, word}
    assert "finite" in bad_numbers[nan].message and "'ten'" in bad_numbers[word].message
    (f,) = only(report, "VOC109")
    assert f.path == several and f.line == 17 and "2 <bndbox>" in f.message  # the second <bndbox>


def test_decimal_coordinates_are_info_and_rounded_by_unsafe_fix(data: Path):
    balanced(data)
    xml = pair(data, "dec", (("Lata", (10.4, 10, 40.5, 30)),))
    report = check(data)
    (f,) = only(report, "VOC110")
    assert f.severity == "info" and f.path == xml and "10.4" in f.message
    assert plan_fixes(report) == []  # not a safe fix
    (plan,) = plan_fixes(report, unsafe=True)
    fixed = parse_voc_bytes(plan.after)
    assert fixed.objects[0].box == Box(10, 10, 41, 30)


def test_absolute_path_from_another_machine_is_info(data: Path):
    balanced(data)
    win = pair(data, "win", path=r"C:\Users\ana\Desktop\cans\win.jpg")
    unix = pair(data, "unix", path="/home/pi/detection_dataset/unix.jpg")
    here = pair(data, "here", path=str(data / "here.jpg"))
    report = check(data)
    assert {f.path for f in only(report, "VOC111")} == {win, unix}
    assert "VOC111" not in codes(report, here)
    assert all(f.severity == "info" for f in only(report, "VOC111"))


def test_bom_is_a_warning_and_fix_writes_utf8_with_backup(data: Path):
    balanced(data)
    xml = pair(data, "bom")
    original = b"\xef\xbb\xbf" + xml.read_bytes()
    xml.write_bytes(original)
    latin = pair(data, "latin", (("Lata", (10, 10, 40, 30)),))
    latin.write_bytes(
        b'<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        + latin.read_text().replace("<folder>images</folder>", "<folder>im\xe1genes</folder>").encode("latin-1")
    )
    report = check(data)
    assert {f.path for f in only(report, "VOC112")} == {xml, latin}
    xml.chmod(0o640)
    assert check_xml.main([str(data), "--fix"]) == 0
    assert xml.read_bytes() == original[3:] and xml.stat().st_mode & 0o777 == 0o640
    assert (data / "bom.xml.bak").read_bytes() == original
    fixed = latin.read_bytes()
    assert fixed.startswith(b'<?xml version="1.0" encoding="UTF-8"?>') and "imágenes" in fixed.decode("utf-8")
    assert "VOC112" not in codes(check(data))
    assert (data / "bom.jpg").exists() and not (data / "bom.jpg.bak").exists()


def test_file_without_objects_is_info(data: Path):
    balanced(data)
    xml = pair(data, "bg", ())
    report = check(data)
    assert codes(report, xml) == {"VOC113"}


# --------------------------------------------------------------------------- geometry


def test_inverted_zero_and_subpixel_boxes(data: Path):
    balanced(data)
    xml = pair(data, "geo", (("Lata", (40, 10, 10, 30)), ("Lata", (20, 20, 20, 20)), ("Lata", (5, 5, 5.5, 30))))
    report = check(data)
    inverted, zero = only(report, "VOC201")
    assert "inverted" in inverted.message and "xmin 40 >= xmax 10" in inverted.message
    assert "zero-area" in zero.message
    (sub,) = only(report, "VOC202")
    assert sub.path == xml and "0.5x25" in sub.message
    assert xml in report.files_with_errors


def test_box_outside_image_with_tolerance_and_clamp_fix(data: Path):
    balanced(data)
    inside = pair(data, "inside", (("Lata", (0, 0, 65, 49)),), xml_size=(64, 48))  # 1 px tolerance
    out = pair(data, "out", (("Lata", (-5, 10, 70, 30)),))
    gone = pair(data, "gone", (("Lata", (100, 100, 140, 130)),))
    report = check(data)
    assert "VOC203" not in codes(report, inside)
    (f,) = [f for f in only(report, "VOC203") if f.path == out]
    assert "0,10,64,30" in f.message and f.fix.level == "unsafe"
    (g,) = [f for f in only(report, "VOC203") if f.path == gone]
    assert "entirely outside" in g.message and g.fix is None
    assert check_xml.main([str(data), "--unsafe-fixes"]) == 1  # 'gone' remains an error
    assert parse_voc_bytes(out.read_bytes()).objects[0].box == Box(0, 10, 64, 30)
    assert parse_voc_bytes(gone.read_bytes()).objects[0].box == Box(100, 100, 140, 130)


def test_border_touching_box_needs_truncated(data: Path):
    balanced(data)
    touching = pair(data, "touch", (("Lata", (0, 10, 30, 30), 0),))
    flagged = pair(data, "flagged", (("Lata", (0, 10, 30, 30), 1),))
    report = check(data)
    (f,) = only(report, "VOC204")
    assert f.path == touching and f.severity == "info" and "truncated" in f.message
    assert "VOC204" not in codes(report, flagged)


def test_box_too_small_for_the_model(data: Path):
    balanced(data)
    # MobileNet's finest level has stride 8 and anchors from 16 px: it resolves boxes from
    # 4 px at the model's input size. At 128 px (scale 1) a 2 px wide box is below that.
    tiny = pair(data, "tiny", (("Lata", (50, 50, 52, 60)),), size=(128, 96))
    fine = pair(data, "fine", (("Lata", (50, 50, 58, 60)),), size=(128, 96))
    report = check(data, input_size=128)
    (f,) = only(report, "VOC205")
    assert f.path == tiny and f.severity == "warning" and "mobilenet" in f.message and "stride 8" in f.message
    assert "VOC205" not in codes(report, fine)
    # At 800 px the image is scaled x6.25 and the 2 px box becomes 12.5 px: resolved.
    assert "VOC205" not in codes(check(data, input_size=800), tiny)
    # At a smaller input size the 8 px box is too small too (3 px at 48).
    assert "VOC205" in codes(check(data, input_size=48), fine)


def test_identical_objects_and_safe_drop(data: Path):
    balanced(data)
    lata = obj_xml("Lata", (10, 10, 40, 30))
    copies = pair(data, "copies", (lata, lata, ("Botella", (5, 5, 20, 20))))
    spaced = pair(data, "spaced", (lata, lata.replace("<name>Lata</name>", "<name> Lata </name>")))
    report = check(data)
    by_path = {f.path: f for f in only(report, "VOC206")}
    assert set(by_path) == {copies, spaced}
    assert by_path[copies].fix is not None and by_path[copies].line == 26  # the second <object>
    assert by_path[spaced].fix is None  # equal in meaning, not byte-identical
    (plan,) = plan_fixes(report)
    assert plan.path == copies
    after = parse_voc_bytes(plan.after)
    assert [o.name for o in after.objects] == ["Lata", "Botella"]
    # The file's layout is kept: the rewrite is the original minus the copy.
    assert plan.after.decode() == voc_xml("copies.jpg", objects=(lata, ("Botella", (5, 5, 20, 20))))


def test_overlapping_boxes_same_class_and_two_classes(data: Path):
    balanced(data)
    twice = pair(data, "twice", (("Lata", (10, 10, 40, 30)), ("Lata", (10, 10, 40, 31))))
    two = pair(data, "two", (("Lata", (10, 10, 40, 30)), ("Lata_defectuosa", (10, 10, 40, 30))))
    apart = pair(data, "apart", (("Lata", (10, 10, 30, 30)), ("Lata", (12, 10, 32, 30))))  # IoU 0.82
    report = check(data)
    (same,) = only(report, "VOC207")
    assert same.path == twice and "IoU 0.95" in same.message
    (both,) = only(report, "VOC208")
    assert both.path == two and "'Lata'" in both.message and "Lata_defectuosa" in both.message
    assert not codes(report, apart) & {"VOC207", "VOC208"}


# --------------------------------------------------------------------------- classes


def test_unknown_class_did_you_mean_and_rename(data: Path, classes_file: Path):
    balanced(data)
    typo = pair(data, "typo", (("Lata_defectousa", (10, 10, 40, 30)),))
    vague = pair(data, "vague", (("defectuosa", (10, 10, 40, 30)),))
    alien = pair(data, "alien", (("Tenedor", (10, 10, 40, 30)),))
    report = check(data, classes=read_classes(classes_file))
    found = {f.path: f for f in only(report, "VOC301")}
    assert set(found) == {typo, vague, alien}
    assert "did you mean 'Lata_defectuosa'?" in found[typo].message and found[typo].fix.args[1] == "Lata_defectuosa"
    assert found[vague].fix is None and "Botella_defectuosa" in found[vague].message  # ambiguous
    assert found[alien].fix is None and "not in the class list: Lata, Lata_defectuosa" in found[alien].message
    assert check_xml.main([str(data), "--classes", str(classes_file), "--unsafe-fixes"]) == 1
    assert parse_voc_bytes(typo.read_bytes()).objects[0].name == "Lata_defectuosa"
    assert parse_voc_bytes(vague.read_bytes()).objects[0].name == "defectuosa"


def test_case_and_whitespace_variants(data: Path):
    balanced(data)
    lower = pair(data, "lower", (("lata", (10, 10, 40, 30)),))
    spaced = pair(data, "spaced", (("Lata defectuosa", (10, 10, 40, 30)),))
    report = check(data, classes=CLASSES)
    found = {f.path: f for f in only(report, "VOC302")}
    assert set(found) == {lower, spaced}
    assert found[lower].severity == "error" and found[lower].fix.args[1] == "Lata"
    assert found[spaced].fix.args[1] == "Lata_defectuosa"
    # Without a class list, the variants are told from each other at dataset level.
    variants = only(check(data), "VOC302")
    assert [f.severity for f in variants] == ["warning", "warning"]
    assert any("'Lata defectuosa' (1)" in f.message and "'Lata_defectuosa' (1)" in f.message for f in variants)
    assert any("'Lata' (1), 'lata' (1)" in f.message for f in variants)


def test_unused_class_and_imbalance(data: Path):
    for i in range(12):
        pair(data, f"l{i}", (("Lata", (10, 10, 40, 30)),))
    pair(data, "b0", (("Botella", (10, 10, 40, 30)),))
    report = check(data, classes=CLASSES)
    unused = {f.message.split("'")[1] for f in only(report, "VOC303")}
    assert unused == {"Lata_defectuosa", "Botella_defectuosa"}
    (imb,) = only(report, "VOC304")
    assert "12.0:1" in imb.message and "'Botella'" in imb.message
    assert "--balance repeat)" in imb.message  # 'Botella' is in 1 of 13 files: resampling helps
    assert "VOC304" in codes(check(data))  # without a class list too


def test_imbalance_of_a_class_in_most_files_does_not_suggest_resampling(data: Path):
    # BCCD's kind: the rare class is in half the files, outnumbered 9 to 1 inside them.
    cans = tuple(("Lata", (10 + 30 * (k % 3), 10 + 25 * (k // 3), 35 + 30 * (k % 3), 30 + 25 * (k // 3)))
                 for k in range(9))
    for i in range(4):
        pair(data, f"m{i}", cans + ((("Botella", (100, 10, 120, 60)),) if i % 2 else ()), size=(128, 96))
    (imb,) = only(check(data), "VOC304")
    # 'Botella' is in 2 of 4 files (50 %): resampling images would not change its share.
    assert "18.0:1 ('Lata' 36 objects, 'Botella' 2)" in imb.message
    assert "annotate more 'Botella' (it is already in 50% of the files, so resampling images with --balance " \
        "repeat cannot raise its share)" in imb.message


def test_the_checkers_resampling_threshold_is_trainings_default():
    from detect.checks.dataset_rules import REPEAT_T
    from detect.training.config import TrainConfig
    assert REPEAT_T == TrainConfig().balance_t


def test_no_imbalance_below_ratio(data: Path):
    for i in range(5):
        pair(data, f"l{i}", (("Lata", (10, 10, 40, 30)),))
    pair(data, "b0", (("Botella", (10, 10, 40, 30)),))
    assert "VOC304" not in codes(check(data))


# --------------------------------------------------------------------------- images


def test_image_missing_and_image_without_xml(data: Path):
    balanced(data)
    orphan_xml = data / "noimage.xml"
    orphan_xml.write_text(voc_xml("noimage.jpg"))
    orphan_img = write_image(data / "unlabelled.jpg")
    report = check(data)
    (missing,) = only(report, "VOC401")
    assert missing.path == orphan_xml and missing.severity == "error" and "--images" in missing.message
    (extra,) = only(report, "VOC402")
    assert extra.path == orphan_img and extra.severity == "warning"


def test_filename_differs_from_stem_or_extension(data: Path):
    balanced(data)
    ext = data / "ext.xml"
    ext.write_text(voc_xml("ext.png"))
    write_image(data / "ext.jpg")
    copied = data / "copied.xml"
    copied.write_text(voc_xml("clean0.jpg"))
    report = check(data)
    found = {f.path: f for f in only(report, "VOC403")}
    assert set(found) == {ext, copied}
    assert "extension" in found[ext].message and "ext.jpg" in found[ext].message
    assert "copied from another image" in found[copied].message


def test_zero_size_mismatch_and_fill_fix(data: Path):
    balanced(data)
    zero = pair(data, "zero", xml_size=(0, 0))
    wrong = pair(data, "wrong", xml_size=(640, 480))
    swapped = pair(data, "swapped", xml_size=(48, 64))
    report = check(data)
    (z,) = only(report, "VOC404")
    assert z.path == zero and z.fix.level == "safe" and "64x48" in z.message
    mism = {f.path: f for f in only(report, "VOC405")}
    assert set(mism) == {wrong, swapped}
    assert "640x480" in mism[wrong].message and "swapped" in mism[swapped].message
    assert check_xml.main([str(data), "--fix"]) == 1  # the mismatches stay errors
    fixed = parse_voc_bytes(zero.read_bytes())
    assert (fixed.width, fixed.height, fixed.depth) == (64, 48, 3)
    assert parse_voc_bytes(wrong.read_bytes()).width == 640


def test_fill_missing_size_keeps_layout(data: Path):
    balanced(data)
    xml = pair(data, "nosize", xml_size=None)
    report = check(data)
    (plan,) = plan_fixes(report)
    assert plan.after.decode() == voc_xml("nosize.jpg")


def test_exif_orientation(data: Path):
    """The one rule: boxes in the upright frame. The checker recognises the stored frame of a
    photo shown turned by 90 degrees (VOC409), says once per dataset what it cannot tell, and
    keeps quiet about invalid tags."""
    balanced(data)
    rotated = data / "rot.xml"  # an EXIF-unaware tool: the stored 64x48 frame
    rotated.write_text(voc_xml("rot.jpg"))
    write_image(data / "rot.jpg", orientation=6)
    upright = data / "up.xml"  # LabelImg 1.8.4+: the upright 48x64 frame
    upright.write_text(voc_xml("up.jpg", size=(48, 64), objects=(("Lata", (10, 10, 30, 40)),)))
    write_image(data / "up.jpg", orientation=6)
    for name, tag in (("turned.jpg", 3), ("mirror.jpg", 2), ("junk.jpg", 9)):
        (data / name).with_suffix(".xml").write_text(voc_xml(name))
        write_image(data / name, orientation=tag)
    report = check(data)
    (f,) = only(report, "VOC409")
    assert f.path == rotated and f.severity == "error" and "orientation 6" in f.message and f.fix.level == "safe"
    assert "90 degrees clockwise" in f.message and "48x64" in f.message
    assert not only(report, "VOC405") and not only(report, "VOC203") and codes(report, upright) == set()
    (once,) = only(report, "VOC406")
    assert once.path == data and "tag 2 x1, 3 x1" in once.message and "--exif ignore" in once.message
    assert "9 x1" not in once.message and codes(report, data / "junk.xml") == set()

    ignored = check(data, exif="ignore")
    assert not only(ignored, "VOC406") and not only(ignored, "VOC409")
    (swapped,) = only(ignored, "VOC405")
    assert swapped.path == upright and "--exif ignore does not fit" in swapped.message
    assert any("--exif ignore" in line for line in ignored.summary_lines())


def test_unreadable_image(data: Path):
    balanced(data)
    xml = data / "junk.xml"
    xml.write_text(voc_xml("junk.jpg"))
    (data / "junk.jpg").write_bytes(b"this is not a JPEG at all")
    report = check(data)
    (f,) = only(report, "VOC407")
    assert f.path == xml and "junk.jpg" in f.message and xml in report.files_with_errors


def test_truncated_jpeg_only_with_deep(data: Path):
    balanced(data)
    xml = pair(data, "cut")
    jpg = data / "cut.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-200])
    assert "VOC408" not in codes(check(data))
    (f,) = only(check(data, deep=True), "VOC408")
    assert f.path == xml and "truncated" in f.message and "Premature end of JPEG file" in f.message


# --------------------------------------------------------------------------- dataset level


def devkit(root: Path, ids: list[str], splits: dict[str, list[str]]) -> None:
    for i, sample in enumerate(ids):
        write_image(root / "JPEGImages" / f"{sample}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        cls = CLASSES[i % len(CLASSES)]
        (root / "Annotations" / f"{sample}.xml").write_text(voc_xml(f"{sample}.jpg", objects=((cls, (18, 10, 40, 32)),)))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for name, listed in splits.items():
        (main / f"{name}.txt").write_text("\n".join(listed) + "\n")


def test_duplicate_content_under_two_names(data: Path):
    balanced(data)
    pair(data, "orig")
    (data / "copy.jpg").write_bytes((data / "orig.jpg").read_bytes())
    (data / "copy.xml").write_text(voc_xml("copy.jpg"))
    (f,) = only(check(data), "VOC501")
    assert f.path == data / "orig.jpg" or f.path == data / "copy.jpg"
    assert "same content" in f.message


def test_split_leakage_and_ids_without_xml(data: Path):
    ids = [f"s{i}" for i in range(6)]
    devkit(data, ids, {"train": ["s0", "s1", "s2", "s3"], "val": ["s4", "s3", "ghost"], "test": ["s5"]})
    # s5 (test) is the same picture as s0 (train) under another name.
    (data / "JPEGImages" / "s5.jpg").write_bytes((data / "JPEGImages" / "s0.jpg").read_bytes())
    report = check(data)
    leaks = only(report, "VOC502")
    by_msg = {f.message.split("'")[1]: f for f in leaks}
    assert set(by_msg) == {"s3", "s5"}
    assert by_msg["s3"].path.name == "val.txt" and by_msg["s3"].line == 2 and by_msg["s3"].severity == "error"
    assert "same image as 's0'" in by_msg["s5"].message
    (ghost,) = only(report, "VOC504")
    assert ghost.path.name == "val.txt" and ghost.line == 3
    assert report.files_with_errors == set()  # no XML is wrong; the lists are
    assert check_xml.main([str(data)]) == 1


def test_trainval_lists(data: Path):
    ids = [f"s{i}" for i in range(5)]
    # trainval holds val by design (no leak); s0 in test too is one.
    devkit(data, ids, {"trainval": ["s0", "s1", "s2", "s3"], "val": ["s3"], "test": ["s4", "s0"]})
    leaks = only(check(data), "VOC502")
    assert [(f.path.name, f.line, f.message.split("'")[1]) for f in leaks] == [("test.txt", 2, "s0")]
    assert "trainval.txt and test.txt" in leaks[0].message


def test_stray_files(data: Path):
    balanced(data)
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "._clean0.xml").write_bytes(b"\0\5\26\7 garbage resource fork")
    report = check(data)
    assert {f.path.name for f in only(report, "VOC503")} == {".DS_Store", "._clean0.xml"}
    assert "VOC101" not in codes(report)  # the AppleDouble file is not parsed as an annotation


# --------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("backbone", ["mobilenet", "resnet50"])
def test_candidate_anchor_search_equals_all_anchors(backbone: str):
    from detect.model.anchors import resized_size
    from detect.model.backbones import get_backbone

    scales, ratios = get_backbone(backbone).default_scales, (0.5, 1.0, 2.0)
    rng = np.random.default_rng(0)
    for width, height, input_size in [(640, 480, 800), (100, 333, 500), (37, 1000, 400)]:
        rh, rw = resized_size(width, height, input_size)
        layout = anchor_fit._layout(backbone, scales, ratios, rh, rw)
        xy = rng.random((100, 2), dtype=np.float32) * np.array([rw, rh], dtype=np.float32)
        wh = rng.random((100, 2), dtype=np.float32) ** 2 * np.array([rw, rh], dtype=np.float32) + 1
        gt = np.concatenate([xy, xy + wh], 1)
        fast = anchor_fit._best_iou_one_size(gt, layout)
        full = anchor_fit.box_iou(gt, layout.anchors).max(axis=1)
        assert np.array_equal(fast, full)


def test_numpy_box_iou_is_torchvisions():
    torch = pytest.importorskip("torch")
    from torchvision.ops import box_iou

    rng = np.random.default_rng(1)
    xy = rng.random((50, 2), dtype=np.float32) * 300
    a = np.concatenate([xy, xy + rng.random((50, 2), dtype=np.float32) * 90 + 0.5], 1)
    b = np.round(a[::-1] * 1.1)  # integer corners, as anchors have
    assert np.array_equal(anchor_fit.box_iou(a, b), box_iou(torch.from_numpy(a), torch.from_numpy(b.copy())).numpy())


def test_no_anchor_advice_from_a_handful_of_boxes(data: Path):
    for i in range(3):
        pair(data, f"wide{i}", (("Lata", (10, 40, 110, 60)),), size=(128, 128))
    report = check(data)
    assert report.anchor.share_07 < checks.findings.POOR_FIT_07 and "VOC603" not in codes(report)


def test_anchor_fit_reported_and_unreachable_boxes(data: Path):
    balanced(data)
    thin = pair(data, "thin", (("Botella", (2, 40, 126, 44)),), size=(128, 96))  # 31:1
    report = check(data)
    (fit,) = only(report, "VOC601")
    assert "9 anchors/location" in fit.message and "IoU >= 0.7" in fit.message
    assert report.anchor.n_boxes == 5 and report.anchor.anchors_per_location == 9
    (far,) = only(report, "VOC602")
    assert far.path == thin and far.line == 19  # its <bndbox>
    assert any("anchor fit" in line for line in report.summary_lines())


def test_poor_anchor_coverage_suggests_better_anchors(data: Path):
    # Every box is five times wider than high: ratio 0.5 anchors reach few of them.
    for i in range(10):
        rows = [("Lata", (10, y, 10 + 100 + i, y + 20 + i // 4)) for y in (4, 34, 64, 94)]
        pair(data, f"wide{i}", rows, size=(128, 128))
    report = check(data)
    (poor,) = only(report, "VOC603")
    suggestion = report.anchor.suggestion
    assert suggestion is not None and len(suggestion.ratios) == 3 and len(suggestion.scales) == 3
    assert min(suggestion.ratios) < 0.5
    assert suggestion.share_07 > report.anchor.share_07
    # The advice is options for detect.train; given back to the checker, they do as promised.
    flags = re.search(r"--anchor-scales (\S+) --anchor-ratios (\S+)", poor.message)
    assert flags is not None
    scales, ratios = ([float(v) for v in g.split(",")] for g in flags.groups())
    again = check(data, anchor_scales=scales, anchor_ratios=ratios)
    assert again.anchor.share_07 == suggestion.share_07 and again.anchor.share_05 == suggestion.share_05


# --------------------------------------------------------------------------- CLI


def test_exit_codes_and_usage_errors(data: Path, tmp_path: Path, capsys):
    balanced(data)
    assert check_xml.main([str(data)]) == 0
    warn = pair(data, "warn", xml_size=(0, 0))
    assert check_xml.main([str(data)]) == 0  # a warning only
    err = pair(data, "err", (("Lata", (40, 10, 10, 30)),))
    assert check_xml.main([str(data)]) == 1
    assert check_xml.main([str(data), "--exit-zero"]) == 0
    capsys.readouterr()
    assert check_xml.main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_xml.main([str(empty)]) == 2
    assert check_xml.main([str(data), "--classes", str(tmp_path / "missing.txt")]) == 2
    assert "classes file" in capsys.readouterr().err
    dup = tmp_path / "dup.txt"
    dup.write_text("Lata\nLata\n")
    assert check_xml.main([str(data), "--classes", str(dup)]) == 2
    assert "listed twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        check_xml.main([str(data), "--fix", "--unsafe-fixes"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        check_xml.main([str(data), "--format", "yaml"])
    assert exc.value.code == 2
    assert warn.exists() and err.exists()


def test_text_output_and_summary(data: Path, capsys):
    balanced(data)
    bad = pair(data, "bad", (("Lata", (40, 10, 10, 30)),))
    assert check_xml.main([str(data), "--severity", "warning"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{bad}:") and " VOC201 error " in out[0]
    assert not any(": VOC601 " in line for line in out)  # info hidden by --severity
    text = "\n".join(out)
    assert "5 XML files, 5 images" in text and "objects: 5 in 4 classes" in text
    assert "1 error, 0 warnings, 1 info" in text


def test_json_and_github_formats(data: Path, capsys):
    balanced(data)
    bad = pair(data, "bad", (("Lata", (40, 10, 10, 30)),))
    assert check_xml.main([str(data), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["errors"] == 1 and doc["summary"]["xml_files"] == 5
    assert doc["summary"]["objects_per_class"]["Lata"] == 2
    (f,) = [f for f in doc["findings"] if f["code"] == "VOC201"]
    assert f["path"] == str(bad) and f["line"] == 19 and f["severity"] == "error"
    assert check_xml.main([str(data), "--format", "github"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"::error file={bad},line=19,title=VOC201::") for line in lines)
    assert any(line.startswith("::notice ") and "VOC601" in line for line in lines)


def test_diff_writes_nothing(data: Path, capsys):
    balanced(data)
    xml = pair(data, "zero", xml_size=(0, 0))
    before = xml.read_bytes()
    assert check_xml.main([str(data), "--diff"]) == 0
    out = capsys.readouterr().out
    assert "-\t\t<width>0</width>" in out and "+\t\t<width>64</width>" in out
    assert "nothing was written" in out
    assert xml.read_bytes() == before and not (data / "zero.xml.bak").exists()


def test_fix_keeps_comments_and_unknown_elements(data: Path):
    balanced(data)
    xml = pair(data, "keep", xml_size=(0, 0))
    text = xml.read_text().replace("<segmented>0</segmented>", "<!-- checked by Ana -->\n\t<segmented>0</segmented>\n\t<reviewer>ana</reviewer>")
    xml.write_text(text)
    assert check_xml.main([str(data), "--fix"]) == 0
    after = xml.read_text()
    assert "<!-- checked by Ana -->" in after and "<reviewer>ana</reviewer>" in after
    assert after == text.replace("<width>0</width>", "<width>64</width>").replace("<height>0</height>", "<height>48</height>")


def test_all_three_layouts(tmp_path: Path):
    beside = tmp_path / "beside"
    balanced(beside)
    kit = tmp_path / "kit"
    devkit(kit, ["a", "b", "c", "d"], {})
    folders = tmp_path / "folders"
    for i, c in enumerate(CLASSES):
        write_image(folders / "images" / f"f{i}.jpg")
        (folders / "annots").mkdir(parents=True, exist_ok=True)
        (folders / "annots" / f"f{i}.xml").write_text(voc_xml(f"f{i}.jpg", objects=((c, (18, 10, 40, 32)),)))
    for root, layout in ((beside, "beside"), (kit, "devkit"), (folders, "folders")):
        report = check(root)
        assert report.files.layout == layout
        assert report.errors == [] and report.warnings == [] and report.images_used == 4


def test_parallel_workers_give_the_same_findings(data: Path, monkeypatch):
    balanced(data)
    pair(data, "bad", (("Lata", (40, 10, 10, 30)),))
    pair(data, "zero", xml_size=(0, 0))
    serial = check(data)
    monkeypatch.setattr(checks.check, "PARALLEL_MIN_FILES", 1)
    parallel = check(data, jobs=2)
    assert [format_finding(f) for f in parallel.findings] == [format_finding(f) for f in serial.findings]


def test_script_runs_from_a_clone_without_install(data: Path):
    balanced(data)
    pair(data, "bad", (("Lata", (40, 10, 10, 30)),))
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_xml.py"), str(data), "--severity", "error"],
        capture_output=True,
        text=True,
        cwd=data,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "VOC201 error" in done.stdout and "Traceback" not in done.stderr


def test_voc_round_trip_and_checker_fields():
    ann = Annotation(
        filename="a.jpg",
        width=64,
        height=48,
        objects=(VocObject("Lata", Box(1, 2, 30.5, 40), truncated=True), VocObject("Botella", Box(3, 4, 5, 6))),
    )
    back = parse_voc_bytes(annotation_to_xml(ann))
    assert back == ann
    assert back.objects[0].raw_box == ("1", "2", "30.5", "40") and back.objects[1].index == 1
    assert back.lines["filename"] == 3 and back.lines["size"] == 8
    assert back.encoding == "UTF-8" and not back.has_bom


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is not present")
def test_bccd_real_flaws(capsys):
    report = check_dataset(discover(BCCD))
    zero = {(f.path.name, f.line) for f in only(report, "VOC201")}
    assert zero == {("BloodImage_00338.xml", 163), ("BloodImage_00343.xml", 55)}
    assert {p.name for p in report.files_with_errors} == {"BloodImage_00338.xml", "BloodImage_00343.xml"}
    assert len(report.files.xml_files) == 364 and sum(report.class_counts.values()) == 4888
    assert only(report, "VOC304") and only(report, "VOC207")
    assert check_xml.main([str(BCCD), "--severity", "error"]) == 1
    assert "BloodImage_00338.xml:163:1: VOC201 error" in capsys.readouterr().out
