"""Find the XML files, images and split lists of a dataset folder (`--data DIR`).

Three layouts are recognised, the ones real annotated datasets come in:

``devkit``
    The Pascal VOC devkit: ``Annotations/*.xml``, ``JPEGImages/*``, and optionally
    ``ImageSets/Main/{train,val,trainval,test}.txt`` listing sample ids.
``beside``
    LabelImg's default: each ``x.xml`` stands next to its image ``x.jpg`` (in one folder
    or several, e.g. ``train/`` and ``valid/``).
``folders``
    A folder of XMLs and a folder of images under any names (``annots/`` + ``images/``).

An image is found from the XML's ``<filename>``; when that names nothing (annotation tools
write absolute paths of the annotator's machine, or the image was re-encoded), the XML's
stem with the usual image extensions is tried. ``images=DIR`` puts a folder first in that
search.

A sample id is the XML's path relative to the annotation folder, without ``.xml``
(``BloodImage_00001`` in a devkit), which is what ``ImageSets/Main/*.txt`` lists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from detect.common.errors import UsageError, show
from detect.data import coco, yolo
from detect.data.foreign import ForeignData
from detect.data.voc import Annotation, VocError, parse_voc

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "trainval", "test")


class DatasetError(UsageError):
    """The dataset folder cannot be used at all (missing, empty, no XML): a usage error."""


@dataclass(frozen=True)
class DatasetFiles:
    """What :func:`discover` found under a dataset folder.

    Attributes:
        root: the folder given.
        layout: ``"devkit"``, ``"beside"`` or ``"folders"``.
        annotation_dir: the folder sample ids are relative to.
        xml_files: every annotation file, sorted by sample id.
        image_files: every image file found, sorted.
        split_lists: ``ImageSets/Main`` lists by split name (devkit only; else empty).
        stray_files: macOS/Windows debris (``._x.xml``, ``.DS_Store``, ``Thumbs.db``), and
            FIFOs, devices or sockets with a dataset file's name.
        split_lines: for each split, the 1-based line in its list file of each id, in the
            order of ``split_lists`` (lists may hold blank lines), for messages.
    """

    root: Path
    layout: str
    annotation_dir: Path
    xml_files: tuple[Path, ...]
    image_files: tuple[Path, ...]
    split_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stray_files: tuple[Path, ...] = ()
    images_override: Path | None = None
    _by_name: dict[str, tuple[Path, ...]] = field(default_factory=dict, repr=False, compare=False)
    split_lines: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    format: str = "voc"
    classes: tuple[str, ...] = ()
    split_source: str = "ImageSets/Main"
    foreign: dict[Path, Annotation] = field(default_factory=dict, repr=False, compare=False)
    _ids: dict[Path, str] = field(default_factory=dict, repr=False, compare=False)
    _images: dict[Path, Path | None] = field(default_factory=dict, repr=False, compare=False)

    def annotation(self, xml: Path, *, problems: list[VocError] | None = None) -> Annotation:
        """The record of an annotation file: parsed VOC XML, or the COCO/YOLO sample read by
        :func:`discover` (``xml`` is then its label file or ``file.json#images[i]``)."""
        found = self.foreign.get(xml)
        return found if found is not None else parse_voc(xml, problems=problems)

    def sample_id(self, xml: Path) -> str:
        """The id of the sample annotated by ``xml`` (relative path without ``.xml``)."""
        if self._ids:
            return self._ids[xml]
        path = os.fspath(xml)
        prefix = os.path.join(os.fspath(self.annotation_dir), "")
        # Files from discover() lie under annotation_dir as spelled there: a prefix cut is
        # exact and far cheaper than relpath (which resolves both against the cwd).
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.annotation_dir)
        return os.path.splitext(rel)[0].replace(os.sep, "/")

    def split_path(self, split: str) -> Path:
        """The list file of a split: ``ImageSets/Main/<split>.txt``."""
        return self.root / "ImageSets" / "Main" / f"{split}.txt"

    def find_image(self, xml: Path, filename: str | None) -> Path | None:
        """The image ``xml`` annotates, from its ``<filename>`` or else its stem."""
        if self.foreign:
            return self._images.get(xml)
        if filename:
            found = self._lookup(file_name(filename), xml)
            if found is not None:
                return found
        stem = xml.stem
        for ext in IMAGE_EXTENSIONS:  # names are matched case-insensitively: .JPG too
            found = self._lookup(stem + ext, xml)
            if found is not None:
                return found
        return None

    def case_variants(self, folder: Path, name: str) -> tuple[Path, ...]:
        """The images in ``folder`` whose names equal ``name`` but for case, when there are
        several (``A.jpg`` and ``a.jpg``: one folder on Linux, one file on Windows and macOS)."""
        here = tuple(c for c in self._by_name.get(name.lower(), ()) if c.parent == folder)
        return here if len(here) > 1 else ()

    def _lookup(self, name: str, xml: Path) -> Path | None:
        candidates = self._by_name.get(name.lower(), ())
        if not candidates:
            return None
        for folder in (self.images_override, xml.parent, self.root / "JPEGImages"):
            if folder is None:
                continue
            here = [cand for cand in candidates if cand.parent == folder]
            if not here:
                continue
            # A.jpg and a.jpg in one folder: the exact name, never the first that matches in
            # another case; several in other cases only is ambiguous (no image: the checker
            # names the candidates, see case_variants).
            exact = [cand for cand in here if cand.name == name]
            if exact:
                return exact[0]
            return here[0] if len(here) == 1 else None
        if self.images_override is None and len(candidates) == 1:
            return candidates[0]
        return None


