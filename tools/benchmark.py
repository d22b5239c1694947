"""Throughput of the detector on this machine: training images/s and inference ms/image.

    python tools/benchmark.py                       # both backbones at 320 and 640 px
    python tools/benchmark.py --backbone mobilenet --sizes 256 320 --device cuda

Every configuration is measured in the same run, side by side, on random images with two
boxes each (the numbers depend on image size and proposal counts, not on content), and
printed with its ratio to the first row. This is a benchmark, not a test: nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import time

import _repo  # noqa: F401,E402  (makes `detect` importable from a clone)

import torch

from detect.backbones import BACKBONES  # noqa: E402
from detect.model import build_model, count_parameters  # noqa: E402


def measure(backbone: str, size: int, *, device: torch.device, batch: int, iters: int, train_kwargs: dict) -> dict:
    torch.manual_seed(0)
    model = build_model(backbone=backbone, num_classes=5, input_size=size, **train_kwargs).to(device)
    h = size * 3 // 4
    images = [torch.rand(3, h, size, device=device) for _ in range(batch)]
    boxes = torch.tensor([[0.05 * size, 0.05 * h, 0.4 * size, 0.8 * h], [0.5 * size, 0.2 * h, 0.9 * size, 0.9 * h]], device=device)
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2], device=device)} for _ in range(batch)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(iters + 1):  # the first iteration warms up allocators and kernels
        if i == 1:
            sync()
            t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train_ips = batch * iters / (time.perf_counter() - t0)

    model.eval()
    with torch.inference_mode():
        model(images[:1])
        sync()
        t0 = time.perf_counter()
        n = max(3, iters)
        for _ in range(n):
            model(images[:1])
        sync()
        infer_ms = 1000 * (time.perf_counter() - t0) / n
    return {"backbone": backbone, "size": size, "params": count_parameters(model), "train_ips": train_ips, "infer_ms": infer_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rpn-post-nms", type=int, default=300, help="proposals kept after NMS (training and inference)")
    p.add_argument("--roi-batch", type=int, default=128, help="proposals sampled per image for the box head")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    kwargs = dict(rpn_pre_nms_top_n_train=2 * args.rpn_post_nms, rpn_post_nms_top_n_train=args.rpn_post_nms,
                  rpn_pre_nms_top_n_test=2 * args.rpn_post_nms, rpn_post_nms_top_n_test=args.rpn_post_nms,
                  box_batch_size_per_image=args.roi_batch)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.iters} iterations each")
    print(f"{'backbone':<10} {'size':>5} {'params':>8} {'train img/s':>12} {'x':>6} {'infer ms/img':>13} {'fps':>6} {'x':>6}")
    base = None
    for backbone in args.backbone:
        for size in args.sizes:
            r = measure(backbone, size, device=device, batch=args.batch, iters=args.iters, train_kwargs=kwargs)
            base = base or r
            print(f"{r['backbone']:<10} {r['size']:>5} {r['params'] / 1e6:>7.1f}M {r['train_ips']:>12.2f} "
                  f"{r['train_ips'] / base['train_ips']:>6.2f} {r['infer_ms']:>13.1f} {1000 / r['infer_ms']:>6.1f} "
                  f"{base['infer_ms'] / r['infer_ms']:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
