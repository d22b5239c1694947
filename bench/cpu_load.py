"""Line-path speed when the CPU is shared: each runtime idle and beside another busy program.

    python bench/cpu_load.py                      # 320 px, 3 rounds of 4 s per setting
    python bench/cpu_load.py --input-size 256 --rounds 5 --seconds 6 --json cpu_load.json

A line PC runs an HMI and PLC software beside the detector. This measures what that costs
each runtime at each thread setting: images/s of ``detector.detect`` on rendered conveyor
frames (batch 1, the line path: decode and drawing left out), **idle** and **busy** (while
another CPU-bound program runs two threads: two single-threaded numpy matmul processes), and
the other program's own progress meanwhile (its matmuls/s against its rate alone).

The detectors are what ``detect.predict`` loads (:func:`detect.inference.loader.load_detector`)
for an untrained MobileNet Faster R-CNN built by :func:`detect.model.build.build_model`
(``weights="none"``, batch-norm statistics set from conveyor frames; untrained weights time
the same as trained ones), its ONNX float32 export (:func:`detect.deploy.onnx_export.export_onnx`)
and its int8 quantisation (:func:`detect.deploy.quantize.quantize_int8`).

Settings (each its own long-lived process, since OpenMP reads its environment once, when
torch loads it): PyTorch at ``threads`` 2 with libgomp's stock spin-wait
(``GOMP_SPINCOUNT=300000``), 2 with ``OMP_WAIT_POLICY=PASSIVE``, 1, and the loader's
default; onnxruntime float32 and int8 at 2 threads with and without spinning
(``session.intra_op.allow_spinning``), 1 thread, and the loader's default.

Every setting is measured once per round, idle and busy interleaved, and the medians over
rounds are printed with busy/idle ratios: on a machine other people also use, compare within
one run, never across runs. This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _repo  # noqa: F401  (makes `detect` importable from a clone)

CLASSES = ["Lata", "Lata_defectuosa", "Botella", "Botella_defectuosa"]
# Variables that decide how the runtimes thread; cleared for every worker, then set per setting.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS")
STOCK_SPIN = {"GOMP_SPINCOUNT": "300000"}  # libgomp's spin count when no wait policy is set

# (name, model, threads, extra environment, onnxruntime spinning)
SETTINGS = [
    ("torch 2 threads, spin", "pt", 2, STOCK_SPIN, None),
    ("torch 2 threads, passive", "pt", 2, {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    ("torch 1 thread", "pt", 1, STOCK_SPIN, None),
    ("torch default", "pt", None, {}, None),
    ("onnx f32 2 threads, spin", "f32", 2, {}, True),
    ("onnx f32 2 threads, no spin", "f32", 2, {}, False),
    ("onnx f32 1 thread", "f32", 1, {}, False),
    ("onnx f32 default", "f32", None, {}, None),
    ("onnx int8 2 threads, spin", "int8", 2, {}, True),
    ("onnx int8 2 threads, no spin", "int8", 2, {}, False),
    ("onnx int8 1 thread", "int8", 1, {}, False),
    ("onnx int8 default", "int8", None, {}, None),
]

# The other programs: a numpy matmul loop (one thread per process, two processes), and a
# PyTorch job of two OpenMP threads (small convolutions, libgomp's stock spin-wait) like a
# second detector or a training run.
NUMPY_LOAD = """
import numpy as np
a = np.random.default_rng(0).random((192, 192))
step = lambda: a @ a
"""
TORCH_LOAD = """
import torch
torch.set_num_threads(2)
x, w = torch.rand(1, 32, 64, 64), torch.rand(32, 32, 3, 3)
def step():
    with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1).relu_()
