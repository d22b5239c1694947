"""Training a detector: a typed config, the two recipes, and :func:`train` from top to bottom.

:func:`train` reads like torchvision's reference ``main``: config -> data -> model ->
optimizer and schedule -> epochs of (:func:`detect.training.engine.train_one_epoch`,
:func:`detect.training.engine.evaluate`, checkpoint) -> run log. The run folder and its files
belong to :class:`detect.training.run_folder.RunFolder`.

With no ``data`` it trains on the procedural demo dataset (generated once into
``.cache/``) with :data:`DEMO_RECIPE`, sized for a 2-core CPU; a user's dataset gets
:data:`DATA_RECIPE`. Every recipe value is only a default: what the config sets wins.

The library never prints: the run's narrative (the banner, one line per epoch) goes to
the ``echo`` callback, which ``python -m detect.train`` prints and which logs by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.data.distributed import DistributedSampler

from detect.training import distributed
from detect.training.distributed import Dist

from detect.checks.anchor_fit import anchor_rule
from detect.model.checkpoint import load_checkpoint
from detect.checks import check_dataset, format_finding
from detect.data.dataset import CACHE_CHOICES, DetectionDataset, GroupedBatchSampler, build_transforms, collate
from detect.data.demo import is_complete, make_demo_dataset
from detect.common.device import resolve_device
from detect.training.engine import (
    LOSS_KEYS,
    EpochState,
    NonFiniteLoss,
    capture_rng,
    evaluate,
    lr_lambda,
    make_optimizer,
    seed_everything,
    seed_worker,
    train_one_epoch,
    validation_loss,
)
from detect.common.errors import DetectError, UsageError, show
from detect.data.layout import DatasetFiles, discover, read_classes, resolve_splits
from detect.model.backbones import get_backbone
from detect.common.files import check_writable
from detect.model.build import WEIGHT_CHOICES, anchors_per_location, build_model, describe_anchors, feature_strides
from detect.model.config import FPN_NORMS, ModelConfig
from detect.common.options import Number
from detect.data.records import Record, check_classes, class_names_from, ground_truths, load_records, median_image_size
from detect.training.run_folder import RunFolder, join_numbers, training_mode, training_record

log = logging.getLogger(__name__)

__all__ = ["DATA_RECIPE", "DEMO_RECIPE", "LIMITS", "RESUMABLE", "AnnotationErrors", "TrainConfig", "TrainResult",
           "resolve_config", "resume_config", "train"]

# The recipe when the user gives no data: the bundled demo, from scratch (no pretrained
# weights offline), on a 2-core CPU in under 10 minutes. Chosen by measurement, see the
# README's "The demo recipe"; every value can be overridden.
DEMO_RECIPE = dict(
    # 12 since the faster RoIAlign gradient: 0.545 in 9.4 min, where 11 gave 0.507 in 8.2.
    epochs=12,
    batch_size=4,
    input_size=256,
    # Upright cans are ~1.5x, bottles ~3x taller than wide, lying cans ~0.5x: these
    # ratios lifted the demo's mAP@0.5 from 0.278 to 0.296 in the same 8 epochs (old layout).
    anchor_ratios=[0.5, 1.5, 3.0],
    rpn_pre_nms=600,
    rpn_post_nms=300,
    rpn_batch=128,
    # A quarter-width box head, one RoIAlign sample per bin and 64 sampled proposals cut
    # the box head's cost; GroupNorm in the FPN trains faster from scratch (0.48 -> 0.54).
    roi_batch=64,
    box_head_dim=256,
    roi_sampling_ratio=1,
    fpn_norm="gn",
    # The val loss pass costs 0.65x the val mAP pass, 4 s of a 56 s demo epoch: left out,
    # the epochs fit in 10 minutes (--val-loss puts it back).
    val_loss=False,
    demo_images=480,
    augment="light",
)
# The recipe for a user's dataset: torchvision's reference settings (and the box head and
# FPN that COCO weights fit), at an input size that fits the data and the machine.
DATA_RECIPE = dict(
    epochs=24,
    batch_size=4,
    # input_size: from the data (see input_size_for), unless given.
    anchor_ratios=[0.5, 1.0, 2.0],
    rpn_pre_nms=2000,
    rpn_post_nms=1000,
    rpn_batch=256,
    roi_batch=512,
    box_head_dim=1024,
    roi_sampling_ratio=2,
    fpn_norm="none",
    val_loss=True,
    augment="light",
)
DEMO_SEED = 0
DEMO_IMAGE_SIZE = (320, 240)

# The options that are the model's (:class:`ModelConfig` fields the command line sets).
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
MODEL_OPTIONS = MODEL_FIELDS - {"num_classes", "detector", "anchor_base_sizes", "feature_blocks", "frozen_bn"}

# The allowed values of every numeric option: the CLI parses with these, and
# resolve_config checks a config built in Python against the same ranges.
LIMITS: dict[str, Number] = {
    "val_fraction": Number(float, 0, 1, hi_open=True),
    "demo_images": Number(int, 1, 100_000),
    "trainable_layers": Number(int, 0),  # the backbone's own maximum is checked in resolve_config
    "input_size": Number(int, 32, 8192),
    "rpn_fg_iou": Number(float, 0, 1),
    "rpn_bg_iou": Number(float, 0, 1),
    "rpn_pre_nms": Number(int, 1),
    "rpn_post_nms": Number(int, 1),
    "rpn_batch": Number(int, 1),
    "roi_batch": Number(int, 1),
    "box_head_dim": Number(int, 1, 65_536),
    "roi_sampling_ratio": Number(int, 0, 16),
    "epochs": Number(int, 1),
    "batch_size": Number(int, 1, 4096),
    "lr": Number(float, 0, lo_open=True),
    "momentum": Number(float, 0, 1, hi_open=True),
    "weight_decay": Number(float, 0),
    "warmup_iters": Number(int, 0),
    "clip_grad": Number(float, 0),
    "patience": Number(int, 0),
    "workers": Number(int, 0, 256),
    "seed": Number(int, 0, 2**31 - 1),
}


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
    folds: int = 0  # K-fold split (detect.data.layout.kfold_split); 0: off
    fold: int = 0  # which fold is val
    augment: str | None = None
    skip_invalid: bool = False
    tensorboard: bool = False  # also log results.csv's rows and the settings for TensorBoard
    demo_images: int | None = None
    # model: the architecture; None fields come from the recipe (num_classes from the data)
    model: ModelConfig = field(default_factory=ModelConfig)
    weights: str = "auto"
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
    sync_bn: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    # run
    device: str = "auto"
    workers: int | None = None
    cache: str = "none"
    aspect_grouping: bool = True
    val_loss: bool | None = None
    seed: int = 0
    out: Path = Path("weights")
    name: str | None = None
    resume: Path | None = None
    no_check: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings, the model as :meth:`ModelConfig.as_dict`): what
        ``args.json`` and checkpoints store."""
        out = {f.name: (str(v) if isinstance(v, Path) else v)
               for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}
        out["model"] = self.model.as_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`as_dict`; also takes the flat form (the command line's options,
        and ``args.json`` of runs from before :class:`ModelConfig`), whose model options go
        into ``model``. Keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        model = values.get("model")
        model = dict(model) if isinstance(model, dict) else {}
        model.update({k: v for k, v in values.items() if k in MODEL_OPTIONS})
        cfg = cls(**{k: v for k, v in values.items() if k in known and k != "model"},
                  model=ModelConfig(**{k: v for k, v in model.items() if k in MODEL_FIELDS}))
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
        holder = cfg.model if key in MODEL_FIELDS else cfg
        if getattr(holder, key, None) is None:
            _set(cfg, key, value)
    for key, limit in LIMITS.items():
        holder = cfg.model if key in MODEL_FIELDS else cfg
        _set(cfg, key, limit.check(f"--{key.replace('_', '-')}", getattr(holder, key)))
    spec = get_backbone(cfg.model.backbone)
    if cfg.model.trainable_layers is not None and cfg.model.trainable_layers > spec.max_trainable_layers:
        raise UsageError(f"--trainable-layers for {cfg.model.backbone} must be from 0 to {spec.max_trainable_layers}, "
                         f"got {cfg.model.trainable_layers}")
    if not 0 <= cfg.model.rpn_bg_iou <= cfg.model.rpn_fg_iou <= 1:
        raise UsageError("need 0 <= --rpn-bg-iou <= --rpn-fg-iou <= 1")
    if cfg.model.fpn_norm not in FPN_NORMS:
        raise UsageError(f"--fpn-norm must be one of {', '.join(FPN_NORMS)}, got {cfg.model.fpn_norm!r}")
    if cfg.cache not in CACHE_CHOICES:
        raise UsageError(f"--cache must be one of {', '.join(CACHE_CHOICES)}, got {cfg.cache!r}")
    if cfg.resume is None and cfg.weights not in WEIGHT_CHOICES and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: not one of {', '.join(WEIGHT_CHOICES)} and no such file")
    if cfg.workers is None:
        cores = os.cpu_count() or 1
        cfg.workers = 0 if (cores <= 2 and not torch.cuda.is_available()) else min(4, cores - 1)
    return cfg


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set an option, on the model config when it is one of its fields."""
    if key in MODEL_FIELDS:
        cfg.model = cfg.model.replace(**{key: value})
    else:
        setattr(cfg, key, value)


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
    input_note: str = ""  # how the input size was chosen, for the banner


MAX_INPUT_CPU = 640  # a CPU epoch at 800 px costs 1.6x one at 640
MAX_INPUT_GPU = 1024


def input_size_for(size: tuple[int, int] | None, *, cuda: bool) -> int:
    """The input size for images of median ``(width, height)``: their longest side, rounded up
    to a multiple of 32, at least 128 and at most :data:`MAX_INPUT_CPU` (or
    :data:`MAX_INPUT_GPU` with CUDA): small images are not upscaled for nothing, large ones
    are shrunk to what the machine trains in reasonable time."""
    if size is None:
        return MAX_INPUT_CPU
    side = -(-max(size) // 32) * 32
    return int(min(max(side, 128), MAX_INPUT_GPU if cuda else MAX_INPUT_CPU))


def demo_root(demo_images: int) -> Path:
    """Where the demo dataset of ``demo_images`` images lives (``$DETECT_CACHE`` or ``.cache``)."""
    return Path(os.environ.get("DETECT_CACHE", ".cache")) / f"demo-{demo_images}"


def prepare_data(cfg: TrainConfig, echo: Echo = _log_echo, *, dist: Dist = Dist(),
                 cuda: bool = False) -> tuple[TrainConfig, Data]:
    """The demo (made on first use, by rank 0) or the user's dataset, checked, split and loaded.

    Returns the config with ``data`` (and, for the demo, ``classes``) filled in, and
    ``input_size`` taken from the images when it was not given (:func:`input_size_for`).
    """
    cfg = dataclasses.replace(cfg)
    if cfg.data is None:
        root = demo_root(cfg.demo_images)
        if dist.main and not is_complete(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE):
            echo(f"Generating the demo dataset ({cfg.demo_images} images) into {root} ...")
            make_demo_dataset(root, num_images=cfg.demo_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)
        dist.barrier()
        cfg.data = root
        if cfg.classes is None:
            cfg.classes = root / "classes.txt"
    files = discover(cfg.data, images=cfg.images)
    input_note = ""
    if cfg.model.input_size is None:
        median = median_image_size(files)
        cfg.model = cfg.model.replace(input_size=input_size_for(median, cuda=cuda))
        input_note = (f" (from the data: median image {median[0]}x{median[1]}; --input-size to change)"
                      if median else "")
    listed = read_classes(cfg.classes) if cfg.classes is not None else None
    if listed is None and files.classes:  # a COCO/YOLO source states its class order: keep it
        listed = list(files.classes)
    skip = set() if cfg.no_check else run_checker(files, listed, cfg, echo)
    splits, source = resolve_splits(files, val_fraction=cfg.val_fraction, folds=cfg.folds, fold=cfg.fold)
    train = load_records(files, splits["train"], skip=skip)
    val = load_records(files, splits["val"], skip=skip)
    if listed is not None:
        classes = listed
        check_classes(train + val, classes, classes_file=str(cfg.classes or cfg.data))
    else:
        classes = class_names_from(train + val)
    if not classes:
        raise UsageError(f"{cfg.data}: no objects in any annotation; nothing to learn")
    if not train:
        raise UsageError(f"{cfg.data}: the train split is empty")
    known = set(classes)
    if not any(o.name in known for r in train for o in r.annotation.objects):
        raise UsageError(
            f"{cfg.data}: the train split has no objects of the classes {', '.join(map(show, classes))} "
            f"({len(train)} images, all background); nothing to learn: annotate the objects, or check --classes"
        )
    split_info = {"source": source, **{k: list(v) for k, v in splits.items()}}
    return cfg, Data(classes, train, val, split_info, Path(cfg.data), files.layout, input_note)


def run_checker(files: DatasetFiles, classes: list[str] | None, cfg: TrainConfig, echo: Echo = _log_echo) -> set[Path]:
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
    """How a run ended: ``status`` is ``finished``, ``early-stopped`` or ``interrupted``.

    ``best_map50`` is None when the data has no val split; ``stopped_in`` is the 1-based
    epoch a Ctrl-C stopped, with ``resume_exact`` saying whether ``last.pt`` holds that
    point (a graceful stop) or the end of the epoch before (Ctrl-C pressed mid-step, where
    the steady state is the last finished epoch).
    """

    run: RunFolder
    status: str
    best_map50: float | None
    best_epoch: int  # 1-based; 0 when no epoch finished
    train_time: float
    config: TrainConfig = field(repr=False)
    stopped_in: int = 0
    resume_exact: bool = True
    model: Any = field(default=None, repr=False)  # the trained torch module (this process's)
    iterations: int = 0  # training steps this process took in this call


# What may change when a run is resumed: the rest is the run's own (its optimizer state and
# schedule were made for those settings). More epochs re-plan the schedule over the new length.
RESUMABLE = frozenset({"resume", "epochs", "patience", "device", "workers"})


def resume_config(path: str | os.PathLike[str], changes: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run ``path`` (its ``last.pt``) belongs to, with ``changes`` applied.

    Raises:
        UsageError: not a ``last.pt``, a change that cannot be made to a running run
            (anything but :data:`RESUMABLE`), or ``epochs`` not beyond what is trained.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "train_state" not in ckpt:
        raise UsageError(f"{path}: has no training state to resume from; pass the run's last.pt")
    changes = {k: v for k, v in (changes or {}).items() if k != "resume"}
    refused = sorted(set(changes) - RESUMABLE)
    if refused:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in refused)
        raise UsageError(
            f"--resume continues {path.parent.name} with its own settings, and {names} cannot change in a run "
            f"(only --epochs, --patience, --device, --workers can); start a new run from its weights instead: "
            f"python -m detect.train --weights {path} ..."
        )
    done = ckpt["epoch"] + 1
    if "epochs" in changes and changes["epochs"] <= done:
        raise UsageError(f"--epochs {changes['epochs']}: {path.parent.name} has already trained {done} epoch(s); "
                         f"give more than {done} to train on")
    return dataclasses.replace(TrainConfig.from_dict(ckpt["args"]), resume=path, **changes)


class _GracefulStop:
    """Ctrl-C as a request the loop honours at the next iteration boundary (and never in the
    middle of a checkpoint write), instead of an exception that could land half-way through
    an optimizer step. A third Ctrl-C, outside a save, stops at once."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.requests = 0
        self.saving = False
        self.installed = False

    def __enter__(self) -> "_GracefulStop":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        except ValueError:  # not the main thread: Ctrl-C stays an exception
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requests > 0

    def _handle(self, signum, frame) -> None:
        self.requests += 1
        if self.requests == 1:
            self.echo("\nCtrl-C: stopping after this step and saving last.pt (Ctrl-C twice more to stop at once)",
                      err=True)
        elif self.saving or self.requests == 2:
            self.echo("Ctrl-C: still finishing; last.pt is being written whole", err=True)
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def save(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False


def model_for_config(cfg: TrainConfig, num_classes: int):
    """The detector a (resolved) config describes, with ``num_classes`` outputs (background included)."""
    return build_model(cfg.model.replace(num_classes=num_classes), weights=cfg.weights)


def train(cfg: TrainConfig, *, echo: Echo = _log_echo, progress: bool = False) -> TrainResult:
    """Train a detector as ``cfg`` says (to resume, ``cfg`` is :func:`resume_config`'s).

    Under ``torchrun`` every process calls this; they train together with
    DistributedDataParallel and only rank 0 writes files and echoes.

    Ctrl-C stops at the next iteration boundary, saves ``last.pt`` and returns
    ``interrupted``; resuming from it ends exactly as an uninterrupted run would.

    Raises:
        DetectError: a usage error (exit 2), annotation errors, a non-finite loss or a
            checkpoint that cannot be written (exit 1).
    """
    dist, device_name = distributed.setup(cfg.device)
    try:
        return _train(cfg, dist, resolve_device(device_name), echo if dist.main else _silent, progress and dist.main)
    finally:
        dist.close()


def _silent(text: str, *, err: bool = False) -> None:
    pass


def _train(cfg: TrainConfig, dist: Dist, device: torch.device, echo: Echo, progress: bool) -> TrainResult:
    ckpt = _resume_checkpoint(cfg, dist)
    cfg = resolve_config(cfg)
    out = cfg.resume.parent if ckpt is not None else cfg.out
    try:  # before any data is read: a run that cannot save is no run
        if dist.main:
            check_writable(out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc}); pass a folder you can write to") from None
    amp_dtype = _amp_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    cfg, data = prepare_data(cfg, echo, dist=dist, cuda=device.type == "cuda")
    if ckpt is not None and list(ckpt["classes"]) != data.classes:
        raise UsageError(f"{cfg.resume}: trained on classes {ckpt['classes']}, but the data now has {data.classes}")
    # Rank 0 picks the run folder (a new name when the default is taken); the others follow.
    run_path = cfg.resume.parent if ckpt else (RunFolder.new(cfg.out, cfg.name or cfg.model.backbone).path if dist.main else None)
    run = RunFolder(Path(dist.broadcast(str(run_path) if run_path else None)), writes=dist.main,
                    tensorboard=cfg.tensorboard)
    cfg.name = run.name

    # The model: a resumed run is rebuilt from its checkpoint's own description. Every rank
    # starts from the same seed, and DDP broadcasts rank 0's weights besides.
    model = build_model(ModelConfig.from_dict(ckpt["model_config"])) if ckpt else model_for_config(cfg, len(data.classes) + 1)
    if cfg.optimizer is None:
        # Measured here: from scratch, AdamW reaches in 8 epochs what SGD needs far longer
        # for; fine-tuning pretrained weights, SGD with momentum is the torchvision recipe.
        cfg.optimizer = "sgd" if model.weights_report.source != "none" else "adamw"
    if cfg.lr is None:
        # torchvision's linear scaling rule for SGD: 0.02 at 16 images a step, all processes together.
        cfg.lr = 0.02 * cfg.batch_size * dist.world / 16 if cfg.optimizer == "sgd" else 0.001
    weights_source = "resumed" if ckpt else model.weights_report.source
    # How the run started, for the comparison table; a resumed run keeps its record (one
    # from before these records knows its weights only when they were not "auto").
    earlier = (ckpt or {}).get("training")
    mode = earlier or training_mode(
        weights=model.weights_report.source if not ckpt else None if cfg.weights == "auto" else cfg.weights,
        backbone=cfg.model.backbone, trainable_layers=model.config.trainable_layers)
    final_loss = (earlier or {}).get("final_loss")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    if dist.active and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set, train_loader, sampler, val_loader, generator = make_loaders(cfg, data, dist, device)
    truths = ground_truths(data.val, data.classes)

    # Optimizer, schedule, AMP scaler; restored when resuming.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        epochs=cfg.epochs, iters_per_epoch=len(train_loader), warmup_iters=cfg.warmup_iters, schedule=cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_epoch, best_map, best_epoch, train_time, partial = 0, -1.0, -1, 0.0, None
    if ckpt is not None:
        st = ckpt["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch = ckpt["epoch"] + 1
        best_map, best_epoch, train_time = st["best_map50"], st["best_epoch"], st["train_time"]
        if st.get("partial"):
            partial = EpochState.from_dict({**st["partial"], "rng": st["partial"]["rng"][dist.rank]})
        run.tidy_for_resume(epochs_done=start_epoch)
        if dist.main and not run.best.exists() and best_epoch >= 0:
            best_map, best_epoch = _repair_best(run, ckpt, best_epoch, partial, echo)
        best_map, best_epoch = dist.broadcast((best_map, best_epoch))
        where = f"epoch {start_epoch + 1}" + (f", iteration {partial.iteration + 1}" if partial else "")
        echo(f"Resuming {run.path} at {where} of {cfg.epochs}")
    else:
        run.start(cfg.as_dict(), data.split_info)
    run.checkpoint_base = {
        "model_config": model.config.as_dict(),
        "classes": data.classes,
        "backbone": cfg.model.backbone,
        "run": run.name,
        "args": cfg.as_dict(),
        "data": {
            "root": str(data.root),
            "images": str(cfg.images) if cfg.images else None,
            "layout": data.layout,
            "splits": {k: v for k, v in data.split_info.items() if k != "source"},
        },
    }
    _banner(echo, cfg, run, data, model, device, len(train_loader), dist, amp_dtype)

    def train_state(state: EpochState | None = None, rngs: list | None = None) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best_map50": best_map, "best_epoch": best_epoch,
                "train_time": train_time,
                "partial": {**state.as_dict(), "rng": rngs, "world": dist.world} if state is not None else None}

    last_done, iterations = start_epoch - 1, 0
    status, stopped_in, exact = "finished", 0, True
    try:
        with _GracefulStop(echo) as stop:
            # All processes must stop at the same step: the request is shared (every step on
            # CPUs; every 10 steps on GPUs, where sharing means waiting for the device).
            stop_now = _shared_stop(stop, dist, every=10 if device.type == "cuda" else 1)
            for epoch in range(start_epoch, cfg.epochs):
                state = partial if partial is not None and partial.epoch == epoch else EpochState(epoch)
                partial = None
                # The epoch's data order, augmentations and samplers follow from (seed, epoch):
                # a resumed epoch replays them (train_one_epoch then restores the streams).
                seed_everything(cfg.seed * 10_000 + epoch, generator, train_set.transform)
                sampler.set_epoch(epoch)
                done_before = state.iteration
                complete = train_one_epoch(net, optimizer, train_loader, device, state=state, epochs=cfg.epochs,
                                           scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype,
                                           clip_grad=cfg.clip_grad, progress=progress, stop=stop_now)
                iterations += state.iteration - done_before
                dist.sync_buffers(model)
                t0 = time.perf_counter()
                val_map, val_loss, val_stopped = None, None, False
                if complete and data.val and dist.main and not stop():
                    val_map = evaluate(model, val_loader, truths, data.classes, device, stop=stop)
                    val_stopped = val_map is None
                    if not val_stopped and cfg.val_loss:
                        val_losses = validation_loss(model, val_loader, device, seed=cfg.seed * 10_000 + epoch,
                                                     amp_dtype=amp_dtype, stop=stop)
                        val_stopped = val_losses is None
                        val_loss = None if val_stopped else val_losses.get("loss")
                val_map, val_loss, val_stopped = dist.broadcast((val_map, val_loss, val_stopped))
                if not complete or val_stopped or stop_now(force=True):
                    if state.rng is None:  # stopped after the last batch: validation is what remains
                        state.rng = capture_rng()
                    rngs = dist.gather(state.rng)
                    with stop.save():
                        run.save("last", model_state=model.state_dict(), epoch=last_done,
                                 metrics={"map50": None, "best_map50": best_map, "best_epoch": best_epoch + 1,
                                          "interrupted": True},
                                 train_state=train_state(state, rngs),
                                 training=training_record(mode, epochs=last_done + 1, train_time=train_time,
                                                          final_loss=final_loss, device=device, earlier=earlier))
                    status, stopped_in = "interrupted", epoch + 1
                    break
                epoch_time = state.seconds + time.perf_counter() - t0
                train_time += epoch_time
                lr = optimizer.param_groups[0]["lr"]
                losses = state.means()
                run.add_epoch({"epoch": epoch + 1, **{k: round(losses.get(k, 0.0), 5) for k in ("loss", *LOSS_KEYS)},
                               "lr": f"{lr:.6g}", "val_loss": "" if val_loss is None else round(val_loss, 5),
                               "val_map50": "" if val_map is None else round(val_map, 5),
                               "epoch_time_s": round(epoch_time, 1)})
                # Without a val split the last epoch is the best one can say.
                improved = val_map is None or val_map > best_map
                if improved:
                    best_map, best_epoch = (best_map if val_map is None else val_map), epoch
                metrics = {"map50": val_map, "best_map50": best_map if data.val else None, "best_epoch": best_epoch + 1}
                state_dict = model.state_dict()
                final_loss = losses.get("loss")
                cost = training_record(mode, epochs=epoch + 1, train_time=train_time, final_loss=final_loss,
                                       device=device, earlier=earlier)
                with stop.save():
                    # best.pt first: last.pt records the best epoch, so it must never be on
                    # disk before the best.pt it describes.
                    if improved:
                        run.save("best", model_state=state_dict, epoch=epoch, metrics=metrics, training=cost)
                    run.save("last", model_state=state_dict, epoch=epoch, metrics=metrics, train_state=train_state(),
                             training=cost)
                last_done = epoch
                shown = "-  (no val split)" if val_map is None else f"{val_map:.4f}{' *' if improved else ''}"
                wait = f"  data wait {100 * state.data_seconds / max(state.seconds, 1e-9):.0f}%" if progress else ""
                echo(f"epoch {epoch + 1}/{cfg.epochs}  loss {losses.get('loss', 0):.4f}  lr {lr:.5f}  "
                     f"val mAP@0.5 {shown}  {epoch_time:.0f}s{wait}")
                if cfg.patience and data.val and epoch - best_epoch >= cfg.patience:
                    echo(f"Early stop: no better val mAP@0.5 for {cfg.patience} epochs "
                         f"(best {best_map:.4f} at epoch {best_epoch + 1})")
                    status = "early-stopped"
                    break
    except KeyboardInterrupt:
        # Ctrl-C three times, or outside the main thread: in the middle of a step, so the
        # last epoch boundary (the last.pt on disk) is where a resume starts.
        status, stopped_in, exact = "interrupted", last_done + 2, False
    except NonFiniteLoss:
        status = "stopped: non-finite loss"
        raise
    finally:
        if last_done >= start_epoch or status != "finished":
            run.log_run({
                "backbone": cfg.model.backbone, "data": str(data.root), "epochs": cfg.epochs, "batch": cfg.batch_size,
                "lr": cfg.lr, "input_size": cfg.model.input_size, "anchor_scales": join_numbers(cfg.model.anchor_scales),
                "anchor_ratios": join_numbers(cfg.model.anchor_ratios), "weights": weights_source,
                "best_val_map50": f"{max(best_map, 0):.4f}" if data.val else "-",
                "train_time_min": f"{train_time / 60:.2f}", "status": status,
            })
        run.close()
    return TrainResult(run=run, status=status, best_map50=max(best_map, 0.0) if data.val else None,
                       best_epoch=best_epoch + 1, train_time=train_time, config=cfg, stopped_in=stopped_in,
                       resume_exact=exact, model=model, iterations=iterations)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision. On CUDA (on by default there): bfloat16 where the GPU has it (no loss
    scaling needed), else float16 with the gradient scaler. On the CPU, with ``--amp``:
    bfloat16, which pays only on CPUs with bfloat16 instructions (AVX-512 BF16, AMX).
    None: full precision."""
    if device.type == "cuda" and cfg.amp is not False:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu" or not cfg.amp:
        return None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("--amp on a CPU without bfloat16 instructions: expect slower training, not faster")
    return torch.bfloat16


def make_loaders(cfg: TrainConfig, data: Data, dist: Dist = Dist(), device: torch.device = torch.device("cpu")):
    """The train set and loader (this process's share of each epoch, in batches of like-shaped
    images), its sampler, the val loader (rank 0 validates) and the loader's generator."""
    cache_dir = Path(os.environ.get("DETECT_CACHE", ".cache")) / "decoded"
    train_set = DetectionDataset(data.train, data.classes, build_transforms(cfg.augment, input_size=cfg.model.input_size),
                                 cache=cfg.cache, resize_to=cfg.model.input_size, cache_dir=cache_dir)
    val_set = DetectionDataset(data.val, data.classes, None, cache=cfg.cache, cache_dir=cache_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    # One sampler for one process or many: the epoch's order comes from (seed, epoch).
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


def _shared_stop(stop: _GracefulStop, dist: Dist, *, every: int):
    """``stop_now()``: whether any process was asked to stop, asked of all processes together
    every ``every`` calls (and at once with ``force=True``) so they stop at the same step."""
    calls = 0

    def stop_now(force: bool = False) -> bool:
        nonlocal calls
        if not dist.active:
            return stop()
        calls += 1
        if force or calls % every == 0:
            return dist.any(stop())
        return False

    return stop_now


def _resume_checkpoint(cfg: TrainConfig, dist: Dist = Dist()) -> dict[str, Any] | None:
    """The ``last.pt`` a config resumes from (None for a new run), checked against the config:
    only :data:`RESUMABLE` settings may differ from the run's own, and a run stopped in the
    middle of an epoch resumes on as many processes as it ran on."""
    if cfg.resume is None:
        return None
    ckpt = load_checkpoint(cfg.resume)
    partial = (ckpt.get("train_state") or {}).get("partial")
    if partial and partial.get("world", 1) != dist.world:
        raise UsageError(f"{cfg.resume}: stopped in the middle of an epoch with {partial.get('world', 1)} "
                         f"process(es); resume it with as many (torchrun --nproc_per_node {partial.get('world', 1)})")
    if "train_state" not in ckpt:
        raise UsageError(f"{cfg.resume}: has no training state to resume from; pass the run's last.pt")
    stored, given = _flat(TrainConfig.from_dict(ckpt["args"])), _flat(cfg)
    changed = sorted(k for k in given if k not in RESUMABLE and given[k] != stored.get(k))
    if changed:
        raise UsageError(f"{cfg.resume}: resuming with other settings ({', '.join(changed)}); build the config "
                         "with detect.training.trainer.resume_config, which allows only --epochs, --patience, --device, "
                         "--workers to change")
    return ckpt


def _flat(cfg: TrainConfig) -> dict[str, Any]:
    """Every option by its command-line name: the model's fields beside the others."""
    values = cfg.as_dict()
    return {**{k: v for k, v in values.items() if k != "model"}, **values["model"]}


def _repair_best(run: RunFolder, ckpt: dict[str, Any], best_epoch: int, partial: EpochState | None,
                 echo: Echo) -> tuple[float, int]:
    """``best.pt`` went missing (deleted, or a disk error): restore it from ``last.pt`` when
    that holds the best epoch, else start the best over. Returns the best mAP and epoch."""
    if best_epoch == ckpt["epoch"] and partial is None:
        run.save("best", model_state=ckpt["model"], epoch=ckpt["epoch"],
                 metrics={k: v for k, v in ckpt["metrics"].items() if k != "interrupted"},
                 training=ckpt.get("training"))
        echo(f"{run.best} was missing; restored it from last.pt (epoch {best_epoch + 1})", err=True)
        return ckpt["train_state"]["best_map50"], best_epoch
    echo(f"{run.best} is missing and its weights (epoch {best_epoch + 1}) are lost; the next finished epoch "
         "writes a new best.pt", err=True)
    return -1.0, -1


def _banner(echo: Echo, cfg: TrainConfig, run: RunFolder, data: Data, model, device, iters_per_epoch: int,
            dist: Dist, amp_dtype) -> None:
    procs = f" x {dist.world} processes (DistributedDataParallel)" if dist.active else ""
    echo(f"Run {run.path}: {cfg.model.backbone}, {len(data.classes)} classes ({', '.join(map(show, data.classes))}), "
         f"{len(data.train)} train / {len(data.val)} val images, input {cfg.model.input_size}px{data.input_note}, "
         f"device {device}{procs}" + (f", AMP {str(amp_dtype).replace('torch.', '')}" if amp_dtype else ""))
    mc = model.config
    blocks = f" (MobileNetV3 blocks {'/'.join(map(str, mc.feature_blocks))} + max-pool)" if mc.feature_blocks else ""
    echo(f"Features: FPN at strides {'/'.join(map(str, feature_strides(mc)))}{blocks}, FPN norm {mc.fpn_norm}; "
         f"box head {mc.box_head_dim} wide, RoIAlign sampling {mc.roi_sampling_ratio}, "
         f"{cfg.model.rpn_post_nms} proposals, {cfg.model.roi_batch} sampled per image")
    echo(f"RPN anchors ({'/'.join(str(n) for n in anchors_per_location(model))} per location):")
    echo("  " + describe_anchors(model.rpn.anchor_generator).replace("\n", "\n  "))
    echo(f"  matched by IoU: foreground >= {cfg.model.rpn_fg_iou}, background < {cfg.model.rpn_bg_iou}")
    echo(f"  {model.weights_report.summary()}")
    if not data.val:
        echo("No val split: val mAP is not measured, and best.pt is the last epoch (pass --val-fraction, or "
             "ImageSets/Main/val.txt, to measure it)")
    batch = f"batch {cfg.batch_size}" + (f" x {dist.world} = {cfg.batch_size * dist.world}" if dist.active else "")
    echo(f"Optimizer {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}, "
         f"{min(cfg.warmup_iters, iters_per_epoch)} warm-up iterations), "
         f"{batch}, {cfg.epochs} epochs, augment {cfg.augment}")

