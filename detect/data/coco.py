"""COCO detection JSON in and out, as VOC-style records (torch-free).

Reading (:func:`read_coco`): one or several JSON files (one per split: ``instances_train.json``,
``instances_val.json``...). ``bbox`` is ``[x, y, width, height]`` in pixels from the image's
top-left corner on continuous coordinates (the COCO format page; pycocotools computes IoU and
area as ``w * h``, no +1), so a VOC box is ``(x, y, x + w, y + h)``. Categories are ordered by
id, which is the class order. ``iscrowd: 1`` marks a crowd region, which COCO's evaluation
ignores; it is read as ``difficult`` (ignored by our evaluation too) and counted in a warning.
``attributes.difficult`` / ``truncated`` / ``pose`` (the key CVAT writes its attributes under)
are read back.

Writing (:func:`coco_dict`): categories ``1..K`` in class order (0 is the background id in
torchvision and many tools), images and annotations numbered from 1, ``iscrowd: 0`` always,
``area = w * h``, and ``difficult``/``truncated``/``pose`` under ``attributes``. ``difficult`` is
not mapped to ``iscrowd``: a crowd is a region of many instances whose box is not one object,
and COCO trainers (detectron2, mmdetection) drop crowd boxes from training, while a difficult
object is one real instance we train on.

Every problem is a :class:`detect.data.foreign.FormatError` naming the file and the JSON path.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from detect.common.errors import show
from detect.common.files import read_regular
from detect.data.foreign import ForeignData, FormatError, Sample, split_of_name
from detect.data.voc import Annotation, Box, VocObject

log = logging.getLogger(__name__)

__all__ = ["coco_dict", "find_coco_files", "read_coco"]


def _load(path: Path) -> Any:
    try:
        data = read_regular(path)
    except OSError as exc:
        raise FormatError(f"{show(path)}: cannot read the COCO file: {exc.strerror or exc}") from None
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise FormatError(f"{show(path)}: not UTF-8 text ({exc.reason}); a COCO file is UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{show(path)}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}; repair the file "
                          "or export it again") from None


def find_coco_files(folder: Path) -> list[Path]:
    """The COCO JSON files of a folder: ``annotations/*.json``, else ``*.json``, else one
    ``*.json`` in each subfolder (Roboflow's ``train/_annotations.coco.json``)."""
    for candidates in (sorted((folder / "annotations").glob("*.json")), sorted(folder.glob("*.json")),
                       sorted(folder.glob("*/*.json"))):
        found = [p for p in candidates if p.is_file() and _looks_coco(p)]
        if found:
            return found
    return []


