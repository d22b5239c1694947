"""What a run says: the banner before training (:func:`banner`: the run, its recipe, model,
anchors, the estimate on this machine and the optimisation), one line per epoch
(:func:`epoch_line`), and the summary ``python -m detect.train`` prints at the end
(:func:`summary`). The trainer hands the lines to its ``echo``; only the command prints."""

from __future__ import annotations

from detect.common.errors import show
from detect.model.build import anchors_per_location, describe_anchors, feature_strides
from detect.training.budget import format_duration
from detect.training.config import RECIPE_REASONS, Echo
from detect.training.data_prep import repeat_factors
from detect.training.run_state import Run, TrainResult

__all__ = ["LONG_RUN_S", "banner", "epoch_line", "summary"]

LONG_RUN_S = 3600  # an estimate past this says what would shorten it


def banner(echo: Echo, run: Run) -> None:
    """The run before its first epoch: data, recipe, model, anchors, estimate, optimisation."""
    plan, model = run.plan, run.opt.model
    cfg, data, dist = plan.cfg, plan.data, plan.dist
    procs = f" x {dist.world} processes (DistributedDataParallel)" if dist.active else ""
    amp = f", AMP {str(plan.amp_dtype).replace('torch.', '')}" if plan.amp_dtype else ""
    echo(f"Run {run.folder.path}: {cfg.model.backbone}, {len(data.classes)} classes ({', '.join(map(show, data.classes))}), "
         f"{len(data.train)} train / {len(data.val)} val images, input {cfg.model.input_size}px{data.input_note}, "
         f"device {plan.device}{procs}{amp}")
    echo(f"Recipe {cfg.recipe}: {RECIPE_REASONS.get(cfg.recipe, 'as the run recorded')}; each value can be "
         "overridden (--box-head-dim, --roi-batch, ..., or --recipe)")
    if cfg.exif == "ignore":
        echo("EXIF orientation: ignored (--exif ignore): boxes and images in the stored frame")
    mc = model.config
    blocks = f" (MobileNetV3 blocks {'/'.join(map(str, mc.feature_blocks))} + max-pool)" if mc.feature_blocks else ""
    echo(f"Features: FPN at strides {'/'.join(map(str, feature_strides(mc)))}{blocks}, {mc.fpn_channels} channels, FPN norm {mc.fpn_norm}; "
         f"box head {mc.box_head_dim} wide, RoIAlign sampling {mc.roi_sampling_ratio}, "
         f"{mc.rpn_post_nms} proposals, {mc.roi_batch} sampled per image")
    echo(f"RPN anchors ({'/'.join(str(n) for n in anchors_per_location(model))} per location):")
    echo("  " + describe_anchors(model.rpn.anchor_generator).replace("\n", "\n  "))
    echo(f"  matched by IoU: foreground >= {mc.rpn_fg_iou}, background < {mc.rpn_bg_iou}")
    echo(f"  {model.weights_report.summary()}")
    if not data.val:
        echo("No val split: val mAP is not measured, and best.pt is the last epoch (pass --val-fraction, or "
             "ImageSets/Main/val.txt, to measure it)")
    _estimate(echo, run)
    batch = f"batch {cfg.batch_size}" + (f" x {dist.world} = {cfg.batch_size * dist.world}" if dist.active else "")
    echo(f"Optimizer {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}, "
         f"{min(cfg.warmup_iters, len(run.loaders.train))} warm-up iterations), "
         f"{batch}, {cfg.epochs} epochs, augment {cfg.augment}")
    if cfg.balance == "repeat":
        _balance(echo, run)


def _balance(echo: Echo, run: Run) -> None:
    """--balance repeat: each class's repeat factor and the epoch's size, and a hint when
    the factors are all 1."""
    cfg, data = run.plan.cfg, run.plan.data
    per_class, _ = repeat_factors(cfg, data)
    factors = ", ".join(f"{show(c)} x{r:.2f}" for c, r in per_class.items())
    echo(f"Balance: repeat-factor sampling (t={cfg.balance_t:g}): {factors}; an epoch is "
         f"{run.loaders.sampler.epoch_size} images drawn from {len(data.train)} train images")
    if all(r == 1 for r in per_class.values()):
        echo(f"  every class is in at least {cfg.balance_t:g} of the train images (--balance-t), so this changes "
             "nothing: raise --balance-t")


