"""The three training modes on the same data, and one comparison: from scratch, fine-tuned and
as a feature extractor.

    python bench/train_modes.py --weights weights/demo/best.pt --data path/to/bccd \\
        --name bccd -- --skip-invalid --input-size 256 --epochs 3

runs ``python -m detect.train`` three times with the same arguments (those after ``--``):

=============  =====================================================================
``scratch``    ``--weights none`` (random initialisation, every layer trains)
``finetune``   ``--weights W --trainable-layers <all stages of the backbone>``
``features``   ``--weights W --trainable-layers 0`` (frozen backbone; FPN and heads train)
=============  =====================================================================

and then ``python -m detect.eval`` on the three runs, which prints one table (accuracy,
speed, and what each run cost: training time, peak memory, epochs, final loss, mode) and
writes ``--report`` (default ``<out>/<name>-report/``: ``report.md``, ``comparison.png``,
``training_curves.png``, ``eval.json``).

``--weights`` is the pretrained starting point: ``coco`` or ``imagenet`` (torchvision's,
needs internet once), or, offline, a checkpoint of your own (``weights/RUN/best.pt``);
layers whose shapes differ, such as the box predictor of another class list, start afresh.
Each training is its own process, so its peak memory is its own. Exit status: 0, or the
first failing command's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _repo  # noqa: F401  (makes `detect` importable from a clone)

from detect.model.backbones import BACKBONES  # noqa: E402
from detect.common.files import unique_folder  # noqa: E402

MODES = ("scratch", "finetune", "features")


def mode_args(mode: str, *, weights: str, backbone: str) -> list[str]:
    """The ``detect.train`` arguments that make ``mode``."""
    if mode == "scratch":
        return ["--weights", "none"]
    if mode == "finetune":
        return ["--weights", weights, "--trainable-layers", str(BACKBONES[backbone].max_trainable_layers)]
    if mode == "features":
        return ["--weights", weights, "--trainable-layers", "0"]
    raise ValueError(f"unknown mode {mode!r}")


def checkpoint_backbone(path: Path) -> str | None:
    """The backbone a detect.train checkpoint records (None for other weight files)."""
    from detect.model.checkpoint import CheckpointError, load_checkpoint

    try:
        return str(load_checkpoint(path)["model_config"]["backbone"])
    except (CheckpointError, KeyError, TypeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/train_modes.py",
        description="Train the same data from scratch, fine-tuned and as a feature extractor, then compare.",
        epilog="Arguments after -- go to every python -m detect.train call (e.g. -- --epochs 3 --input-size 256).",
    )
    p.add_argument("--weights", required=True,
                   help="pretrained starting point of fine-tuning and feature extraction: coco, imagenet or a checkpoint")
    p.add_argument("--data", help="dataset folder (default: the bundled demo)")
    p.add_argument("--backbone", choices=tuple(BACKBONES),
                   help="default: the checkpoint's (--weights FILE), else mobilenet")
    p.add_argument("--name", default="modes", help="run name prefix: NAME-scratch, NAME-finetune, NAME-features")
    p.add_argument("--out", default="weights", help="folder holding the runs (default: weights)")
    p.add_argument("--report", help="evaluation report folder (default: OUT/NAME-report)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="which modes (default: all three)")
    p.add_argument("--device", help="passed to detect.train and detect.eval")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    weights_file = Path(args.weights)
    backbone = args.backbone
    if args.weights not in ("coco", "imagenet"):
        if not weights_file.is_file():
            print(f"error: --weights {args.weights}: no such file (give coco, imagenet or a checkpoint)", file=sys.stderr)
            return 2
        recorded = checkpoint_backbone(weights_file)
        if backbone and recorded and backbone != recorded:
            print(f"error: {weights_file} is a {recorded} checkpoint; --backbone {backbone} would start "
                  "mostly from random weights", file=sys.stderr)
            return 2
        backbone = backbone or recorded
    backbone = backbone or "mobilenet"
    out = Path(args.out)
    report = Path(args.report) if args.report else out / f"{args.name}-report"
    common = [*(["--data", args.data] if args.data else []), "--backbone", backbone, "--out", str(out),
              *(["--device", args.device] if args.device else [])]

    runs: list[tuple[str, Path, float]] = []
    for mode in args.modes:
        # A free name: claimed, then handed back for detect.train to claim (it never takes over
        # an existing folder); the check for best.pt below catches a run that raced for it.
        run = unique_folder(out, f"{args.name}-{mode}")
        run.rmdir()
        cmd = [sys.executable, "-m", "detect.train", *common, "--name", run.name,
               *mode_args(mode, weights=args.weights, backbone=backbone), *extra]
        print(f"\n[{mode}] " + " ".join(cmd[1:]), flush=True)
        if args.dry_run:
            runs.append((mode, run, 0.0))
            continue
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        runs.append((mode, run, time.perf_counter() - t0))
        if code != 0:
            print(f"error: the {mode} training exited with {code}", file=sys.stderr)
            return code
        # An unlikely race with another run of the same name would put it elsewhere.
        if not (run / "best.pt").is_file():
            print(f"error: the {mode} training wrote no {run / 'best.pt'}", file=sys.stderr)
            return 1

    cmd = [sys.executable, "-m", "detect.eval", "--weights", *[str(r / "best.pt") for _, r, _ in runs],
           "--report", str(report), "--json", str(report / "eval.json"), "--no-progress",
           *(["--device", args.device] if args.device else [])]
    print("\n[compare] " + " ".join(cmd[1:]), flush=True)
    if args.dry_run:
        return 0
    code = subprocess.call(cmd)
    print("\nwall time per mode (the whole command: start-up, annotation check, training, validation):")
    for mode, run, seconds in runs:
        print(f"  {mode:9s} {run}  {seconds / 60:.1f} min")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the training under way saved its last.pt and said how to resume
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
