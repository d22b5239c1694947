"""Seconds per training step of the user-data recipes on this machine, side by side.

    python bench/recipe_steps.py path/to/bccd bccd-200 --recipes gpu cpu-scratch
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/recipe_steps.py ...   # an AVX2 CPU's view

For each dataset and recipe, the run's own data, model and loaders (as ``detect.train``
builds them, from scratch, input size from the data) and the step timing the banner's
estimate uses (:func:`detect.training.budget.measure`: one untimed step, then ``--steps``
timed, loading included as with ``--workers 0``). The recipes alternate ``--repeats`` times
and the figures are medians. ``gpu`` is torchvision's recipe, the one every user's dataset
got before the CPU recipes. This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import _repo  # noqa: F401  (makes `detect` importable from a clone)

import torch  # noqa: E402

from detect.training import budget, config as C, data_prep, trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, nargs="+", help="VOC datasets")
    p.add_argument("--recipes", nargs="+", default=["gpu", "cpu-scratch"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default: 5)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--input-size", type=int, help="default: from the data, as detect.train chooses")
    args = p.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for data in args.data:
        times: dict[str, list[float]] = {r: [] for r in args.recipes}
        shape = {}
        for _ in range(args.repeats):
            for recipe in args.recipes:
                cfg = C.resolve_config(C.TrainConfig(data=data, weights="none", recipe=recipe, no_check=True, workers=0,
                                                     model=C.ModelConfig(input_size=args.input_size)))
                cfg, d = data_prep.prepare_data(cfg)
                torch.manual_seed(0)
                model = trainer.model_for_config(cfg, len(d.classes) + 1)
                _, loader, _, val_loader, _ = data_prep.make_loaders(cfg, d)
                pace = budget.measure(model, loader, val_loader, torch.device("cpu"), optimizer=cfg.optimizer, lr=cfg.lr,
                                      steps=args.steps, clock=time.perf_counter)
                times[recipe].append(pace.step_s)
                shape[recipe] = (cfg.model.input_size, len(loader), len(d.val), pace.val_image_s, cfg.val_loss)
        base = statistics.median(times[args.recipes[0]])
        for recipe in args.recipes:
            s = statistics.median(times[recipe])
            size, steps, val, val_s, val_loss = shape[recipe]
            print(f"{data.name:<12} {recipe:<15} input {size} px  {s:6.2f} s/step (batch 4)  "
                  f"x{base / s:4.1f} vs {args.recipes[0]}  epoch of {steps} steps ~ {s * steps / 60:5.1f} min;  "
                  f"val mAP pass {val_s * val:5.1f} s ({val} images), val-loss pass about as much again "
                  f"(= {val_s * val / (s * steps + val_s * val):.0%} of an epoch without it; recipe val_loss {val_loss})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
