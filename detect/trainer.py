"""Training a detector: a typed config, the two recipes, and :func:`train` from top to bottom.

:func:`train` reads like torchvision's reference ``main``: config -> data -> model ->
optimizer and schedule -> epochs of (:func:`detect.engine.train_one_epoch`,
:func:`detect.engine.evaluate`, checkpoint) -> run log. The run folder and its files
belong to :class:`detect.runs.RunFolder`.

With no ``data`` it trains on the procedural demo dataset (generated once into
``.cache/``) with :data:`DEMO_RECIPE`, sized for a 2-core CPU; a user's dataset gets
:data:`DATA_RECIPE`. Every recipe value is only a default: what the config sets wins.

The library never prints: the run's narrative (the banner, one line per epoch) goes to
the ``echo`` callback, which ``python -m detect.train`` prints and which logs by default.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from detect.anchor_fit import anchor_rule
from detect.checkpoint import load_checkpoint
from detect.checks import check_dataset, format_finding
from detect.dataset import DetectionDataset, build_transforms, collate
from detect.demo import is_complete, make_demo_dataset
from detect.device import resolve_device
from detect.engine import (
    LOSS_KEYS,
    NonFiniteLoss,
    evaluate,
    lr_lambda,
    make_optimizer,
    seed_everything,
    seed_worker,
    train_one_epoch,
    validation_loss,
)
from detect.errors import DetectError, UsageError
from detect.layout import DatasetFiles, discover, read_classes, resolve_splits
from detect.model import WEIGHT_CHOICES, anchors_per_location, build_model, describe_anchors
from detect.records import Record, check_classes, class_names_from, ground_truths, load_records
from detect.runs import RunFolder, join_numbers, training_mode, training_record

log = logging.getLogger(__name__)

__all__ = ["DATA_RECIPE", "DEMO_RECIPE", "AnnotationErrors", "TrainConfig", "TrainResult", "resolve_config", "train"]

# The recipe when the user gives no data: the bundled demo, from scratch (no pretrained
# weights offline), on a 2-core CPU in under 15 minutes. Chosen by measurement, see the
# README's "The demo recipe"; every value can be overridden.
DEMO_RECIPE = dict(
    epochs=8,
    batch_size=4,
    input_size=256,
    # Upright cans are ~1.5x, bottles ~3x taller than wide, lying cans ~0.5x: these
    # ratios lifted the demo's mAP@0.5 from 0.278 to 0.296 in the same 8 epochs.
    anchor_ratios=[0.5, 1.5, 3.0],
    rpn_pre_nms=600,
    rpn_post_nms=300,
    rpn_batch=128,
    roi_batch=128,
    demo_images=480,
    augment="light",
)
# The recipe for a user's dataset: torchvision's reference settings at a smaller input
# size, for a GPU or a patient CPU.
DATA_RECIPE = dict(
    epochs=24,
    batch_size=4,
    input_size=640,
    anchor_ratios=[0.5, 1.0, 2.0],
    rpn_pre_nms=2000,
    rpn_post_nms=1000,
    rpn_batch=256,
    roi_batch=512,
    augment="light",
)
DEMO_SEED = 0
DEMO_IMAGE_SIZE = (320, 240)


class AnnotationErrors(DetectError):
    """The checker found errors in the dataset: exit code 1, like tools/check_xml.py."""


@dataclass
class TrainConfig:
    """Every training option (``python -m detect.train --help`` describes each).

    ``None`` means "from the recipe" (:data:`DEMO_RECIPE` without ``data``, else
    :data:`DATA_RECIPE`) or "decided when the model is known" (``optimizer``, ``lr``,
    ``amp``, ``workers``, ``trainable_layers``); :func:`resolve_config` fills them in.
    Anchor ``ratios`` are height/width; ``input_size`` is the longest image side in pixels.
    """

    # data
    data: Path | None = None
    images: Path | None = None
    classes: Path | None = None
    val_fraction: float = 0.2
    augment: str | None = None
    skip_invalid: bool = False
    demo_images: int | None = None
    # model
    backbone: str = "mobilenet"
    weights: str = "auto"
    trainable_layers: int | None = None
    input_size: int | None = None
    anchor_scales: list[float] | None = None
    anchor_ratios: list[float] | None = None
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_pre_nms: int | None = None
    rpn_post_nms: int | None = None
    rpn_batch: int | None = None
    roi_batch: int | None = None
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_iters: int = 200
    clip_grad: float = 10.0
    patience: int = 0
    amp: bool | None = None
    # run
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    out: Path = Path("weights")
    name: str | None = None
    resume: Path | None = None
    no_check: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings): what ``args.json`` and checkpoints store."""
        return {f.name: (str(v) if isinstance(v, Path) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`as_dict`; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in values.items() if k in known})
        for key in ("data", "images", "classes", "out", "resume"):
            value = getattr(cfg, key)
            if value is not None:
                setattr(cfg, key, Path(value))
        return cfg


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill unset options from the recipe that fits (demo or user data) and validate.

    Raises:
        UsageError: a value out of range, or ``weights`` neither a choice nor a file.
    """
    cfg = dataclasses.replace(cfg)
    recipe = DEMO_RECIPE if cfg.data is None else DATA_RECIPE
    for key, value in recipe.items():
        if getattr(cfg, key, None) is None:
            setattr(cfg, key, value)
    for key in ("epochs", "batch_size", "input_size", "demo_images"):
        value = getattr(cfg, key, None)
        if value is not None and value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= cfg.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.rpn_bg_iou <= cfg.rpn_fg_iou <= 1:
        raise UsageError("need 0 <= --rpn-bg-iou <= --rpn-fg-iou <= 1")
    if cfg.weights not in WEIGHT_CHOICES and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: not one of {', '.join(WEIGHT_CHOICES)} and no such file")
    if cfg.workers is None:
        cores = os.cpu_count() or 1
        cfg.workers = 0 if (cores <= 2 and not torch.cuda.is_available()) else min(4, cores - 1)
    return cfg


class Echo(Protocol):
    """Where the run's narrative goes: ``echo(text)``, ``echo(text, err=True)`` for notes."""

    def __call__(self, text: str, *, err: bool = False) -> None: ...


