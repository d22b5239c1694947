"""Build the anomaly bank of a trained checkpoint: ``python -m detect.anomaly --weights best.pt``.

    python -m detect.anomaly --weights weights/mobilenet/best.pt     # -> weights/mobilenet/best.anomaly.npz
    python -m detect.anomaly --weights best.pt --data moved/dataset --crop 96 --bank-size 4000
    python -m detect.anomaly --weights best.pt --max-false-reject 0.01 --overwrite

Writes ``NAME.anomaly.npz`` (the bank) and ``NAME.anomaly.onnx`` (the feature extractor, for
onnxruntime without torch). One pass over the intact boxes of the checkpoint's training split (no training): their patch
features from the detector's own backbone, subsampled per base class (``Lata``, ``Botella``)
into a memory bank (:mod:`detect.model.anomaly`); then the val split's intact boxes are scored
and each class's threshold is chosen so that at most ``--max-false-reject`` of them are over it
(:mod:`detect.training.anomaly`). ``detect.train`` builds the same bank at the end of training.
``detect.predict`` then gives every detection an ``anomaly`` score (higher = less like the
intact items seen) when the bank is beside the checkpoint, and ``--track`` flags anomalous
items. Exit status: 0 written; 1 it could not be written; 2 usage error (bad option, unusable
checkpoint or data, too few intact boxes of a class, too few val items for the rate).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

from detect.common.errors import UsageError, show
from detect.common.options import CliParser, Number, run_command
from detect.line.anomaly import DEFAULT_FALSE_REJECT


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.anomaly",
                  description="Build the anomaly bank (intact items' patch features) of a detect.train checkpoint.")
    p.add_argument("--weights", required=True, metavar="PT", help="the checkpoint (weights/RUN/best.pt)")
    p.add_argument("--data", metavar="DIR", help="the training data, when it is no longer where the checkpoint says")
    p.add_argument("--out", metavar="FILE", help="the bank file (default: beside the checkpoint, NAME.anomaly.npz)")
    p.add_argument("--crop", type=Number(int, 32, 512), default=64, metavar="PX",
                   help="item crops are resized to PX x PX (default 64)")
    p.add_argument("--bank-size", type=Number(int, 16, 1_000_000), default=1000, metavar="N",
                   help="patches kept per class by the coreset (default 1000)")
    p.add_argument("--max-crops", type=Number(int, 8, 10_000_000), default=200, metavar="N",
                   help="intact training crops per class the bank is built from, drawn at random (default 200)")
    p.add_argument("--max-false-reject", type=Number(float, 0, 0.5, lo_open=True), default=DEFAULT_FALSE_REJECT,
                   metavar="R", help="the share of the val split's intact items the threshold may flag, "
                   f"0 < R <= 0.5 (default {DEFAULT_FALSE_REJECT:g}); needs at least 1/R of them per class")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.anomaly``; returns the exit status (see the module docstring)."""
    return run_command(_build, build_parser(), argv, interrupted="interrupted; nothing was written")


def _build(args) -> int:
    source = Path(args.weights)
    if not source.is_file():
        raise UsageError(f"--weights {show(source)}: no such checkpoint file")
    from detect.model.patchbank import bank_path
    from detect.training.anomaly import build_anomaly, write_anomaly  # torch: after the usage checks

    target = Path(args.out) if args.out else bank_path(source)
    if target.suffix.lower() != ".npz":
        raise UsageError(f"--out {show(target)}: the file name must end in .npz")
    if os.path.lexists(target) and not args.overwrite:
        raise UsageError(f"{show(target)} exists; pass --overwrite to replace it, or --out another file")
    started = time.perf_counter()
    bank, extractor = build_anomaly(source, data=args.data, crop_size=(args.crop, args.crop), bank_size=args.bank_size,
                                    max_crops=args.max_crops, max_false_reject=args.max_false_reject)
    graph = write_anomaly(bank, extractor, target)  # and the features for the torch-free line (onnxruntime)
    per_class = ", ".join(f"{c} {bank.meta['crops'][c]} crops -> {len(bank.banks[c])} patches, threshold "
                          f"{bank.meta['thresholds'][c]:.3f} ({bank.meta['val_intact'][c]} val items)"
                          for c in bank.classes)
    print(f"wrote {show(target)} ({bank.nbytes() / 2**20:.1f} MiB; {per_class}; at most "
          f"{100 * args.max_false_reject:g} % of the val intact items over it) and {show(graph.name)} "
          f"({graph.stat().st_size / 2**20:.1f} MiB, the features for onnxruntime); "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
