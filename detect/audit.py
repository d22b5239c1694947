"""Find label mistakes with a trained model, and pick what to annotate next: ``python -m detect.audit``.

    python -m detect.audit --weights weights/mobilenet/best.pt --data data/ --split val
    python -m detect.audit --weights best.onnx --data data/ --format github --save-xml review/
    python -m detect.audit --weights best.pt --select 50 --images lote3/      # what to annotate next

Audit (``--data``): runs the model over the annotated images and lists the likely mistakes,
surest first, one checker-style line each (``file.xml:line:1: AUD10x warning ...``):
missing boxes (AUD101), wrong classes (AUD102), loose or shifted boxes (AUD103) and
spurious boxes (AUD104); the rules are in :mod:`detect.checks.label_audit`. ``audit.png`` shows
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
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from detect.common.errors import UsageError, show
from detect.common.logs import setup_logging
from detect.common.options import CliParser, Number, add_device_option, run_command
from detect.station import add_review_option

log = logging.getLogger(__name__)

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
    p.add_argument("--conf", type=Number(float, 0, 1, lo_open=True), default=0.5, metavar="S",
                   help="score from which a detection counts as confident (default 0.5; also the pre-annotation threshold)")
    p.add_argument("--score-thresh", type=Number(float, 0, 1, hi_open=True), default=0.05, metavar="S",
                   help="lowest score the model outputs, for a .pt (default 0.05; an .onnx has its own, fixed at export)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format (default text)")
    p.add_argument("--top", type=Number(int, 1), metavar="N", help="only the N surest findings: printed and, with --save-xml, corrected (default: all)")
    p.add_argument("--gallery", type=Number(int, 0, 60), default=12, metavar="N",
                   help="findings shown in audit.png (default 12; 0: no figure)")
    p.add_argument("--save-xml", type=Path, metavar="DIR",
                   help="write the suggested corrections as LabelImg XML into DIR (outside the dataset), for review")
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
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    return run_command(lambda: _main(args))


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


def _load(args):
    """The detector and its metadata (classes, data root and splits)."""
    from detect.inference.loader import is_onnx, load_detector

    settings = None if is_onnx(args.weights) else {"box_score_thresh": args.score_thresh}
    detector = load_detector(args.weights, device=args.device, threads=args.threads, batch_size=args.batch_size,
                             test_settings=settings)
    meta = getattr(detector, "meta", None)
    if meta is None:  # a checkpoint: its metadata, without the weights already loaded
        from detect.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.weights)
        meta = {k: ckpt.get(k) for k in ("data", "run", "classes", "args")}
    return detector, meta


def _main(args) -> int:
    _check_args(args)
    from detect.station.review import start_review

    args.reviewer = start_review(args)  # the port bound before the model loads: a port in use fails at once
    detector, meta = _load(args)
    if args.select:
        return _select(args, detector, meta)
    return _audit(args, detector, meta)


def _progress(args, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=args.no_progress, dynamic_ncols=True, leave=False,
                file=sys.stderr)


def _records(args, meta):
    from detect.data.layout import discover, resolve_splits
    from detect.data.records import load_records

    files = discover(args.data, images=args.images)
    ids, where = None, "every annotated image"
    if args.split != "all":
        data = meta.get("data") or {}
        recorded = data.get("splits") or {}
        same = False
        if data.get("root"):
            root = Path(data["root"])
            same = root.exists() and root.resolve() == files.root.resolve()
        if same and args.split in recorded:
            ids, where = list(recorded[args.split]), f"the model's {args.split} split, as recorded"
        else:
            val_fraction = float((meta.get("args") or {}).get("val_fraction") or 0.2)
            splits, source = resolve_splits(files, val_fraction=val_fraction)
            if args.split not in splits:
                raise UsageError(f"{show(files.root)} has no '{args.split}' split ({source}); pick another --split")
            ids, where = splits[args.split], f"the {args.split} split ({source})"
    records = load_records(files, ids, warn_each=False,
                           advice=f"Run `python tools/check_xml.py {files.root}` for details.")
    if not records:
        raise UsageError(f"{show(args.data)}: no annotated image to audit in {where}")
    return files, records, where


def _audit(args, detector, meta) -> int:
    from detect.checks.label_audit import AuditSettings, audit, class_mismatch, detect_records, training_overlap

    files, records, where = _records(args, meta)
    mismatch = class_mismatch(detector.classes, records)
    if mismatch:
        raise UsageError(f"{show(args.weights)}: {mismatch}")
    overlap = training_overlap(meta, records, files.root)
    if overlap and args.format != "json":
        print(f"warning: {overlap[1]}", file=sys.stderr)

    start = time.perf_counter()
    bar = _progress(args, len(records), "audit")
    try:
        detections = detect_records(detector, records, progress=bar.update)
    finally:
        bar.close()
    floor = float(detector.info.get("box_score_thresh") or args.score_thresh)
    report = audit(records, detections, detector.classes, AuditSettings(conf=args.conf))
    seconds = time.perf_counter() - start

    shown = report.findings[: args.top] if args.top else report.findings
    folder = _output_folder(args, meta) if (args.gallery and report.findings) else None
    gallery = _gallery(report, folder, args) if folder else None
    written = []
    if args.save_xml is not None and report.findings:
        from detect.checks.label_audit import write_corrections

        try:
            written = write_corrections(shown, args.save_xml, files.root)  # what --top keeps, all by default
        except OSError as exc:
            raise UsageError(f"--save-xml {show(args.save_xml)}: cannot write ({exc.strerror or exc})") from None

    summary = {
        "data": str(files.root), "audited": where, "images": report.images, "objects": report.objects,
        "weights": str(args.weights), "conf": args.conf, "model_floor": floor,
        "findings": len(report.findings), "by_kind": report.by_kind(),
        "recall_at_conf": {k: round(v, 4) for k, v in report.recall.items()},
        "in_training_split": overlap[0] if overlap else 0, "seconds": round(seconds, 2),
        "gallery": str(gallery) if gallery else None, "corrections": [str(p) for p in written],
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
          f"{seconds:.1f} s: {len(report.findings)} likely mistake(s) ({by_kind})"
          + (f", {len(shown)} shown" if len(shown) < len(report.findings) else ""))
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


def _output_folder(args, meta) -> Path:
    from detect.common.files import unique_folder

    run = str(args.name or meta.get("run") or Path(args.weights).stem)
    try:
        return unique_folder(Path(args.out), run)
    except OSError as exc:
        raise UsageError(f"--out {show(args.out)}: cannot create the output folder ({exc.strerror or exc})") from None


def _gallery(report, folder: Path, args) -> Path:
    from detect.scoring.galleries import BoxPair, plot_box_pairs

    panels = []
    for f in report.findings[: args.gallery]:
        where = f"{f.record.xml.name}:{f.line}" if f.line else f.record.xml.name
        caption = f"{f.code} {f.kind.replace('_', ' ')} [{f.confidence:.2f}]\n{show(where)}"
        model_label = f"{f.model_name} {f.score:.2f}" if f.model_box else ""
        panels.append(BoxPair(caption, f.record.image, f.box, f.name or "", f.model_box, model_label))
    return plot_box_pairs(panels, folder / "audit.png",
                          title=f"likely label mistakes, surest first ({len(panels)} of {len(report.findings)})")


def _select(args, detector, meta) -> int:
    from detect.checks.label_audit import margin_uncertainty, rank_uncertain
    from detect.common.files import write_atomic
    from detect.data.images import read_image
    from detect.data.voc import write_voc
    from detect.inference.outputs import voc_annotation
    from detect.inference.predictor import Predictor, Result
    from detect.inference.sources import Frame, open_source

    if not args.images.is_dir():
        raise UsageError(f"--images {show(args.images)}: no such folder (give the folder of unlabelled images)")
    source = open_source(str(args.images))
    predictor = Predictor(detector, conf=args.conf)
    measured, errors, found = [], 0, {}
    start = time.perf_counter()
    bar = _progress(args, len(source), "select")
    try:
        for frame in source:
            bar.update(1)
            if frame.error or frame.path is None:
                print(f"error: {show(frame.error or frame.key)}", file=sys.stderr)
                errors += 1
                continue
            (det,) = detector.detect([frame.image], [frame.key])
            measured.append(margin_uncertainty(det, detector.classes))
            found[frame.key] = (Path(frame.path), det)
    finally:
        bar.close()
        source.close()
    if not measured:
        print(f"error: no image of {show(args.images)} could be read", file=sys.stderr)
        return 1
    chosen = rank_uncertain(measured, args.select)
    folder = _output_folder(args, meta)
    lines = []
    for u in chosen:
        path, det = found[u.key]
        target = folder / Path(u.key).name
        if target.exists():  # two images of one name in sub-folders: keep both
            target = folder / f"{target.stem}_{len(lines)}{target.suffix}"
        shutil.copyfile(path, target)
        frame = Frame(read_image(path), u.key, str(args.images), path=path)
        result = Result(frame=frame, detections=predictor.postprocess(det), classes=predictor.classes)
        write_voc(voc_annotation(result, image_path=target), target.with_suffix(".xml"))
        what = (f"{u.best} vs {u.runner_up} at {','.join(f'{v:.0f}' for v in u.box)}" if u.box
                else "nothing detected")
        lines.append(f"{show(path)}  margin {u.margin:.3f}  {show(what)}")
    write_atomic(folder / "selected.txt", "\n".join(lines) + "\n")
    for line in lines:
        print(line)
    print(f"picked {len(chosen)} of {len(measured)} image(s) with the smallest score margin (best class minus the "
          f"runner-up class or background) in {time.perf_counter() - start:.1f} s; copied with pre-annotations "
          f"(score >= {args.conf:g}) into {folder}: correct them in LabelImg, then move the pairs into the dataset")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
