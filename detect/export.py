"""Export a trained checkpoint for deployment: ``python -m detect.export`` (``detect-export``).

    python -m detect.export --weights weights/mobilenet/best.pt                 # -> weights/mobilenet/best.onnx
    python -m detect.export --weights best.pt --input-size 320 --proposals 100 --out best-320.onnx

Writes one ``.onnx`` file (beside the checkpoint unless ``--out``; an existing file is
replaced only with ``--overwrite``) that runs on onnxruntime alone and carries its
classes, input size, thresholds, model config and training data in its metadata; then
runs onnxruntime and PyTorch on a few images and prints how far they differ. Tensors and
metadata: :mod:`detect.inference.onnx_runtime`; the export itself: :mod:`detect.deploy.onnx_export`.

Exit status: 0 written and agreeing; 1 export failed, or onnxruntime disagrees with
PyTorch beyond tolerance; 2 usage error (bad option, missing or unusable checkpoint).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from detect.common.errors import DetectError, UsageError, show
from detect.common.files import check_target, unverified
from detect.common.options import CliParser, Number, add_inference_options, run_command, settings_from


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.export",
                  description="Export a detect.train checkpoint to ONNX (onnxruntime, no torch needed to run it).")
    p.add_argument("--weights", required=True, metavar="PT", help="the checkpoint (weights/RUN/best.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="the .onnx file (default: beside the checkpoint, same name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--opset", type=Number(int, 11, 23), default=17, help="ONNX opset, 11 to 23 (default: 17)")
    add_inference_options(p, what="fixed in the graph")
    p.add_argument("--verify-images", type=Number(int, 0), default=8, metavar="N",
                   help="val images of the checkpoint to compare PyTorch and onnxruntime on (default: 8)")
    g = p.add_argument_group("int8, the accuracy gate and --optimize (docs/prediction.md)")
    g.add_argument("--int8", action="store_true", help="static int8 quantisation (QDQ, per-channel weights)")
    g.add_argument("--calibrate", type=Number(int, 1, 10000), default=32, metavar="N",
                   help="training images to calibrate int8 on (default: 32)")
    g.add_argument("--calibrate-on", metavar="SOURCE",
                   help="calibrate on these images instead (a folder, glob or .txt list: e.g. frames from the line)")
    g.add_argument("--max-drop", type=Number(float, 0, 1), default=0.01, metavar="D",
                   help="largest drop of val mAP@0.5 against the checkpoint that a variant (int8, fewer "
                        "proposals, another input size) may have, else nothing is written (default: 0.01)")
    g.add_argument("--force", action="store_true", help="write the variant even past --max-drop (recorded in it)")
    g.add_argument("--optimize", action="store_true",
                   help="measure the levers (int8, proposals, threads, optimisation level, OpenVINO) on this box "
                        "and write the fastest variant within --max-drop")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.export``; returns the exit status (see the module docstring)."""
    return run_command(_export, build_parser(), argv, interrupted="interrupted; nothing was written")


