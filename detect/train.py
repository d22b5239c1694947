"""Train a Faster R-CNN on Pascal VOC data: ``python -m detect.train --backbone mobilenet``.

One loop, top to bottom: arguments -> dataset -> model -> optimizer/schedule -> epochs of
(train, validate, checkpoint) -> experiment log. With no ``--data`` it trains on the
procedural demo dataset (generated once into ``.cache/``) with a recipe sized for a 2-core
CPU.

Outputs, in ``<out>/<run>/``: ``best.pt``, ``last.pt`` (with optimizer/scheduler/scaler/RNG
state for ``--resume``), ``results.csv`` (one row per epoch), ``args.json``,
``split.json``; and one row per run in ``<out>/runs.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect import data as D
from detect.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detect.checks import check_dataset, format_finding
from detect.demo import is_complete, make_demo_dataset
from detect.layout import ClassesError, DatasetError, discover, read_classes, resolve_splits
from detect.metrics import Detections, GroundTruth, voc_evaluate
from detect.model import (
    BACKBONES,
    WEIGHT_CHOICES,
    WeightsError,
    anchors_per_location,
    build_model,
    describe_anchors,
)

log = logging.getLogger("detect.train")

# The recipe when the user gives no --data: the bundled demo, from scratch (no pretrained
# weights offline), on a 2-core CPU in under 15 minutes. Chosen by measurement, see the
# README's "The demo recipe"; every value can be overridden on the command line.
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


class UsageError(Exception):
    """A bad command line or unusable input: exit code 2, one line, no traceback."""


class AnnotationErrors(Exception):
    """The checker found errors in the dataset: exit code 1, like tools/check_xml.py."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; the message names the epoch, iteration and images."""


