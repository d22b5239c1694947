"""Train a Faster R-CNN on Pascal VOC data: ``python -m detect.train --backbone mobilenet``.

With no ``--data`` it trains on the procedural demo dataset (generated once into
``.cache/``) with a recipe sized for a 2-core CPU.

Outputs, in ``<out>/<run>/``: ``best.pt``, ``last.pt`` (with optimizer/scheduler/scaler/RNG
state for ``--resume``), ``results.csv`` (one row per epoch), ``args.json``,
``split.json``; and one row per run in ``<out>/runs.csv`` (:mod:`detect.training.run_folder`).

Exit status: 0 done (or stopped early), 1 annotation errors or a non-finite loss, 2 usage
error, 130 interrupted (``last.pt`` saved; the resume command is printed). This module
parses and prints; :func:`detect.training.trainer.train` trains.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from detect.model.backbones import BACKBONES
from detect.data.dataset import AUGMENT_CHOICES, CACHE_CHOICES
from detect.common.errors import UsageError
from detect.common.logs import setup_logging
from detect.model.build import WEIGHT_CHOICES
from detect.model.config import FPN_NORMS
from detect.common.options import CliParser, add_device_option, given_options, number_list, run_command
from detect.line.anomaly import DEFAULT_FALSE_REJECT
from detect.training.balance import BALANCE_CHOICES
from detect.training.banner import summary
from detect.training.config import LIMITS, RECIPES, TrainConfig, resume_config
from detect.training.trainer import TrainResult, train

_DEFAULTS = TrainConfig()  # one source of defaults for the parser and the library


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m detect.train",
        description="Train a Faster R-CNN (MobileNetV3-FPN or ResNet-50-FPN) on Pascal VOC XML data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="dataset folder (VOC devkit, XML beside images, or XML + image folders); default: the bundled demo")
    g.add_argument("--images", type=Path, help="folder to look for images in first")
    g.add_argument("--classes", type=Path, help="class list, one name per line (default: names found in the data, sorted)")
    g.add_argument("--val-fraction", type=LIMITS["val_fraction"], default=_DEFAULTS.val_fraction, help="validation share when the data has no ImageSets/Main split")
    g.add_argument("--folds", type=LIMITS["folds"], default=_DEFAULTS.folds, help="K-fold split: K models, each with one fold as val, audit every image (detect.audit); 0: off")
    g.add_argument("--fold", type=LIMITS["fold"], default=_DEFAULTS.fold, help="with --folds: the fold (0..K-1) that is the val split")
    g.add_argument("--augment", choices=AUGMENT_CHOICES, help="augmentation strength (default: light)")
    g.add_argument("--skip-invalid", action="store_true", help="leave out annotation files the checker finds errors in, instead of refusing the dataset")
    g.add_argument("--demo-images", type=LIMITS["demo_images"], help="images in the generated demo dataset (no --data)")
    g.add_argument("--demo-defect-rate", type=LIMITS["demo_defect_rate"], metavar="P",
                   help="a demo whose objects are defective with probability P (e.g. 0.05: rare defects); "
                   "default: the standard demo, a quarter of each kind")
    g.add_argument("--balance", choices=BALANCE_CHOICES, default=_DEFAULTS.balance,
                   help="repeat: images with rare classes are seen more often per epoch (repeat-factor sampling, "
                   "as in LVIS); the banner shows each class's factor")
    g.add_argument("--balance-t", type=LIMITS["balance_t"], default=_DEFAULTS.balance_t, metavar="T",
                   help="with --balance repeat: a class in fewer than this fraction of the train images is "
                   "repeated by sqrt(T / fraction)")

    g = p.add_argument_group("model")
    g.add_argument("--recipe", choices=tuple(k for k in RECIPES if k != "data"),
                   help="the defaults below (default: demo without --data; else cpu-scratch or cpu-pretrained on a "
                        "CPU, by the starting weights, and gpu on CUDA: docs/training.md)")
    g.add_argument("--backbone", choices=tuple(BACKBONES), default=_DEFAULTS.model.backbone)
    g.add_argument("--weights", default=_DEFAULTS.weights, help=f"{', '.join(WEIGHT_CHOICES)} or a checkpoint path")
    g.add_argument("--trainable-layers", type=LIMITS["trainable_layers"], help="backbone stages to train; 0 = frozen feature extractor (default: 3 pretrained, all from scratch)")
    g.add_argument("--input-size", type=LIMITS["input_size"], help="longest image side the model works at (demo: 256; data: the "
                   "images' median longest side, rounded up to 32, at most 640 on a CPU and 1024 with CUDA)")
    g.add_argument("--anchor-scales", type=number_list, help="anchor size multipliers per level, e.g. '1,1.26,1.59' (default per backbone)")
    g.add_argument("--anchor-ratios", type=number_list, help="anchor height/width ratios (demo: 0.5,1.5,3; data: 0.5,1,2)")
    g.add_argument("--rpn-fg-iou", type=LIMITS["rpn_fg_iou"], default=_DEFAULTS.model.rpn_fg_iou, help="IoU at or above which an anchor is foreground")
    g.add_argument("--rpn-bg-iou", type=LIMITS["rpn_bg_iou"], default=_DEFAULTS.model.rpn_bg_iou, help="IoU below which an anchor is background")
    g.add_argument("--rpn-pre-nms", type=LIMITS["rpn_pre_nms"], help="proposals kept per level before NMS (training and inference)")
    g.add_argument("--rpn-post-nms", type=LIMITS["rpn_post_nms"], help="proposals kept after NMS (training and inference)")
    g.add_argument("--rpn-batch", type=LIMITS["rpn_batch"], help="anchors sampled per image for the RPN loss")
    g.add_argument("--roi-batch", type=LIMITS["roi_batch"], help="proposals sampled per image for the box-head loss (demo: 64, data: 512)")
    g.add_argument("--box-head-dim", type=LIMITS["box_head_dim"], help="width of the box head's two layers (demo: 256; data: 1024, what COCO weights fit)")
    g.add_argument("--roi-sampling-ratio", type=LIMITS["roi_sampling_ratio"], help="RoIAlign samples per bin side (demo: 1; data: 2)")
    g.add_argument("--fpn-norm", choices=FPN_NORMS, help="normalisation after the FPN convolutions (demo: gn, which trains "
                   "faster from scratch; data: none, torchvision's, what COCO weights fit)")
    g.add_argument("--fpn-channels", type=LIMITS["fpn_channels"], help="channels of the FPN levels, the RPN head's and "
                   "the box head's input (demo: 128, a 1.6x cheaper CPU step; data: 256, torchvision's, what COCO "
                   "weights fit; MobileNet only)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=LIMITS["epochs"], help="default: 12 for the demo, 24 for a user's data")
    g.add_argument("--time", type=LIMITS["time"], metavar="MINUTES",
                   help="train for about this long (training and validation): the epochs are set from steps "
                        "measured before training and the schedule is fitted to them (instead of --epochs)")
    g.add_argument("--batch-size", type=LIMITS["batch_size"])
    g.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="default: sgd when starting from pretrained weights, adamw from scratch")
    g.add_argument("--lr", type=LIMITS["lr"], help="peak learning rate (default: sgd 0.02 x batch/16, adamw 0.001)")
    g.add_argument("--momentum", type=LIMITS["momentum"], default=_DEFAULTS.momentum)
    g.add_argument("--weight-decay", type=LIMITS["weight_decay"], default=_DEFAULTS.weight_decay)
    g.add_argument("--schedule", choices=("cosine", "step"), default=_DEFAULTS.schedule)
    g.add_argument("--warmup-iters", type=LIMITS["warmup_iters"], default=_DEFAULTS.warmup_iters, help="linear warm-up iterations (capped at one epoch)")
    g.add_argument("--clip-grad", type=LIMITS["clip_grad"], default=_DEFAULTS.clip_grad, help="max gradient norm; 0 disables")
    g.add_argument("--patience", type=LIMITS["patience"], default=_DEFAULTS.patience, help="stop after this many epochs without a better val mAP; 0 never")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: on CUDA bfloat16 where the GPU has it, else float16 (default: on); "
                   "on the CPU bfloat16, for CPUs with bfloat16 instructions (default: off)")
    g.add_argument("--sync-bn", action="store_true", help="synchronise batch norm across processes (torchrun; "
                   "from-scratch models, whose backbone has batch norm)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format for the model")
    g.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels per input shape")

    g = p.add_argument_group("run")
    add_device_option(g)
    g.add_argument("--workers", type=LIMITS["workers"], help="data-loading processes (default: 0 on a CPU with <= 2 cores, else up to 4)")
    g.add_argument("--cache", choices=CACHE_CHOICES, default=_DEFAULTS.cache,
                   help="keep decoded, resized images in RAM (per loader process) or on disk (.cache/decoded)")
    g.add_argument("--aspect-grouping", action=argparse.BooleanOptionalAction, default=_DEFAULTS.aspect_grouping,
                   help="batch landscape and portrait images apart (less padding)")
    g.add_argument("--val-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure the loss on the val split after each epoch, for results.csv and results.png "
                        "(demo: off, to fit 10 minutes; data: on)")
    g.add_argument("--seed", type=LIMITS["seed"], default=_DEFAULTS.seed)
    g.add_argument("--out", type=Path, default=_DEFAULTS.out, help="folder holding the runs")
    g.add_argument("--name", help="run name (default: the backbone; a number is added rather than overwrite a run)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write the results.csv numbers and the settings as TensorBoard events into the run "
                        "folder (tensorboard --logdir weights); needs pip install 'can-detect[tensorboard]'")
    g.add_argument("--resume", type=Path, help="continue from a last.pt, with the run's own settings "
                   "(only --epochs, --time, --patience, --device, --workers may be given with it)")
    g.add_argument("--no-check", action="store_true", help="skip the annotation checker pass before training")

    g = p.add_argument_group("verdict")
    g.add_argument("--verdict", action="store_true", help="after the detector, train the item classifier the line "
                   "judges each item with (verdict.pt beside best.pt; docs/verdict.md)")
    g.add_argument("--verdict-epochs", type=LIMITS["epochs"], default=15, help="epochs of the item classifier")
    g.add_argument("--verdict-arch", choices=("auto", "mobilenet_v3_small", "small_cnn"), default="auto",
                   help="the item classifier: MobileNetV3-small (ImageNet weights when they can be had) or a "
                   "four-layer CNN (from scratch); auto (the default): MobileNetV3-small when ImageNet weights "
                   "can be had, else the small CNN, which learns more from scratch (docs/verdict.md)")
    g.add_argument("--max-false-reject", type=_false_reject, metavar="R", help="with --verdict: the share of good "
                   "items you accept to reject, 0 < R <= 0.5 (e.g. 0.01); the threshold meeting it on the val "
                   "split is stored with the classifier (default: probability 0.5)")
    g = p.add_argument_group("anomaly")
    g.add_argument("--no-anomaly", action="store_true", help="do not build the anomaly bank of best.pt after "
                   "training (intact items' patch features, a few seconds; docs/anomaly.md)")
    g.add_argument("--anomaly-max-false-reject", type=_false_reject, default=DEFAULT_FALSE_REJECT, metavar="R",
                   help="the share of the val split's intact items the anomaly threshold may flag, 0 < R <= 0.5; "
                   "needs at least 1/R intact val items per class")
    return p


def _false_reject(text: str) -> float:
    from detect.line.verdict import check_false_reject

    try:
        return check_false_reject(float(text))
    except (ValueError, UsageError) as exc:
        raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, UsageError) else
                                         f"{text}: give a share such as 0.01") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The parsed command line as a :class:`TrainConfig` (whose ranges
    :func:`detect.training.trainer.resolve_config` checks, for this CLI and for Python callers alike)."""
    return TrainConfig.from_dict(vars(args))


