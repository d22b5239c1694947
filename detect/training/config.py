"""The training configuration: :class:`TrainConfig`, the two recipes, and the one place
where every default is resolved (:func:`resolve_config`).

With no ``data`` a run trains on the procedural demo dataset with :data:`DEMO_RECIPE`, sized
for a 2-core CPU; a user's dataset gets :data:`DATA_RECIPE`. Every recipe value is only a
default: what the config sets wins. The model's own options live in ``TrainConfig.model``, a
:class:`detect.model.config.ModelConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from detect.checks.dataset_rules import REPEAT_T
from detect.common.errors import UsageError
from detect.common.options import Number
from detect.data.dataset import CACHE_CHOICES
from detect.data.images import EXIF_MODES
from detect.model.backbones import get_backbone
from detect.model.build import WEIGHT_CHOICES
from detect.model.checkpoint import load_checkpoint
from detect.model.config import FPN_NORMS, ModelConfig
from detect.training.balance import BALANCE_CHOICES

log = logging.getLogger(__name__)

__all__ = ["CPU_PRETRAINED_RECIPE", "CPU_SCRATCH_RECIPE", "DATA_RECIPE", "DEMO_RECIPE", "GPU_RECIPE", "RECIPES",
           "RECIPE_REASONS", "LIMITS", "MODEL_FIELDS", "RESUMABLE", "Echo", "TrainConfig",
           "RunFacts", "budget_epochs", "epochs_for_budget", "input_size_for", "log_echo", "recipe_for", "resolve_config",
           "resume_config"]

# The recipe when the user gives no data: the bundled demo, from scratch (no pretrained
# weights offline), on a 2-core CPU in about 10 minutes. Each value was chosen by a measured
# comparison (docs/notes.md, "The demo recipe history"); every value can be overridden.
DEMO_RECIPE = dict(
    # 12 epochs, or fewer where they do not fit 10 minutes of training and validation (a slower
    # CPU; the budget is measured as --time measures it). --epochs or --time replace both.
    epochs=12,
    max_epochs=12,
    time=10.0,
    batch_size=4,
    input_size=256,
    anchor_ratios=[0.5, 1.5, 3.0],  # lying cans ~0.5, upright cans ~1.5, bottles ~3 (height/width)
    rpn_pre_nms=600,
    rpn_post_nms=300,
    rpn_batch=128,
    # A narrower box head on fewer, cheaper RoIs: the box head is most of a CPU step's cost.
    roi_batch=64,
    box_head_dim=256,
    roi_sampling_ratio=1,
    fpn_norm="gn",  # GroupNorm in the FPN trains faster from scratch
    # 128 FPN channels: at 256 the FPN's and the RPN head's 3x3 convolutions at stride 8 cost
    # more than the MobileNet trunk; 128 makes a step 1.6x cheaper on an AVX2 CPU, and 10
    # minutes of it reach a higher mAP (docs/notes.md, "The demo recipe history").
    fpn_channels=128,
    val_loss=False,  # its pass would push the 12 epochs past 10 minutes (--val-loss puts it back)
    demo_images=480,
    augment="light",
)
# The recipes for a user's dataset, one per kind of machine and starting weights: the
# trainer picks one (recipe_for) once it knows both, and says why in the banner.
# On a GPU: torchvision's reference settings (and the box head and FPN that COCO weights fit),
# at an input size that fits the data and the machine.
GPU_RECIPE = dict(
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
# On a CPU, torchvision's budget per image (512 sampled RoIs through a 1024-wide head, RoIAlign
# sampling 2, 2000/1000 proposals) does not shrink with the image: on 200 px photos it is most
# of a step. From scratch, the demo's kind of model (docs/performance.md, "Recipes per machine"):
CPU_SCRATCH_RECIPE = dict(
    GPU_RECIPE,
    **{k: DEMO_RECIPE[k] for k in ("rpn_pre_nms", "rpn_post_nms", "rpn_batch", "roi_batch", "box_head_dim",
                                   "roi_sampling_ratio", "fpn_norm")},
    val_loss=False,  # a forward pass over the val split each epoch, for a curve only (--val-loss)
)
# With COCO weights the box head and FPN stay what the weights fit (1024 wide, no FPN norm);
# only the sampling budget is cut to a CPU's size.
CPU_PRETRAINED_RECIPE = dict(
    GPU_RECIPE,
    rpn_pre_nms=600,
    rpn_post_nms=300,
    roi_batch=128,
    val_loss=False,
)
DATA_RECIPE = GPU_RECIPE  # "data": the one user-data recipe of runs from before the per-machine ones
RECIPES = {"demo": DEMO_RECIPE, "cpu-scratch": CPU_SCRATCH_RECIPE, "cpu-pretrained": CPU_PRETRAINED_RECIPE,
           "gpu": GPU_RECIPE, "data": DATA_RECIPE}
RECIPE_REASONS = {
    "demo": "the demo data, sized for a 2-core CPU",
    "cpu-scratch": "no GPU and no pretrained weights: the demo's CPU-sized model (256-wide box head, "
                   "64 sampled RoIs, RoIAlign sampling 1, GroupNorm FPN), a cheaper step than torchvision's "
                   "(measured: 4.3x on 200 px photos, 1.4-1.5x at 640 px)",
    "cpu-pretrained": "no GPU, pretrained weights: the box head and FPN they fit, with a CPU-sized sampling "
                      "budget (300 proposals, 128 sampled RoIs)",
    "gpu": "a GPU: torchvision's reference recipe",
    "data": "torchvision's reference recipe (a run from before the per-machine recipes)",
}


def recipe_for(facts: "RunFacts") -> str:
    """The user-data recipe that fits the machine and the starting weights (the table in
    docs/training.md): ``gpu`` on CUDA, else ``cpu-pretrained`` or ``cpu-scratch``."""
    if facts.cuda:
        return "gpu"
    return "cpu-pretrained" if facts.pretrained else "cpu-scratch"


# The options that are the model's (:class:`ModelConfig` fields the command line sets).
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
MODEL_OPTIONS = MODEL_FIELDS - {"num_classes", "detector", "anchor_base_sizes", "feature_blocks", "frozen_bn"}

# The allowed values of every numeric option: the CLI parses with these, and
# resolve_config checks a config built in Python against the same ranges.
LIMITS: dict[str, Number] = {
    "val_fraction": Number(float, 0, 1, hi_open=True),
    "folds": Number(int, 0, 1000),
    "fold": Number(int, 0),
    "demo_images": Number(int, 1, 100_000),
    "demo_defect_rate": Number(float, 0, 1),
    "balance_t": Number(float, 0, 1, lo_open=True),
    "trainable_layers": Number(int, 0),  # the backbone's own maximum is checked in resolve_config
    "input_size": Number(int, 32, 8192),
    "rpn_fg_iou": Number(float, 0, 1),
    "rpn_bg_iou": Number(float, 0, 1),
    "rpn_pre_nms": Number(int, 1),
    "rpn_post_nms": Number(int, 1),
    "rpn_batch": Number(int, 1),
    "roi_batch": Number(int, 1),
    "box_head_dim": Number(int, 1, 65_536),
    "fpn_channels": Number(int, 32, 4096),  # GroupNorm's 32 groups need at least 32
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
    "time": Number(float, 0, 100_000, lo_open=True),
}


@dataclass
class TrainConfig:
    """Every training option (``python -m detect.train --help`` describes each).

    ``None`` means "from the recipe" (:data:`DEMO_RECIPE` without ``data``, else the one
    :func:`recipe_for` picks for the machine and the weights), or "decided from the machine, the data and the weights" (``workers``,
    ``model.input_size``, ``optimizer``, ``lr``): :func:`resolve_config` fills all of them. Two
    are left to where they take effect: ``amp`` (on by default on CUDA only) and
    ``model.trainable_layers`` (3 with pretrained weights, all without: ``build_model``).
    Anchor ``ratios`` are height/width; ``input_size`` is the longest image side in pixels.
    """

    # data
    recipe: str | None = None  # which of RECIPES fills the unset options (from data, device and weights)
    data: Path | None = None
    images: Path | None = None
    classes: Path | None = None
    val_fraction: float = 0.2
    folds: int = 0  # K-fold split (detect.data.layout.kfold_split); 0: off
    fold: int = 0  # which fold is val
    augment: str | None = None
    skip_invalid: bool = False
    exif: str = "apply"  # "ignore": boxes were drawn on the stored pixels of rotated photos
    tensorboard: bool = False  # also log results.csv's rows and the settings for TensorBoard
    demo_images: int | None = None
    demo_defect_rate: float | None = None  # the demo's share of defective objects (None: the default demo)
    balance: str = "none"  # "repeat": repeat-factor sampling of images with rare classes (training/balance.py)
    balance_t: float = REPEAT_T  # the image fraction under which a class is repeated (VOC304 names it)
    # model: the architecture; None fields come from the recipe (num_classes from the data)
    model: ModelConfig = field(default_factory=ModelConfig)
    weights: str = "auto"
    # optimisation
    epochs: int | None = None
    time: float | None = None  # minutes of training and validation: the epochs are fitted to it
    max_epochs: int | None = None  # the most epochs a budget from the recipe may fit (not an option)
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


@dataclass(frozen=True)
class RunFacts:
    """What some defaults depend on besides the options, known once the data and the starting
    weights are: the data's median image ``(width, height)``, whether the starting weights are
    pretrained, the number of processes, and whether training runs on CUDA; once a few steps
    are measured (:mod:`detect.training.budget`), the seconds an epoch of training and
    validation takes, and for a resumed run the seconds and epochs already spent."""

    median_size: tuple[int, int] | None = None
    pretrained: bool = False
    world: int = 1
    cuda: bool = False
    epoch_seconds: float | None = None
    spent_seconds: float = 0.0
    epochs_done: int = 0


def resolve_config(cfg: TrainConfig, facts: RunFacts | None = None) -> TrainConfig:
    """The one place every default is decided: fill unset options from the recipe that fits
    and validate; with ``facts``, also the defaults that depend on the data, the machine and
    the weights (the user-data recipe, input size, optimizer, learning rate) and, with
    ``facts.epoch_seconds`` and a ``time`` budget, the epochs (:func:`budget_epochs`). Training
    calls it without facts before any work (so a bad option fails at once, and the demo's
    recipe, which needs no facts, says what demo to make), then once with the facts, before
    building the model; the measured epoch time then decides only the epochs
    (:func:`budget_epochs`). Without facts a user's data has no recipe yet: its options stay None.

    Raises:
        UsageError: a value out of range, ``weights`` neither a choice nor a file, ``time``
            with ``epochs``, or a ``time`` budget too small for one epoch.
    """
    cfg = dataclasses.replace(cfg)
    if facts is None and cfg.time is not None and cfg.epochs is not None and cfg.resume is None:
        raise UsageError(f"--time {cfg.time:g} and --epochs {cfg.epochs}: --time sets the epochs that fit the "
                         "budget; give one of them")
    # A recipe's time budget (the demo's) holds only when the user set neither length.
    recipe_budget = cfg.epochs is None and cfg.time is None and cfg.resume is None
    if cfg.recipe is None and (cfg.data is None or facts is not None):
        cfg.recipe = "demo" if cfg.data is None else recipe_for(facts)
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise UsageError(f"--recipe must be one of {', '.join(RECIPES)}, got {cfg.recipe!r}")
    for key, value in RECIPES.get(cfg.recipe, {}).items():
        if key in ("time", "max_epochs") and not recipe_budget:
            continue
        if key == "fpn_channels" and get_backbone(cfg.model.backbone).family != "mobilenet":
            continue  # ResNet-50 keeps torchvision's FPN
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
    if cfg.model.fpn_norm is not None and cfg.model.fpn_norm not in FPN_NORMS:
        raise UsageError(f"--fpn-norm must be one of {', '.join(FPN_NORMS)}, got {cfg.model.fpn_norm!r}")
    channels = cfg.model.fpn_channels
    if channels not in (None, 256) and spec.family != "mobilenet":
        raise UsageError(f"--fpn-channels {channels}: {cfg.model.backbone} keeps torchvision's 256-channel FPN "
                         "(the option is for MobileNet)")
    if channels is not None and cfg.model.fpn_norm == "gn" and channels % 32:
        raise UsageError(f"--fpn-channels {channels} with --fpn-norm gn: GroupNorm's 32 groups need a multiple of 32")
    if cfg.cache not in CACHE_CHOICES:
        raise UsageError(f"--cache must be one of {', '.join(CACHE_CHOICES)}, got {cfg.cache!r}")
    if cfg.folds and cfg.fold >= cfg.folds:
        raise UsageError(f"--fold {cfg.fold}: with --folds {cfg.folds} the fold is 0 to {cfg.folds - 1}")
    if cfg.balance not in BALANCE_CHOICES:
        raise UsageError(f"--balance must be one of {', '.join(BALANCE_CHOICES)}, got {cfg.balance!r}")
    if cfg.exif not in EXIF_MODES:
        raise UsageError(f"--exif must be one of {', '.join(EXIF_MODES)}, got {cfg.exif!r}")
    if cfg.resume is None and cfg.weights not in WEIGHT_CHOICES and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: not one of {', '.join(WEIGHT_CHOICES)} and no such file")
    if cfg.workers is None:
        cores = os.cpu_count() or 1
        cfg.workers = 0 if (cores <= 2 and not torch.cuda.is_available()) else min(4, cores - 1)
    if facts is None:
        return cfg
    if cfg.model.input_size is None:
        cfg.model = cfg.model.replace(input_size=input_size_for(facts.median_size, cuda=facts.cuda))
    if cfg.optimizer is None:
        # From scratch, AdamW reaches in 8 epochs what SGD needs far longer for (docs/training.md);
        # fine-tuning pretrained weights, SGD with momentum is the torchvision recipe.
        cfg.optimizer = "sgd" if facts.pretrained else "adamw"
    if cfg.lr is None:
        # torchvision's linear scaling rule for SGD: 0.02 at 16 images a step, all processes together.
        cfg.lr = 0.02 * cfg.batch_size * facts.world / 16 if cfg.optimizer == "sgd" else 0.001
    cfg.epochs = budget_epochs(cfg, facts)
    return cfg


def budget_epochs(cfg: TrainConfig, facts: RunFacts) -> int | None:
    """The epochs of a resolved config: with a ``time`` budget and ``facts.epoch_seconds``, the
    epochs that fit it (:func:`epochs_for_budget`; a recipe's budget keeps its own epochs where
    they fit, fewer on a slower machine, at least one); else ``cfg.epochs``. Training asks it
    once a few steps are measured, the one default that waits for them.

    Raises:
        UsageError: a ``time`` budget the user gave is too small for one more epoch.
    """
    if cfg.time is None or not facts.epoch_seconds:
        return cfg.epochs
    if cfg.max_epochs is None:
        return epochs_for_budget(cfg.time, facts)
    return max(1, min(cfg.max_epochs, _epochs_that_fit(cfg.time, facts)))


def epochs_for_budget(minutes: float, facts: RunFacts) -> int:
    """The epochs that fit ``minutes`` of training and validation, at ``facts.epoch_seconds``
    an epoch, after ``facts.spent_seconds`` and ``facts.epochs_done`` (a resumed run).

    Raises:
        UsageError: not one more epoch fits.
    """
    epochs = _epochs_that_fit(minutes, facts)
    if epochs > facts.epochs_done:
        return epochs
    epoch_min = facts.epoch_seconds / 60
    if facts.epochs_done:
        raise UsageError(f"--time {minutes:g}: {facts.spent_seconds / 60:.1f} min of it are spent and one more epoch "
                         f"takes about {epoch_min:.1f} min here; resume with a larger budget, at least "
                         f"--time {math.ceil((facts.spent_seconds + facts.epoch_seconds) / 60)}")
    raise UsageError(f"--time {minutes:g}: one epoch (training and validation) takes about {epoch_min:.1f} min on "
                     f"this machine, more than the budget; give at least --time {math.ceil(epoch_min)}, or make "
                     f"epochs cheaper (a smaller --input-size)")


def _epochs_that_fit(minutes: float, facts: RunFacts) -> int:
    """The epochs done plus the whole epochs the rest of ``minutes`` holds at ``facts.epoch_seconds``."""
    return facts.epochs_done + int((minutes * 60 - facts.spent_seconds) // facts.epoch_seconds)


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set an option, on the model config when it is one of its fields."""
    if key in MODEL_FIELDS:
        cfg.model = cfg.model.replace(**{key: value})
    else:
        setattr(cfg, key, value)


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


