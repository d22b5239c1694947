"""A procedural demo dataset: cans and bottles, whole and defective, as a Pascal VOC devkit.

``make_demo_dataset(out)`` draws synthetic photos with OpenCV and writes them with their
annotations, so the pipeline can be tried (and tested) without the real data::

    out/
      Annotations/demo_00000.xml ...      (written by detect.data.voc.write_voc)
      JPEGImages/demo_00000.jpg ...       (JPEG quality 90)
      ImageSets/Main/train.txt val.txt trainval.txt
      classes.txt                         (DEMO_CLASSES, one per line)
      .complete                           (JSON: the parameters; written last)

What is drawn: varied backgrounds (:mod:`~detect.demo.background`) with 0 to 6 objects per
image (:mod:`~detect.demo.scene`: about 5% of the images have none, 12% to 60% of the image
height, later objects occluding earlier ones, some cut by the image border):

* ``Lata`` (:mod:`~detect.demo.cans`): an upright cylinder (sometimes lying on its side) with elliptical rims, metallic
  shading, a printed label band and a pull tab.
* ``Botella`` (:mod:`~detect.demo.bottles`): glass (green, brown, blue-ish or clear, translucent) with shoulders, a neck,
  a cap and a paper label.
* ``Lata_defectuosa``: 1-2 of: a dent (dark crescent and a bent outline), crushed sides
  (body pinched in the middle, with creases), a torn label (part missing, jagged edge).
* ``Botella_defectuosa``: 1-2 of: cracks (thin jagged light/dark lines), a broken neck
  (jagged top, no cap), a chipped body (a bite out of the outline).

``holdout_defect`` (one of :data:`DEFECT_KINDS`) leaves one defect kind out of the training
split: train images never show it, val images do, and ``defects.json`` lists the defect kinds
of each object (``{"demo_00003": [[], ["torn_label"], ...]}``, in the XML's object order), so
defects a model never saw can be measured apart from those it did.

Normal and defective objects share their colour palettes, so the classes differ by shape
and marks only.

Boxes are the extent of the visible pixels (the VOC rule), in whole pixels on continuous
coordinates (``xmax = last column + 1``), so ``0 <= xmin < xmax <= width``.

Determinism: the output is a function of the parameters alone. Image ``k`` is drawn from
its own generator, ``default_rng(SeedSequence(seed, spawn_key=(k,)))``, so it does not
depend on ``num_images``; the train/val split is :func:`detect.data.layout.split_by_name`'s.

Atomicity: everything is written into a hidden sibling folder that is renamed to ``out``
once finished, and the ``.complete`` marker is its last file; :func:`is_complete` tells a
finished dataset with given parameters from anything else.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detect.common.errors import show
from detect.data.layout import split_by_name
from detect.data.voc import Annotation, VocObject, write_voc
from detect.demo.bottles import BOTTLE_DEFECTS
from detect.demo.cans import CAN_DEFECTS
from detect.demo.scene import DEMO_CLASSES, _Scene

__all__ = [
    "DEFECT_KINDS",
    "DEMO_CLASSES",
    "MARKER_NAME",
    "is_complete",
    "make_demo_dataset",
    "read_marker",
    "render_demo_image",
]

log = logging.getLogger(__name__)

MARKER_NAME = ".complete"
DEFECTS_NAME = "defects.json"
DEFECT_KINDS: dict[str, tuple[str, ...]] = {"Lata": CAN_DEFECTS, "Botella": BOTTLE_DEFECTS}
"""The defect kinds drawn on each base class (``--holdout-defect`` names one)."""
GENERATOR = "detect.demo"  # the marker's name for this generator: a stored format, kept across module moves
# Bump when the drawing changes, so that datasets made by an older version are remade.
GENERATOR_VERSION = 1
JPEG_QUALITY = 90

_MIN_SIDE = 32
_MAX_SIDE = 8192


# --------------------------------------------------------------------------- public API


def make_demo_dataset(
    out: str | os.PathLike[str],
    *,
    num_images: int = 400,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
    val_fraction: float = 0.2,
    defect_rate: float | None = None,
    holdout_defect: str | None = None,
) -> Path:
    """Write a demo VOC devkit into ``out`` and return ``Path(out)``.

    Args:
        out: the dataset folder. When it already holds a finished demo dataset with the
            same parameters it is left alone; one with other parameters is replaced; a
            folder that is not empty and holds no finished demo dataset is refused.
        num_images: how many images (>= 1).
        seed: a non-negative integer; the same parameters give identical files.
        image_size: ``(width, height)`` in pixels, each 32 to 8192.
        val_fraction: share of the images listed in ``val.txt``, in ``[0, 1)``.
        defect_rate: the probability, in ``[0, 1]``, that an object is defective (a rare-defect
            demo with e.g. 0.05); None (the default): each of the four classes equally likely,
            and the files are those of earlier versions byte for byte.
        holdout_defect: a defect kind (:data:`DEFECT_KINDS`) drawn only in val images, with
            ``defects.json`` written; None (the default): every kind everywhere, no such file.

    Raises:
        ValueError: a parameter is out of range.
        FileExistsError: ``out`` exists and is not a demo dataset (or not a folder).
        OSError: the files cannot be written.
    """
    num_images, seed, (width, height), val_fraction = _check_params(num_images, seed, image_size, val_fraction)
    defect_rate = _check_rate(defect_rate)
    holdout_defect = _check_holdout(holdout_defect)
    out = Path(out)
    if is_complete(out, num_images=num_images, seed=seed, image_size=(width, height), val_fraction=val_fraction,
                   defect_rate=defect_rate, holdout_defect=holdout_defect):
        log.info("%s: demo dataset already complete (%d images, seed %d)", out, num_images, seed)
        return out
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{show(out)}: exists and is not a folder; choose another output folder")
        if read_marker(out) is None and any(os.scandir(out)):
            raise FileExistsError(
                f"{show(out)}: folder is not empty and holds no finished demo dataset; "
                "remove it or choose another output folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    log.info("%s: drawing %d demo images of %dx%d (seed %d)", out, num_images, width, height, seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        marker = _generate(tmp, num_images=num_images, seed=seed, size=(width, height), val_fraction=val_fraction,
                           defect_rate=defect_rate, holdout_defect=holdout_defect)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - started
    counts = ", ".join(f"{name} {marker['objects'][name]}" for name in DEMO_CLASSES)
    log.info(
        "%s: %d images (%d without objects), objects: %s; %.1f s",
        out, num_images, marker["negatives"], counts, elapsed,
    )
    return out


def is_complete(
    out: str | os.PathLike[str],
    *,
    num_images: int,
    seed: int,
    image_size: tuple[int, int],
    val_fraction: float | None = None,
    defect_rate: float | None = None,
    holdout_defect: str | None = None,
) -> bool:
    """Whether ``out`` holds a finished demo dataset made with these parameters.

    ``val_fraction=None`` accepts any split. Checks the ``.complete`` marker (written
    last) and that the annotation, image and split files are all there.
    """
    marker = read_marker(out)
    if marker is None or marker.get("version") != GENERATOR_VERSION:
        return False
    try:
        size = [int(v) for v in image_size]
    except (TypeError, ValueError):
        return False
    if marker.get("num_images") != num_images or marker.get("seed") != seed or marker.get("image_size") != size:
        return False
    if val_fraction is not None and marker.get("val_fraction") != float(val_fraction):
        return False
    if marker.get("defect_rate") != (None if defect_rate is None else float(defect_rate)):
        return False
    if marker.get("holdout_defect") != holdout_defect:
        return False
    if holdout_defect is not None and not (Path(out) / DEFECTS_NAME).is_file():
        return False
    root = Path(out)
    try:
        n_xml = sum(1 for e in os.scandir(root / "Annotations") if e.name.endswith(".xml"))
        n_jpg = sum(1 for e in os.scandir(root / "JPEGImages") if e.name.endswith(".jpg"))
    except OSError:
        return False
    if n_xml != num_images or n_jpg != num_images:
        return False
    main = root / "ImageSets" / "Main"
    return (root / "classes.txt").is_file() and all((main / f"{s}.txt").is_file() for s in ("train", "val", "trainval"))


def read_marker(out: str | os.PathLike[str]) -> dict | None:
    """The ``.complete`` marker of a finished demo dataset, or None.

    Keys: ``generator``, ``version``, ``num_images``, ``seed``, ``image_size``
    (``[width, height]``), ``val_fraction``, ``classes``, ``objects`` (count per class),
    ``negatives`` (images without objects), ``train``/``val`` (image counts).
    """
    try:
        data = json.loads((Path(out) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return None
    return data


def render_demo_image(
    seed: int, index: int, image_size: tuple[int, int] = (320, 240), *, defect_rate: float | None = None,
    exclude_defect: str | None = None,
) -> tuple[np.ndarray, tuple[VocObject, ...]]:
    """Draw image ``index`` of the dataset with ``seed``: a BGR uint8 array and its objects.

    This is what :func:`make_demo_dataset` writes (before JPEG compression); with
    ``exclude_defect``, what it writes for a training image when that kind is held out.
    """
    image, objects, _ = _render(seed, index, image_size, defect_rate, _check_holdout(exclude_defect))
    return image, objects


def _render(seed, index, image_size, defect_rate, exclude):
    _, seed, (width, height), _ = _check_params(1, seed, image_size, 0.0)
    defect_rate = _check_rate(defect_rate)
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    scene = _Scene(rng, width, height, defect_rate, exclude)
    image, objects = scene.render()
    return image, objects, scene.object_defects


# --------------------------------------------------------------------------- writing


def _check_holdout(kind):
    if kind is None:
        return None
    known = [k for kinds in DEFECT_KINDS.values() for k in kinds]
    if kind not in known:
        raise ValueError(f"holdout defect must be one of {', '.join(known)}, got {kind!r}")
    return kind


def _check_rate(defect_rate):
    if defect_rate is None:
        return None
    try:
        rate = float(defect_rate)
    except (TypeError, ValueError):
        raise ValueError(f"defect_rate must be a number from 0 to 1, got {defect_rate!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"defect_rate must be from 0 to 1, got {defect_rate}")
    return rate


def _check_params(num_images, seed, image_size, val_fraction):
    try:
        num_images = operator.index(num_images)
        seed = operator.index(seed)
    except TypeError:
        raise ValueError("num_images and seed must be integers") from None
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    try:
        width, height = (operator.index(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (width, height) in whole pixels, got {image_size!r}") from None
    if not (_MIN_SIDE <= width <= _MAX_SIDE and _MIN_SIDE <= height <= _MAX_SIDE):
        raise ValueError(f"image_size sides must be {_MIN_SIDE} to {_MAX_SIDE} pixels, got {width}x{height}")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return num_images, seed, (width, height), val_fraction


def _generate(root: Path, *, num_images: int, seed: int, size: tuple[int, int], val_fraction: float,
              defect_rate: float | None = None, holdout_defect: str | None = None) -> dict:
    width, height = size
    ann_dir = root / "Annotations"
    img_dir = root / "JPEGImages"
    sets_dir = root / "ImageSets" / "Main"
    for d in (ann_dir, img_dir, sets_dir):
        d.mkdir(parents=True)
    digits = max(5, len(str(num_images - 1)))
    ids: list[str] = []
    counts = dict.fromkeys(DEMO_CLASSES, 0)
    negatives = 0
    train_ids: set[str] = set()
    kinds: dict[str, list[list[str]]] = {}
    if holdout_defect is not None:  # the split is by name alone, so it is known before drawing
        names = [f"demo_{k:0{digits}d}" for k in range(num_images)]
        train_ids = set(split_by_name(names, val_fraction=val_fraction)["train"])
    for k in range(num_images):
        sample_id = f"demo_{k:0{digits}d}"
        exclude = holdout_defect if sample_id in train_ids else None
        image, objects, object_defects = _render(seed, k, (width, height), defect_rate, exclude)
        kinds[sample_id] = [list(d) for d in object_defects]
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
            raise OSError(f"OpenCV could not encode {sample_id}.jpg")
        (img_dir / f"{sample_id}.jpg").write_bytes(encoded.tobytes())
        write_voc(
            Annotation(
                filename=f"{sample_id}.jpg",
                width=width,
                height=height,
                depth=3,
                objects=objects,
                folder="JPEGImages",
                path=f"{sample_id}.jpg",
            ),
            ann_dir / f"{sample_id}.xml",
        )
        ids.append(sample_id)
        for obj in objects:
            counts[obj.name] += 1
        negatives += not objects
        if (k + 1) % 100 == 0:
            log.debug("%d/%d demo images drawn", k + 1, num_images)

    splits = split_by_name(ids, val_fraction=val_fraction)
    for name, listed in (("train", splits["train"]), ("val", splits["val"]), ("trainval", sorted(ids))):
        (sets_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in DEMO_CLASSES), encoding="utf-8")

    marker = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": [width, height],
        "val_fraction": val_fraction,
        "classes": list(DEMO_CLASSES),
        "objects": counts,
        "negatives": negatives,
        "train": len(splits["train"]),
        "val": len(splits["val"]),
    }
    if defect_rate is not None:  # only then: the default demo's marker stays as it was
        marker["defect_rate"] = defect_rate
    if holdout_defect is not None:
        marker["holdout_defect"] = holdout_defect
        (root / DEFECTS_NAME).write_text(json.dumps(kinds, sort_keys=True) + "\n", encoding="utf-8")
    # The marker is the last file written: its presence means everything else is there.
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return marker


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``, replacing an old demo dataset."""
    old = None
    if out.is_dir() and not out.is_symlink():
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    elif out.is_symlink() or out.exists():
        out.unlink()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
