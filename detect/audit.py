"""Find label mistakes with a trained model, and pick what to annotate next: ``python -m detect.audit``.

    python -m detect.audit --weights weights/mobilenet/best.pt --data data/ --split val
    python -m detect.audit --weights best.onnx --data data/ --format github --save-xml review/
    python -m detect.audit --weights best.pt --select 50 --images lote3/      # what to annotate next

Audit (``--data``): runs the model over the annotated images and lists the likely mistakes,
surest first, one checker-style line each (``file.xml:line:1: AUD10x warning ...``):
missing boxes (AUD101), wrong classes (AUD102), loose or shifted boxes (AUD103) and
spurious boxes (AUD104). With a ``verdict.pt`` beside the model (``detect.train --verdict``),
intact vs defective is judged by that item classifier on each annotated box's crop instead of
the detector (each such AUD102 finding says so); the rules are in :mod:`detect.checks.label_audit`, the run in :mod:`detect.checks.audit_session`. ``audit.png`` shows
the top findings with both boxes; ``--save-xml DIR`` writes the suggested corrections as
LabelImg files into DIR, for review. The annotation files are only read.

Select (``--select N --images FOLDER``): the N unlabelled images the model is least sure
about (smallest score margin, :func:`detect.checks.label_audit.margin_uncertainty`) are copied
into the output folder with a pre-annotation XML beside each, ready for LabelImg.

Exit status: 0 done (findings are advice, not failures); 1 the model file is unusable or an
image cannot be read; 2 usage error (among them data whose classes the model lacks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from detect.common.errors import UsageError, show
from detect.common.files import folder_problem
from detect.common.options import CliParser, Number, add_device_option, run_command
from detect.common.thresholds import CONF, ConfOption
from detect.station import add_review_option

SPLITS = ("all", "train", "val", "test")


def build_parser() -> CliParser:
    p = CliParser(prog="python -m detect.audit",
                  description="Find likely label mistakes with a trained model, or pick the images to annotate next.")
    p.add_argument("--weights", required=True, metavar="FILE", help="a .pt checkpoint or an .onnx export")
    p.add_argument("--data", type=Path, metavar="DIR", help="annotated dataset to audit (any layout detect.train reads)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="with --data: folder to look for images in first; with --select: the unlabelled images")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="which images of --data: the split the model recorded for this folder (else the usual "
                        "split), or all (default). Audit the model's val split: it never saw those images")
    p.add_argument("--select", type=Number(int, 1), metavar="N",
                   help="pick the N images of --images the model is least sure about, copy them and pre-annotate them")
    p.add_argument("--conf", type=ConfOption(), default=CONF, metavar="S",
                   help=f"score from which a detection counts as confident (default {CONF:g}; also the pre-annotation threshold)")
    p.add_argument("--score-thresh", type=Number(float, 0, 1, hi_open=True), default=0.05, metavar="S",
                   help="lowest score the model outputs, for a .pt (default 0.05; an .onnx has its own, fixed at export)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format (default text)")
    p.add_argument("--top", type=Number(int, 1), metavar="N", help="only the N surest findings: printed and, with --save-xml, corrected (default: all)")
    p.add_argument("--gallery", type=Number(int, 0, 60), default=12, metavar="N",
                   help="findings shown in audit.png (default 12; 0: no figure)")
    p.add_argument("--save-xml", type=Path, metavar="DIR",
                   help="write the suggested corrections as LabelImg XML into DIR (outside the dataset), for review")
    p.add_argument("--overwrite", action="store_true", help="write --save-xml into a folder that holds files already")
    p.add_argument("--out", default="audit", metavar="DIR", help="parent folder of audit.png / the selection (default: audit)")
    p.add_argument("--name", metavar="NAME", help="output folder name (default: the model's run name)")
    add_device_option(p)
    p.add_argument("--batch-size", type=Number(int, 1, 1024), default=1, help="images per forward pass (PyTorch)")
    p.add_argument("--threads", type=Number(int, 1, 1024), metavar="N", help="CPU threads for inference")
    add_review_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detect.audit``; returns the exit status (see the module docstring)."""
    return run_command(_main, build_parser(), argv)


def _check_args(args) -> None:
    if args.select:
        if args.images is None:
            raise UsageError("--select N needs --images FOLDER, the unlabelled images to choose from")
        if args.data is not None:
            raise UsageError("--select picks from unlabelled images (--images FOLDER); leave out --data")
        if args.save_xml is not None:
            raise UsageError("--save-xml is for an audit (--data); --select pre-annotates its copies itself")
    elif args.data is None:
        raise UsageError("give --data DIR to audit annotations, or --select N --images FOLDER to pick images to annotate")
    elif not args.data.is_dir():
        raise UsageError(f"--data {show(args.data)}: no such folder")
    for option, folder, overwrite, data in (("--out", args.out, True, None),
                                            ("--save-xml", args.save_xml, args.overwrite, args.data)):
        if folder is not None and (problem := folder_problem(folder, overwrite, apart_from=data)):
            raise UsageError(f"{option} {show(problem)}")