# --------------------------------------------------------------------------------------
# Arguments


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '0.5,1,2', got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m detect.train",
        description="Train a Faster R-CNN (MobileNetV3-FPN or ResNet-50-FPN) on Pascal VOC XML data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="dataset folder (VOC devkit, XML beside images, or XML + image folders); default: the bundled demo")
    g.add_argument("--images", type=Path, help="folder to look for images in first")
    g.add_argument("--classes", type=Path, help="class list, one name per line (default: names found in the data, sorted)")
    g.add_argument("--val-fraction", type=float, default=0.2, help="validation share when the data has no ImageSets/Main split")
    g.add_argument("--augment", choices=D.AUGMENT_CHOICES, help="augmentation strength (default: light)")
    g.add_argument("--skip-invalid", action="store_true", help="leave out annotation files the checker finds errors in, instead of refusing the dataset")
    g.add_argument("--demo-images", type=int, help="images in the generated demo dataset (no --data)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default="mobilenet")
    g.add_argument("--weights", default="auto", help=f"{', '.join(WEIGHT_CHOICES)} or a checkpoint path")
    g.add_argument("--trainable-layers", type=int, help="backbone stages to train; 0 = frozen feature extractor (default: 3 pretrained, all from scratch)")
    g.add_argument("--input-size", type=int, help="longest image side the model works at (demo: 320, data: 640)")
    g.add_argument("--anchor-scales", type=_floats, help="anchor size multipliers per level, e.g. '1,1.26,1.59' (default per backbone)")
    g.add_argument("--anchor-ratios", type=_floats, help="anchor height/width ratios (demo: 0.5,1.5,3; data: 0.5,1,2)")
    g.add_argument("--rpn-fg-iou", type=float, default=0.7, help="IoU at or above which an anchor is foreground")
    g.add_argument("--rpn-bg-iou", type=float, default=0.3, help="IoU below which an anchor is background")
    g.add_argument("--rpn-pre-nms", type=int, help="proposals kept per level before NMS (training and inference)")
    g.add_argument("--rpn-post-nms", type=int, help="proposals kept after NMS (training and inference)")
    g.add_argument("--rpn-batch", type=int, help="anchors sampled per image for the RPN loss")
    g.add_argument("--roi-batch", type=int, help="proposals sampled per image for the box-head loss")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="default: sgd when starting from pretrained weights, adamw from scratch")
    g.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.02 x batch/16, adamw 0.001)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    g.add_argument("--warmup-iters", type=int, default=200, help="linear warm-up iterations (capped at one epoch)")
    g.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm; 0 disables")
    g.add_argument("--patience", type=int, default=0, help="stop after this many epochs without a better val mAP; 0 never")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on with CUDA)")

    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--workers", type=int, help="data-loading processes (default: 0 on a CPU with <= 2 cores, else up to 4)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, default=Path("weights"), help="folder holding the runs")
    g.add_argument("--name", help="run name (default: the backbone; a number is added rather than overwrite a run)")
    g.add_argument("--resume", type=Path, help="continue from a last.pt, with its arguments")
    g.add_argument("--no-check", action="store_true", help="skip the annotation checker pass before training")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the recipe that fits (demo or user data) and validate."""
    recipe = DEMO_RECIPE if args.data is None else DATA_RECIPE
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("epochs", "batch_size", "input_size", "demo_images"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.lr is not None and args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.rpn_bg_iou <= args.rpn_fg_iou <= 1:
        raise UsageError("need 0 <= --rpn-bg-iou <= --rpn-fg-iou <= 1")
    if args.weights not in WEIGHT_CHOICES and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: not one of {', '.join(WEIGHT_CHOICES)} and no such file")
    if args.workers is None:
        cores = os.cpu_count() or 1
        args.workers = 0 if (cores <= 2 and not torch.cuda.is_available()) else min(4, cores - 1)
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def run_folder(out: Path, name: str) -> Path:
    """``out/name``, or ``out/name2``, ``out/name3``... when that run already exists."""
    folder = out / name
    n = 2
    while folder.exists() and any(folder.iterdir()):
        folder = out / f"{name}{n}"
        n += 1
    return folder


# --------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    classes: list[str]
    train: list[D.Record]
    val: list[D.Record]
    split_info: dict[str, Any]
    root: Path
    layout: str


def prepare_data(args: argparse.Namespace) -> Data:
    if args.data is None:
        root = Path(os.environ.get("DETECT_CACHE", ".cache")) / f"demo-{args.demo_images}"
        if not is_complete(root, num_images=args.demo_images, seed=DEMO_SEED, image_size=(320, 240)):
            print(f"Generating the demo dataset ({args.demo_images} images) into {root} ...", flush=True)
            make_demo_dataset(root, num_images=args.demo_images, seed=DEMO_SEED, image_size=(320, 240))
        args.data = root
        if args.classes is None:
            args.classes = root / "classes.txt"
    files = discover(args.data, images=args.images)
    listed = read_classes(args.classes) if args.classes is not None else None
    skip: set[Path] = set()
    if not args.no_check:
        skip = run_checker(files, listed, args)
    splits, source = resolve_splits(files, val_fraction=args.val_fraction)
    train = D.load_records(files, splits["train"], skip=skip)
    val = D.load_records(files, splits["val"], skip=skip)
    if listed is not None:
        classes = listed
        D.check_classes(train + val, classes, classes_file=str(args.classes))
    else:
        classes = D.class_names_from(train + val)
    if not classes:
        raise UsageError(f"{args.data}: no objects in any annotation; nothing to learn")
    if not train:
        raise UsageError(f"{args.data}: the train split is empty")
    split_info = {"source": source, **{k: list(v) for k, v in splits.items()}}
    return Data(classes, train, val, split_info, Path(args.data), files.layout)


def run_checker(files, classes: list[str] | None, args: argparse.Namespace) -> set[Path]:
    """Run the annotation checker; refuse a dataset with errors unless --skip-invalid."""
    report = check_dataset(
        files,
        classes=classes,
        backbone=args.backbone,
        input_size=args.input_size,
        anchor_scales=args.anchor_scales,
        anchor_ratios=args.anchor_ratios,
    )
    if not report.errors:
        if report.warnings:
            log.info("annotation check: %d warning(s); run tools/check_xml.py for details", len(report.warnings))
        return set()
    if args.skip_invalid:
        print(
            f"--skip-invalid: leaving out {len(report.files_with_errors)} annotation file(s) with "
            f"{len(report.errors)} error(s)",
            file=sys.stderr,
        )
        return set(report.files_with_errors)
    shown = "\n  ".join(format_finding(f) for f in report.errors[:5])
    more = f"\n  ... and {len(report.errors) - 5} more" if len(report.errors) > 5 else ""
    raise AnnotationErrors(
        f"the dataset has {len(report.errors)} annotation error(s):\n  {shown}{more}\n"
        f"See all with: python tools/check_xml.py {files.root}\n"
        "Fix them, or train anyway without those files: --skip-invalid"
    )


def seed_everything(seed: int, generator: torch.Generator, dataset: D.DetectionDataset) -> None:
    """Re-seed every random stream from (seed, epoch) at the start of each epoch.

    Shuffling, data-loader workers, augmentation and the RPN/ROI samplers then depend only
    on the weights and optimizer state at the epoch's start, so a run resumed from
    ``last.pt`` draws exactly what the uninterrupted run would have: this is the RNG
    state a checkpoint carries.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    generator.manual_seed(seed)
    if dataset.transform is not None:
        dataset.transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    # Each worker gets its own stream, derived from the loader's seed for this epoch, so a
    # resumed run draws the same augmentations.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(seed)