def _echo(text: str, *, err: bool = False) -> None:
    # tqdm.write keeps the lines clear of a progress bar on the terminal.
    tqdm.write(text, file=sys.stderr if err else sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        if args.resume is not None:
            given = given_options(parser, argv if argv is not None else sys.argv[1:])
            cfg = resume_config(args.resume, {k: getattr(args, k) for k in given})
        else:
            cfg = config_from_args(args)
        if args.max_false_reject is not None and not args.verdict:
            raise UsageError("--max-false-reject sets the verdict classifier's threshold: add --verdict")
        result = train(cfg, echo=_echo, progress=sys.stderr.isatty())
        if args.verdict and result.status != "interrupted" and result.main:
            from detect.training.verdict import verdict_for_run

            verdict_for_run(result, epochs=args.verdict_epochs, max_false_reject=args.max_false_reject,
                            arch=args.verdict_arch, echo=_echo)
        if not args.no_anomaly and result.status != "interrupted" and result.main:
            from detect.training.anomaly import anomaly_for_run

            anomaly_for_run(result, max_false_reject=args.anomaly_max_false_reject, echo=_echo)
        return _report(result)

    # train() handles Ctrl-C itself once training runs: this is for the setup before it.
    return run_command(body, interrupted="\nInterrupted before training started; nothing was saved.")


def _report(r: TrainResult) -> int:
    interrupted = r.status == "interrupted"
    if r.main:  # under torchrun only rank 0 speaks
        print(summary(r), file=sys.stderr if interrupted else sys.stdout)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
