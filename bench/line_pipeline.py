"""The whole line path in frames/s with 4-5 items in view: decode, detector, tracker and counter,
verdict, as ``detect.predict --track`` runs them, side by side with and without the verdict stage.

    python bench/line_pipeline.py --weights weights/mobilenet/best.onnx [--verdict weights/mobilenet/verdict.onnx]
        [--size 640 480] [--spacing 160] [--speed 120] [--items 40] [--threads 1 2] [--rounds 3]

A belt is rendered at the camera's size (:func:`detect.demo.conveyor.write_conveyor`) with items
``--spacing`` px apart, so 640 px shows 4-5 of them at once, moving ``--speed`` px a frame (120:
about 6 frames an item in view, a line's speed). Each setting runs the product's track loop
(:class:`detect.line.session.LineSession` over the video file: decoding included, no video or
images written) and prints frames/s over the whole run, and per frame the detector's ms, the
tracker's and counter's ms and, with a verdict, the classifier's ms (its ``on_frame``). The
settings alternate round by round; the medians are printed. Without ``--verdict``, the
``verdict.onnx`` (for an ``.onnx`` model) or ``verdict.pt`` beside the model is used when there.

Say which CPU, whether it was idle, and ``grep -c avx512 /proc/cpuinfo`` with the figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)


class Timed:
    """A verdict stage's ``on_frame`` (the classifier's work each frame), its time summed."""

    def __init__(self, on_frame) -> None:
        self.inner, self.seconds = on_frame, 0.0

    def __call__(self, *args) -> None:
        t0 = time.perf_counter()
        self.inner(*args)
        self.seconds += time.perf_counter() - t0


def run_once(weights: str, video: Path, verdict_file: str | None, threads: int) -> dict:
    from detect.inference.loader import load_detector, load_verdict_beside
    from detect.inference.predictor import Predictor
    from detect.inference.sources import open_source
    from detect.line.session import LineSession

    detector = load_detector(weights, threads=threads)
    predictor = Predictor(detector, conf=0.3)
    verdict = None
    if verdict_file == "beside":
        verdict = load_verdict_beside(weights, predictor.classes, threads=threads)
    elif verdict_file:
        from detect.inference.loader import is_onnx

        if is_onnx(verdict_file):
            from detect.model.verdict_onnx import OnnxVerdict

            verdict = OnnxVerdict(verdict_file, predictor.classes, threads=threads)
        else:
            from detect.model.verdict import load_verdict

            verdict = load_verdict(Path(verdict_file), predictor.classes)
    line = LineSession(predictor, verdict=verdict)
    timed = None
    if line._on_tracks is not None:  # the verdict stage's per-frame work, which the session hands the track loop
        timed = line._on_tracks = Timed(line._on_tracks)
    source = open_source(str(video))
    start = time.perf_counter()
    try:
        line.feed(source)
    finally:
        source.close()
    seconds = time.perf_counter() - start
    n = max(1, line.frames)
    return {"fps": line.frames / seconds, "model_ms": 1000 * line.model_seconds / n,
            "track_ms": 1000 * line.track_seconds / n, "verdict_ms": 1000 * timed.seconds / n if timed else 0.0,
            "items": line.counter.items, "frames": line.frames}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="the detector (.onnx for the line; .pt works too)")
    p.add_argument("--verdict", help="the classifier file (verdict.onnx or verdict.pt); default: the one beside --weights")
    p.add_argument("--size", type=int, nargs=2, default=[640, 480])
    p.add_argument("--spacing", type=float, default=160.0, help="px between items on the belt (160 at 640 px: 4-5 in view)")
    p.add_argument("--speed", type=float, default=120.0, help="px a frame (120 at 640 px: about 6 frames an item)")
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=201)
    args = p.parse_args()

    from detect.demo.conveyor import write_conveyor

    folder = Path(tempfile.mkdtemp(prefix="line-pipeline-"))
    truth = write_conveyor(folder, args.items, seed=args.seed, size=tuple(args.size), speed=args.speed,
                           spacing=args.spacing)
    in_view: dict[int, int] = {}
    for row in truth["items"]:
        for f in range(row["enter_frame"], row["exit_frame"] + 1):
            in_view[f] = in_view.get(f, 0) + 1
    counts = np.array(list(in_view.values()))
    print(f"belt {args.size[0]}x{args.size[1]}, {args.items} items {args.spacing:g} px apart at {args.speed:g} px/frame: "
          f"{len(in_view)} frames, items in view per frame mean {counts.mean():.1f}, max {counts.max()}")
    settings = [(t, v) for t in args.threads for v in (None, args.verdict or "beside")]
    rows: dict[tuple, list[dict]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for t, v in settings:
            rows[(t, v)].append(run_once(args.weights, folder / "conveyor.mp4", v, t))
    print(f"{'threads':>7} {'verdict':<10} {'frames/s':>8} {'detector ms':>11} {'track ms':>8} {'verdict ms':>10} {'items':>5}")
    for (t, v), runs in rows.items():
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        print(f"{t:>7} {'vote' if v is None else 'classifier':<10} {med['fps']:8.1f} {med['model_ms']:11.1f} "
              f"{med['track_ms']:8.2f} {med['verdict_ms']:10.2f} {int(med['items']):>5}")


if __name__ == "__main__":
    main()
