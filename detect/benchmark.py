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
machine (the load average is printed) and compare within one run. The measuring:
:mod:`detect.deploy.benchmark`.

Exit status: 0 measured; 1 a format failed (or the val data is not here); 2 usage error.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from detect.common.errors import DetectError, UsageError, show
from detect.common.files import outputs_problem
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
    return run_command(_benchmark, build_parser(), argv, interrupted="interrupted; nothing was written")


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
    from detect.common.files import write_atomic
    from detect.deploy.benchmark import benchmark_formats, benchmark_lines

    info, rows = benchmark_formats(weights, input_size=args.input_size, proposals=args.proposals,
                                   threads=args.threads, images=args.images, calibrate=args.calibrate,
                                   openvino=not args.no_openvino, end_to_end=None if args.no_e2e else end_to_end,
                                   keep=Path(args.keep) if args.keep else None)
    print("\n".join(benchmark_lines(info, rows)))
    if args.json:
        try:  # the figures are printed above: a failed write loses only the file
            write_atomic(Path(args.json), json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
        except OSError as exc:
            raise DetectError(f"cannot write {show(args.json)}: {exc.strerror or exc} (the figures are above)") from None
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