def file_name(filename: str) -> str:
    """The last component of a ``<filename>``/``<path>``, which may be a full path from the
    annotator's machine, Windows or POSIX (``C:\\Users\\ana\\img1.jpg`` -> ``img1.jpg``)."""
    return PureWindowsPath(filename).name if "\\" in filename else PurePosixPath(filename).name


def _is_stray(name: str) -> bool:
    return name.startswith("._") or name in (".DS_Store", "Thumbs.db", "desktop.ini")


def _walk(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    xmls: list[Path] = []
    images: list[Path] = []
    stray: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Hidden folders (.git, .cache) never hold the dataset.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath, name)
            if _is_stray(name):
                stray.append(path)
                continue
            if name.startswith("."):
                continue
            suffix = path.suffix.lower()
            if suffix != ".xml" and suffix not in IMAGE_EXTENSIONS:
                continue
            if _special(path):  # a FIFO named x.xml would block every reader: not data
                stray.append(path)
            elif suffix == ".xml":
                xmls.append(path)
            else:
                images.append(path)
    return xmls, images, stray


def _special(path: Path) -> bool:
    """A FIFO, device or socket (a broken link is left for the readers to report)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


FORMATS = ("voc", "coco", "yolo")


def detect_format(data: Path) -> str:
    """``voc``, ``coco`` or ``yolo`` for ``--data``: a ``.json`` file is COCO, a ``.yaml``
    YOLO; a folder with ``data.yaml`` or ``labels/`` beside ``images/`` is YOLO, one with
    COCO JSON and no XML is COCO, anything else VOC."""
    if data.is_file():
        suffix = data.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DatasetError(f"{data}: a file given as data must be a COCO .json or a YOLO .yaml; "
                           "otherwise pass the dataset folder")
    if data.is_dir():
        if yolo.is_yolo_folder(data):
            return "yolo"
        if coco.find_coco_files(data) and not any(data.glob("*.xml")) and not (data / "Annotations").is_dir():
            return "coco"
    return "voc"


def discover(data: str | os.PathLike[str], *, images: str | os.PathLike[str] | None = None,
             format: str | None = None) -> DatasetFiles:
    """Find the annotation files, images and split lists under ``data``.

    Args:
        data: the dataset folder, in any of the three VOC layouts, or a COCO JSON file (or a
            folder of them, one per split), or a YOLO dataset folder or its ``data.yaml``.
        images: a folder to look for images in first (``--images``).
        format: ``voc``, ``coco`` or ``yolo``; None detects it (:func:`detect_format`).

    Raises:
        DatasetError: ``data`` (or ``images``) is not a folder, or holds no XML file.
        detect.data.foreign.FormatError: a COCO or YOLO file that cannot be read.
    """
    root = Path(data)
    if images is not None and not Path(images).is_dir():
        raise DatasetError(f"{images}: no such folder (given as --images)")
    if not root.exists():
        raise DatasetError(f"{show(root)}: no such folder or file; pass the dataset folder (VOC, YOLO), "
                           "a COCO .json or a YOLO data.yaml")
    fmt = format or detect_format(root)
    if fmt == "coco":
        paths = [root] if root.is_file() else coco.find_coco_files(root)
        if not paths:
            raise DatasetError(f"{show(root)}: no COCO .json file found (looked in annotations/ and the folder)")
        folder = root.parent.parent if root.is_file() and root.parent.name == "annotations" else (
            root.parent if root.is_file() else root)
        return _foreign_files(coco.read_coco(paths, root=folder, images=Path(images) if images else None),
                              Path(images) if images else None)
    if fmt == "yolo":
        return _foreign_files(yolo.read_yolo(root, images=Path(images) if images else None),
                              Path(images) if images else None)
    if not root.is_dir():
        raise DatasetError(f"{show(root)}: no such folder; pass the folder that holds your VOC XML files")
    override = None
    if images is not None:
        override = Path(images)
        if not override.is_dir():
            raise DatasetError(f"{override}: no such folder (given as --images)")

    devkit = (root / "Annotations").is_dir()
    ann_dir = root / "Annotations" if devkit else root
    xmls, imgs, stray = _walk(ann_dir)
    if devkit or override is not None:
        # Images may live outside the annotation folder: JPEGImages/ or --images.
        for folder in (root / "JPEGImages", override):
            if folder is not None and folder.is_dir() and folder != ann_dir:
                _, more, more_stray = _walk(folder)
                imgs.extend(more)
                stray.extend(more_stray)
    if not xmls:
        raise DatasetError(
            f"{show(root)}: no .xml annotation files found; point --data at a VOC devkit folder "
            "(Annotations/, JPEGImages/), a folder of images with their LabelImg XML beside "
            "them, or a folder holding an XML folder and an image folder"
        )
    imgs = sorted(set(imgs))
    by_name: dict[str, list[Path]] = {}
    for img in imgs:
        by_name.setdefault(img.name.lower(), []).append(img)

    if devkit:
        layout = "devkit"
    else:
        xml_dirs = {x.parent for x in xmls}
        img_dirs = {i.parent for i in imgs}
        layout = "beside" if xml_dirs & img_dirs else "folders"

    split_lists: dict[str, tuple[str, ...]] = {}
    split_lines: dict[str, tuple[int, ...]] = {}
    main = root / "ImageSets" / "Main"
    if devkit and main.is_dir():
        for name in SPLIT_NAMES:
            f = main / f"{name}.txt"  # = DatasetFiles.split_path(name)
            if f.is_file():
                ids = []
                numbers = []
                try:
                    text = f.read_text(encoding="utf-8-sig", errors="replace")
                except OSError as exc:
                    raise DatasetError(f"{f}: cannot read split list: {exc.strerror or exc}") from None
                for number, line in enumerate(text.splitlines(), start=1):
                    parts = line.split()
                    # Per-class lists ("id  1") also exist in VOC; only plain lists name splits.
                    if parts:
                        ids.append(parts[0])
                        numbers.append(number)
                split_lists[name] = tuple(ids)
                split_lines[name] = tuple(numbers)

    files = DatasetFiles(
        root=root,
        layout=layout,
        annotation_dir=ann_dir,
        xml_files=(),
        image_files=tuple(imgs),
        split_lists=split_lists,
        stray_files=tuple(sorted(stray)),
        images_override=override,
        _by_name={k: tuple(v) for k, v in by_name.items()},
        split_lines=split_lines,
    )
    ordered = tuple(sorted(xmls, key=files.sample_id))
    object.__setattr__(files, "xml_files", ordered)
    log.debug("%s: %s layout, %d XML, %d images", root, layout, len(ordered), len(imgs))
    return files


def _foreign_files(found: ForeignData, override: Path | None) -> DatasetFiles:
    if not found.samples:
        raise DatasetError(f"{show(found.root)}: no images in this {found.format.upper()} dataset")
    return DatasetFiles(
        root=found.root,
        layout=found.format,
        annotation_dir=found.root,
        xml_files=tuple(s.source for s in found.samples),
        image_files=tuple(sorted(found.image_files)),
        split_lists=dict(found.split_lists),
        images_override=override,
        format=found.format,
        classes=found.classes,
        split_source=found.split_source,
        foreign={s.source: s.annotation for s in found.samples},
        _ids={s.source: s.sample_id for s in found.samples},
        _images={s.source: s.image for s in found.samples},
    )


def _hash_key(sample_id: str) -> str:
    return hashlib.sha1(sample_id.encode("utf-8")).hexdigest()


def split_by_name(ids: list[str] | tuple[str, ...], *, val_fraction: float = 0.2) -> dict[str, list[str]]:
    """Split sample ids into ``train``/``val`` deterministically, by a hash of each id.

    The val set is the ``round(n * val_fraction)`` ids with the smallest SHA-1; this does
    not depend on the order files are listed in, and adding files to a dataset moves few
    of the old ones across the split. Both lists come back sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(ids))
    n_val = round(len(unique) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(unique) > 1:
        n_val = 1
    by_hash = sorted(unique, key=_hash_key)
    val = sorted(by_hash[:n_val])
    train = sorted(by_hash[n_val:])
    return {"train": train, "val": val}


FOLD_SEED = 0  # fixed, so the folds do not move with the training --seed


def kfold_split(ids: list[str] | tuple[str, ...], *, folds: int, fold: int, seed: int = FOLD_SEED) -> dict[str, list[str]]:
    """Fold ``fold`` of a ``folds``-fold split: its ids are ``val``, the rest ``train``.

    The unique ids are sorted, shuffled with ``random.Random(seed)`` and dealt round-robin
    into ``folds`` parts, so the split depends on neither the listing order nor the
    machine, the parts differ in size by at most one, and the ``val`` lists of folds
    ``0..folds-1`` together hold every id exactly once. Training one model per fold lets
    every image be audited (``detect.audit``) or scored by a model that never saw it.
    Both lists come back sorted.

    Raises:
        UsageError: ``folds`` under 2, ``fold`` outside ``0..folds-1``, or fewer ids than folds.
    """
    if folds < 2:
        raise UsageError(f"--folds {folds}: give 2 or more folds (or leave --folds out)")
    if not 0 <= fold < folds:
        raise UsageError(f"--fold {fold}: with --folds {folds} the fold is 0 to {folds - 1}")
    unique = sorted(set(ids))
    if len(unique) < folds:
        raise UsageError(f"--folds {folds}: the data has only {len(unique)} annotated image(s); use fewer folds")
    order = list(unique)
    random.Random(seed).shuffle(order)
    val = set(order[fold::folds])
    return {"train": [i for i in unique if i not in val], "val": [i for i in unique if i in val]}


def resolve_splits(files: DatasetFiles, *, val_fraction: float = 0.2, folds: int = 0,
                   fold: int = 0) -> tuple[dict[str, list[str]], str]:
    """``train``/``val``/``test`` id lists and where they came from.

    With ``folds`` (2 or more), fold ``fold`` of :func:`kfold_split` over every annotated id
    (except a listed ``test`` split, which stays the test split). Otherwise
    ``ImageSets/Main`` lists win when the devkit has train and val lists (``trainval``
    minus ``val`` stands in for a missing train list); otherwise :func:`split_by_name`.
    Ids listed that have no XML are dropped with a warning.
    """
    known = {files.sample_id(x) for x in files.xml_files}
    lists = files.split_lists
    if folds:
        test = [i for i in lists.get("test", ()) if i in known]
        splits = kfold_split(sorted(known - set(test)), folds=folds, fold=fold)
        if test:
            splits["test"] = test
        return splits, f"fold {fold} of {folds} (seeded shuffle of the ids, seed {FOLD_SEED})"
    where = "ImageSets/Main/%s.txt" if files.format == "voc" else f"the {files.format.upper()} %s split"
    if "val" in lists and ("train" in lists or "trainval" in lists):
        val = list(lists["val"])
        train = list(lists["train"]) if "train" in lists else [i for i in lists["trainval"] if i not in set(val)]
        splits = {"train": train, "val": val}
        if "test" in lists:
            splits["test"] = list(lists["test"])
        for name, ids in splits.items():
            missing = [i for i in ids if i not in known]
            if missing:
                log.warning(
                    where + " lists %d id(s) with no annotation (first: %s); they are skipped",
                    name, len(missing), missing[0],
                )
            splits[name] = [i for i in ids if i in known]
        return splits, files.split_source
    return split_by_name(sorted(known), val_fraction=val_fraction), f"hash of file name, val_fraction={val_fraction}"


class ClassesError(UsageError):
    """The classes file cannot be used (a usage error)."""


def read_classes(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file (``--classes``): one per line; blank lines and lines
    starting with ``#`` skipped. Training, evaluation and the checker all read it here.

    Raises:
        ClassesError: unreadable, empty, or a name listed twice.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassesError(f"{show(path)}: cannot read the classes file: {getattr(exc, 'strerror', None) or exc}") from None
    names: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise ClassesError(f"{show(path)}:{number}: class '{show(name)}' is listed twice; keep one line per class")
        names.append(name)
    if not names:
        raise ClassesError(f"{show(path)}: no class names in it; write one class name per line")
    return names
