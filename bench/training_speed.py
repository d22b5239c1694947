"""Training speed on this machine: our loop against a plain tutorial loop, side by side.

    python bench/training_speed.py                          # throughput, data wait, peak memory
    python bench/training_speed.py --time-to-map 0.25       # ... and the time each loop needs to that val mAP
    python bench/training_speed.py --profile --repeats 1    # ... and where a step of ours spends its time
    python bench/training_speed.py --model-only --sizes 256 320 --backbone mobilenet resnet50

Both loops train the same model (the demo recipe's, from the same initialisation) on the
same demo images at the same input size and batch size:

* **ours**: ``detect.training.engine.train_one_epoch`` on ``detect.training.data_prep.make_loaders``
  (OpenCV decode, images shrunk to the input size before augmentation, the recipe's
  cache and augmentation, losses read back as the engine does);
* **tutorial**: torchvision's detection tutorial loop: PIL decode, ``to_tensor``, a random
  horizontal flip, the default ``DataLoader``, ``loss.item()`` every step, and the model's
  RoI pooling as torchvision ships it (``MultiScaleRoIAlign``, whose CPU gradient is the
  single-threaded kernel that ``detect/model/roi_align.py`` replaces: same values, same weights).

``--amp`` trains ours under bfloat16 autocast (``detect.train --amp``; on the CPU it pays
only where the CPU has bfloat16 instructions).

Each loop runs in its own process (so its peak memory is its own), the two alternating
``--repeats`` times; the figures are medians and the ratio is taken pair by pair.
``--time-to-map`` trains each loop from the same initialisation, validating after every
epoch, until val mAP@0.5 reaches the target: the tutorial loop with today's reference
recipe (:data:`REFERENCE_RECIPE`), ours with the demo recipe, since the fair comparison
when a speed-up changes the recipe is the time to the same accuracy. This is a benchmark,
not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import _repo  # noqa: F401  (makes `detect` importable from a clone)

import torch  # noqa: E402

from detect.model.backbones import BACKBONES  # noqa: E402
from detect.model.build import build_model, count_parameters  # noqa: E402
from detect.model.config import LEGACY_MOBILENET  # noqa: E402

# The recipe the demo trained with before the speed work (0.296 val mAP@0.5 after 8 epochs;
# docs/notes.md, "The demo recipe history"), on the model of that time (torchvision's MobileNet
# extractor, REFERENCE_MODEL): the reference for the time-to-mAP comparison.
REFERENCE_RECIPE = dict(input_size=256, anchor_ratios=[0.5, 1.5, 3.0], anchor_scales=[1.0, 2.0, 4.0], rpn_pre_nms=600,
                        rpn_post_nms=300, rpn_batch=128, roi_batch=128, box_head_dim=1024, roi_sampling_ratio=2,
                        fpn_norm="none", epochs=8, batch_size=4, augment="light", cache="none")
REFERENCE_MODEL = LEGACY_MOBILENET


# --------------------------------------------------------------------------------------
# The two loops (each runs in a child process)


def _setup(recipe: dict | None, seed: int, device: torch.device, tutorial: bool = False):
    """The recipe's config and data, its model on ``device`` (the reference model for
    :data:`REFERENCE_RECIPE`; torchvision's own RoI pooling for the tutorial loop) and an
    AdamW optimizer, as both loops train from scratch."""
    from torchvision.ops import MultiScaleRoIAlign

    from detect.training import config as train_config, data_prep, engine, trainer

    cfg = train_config.resolve_config(train_config.TrainConfig.from_dict(dict(weights="none", seed=seed, no_check=True, **(recipe or {}))))
    cfg, data = data_prep.prepare_data(cfg)
    torch.manual_seed(seed)
    model = trainer.model_for_config(cfg, len(data.classes) + 1)
    if recipe is REFERENCE_RECIPE:
        torch.manual_seed(seed)
        model = build_model(model.config.replace(**REFERENCE_MODEL, trainable_layers=None, frozen_bn=None))
    if tutorial:
        pool = model.roi_heads.box_roi_pool
        model.roi_heads.box_roi_pool = MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = engine.make_optimizer(cfg.optimizer or "adamw", params, lr=cfg.lr or 1e-3, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)
    return cfg, data, model, params, optimizer


def _tutorial_loader(cfg, data, seed: int):
    """torchvision's object-detection tutorial, as written there."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import functional as F

    class TutorialDataset(Dataset):
        def __init__(self, records, classes):
            self.records, self.label = records, {c: i + 1 for i, c in enumerate(classes)}

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            rec = self.records[i]
            img = Image.open(rec.image).convert("RGB")
            objs = rec.annotation.objects
            boxes = torch.tensor([list(o.box) for o in objs], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([self.label[o.name] for o in objs], dtype=torch.int64)
            img = F.to_tensor(img)
            if torch.rand(1) < 0.5:  # T.RandomHorizontalFlip(0.5)
                img = img.flip(-1)
                boxes[:, [0, 2]] = img.shape[-1] - boxes[:, [2, 0]]
            return img, {"boxes": boxes, "labels": labels}

    g = torch.Generator().manual_seed(seed)
    return DataLoader(TutorialDataset(data.train, data.classes), batch_size=cfg.batch_size, shuffle=True,
                      collate_fn=lambda b: tuple(zip(*b)), generator=g)


def _tutorial_steps(model, optimizer, loader, device, steps: int | None):
    """Yield per step (seconds, seconds waiting for data); the tutorial's loop body."""
    model.train()
    it = iter(loader)
    done = 0
    while steps is None or done < steps:
        t0 = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            return
        waited = time.perf_counter() - t0
        images = list(image.to(device) for image in images)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        losses.item()
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        done += 1
        yield time.perf_counter() - t0, waited


def _peak() -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _throughput(kind: str, warmup: int, steps: int, device_name: str, seed: int, amp: bool) -> dict:
    from detect.training import data_prep, engine

    device = torch.device(device_name)
    cfg, data, model, params, optimizer = _setup(None, seed, device, tutorial=kind == "tutorial")
    batch = cfg.batch_size
    if kind == "tutorial":
        loader = _tutorial_loader(cfg, data, seed)
        timings = list(_tutorial_steps(model, optimizer, loader, device, warmup + steps))[warmup:]
        seconds, waited = sum(t for t, _ in timings), sum(w for _, w in timings)
    else:
        train_set, loader, sampler, _, generator = data_prep.make_loaders(cfg, data, device=device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        seconds = waited = 0.0
        for epoch, n in ((0, warmup), (1, steps)):
            state = engine.EpochState(epoch)
            engine.seed_everything(seed + epoch, generator, train_set.transform)
            engine.train_one_epoch(model, optimizer, loader, device, state=state, epochs=2, scheduler=scheduler,
                                   scaler=scaler, amp_dtype=torch.bfloat16 if amp else None,
                                   stop=lambda s=state, n=n: s.iteration >= n)
            if epoch == 1:
                seconds, waited, steps = state.seconds, state.data_seconds, state.iteration
    return {"kind": kind, "img_per_s": steps * batch / seconds, "data_share": waited / seconds, "steps": steps,
            "batch": batch, "input_size": cfg.model.input_size, **_peak()}


def _time_to_map(kind: str, target: float, max_minutes: float, device_name: str, seed: int, amp: bool) -> dict:
    from detect.training import data_prep, engine
    from detect.data.records import ground_truths

    device = torch.device(device_name)
    recipe = REFERENCE_RECIPE if kind == "tutorial" else None
    cfg, data, model, params, optimizer = _setup(recipe, seed, device, tutorial=kind == "tutorial")
    train_set, loader, sampler, val_loader, generator = data_prep.make_loaders(cfg, data, device=device)
    if kind == "tutorial":
        loader = _tutorial_loader(cfg, data, seed)
    truths = ground_truths(data.val, data.classes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, engine.lr_lambda(
        epochs=cfg.epochs, iters_per_epoch=len(loader), warmup_iters=cfg.warmup_iters, schedule=cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    curve, train_seconds = [], 0.0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        if kind == "tutorial":
            for _ in _tutorial_steps(model, optimizer, loader, device, None):
                scheduler.step()
        else:
            engine.seed_everything(seed * 10_000 + epoch, generator, train_set.transform)
            sampler.set_epoch(epoch)
            engine.train_one_epoch(model, optimizer, loader, device, state=engine.EpochState(epoch), epochs=cfg.epochs,
                                   scheduler=scheduler, scaler=scaler, amp_dtype=torch.bfloat16 if amp else None)
        train_seconds += time.perf_counter() - t0
        val = engine.evaluate(model, val_loader, truths, data.classes, device)
        curve.append((epoch + 1, round(train_seconds, 1), round(val, 4)))
        print(f"  [{kind}] epoch {epoch + 1}: val mAP@0.5 {val:.4f} after {train_seconds / 60:.1f} min of training",
              flush=True)
        if val >= target or train_seconds > max_minutes * 60:
            break
    reached = next((t for _, t, m in curve if m >= target), None)
    return {"kind": kind, "target": target, "seconds_to_target": reached, "curve": curve,
            "epochs": cfg.epochs, "input_size": cfg.model.input_size, **_peak()}


def _profile(steps: int, warmup: int, device_name: str, seed: int, amp: bool) -> dict:
    """Where one training step of the demo recipe spends its time: forward hooks on the
    model's parts, and the loop's own phases (data, forward, backward, optimizer)."""
    from collections import defaultdict

    from detect.training import data_prep

    device = torch.device(device_name)
    cfg, data, model, params, optimizer = _setup(None, seed, device)
    amp_dtype = torch.bfloat16 if amp else None
    model.train()
    _, loader, _, _, _ = data_prep.make_loaders(cfg, data, device=device)
    seconds: dict[str, float] = defaultdict(float)

    def hook(module, name):
        module.register_forward_pre_hook(lambda m, a: setattr(m, "_t0", time.perf_counter()))
        module.register_forward_hook(lambda m, a, o: seconds.__setitem__(name, seconds[name] + time.perf_counter() - m._t0))

    parts = {"forward: resize + normalise": model.transform, "forward: backbone trunk": model.backbone.body,
             "forward: FPN": model.backbone.fpn, "forward: RPN": model.rpn, "forward: RoI heads": model.roi_heads,
             "  of which RoIAlign": model.roi_heads.box_roi_pool, "  of which box head": model.roi_heads.box_head}
    for name, module in parts.items():
        hook(module, name)
    it = iter(loader)
    ops = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    for step in range(warmup + steps + 4):
        if step == warmup:
            seconds.clear()
        if step == warmup + steps:  # then 4 more steps, op by op, outside the timed ones
            timed = dict(seconds)
            ops.__enter__()
        t0 = time.perf_counter()
        try:
            images, targets, _ = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets, _ = next(it)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = sum(model(images, targets).values())
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        t4 = time.perf_counter()
        for name, dt in (("data", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                         ("clip + optimizer step", t4 - t3), ("step", t4 - t0)):
            seconds[name] += dt
    ops.__exit__(None, None, None)
    averages = sorted(ops.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages)
    top = [(e.key, e.count, e.self_cpu_time_total / total) for e in averages[:8]]
    return {"steps": steps, "batch": cfg.batch_size, "input_size": cfg.model.input_size, "amp": amp,
            "ms": {k: 1000 * v / steps for k, v in timed.items()}, "top_ops": top}


def print_profile(p: dict) -> None:
    total = p["ms"]["step"]
    amp = ", bfloat16 autocast" if p.get("amp") else ""
    print(f"\nwhere a training step goes (demo recipe{amp}, {p['input_size']} px, batch {p['batch']}, "
          f"{p['steps']} steps after warm-up)")
    order = ["data", "forward", "forward: resize + normalise", "forward: backbone trunk", "forward: FPN",
             "forward: RPN", "forward: RoI heads", "  of which RoIAlign", "  of which box head", "backward",
             "clip + optimizer step", "step"]
    for name in order:
        ms = p["ms"].get(name, 0.0)
        print(f"  {name:<30} {ms:8.1f} ms  {100 * ms / total:5.1f} %")
    print("  the operators that take most of it (torch.profiler, self CPU time of 4 more steps):")
    for name, count, share in p["top_ops"]:
        print(f"    {name:<40} {count:5d} calls  {100 * share:5.1f} %")


def _child(fn, args, queue):
    try:
        queue.put(fn(*args))
    except BaseException as exc:  # reported by the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _in_child(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise SystemExit(f"benchmark child failed: {result['error']}")
    return result


# --------------------------------------------------------------------------------------
# The raw model (the old table)


def model_only(args) -> None:
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'backbone':<10} {'size':>5} {'params':>8} {'train img/s':>12} {'infer ms/img':>13}")
    for backbone in args.backbone:
        for size in args.sizes:
            torch.manual_seed(0)
            model = build_model(backbone=backbone, num_classes=5, input_size=size).to(device)
            h = size * 3 // 4
            images = [torch.rand(3, h, size, device=device) for _ in range(args.batch)]
            box = torch.tensor([[0.05 * size, 0.05 * h, 0.4 * size, 0.8 * h]], device=device)
            targets = [{"boxes": box, "labels": torch.tensor([1], device=device)} for _ in range(args.batch)]
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            model.train()
            for i in range(args.steps + 1):
                if i == 1:
                    t0 = time.perf_counter()
                loss = sum(model(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
            ips = args.batch * args.steps / (time.perf_counter() - t0)
            model.eval()
            with torch.inference_mode():
                model(images[:1])
                t0 = time.perf_counter()
                for _ in range(5):
                    model(images[:1])
                ms = 200 * (time.perf_counter() - t0)
            print(f"{backbone:<10} {size:>5} {count_parameters(model) / 1e6:>7.1f}M {ips:>12.2f} {ms:>13.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=5, help="steps not timed (default 5)")
    p.add_argument("--steps", type=int, default=30, help="steps timed per measurement (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each loop, alternating (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-to-map", type=float, metavar="MAP", help="also train both loops to this val mAP@0.5")
    p.add_argument("--max-minutes", type=float, default=30, help="give up a time-to-mAP run after this much training")
    p.add_argument("--profile", action="store_true", help="also show where a training step of ours spends its time")
    p.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    p.add_argument("--amp", action="store_true", help="train ours under bfloat16 autocast (detect.train --amp)")
    p.add_argument("--model-only", action="store_true", help="the raw model on random images instead")
    p.add_argument("--backbone", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    if args.model_only:
        model_only(args)
        return 0

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load}")
    runs: dict[str, list[dict]] = {"ours": [], "tutorial": []}
    for r in range(args.repeats):
        for kind in ("tutorial", "ours"):
            runs[kind].append(_in_child(_throughput, kind, args.warmup, args.steps, args.device, args.seed,
                                           args.amp and kind == "ours"))
            m = runs[kind][-1]
            print(f"  run {r + 1} {kind:<8} {m['img_per_s']:6.2f} img/s, data wait {100 * m['data_share']:4.1f}% "
                  f"of the step, peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)
    ratios = [o["img_per_s"] / t["img_per_s"] for o, t in zip(runs["ours"], runs["tutorial"])]
    first = runs["ours"][0]
    print(f"\ntraining throughput, demo data, input {first['input_size']} px, batch {first['batch']}, "
          f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats}:")
    print(f"{'loop':<10} {'img/s':>7} {'data wait':>10} {'peak RSS':>9}" + ("  CUDA peak" if torch.cuda.is_available() else ""))
    for kind in ("tutorial", "ours"):
        ms = runs[kind]
        cuda = f"  {statistics.median(m['cuda_peak_mb'] for m in ms):7.0f} MB" if "cuda_peak_mb" in ms[0] else ""
        print(f"{kind:<10} {statistics.median(m['img_per_s'] for m in ms):7.2f} "
              f"{100 * statistics.median(m['data_share'] for m in ms):9.1f}% "
              f"{statistics.median(m['peak_rss_mb'] for m in ms):6.0f} MB{cuda}")
    print(f"ours / tutorial: {statistics.median(ratios):.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")

    result = {"throughput": runs, "ratios": ratios}
    if args.time_to_map is not None:
        print(f"\ntime to val mAP@0.5 >= {args.time_to_map:g} (training time; validation after each epoch not counted):")
        ttm = {kind: _in_child(_time_to_map, kind, args.time_to_map, args.max_minutes, args.device, args.seed,
                               args.amp and kind == "ours") for kind in ("tutorial", "ours")}
        for kind, m in ttm.items():
            reached = "not reached" if m["seconds_to_target"] is None else f"{m['seconds_to_target'] / 60:.1f} min"
            recipe = "reference recipe" if kind == "tutorial" else "demo recipe"
            print(f"{kind:<10} ({recipe}, {m['input_size']} px): {reached}; curve (epoch, s, mAP): {m['curve']}")
        a, b = ttm["ours"]["seconds_to_target"], ttm["tutorial"]["seconds_to_target"]
        if a and b:
            print(f"ours / tutorial time to mAP {args.time_to_map:g}: {a / b:.2f}")
        result["time_to_map"] = ttm
    if args.profile:
        result["profile"] = _in_child(_profile, args.steps, args.warmup, args.device, args.seed, args.amp)
        print_profile(result["profile"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
