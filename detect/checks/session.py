"""One run of the checker as the command line asks for it: check, fix (or show the fixes),
check again, and render the findings.

:func:`run_check` takes a :class:`CheckRequest` (the command's options as plain data) and
returns a :class:`CheckOutcome`: the exit status, the text for stdout (``text``, ``json`` or
``github`` format) and the notes for stderr. ``python -m detect.check_xml`` only parses its
options into a request and prints the outcome. Nothing here prints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from detect.checks.check import check_dataset
from detect.checks.findings import SEVERITIES, CheckReport, Finding, format_finding, github_line, plural
from detect.checks.fixes import FilePlan, apply_fixes, plan_fixes
from detect.common.errors import UsageError, printable, show
from detect.data.layout import discover, read_classes

__all__ = ["CheckOutcome", "CheckRequest", "render", "run_check", "shown"]


@dataclass(frozen=True)
class CheckRequest:
    """What to check and how to report it (the options of ``python -m detect.check_xml``).

    Attributes:
        data: the dataset folder; ``images``: a folder to look for images in first.
        classes: the class-names file (None: names are taken from the data).
        format: ``"text"``, ``"json"`` or ``"github"``.
        fix, unsafe_fixes: apply the safe fixes, or the safe and unsafe ones.
        diff: show what the fixes would change and write nothing.
        severity: the lowest severity listed (the summary counts all).
        jobs: processes for the per-file checks (0: one per CPU core).
        deep, exif, backbone, input_size, anchor_scales, anchor_ratios: as for
            :func:`detect.checks.check_dataset`.
    """

    data: str
    classes: str | None = None
    images: str | None = None
    format: str = "text"
    fix: bool = False
    unsafe_fixes: bool = False
    diff: bool = False
    severity: str = "info"
    jobs: int = 0
    deep: bool = False
    exif: str = "apply"
    backbone: str = "mobilenet"
    input_size: int = 640
    anchor_scales: Sequence[float] | None = None
    anchor_ratios: Sequence[float] | None = None

    @property
    def fixing(self) -> bool:
        return self.fix or self.unsafe_fixes or self.diff


@dataclass
class CheckOutcome:
    """The run's exit status (0 no errors, 1 errors or refused fixes), what to print on
    stdout, and ``notes``, one line each for stderr (fixes that were refused)."""

    status: int
    output: str
    notes: list[str] = field(default_factory=list)
    report: CheckReport | None = None


def shown(report: CheckReport, minimum: str) -> list[Finding]:
    """The findings of ``minimum`` severity or worse, in the report's order."""
    allowed = SEVERITIES[: SEVERITIES.index(minimum) + 1]
    return [f for f in report.findings if f.severity in allowed]


def _anchor_rule():
    from detect.checks.anchor_fit import anchor_rule  # numpy only: loaded while workers read files

    return anchor_rule


def run_check(request: CheckRequest) -> CheckOutcome:
    """Check (and fix) the dataset of ``request``.

    Raises:
        DetectError: the classes file or the dataset cannot be read (exit status 2), or
            fixes were asked for on a dataset that is not VOC XML.
    """
    classes = read_classes(request.classes) if request.classes is not None else None
    files = discover(request.data, images=request.images)
    if files.format != "voc" and request.fixing:
        raise UsageError(f"{show(request.data)}: fixes rewrite VOC XML only and this is a {files.format.upper()} "
                         "dataset; fix the file the finding names, or convert it (python -m detect.convert "
                         "SRC DST --to voc) and fix that")
    options = dict(
        classes=classes,
        deep=request.deep,
        backbone=request.backbone,
        input_size=request.input_size,
        anchor_scales=request.anchor_scales,
        anchor_ratios=request.anchor_ratios,
        jobs=request.jobs if request.jobs > 0 else (os.cpu_count() or 1),
        anchor_rule=_anchor_rule,
        exif=request.exif,
    )
    report = check_dataset(files, **options)
    notes: list[str] = []
    fix_lines: list[str] = []
    fixes_json: list[dict] = []
    out: list[str] = []
    if request.fixing:
        plans = plan_fixes(report, unsafe=request.unsafe_fixes)
        for plan in plans:
            entry = {"path": str(plan.path), "codes": sorted({f.code for f in plan.findings})}
            if request.diff:
                entry["diff"] = plan.diff()
            fixes_json.append(entry)
        if request.diff:
            if request.format == "text":
                out.extend(plan.diff() for plan in plans)
            fix_lines.append(_would_change(plans, request))
        else:
            applied = apply_fixes(plans, root=files.root)
            notes.extend(printable(refused) for refused in applied.refused)
            if applied.written:
                report = check_dataset(discover(request.data, images=request.images), **options)
            written = set(applied.written)
            n_done = sum(len(p.findings) for p in plans if p.path in written)
            fix_lines.append(
                f"fixed {plural(n_done, 'problem')} in {plural(len(written), 'file')} (each file as it was is kept "
                "as <file>.xml.bak, or .bak2, .bak3... when a backup exists); the findings listed are what remains"
            )
        if not request.unsafe_fixes:
            more = len(report.fixable(unsafe=True)) - len(report.fixable(unsafe=False))
            if more:
                fix_lines.append(
                    f"{plural(more, 'more finding')} can be fixed with --unsafe-fixes (check them with --diff first)"
                )
    out.append(render(report, request, fix_lines, fixes_json))
    return CheckOutcome(1 if report.errors or notes else 0, "".join(out), notes, report)


def _would_change(plans: list[FilePlan], request: CheckRequest) -> str:
    n_fixes = sum(len(p.findings) for p in plans)
    level = "--unsafe-fixes" if request.unsafe_fixes else "--fix"
    return (f"{plural(n_fixes, 'fix')} would change {plural(len(plans), 'file')}; nothing was written "
            f"(run with {level} without --diff to write them)")


def render(report: CheckReport, request: CheckRequest, fix_lines: Sequence[str] = (),
           fixes_json: Sequence[dict] = ()) -> str:
    """The findings of ``request.severity`` or worse and the summary, in ``request.format``."""
    listed = shown(report, request.severity)
    if request.format == "json":
        doc = {"findings": [f.as_dict() for f in listed], "summary": report.summary()}
        if request.fixing:
            doc["fixes"] = list(fixes_json)
            doc["fix_summary"] = list(fix_lines)
        return json.dumps(doc, indent=2) + "\n"
    lines = [github_line(f) if request.format == "github" else format_finding(f) for f in listed]
    if listed:
        lines.append("")
    lines += report.summary_lines() + list(fix_lines)
    if report.errors:
        lines.append("errors must be fixed before training (or train with --skip-invalid to leave those files out)")
    return "\n".join(lines) + "\n"
