"""A procedural demo dataset: cans and bottles, whole and defective, as a Pascal VOC devkit.

``make_demo_dataset(out)`` draws synthetic photos with OpenCV and writes them with their
annotations, so the pipeline can be tried (and tested) without the real data::

    out/
      Annotations/demo_00000.xml ...      (written by detect.data.voc.write_voc)
      JPEGImages/demo_00000.jpg ...       (JPEG quality 90)
      ImageSets/Main/train.txt val.txt trainval.txt
      classes.txt                         (DEMO_CLASSES, one per line)
      .complete                           (JSON: the parameters; written last)

What is drawn: varied backgrounds (flat colour, gradients, noise textures, a conveyor belt,
tiles) with clutter shapes that are not objects; 0 to 6 objects per image (about 5% of the
images have none), 12% to 60% of the image height, placed back to front so that later
objects occlude earlier ones (a placement that would hide more than 60% of an object
already there is refused), some cut by the image border (``truncated``).

* ``Lata``: an upright cylinder (sometimes lying on its side) with elliptical rims, metallic
  shading, a printed label band and a pull tab.
* ``Botella``: glass (green, brown, blue-ish or clear, translucent) with shoulders, a neck,
  a cap and a paper label.
* ``Lata_defectuosa``: 1-2 of: a dent (dark crescent and a bent outline), crushed sides
  (body pinched in the middle, with creases), a torn label (part missing, jagged edge).
* ``Botella_defectuosa``: 1-2 of: cracks (thin jagged light/dark lines), a broken neck
  (jagged top, no cap), a chipped body (a bite out of the outline).

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

One module of ~1000 lines: it is mostly the drawing of each object kind and each defect,
procedural art whose pieces share palettes and shapes and change together; the writer is
the last part.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detect.common.errors import show
from detect.data.layout import split_by_name
from detect.data.voc import Annotation, Box, VocObject, write_voc

__all__ = [
    "DEMO_CLASSES",
    "MARKER_NAME",
    "is_complete",
    "make_demo_dataset",
    "read_marker",
    "render_demo_image",
]

log = logging.getLogger(__name__)

DEMO_CLASSES = ("Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa")
MARKER_NAME = ".complete"
GENERATOR = "detect.demo"  # the marker's name for this generator: a stored format, kept across module moves
# Bump when the drawing changes, so that datasets made by an older version are remade.
GENERATOR_VERSION = 1
JPEG_QUALITY = 90

_MIN_SIDE = 32
_MAX_SIDE = 8192
_NEGATIVE_FRACTION = 0.05
_MAX_OBJECTS = 6
_MAX_HIDDEN = 0.60  # an object already placed must keep at least 40% of its pixels
_MIN_INSIDE = 0.60  # an object cut by the border keeps at least 60% of its pixels inside

# Colours are BGR. Normal and defective objects draw from the same palettes.
_METALS = ((200, 200, 205), (175, 180, 185), (140, 175, 200), (120, 150, 190), (210, 205, 195))
_PRINT = (
    (40, 40, 200), (180, 80, 30), (60, 160, 60), (40, 200, 230), (30, 30, 30),
    (235, 235, 235), (30, 120, 240), (140, 50, 120), (200, 160, 40), (90, 60, 160),
)
_GLASS = ((70, 140, 50), (40, 80, 140), (200, 175, 130), (205, 210, 205), (60, 110, 40))
_PAPER = ((235, 240, 245), (200, 230, 240), (60, 60, 180), (170, 120, 40), (50, 170, 220), (40, 40, 40))
_CAPS = ((40, 40, 200), (40, 170, 210), (180, 90, 30), (230, 230, 230), (30, 30, 30), (50, 140, 50))


# --------------------------------------------------------------------------- public API


def make_demo_dataset(
    out: str | os.PathLike[str],
    *,
    num_images: int = 400,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
    val_fraction: float = 0.2,
    defect_rate: float | None = None,
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

    Raises:
        ValueError: a parameter is out of range.
        FileExistsError: ``out`` exists and is not a demo dataset (or not a folder).
        OSError: the files cannot be written.
    """
    num_images, seed, (width, height), val_fraction = _check_params(num_images, seed, image_size, val_fraction)
    defect_rate = _check_rate(defect_rate)
    out = Path(out)
    if is_complete(out, num_images=num_images, seed=seed, image_size=(width, height), val_fraction=val_fraction,
                   defect_rate=defect_rate):
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
                           defect_rate=defect_rate)
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
    seed: int, index: int, image_size: tuple[int, int] = (320, 240), *, defect_rate: float | None = None
) -> tuple[np.ndarray, tuple[VocObject, ...]]:
    """Draw image ``index`` of the dataset with ``seed``: a BGR uint8 array and its objects.

    This is what :func:`make_demo_dataset` writes (before JPEG compression).
    """
    _, seed, (width, height), _ = _check_params(1, seed, image_size, 0.0)
    defect_rate = _check_rate(defect_rate)
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return _Scene(rng, width, height, defect_rate).render()


# --------------------------------------------------------------------------- writing


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
              defect_rate: float | None = None) -> dict:
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
    for k in range(num_images):
        sample_id = f"demo_{k:0{digits}d}"
        image, objects = render_demo_image(seed, k, (width, height), defect_rate=defect_rate)
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