# --------------------------------------------------------------------------------------
# Validation


def ground_truth(records: Sequence[D.Record], classes: Sequence[str]) -> list[GroundTruth]:
    label_of = {c: i + 1 for i, c in enumerate(classes)}
    out = []
    for r in records:
        objs = [o for o in r.annotation.objects if o.name in label_of]
        out.append(
            GroundTruth(
                image=r.sample_id,
                boxes=np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4),
                labels=np.array([label_of[o.name] for o in objs], dtype=np.int64),
                difficult=np.array([o.difficult for o in objs], dtype=bool),
            )
        )
    return out


@torch.inference_mode()
def evaluate_map50(model, loader: DataLoader, truths: list[GroundTruth], classes, device) -> float:
    """VOC mAP@0.5 of ``model`` on the loader's images (original size; the model resizes)."""
    model.eval()
    dets: list[Detections] = []
    for images, _, metas in loader:
        outputs = model([im.to(device, non_blocking=True) for im in images])
        for out, meta in zip(outputs, metas):
            dets.append(
                Detections(
                    image=meta["id"],
                    boxes=out["boxes"].double().cpu().numpy(),
                    scores=out["scores"].double().cpu().numpy(),
                    labels=out["labels"].cpu().numpy().astype(np.int64),
                )
            )
    result = voc_evaluate(truths, dets, classes=classes)
    return float(result.map) if not math.isnan(result.map) else 0.0


# --------------------------------------------------------------------------------------
# Checkpoint state


