"""Benchmark the deployment formats side by side: ``python -m detect.benchmark`` (``detect-benchmark``).

    python -m detect.benchmark --weights weights/mobilenet/best.pt --input-size 320
    python -m detect.benchmark --weights best.pt --input-size 320 --threads 1 2 --json bench.json

One run, on this machine, for the checkpoint and its exports (made into a temporary folder;
``--keep DIR`` keeps them): PyTorch eager (the reference), ONNX float32, ONNX int8 (static,
:mod:`detect.deploy.quantize`) on onnxruntime, and both ONNX files on OpenVINO when it
is installed. For each: file size; model-only latency per image (batch 1, decoded val
images) ms p50 and p95 at each ``--threads``; images/s end to end through
``detect.predict`` (read, decode, infer, write JSON) at the largest thread count; val
mAP@0.5 and its difference from eager; and the speed-up over eager measured in the same
run (the figure that travels between machines). Nothing is asserted: run it on an idle
machine (the load average is printed) and compare within one run.

Exit status: 0 measured; 1 a format failed (or the val data is not here); 2 usage error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from detect.common.errors import DetectError, UsageError, show
from detect.common.files import outputs_problem
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, run_command


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.benchmark",
                  description="PyTorch eager, ONNX float32, ONNX int8 and OpenVINO side by side: size, latency, "
                              "end-to-end images/s, val mAP@0.5.")
    p.add_argument("--weights", required=True, metavar="PT", help="the checkpoint (weights/RUN/best.pt)")
    p.add_argument("--input-size", type=Number(int, 32, 8192), metavar="PX", help="input size (default: the checkpoint's)")
    p.add_argument("--proposals", type=Number(int, 1), metavar="N", help="RPN proposals (default: the checkpoint's)")
    p.add_argument("--threads", type=Number(int, 1, 1024), nargs="+", default=[1, 2], metavar="N",
                   help="thread counts to time at (default: 1 2)")
    p.add_argument("--images", type=Number(int, 1), default=40, metavar="N",
                   help="val images timed per format and thread count (default: 40)")
    p.add_argument("--calibrate", type=Number(int, 1, 10000), default=32, metavar="N",
                   help="training images to calibrate int8 on (default: 32)")
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even when installed")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end detect.predict runs")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--keep", metavar="DIR", help="keep the exported files in DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.benchmark``; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    return run_command(lambda: _benchmark(args), interrupted="interrupted; nothing was written")


def end_to_end(weights: Path, listing: Path, out: Path, extra: Sequence[str], threads: int) -> dict:
    """``python -m detect.predict`` on the images a ``.txt`` ``listing`` names (in this process):
    ``images``, ``seconds`` (its own summary: read, decode, infer, write JSON) and ``ips``."""
    from detect.predict import main as predict

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = predict(["--weights", str(weights), str(listing), "--out", str(out), "--name", "e2e", "--no-progress",
                        "--threads", str(threads), "--conf", "0.05", *extra])
    if code != 0:
        raise RuntimeError(f"detect.predict failed with exit {code}: {err.getvalue().strip()[-300:]}")
    folder = sorted(out.glob("e2e*"), key=lambda p: p.stat().st_mtime)[-1]
    s = json.loads((folder / "summary.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    return {"images": s["images"], "seconds": s["seconds"], "ips": s["images"] / s["seconds"]}


def _benchmark(args) -> int:
    weights = Path(args.weights)
    if not weights.is_file():
        raise UsageError(f"--weights {weights}: no such checkpoint file")
    if args.json and Path(args.json).suffix.lower() != ".json":
        raise UsageError(f"--json {args.json}: the file name must end in .json")
    if problem := outputs_problem(args.overwrite, ("--json", args.json)):
        raise UsageError(show(problem))
    import onnxruntime
    import torch

    from detect.common.files import write_atomic
    from detect.data.images import read_image
    from detect.deploy.measure import map50, time_detector
    from detect.deploy.onnx_export import export_onnx
    from detect.inference.onnx_runtime import OnnxDetector
    from detect.inference.openvino_runtime import OpenVinoDetector, available
    from detect.deploy.quantize import calibration_images, quantize_int8
    from detect.inference.torch_runtime import TorchDetector, set_test_settings
    from detect.model.build import model_from_checkpoint
    from detect.model.checkpoint import load_checkpoint
    from detect.scoring.evaluation import EvalSettings, Evaluator

    ckpt = load_checkpoint(weights)
    eval_set, _ = Evaluator(EvalSettings()).checkpoint_eval_set(ckpt, weights)
    paths = eval_set.image_paths
    images = [read_image(p) for p in paths[: args.images]]
    settings = {"input_size": args.input_size, "rpn_post_nms_top_n_test": args.proposals}
    threads = sorted(set(args.threads))
    top = threads[-1]
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="detect-benchmark-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exported = export_onnx(weights, tmp / "float32.onnx", settings=settings, verify_images=0)
        s = exported.metadata["test_settings"]
        calib = calibration_images(exported.metadata, exported.path, args.calibrate)
        q = quantize_int8(exported.path, tmp / "int8.onnx", calib)
        listing = tmp / "val-images.txt"
        listing.write_text("\n".join(str(p.resolve()) for p in paths) + "\n")
        pt_extra = ["--input-size", str(s["input_size"]), "--proposals", str(s["rpn_post_nms_top_n_test"])]

        def eager(t: int):
            torch.set_num_threads(t)
            model, _ = model_from_checkpoint(ckpt, device="cpu")
            set_test_settings(model, **settings)
            return TorchDetector(model, classes=[str(c) for c in ckpt["classes"]])

        formats = [("PyTorch eager", weights, weights.stat().st_size, eager, pt_extra),
                   ("ONNX float32", exported.path, exported.path.stat().st_size,
                    lambda t: OnnxDetector(exported.path, threads=t), []),
                   ("ONNX int8", q.path, q.bytes, lambda t: OnnxDetector(q.path, threads=t), [])]
        if available() and not args.no_openvino:
            formats += [("OpenVINO float32", exported.path, exported.path.stat().st_size,
                         lambda t: OpenVinoDetector(exported.path, threads=t), ["--backend", "openvino"]),
                        ("OpenVINO int8", q.path, q.bytes, lambda t: OpenVinoDetector(q.path, threads=t),
                         ["--backend", "openvino"])]
        for name, path, size, make, extra in formats:
            row = {"format": name, "file": path.name, "mb": size / 1e6, "latency": {}}
            det = None
            for t in threads:
                det = make(t)
                r = time_detector(det, images)
                row["latency"][str(t)] = {"p50": r["p50"], "p95": r["p95"], "ips": r["ips"]}
            row["map50"] = map50(det, ckpt if path.suffix == ".pt" else exported.metadata, path)[0]
            if not args.no_e2e:
                row["e2e_ips"] = end_to_end(path, listing, tmp / "e2e", ["--no-save-images", "--save-json", *extra],
                                            top)["ips"]
            rows.append(row)
            del det
        torch.set_num_threads(top)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]
    for row in rows:
        row["map50_diff"] = row["map50"] - base["map50"]
        row["speedup"] = {t: base["latency"][t]["p50"] / row["latency"][t]["p50"] for t in row["latency"]}
        if "e2e_ips" in row:
            row["e2e_speedup"] = row["e2e_ips"] / base["e2e_ips"]
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {"weights": str(weights), "input_size": s["input_size"], "proposals": s["rpn_post_nms_top_n_test"],
            "val_images": len(paths), "timed_images": len(images), "threads": threads,
            "calibration_images": len(calib), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpus": os.cpu_count(), "load_start": load0, "load_end": load1}
    print(f"{weights}: input {s['input_size']} px, {s['rpn_post_nms_top_n_test']} proposals; {len(images)} val images "
          f"timed, mAP on {len(paths)}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {load1:.2f} at end")
    header = ["format", "MB"]
    for t in threads:
        header += [f"p50 {t}t", f"p95 {t}t", f"x eager {t}t"]
    header += [f"e2e img/s {top}t", "x eager", "mAP50", "vs eager"]
    table = []
    for row in rows:
        cells = [row["format"], f"{row['mb']:.1f}"]
        for t in threads:
            lat = row["latency"][str(t)]
            cells += [f"{lat['p50']:.1f}", f"{lat['p95']:.1f}", f"{row['speedup'][str(t)]:.2f}"]
        cells += [f"{row['e2e_ips']:.1f}" if "e2e_ips" in row else "-",
                  f"{row['e2e_speedup']:.2f}" if "e2e_speedup" in row else "-",
                  f"{row['map50']:.4f}", f"{row['map50_diff']:+.4f}"]
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for cells in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    print("(latency: model only, ms per image, batch 1; e2e: detect.predict reading, decoding, inferring and writing "
          "JSON for every val image)")
    if args.json:
        try:  # the figures are printed above: a failed write loses only the file
            write_atomic(Path(args.json), json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
        except OSError as exc:
            raise DetectError(f"cannot write {show(args.json)}: {exc.strerror or exc} (the figures are above)") from None
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