def _looks_coco(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"images"' in head or b'"categories"' in head or b'"annotations"' in head or b'"info"' in head


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _split_for(path: Path, several: bool) -> str | None:
    if not several:
        return None
    name = path.stem if split_of_name(path.stem) else path.parent.name
    return split_of_name(name)


def read_coco(paths: Sequence[Path], *, root: Path, images: Path | None = None) -> ForeignData:
    """Read COCO detection files into samples (one per ``images[]`` entry).

    Args:
        paths: the JSON files; with several, each file's split comes from its name
            (``instances_val.json`` -> ``val``) or its folder's (``valid/``).
        root: the dataset folder (or the JSON's folder), where images are looked for.
        images: ``--images``, searched first.

    Raises:
        FormatError: bad JSON, a missing or malformed key, an annotation whose image id or
            category id is not listed, two categories with one id or name.
    """
    classes: dict[int, str] = {}
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    splits: dict[str, list[str]] = {}
    crowd = 0
    for path in paths:
        doc = _load(path)
        if not isinstance(doc, dict):
            raise FormatError(f"{show(path)}: the top level is a {type(doc).__name__}, not a COCO object with "
                              "images, annotations and categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                what = "missing" if key not in doc else f"a {type(doc[key]).__name__}, not a list"
                raise FormatError(f"{show(path)}: '{key}' is {what}; a COCO detection file has images, annotations "
                                  "and categories lists")
        cats: dict[Any, str] = {}
        for i, cat in enumerate(doc["categories"]):
            where = f"{show(path)}#categories[{i}]"
            if not isinstance(cat, dict) or not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise FormatError(f"{show(where)}: a category needs a non-empty 'name'")
            cid = cat.get("id")
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise FormatError(f"{where}.id: {show(cid)!s} is not an integer id")
            if cid in cats:
                raise FormatError(f"{show(where)}.id: {cid} is used twice in categories; give each category its own id")
            name = cat["name"].strip()
            if name in cats.values():
                raise FormatError(f"{where}.name: '{show(name)}' is listed twice; keep one category per name")
            cats[cid] = name
            if classes.get(cid, name) != name:
                raise FormatError(f"{where}: id {cid} is '{show(name)}' here but '{show(classes[cid])}' in "
                                  "another file; use one category list in every split")
            classes[cid] = name
        split = _split_for(path, len(paths) > 1)
        index: dict[Any, int] = {}
        entries: list[dict] = []
        for i, img in enumerate(doc["images"]):
            where = f"{show(path)}#images[{i}]"
            if not isinstance(img, dict):
                raise FormatError(f"{show(where)}: not an object")
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise FormatError(f"{show(where)}.file_name: missing; name the image file")
            for key in ("width", "height"):
                if not isinstance(img.get(key), int) or isinstance(img.get(key), bool) or img[key] <= 0:
                    raise FormatError(f"{where}.{key}: {show(img.get(key))} is not a positive whole number of "
                                      "pixels; write the image's size")
            if img.get("id") in index:
                raise FormatError(f"{where}.id: {show(img.get('id'))} is used by images[{index[img['id']]}] too; "
                                  "give each image its own id")
            index[img.get("id")] = i
            entries.append({"img": img, "objects": []})
        for j, ann in enumerate(doc["annotations"]):
            where = f"{show(path)}#annotations[{j}]"
            if not isinstance(ann, dict):
                raise FormatError(f"{show(where)}: not an object")
            if ann.get("image_id") not in index:
                raise FormatError(f"{where}.image_id: {show(ann.get('image_id'))} names no entry of images[]; "
                                  "add the image or delete the annotation")
            if ann.get("category_id") not in cats:
                raise FormatError(f"{where}.category_id: {show(ann.get('category_id'))} is not in categories[] "
                                  f"(ids {', '.join(map(str, sorted(cats))) or 'none'}); add the category or fix the id")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
                raise FormatError(f"{where}.bbox: {show(json.dumps(bbox))[:60]} is not [x, y, width, height] "
                                  "of four numbers")
            x, y, w, h = (float(v) for v in bbox)
            if w < 0 or h < 0:
                raise FormatError(f"{show(where)}.bbox: width {w:g} or height {h:g} is negative; COCO boxes are "
                                  "[x, y, width, height]")
            attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            is_crowd = bool(ann.get("iscrowd"))
            crowd += is_crowd
            entries[index[ann["image_id"]]]["objects"].append(VocObject(
                name=cats[ann["category_id"]],
                box=Box(x, y, x + w, y + h),
                difficult=bool(attrs.get("difficult")) or is_crowd,
                truncated=bool(attrs.get("truncated")),
                pose=str(attrs.get("pose") or "Unspecified"),
                index=j,
            ))
        ids = []
        here: dict[str, int] = {}
        for i, entry in enumerate(entries):
            img = entry["img"]
            rel = PurePosixPath(str(img["file_name"]).replace("\\", "/"))
            sample_id = _sample_id(rel)
            if sample_id in here:
                # A second entry for one image in one file: its boxes would be silently lost.
                raise FormatError(f"{show(path)}#images[{i}].file_name: '{show(img['file_name'])}' is named by "
                                  f"images[{here[sample_id]}] too; keep one entry per image (move its annotations "
                                  "to that entry's id)")
            here[sample_id] = i
            if sample_id in seen:
                ids.append(sample_id)
                continue
            seen[sample_id] = path
            image = _find_image(rel, path, root, images)
            ann = Annotation(filename=rel.name, width=img["width"], height=img["height"],
                             objects=tuple(entry["objects"]), source=path,
                             object_elements=len(entry["objects"]))
            samples.append(Sample(sample_id, Path(f"{path}#images[{i}]"), image, ann))
            ids.append(sample_id)
        if split is not None:
            splits.setdefault(split, []).extend(ids)
    if crowd:
        log.warning("%d COCO annotation(s) with iscrowd=1 read as difficult (ignored by the evaluation)", crowd)
    ordered = [classes[k] for k in sorted(classes)]
    samples.sort(key=lambda s: s.sample_id)
    found = sorted({s.image for s in samples if s.image is not None})
    return ForeignData("coco", root, tuple(samples), tuple(ordered),
                       {k: tuple(v) for k, v in splits.items()},
                       "COCO files per split" if splits else "", tuple(found))


def _sample_id(rel: PurePosixPath) -> str:
    """The sample id of a ``file_name``: its path without extension, ``..``, ``.`` and a
    leading ``/`` left out (a path in a downloaded file names no place on this machine)."""
    parts = [p for p in rel.with_suffix("").parts if p not in ("", ".", "..", "/") and not p.endswith(":")]
    return "/".join(parts) or rel.stem or "image"


def _find_image(rel: PurePosixPath, json_path: Path, root: Path, images: Path | None) -> Path | None:
    bases = [images] if images is not None else []
    bases += [json_path.parent, root, root / "images", json_path.parent.parent / "images", json_path.parent / "images"]
    if json_path.parent.name == "annotations":
        bases.append(json_path.parent.parent)
    for base in bases:
        for cand in (base / rel, base / rel.name):
            if cand.is_file():
                return cand
    return None


def coco_dict(samples: Iterable[tuple[str, Annotation, int, int]], classes: Sequence[str]) -> dict:
    """A COCO detection document for ``(file_name, annotation, width, height)`` tuples.

    Boxes are written as ``[xmin, ymin, xmax - xmin, ymax - ymin]`` with full float precision
    (integers stay integers), so reading back gives the VOC box to within one float rounding
    (exactly for whole-pixel boxes).
    """
    label = {c: i + 1 for i, c in enumerate(classes)}
    images, annotations = [], []
    for file_name, ann, width, height in samples:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for o in ann.objects:
            x0, y0, x1, y1 = o.box
            w, h = x1 - x0, y1 - y0
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label[o.name],
                "bbox": [_num(x0), _num(y0), _num(w), _num(h)],
                "area": _num(w * h),
                "iscrowd": 0,
                "segmentation": [],
                "attributes": {"difficult": o.difficult, "truncated": o.truncated, "pose": o.pose},
            })
    return {
        "info": {"description": "written by can-detect (detect.convert)"},
        "licenses": [],
        "categories": [{"id": i + 1, "name": c, "supercategory": ""} for i, c in enumerate(classes)],
        "images": images,
        "annotations": annotations,
    }


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def relpath_posix(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()