def lr_lambda(args: argparse.Namespace, iters_per_epoch: int):
    """Multiplier of the peak lr at iteration ``it``: linear warm-up, then cosine or steps."""
    total = max(1, args.epochs * iters_per_epoch)
    warmup = min(args.warmup_iters, iters_per_epoch)

    def f(it: int) -> float:
        if it < warmup:
            return 0.001 + (1 - 0.001) * it / warmup
        if args.schedule == "cosine":
            progress = (it - warmup) / max(1, total - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        epoch = it // iters_per_epoch
        return 0.1 ** sum(epoch >= m for m in (int(args.epochs * 2 / 3), int(args.epochs * 8 / 9)))

    return f


# --------------------------------------------------------------------------------------
# The loop


def train(args: argparse.Namespace) -> int:
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_checkpoint(args.resume)
        if "train_state" not in resume_ckpt:
            raise UsageError(f"{args.resume}: has no training state to resume from; pass the run's last.pt")
        stored = argparse.Namespace(**resume_ckpt["args"])
        for key in ("data", "images", "classes", "out"):
            if getattr(stored, key) is not None:
                setattr(stored, key, Path(getattr(stored, key)))
        stored.device, stored.workers, stored.resume = args.device, args.workers, args.resume
        if stored.workers is None:
            stored.workers = resolve_args(argparse.Namespace(**{**vars(stored), "workers": None})).workers
        args = stored
    else:
        args = resolve_args(args)

    device = pick_device(args.device)
    use_amp = device.type == "cuda" if args.amp is None else (args.amp and device.type == "cuda")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    data = prepare_data(args)
    if resume_ckpt is not None and list(resume_ckpt["classes"]) != data.classes:
        raise UsageError(
            f"{args.resume}: trained on classes {resume_ckpt['classes']}, but the data now has {data.classes}"
        )
    run_dir = args.resume.parent if args.resume else run_folder(args.out, args.name or args.backbone)
    run_dir.mkdir(parents=True, exist_ok=True)
    args.name = run_dir.name

    if resume_ckpt is not None:
        model = build_model(**resume_ckpt["model_config"]).to(device)  # the file rebuilds its model
    else:
        model = build_model(
            backbone=args.backbone,
            num_classes=len(data.classes) + 1,
            anchor_scales=args.anchor_scales,
            anchor_ratios=args.anchor_ratios,
            input_size=args.input_size,
            weights=args.weights,
            trainable_layers=args.trainable_layers,
            rpn_fg_iou=args.rpn_fg_iou,
            rpn_bg_iou=args.rpn_bg_iou,
            # The same proposal budget at test time: inference cost is mostly the box head
            # running on every proposal.
            rpn_pre_nms_top_n_train=args.rpn_pre_nms,
            rpn_post_nms_top_n_train=args.rpn_post_nms,
            rpn_pre_nms_top_n_test=args.rpn_pre_nms,
            rpn_post_nms_top_n_test=args.rpn_post_nms,
            rpn_batch_size_per_image=args.rpn_batch,
            box_batch_size_per_image=args.roi_batch,
        ).to(device)
    if args.optimizer is None:
        # Measured here: from scratch, AdamW reaches in 8 epochs what SGD needs far longer
        # for; fine-tuning pretrained weights, SGD with momentum is the torchvision recipe.
        args.optimizer = "sgd" if model.weights_report.source != "none" else "adamw"
    if args.lr is None:
        args.lr = 0.02 * args.batch_size / 16 if args.optimizer == "sgd" else 0.001
    weights_info = model.weights_report.summary()
    weights_source = "resumed" if resume_ckpt else model.weights_report.source

    train_set = D.DetectionDataset(data.train, data.classes, D.build_transforms(args.augment, input_size=args.input_size))
    val_set = D.DetectionDataset(data.val, data.classes, None)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=D.collate,
        worker_init_fn=seed_worker, generator=generator, drop_last=len(train_set) > args.batch_size,
        persistent_workers=False, pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=D.collate)
    truths = ground_truth(data.val, data.classes)

    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args, len(train_loader)))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_map, best_epoch, train_time = 0, -1.0, -1, 0.0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        st = resume_ckpt["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        start_epoch = resume_ckpt["epoch"] + 1
        best_map, best_epoch = st["best_map50"], st["best_epoch"]
        train_time = st["train_time"]
        print(f"Resuming {run_dir} at epoch {start_epoch + 1}/{args.epochs}")
    else:
        (run_dir / "args.json").write_text(json.dumps(_jsonable(vars(args)), indent=2) + "\n")
        (run_dir / "split.json").write_text(json.dumps(data.split_info, indent=1) + "\n")

    print(
        f"Run {run_dir}: {args.backbone}, {len(data.classes)} classes ({', '.join(data.classes)}), "
        f"{len(data.train)} train / {len(data.val)} val images, input {args.input_size}px, device {device}"
    )
    print(f"RPN anchors ({'/'.join(str(n) for n in anchors_per_location(model))} per location):")
    print("  " + describe_anchors(model.rpn.anchor_generator).replace("\n", "\n  "))
    print(f"  matched by IoU: foreground >= {args.rpn_fg_iou}, background < {args.rpn_bg_iou}")
    print(f"  {weights_info}")
    print(f"Optimizer {args.optimizer}, lr {args.lr:g} ({args.schedule}, "
          f"{min(args.warmup_iters, len(train_loader))} warm-up iterations), "
          f"batch {args.batch_size}, {args.epochs} epochs, augment {args.augment}")

    payload_base = {
        "model_config": model.config,
        "classes": data.classes,
        "backbone": args.backbone,
        "run": args.name,
        "args": _jsonable(vars(args)),
        "data": {
            "root": str(data.root),
            "images": str(args.images) if args.images else None,
            "layout": data.layout,
            "splits": {k: v for k, v in data.split_info.items() if k != "source"},
        },
    }
    results_csv = run_dir / "results.csv"
    fields = ["epoch", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
              "lr", "val_map50", "epoch_time_s"]
    if not results_csv.exists():
        with results_csv.open("w", newline="") as fh:
            csv.writer(fh).writerow(fields)

    def train_state() -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best_map50": best_map,
            "best_epoch": best_epoch,
            "train_time": train_time,
        }

    tty = sys.stderr.isatty()
    epoch = last_done = start_epoch - 1
    status = "finished"
    try:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.perf_counter()
            model.train()
            seed_everything(args.seed * 10_000 + epoch, generator, train_set)
            sums: dict[str, float] = {}
            n_iter = 0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not tty, leave=False, file=sys.stderr)
            for it, (images, targets, metas) in enumerate(bar):
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, enabled=use_amp):
                    losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"loss became {loss.item()} at epoch {epoch + 1}, iteration {it + 1}; the batch held: "
                        + ", ".join(m["image"] for m in metas)
                        + ". Check those annotations (tools/check_xml.py) or lower --lr."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if args.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                n_iter += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
                sums["loss"] = sums.get("loss", 0.0) + loss.item()
                bar.set_postfix(loss=f"{sums['loss'] / n_iter:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
            bar.close()

            val_map = evaluate_map50(model, val_loader, truths, data.classes, device) if data.val else 0.0
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            means = {k: v / max(1, n_iter) for k, v in sums.items()}
            row = [epoch + 1, *(round(means.get(k, 0.0), 5) for k in fields[1:6]),
                   f"{optimizer.param_groups[0]['lr']:.6g}", round(val_map, 5), round(epoch_time, 1)]
            with results_csv.open("a", newline="") as fh:
                csv.writer(fh).writerow(row)
            improved = val_map > best_map
            if improved:
                best_map, best_epoch = val_map, epoch
            metrics = {"map50": val_map, "best_map50": best_map, "best_epoch": best_epoch + 1}
            state = model.state_dict()
            save_checkpoint({**payload_base, "model": state, "epoch": epoch, "metrics": metrics,
                             "train_state": train_state()}, run_dir / "last.pt")
            if improved:
                save_checkpoint({**payload_base, "model": state, "epoch": epoch, "metrics": metrics}, run_dir / "best.pt")
            last_done = epoch
            line = (f"epoch {epoch + 1}/{args.epochs}  loss {means.get('loss', 0):.4f}  "
                    f"lr {optimizer.param_groups[0]['lr']:.5f}  val mAP@0.5 {val_map:.4f}"
                    f"{' *' if improved else ''}  {epoch_time:.0f}s")
            tqdm.write(line, file=sys.stdout)
            if args.patience and epoch - best_epoch >= args.patience:
                print(f"Early stop: no better val mAP@0.5 for {args.patience} epochs (best {best_map:.4f} at epoch {best_epoch + 1})")
                status = "early-stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        # Keep what the cut-short epoch learned; --resume runs that epoch again from these
        # weights (last.pt's epoch is the last finished one).
        save_checkpoint({**payload_base, "model": model.state_dict(), "epoch": last_done,
                         "metrics": {"map50": None, "best_map50": best_map, "best_epoch": best_epoch + 1,
                                     "interrupted": True},
                         "train_state": train_state()}, run_dir / "last.pt")
        print(f"\nInterrupted in epoch {last_done + 2}; saved {run_dir / 'last.pt'}. Resume with:\n"
              f"  python -m detect.train --resume {run_dir / 'last.pt'}", file=sys.stderr)
    except NonFiniteLoss:
        status = "stopped: non-finite loss"
        raise
    finally:
        if last_done >= start_epoch or status != "finished":
            log_run(args, data, run_dir, best_map, train_time, status, weights_source)

    if status != "interrupted":
        print(f"Done: best val mAP@0.5 {max(best_map, 0):.4f} (epoch {best_epoch + 1}), "
              f"train time {train_time / 60:.1f} min. Checkpoints: {run_dir / 'best.pt'}, {run_dir / 'last.pt'}")
    return 130 if status == "interrupted" else 0


def log_run(args, data: Data, run_dir: Path, best_map: float, train_time: float, status: str, weights: str) -> None:
    """Append this run to ``<out>/runs.csv``: the experiment log, one row per run."""
    path = run_dir.parent / "runs.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["run", "backbone", "data", "epochs", "batch", "lr", "input_size", "anchor_scales",
                        "anchor_ratios", "weights", "best_val_map50", "train_time_min", "status", "finished"])
        w.writerow([
            run_dir.name, args.backbone, str(data.root), args.epochs, args.batch_size, args.lr, args.input_size,
            "/".join(f"{s:g}" for s in args.anchor_scales) if args.anchor_scales else "default",
            "/".join(f"{r:g}" for r in args.anchor_ratios), weights, f"{max(best_map, 0):.4f}",
            f"{train_time / 60:.2f}", status, time.strftime("%Y-%m-%d %H:%M:%S"),
        ])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except (UsageError, DatasetError, ClassesError, D.DataError, CheckpointError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (AnnotationErrors, NonFiniteLoss) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the first epoch: nothing to save yet
        print("\nInterrupted before training started; nothing was saved.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
