"""The data a run trains on: the demo (generated on first use) or the user's dataset, checked
by the annotation checker, split, loaded as records, and served by the data loaders."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.data.distributed import DistributedSampler

from detect.checks import check_dataset, format_finding
from detect.checks.anchor_fit import anchor_rule
from detect.common.errors import DetectError, UsageError, show
from detect.data.dataset import DetectionDataset, GroupedBatchSampler, build_transforms, collate
from detect.demo.dataset import is_complete, make_demo_dataset
from detect.data.images import ImageError, read_image
from detect.data.layout import DatasetFiles, discover, read_classes, resolve_splits
from detect.data.records import Record, check_classes, class_names_from, load_records, median_image_size
from detect.training.config import Echo, RunFacts, TrainConfig, log_echo, resolve_config
from detect.training.balance import RepeatFactorSampler, class_repeat_factors, image_repeat_factors
from detect.training.distributed import Dist
from detect.training.engine import seed_worker

log = logging.getLogger(__name__)

__all__ = ["AnnotationErrors", "Data", "data_facts", "demo_root", "load_data", "make_loaders", "open_data",
           "prepare_data", "repeat_factors", "run_checker"]

DEMO_SEED = 0
DEMO_IMAGE_SIZE = (320, 240)


class AnnotationErrors(DetectError):
    """The checker found errors in the dataset: exit code 1, like tools/check_xml.py."""


@dataclass
class Data:
    """The records a run trains and validates on."""

    classes: list[str]
    train: list[Record]
    val: list[Record]
    split_info: dict[str, Any]
    root: Path
    layout: str
    input_note: str = ""  # how the input size was chosen, for the banner


def demo_root(demo_images: int, defect_rate: float | None = None) -> Path:
    """Where the demo dataset of ``demo_images`` images (with ``defect_rate``, when given)
    lives (``$DETECT_CACHE`` or ``.cache``)."""
    rare = "" if defect_rate is None else f"-defects{defect_rate:g}"
    return Path(os.environ.get("DETECT_CACHE", ".cache")) / f"demo-{demo_images}{rare}"


def open_data(cfg: TrainConfig, echo: Echo = log_echo, *, dist: Dist = Dist()) -> tuple[TrainConfig, DatasetFiles]:
    """The demo (made on first use, by rank 0) or the user's dataset, found on disk.

    Returns the config with ``data`` (and, for the demo, ``classes``) filled in, and the files.
    """
    cfg = dataclasses.replace(cfg)
    if cfg.data is None:
        root = demo_root(cfg.demo_images, cfg.demo_defect_rate)
        rare = {} if cfg.demo_defect_rate is None else {"defect_rate": cfg.demo_defect_rate}
        if dist.main and not is_complete(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE,
                                         **rare):
            echo(f"Generating the demo dataset ({cfg.demo_images} images) into {root} ...")
            try:
                make_demo_dataset(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE,
                                  **rare)
            except FileExistsError as exc:  # a folder of something else where the demo goes
                raise UsageError(f"{show(exc)}; or set DETECT_CACHE to another folder for the demo data") from None
            except OSError as exc:
                raise UsageError(f"{show(root)}: cannot write the demo dataset there ({exc.strerror or exc}); "
                                 "set DETECT_CACHE to a folder you can write to") from None
        dist.barrier()
        cfg.data = root
        if cfg.classes is None:
            cfg.classes = root / "classes.txt"
    return cfg, discover(cfg.data, images=cfg.images)


def data_facts(cfg: TrainConfig, files: DatasetFiles) -> tuple[tuple[int, int] | None, str]:
    """The data's median image size when the input size is left to it (else None), and how
    the banner says so."""
    if cfg.model.input_size is not None:
        return None, ""
    median = median_image_size(files, exif=cfg.exif)
    note = f" (from the data: median image {median[0]}x{median[1]}; --input-size to change)" if median else ""
    return median, note


def load_data(cfg: TrainConfig, files: DatasetFiles, echo: Echo = log_echo) -> Data:
    """The dataset checked (unless ``no_check``), split and loaded as records, with its classes.

    Raises:
        AnnotationErrors: the checker found errors (exit 1; ``skip_invalid`` leaves those files out).
        UsageError: no classes, an empty train split, or no object of the classes to learn.
    """
    listed = read_classes(cfg.classes) if cfg.classes is not None else None
    if listed is None and files.classes:  # a COCO/YOLO source states its class order: keep it
        listed = list(files.classes)
    skip = set() if cfg.no_check else run_checker(files, listed, cfg, echo)
    splits, source = resolve_splits(files, val_fraction=cfg.val_fraction, folds=cfg.folds, fold=cfg.fold)
    train = load_records(files, splits["train"], skip=skip, exif=cfg.exif)
    val = readable(load_records(files, splits["val"], skip=skip, exif=cfg.exif), echo)
    if listed is not None:
        classes = listed
        check_classes(train + val, classes, classes_file=str(cfg.classes or cfg.data))
    else:
        classes = class_names_from(train + val)
    if not classes:
        raise UsageError(f"{show(cfg.data)}: no objects in any annotation; nothing to learn")
    if not train:
        raise UsageError(f"{show(cfg.data)}: the train split is empty")
    known = set(classes)
    if not any(o.name in known for r in train for o in r.annotation.objects):
        raise UsageError(
            f"{show(cfg.data)}: the train split has no objects of the classes {', '.join(map(show, classes))} "
            f"({len(train)} images, all background); nothing to learn: annotate the objects, or check --classes"
        )
    split_info = {"source": source, **{k: list(v) for k, v in splits.items()}}
    return Data(classes, train, val, split_info, Path(cfg.data), files.layout)


def readable(records: list[Record], echo: Echo = log_echo) -> list[Record]:
    """The records whose images decode whole. The checker reads only image headers (without
    ``--deep``), and a val image with a good header but cut data would stop the run after a
    whole epoch of training: the val images are decoded once here, and one that fails is left
    out with a warning naming it."""
    out = []
    for r in records:
        try:
            read_image(r.image, exif=r.exif)
        except ImageError as exc:
            echo(f"leaving out of the val split an image that does not decode: {exc}", err=True)
            continue
        out.append(r)
    return out


def prepare_data(cfg: TrainConfig, echo: Echo = log_echo, *, dist: Dist = Dist(),
                 cuda: bool = False) -> tuple[TrainConfig, Data]:
    """:func:`open_data`, the data-dependent defaults (:func:`resolve_config` with the data's
    facts; from-scratch weights assumed) and :func:`load_data` in one call, for scripts and
    benchmarks that build a run's data as ``detect.train`` does."""
    cfg, files = open_data(cfg, echo, dist=dist)
    median, note = data_facts(cfg, files)
    cfg = resolve_config(cfg, RunFacts(median_size=median, world=dist.world, cuda=cuda))
    data = load_data(cfg, files, echo)
    data.input_note = note
    return cfg, data


