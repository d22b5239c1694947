"""YOLO (Ultralytics/darknet) datasets in and out, as VOC-style records (torch-free).

A YOLO dataset: images, and for ``.../images/.../x.jpg`` a label file
``.../labels/.../x.txt`` with one line per object, ``class cx cy w h``: a 0-based index into
the class list, then the box centre and size divided by the image width and height (all in
[0, 1]). No label file, or an empty one, is an image with no objects. The class list and the
splits come from ``data.yaml`` (``names``; ``train``/``val``/``test``, each an image folder, a
``.txt`` list of images or a list of those) or, without one, ``classes.txt`` and the
``images/train``/``images/val`` folders.

The image size is not in the label file: it is read from the image header. A VOC box is
``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)``, rounded to 1e-4 px (the
normalised numbers carry no more). Written files keep 10 significant digits, so a VOC box
comes back within 1e-4 px (whole-pixel boxes exactly). YOLO holds no ``difficult``,
``truncated`` or ``pose``: they are dropped on writing (a warning counts them).

Every problem is a :class:`detect.data.foreign.FormatError` naming the file and line.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from detect.common.errors import show
from detect.common.files import read_regular
from detect.data.foreign import ForeignData, FormatError, Sample, split_of_name
from detect.data.images import image_size
from detect.data.voc import Annotation, Box, VocObject

log = logging.getLogger(__name__)

__all__ = ["find_yaml", "is_yolo_folder", "read_yolo", "yolo_line", "yaml_text"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
PRECISION = 1e-4  # px: VOC boxes read from YOLO are rounded to this


def find_yaml(folder: Path) -> Path | None:
    for name in YAML_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def is_yolo_folder(folder: Path) -> bool:
    """A folder is YOLO when it holds a ``data.yaml``, or ``labels/`` beside ``images/``."""
    return find_yaml(folder) is not None or ((folder / "labels").is_dir() and (folder / "images").is_dir())


def _read_text(path: Path, what: str) -> str:
    try:
        return read_regular(path).decode("utf-8-sig")
    except OSError as exc:
        raise FormatError(f"{show(path)}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{show(path)}: the {what} is not UTF-8 text ({exc.reason})") from None


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        names = [str(v) for v in value]
    elif isinstance(value, dict):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise FormatError(f"{show(where)}: names has ids {keys}; number them 0, 1, 2... without gaps")
        names = [str(value[k]) for k in keys]
    else:
        raise FormatError(f"{show(where)}: 'names' is missing or not a list; list the class names in id order")
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise FormatError(f"{show(where)}: 'names' holds an empty or repeated name; give each class one name")
    return names


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _split_images(entry: Any, base: Path, where: str) -> list[Path]:
    out: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        rel = str(item)
        cand = base / rel
        if not cand.exists() and rel.startswith("../"):
            cand = base / rel[3:]  # Roboflow writes ../train/images beside data.yaml
        if cand.is_dir():
            out += _images_under(cand)
        elif cand.is_file() and cand.suffix.lower() == ".txt":
            for line in _read_text(cand, "image list").splitlines():
                line = line.strip()
                if line:
                    p = Path(line)
                    out.append(p if p.is_absolute() else (cand.parent / p))
        else:
            raise FormatError(f"{where}: split entry '{show(rel)}' is neither a folder nor a .txt list under "
                              f"{base}; fix the path")
    return out


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the
    extension ``.txt``; without an ``images`` folder, the ``.txt`` beside the image."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo(data: Path, *, images: Path | None = None) -> ForeignData:
    """Read a YOLO dataset (its folder or its ``data.yaml``).

    Raises:
        FormatError: no class list, a bad ``data.yaml``, or a label line that is not five
            numbers, names a class id past the list, or has a value outside [0, 1].
    """
    yaml_path = data if data.is_file() else find_yaml(data)
    root = data.parent if data.is_file() else data
    splits: dict[str, list[Path]] = {}
    if yaml_path is not None:
        import yaml

        try:
            doc = yaml.safe_load(_read_text(yaml_path, "dataset yaml"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{show(yaml_path)}:{mark.line + 1}" if mark is not None else show(yaml_path)
            raise FormatError(f"{show(where)}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(doc, dict):
            raise FormatError(f"{show(yaml_path)}: not a YAML mapping with names, train and val")
        classes = _names(doc.get("names"), str(yaml_path))
        base = root
        if doc.get("path"):
            p = Path(str(doc["path"]))
            base = p if p.is_absolute() else root / p
        for key in ("train", "val", "test"):
            if doc.get(key):
                splits[key] = _split_images(doc[key], base, f"{show(yaml_path)}: {key}")
        if "train" in splits and "val" in splits and sorted(splits["train"]) == sorted(splits["val"]):
            splits = {}  # one folder named for both: no split
        all_images = sorted({p for v in splits.values() for p in v}) or _images_under(root / "images" if (root / "images").is_dir() else root)
    else:
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise FormatError(f"{show(root)}: a YOLO dataset needs data.yaml (names, train, val) or classes.txt; "
                              "add one listing the class names in id order")
        classes = [n.strip() for n in _read_text(classes_file, "classes file").splitlines() if n.strip()]
        folder = root / "images" if (root / "images").is_dir() else root
        all_images = _images_under(folder)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder != root else []:
            split = split_of_name(sub.name)
            if split in ("train", "val", "test"):
                splits.setdefault(split, []).extend(_images_under(sub))
        for split in ("train", "val", "test"):
            if (root / f"{split}.txt").is_file():
                splits[split] = _split_images(f"{split}.txt", root, str(root))
    if images is not None:
        all_images = sorted(set(all_images) | set(_images_under(images)))
    image_root = root / "images" if (root / "images").is_dir() else root
    samples: list[Sample] = []
    ids_of: dict[Path, str] = {}
    seen: set[str] = set()
    for image in all_images:
        # The path as listed, not resolved: an image that is a link (a converted dataset's
        # default before) keeps its place, so the ids do not depend on how it is stored.
        try:
            rel = image.absolute().relative_to(image_root.absolute())
        except ValueError:
            try:
                rel = image.resolve().relative_to(image_root.resolve())
            except ValueError:
                rel = Path(image.name)
        sample_id = rel.with_suffix("").as_posix()
        if sample_id in seen:
            continue
        seen.add(sample_id)
        ids_of[image] = sample_id
        label = label_path(image)
        width, height = image_size(image)
        objects = _read_labels(label, classes, width, height) if label.is_file() else []
        ann = Annotation(filename=image.name, width=width, height=height, objects=tuple(objects),
                         source=label, object_elements=len(objects))
        samples.append(Sample(sample_id, label, image, ann))
    lists = {k: tuple(ids_of[p] for p in v if p in ids_of) for k, v in splits.items()}
    return ForeignData("yolo", root, tuple(sorted(samples, key=lambda s: s.sample_id)), tuple(classes), lists,
                       "YOLO split lists" if lists else "", tuple(all_images))


def _read_labels(path: Path, classes: Sequence[str], width: int, height: int) -> list[VocObject]:
    objects = []
    for number, line in enumerate(_read_text(path, "label file").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{show(path)}:{number}"
        if len(parts) != 5:
            raise FormatError(f"{show(where)}: {len(parts)} values; a YOLO detection line is 'class cx cy w h' "
                              "(segment polygons and scores are not read)")
        try:
            cls = int(parts[0])
        except ValueError:
            raise FormatError(f"{where}: class '{show(parts[0][:20])}' is not a whole number; write the class "
                              "id (0-based)") from None
        if not 0 <= cls < len(classes):
            raise FormatError(f"{show(where)}: class id {cls} is past the class list ({len(classes)} names, ids 0-"
                              f"{len(classes) - 1}); add the class to names or fix the id")
        try:
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise FormatError(f"{where}: '{show(line.strip()[:60])}' holds a value that is not a number") from None
        for key, value in zip(("cx", "cy", "w", "h"), (cx, cy, w, h)):
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise FormatError(f"{show(where)}: {key} = {parts[('cx', 'cy', 'w', 'h').index(key) + 1]} is outside "
                                  "[0, 1]; YOLO boxes are divided by the image size (re-export normalised boxes)")
        box = Box(*(round(v, 4) for v in ((cx - w / 2) * width, (cy - h / 2) * height,
                                           (cx + w / 2) * width, (cy + h / 2) * height)))
        objects.append(VocObject(name=classes[cls], box=box, line=number, index=len(objects)))
    return objects


def yolo_line(label: int, box: Sequence[float], width: int, height: int) -> str:
    """One label line; the box is clipped into the image first (YOLO cannot hold more)."""
    x0, y0, x1, y1 = (min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                      min(max(box[2], 0.0), width), min(max(box[3], 0.0), height))
    values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return f"{label} " + " ".join(f"{v:.10g}" for v in values)


def yaml_text(classes: Sequence[str], splits: Sequence[str]) -> str:
    """``data.yaml`` as Ultralytics reads it (no ``path``: the yaml's folder is the root).
    Names are JSON-quoted, which YAML reads as double-quoted strings."""
    import json

    lines = ["# written by can-detect (detect.convert); classes in id order"]
    if splits:
        lines += [f"{s}: {s}.txt" for s in splits]
    else:
        lines += ["train: images", "val: images  # no split in the source: both name every image"]
    lines.append(f"nc: {len(classes)}")
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(c, ensure_ascii=False)}" for i, c in enumerate(classes)]
    return "\n".join(lines) + "\n"