# What may change when a run is resumed: the rest is the run's own (its optimizer state and
# schedule were made for those settings). More epochs re-plan the schedule over the new length;
# so does a new --time budget (the epochs that fit what is left of it).
# --data and --images point a resumed run at its own data moved elsewhere: the trainer checks that
# the images and splits are the same ones.
RESUMABLE = frozenset({"resume", "epochs", "time", "patience", "device", "workers", "data", "images", "classes"})


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
            f"(only --epochs, --time, --patience, --device, --workers, and --data/--images/--classes for its data moved "
            f"elsewhere, "
            f"can); start a new run from its weights instead: "
            f"python -m detect.train --weights {path} ..."
        )
    done = ckpt["epoch"] + 1
    if "epochs" in changes and changes["epochs"] <= done:
        raise UsageError(f"--epochs {changes['epochs']}: {path.parent.name} has already trained {done} epoch(s); "
                         f"give more than {done} to train on")
    cfg = TrainConfig.from_dict(ckpt["args"])
    if "epochs" in changes and "time" not in changes:
        changes["time"] = None  # epochs given: the run trains that many, budget or not
    if "time" in changes:
        changes["max_epochs"] = None  # the user's budget replaces the recipe's, and its cap
    for key in ("data", "images", "classes"):
        if changes.get(key) is not None:
            changes[key] = Path(changes[key])
    if changes.get("data") is not None and cfg.data is not None:
        # Files that lived inside the old data folder are looked for at the same place in the new one.
        for key in ("images", "classes"):
            old = getattr(cfg, key)
            if key not in changes and old is not None and old.is_relative_to(cfg.data):
                changes[key] = changes["data"] / old.relative_to(cfg.data)
    return dataclasses.replace(cfg, resume=path, **changes)


class Echo(Protocol):
    """Where the run's narrative goes: ``echo(text)``, ``echo(text, err=True)`` for notes."""

    def __call__(self, text: str, *, err: bool = False) -> None: ...


def log_echo(text: str, *, err: bool = False) -> None:
    log.log(logging.WARNING if err else logging.INFO, "%s", text)