# --------------------------------------------------------------------------- drawing helpers


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in ``[lo, hi)``; an empty range (tiny objects) gives ``lo``."""
    return float(rng.uniform(lo, max(lo, hi)))


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _colour(rng: np.random.Generator, palette, jitter: float = 18.0) -> np.ndarray:
    base = np.asarray(_pick(rng, palette), np.float32)
    return np.clip(base + rng.uniform(-jitter, jitter, 3).astype(np.float32), 0, 255)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _pts(points) -> np.ndarray:
    """Float points as int32 with 4 fractional bits, for cv2 drawing with ``shift=4``."""
    return np.round(np.asarray(points, np.float64) * 16.0).astype(np.int32).reshape(-1, 1, 2)


def _fill(mask: np.ndarray, points, value: int = 255) -> None:
    cv2.fillPoly(mask, [_pts(points)], value, cv2.LINE_AA, 4)


def _lines(mask: np.ndarray, points, thickness: int = 1, closed: bool = False, value: int = 255) -> None:
    cv2.polylines(mask, [_pts(points)], closed, value, thickness, cv2.LINE_AA, 4)


def _ellipse(mask, centre, axes, angle=0.0, start=0, end=360, value=255, thickness=-1) -> None:
    c = (int(round(centre[0] * 16)), int(round(centre[1] * 16)))
    a = (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16))))
    cv2.ellipse(mask, c, a, float(angle), start, end, value, thickness, cv2.LINE_AA, 4)


def _blend(dst: np.ndarray, layer, mask: np.ndarray, strength: float = 1.0) -> None:
    """``dst = dst * (1 - m) + layer * m`` in place, ``m`` a uint8 (0-255) or bool mask."""
    if mask.dtype == np.bool_:
        m = mask.astype(np.float32) * strength
    else:
        m = mask.astype(np.float32) * (strength / 255.0)
    m = m[..., None]
    dst *= 1.0 - m
    dst += np.asarray(layer, np.float32) * m


def _cyl_light(w: int, light_x: float, *, ambient: float, diffuse: float, spec: float, shininess: float):
    """Per-column diffuse factor and specular term across a vertical cylinder ``w`` wide."""
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    nx = 2.0 * u - 1.0
    nz = np.sqrt(np.clip(1.0 - nx * nx, 0.0, 1.0))
    lz = math.sqrt(max(0.0, 1.0 - light_x * light_x))
    lam = np.clip(nx * light_x + nz * lz, 0.0, 1.0)
    hx, hz = light_x, lz + 1.0
    hn = math.hypot(hx, hz)
    spec_term = np.clip((nx * hx + nz * hz) / hn, 0.0, 1.0) ** shininess
    return ambient + diffuse * lam, spec * spec_term, nz


def _shade(h: int, w: int, colour, diff, spec) -> np.ndarray:
    row = np.asarray(colour, np.float32)[None, :] * diff[:, None] + 255.0 * spec[:, None]
    return np.ascontiguousarray(np.broadcast_to(row[None], (h, w, 3)), dtype=np.float32)


def _jagged_walk(rng, start, angle, steps, step_len, wobble):
    pts = [start]
    x, y = start
    for _ in range(steps):
        angle += float(rng.normal(0.0, wobble))
        length = step_len * _u(rng, 0.5, 1.3)
        x += math.cos(angle) * length
        y += math.sin(angle) * length
        pts.append((x, y))
    return pts


def _pick_defects(rng, kinds) -> tuple[str, ...]:
    n = 1 if rng.random() < 0.6 else 2
    order = rng.permutation(len(kinds))[:n]
    return tuple(kinds[i] for i in sorted(order))


# --------------------------------------------------------------------------- objects


@dataclass
class _Sprite:
    rgb: np.ndarray  # float32 (h, w, 3), BGR 0-255
    alpha: np.ndarray  # float32 (h, w), 0-1

    def crop(self) -> "_Sprite":
        solid = self.alpha > 0.02
        rows = np.flatnonzero(solid.any(axis=1))
        cols = np.flatnonzero(solid.any(axis=0))
        if rows.size == 0:
            return self
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return _Sprite(self.rgb[r0:r1, c0:c1], self.alpha[r0:r1, c0:c1])

    def rotated(self, degrees: float) -> "_Sprite":
        h, w = self.alpha.shape
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
        m[0, 2] += nw / 2.0 - w / 2.0
        m[1, 2] += nh / 2.0 - h / 2.0
        rgb = cv2.warpAffine(self.rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        alpha = cv2.warpAffine(self.alpha, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
        return _Sprite(rgb, alpha).crop()


def _render_can(rng, h: int, w: int, defective: bool, light_x: float) -> _Sprite:
    defects = _pick_defects(rng, ("dent", "crushed", "torn_label")) if defective else ()
    cx = w / 2.0
    hw = w / 2.0 - 0.5
    ry = max(1.0, w * _u(rng, 0.09, 0.15))
    top_hw = hw * _u(rng, 0.86, 0.94)
    y_top = ry + 0.5
    y_bot = h - 1.0 - ry
    body_h = max(1.0, y_bot - y_top)
    n = int(max(16, min(96, h)))
    ys = np.linspace(y_top, y_bot, n)
    half = top_hw + (hw - top_hw) * _smoothstep((ys - y_top) / max(1.0, ry * 1.6))
    half = half * (0.95 + 0.05 * _smoothstep((y_bot - ys) / max(1.0, ry)))
    dl = np.zeros(n)
    dr = np.zeros(n)

    dent = None
    if "dent" in defects:
        a = w * _u(rng, 0.13, 0.28)
        b = a * _u(rng, 0.7, 1.6)
        yd = _u(rng, y_top + 0.2 * body_h, y_bot - 0.12 * body_h)
        side = -1.0 if rng.random() < 0.5 else 1.0
        bend = rng.random() < 0.65
        xd = cx + side * hw * (_u(rng, 0.5, 0.75) if bend else _u(rng, -0.4, 0.4))
        if bend:
            depth = a * _u(rng, 0.35, 0.7)
            prof = depth * np.clip(1.0 - ((ys - yd) / max(1.5, b * 1.2)) ** 2, 0.0, None)
            if side < 0:
                dl += prof
            else:
                dr += prof
        dent = (xd, yd, a, b, _u(rng, 0, 180))
    crush = None
    if "crushed" in defects:
        ym = _u(rng, y_top + 0.3 * body_h, y_bot - 0.3 * body_h)
        hh = body_h * _u(rng, 0.12, 0.3)
        tri = np.clip(1.0 - np.abs(ys - ym) / hh, 0.0, None)
        tri = tri ** _u(rng, 0.8, 1.5)
        dl += w * _u(rng, 0.09, 0.22) * tri + tri * rng.uniform(-1, 1, n) * w * 0.025
        dr += w * _u(rng, 0.09, 0.22) * tri + tri * rng.uniform(-1, 1, n) * w * 0.025
        crush = (ym, hh)

    left = cx - half + dl
    right = cx + half - dr
    t_top = np.linspace(math.pi, 2 * math.pi, 24)
    t_bot = np.linspace(0.0, math.pi, 24)
    top_arc = np.stack([cx + top_hw * np.cos(t_top), y_top + ry * np.sin(t_top)], 1)
    bot_arc = np.stack([cx + half[-1] * np.cos(t_bot), y_bot + ry * np.sin(t_bot)], 1)
    outline = np.concatenate([
        top_arc,
        np.stack([right, ys], 1),
        bot_arc,
        np.stack([left, ys], 1)[::-1],
    ])
    mask = np.zeros((h, w), np.uint8)
    _fill(mask, outline)

    metal = _colour(rng, _METALS, 12)
    diff, spec, nz = _cyl_light(w, light_x, ambient=0.3, diffuse=0.7, spec=0.55, shininess=_u(rng, 12, 40))
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    # A second, dark reflection band makes the metal read as metal.
    diff = diff * (1.0 - 0.3 * np.exp(-(((u - _u(rng, 0.6, 0.85)) / 0.09) ** 2)))
    metal_layer = _shade(h, w, metal, diff, spec)
    rgb = metal_layer.copy()

    # Label band, its edges curved like the rims.
    yy = np.arange(h, dtype=np.float32)[:, None]
    lab0 = y_top + ry + body_h * _u(rng, 0.05, 0.2)
    lab1 = y_bot - body_h * _u(rng, 0.05, 0.18)
    curve = (ry * 0.9 * nz)[None, :]
    label_mask = (yy >= lab0 + curve) & (yy < lab1 + curve)
    ldiff, lspec, _ = _cyl_light(w, light_x, ambient=0.35, diffuse=0.65, spec=0.25, shininess=8)
    label_colour = _colour(rng, _PRINT, 25)
    rgb[label_mask] = _shade(h, w, label_colour, ldiff, lspec)[label_mask]
    design = np.zeros((h, w), np.uint8)
    second = _colour(rng, _PRINT, 25)
    if rng.random() < 0.6:  # a stripe round the can
        s0 = _u(rng, lab0, lab1 - 0.2 * (lab1 - lab0))
        s1 = s0 + (lab1 - lab0) * _u(rng, 0.08, 0.3)
        design |= ((yy >= s0 + curve) & (yy < s1 + curve)).astype(np.uint8) * 255
    if rng.random() < 0.7:  # a logo
        _ellipse(design, (cx + _u(rng, -0.15, 0.15) * w, (lab0 + lab1) / 2 + ry * 0.6),
                 (w * _u(rng, 0.12, 0.3), (lab1 - lab0) * _u(rng, 0.1, 0.25)), _u(rng, -20, 20))
    design &= label_mask.astype(np.uint8) * 255
    _blend(rgb, _shade(h, w, second, ldiff, lspec), design)
    text = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        ty = _u(rng, lab0 + 2, max(lab0 + 2.5, lab1 - 2)) + ry * 0.6
        tx = cx + _u(rng, -0.3, 0.1) * w
        cv2.line(text, (int(tx), int(ty)), (int(tx + w * _u(rng, 0.1, 0.35)), int(ty)), 255, 1, cv2.LINE_AA)
    _blend(rgb, (235, 235, 235) if label_colour.mean() < 120 else (25, 25, 25), text & (label_mask * 255).astype(np.uint8), 0.8)

    if "torn_label" in defects:
        # A jagged blob of the label torn away: bare metal inside, white paper fibres at the edge.
        lh = lab1 - lab0
        tcx = cx + _u(rng, -0.45, 0.45) * w
        tcy = _u(rng, lab0 + 0.2 * lh, lab1 - 0.2 * lh) + ry * 0.6
        rad_x = w * _u(rng, 0.2, 0.45)
        rad_y = lh * _u(rng, 0.25, 0.55)
        k = int(rng.integers(9, 16))
        ang = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = rng.uniform(0.55, 1.15, k)
        rad[::2] *= 0.7  # alternate in and out: a torn, jagged edge
        blob = np.stack([tcx + rad_x * rad * np.cos(ang), tcy + rad_y * rad * np.sin(ang)], 1)
        tear = np.zeros((h, w), np.uint8)
        cv2.fillPoly(tear, [_pts(blob)], 255, cv2.LINE_8, 4)
        torn = (tear > 0) & label_mask
        rgb[torn] = metal_layer[torn]
        fringe = (cv2.dilate(tear, np.ones((3, 3), np.uint8)) > 0) & ~(tear > 0) & label_mask
        _blend(rgb, (240, 242, 245), fringe, 0.95)

    # Lid, rim lines and pull tab.
    lid = np.zeros((h, w), np.uint8)
    _ellipse(lid, (cx, y_top), (top_hw, ry))
    lid_colour = np.clip(metal * _u(rng, 0.95, 1.12), 0, 255)
    lid_grad = 0.75 + 0.35 * np.clip(1.0 - u + light_x * 0.3, 0.0, 1.0)
    _blend(rgb, _shade(h, w, lid_colour, lid_grad, np.zeros(w, np.float32)), lid)
    lines = np.zeros((h, w), np.uint8)
    _ellipse(lines, (cx, y_top), (top_hw * 0.8, ry * 0.72), thickness=1)
    _ellipse(lines, (cx, y_top), (top_hw, ry), start=0, end=180, thickness=1)
    _ellipse(lines, (cx, y_bot), (half[-1], ry), start=0, end=180, thickness=1)
    _blend(rgb, metal * 0.35, lines, 0.7)
    tab = np.zeros((h, w), np.uint8)
    tab_c = (cx + top_hw * _u(rng, -0.15, 0.15), y_top - ry * 0.1)
    _ellipse(tab, tab_c, (top_hw * 0.28, ry * 0.42))
    _blend(rgb, np.clip(lid_colour * 1.12, 0, 255), tab)
    tab_lines = np.zeros((h, w), np.uint8)
    _ellipse(tab_lines, tab_c, (top_hw * 0.28, ry * 0.42), thickness=1)
    _ellipse(tab_lines, (tab_c[0] + top_hw * 0.05, tab_c[1]), (top_hw * 0.1, ry * 0.16))
    _blend(rgb, (40, 40, 40), tab_lines, 0.8)

    if dent is not None:
        xd, yd, a, b, ang = dent
        # A hollow: the wall facing the light is in shadow (a dark crescent), the far wall
        # catches the light; then a little blur so it reads as a smooth dent.
        shade = np.ones((h, w), np.float32)
        toward = -1.0 if light_x <= 0 else 1.0  # the side the light comes from
        cv2.ellipse(shade, (int(xd), int(yd)), (max(1, int(a)), max(1, int(b))), ang, 0, 360, 0.4, -1)
        cv2.ellipse(shade, (int(xd - toward * a * 0.35), int(yd + b * 0.1)), (max(1, int(a * 0.75)), max(1, int(b * 0.85))),
                    ang, 0, 360, 0.8, -1)
        cv2.ellipse(shade, (int(xd - toward * a * 0.55), int(yd + b * 0.15)), (max(1, int(a * 0.45)), max(1, int(b * 0.6))),
                    ang, 0, 360, 1.45, -1)
        shade = cv2.GaussianBlur(shade, (0, 0), max(0.6, a * 0.12))
        rgb *= shade[..., None]
        crease = np.zeros((h, w), np.uint8)
        _lines(crease, _jagged_walk(rng, (xd - a * 0.6, yd + _u(rng, -b, b) * 0.3), _u(rng, -0.4, 0.4), 4, a * 0.35, 0.6))
        _blend(rgb, (20, 20, 20), crease, 0.55)
    if crush is not None:
        ym, hh = crush
        band = 1.0 - 0.35 * np.clip(1.0 - np.abs(yy - ym) / hh, 0.0, 1.0) ** 2
        rgb *= band[..., None]
        creases = np.zeros((h, w), np.uint8)
        lights = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(2, 5))):
            y0 = ym + _u(rng, -0.6, 0.6) * hh
            xs = np.linspace(0, w, int(rng.integers(4, 8)))
            zz = y0 + rng.uniform(-0.25, 0.25, xs.size) * hh
            _lines(creases, np.stack([xs, zz], 1))
            _lines(lights, np.stack([xs, zz - 1.2], 1))
        _blend(rgb, (15, 15, 15), creases, 0.75)
        _blend(rgb, (250, 250, 250), lights, 0.45)

    edge = np.zeros((h, w), np.uint8)
    _lines(edge, outline, closed=True)
    _blend(rgb, metal * 0.3, edge, 0.5)
    np.clip(rgb, 0, 255, out=rgb)
    return _Sprite(rgb, mask.astype(np.float32) / 255.0).crop()


def _render_bottle(rng, h: int, w: int, defective: bool, light_x: float) -> _Sprite:
    defects = _pick_defects(rng, ("crack", "broken_neck", "chipped")) if defective else ()
    cx = w / 2.0
    hw_body = w / 2.0 - 0.5
    neck_hw = max(1.0, hw_body * _u(rng, 0.28, 0.42))
    cap_hw = neck_hw * _u(rng, 1.1, 1.25)
    cap_h = max(2.0, h * _u(rng, 0.05, 0.08))
    lip_h = max(1.0, h * 0.02)
    neck_end = h * _u(rng, 0.2, 0.33)
    shoulder_end = neck_end + h * _u(rng, 0.12, 0.22)
    r_bottom = max(1.0, hw_body * _u(rng, 0.15, 0.35))

    def half_width(y):
        y = np.asarray(y, np.float64)
        hwy = np.where(y < cap_h, cap_hw, neck_hw)
        hwy = np.where((y >= cap_h) & (y < cap_h + lip_h), neck_hw * 1.15, hwy)
        sh = neck_hw + (hw_body - neck_hw) * _smoothstep((y - neck_end) / (shoulder_end - neck_end))
        hwy = np.where(y >= neck_end, sh, hwy)
        yb = h - 1.0 - r_bottom
        rounded = hw_body - r_bottom + np.sqrt(np.clip(r_bottom**2 - (y - yb) ** 2, 0.0, None))
        return np.where(y > yb, rounded, hwy)

    y_start = 0.5
    broken = "broken_neck" in defects
    if broken:
        y_start = _u(rng, cap_h + lip_h + 1.0, neck_end + 0.5 * (shoulder_end - neck_end))
    n = int(max(24, min(140, h)))
    ys = np.linspace(y_start, h - 1.0, n)
    half = half_width(ys)
    outline_l = np.stack([cx - half, ys], 1)
    outline_r = np.stack([cx + half, ys], 1)[::-1]
    jag_top = None
    if broken:
        k = int(rng.integers(3, 7))
        xs = np.linspace(cx + half[0], cx - half[0], k + 2)[1:-1]
        amp = max(1.5, half[0] * _u(rng, 0.6, 1.2))
        jy = y_start + rng.uniform(-0.3, 1.0, k) * amp
        jy[::2] -= amp * 0.5
        jag_top = np.concatenate([[outline_r[-1]], np.stack([xs, jy], 1), [outline_l[0]]])
        outline = np.concatenate([outline_l, outline_r, jag_top[1:-1]])
    else:
        outline = np.concatenate([outline_l, outline_r])
    mask = np.zeros((h, w), np.uint8)
    _fill(mask, outline)

    chip = None
    if "chipped" in defects:
        if rng.random() < 0.7:  # a bite out of a side
            side = -1.0 if rng.random() < 0.5 else 1.0
            yb = _u(rng, shoulder_end, h - 1.0 - r_bottom * 1.5)
            p0 = np.array([cx + side * float(half_width(yb)), yb])
            inward = np.array([-side, 0.0])
            tangent = np.array([0.0, 1.0])
        else:  # from the base
            p0 = np.array([cx + _u(rng, -0.4, 0.4) * (hw_body - r_bottom), h - 1.0])
            inward = np.array([0.0, -1.0])
            tangent = np.array([1.0, 0.0])
        depth = hw_body * _u(rng, 0.22, 0.5)
        span = depth * _u(rng, 1.0, 2.2)
        k = int(rng.integers(3, 6))
        ss = np.sort(rng.uniform(-0.4, 0.4, k)) * span
        dd = rng.uniform(0.35, 1.0, k) * depth
        inner = [p0 + tangent * s + inward * d for s, d in zip(ss, dd)]
        chip = np.array([p0 - tangent * span / 2 - inward * 3] + inner + [p0 + tangent * span / 2 - inward * 3])
        cv2.fillPoly(mask, [_pts(chip)], 0, cv2.LINE_AA, 4)

    tint = _colour(rng, _GLASS, 15)
    clear = tint.mean() > 170
    glass_alpha = _u(rng, 0.62, 0.72) if clear else _u(rng, 0.74, 0.88)
    diff, spec, nz = _cyl_light(w, light_x, ambient=0.5, diffuse=0.45, spec=0.8, shininess=_u(rng, 30, 80))
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    diff = diff * (0.75 + 0.25 * nz**0.5)
    rgb = _shade(h, w, tint, diff, spec)
    # A second, thin reflection on the far side.
    far = 1.0 - (0.25 if light_x <= 0 else 0.75)
    rgb += (120.0 * np.exp(-(((u - far) / 0.03) ** 2)))[None, :, None]
    alpha_map = np.broadcast_to((glass_alpha + (1.0 - glass_alpha) * 0.6 * (1.0 - nz))[None, :], (h, w)).copy()
    yy = np.arange(h, dtype=np.float32)[:, None]

    if rng.random() < 0.45:  # liquid inside
        fill_y = _u(rng, shoulder_end, h * 0.8)
        liquid = yy >= fill_y
        rgb *= np.where(liquid, 0.55, 1.0)[..., None]
        alpha_map = np.where(liquid, np.maximum(alpha_map, 0.9), alpha_map)
        meniscus = np.zeros((h, w), np.uint8)
        cv2.line(meniscus, (0, int(fill_y)), (w, int(fill_y)), 255, 1, cv2.LINE_AA)
        _blend(rgb, np.clip(tint * 1.4, 0, 255), meniscus, 0.5)

    # Paper label, edges curved like the glass.
    curve = (max(1.0, w * 0.06) * nz)[None, :]
    lab0 = _u(rng, shoulder_end, shoulder_end + 0.2 * (h - shoulder_end))
    lab1 = min(h - 1.0 - r_bottom, lab0 + (h - shoulder_end) * _u(rng, 0.3, 0.6))
    label_mask = (yy >= lab0 + curve) & (yy < lab1 + curve)
    ldiff, lspec, _ = _cyl_light(w, light_x, ambient=0.4, diffuse=0.6, spec=0.15, shininess=6)
    paper = _colour(rng, _PAPER, 20)
    rgb[label_mask] = _shade(h, w, paper, ldiff, lspec)[label_mask]
    alpha_map[label_mask] = 1.0
    design = np.zeros((h, w), np.uint8)
    if rng.random() < 0.7:
        _ellipse(design, (cx, (lab0 + lab1) / 2 + curve.max() * 0.6), (w * _u(rng, 0.15, 0.32), (lab1 - lab0) * _u(rng, 0.12, 0.3)))
    for _ in range(int(rng.integers(0, 3))):
        ty = _u(rng, lab0 + 1, max(lab0 + 1.5, lab1 - 1)) + curve.max() * 0.6
        cv2.line(design, (int(cx - w * 0.25), int(ty)), (int(cx + w * _u(rng, 0.0, 0.25)), int(ty)), 255, 1, cv2.LINE_AA)
    design &= (label_mask * 255).astype(np.uint8)
    _blend(rgb, _colour(rng, _PRINT, 25) * ldiff.mean(), design, 0.9)

    if not broken:
        cap_rows = yy < cap_h
        cap_colour = _colour(rng, _CAPS, 20)
        cdiff, cspec, _ = _cyl_light(w, light_x, ambient=0.35, diffuse=0.65, spec=0.4, shininess=15)
        cap_layer = _shade(h, w, cap_colour, cdiff, cspec)
        if cap_hw * 2 >= 8:  # knurled edge
            xs = np.arange(w)
            cap_layer[:, (xs % 3) == 0] *= 0.75
        cap_mask = np.broadcast_to(cap_rows, (h, w))
        rgb[cap_mask] = cap_layer[cap_mask]
        alpha_map[cap_mask] = 1.0
        ring = np.zeros((h, w), np.uint8)
        cv2.line(ring, (0, int(cap_h)), (w, int(cap_h)), 255, 1, cv2.LINE_AA)
        _blend(rgb, cap_colour * 0.35, ring, 0.7)
    else:
        rim = np.zeros((h, w), np.uint8)
        _lines(rim, jag_top)
        dark = np.zeros((h, w), np.uint8)
        _lines(dark, jag_top + np.array([0.0, 1.6]))
        _blend(rgb, (15, 20, 15), dark, 0.8)
        _blend(rgb, (240, 248, 245), rim, 1.0)
        alpha_map = np.maximum(alpha_map, rim.astype(np.float32) / 255.0)

    marks = np.zeros((h, w), np.uint8)  # light lines: cracks, chip edges
    shadows = np.zeros((h, w), np.uint8)  # their dark companions
    if "crack" in defects:
        for _ in range(int(rng.integers(1, 4))):
            y0 = _u(rng, neck_end, h - 1.0 - r_bottom)
            x0 = cx + _u(rng, -0.7, 0.7) * float(half_width(y0))
            walk = _jagged_walk(rng, (x0, y0), _u(rng, 0, 2 * math.pi), int(rng.integers(4, 9)), h * _u(rng, 0.03, 0.06), 0.7)
            _lines(marks, walk)
            _lines(shadows, np.asarray(walk) + np.array([1.2, 0.6]))
            if rng.random() < 0.5:  # a branch
                j = int(rng.integers(1, len(walk)))
                branch = _jagged_walk(rng, walk[j], _u(rng, 0, 2 * math.pi), int(rng.integers(2, 5)), h * 0.03, 0.6)
                _lines(marks, branch)
                _lines(shadows, np.asarray(branch) + np.array([1.2, 0.6]))
    if chip is not None:
        _lines(marks, chip[1:-1], thickness=1)
        _lines(shadows, chip[1:-1] + inward * 1.5, thickness=1)
        for p in chip[1:-1]:
            if rng.random() < 0.6:
                end = p + rng.uniform(-1, 1, 2) * hw_body * 0.4
                _lines(shadows, [p, end])
    _blend(rgb, (20, 25, 20), shadows, 0.7)
    _blend(rgb, (238, 245, 245), marks, 0.95)
    alpha_map = np.maximum(alpha_map, np.maximum(marks, shadows).astype(np.float32) / 255.0 * 0.95)

    edge = np.zeros((h, w), np.uint8)
    _lines(edge, outline, closed=True)
    _blend(rgb, tint * 0.35, edge, 0.55)
    alpha_map = np.maximum(alpha_map, edge.astype(np.float32) / 255.0 * 0.9)
    np.clip(rgb, 0, 255, out=rgb)
    return _Sprite(rgb, alpha_map * (mask.astype(np.float32) / 255.0)).crop()


# --------------------------------------------------------------------------- scenes


def _background(rng, W: int, H: int) -> np.ndarray:
    kind = int(rng.choice(5, p=[0.15, 0.2, 0.25, 0.28, 0.12]))
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    gray = _u(rng, 60, 200)

    def muted():
        c = rng.uniform(0, 255, 3).astype(np.float32)
        mix = _u(rng, 0.3, 0.8)
        return c * (1 - mix) + gray * mix

    if kind == 0:  # flat
        img = np.broadcast_to(muted(), (H, W, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient
        c1, c2 = muted(), muted()
        ang = _u(rng, 0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 2:  # blotchy noise texture, two octaves
        c1, c2 = muted(), muted()
        t = np.zeros((H, W), np.float32)
        for cell, weight in ((_u(rng, 12, 40), 0.7), (_u(rng, 3, 8), 0.3)):
            small = rng.random((int(H / cell) + 2, int(W / cell) + 2), dtype=np.float32)
            t += weight * cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 3:  # conveyor belt: slats across the belt, metal rails along it
        base = np.full(3, _u(rng, 30, 90), np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
        img = np.broadcast_to(base, (H, W, 3)).astype(np.float32).copy()
        along_x = rng.random() < 0.7
        coord = xx if along_x else yy
        period = max(4.0, _u(rng, 0.025, 0.08) * min(W, H))
        phase = (coord + _u(rng, 0, period)) % period
        img *= np.where(phase < 1.5, 0.6, np.where(phase < 3.0, 1.25, 1.0))[..., None]
        img += (rng.standard_normal((H, W), dtype=np.float32) * 4.0)[..., None]
        if rng.random() < 0.7:
            across = yy if along_x else xx
            extent = H if along_x else W
            r = _u(rng, 0.05, 0.12) * extent
            metal = np.full(3, _u(rng, 140, 200), np.float32)
            for lo in (0.0, extent - r):
                band = np.broadcast_to((across >= lo) & (across < lo + r), (H, W))
                t = np.abs((across - lo) / r - 0.5) * 2
                shade = np.broadcast_to((1.1 - 0.5 * t)[..., None] * metal, (H, W, 3))
                img[band] = shade[band]
    else:  # tiles
        cell = max(8, int(_u(rng, 0.1, 0.25) * min(W, H)))
        c = muted()
        tiles = rng.uniform(0.85, 1.15, (H // cell + 1, W // cell + 1)).astype(np.float32)
        t = cv2.resize(tiles, ((W // cell + 1) * cell, (H // cell + 1) * cell), interpolation=cv2.INTER_NEAREST)[:H, :W]
        img = c * t[..., None]
        grout = np.broadcast_to(((xx % cell) < 1.5) | ((yy % cell) < 1.5), (H, W))
        img[grout] = c * 0.55
    img = np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.uint8)

    # Clutter: shapes that are not objects (a few thin jagged lines too, so that a jagged
    # line alone does not mean "defect").
    if rng.random() < 0.65:
        side = min(W, H)
        for _ in range(int(rng.integers(1, 7))):
            colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
            x, y = _u(rng, 0, W), _u(rng, 0, H)
            s = _u(rng, 0.04, 0.3) * side
            shape = int(rng.integers(7))
            if shape == 0:
                cv2.circle(img, (int(x), int(y)), max(1, int(s / 2)), colour, -1, cv2.LINE_AA)
            elif shape == 1:
                cv2.rectangle(img, (int(x), int(y)), (int(x + s), int(y + s * _u(rng, 0.3, 1.5))), colour, -1)
            elif shape == 2:
                box = cv2.boxPoints(((x, y), (s, s * _u(rng, 0.2, 0.8)), _u(rng, 0, 180)))
                cv2.fillPoly(img, [_pts(box)], colour, cv2.LINE_AA, 4)
            elif shape == 3:
                cv2.line(img, (int(x), int(y)), (int(x + _u(rng, -1, 1) * s * 2), int(y + _u(rng, -1, 1) * s * 2)),
                         colour, int(rng.integers(1, 4)), cv2.LINE_AA)
            elif shape == 4:
                walk = _jagged_walk(rng, (x, y), _u(rng, 0, 2 * math.pi), int(rng.integers(3, 7)), s * 0.3, 0.8)
                cv2.polylines(img, [_pts(walk)], False, colour, 1, cv2.LINE_AA, 4)
            elif shape == 5:
                cv2.ellipse(img, (int(x), int(y)), (max(1, int(s / 2)), max(1, int(s / 4))), _u(rng, 0, 180),
                            0, 360, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
            else:
                tri = np.array([(x, y), (x + s, y + _u(rng, -0.5, 0.5) * s), (x + _u(rng, -0.5, 0.5) * s, y + s)])
                cv2.fillPoly(img, [_pts(tri)], colour, cv2.LINE_AA, 4)
    return img


def _clip_region(x0: int, y0: int, w: int, h: int, W: int, H: int):
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


class _Scene:
    """One image: a background, objects placed back to front, global effects."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, defect_rate: float | None = None) -> None:
        self.rng = rng
        self.W = width
        self.H = height
        self.defect_rate = defect_rate

    def _make_sprite(self, cls: str, light_x: float, size: float | None = None) -> _Sprite:
        """A can or bottle of class ``cls``, its longest side ``size`` pixels (default: a
        random 12-60 % of the image height, as the demo images have them)."""
        rng, H, W = self.rng, self.H, self.W
        if size is None:
            size = H * _u(rng, 0.12, 0.60)
        if cls.startswith("Lata"):
            lying = rng.random() < 0.15
            length = size
            diameter = length * _u(rng, 0.5, 0.7)
            if lying:
                length = min(length, W * 0.9)
                diameter = length * _u(rng, 0.5, 0.7)
            if not lying and diameter > W * 0.9:
                length, diameter = length * W * 0.9 / diameter, W * 0.9
            h, w = max(10, int(round(length))), max(6, int(round(diameter)))
            sprite = _render_can(rng, h, w, cls.endswith("_defectuosa"), light_x)
            if lying:
                k = 1 if rng.random() < 0.5 else 3
                sprite = _Sprite(np.ascontiguousarray(np.rot90(sprite.rgb, k)), np.ascontiguousarray(np.rot90(sprite.alpha, k)))
        else:
            aspect = _u(rng, 0.25, 0.4)
            size = min(size, W * 0.9 / aspect)
            h = max(14, int(round(size)))
            w = max(5, int(round(h * aspect)))
            sprite = _render_bottle(rng, h, w, cls.endswith("_defectuosa"), light_x)
        if rng.random() < 0.3:
            sprite = sprite.rotated(_u(rng, -12, 12))
        return sprite

    def render(self) -> tuple[np.ndarray, tuple[VocObject, ...]]:
        rng, W, H = self.rng, self.W, self.H
        canvas = _background(rng, W, H).astype(np.float32)
        owner = np.full((H, W), -1, np.int16)
        light_x = _u(rng, -0.7, 0.7)
        n_wanted = 0 if rng.random() < _NEGATIVE_FRACTION else int(rng.integers(1, _MAX_OBJECTS + 1))

        placed: list[dict] = []
        for _ in range(n_wanted):
            cls = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
            if self.defect_rate is not None:  # the kind (can, bottle) as drawn; defective or not by the rate
                kind = "Lata" if cls.startswith("Lata") else "Botella"
                cls = f"{kind}_defectuosa" if rng.random() < self.defect_rate else kind
            sprite = self._make_sprite(cls, light_x)
            solid = sprite.alpha > 0.5
            area = int(solid.sum())
            if area < 12:
                continue
            h, w = solid.shape
            for _attempt in range(25):
                spot = self._try_place(solid, area, w, h, placed, owner)
                if spot is not None:
                    break
            else:
                continue
            x0, y0, covered = spot
            for j, c in enumerate(covered):
                placed[j]["visible"] -= int(c)
            self._composite(canvas, sprite, x0, y0)
            (img_sl, spr_sl) = _clip_region(x0, y0, w, h, W, H)
            owner[img_sl][solid[spr_sl]] = len(placed)
            rows = np.flatnonzero(solid.any(axis=1))
            cols = np.flatnonzero(solid.any(axis=0))
            full = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
            truncated = bool(full[0] < 0 or full[1] < 0 or full[2] > W or full[3] > H)
            inside = int(solid[spr_sl].sum())
            placed.append({
                "name": cls,
                "full": inside,
                "visible": inside,
                "truncated": truncated,
                "region": (max(0, full[0]), max(0, full[1]), min(W, full[2]), min(H, full[3])),
            })

        image = self._finish(canvas)
        objects = []
        for idx, obj in enumerate(placed):
            x0, y0, x1, y1 = obj["region"]
            vis = owner[y0:y1, x0:x1] == idx
            rows = np.flatnonzero(vis.any(axis=1))
            cols = np.flatnonzero(vis.any(axis=0))
            if rows.size == 0:
                continue
            box = Box(float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
            if box.width < 2 or box.height < 2:
                continue
            objects.append(VocObject(name=obj["name"], box=box, difficult=False, truncated=obj["truncated"]))
        return image, tuple(objects)

    def _try_place(self, solid, area, w, h, placed, owner):
        rng, W, H = self.rng, self.W, self.H
        lo_x, hi_x = min(0, W - w), max(0, W - w)
        lo_y, hi_y = min(0, H - h), max(0, H - h)
        if rng.random() < 0.15:  # allowed to run off the border
            lo_x, hi_x = lo_x - 0.35 * w, hi_x + 0.35 * w
            lo_y, hi_y = lo_y - 0.35 * h, hi_y + 0.35 * h
        x0 = int(round(_u(rng, lo_x, hi_x)))
        y0 = int(round(_u(rng, lo_y, hi_y)))
        region = _clip_region(x0, y0, w, h, W, H)
        if region is None:
            return None
        img_sl, spr_sl = region
        inside = solid[spr_sl]
        if inside.sum() < _MIN_INSIDE * area:
            return None
        under = owner[img_sl][inside]
        covered = np.bincount(under[under >= 0], minlength=len(placed))[: len(placed)]
        for obj, c in zip(placed, covered):
            if c and obj["visible"] - c < (1.0 - _MAX_HIDDEN) * obj["full"]:
                return None
        return x0, y0, covered

    def _composite(self, canvas, sprite: _Sprite, x0: int, y0: int) -> None:
        rng, W, H = self.rng, self.W, self.H
        h, w = sprite.alpha.shape
        if rng.random() < 0.6:  # soft drop shadow
            sx = int(round(w * _u(rng, 0.04, 0.12) * (1 if rng.random() < 0.5 else -1)))
            sy = int(round(h * _u(rng, 0.01, 0.04)))
            shadow = cv2.GaussianBlur(sprite.alpha, (0, 0), max(1.0, w * 0.06)) * _u(rng, 0.25, 0.45)
            region = _clip_region(x0 + sx, y0 + sy, w, h, W, H)
            if region is not None:
                img_sl, spr_sl = region
                canvas[img_sl] *= (1.0 - shadow[spr_sl])[..., None]
        img_sl, spr_sl = _clip_region(x0, y0, w, h, W, H)
        a = sprite.alpha[spr_sl][..., None]
        sub = canvas[img_sl]
        sub *= 1.0 - a
        sub += sprite.rgb[spr_sl] * a

    def _finish(self, canvas: np.ndarray) -> np.ndarray:
        rng = self.rng
        contrast = _u(rng, 0.8, 1.2)
        brightness = _u(rng, -20, 20)
        gains = rng.uniform(0.94, 1.06, 3).astype(np.float32)
        # (x - 128) * contrast + 128 + brightness, then a slight colour cast, in one pass.
        canvas *= gains * contrast
        canvas += gains * (128.0 * (1.0 - contrast) + brightness) + 0.5
        if rng.random() < 0.3:
            canvas = cv2.GaussianBlur(canvas, (0, 0), _u(rng, 0.4, 1.0))
        sigma = _u(rng, 0.0, 4.0)
        if sigma > 0.5:  # sensor noise, luminance only
            canvas += (rng.standard_normal(canvas.shape[:2], dtype=np.float32) * sigma)[..., None]
        np.clip(canvas, 0, 255, out=canvas)
        return canvas.astype(np.uint8)