def _main(args) -> int:
    _check_args(args)
    from detect.checks.audit_session import load_detector_and_meta
    from detect.station.review import start_review

    args.reviewer = start_review(args)  # the port bound before the model loads: a port in use fails at once
    try:
        detector, meta = load_detector_and_meta(args.weights, device=args.device, threads=args.threads,
                                                batch_size=args.batch_size, score_thresh=args.score_thresh)
        if args.select:
            return _select(args, detector, meta)
        from detect.checks.audit_session import verdict_for_audit

        return _audit(args, detector, meta, verdict_for_audit(args.weights, detector.classes))
    finally:
        if args.reviewer is not None:
            args.reviewer.close()  # its port, however the audit ended (serve() closes it too)


def _audit(args, detector, meta, verdict) -> int:
    from detect.checks.audit_session import draw_gallery, output_folder, run_audit, verdict_note

    run = run_audit(detector, meta, args.weights, args.data, images=args.images, split=args.split, conf=args.conf,
                    score_thresh=args.score_thresh, progress=not args.no_progress, verdict=verdict)
    report, files, where, overlap = run.report, run.files, run.where, run.overlap
    if overlap and args.format != "json":
        print(f"warning: {overlap[1]}", file=sys.stderr)
    shown = report.findings[: args.top] if args.top else report.findings
    gallery = None
    if args.gallery and report.findings:
        folder = output_folder(args.out, args.name, meta, args.weights)
        gallery = draw_gallery(report, folder / "audit.png", args.gallery)
    written = []
    if args.save_xml is not None and report.findings:
        from detect.checks.label_audit import write_corrections

        try:
            written = write_corrections(shown, args.save_xml, files.root)  # what --top keeps, all by default
        except OSError as exc:
            raise UsageError(f"--save-xml {show(args.save_xml)}: cannot write ({exc.strerror or exc})") from None

    summary = {
        "data": str(files.root), "audited": where, "images": report.images, "objects": report.objects,
        "weights": str(args.weights), "conf": args.conf, "model_floor": run.floor,
        "findings": len(report.findings), "by_kind": report.by_kind(),
        "recall_at_conf": {k: round(v, 4) for k, v in report.recall.items()},
        "in_training_split": overlap[0] if overlap else 0, "seconds": round(run.seconds, 2),
        "gallery": str(gallery) if gallery else None, "corrections": [str(p) for p in written],
        "wrong_class_by": "verdict" if verdict is not None else "detector",
        "verdict_threshold": None if verdict is None else float(verdict.threshold),
    }
    if args.format == "json":
        doc = {"findings": [f.as_dict() for f in shown], "summary": summary}
        if overlap:
            doc["warning"] = overlap[1]
        print(json.dumps(doc, indent=2))
        return 0
    from detect.checks.findings import format_finding, github_line

    for f in shown:
        print(github_line(f.finding) if args.format == "github" else f"{format_finding(f.finding)} [{f.confidence:.2f}]")
    if args.format == "github":
        return 0
    by_kind = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in report.by_kind().items())
    print(f"audited {report.images} image(s), {report.objects} object(s) of {show(files.root)} ({where}) in "
          f"{run.seconds:.1f} s: {len(report.findings)} likely mistake(s) ({by_kind})"
          + (f", {len(shown)} shown" if len(shown) < len(report.findings) else ""))
    print(verdict_note(verdict, args.weights))
    if report.recall:
        print("the model finds at score >= {:g}: {}".format(
            args.conf, ", ".join(f"{show(c)} {v:.0%}" for c, v in report.recall.items())))
    if gallery:
        print(f"top findings drawn in {gallery}")
    if written:
        print(f"suggested corrections: {len(written)} XML file(s) in {show(args.save_xml)} (your annotations are "
              "unchanged; review them in LabelImg, then copy over what is right)")
    if args.reviewer is not None:
        args.reviewer.serve(shown, files.root)
    return 0


def _select(args, detector, meta) -> int:
    from detect.checks.audit_session import output_folder, select_images

    run = select_images(detector, args.images, args.select,
                        lambda: output_folder(args.out, args.name, meta, args.weights), conf=args.conf,
                        progress=not args.no_progress, say=lambda text: print(text, file=sys.stderr))
    if run.folder is None:
        print(f"error: no image of {show(args.images)} could be read", file=sys.stderr)
        return 1
    for line in run.lines:
        print(line)
    print(f"picked {len(run.lines)} of {run.measured} image(s) with the smallest score margin (best class minus the "
          f"runner-up class or background) in {run.seconds:.1f} s; copied with pre-annotations "
          f"(score >= {args.conf:g}) into {run.folder}: correct them in LabelImg, then move the pairs into the dataset")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