def _export(args) -> int:
    settings = settings_from(args)
    source = Path(args.weights)
    if not source.is_file():
        raise UsageError(f"--weights {show(source)}: no such checkpoint file")
    target = Path(args.out) if args.out else source.with_suffix(".onnx")
    if target.suffix.lower() != ".onnx":
        raise UsageError(f"--out {show(target)}: the file name must end in .onnx")
    if os.path.lexists(target) and not args.overwrite and not target.is_dir():
        raise UsageError(f"{show(target)} exists; pass --overwrite to replace it, or --out another file")
    try:  # where it will write, before minutes of work: a folder, under a file, read-only
        check_target(target)
    except OSError as exc:
        raise UsageError(f"--out {show(target)}: cannot write the ONNX file there: {show(exc.filename or target)}: "
                         f"{exc.strerror or exc}; choose another --out") from None
    verdict = source.with_name("verdict.pt") if source.with_name("verdict.pt").is_file() else None
    if verdict is not None and os.path.lexists(target.with_name("verdict.onnx")) and not args.overwrite:
        raise UsageError(f"{show(target.with_name('verdict.onnx'))} exists (the item classifier's export, made "
                         "beside the model's); pass --overwrite to replace both, or --out another folder")
    bank = _bank_to_copy(source, target, args.overwrite)
    if args.optimize or args.int8 or any(v is not None for v in settings.values()):
        code = _export_variant(args, settings, source, target)  # numerics change: the accuracy gate
        return _beside(verdict, bank, target) if code == 0 else code
    from detect.deploy.onnx_export import export_onnx  # torch is imported here, after the usage checks

    before = _stat(target)
    try:
        result = export_onnx(source, target, opset=args.opset, settings=settings, verify_images=args.verify_images)
    except KeyboardInterrupt:  # after the write, during the check: an unchecked file must not stay as if checked
        print(f"interrupted; {unverified(target, before)}", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a quota, the folder made read-only meanwhile: nothing half-written stays
        where = show(exc.filename or target)
        kept = (f"{show(target)} was written before the failure" if _stat(target) != before
                else "nothing was written" + (" (the earlier file is unchanged)" if before else ""))
        raise DetectError(f"{where}: {exc.strerror or exc} while exporting to {show(target)}; {kept}") from None
    meta = result.metadata
    s = meta["test_settings"]
    print(f"wrote {show(result.path)} ({result.bytes / 1e6:.1f} MB, opset {meta['opset']}): {meta['backbone']}, "
          f"classes {', '.join(meta['classes'])}; input {s['input_size']} px, proposals {s['rpn_pre_nms_top_n_test']}/"
          f"{s['rpn_post_nms_top_n_test']}, score >= {s['box_score_thresh']:g}, up to {s['box_detections_per_img']} "
          "detections")
    print(f"checked against PyTorch on {result.checked} images ({result.detections} detections): "
          f"max box difference {result.max_box_diff:.2g} px, max score difference {result.max_score_diff:.2g}")
    if result.mismatches:
        print(f"error: onnxruntime and PyTorch disagree on {len(result.mismatches)} image(s): "
              f"{'; '.join(result.mismatches[:3])}", file=sys.stderr)
        return 1
    return _beside(verdict, bank, target)


def _bank_to_copy(source: Path, target: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """The anomaly bank of the checkpoint (``best.anomaly.npz`` and its ``.onnx`` features) and
    where it goes beside an export in another folder or of another name; [] when there is none
    or it is there already.

    Raises:
        UsageError: a file there would be replaced without ``overwrite``.
    """
    from detect.model.patchbank import bank_path

    have, want = bank_path(source), bank_path(target)
    if not have.is_file() or have.resolve() == want.resolve():
        return []
    pairs = [(have, want), (have.with_suffix(".onnx"), want.with_suffix(".onnx"))]
    for _, to in pairs:
        if os.path.lexists(to) and not overwrite:
            raise UsageError(f"{show(to)} exists (the anomaly bank, copied beside the export); pass --overwrite to "
                             "replace it, or --out another folder")
    return [(a, b) for a, b in pairs if a.is_file()]


def _beside(verdict: Path | None, bank: list[tuple[Path, Path]], target: Path) -> int:
    """What the line needs beside the export: the item classifier's export and the anomaly bank."""
    from detect.common.files import write_atomic

    for a, b in bank:
        write_atomic(b, a.read_bytes())
    if bank:
        print(f"copied the anomaly bank beside it: {show(bank[0][1])}")
    return _export_verdict(verdict, target) if verdict is not None else 0


def _export_verdict(verdict: Path, target: Path) -> int:
    """The item classifier beside the checkpoint, exported beside the model's export, so the line
    judges items without torch; checked against PyTorch on random crops."""
    import numpy as np

    from detect.model.verdict import export_verdict, load_verdict
    from detect.model.verdict_onnx import OnnxVerdict

    classifier = load_verdict(verdict)
    path = export_verdict(classifier, target.with_name("verdict.onnx"))
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 90, 150], [100, 40, 180, 120], [200, 20, 310, 230]], np.float64)
    diff = float(np.abs(OnnxVerdict(path).probabilities(image, boxes) - classifier.probabilities(image, boxes)).max())
    print(f"wrote {show(path)} ({path.stat().st_size / 1e6:.1f} MB): the item classifier, for the line without torch; "
          f"max probability difference to PyTorch {diff:.2g}")
    if diff > 1e-3:
        print(f"error: the item classifier's export differs from PyTorch by {diff:.2g}; do not use {show(path)}",
              file=sys.stderr)
        return 1
    return 0


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _export_variant(args, settings: dict, source: Path, target: Path) -> int:
    """``--int8``, ``--optimize`` or changed settings: the variant is measured against the
    checkpoint (val mAP@0.5) and written only within ``--max-drop`` (or with ``--force``)."""
    from detect.deploy.variants import gated_export, optimize  # torch is imported here

    if args.optimize:
        result = optimize(source, target, settings=settings, calibrate=args.calibrate, max_drop=args.max_drop,
                          opset=args.opset)
        print(f"levers on this box (model only, batch 1; val mAP@0.5 of the checkpoint in PyTorch float32: "
              f"{result.reference:.4f}):")
        print(f"  {'variant':<34} {'run with':<34} {'MB':>6} {'ms p50':>7} {'img/s':>6} {'mAP50':>7} {'drop':>7}")
        for v in result.rows:
            run = ", ".join(f"{k} {w}" for k, w in v.runtime.items())
            print(f"  {v.name:<34} {run:<34} {v.bytes / 1e6:6.1f} {v.p50:7.1f} {v.ips:6.1f} {v.map50:7.4f} "
                  f"{result.reference - v.map50:+7.4f}")
        if result.best is None:
            print(f"error: no variant is within --max-drop {args.max_drop:g} of the checkpoint; nothing was written",
                  file=sys.stderr)
            return 1
        print(f"wrote {target} ({result.gate.bytes / 1e6:.1f} MB): {result.best.name}; {result.gate.describe()}")
        return 0

    calibration = None
    if args.calibrate_on:
        from detect.inference.sources import SourceError, open_source

        try:
            images = open_source(args.calibrate_on)
        except SourceError as exc:
            raise UsageError(f"--calibrate-on: {exc}") from None
        if images.kind != "images":
            images.close()
            raise UsageError(f"--calibrate-on {args.calibrate_on}: give images (a folder, glob or .txt list), "
                             f"not a {images.kind}")
        calibration = images.paths[: args.calibrate]
    gate, exported = gated_export(source, target, settings=settings, int8=args.int8, calibrate=args.calibrate,
                                  calibration=calibration,
                                  max_drop=args.max_drop, force=args.force, opset=args.opset,
                                  verify_images=args.verify_images)
    if exported.mismatches:
        print(f"error: onnxruntime and PyTorch disagree on {len(exported.mismatches)} image(s) before quantising: "
              f"{'; '.join(exported.mismatches[:3])}; nothing was written", file=sys.stderr)
        return 1
    s = exported.metadata["test_settings"]
    what = (f"int8 ({gate.quantized.quantized} Conv/Gemm int8, {len(gate.quantized.kept_float)} kept float, "
            f"{gate.quantized.calibration} calibration images)" if gate.quantized else "float32")
    if not gate.written:
        print(f"error: {gate.describe()}: the {what} variant (input {s['input_size']} px, proposals "
              f"{s['rpn_post_nms_top_n_test']}) loses too much; nothing was written (--force writes it anyway, "
              "--max-drop raises the limit)", file=sys.stderr)
        return 1
    print(f"wrote {target} ({gate.bytes / 1e6:.1f} MB, {what}): input {s['input_size']} px, proposals "
          f"{s['rpn_pre_nms_top_n_test']}/{s['rpn_post_nms_top_n_test']}")
    print(f"float graph checked against PyTorch on {exported.checked} images: max box difference "
          f"{exported.max_box_diff:.2g} px")
    if gate.reference is None:
        print(f"warning: {gate.describe()}; the accuracy of this variant is unchecked", file=sys.stderr)
    elif not gate.passed:
        print(f"warning: {gate.describe()}: written because of --force (the drop is recorded in its metadata)",
              file=sys.stderr)
    else:
        print(gate.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