"""
LOAD_CODE = """
import os, signal, sys, time
parent, n, t0 = os.getppid(), 0, time.perf_counter()
def stop(*_):
    print(n / (time.perf_counter() - t0), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    step()
    n += 1
    if n % 64 == 0 and os.getppid() != parent:  # the bench was stopped
        sys.exit(1)
"""


LOADS = ("numpy", "torch")


def frames(n: int, size: int) -> list:
    """``n`` RGB conveyor frames ``size`` wide (4:3)."""
    from detect.demo.conveyor import plan_conveyor, render_conveyor

    wh = (size, size * 3 // 4)
    out = []
    for f, image, _ in render_conveyor(plan_conveyor(6, seed=1, size=wh), size=wh):
        if f % 7 == 3:
            out.append(image[..., ::-1].copy())
        if len(out) == n:
            break
    return out


def prepare(folder: Path, size: int) -> dict[str, Path]:
    """The checkpoint, its float32 export and its int8 quantisation in ``folder``."""
    import numpy as np
    import torch

    from detect.deploy.onnx_export import export_onnx
    from detect.deploy.quantize import quantize_int8
    from detect.model.build import build_model
    from detect.model.checkpoint import save_checkpoint

    images = frames(8, size)
    np.save(folder / "frames.npy", np.stack(images))
    torch.manual_seed(0)
    model = build_model(backbone="mobilenet", num_classes=len(CLASSES) + 1, input_size=size, weights="none")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the frames
    model.train()
    with torch.no_grad():
        for im in images:
            t = torch.from_numpy(im).permute(2, 0, 1).float() / 255
            model.backbone(model.transform.normalize(t)[None])
    model.eval()
    pt = save_checkpoint({"model": model.state_dict(), "model_config": model.config.as_dict(), "classes": CLASSES,
                          "epoch": 0, "metrics": {}, "args": {}, "run": "cpu-load", "backbone": "mobilenet"},
                         folder / "best.pt")
    export_onnx(pt, folder / "best.onnx", verify_images=0, extra_images=images[:1])
    quantize_int8(folder / "best.onnx", folder / "best-int8.onnx", images)
    return {"pt": pt, "f32": folder / "best.onnx", "int8": folder / "best-int8.onnx"}


def worker(weights: str, threads: int | None, spinning: bool | None, frames_file: str) -> None:
    """Load ``weights`` as the line does, then answer ``run SECONDS`` lines on stdin with one
    JSON line: images, seconds, CPU seconds of this process."""
    import numpy as np

    if spinning is None:
        from detect.inference.loader import load_detector

        det = load_detector(weights, device="cpu", threads=threads)
    else:
        from detect.inference.onnx_runtime import OnnxDetector

        det = OnnxDetector(weights, threads=threads, device="cpu", spinning=spinning)
    images = list(np.load(frames_file))
    for i in range(3):
        det.detect([images[i]], [str(i)])
    info = {k: det.info.get(k) for k in ("threads", "wait_policy", "spinning")}
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        seconds = float(line.split()[1])
        n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds:
            det.detect([images[n % len(images)]], [str(n)])
            n += 1
        wall = time.perf_counter() - t0
        print(json.dumps({"images": n, "seconds": wall, "cpu": time.process_time() - cpu0}), flush=True)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(extra)
    return env


class Load:
    """Another program using two threads: ``numpy`` (two single-threaded matmul processes) or
    ``torch`` (one process, two OpenMP threads, stock spin-wait)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __enter__(self):
        if self.kind == "numpy":
            env = clean_env({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            codes = [NUMPY_LOAD, NUMPY_LOAD]
        else:
            env, codes = clean_env(STOCK_SPIN), [TORCH_LOAD]
        self.procs = [subprocess.Popen([sys.executable, "-c", code + LOAD_CODE], stdout=subprocess.PIPE, text=True,
                                       env=env) for code in codes]
        for p in self.procs:
            p.stdout.readline()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.rate = 0.0
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            out, _ = p.communicate(timeout=30)
            self.rate += float(out.strip() or 0)
        return False


def report(args, settings, info, rows, alone, done: int) -> list[dict]:
    """Print the table of medians over the ``done`` rounds so far; its rows for the JSON file."""
    base = {k: statistics.median(v) for k, v in alone.items()}
    med = statistics.median
    print(f"input {args.input_size} px, batch 1, {os.cpu_count()} CPUs; medians of {done} rounds of "
          f"{args.seconds:g} s each, settings interleaved")
    print("busy numpy: beside two single-threaded numpy matmul processes; busy torch: beside a 2-thread PyTorch job")
    print(f"{'setting':30s} {'threads':>7s} {'idle':>6s} {'CPU s':>6s} {'numpy':>6s} {'ratio':>6s} {'other':>6s} "
          f"{'torch':>6s} {'ratio':>6s} {'other':>6s}")
    table = []
    for name, *_ in settings:
        row = rows[name]
        idle = med(row["idle"])
        cells = []
        for kind in LOADS:
            busy = med(row[kind])
            cells.append(f"{busy:6.2f} {busy / idle:6.2f} {med(row[kind + '_other']) / base[kind]:6.2f}")
        threads = info[name].get("threads")
        print(f"{name:30s} {str(threads):>7s} {idle:6.2f} {med(row['cpu_idle']):6.3f} {' '.join(cells)}")
        table.append({"setting": name, **info[name], **row})
    print("images/s; CPU s: CPU seconds per image idle; ratio: busy/idle; other: the other program's rate "
          "during the measurement over its rate alone")
    sys.stdout.flush()
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input-size", type=int, default=320, help="model input size, longest side (default 320)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians over them (default 3)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (default 4)")
    p.add_argument("--only", nargs="+", help="settings whose names contain any of these words")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        weights, threads, spinning, frames_file = args.worker
        worker(weights, int(threads) or None, {"none": None, "on": True, "off": False}[spinning], frames_file)
        return 0

    settings = [s for s in SETTINGS if not args.only or any(w in s[0] for w in args.only)]
    with tempfile.TemporaryDirectory(prefix="cpu-load-") as tmp:
        folder = Path(tmp)
        print(f"building the models at {args.input_size} px ...", file=sys.stderr)
        models = prepare(folder, args.input_size)
        workers = {}
        for name, model, threads, env, spinning in settings:
            spin = {None: "none", True: "on", False: "off"}[spinning]
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(models[model]), str(threads or 0), spin,
                 str(folder / "frames.npy")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(env))
            workers[name] = proc
        info = {name: json.loads(proc.stdout.readline()) for name, proc in workers.items()}

        def measure(name):
            proc = workers[name]
            proc.stdin.write(f"run {args.seconds}\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        rows = {name: {"idle": [], "cpu_idle": [], **{k: [] for k in LOADS}, **{k + "_other": [] for k in LOADS}}
                for name, *_ in settings}
        alone = {k: [] for k in LOADS}
        for r in range(args.rounds):
            for kind in LOADS:
                with Load(kind) as load:
                    time.sleep(args.seconds)
                alone[kind].append(load.rate)
            order = [s[0] for s in settings]
            if r % 2:
                order.reverse()
            for name in order:
                idle = measure(name)
                rows[name]["idle"].append(idle["images"] / idle["seconds"])
                rows[name]["cpu_idle"].append(idle["cpu"] / idle["images"])
                for kind in LOADS:
                    with Load(kind) as load:
                        busy = measure(name)
                    rows[name][kind].append(busy["images"] / busy["seconds"])
                    rows[name][kind + "_other"].append(load.rate)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
            table = report(args, settings, info, rows, alone, r + 1)
            print(json.dumps({"round": r + 1, "rows": rows, "alone": alone}), file=sys.stderr, flush=True)
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)

    if args.json:
        args.json.write_text(json.dumps({"input_size": args.input_size, "rounds": args.rounds,
                                         "seconds": args.seconds, "other_alone": alone, "rows": table},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