def run_checker(files: DatasetFiles, classes: list[str] | None, cfg: TrainConfig, echo: Echo = log_echo) -> set[Path]:
    """Run the annotation checker; refuse a dataset with errors unless ``skip_invalid``.

    Returns the XML files to leave out. Raises :class:`AnnotationErrors` (exit 1).
    """
    report = check_dataset(
        files,
        classes=classes,
        backbone=cfg.model.backbone,
        input_size=cfg.model.input_size,
        anchor_scales=cfg.model.anchor_scales,
        anchor_ratios=cfg.model.anchor_ratios,
        anchor_rule=lambda: anchor_rule,
        exif=cfg.exif,
    )
    if not report.errors:
        if report.warnings:
            log.info("annotation check: %d warning(s); run tools/check_xml.py for details", len(report.warnings))
        return set()
    if cfg.skip_invalid:
        echo(f"--skip-invalid: leaving out {len(report.files_with_errors)} annotation file(s) with "
             f"{len(report.errors)} error(s)", err=True)
        return set(report.files_with_errors)
    shown = "\n  ".join(format_finding(f) for f in report.errors[:5])
    more = f"\n  ... and {len(report.errors) - 5} more" if len(report.errors) > 5 else ""
    raise AnnotationErrors(
        f"the dataset has {len(report.errors)} annotation error(s):\n  {shown}{more}\n"
        f"See all with: python tools/check_xml.py {files.root}\n"
        "Fix them, or train anyway without those files: --skip-invalid"
    )


def repeat_factors(cfg: TrainConfig, data: Data) -> tuple[dict[str, float], list[float]]:
    """``--balance repeat``: each class's repeat factor and each train image's (training/balance.py)."""
    known = set(data.classes)
    present = [{o.name for o in r.annotation.objects if o.name in known} for r in data.train]
    per_class = class_repeat_factors(present, cfg.balance_t)
    return {c: per_class[c] for c in data.classes if c in per_class}, image_repeat_factors(present, per_class)


def make_loaders(cfg: TrainConfig, data: Data, dist: Dist = Dist(), device: torch.device = torch.device("cpu")):
    """The train set and loader (this process's share of each epoch, in batches of like-shaped
    images), its sampler, the val loader (rank 0 validates) and the loader's generator."""
    cache_dir = Path(os.environ.get("DETECT_CACHE", ".cache")) / "decoded"
    train_set = DetectionDataset(data.train, data.classes, build_transforms(cfg.augment, input_size=cfg.model.input_size),
                                 cache=cfg.cache, resize_to=cfg.model.input_size, cache_dir=cache_dir)
    val_set = DetectionDataset(data.val, data.classes, None, cache=cfg.cache, cache_dir=cache_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    # One sampler for one process or many: the epoch's order comes from (seed, epoch).
    if cfg.balance == "repeat":
        sampler = RepeatFactorSampler(repeat_factors(cfg, data)[1], num_replicas=dist.world, rank=dist.rank,
                                      seed=cfg.seed)
    else:
        sampler = DistributedSampler(train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    drop_last = len(sampler) > cfg.batch_size
    if cfg.aspect_grouping:
        batches = GroupedBatchSampler(sampler, train_set.aspect_groups(), cfg.batch_size, drop_last=drop_last)
    else:
        batches = BatchSampler(sampler, cfg.batch_size, drop_last=drop_last)
    workers = dict(num_workers=cfg.workers, persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collate, worker_init_fn=seed_worker,
                              generator=generator, **workers)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate, **workers)
    return train_set, train_loader, sampler, val_loader, generator


