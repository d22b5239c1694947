"""Convert a dataset between Pascal VOC, COCO detection JSON and YOLO (torch-free).

:func:`convert` reads the source through :func:`detect.data.layout.discover` (any VOC layout,
COCO files, a YOLO folder or yaml), so it sees exactly the records training sees, and writes:

``voc``   ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, ``ImageSets/Main/<split>.txt``,
          ``classes.txt``
``coco``  ``annotations/instances_<split>.json`` (``instances.json`` without splits),
          ``images/<id>.<ext>``, ``classes.txt``
``yolo``  ``images/<id>.<ext>``, ``labels/<id>.txt``, ``<split>.txt`` image lists, ``data.yaml``
          and ``classes.txt``

Ids, and so the output's file names, are the images' names (``images/raccoon-1.jpg``,
``labels/raccoon-1.txt``) where those are unique in the dataset (case aside), and the sample's
sub-path (``train/a``, ``val/a``) only for the names that are not: the same rule from every
source format and layout. Nothing is ever written outside ``dst``: a path in a source file
(``../../x.jpg``, ``/abs/x.jpg``) gives at most a sub-path inside it.

Images are hard links to the source images where ``dst`` is on the same file system (a
second name of the same file: tools, zips and uploads read it as a file), else copies;
``link="copy"`` always copies, ``link="symlink"`` makes absolute symbolic links. The
whole dataset is written into a hidden folder beside ``dst`` and renamed into place at the
end, so ``dst`` is either absent or complete; ``dst`` must not exist or be an empty folder,
and must neither lie inside the source nor hold it.
Boxes are carried as read (not clipped, except by YOLO, which cannot hold a box outside the
image); the class order is the source's stated one (COCO category ids, YOLO names,
``--classes``/``classes.txt``) or, for VOC without a list, the names sorted.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from detect.common.errors import UsageError, show
from detect.common.files import LINK_MODES, is_inside, place_file, write_atomic
from detect.data import coco, yolo
from detect.data.layout import DatasetFiles, FORMATS, discover, read_classes
from detect.data.records import walk
from detect.data.voc import Annotation, write_voc

log = logging.getLogger(__name__)

__all__ = ["ConvertError", "Converted", "convert", "gather", "output_ids", "safe_id"]


class ConvertError(UsageError):
    """The conversion cannot start or cannot be done as asked (exit 2)."""


@dataclass
class Item:
    sample_id: str
    image: Path
    annotation: Annotation
    width: int
    height: int


@dataclass
class Converted:
    """What :func:`convert` did, for the command's summary line."""

    source_format: str
    target_format: str
    dst: Path
    images: int
    objects: int
    classes: list[str]
    splits: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)


def gather(files: DatasetFiles, classes: Sequence[str] | None = None) -> tuple[list[Item], list[str], dict[str, list[str]]]:
    """Every sample of ``files`` with its image and real size (upright: the EXIF
    orientation applied, as training reads it), the class order and the split
    lists (``trainval`` left out when ``train`` and ``val`` are both given).

    Raises:
        ConvertError: annotations that cannot be parsed, images not found, or a class that
            is not in the stated class list.
    """
    found, problems = walk(files)  # the records' walk: sizes upright, as training sees them
    items = [Item(f.sample_id, f.image, f.annotation, f.width, f.height) for f in found]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConvertError(f"{problems[0]}{more}; run `python tools/check_xml.py` on the source for the list")
    names = sorted({o.name for it in items for o in it.annotation.objects})
    if classes is None:
        stated = files.classes or ((tuple(read_classes(files.root / "classes.txt")))
                                   if files.format == "voc" and (files.root / "classes.txt").is_file() else ())
        classes = list(stated) if stated else names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ConvertError(f"class(es) {', '.join(map(show, unknown))} are in the data but not in the class list "
                           f"({', '.join(map(show, classes))}); add them (--classes FILE) or fix the labels")
    known = {it.sample_id for it in items}
    splits = {k: [i for i in v if i in known] for k, v in files.split_lists.items()}
    if "train" in splits and "val" in splits:
        splits.pop("trainval", None)
    return items, list(classes), splits


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str, source_format: str | None = None,
            images: str | os.PathLike[str] | None = None, copy: bool = False, link: str = "link",
            classes_file: str | os.PathLike[str] | None = None) -> Converted:
    """Convert the dataset at ``src`` into a new dataset folder ``dst`` in format ``to``;
    images are placed by ``link`` (:data:`detect.common.files.LINK_MODES`; ``copy=True``
    is ``link="copy"``)."""
    if to not in FORMATS:
        raise ConvertError(f"--to {show(to)}: choose one of {', '.join(FORMATS)}")
    link = "copy" if copy else link
    if link not in LINK_MODES:
        raise ConvertError(f"link {show(link)}: choose one of {', '.join(LINK_MODES)}")
    dst = Path(dst)
    if dst.is_symlink() or (dst.exists() and (not dst.is_dir() or any(dst.iterdir()))):
        raise ConvertError(f"{show(dst)}: exists and is not an empty folder; name a new folder for the converted dataset")
    src_path = Path(src)
    _check_apart(src_path if src_path.is_dir() else src_path.parent, dst)
    files = discover(src, images=images, format=source_format)
    for folder in (files.root, files.images_override):
        if folder is not None:
            _check_apart(folder, dst)
    classes = read_classes(classes_file) if classes_file is not None else None
    items, classes, splits = gather(files, classes)
    ids = output_ids(items)
    items = [Item(ids[it.sample_id], it.image, it.annotation, it.width, it.height) for it in items]
    splits = {k: [ids[i] for i in v] for k, v in splits.items()}
    parent = dst.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{dst.name}.tmp-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        lost = _WRITERS[to](work, items, classes, splits, link)
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.replace(work, dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Converted(files.format, to, dst, len(items), sum(len(it.annotation.objects) for it in items),
                     classes, {k: len(v) for k, v in splits.items()}, lost)


def _check_apart(source: Path, dst: Path) -> None:
    if is_inside(dst, source):
        raise ConvertError(f"{show(dst)}: lies inside the source dataset {show(source)} (the source would no longer "
                           "load as it did); name a folder outside it")
    if is_inside(source, dst):
        raise ConvertError(f"{show(dst)}: holds the source dataset {show(source)}; name a new folder outside it")


def safe_id(sample_id: str) -> str:
    """``sample_id`` as a relative path that stays inside the folder it is joined to: no
    ``..``, ``.``, empty or drive parts, no leading ``/`` (a COCO ``file_name`` of
    ``../../x.jpg`` or ``/abs/x.jpg`` comes from a file, not from the user)."""
    text = sample_id.replace("\\", "/")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".", "..", "/") and not p.endswith(":")]
    return "/".join(parts) or "image"