def _log_echo(text: str, *, err: bool = False) -> None:
    log.log(logging.WARNING if err else logging.INFO, "%s", text)


# --------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    """The records a run trains and validates on."""

    classes: list[str]
    train: list[Record]
    val: list[Record]
    split_info: dict[str, Any]
    root: Path
    layout: str


def demo_root(demo_images: int) -> Path:
    """Where the demo dataset of ``demo_images`` images lives (``$DETECT_CACHE`` or ``.cache``)."""
    return Path(os.environ.get("DETECT_CACHE", ".cache")) / f"demo-{demo_images}"


def prepare_data(cfg: TrainConfig, echo: Echo = _log_echo) -> tuple[TrainConfig, Data]:
    """The demo (made on first use) or the user's dataset, checked, split and loaded.

    Returns the config with ``data`` (and, for the demo, ``classes``) filled in.
    """
    cfg = dataclasses.replace(cfg)
    if cfg.data is None:
        root = demo_root(cfg.demo_images)
        if not is_complete(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE):
            echo(f"Generating the demo dataset ({cfg.demo_images} images) into {root} ...")
            make_demo_dataset(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)
        cfg.data = root
        if cfg.classes is None:
            cfg.classes = root / "classes.txt"
    files = discover(cfg.data, images=cfg.images)
    listed = read_classes(cfg.classes) if cfg.classes is not None else None
    skip = set() if cfg.no_check else run_checker(files, listed, cfg, echo)
    splits, source = resolve_splits(files, val_fraction=cfg.val_fraction)
    train = load_records(files, splits["train"], skip=skip)
    val = load_records(files, splits["val"], skip=skip)
    if listed is not None:
        classes = listed
        check_classes(train + val, classes, classes_file=str(cfg.classes))
    else:
        classes = class_names_from(train + val)
    if not classes:
        raise UsageError(f"{cfg.data}: no objects in any annotation; nothing to learn")
    if not train:
        raise UsageError(f"{cfg.data}: the train split is empty")
    split_info = {"source": source, **{k: list(v) for k, v in splits.items()}}
    return cfg, Data(classes, train, val, split_info, Path(cfg.data), files.layout)


