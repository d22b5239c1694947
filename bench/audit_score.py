"""Score a ``detect.audit`` run against the mistakes ``bench/plant_mistakes.py`` planted.

    python -m detect.audit --weights W --data planted --format json --gallery 0 > audit.json
    python bench/audit_score.py planted/planted.json audit.json

A finding hits a planted mistake in the same file when it points at it: a missing box when
the model's box reaches IoU >= 0.5 with the removed box; a relabelled or moved box when the
annotated box it names is that box (IoU >= 0.9), or the model's box reaches IoU >= 0.5 with
the box as it was. Any kind of finding may hit (whoever looks fixes what is wrong); the
``kind right`` column counts the hits whose kind is the planted one. Printed: precision at
K (K = number planted) and recall in the top 2K, overall and per kind, and the audit's time;
then, per kind, every finding of that kind at any rank: how many, the share that hit a planted
mistake (precision) and the share of that kind's planted mistakes they hit (recall), split by
what found them (``by``: the detector, or the verdict classifier for intact vs defective).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.scoring.metrics import box_iou

KINDS = ("missing", "wrong_class", "loose")


def _iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    return float(box_iou(np.array([a], float), np.array([b], float))[0, 0])


def hits(finding: dict, mistake: dict) -> bool:
    if Path(finding["path"]).name != mistake["xml"]:
        return False
    if mistake["kind"] == "missing":
        return _iou(finding.get("model_box"), mistake["box"]) >= 0.5
    if _iou(finding.get("box"), mistake["box"]) >= 0.9:
        return True
    was = mistake["was"] if mistake["kind"] == "loose" else mistake["box"]
    return _iou(finding.get("model_box"), was) >= 0.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("truth", type=Path, help="planted.json")
    p.add_argument("audit", type=Path, help="detect.audit --format json output")
    args = p.parse_args(argv)
    truth = json.loads(args.truth.read_text(encoding="utf-8"))
    doc = json.loads(args.audit.read_text(encoding="utf-8"))
    mistakes, findings = truth["mistakes"], doc["findings"]
    k = len(mistakes)
    match = [[hits(f, m) for m in mistakes] for f in findings]
    rows = []

    def row(name: str, idx: list[int], kind: str | None) -> None:
        kk = len(idx)
        top_k = [i for i, f in enumerate(findings) if kind is None or f["kind"] == kind][:kk]
        prec = sum(any(match[i][j] for j in idx) for i in top_k) / max(1, len(top_k))
        top_2k = range(min(2 * k, len(findings)))
        found = [j for j in idx if any(match[i][j] for i in top_2k)]
        right = [j for j in found if any(match[i][j] and findings[i]["kind"] == mistakes[j]["kind"] for i in top_2k)]
        rows.append((name, kk, prec, len(found) / max(1, kk), len(right) / max(1, len(found))))

    row("all", list(range(k)), None)
    for kind in KINDS:
        row(kind, [j for j, m in enumerate(mistakes) if m["kind"] == kind], kind)
    s = doc["summary"]
    print(f"{truth['images']} images, {truth['boxes']} boxes, {k} planted mistakes; {len(findings)} findings; "
          f"audit {s['seconds']} s ({s['seconds'] / max(1, s['images']):.2f} s/image)")
    print("| mistakes | planted (K) | precision at K | recall in top 2K | kind right |")
    print("|---|---:|---:|---:|---:|")
    for name, kk, prec, rec, right in rows:
        print(f"| {name} | {kk} | {prec:.2f} | {rec:.2f} | {right:.2f} |")
    print("(per kind, precision at K counts that kind's own findings, top K of the kind's count)")
    print("| findings | by | count | precision | recall of the kind |")
    print("|---|---|---:|---:|---:|")
    for kind in KINDS:
        idx = [j for j, m in enumerate(mistakes) if m["kind"] == kind]
        of_kind = [i for i, f in enumerate(findings) if f["kind"] == kind]
        for by in sorted({findings[i].get("by", "detector") for i in of_kind}) or ["detector"]:
            mine = [i for i in of_kind if findings[i].get("by", "detector") == by]
            prec = sum(any(match[i][j] for j in idx) for i in mine) / max(1, len(mine))
            rec = sum(any(match[i][j] for i in mine) for j in idx) / max(1, len(idx))
            print(f"| {kind} | {by} | {len(mine)} | {prec:.2f} | {rec:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
