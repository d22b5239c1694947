"""What the validation loss costs per epoch, measured side by side with training and the val mAP.

    python bench/val_loss_cost.py                      # the demo recipe on the demo data
    python bench/val_loss_cost.py --weights weights/demo/best.pt --train-batches 24

On the demo data (generated into .cache/ on first use, as detect.train does) with the demo
recipe's model and loaders (``detect.training.trainer``), one run times, in this order and on the
same model:

* ``train``: ``--train-batches`` training iterations (forward, backward, AdamW step);
* ``val mAP``: :func:`detect.training.engine.evaluate` on the whole val split;
* ``val loss``: :func:`detect.training.engine.validation_loss` on the whole val split;

and prints each, an epoch's estimated training time (the train rate times the train split),
and the val loss's share of an epoch (train + val mAP + val loss). This is a benchmark, not
a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _repo  # noqa: F401  (makes `detect` importable from a clone)

import torch  # noqa: E402

from detect.training import config as train_config, data_prep, trainer  # noqa: E402
from detect.training.engine import evaluate, make_optimizer, validation_loss  # noqa: E402
from detect.data.records import ground_truths  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="none", help="none or a checkpoint to start from (default: none)")
    p.add_argument("--train-batches", type=int, default=24, help="training iterations timed (default: 24)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    # The demo recipe's data, model and loaders, as detect.train builds them.
    cfg = train_config.resolve_config(train_config.TrainConfig.from_dict(
        dict(weights=args.weights, no_check=True, trainable_layers=None if args.weights == "none" else 6)))
    cfg, data = data_prep.prepare_data(cfg)
    classes, train_records, val_records = data.classes, data.train, data.val
    torch.manual_seed(0)
    model = trainer.model_for_config(cfg, len(classes) + 1)
    device = torch.device("cpu")
    _, train_loader, _, val_loader, _ = data_prep.make_loaders(cfg, data)
    optimizer = make_optimizer("adamw", [q for q in model.parameters() if q.requires_grad], lr=1e-4,
                               momentum=0.9, weight_decay=1e-4)

    model.train()
    n = 0
    t0 = time.perf_counter()
    for i, (images, targets, _) in enumerate(train_loader):
        if i == args.train_batches:
            break
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += len(images)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    val_map = evaluate(model, val_loader, ground_truths(val_records, classes), classes, device)
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = validation_loss(model, val_loader, device, seed=0)
    t_loss = time.perf_counter() - t0

    epoch_train = t_train / n * len(train_records)
    epoch = epoch_train + t_map + t_loss
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; weights {args.weights}")
    print(f"train     {n} images in {t_train:.1f} s ({n / t_train:.2f} img/s): an epoch of "
          f"{len(train_records)} images ~ {epoch_train:.0f} s")
    print(f"val mAP   {len(val_records)} images in {t_map:.1f} s (mAP@0.5 {val_map:.3f})")
    print(f"val loss  {len(val_records)} images in {t_loss:.1f} s (loss {val['loss']:.3f})")
    print(f"val loss / val mAP time: {t_loss / t_map:.2f}; val loss share of an epoch: {t_loss / epoch:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