def output_ids(items: Sequence[Item]) -> dict[str, str]:
    """The output id of each sample id: its image's name (without extension) where no other
    image has that name, case aside (``annotations/raccoon-1`` -> ``raccoon-1``); its sub-path
    (made safe, :func:`safe_id`) where names clash, so ``train/a`` and ``val/a`` stay apart."""
    names = {it.sample_id: it.image.stem for it in items}
    count: dict[str, int] = {}
    for name in names.values():
        count[name.casefold()] = count.get(name.casefold(), 0) + 1
    ids = {sid: name if count[name.casefold()] == 1 else safe_id(sid) for sid, name in names.items()}
    if len({i.casefold() for i in ids.values()}) != len(ids):  # a sub-path equal to another's name
        ids = {sid: safe_id(sid) for sid in names}
    return ids


def _target(folder: Path, rel: str) -> Path:
    target = folder / rel
    if not is_inside(target.parent, folder.parent):  # safe_id makes this impossible; a last guard
        raise ConvertError(f"{show(rel)}: would be written outside {show(folder.parent)}; refused")
    return target


def _place_image(item: Item, folder: Path, link: str) -> str:
    rel = item.sample_id + item.image.suffix
    place_file(item.image, _target(folder, rel), link)
    return rel


def _write_voc(out: Path, items: list[Item], classes: list[str], splits: dict[str, list[str]], link: str) -> dict:
    for it in items:
        rel = _place_image(it, out / "JPEGImages", link)
        # The real upright size, as training reads the image (not the size the source states).
        ann = Annotation(filename=Path(rel).name, width=it.width, height=it.height, depth=it.annotation.depth,
                         objects=it.annotation.objects, folder="JPEGImages")
        write_voc(ann, _target(out / "Annotations", f"{it.sample_id}.xml"))
    for name, ids in splits.items():
        write_atomic(out / "ImageSets" / "Main" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    write_atomic(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    return {}


def _write_coco(out: Path, items: list[Item], classes: list[str], splits: dict[str, list[str]], link: str) -> dict:
    rels = {it.sample_id: _place_image(it, out / "images", link) for it in items}
    by_id = {it.sample_id: it for it in items}
    groups = {f"instances_{k}.json": v for k, v in splits.items()} or {"instances.json": [it.sample_id for it in items]}
    for name, ids in groups.items():
        doc = coco.coco_dict(((rels[i], by_id[i].annotation, by_id[i].width, by_id[i].height) for i in ids), classes)
        write_atomic(out / "annotations" / name, coco.dumps(doc))
    write_atomic(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    return {}


def _write_yolo(out: Path, items: list[Item], classes: list[str], splits: dict[str, list[str]], link: str) -> dict:
    label = {c: i for i, c in enumerate(classes)}
    lost = {"difficult": 0, "truncated": 0, "clipped": 0}
    rels = {}
    for it in items:
        rels[it.sample_id] = _place_image(it, out / "images", link)
        lines = []
        for o in it.annotation.objects:
            lost["difficult"] += o.difficult
            lost["truncated"] += o.truncated
            x0, y0, x1, y1 = o.box
            lost["clipped"] += x0 < 0 or y0 < 0 or x1 > it.width or y1 > it.height
            lines.append(yolo.yolo_line(label[o.name], o.box, it.width, it.height) + "\n")
        write_atomic(_target(out / "labels", f"{it.sample_id}.txt"), "".join(lines))
    for name, ids in splits.items():
        write_atomic(out / f"{name}.txt", "".join(f"./images/{rels[i]}\n" for i in ids))
    write_atomic(out / "data.yaml", yolo.yaml_text(classes, list(splits)))
    write_atomic(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    lost = {k: v for k, v in lost.items() if v}
    if lost:
        log.warning("YOLO cannot hold %s", ", ".join(f"{k} ({v} object(s))" for k, v in lost.items()))
    return lost


_WRITERS = {"voc": _write_voc, "coco": _write_coco, "yolo": _write_yolo}