def run_checker(files: DatasetFiles, classes: list[str] | None, cfg: TrainConfig, echo: Echo = _log_echo) -> set[Path]:
    """Run the annotation checker; refuse a dataset with errors unless ``skip_invalid``.

    Returns the XML files to leave out. Raises :class:`AnnotationErrors` (exit 1).
    """
    report = check_dataset(
        files,
        classes=classes,
        backbone=cfg.backbone,
        input_size=cfg.input_size,
        anchor_scales=cfg.anchor_scales,
        anchor_ratios=cfg.anchor_ratios,
        anchor_rule=lambda: anchor_rule,
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


# --------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """How a run ended: ``status`` is ``finished``, ``early-stopped`` or ``interrupted``."""

    run: RunFolder
    status: str
    best_map50: float
    best_epoch: int  # 1-based; 0 when no epoch finished
    last_epoch: int  # 1-based epoch being trained when it ended
    train_time: float
    config: TrainConfig = field(repr=False)


def _resume(cfg: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The checkpoint to resume from and the run's own config (device and workers from ``cfg``)."""
    ckpt = load_checkpoint(cfg.resume)
    if "train_state" not in ckpt:
        raise UsageError(f"{cfg.resume}: has no training state to resume from; pass the run's last.pt")
    stored = TrainConfig.from_dict(ckpt["args"])
    stored.device, stored.workers, stored.resume = cfg.device, cfg.workers, cfg.resume
    if stored.workers is None:
        stored.workers = resolve_config(dataclasses.replace(stored, workers=None)).workers
    return ckpt, stored


def _build_model(cfg: TrainConfig, num_classes: int):
    return build_model(
        backbone=cfg.backbone,
        num_classes=num_classes,
        anchor_scales=cfg.anchor_scales,
        anchor_ratios=cfg.anchor_ratios,
        input_size=cfg.input_size,
        weights=cfg.weights,
        trainable_layers=cfg.trainable_layers,
        rpn_fg_iou=cfg.rpn_fg_iou,
        rpn_bg_iou=cfg.rpn_bg_iou,
        # The same proposal budget at test time: inference cost is mostly the box head
        # running on every proposal.
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms,
        rpn_batch_size_per_image=cfg.rpn_batch,
        box_batch_size_per_image=cfg.roi_batch,
    )


def train(cfg: TrainConfig, *, echo: Echo = _log_echo, progress: bool = False) -> TrainResult:
    """Train a detector as ``cfg`` says; Ctrl-C saves ``last.pt`` and returns ``interrupted``.

    Raises:
        DetectError: a usage error (exit 2), annotation errors or a non-finite loss (exit 1).
    """
    ckpt = None
    if cfg.resume is not None:
        ckpt, cfg = _resume(cfg)
    else:
        cfg = resolve_config(cfg)
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" if cfg.amp is None else (cfg.amp and device.type == "cuda")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    cfg, data = prepare_data(cfg, echo)
    if ckpt is not None and list(ckpt["classes"]) != data.classes:
        raise UsageError(f"{cfg.resume}: trained on classes {ckpt['classes']}, but the data now has {data.classes}")
    run = RunFolder(cfg.resume.parent) if ckpt else RunFolder.new(cfg.out, cfg.name or cfg.backbone)
    cfg.name = run.name

    # The model: a resumed run is rebuilt from its checkpoint's own description.
    model = build_model(**ckpt["model_config"]) if ckpt else _build_model(cfg, len(data.classes) + 1)
    model.to(device)
    if cfg.optimizer is None:
        # Measured here: from scratch, AdamW reaches in 8 epochs what SGD needs far longer
        # for; fine-tuning pretrained weights, SGD with momentum is the torchvision recipe.
        cfg.optimizer = "sgd" if model.weights_report.source != "none" else "adamw"
    if cfg.lr is None:
        cfg.lr = 0.02 * cfg.batch_size / 16 if cfg.optimizer == "sgd" else 0.001
    weights_source = "resumed" if ckpt else model.weights_report.source
    # How the run started, for the comparison table; a resumed run keeps its record (one
    # from before these records knows its weights only when they were not "auto").
    earlier = (ckpt or {}).get("training")
    mode = earlier or training_mode(
        weights=model.weights_report.source if not ckpt else None if cfg.weights == "auto" else cfg.weights,
        backbone=cfg.backbone, trainable_layers=model.config["trainable_layers"])

    # Data loaders.
    train_set = DetectionDataset(data.train, data.classes, build_transforms(cfg.augment, input_size=cfg.input_size))
    val_set = DetectionDataset(data.val, data.classes, None)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers, collate_fn=collate,
        worker_init_fn=seed_worker, generator=generator, drop_last=len(train_set) > cfg.batch_size,
        persistent_workers=False, pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                            collate_fn=collate)
    truths = ground_truths(data.val, data.classes)

    # Optimizer, schedule, AMP scaler; restored when resuming.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        epochs=cfg.epochs, iters_per_epoch=len(train_loader), warmup_iters=cfg.warmup_iters, schedule=cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch, best_map, best_epoch, train_time = 0, -1.0, -1, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        st = ckpt["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch = ckpt["epoch"] + 1
        best_map, best_epoch, train_time = st["best_map50"], st["best_epoch"], st["train_time"]
        echo(f"Resuming {run.path} at epoch {start_epoch + 1}/{cfg.epochs}")
    else:
        run.start(cfg.as_dict(), data.split_info)
    run.checkpoint_base = {
        "model_config": model.config,
        "classes": data.classes,
        "backbone": cfg.backbone,
        "run": run.name,
        "args": cfg.as_dict(),
        "data": {
            "root": str(data.root),
            "images": str(cfg.images) if cfg.images else None,
            "layout": data.layout,
            "splits": {k: v for k, v in data.split_info.items() if k != "source"},
        },
    }
    _banner(echo, cfg, run, data, model, device, len(train_loader))

    def train_state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best_map50": best_map, "best_epoch": best_epoch,
                "train_time": train_time}

    epoch = last_done = start_epoch - 1
    final_loss = (earlier or {}).get("final_loss")
    status = "finished"
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            seed_everything(cfg.seed * 10_000 + epoch, generator, train_set.transform)
            losses = train_one_epoch(model, optimizer, train_loader, device, epoch=epoch, epochs=cfg.epochs,
                                     scheduler=scheduler, scaler=scaler, amp=amp, clip_grad=cfg.clip_grad,
                                     progress=progress)
            val_map = evaluate(model, val_loader, truths, data.classes, device) if data.val else 0.0
            val_loss = (validation_loss(model, val_loader, device, seed=cfg.seed * 10_000 + epoch, amp=amp)["loss"]
                        if data.val else None)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            lr = optimizer.param_groups[0]["lr"]
            run.add_epoch({"epoch": epoch + 1, **{k: round(losses.get(k, 0.0), 5) for k in ("loss", *LOSS_KEYS)},
                           "lr": f"{lr:.6g}", "val_loss": "" if val_loss is None else round(val_loss, 5),
                           "val_map50": round(val_map, 5), "epoch_time_s": round(epoch_time, 1)})
            improved = val_map > best_map
            if improved:
                best_map, best_epoch = val_map, epoch
            metrics = {"map50": val_map, "best_map50": best_map, "best_epoch": best_epoch + 1}
            state = model.state_dict()
            final_loss = losses.get("loss")
            cost = training_record(mode, epochs=epoch + 1, train_time=train_time, final_loss=final_loss,
                                   device=device, earlier=earlier)
            run.save("last", model_state=state, epoch=epoch, metrics=metrics, train_state=train_state(),
                     training=cost)
            if improved:
                run.save("best", model_state=state, epoch=epoch, metrics=metrics, training=cost)
            last_done = epoch
            echo(f"epoch {epoch + 1}/{cfg.epochs}  loss {losses.get('loss', 0):.4f}  lr {lr:.5f}  "
                 f"val mAP@0.5 {val_map:.4f}{' *' if improved else ''}  {epoch_time:.0f}s")
            if cfg.patience and epoch - best_epoch >= cfg.patience:
                echo(f"Early stop: no better val mAP@0.5 for {cfg.patience} epochs "
                     f"(best {best_map:.4f} at epoch {best_epoch + 1})")
                status = "early-stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        # Keep what the cut-short epoch learned; --resume runs that epoch again from these
        # weights (last.pt's epoch is the last finished one).
        run.save("last", model_state=model.state_dict(), epoch=last_done,
                 metrics={"map50": None, "best_map50": best_map, "best_epoch": best_epoch + 1, "interrupted": True},
                 train_state=train_state(),
                 training=training_record(mode, epochs=last_done + 1, train_time=train_time, final_loss=final_loss,
                                          device=device, earlier=earlier))
    except NonFiniteLoss:
        status = "stopped: non-finite loss"
        raise
    finally:
        if last_done >= start_epoch or status != "finished":
            run.log_run({
                "backbone": cfg.backbone, "data": str(data.root), "epochs": cfg.epochs, "batch": cfg.batch_size,
                "lr": cfg.lr, "input_size": cfg.input_size, "anchor_scales": join_numbers(cfg.anchor_scales),
                "anchor_ratios": join_numbers(cfg.anchor_ratios), "weights": weights_source,
                "best_val_map50": f"{max(best_map, 0):.4f}", "train_time_min": f"{train_time / 60:.2f}",
                "status": status,
            })
    return TrainResult(run=run, status=status, best_map50=max(best_map, 0.0), best_epoch=best_epoch + 1,
                       last_epoch=last_done + 2 if status == "interrupted" else last_done + 1,
                       train_time=train_time, config=cfg)


def _banner(echo: Echo, cfg: TrainConfig, run: RunFolder, data: Data, model, device, iters_per_epoch: int) -> None:
    echo(f"Run {run.path}: {cfg.backbone}, {len(data.classes)} classes ({', '.join(data.classes)}), "
         f"{len(data.train)} train / {len(data.val)} val images, input {cfg.input_size}px, device {device}")
    echo(f"RPN anchors ({'/'.join(str(n) for n in anchors_per_location(model))} per location):")
    echo("  " + describe_anchors(model.rpn.anchor_generator).replace("\n", "\n  "))
    echo(f"  matched by IoU: foreground >= {cfg.rpn_fg_iou}, background < {cfg.rpn_bg_iou}")
    echo(f"  {model.weights_report.summary()}")
    echo(f"Optimizer {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}, "
         f"{min(cfg.warmup_iters, iters_per_epoch)} warm-up iterations), "
         f"batch {cfg.batch_size}, {cfg.epochs} epochs, augment {cfg.augment}")

