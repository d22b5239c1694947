"""Records -> a torch Dataset of images and targets, with albumentations augmentation.

Data flows one way: :mod:`detect.data.layout` finds files, :mod:`detect.data.voc` parses them,
:mod:`detect.data.records` pairs and sanitises them, and this module turns records into training
samples:

* :func:`build_transforms` is the augmentation (bbox-aware albumentations);
* :class:`DetectionDataset` yields ``(image, target, meta)`` where ``image`` is a float
  ``[3, H, W]`` tensor in ``[0, 1]``, ``target`` holds ``boxes`` (``FloatTensor[N, 4]``,
  ``xmin, ymin, xmax, ymax`` pixels of *that* tensor) and ``labels`` (``Int64Tensor[N]``,
  ``1..K``; 0 is background), and ``meta`` names the files.

``difficult`` objects are trained on, like detectron2 does (they are real instances of
the class; leaving them out teaches the model that they are background); evaluation
ignores them, as VOC prescribes. Images without objects stay in as negatives with
``boxes`` of shape ``(0, 4)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

# albumentations asks the network for a newer version at import; our users' line PCs
# are often offline, and the check would stall start-up.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset, Sampler  # noqa: E402

from detect.common.files import atomic_open  # noqa: E402
from detect.data.images import image_size, read_image  # noqa: E402
from detect.data.tensors import image_tensor  # noqa: E402
from detect.data.records import Record, sanitize_objects  # noqa: E402

log = logging.getLogger(__name__)

AUGMENT_CHOICES = ("none", "light", "strong", "line")


def build_transforms(augment: str, *, input_size: int | None = None) -> A.Compose | None:
    """The albumentations pipeline for ``augment`` in :data:`AUGMENT_CHOICES`: ``"light"``
    (flips, small shifts and scales, light and colour), ``"strong"`` (more of each, some blur
    and noise), ``"line"`` (``"light"`` plus what a line camera does to images: sensor noise,
    motion and defocus blur, JPEG compression, harder light and contrast changes; aimed at the
    corruptions of ``detect.eval --corruptions``).

    Boxes travel in ``pascal_voc`` format (pixels, xmin/ymin/xmax/ymax) with their labels;
    a box pushed mostly out of the frame (less than 30 % visible) is dropped with its label.
    Returns None when there is nothing to do (``"none"`` without ``input_size``).
    ``input_size`` first shrinks the image so its longest side fits: the model would
    resize to that anyway, and augmenting the small image is several times cheaper.
    """
    if augment not in AUGMENT_CHOICES:
        raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {augment!r}")
    steps: list[A.BasicTransform] = []
    if input_size:
        steps.append(A.LongestMaxSize(max_size=input_size, p=1.0))
    if augment in ("light", "strong", "line"):
        strong = augment == "strong"
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.75, 1.25) if strong else (0.9, 1.1),
                translate_percent=(-0.1, 0.1) if strong else (-0.05, 0.05),
                border_mode=cv2.BORDER_CONSTANT,
                fill=114,
                p=0.7 if strong else 0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6 if strong else 0.4),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=15, p=0.5 if strong else 0.3),
        ]
        if strong:
            steps += [
                A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.3),
                A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
            ]
        if augment == "line":
            steps += [
                A.OneOf([A.MotionBlur(blur_limit=(3, 11), angle_range=(0, 0), direction_range=(0, 0)),
                         A.Defocus(radius=(1, 4), alias_blur=(0.1, 0.3))], p=0.3),
                A.OneOf([A.GaussNoise(std_range=(0.02, 0.1)), A.ShotNoise(scale_range=(0.002, 0.03))], p=0.3),
                A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=(-0.6, 0.2), p=0.3),
                A.ImageCompression(quality_range=(10, 60), p=0.25),
            ]
    if not steps:
        return None
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "indices"], min_visibility=0.3, min_area=1.0, clip=True
        ),
    )


CACHE_CHOICES = ("none", "ram", "disk")


class DetectionDataset(Dataset):
    """Records as model inputs.

    ``dataset[i]`` is ``(image, target, meta)``:

    * ``image``: ``FloatTensor[3, H, W]`` in ``[0, 1]`` (after the transform);
    * ``target``: ``{"boxes": FloatTensor[N, 4]`` (xmin, ymin, xmax, ymax in pixels of
      ``image``), ``"labels": Int64Tensor[N]`` (1..K)``}``; N may be 0;
    * ``meta``: ``{"id", "image", "xml", "orig_size": (H, W)}``.

    ``cache`` keeps each decoded image, shrunk to ``resize_to`` (its longest side; the model
    would resize to that anyway), so later epochs skip decoding: ``"ram"`` in this process
    (with loader workers, in each worker: make them persistent), ``"disk"`` as ``.npy``
    files under ``cache_dir`` (shared by workers and runs; keyed by the file's path, size,
    modification time and ``resize_to``).
    """

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        transform: A.Compose | None = None,
        *,
        cache: str = "none",
        resize_to: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        if cache not in CACHE_CHOICES:
            raise ValueError(f"cache must be one of {CACHE_CHOICES}, got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        self.records = list(records)
        self.classes = list(classes)
        self.label_of = {name: i + 1 for i, name in enumerate(self.classes)}
        self.transform = transform
        self.cache = cache
        self.resize_to = resize_to if cache != "none" else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        # The same resize the transform starts with, so cached and fresh images are alike.
        self._resize = A.LongestMaxSize(max_size=resize_to, p=1.0) if self.resize_to else None
        self._ram: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> list[int]:
        """Per image: 1 when wider than high, else 0 (from the XML's ``<size>``), for batches
        of like-shaped images (:class:`GroupedBatchSampler`)."""
        return [int(r.annotation.width >= r.annotation.height) for r in self.records]

    def _decoded(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The image (shrunk to ``resize_to`` when caching) and the file's ``(width, height)``."""
        rec = self.records[index]
        if index in self._ram:
            return self._ram[index]
        path = self._cache_path(rec) if self.cache == "disk" else None
        image = None
        if path is not None and path.is_file():
            try:
                image = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                image = None  # a damaged cache file is simply made again
        if image is None:
            image = read_image(rec.image, exif=rec.exif)
            size = (image.shape[1], image.shape[0])
            if self._resize is not None:
                image = self._resize(image=image)["image"]
            if path is not None:
                with atomic_open(path, "wb", fsync=False) as fh:
                    np.save(fh, image, allow_pickle=False)
        else:
            size = image_size(rec.image, exif=rec.exif)
        if self.cache == "ram":
            self._ram[index] = (image, size)
        return image, size

    def _cache_path(self, rec: Record) -> Path:
        st = os.stat(rec.image)
        # The frame is part of the key: a cache made before images were read upright (or
        # under the other --exif rule) holds other pixels.
        key = f"{os.path.abspath(rec.image)}|{st.st_size}|{st.st_mtime_ns}|{self.resize_to}|exif={rec.exif}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def __getitem__(self, index: int):
        rec = self.records[index]
        image, (ow, oh) = self._decoded(index)
        h, w = image.shape[:2]
        # Records were sanitised against the header size at load time; the decoded size
        # is the same unless the file changed since, and then clipping again is the fix.
        objects, _ = sanitize_objects(rec.annotation.objects, width=ow, height=oh)
        boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
        if (w, h) != (ow, oh):  # a cached image, already shrunk: its boxes follow
            boxes *= np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32)
        labels = np.array([self.label_of[o.name] for o in objects], dtype=np.int64)
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels, indices=np.arange(len(labels)))
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        tensor = image_tensor(image)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
        meta = {"id": rec.sample_id, "image": str(rec.image), "xml": str(rec.xml), "orig_size": (oh, ow)}
        return tensor, target, meta


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of images from one group (e.g. landscape vs portrait), so a batch is not
    padded to the union of different shapes; the order follows ``sampler`` (torchvision's
    detection references do the same). Leftovers of each group are batched at the end."""

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, *, drop_last: bool) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self):
        waiting: dict[int, list[int]] = {}
        for index in self.sampler:
            group = waiting.setdefault(self.group_ids[index], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        rest = [i for group in waiting.values() for i in group]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def collate(batch):
    """Lists, not stacked tensors: detection images differ in size."""
    images, targets, metas = zip(*batch)
    return list(images), list(targets), list(metas)
