"""Running the checks on a dataset: per file (in worker processes for large ones), then the
dataset-level rules, then the anchor fit when an anchor rule is given.

:func:`check_dataset` is the entry point; it returns a :class:`CheckReport` and never raises
for a problem in the data.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from detect.model.backbones import DEFAULT_ANCHOR_RATIOS, get_backbone
from detect.checks.dataset_rules import dataset_findings
from detect.checks.file_rules import Context, FileResult, check_file
from detect.checks.findings import AnchorFit, CheckReport, Finding
from detect.data.images import check_exif_mode
from detect.data.layout import DatasetFiles

log = logging.getLogger(__name__)

__all__ = ["PARALLEL_MIN_FILES", "AnchorRule", "check_dataset"]

PARALLEL_MIN_FILES = 1000  # below this, starting workers costs more than it saves

AnchorRule = Callable[..., tuple[AnchorFit, list[Finding]]]
"""``rule(boxes, box_paths, root, *, backbone, input_size, scales, ratios) -> (fit, findings)``:
the VOC6xx checks (:func:`detect.checks.anchor_fit.anchor_rule`)."""

_WORKER: Context | None = None


def _worker_init(ctx: Context) -> None:
    global _WORKER
    _WORKER = ctx


def _worker_run(chunk: Sequence[Path]) -> list[FileResult]:
    assert _WORKER is not None
    return [check_file(xml, _WORKER) for xml in chunk]


def _check_files(
    xmls: Sequence[Path], ctx: Context, jobs: int, meanwhile: Callable[[], object] | None
) -> tuple[list[FileResult], object]:
    """The per-file checks, in ``jobs`` forked worker processes for large datasets; this
    process calls ``meanwhile`` (loading the anchor rule) while they work. Returns the
    results and what ``meanwhile`` returned.

    Workers only parse XML and read image headers, never torch, so forking is safe even
    in a process that has torch loaded; where fork is not available the files are checked
    here, one by one.
    """
    jobs = min(jobs, os.cpu_count() or 1)
    if jobs <= 1 or len(xmls) < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        results = [check_file(xml, ctx) for xml in xmls]
        return results, meanwhile() if meanwhile else None
    size = max(50, len(xmls) // (jobs * 8))
    chunks = [xmls[i : i + size] for i in range(0, len(xmls), size)]
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(ctx,),
    ) as pool:
        futures = [pool.submit(_worker_run, chunk) for chunk in chunks]  # the workers start here
        loaded = meanwhile() if meanwhile else None
        return [res for future in futures for res in future.result()], loaded


def check_dataset(
    files: DatasetFiles,
    *,
    classes: Sequence[str] | None = None,
    deep: bool = False,
    backbone: str = "mobilenet",
    input_size: int = 800,
    anchor_scales: Sequence[float] | None = None,
    anchor_ratios: Sequence[float] | None = None,
    jobs: int = 1,
    anchor_rule: Callable[[], AnchorRule] | None = None,
    exif: str = "apply",
) -> CheckReport:
    """Run every check on a dataset found by :func:`detect.data.layout.discover`.

    Args:
        files: the dataset.
        classes: the class names the model is trained on; None takes them from the data
            (then unknown names cannot be told, but case variants still are).
        deep: decode every image fully (slow), catching truncated files.
        backbone, input_size, anchor_scales, anchor_ratios: the model the data is meant for,
            as in :func:`detect.model.build.build_model`; used by the small-box and anchor checks.
        jobs: processes for the per-file checks (XML parsing, image headers); used from
            :data:`PARALLEL_MIN_FILES` files on, where ``fork`` is available.
        anchor_rule: a function that returns the anchor-fit rule (VOC6xx), called while the
            workers read the files. ``lambda: detect.checks.anchor_fit.anchor_rule`` is the
            rule (numpy only); None leaves the VOC6xx checks out.
        exif: the dataset's orientation rule, as for :func:`detect.data.records.load_records`:
            ``"apply"`` (boxes in the upright frame LabelImg 1.8.4+ shows) or ``"ignore"``.

    Returns:
        a :class:`CheckReport`; it never raises for a problem in the data.

    Raises:
        ValueError: an unknown backbone or an input size under 32 (caller mistakes).
    """
    spec = get_backbone(backbone)
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")
    scales = tuple(anchor_scales) if anchor_scales else spec.default_scales
    ratios = tuple(anchor_ratios) if anchor_ratios else DEFAULT_ANCHOR_RATIOS
    started = time.perf_counter()
    check_exif_mode(exif)
    ctx = Context(files=files, classes=tuple(classes) if classes is not None else None, deep=deep, exif=exif)
    results, rule = _check_files(files.xml_files, ctx, jobs, anchor_rule)
    log.debug("%d XML files read in %.2f s", len(files.xml_files), time.perf_counter() - started)
    found = dataset_findings(files, results, ctx, backbone=backbone, input_size=input_size, scales=scales)
    findings = found.findings
    fit = None
    if rule is not None and found.boxes:
        fit, more = rule(found.boxes, found.box_paths, files.root, backbone=backbone, input_size=input_size,
                         scales=scales, ratios=ratios)
        findings.extend(more)
    findings.sort(key=lambda f: (str(f.path), f.line or 0, f.col or 0, f.code))
    report = CheckReport(
        files=files,
        findings=findings,
        classes=ctx.classes,
        class_counts=found.class_counts,
        images_used=found.images_used,
        anchor=fit,
        elapsed=time.perf_counter() - started,
        exif=exif,
    )
    log.info("checked %d XML files in %.2f s: %d findings", len(files.xml_files), report.elapsed, len(report.findings))
    return report