def _estimate(echo: Echo, run: Run) -> None:
    """The run's expected cost on this machine, from the steps measured before training;
    a ``time`` budget's plan; and, for a long run, what would shorten it."""
    cfg, data, pace, estimate = run.plan.cfg, run.plan.data, run.pacing.pace, run.pacing.epoch_estimate
    start = run.progress.start_epoch
    if pace is None:
        return
    steps, left = len(run.loaders.train), cfg.epochs - start
    val = pace.val_seconds(len(data.val), bool(cfg.val_loss))
    parts = f"{steps} steps x {pace.step_s:.2f} s" + (f" + validation {format_duration(val)}" if data.val else "")
    total = estimate * left
    echo(f"Estimate on this machine (from {pace.steps} steps measured before training): "
         f"{format_duration(estimate)} an epoch ({parts}), {format_duration(total)} for "
         f"{'the ' + str(left) + ' epochs left' if start else str(left) + ' epochs'}")
    if cfg.time is not None and cfg.max_epochs is not None:
        fit = "they fit" if cfg.epochs == cfg.max_epochs else f"only {cfg.epochs} fit on this machine"
        echo(f"Budget of the {cfg.recipe} recipe: {cfg.max_epochs} epochs within {cfg.time:g} min ({fit}; --epochs "
             f"or --time to choose)")
    elif cfg.time is not None:
        spent = f", {format_duration(run.progress.train_time)} of it spent" if start else ""
        echo(f"--time {cfg.time:g} min{spent}: {cfg.epochs} epochs fit it; the learning-rate schedule "
             f"(warm-up, {cfg.schedule}) is fitted to {cfg.epochs} epochs")
    elif total > LONG_RUN_S:
        echo(f"That is long. To shorten it: --time MINUTES (the epochs that fit the budget), a smaller "
             f"--input-size (now {cfg.model.input_size} px; a step's cost grows with it), or a GPU")


def epoch_line(run: Run, epoch: int, val_map: float | None, improved: bool, seconds: float,
               data_wait: float | None) -> str:
    """``epoch 3/12  loss 0.8123  lr 0.00091  val mAP@0.5 0.4410 *  41s``: a ``*`` marks a new
    best; ``data_wait`` (the share of the epoch spent waiting for batches) is shown with the
    progress bar."""
    lr = run.opt.optimizer.param_groups[0]["lr"]
    shown = "-  (no val split)" if val_map is None else f"{val_map:.4f}{' *' if improved else ''}"
    wait = f"  data wait {100 * data_wait:.0f}%" if data_wait is not None else ""
    return (f"epoch {epoch + 1}/{run.plan.cfg.epochs}  loss {run.progress.final_loss or 0:.4f}  lr {lr:.5f}  "
            f"val mAP@0.5 {shown}  {seconds:.0f}s{wait}")


def summary(r: TrainResult) -> str:
    """The command's last words: where an interrupted run can resume from, or the best val
    mAP, the training time and the checkpoints."""
    if r.status == "interrupted":
        where = (f"saved {r.run.last} where epoch {r.stopped_in} stopped" if r.resume_exact else
                 f"{r.run.last} holds the end of epoch {r.stopped_in - 1}" if r.stopped_in > 1 else
                 "no epoch had finished")
        if r.resume_exact or r.stopped_in > 1:
            return (f"\nInterrupted in epoch {r.stopped_in}; {where}. Resume with:\n"
                    f"  python -m detect.train --resume {r.run.last}")
        return f"\nInterrupted in epoch 1; {where}, so nothing was saved."
    saved = ", ".join(str(p) for p in (r.run.best, r.run.last) if p.exists())
    best = ("no val split, so no val mAP (best.pt is the last epoch)" if r.best_map50 is None else
            f"best val mAP@0.5 {r.best_map50:.4f} (epoch {r.best_epoch})")
    return f"Done: {best}, train time {r.train_time / 60:.1f} min. Checkpoints: {saved}"
