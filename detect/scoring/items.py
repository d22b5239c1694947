"""The item-level score: the line's events against a labelled video of the line.

What a plant acts on is one verdict per item, not boxes per frame. :func:`score_items` takes
the events ``detect.predict --track`` wrote (``events.jsonl``: one line per counted item, its
frame, box, class, ``defect`` flag and ``defect_score``) and the video's track ground truth
(:mod:`detect.data.mot`: CVAT's "MOT 1.1" export, or what :mod:`detect.demo.conveyor` writes)
and reports:

* **matching**: an event belongs to the true item whose box in the event's frame overlaps the
  event's box most (IoU >= ``iou``, 0.3); an event that overlaps none is a *phantom* item. An
  item no event belongs to is *missed*; one with two or more events was counted under several
  ids (``ids per item``);
* **count error**: events - true items (and as a share of the true items);
* **per-item confusion**: true class against the class of the item's first event (``missed``
  when none), and the phantoms by their class;
* **the verdict**: each true item's defect score is its first event's ``defect_probability``
  (the item classifier's, when every event has one) or else ``defect_score`` (the detector's
  vote) (an item not counted is an item not rejected: it scores below every threshold); from those,
  the ROC (defective items flagged against intact items flagged as the threshold falls), its
  area (the chance a defective item scores above an intact one, ties half), and the defect
  recall reachable at false-reject rates of 0.5, 1, 2 and 5 % with the threshold that gives
  it; also the recall and false-reject rate of the events' own ``defect`` flags; with
  ``anomaly`` scores in the events, their ROC area and recall at the same rates beside it;
* **decision latency**: frames (and ms at the video's frame rate) from the item's first frame
  in view to its event: median, 95th percentile, most;
* **the operating point** (:func:`operating_point`): for a false-reject rate the user accepts,
  the defect-score threshold that meets it on these (held-out) items and the recall it gives;
  ``detect.predict --track --defect-threshold`` flags items by it.

Events without ``defect_score`` (older files) are scored by their flag (1 or 0). Torch-free.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detect.common.errors import UsageError, show
from detect.common.types import is_defect_class
from detect.data.mot import MotTruth
from detect.scoring.metrics import box_iou

__all__ = ["FALSE_REJECT_RATES", "ItemScore", "format_items", "operating_point", "plot_items", "read_events", "roc",
           "run_items", "score_items"]

FALSE_REJECT_RATES = (0.005, 0.01, 0.02, 0.05)
# A class is a defect when its name holds one of these (the predictor's default rule).


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl`` file, in order.

    Raises:
        UsageError: no such file, or a line that is not an event (named by line).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{show(path)}: no such events file; give the events.jsonl that detect.predict --track wrote")
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            e["frame"], e["box"] = int(e["frame"]), [float(v) for v in e["box"]][:4]
            if len(e["box"]) != 4:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{show(path)}, line {n}: not an item event (a JSON object with frame, box, class and "
                             "defect, as detect.predict --track writes)") from None
        events.append(e)
    return events


def roc(scores: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """The ROC of ``scores`` (higher: more likely positive; -inf: never flagged) for the
    boolean ``positive``: ``fpr``, ``tpr`` and ``thresholds`` (flagged: score >= threshold),
    from (0, 0) to (1, 1), and ``auc`` (Mann-Whitney: P(positive scores above negative), ties
    half; None without both kinds)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    finite = np.unique(scores[np.isfinite(scores)])[::-1]
    thresholds = np.r_[np.inf, finite, -np.inf]
    tpr = np.array([(pos >= t).mean() if len(pos) else 0.0 for t in thresholds])
    fpr = np.array([(neg >= t).mean() if len(neg) else 0.0 for t in thresholds])
    auc = None
    if len(pos) and len(neg):
        greater = (pos[:, None] > neg[None, :]).sum()
        ties = (pos[:, None] == neg[None, :]).sum()
        auc = float((greater + 0.5 * ties) / (len(pos) * len(neg)))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist(), "auc": auc}


def _recall_at(curve: dict[str, Any], rate: float) -> tuple[float, float] | None:
    """The best recall with a false-reject rate at most ``rate``, and its threshold (the
    highest score flagged at it); None when no finite threshold qualifies."""
    best = None
    for f, t, th in zip(curve["fpr"], curve["tpr"], curve["thresholds"]):
        if math.isfinite(th) and f <= rate + 1e-12 and (best is None or t > best[0]):
            best = (t, th)
    return best


def operating_point(scores: np.ndarray, positive: np.ndarray, max_false_reject: float) -> dict[str, float]:
    """The defect-score threshold that rejects at most ``max_false_reject`` of the intact items
    (``positive`` False) and, of those thresholds, the lowest (the most defects caught): the
    ``threshold`` (flag an item when its score is at least it, midway between the intact
    score it must stay above and the next score up), and the ``false_reject`` and ``recall``
    it gives on these items.

    Raises:
        UsageError: ``max_false_reject`` is not in (0, 0.5], or there is no intact item.
    """
    if not 0 < max_false_reject <= 0.5:
        raise UsageError(f"--max-false-reject {max_false_reject:g}: give the share of intact items you accept to "
                         "reject, above 0 and at most 0.5 (0.01 is 1 %)")
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    intact = np.sort(scores[~positive])[::-1]
    if not len(intact):
        raise UsageError("no intact item in the truth: a false-reject rate needs intact items to measure it on")
    allowed = int(np.floor(max_false_reject * len(intact) + 1e-9))  # intact items that may be flagged
    finite = np.unique(scores[np.isfinite(scores)])
    if allowed >= len(intact) or not np.isfinite(intact[allowed]):  # every intact item that scored may be flagged
        threshold = float(finite[0]) if len(finite) else 1.0
    else:
        above = finite[finite > intact[allowed]]
        top = float(above[0]) if len(above) else 1.0
        threshold = (float(intact[allowed]) + top) / 2 if top > intact[allowed] else float(np.nextafter(top, 2))
    flagged = scores >= threshold
    return {"max_false_reject": max_false_reject, "threshold": round(threshold, 6),
            "false_reject": round(float(flagged[~positive].mean()), 4),
            "recall": round(float(flagged[positive].mean()), 4) if positive.any() else None,
            "intact": int((~positive).sum()), "defective": int(positive.sum())}


@dataclass
class ItemScore:
    """What :func:`score_items` measured (see the module docstring); :meth:`as_dict` is its JSON."""

    items: int
    events: int
    counted: int
    missed: list[int]
    phantoms: int
    ids_per_item: float | None
    counted_twice: int
    class_right: int
    confusion: dict[str, dict[str, int]]
    defective: int
    intact: int
    flag_recall: float | None
    flag_false_reject: float | None
    curve: dict[str, Any]
    at_rates: dict[str, dict[str, float] | None]
    latency_frames: dict[str, float] | None
    fps: float | None
    scored_by: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    scores: np.ndarray | None = None  # (items,) each true item's defect score (-inf: not counted)
    positive: np.ndarray | None = None  # (items,) it is defective
    anomaly: dict[str, Any] | None = None  # with anomaly scores in the events: their ROC area and recall at the rates

    @property
    def count_error(self) -> int:
        return self.events - self.items

    def latency_ms(self) -> dict[str, float] | None:
        if self.latency_frames is None or not self.fps:
            return None
        return {k: round(1000 * v / self.fps, 1) for k, v in self.latency_frames.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items, "events": self.events, "counted": self.counted,
            "count_error": self.count_error, "count_error_share": round(self.count_error / self.items, 4) if self.items else None,
            "missed": self.missed, "phantoms": self.phantoms, "ids_per_item": self.ids_per_item,
            "counted_twice": self.counted_twice, "class_right": self.class_right, "confusion": self.confusion,
            "defective": self.defective, "intact": self.intact,
            "flags": {"defect_recall": self.flag_recall, "false_reject": self.flag_false_reject},
            "defect_recall_at_false_reject": self.at_rates, "roc_auc": self.curve["auc"],
            "roc": {k: [v if math.isfinite(v) else (1e9 if v > 0 else -1e9) for v in self.curve[k]]
                    for k in ("fpr", "tpr", "thresholds")},
            "latency_frames": self.latency_frames, "latency_ms": self.latency_ms(), "fps": self.fps,
            "scored_by": self.scored_by, "anomaly": self.anomaly, "per_item": self.rows,
        }


def _is_defect(label: str | None, defect_classes: Sequence[str] | None) -> bool:
    if label is None:
        return False
    if defect_classes is not None:
        return label in defect_classes
    return is_defect_class(label)


def score_items(truth: MotTruth, events: Sequence[dict[str, Any]], *, defect_classes: Sequence[str] | None = None,
                iou: float = 0.3, fps: float | None = None,
                rates: Sequence[float] = FALSE_REJECT_RATES) -> ItemScore:
    """Score one video's ``events`` against its ``truth`` (see the module docstring).

    ``defect_classes``: the true classes that are defects (default: names holding defect,
    damage, broken or crack). ``fps``: the video's frame rate for the latency in ms (default:
    the truth's ``seqinfo.ini``, else the events' ``frame / video_time``).

    Raises:
        UsageError: the events come from more than one source (score one video at a time).
    """
    sources = sorted({str(e.get("source", "")) for e in events})
    if len(sources) > 1:
        raise UsageError(f"the events come from {len(sources)} sources ({show(', '.join(sources[:3]))}...); the truth "
                         "is one video: keep that video's lines (its 'source') and score them alone")
    tracks = truth.tracks
    owner: list[int | None] = []
    for e in events:
        best, best_iou = None, iou
        for k, t in enumerate(tracks):
            b = t.box_at(e["frame"])
            if b is not None:
                v = float(box_iou(np.array([e["box"]]), b[None])[0, 0])
                if v >= best_iou:
                    best, best_iou = k, v
        owner.append(best)
    mine: dict[int, list[int]] = {k: [] for k in range(len(tracks))}
    for i, k in enumerate(owner):
        if k is not None:
            mine[k].append(i)
    scored_by = _score_key(events)

    def score_of(e: dict[str, Any]) -> float:
        return float(e[scored_by]) if scored_by != "defect flag" else float(bool(e.get("defect")))

    confusion: dict[str, dict[str, int]] = {}
    rows, scores, positive, latency = [], [], [], []
    flagged_pos = flagged_neg = 0
    for k, t in enumerate(tracks):
        truth_label = t.label or "?"
        defect = _is_defect(t.label, defect_classes)
        ev = [events[i] for i in sorted(mine[k], key=lambda i: events[i]["frame"])]
        first = ev[0] if ev else None
        said = str(first.get("class")) if first else "missed"
        confusion.setdefault(truth_label, {}).setdefault(said, 0)
        confusion[truth_label][said] += 1
        flagged = bool(first.get("defect")) if first else False
        flagged_pos += flagged and defect
        flagged_neg += flagged and not defect
        scores.append(score_of(first) if first else -math.inf)
        positive.append(defect)
        if first:
            latency.append(first["frame"] - t.first)
        rows.append({"track_id": t.id, "class": t.label, "defect": defect, "events": len(ev),
                     "event_track_ids": [e.get("track_id") for e in ev], "said": said if first else None,
                     "flagged": flagged, "score": scores[-1] if first else None,
                     "latency_frames": first["frame"] - t.first if first else None})
    phantom = [events[i] for i, k in enumerate(owner) if k is None]
    for e in phantom:
        confusion.setdefault("none", {}).setdefault(str(e.get("class")), 0)
        confusion["none"][str(e.get("class"))] += 1
    pos = np.array(positive, bool)
    curve = roc(np.array(scores, np.float64), pos)
    at_rates = _at_rates(curve, pos, rates)
    anomaly = None
    if any(e.get("anomaly") is not None for e in events):  # the unsupervised score, beside the verdict
        firsts = [min((events[i] for i in mine[k]), key=lambda e: e["frame"]) if mine[k] else None
                  for k in range(len(tracks))]
        a = np.array([float(f["anomaly"]) if f and f.get("anomaly") is not None else -math.inf for f in firsts])
        a_curve = roc(a, pos)
        anomaly = {"roc_auc": a_curve["auc"], "defect_recall_at_false_reject": _at_rates(a_curve, pos, rates)}
    counted = [len(v) for v in mine.values() if v]
    if fps is None:
        fps = truth.fps
    if fps is None:
        rates_seen = [e["frame"] / e["video_time"] for e in events if e.get("video_time")]
        fps = float(np.median(rates_seen)) if rates_seen else None
    lat = None
    if latency:
        a = np.array(latency, np.float64)
        lat = {"median": float(np.median(a)), "p95": float(np.percentile(a, 95, method="higher")), "max": float(a.max())}
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return ItemScore(
        items=len(tracks), events=len(events), counted=len(counted), missed=[t.id for k, t in enumerate(tracks) if not mine[k]],
        phantoms=len(phantom), ids_per_item=round(float(np.mean(counted)), 3) if counted else None,
        counted_twice=sum(c > 1 for c in counted),
        class_right=sum(r["said"] == r["class"] for r in rows), confusion=confusion, defective=n_pos, intact=n_neg,
        flag_recall=round(flagged_pos / n_pos, 4) if n_pos else None,
        flag_false_reject=round(flagged_neg / n_neg, 4) if n_neg else None,
        curve=curve, at_rates=at_rates, latency_frames=lat, fps=fps, scored_by=scored_by, rows=rows,
        scores=np.array(scores, np.float64), positive=pos, anomaly=anomaly)


def _score_key(events: Sequence[dict[str, Any]]) -> str:
    """Which event field the verdict is scored by: the item classifier's ``defect_probability``
    when every event has one, else the detector vote's ``defect_score``, else the flag (older files)."""
    if events and all(e.get("defect_probability") is not None for e in events):
        return "defect_probability"
    if all("defect_score" in e for e in events):
        return "defect_score"
    return "defect flag"


def _at_rates(curve: dict[str, Any], pos: np.ndarray, rates: Sequence[float]) -> dict[str, dict[str, float] | None]:
    out = {}
    for r in rates:
        got = _recall_at(curve, r) if (~pos).any() and pos.any() else None
        out[f"{r:g}"] = {"recall": round(got[0], 4), "threshold": round(got[1], 4)} if got else None
    return out


def format_items(s: ItemScore) -> str:
    """The score as a few lines of text (the ``detect.eval --items`` table)."""
    share = f" ({100 * s.count_error / s.items:+.1f} %)" if s.items else ""
    out = [f"items: {s.items} in the truth, {s.events} events; count error {s.count_error:+d}{share}; "
           f"{s.counted} counted, {len(s.missed)} missed, {s.phantoms} phantom; ids per counted item "
           f"{s.ids_per_item if s.ids_per_item is not None else '-'} ({s.counted_twice} counted more than once); "
           f"class right {s.class_right} of {s.counted}"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    out.append(f"verdict ({s.defective} defective, {s.intact} intact; scored by {s.scored_by}): the events' flags "
               f"recall {pct(s.flag_recall)}, false reject {pct(s.flag_false_reject)}; ROC AUC "
               f"{'-' if s.curve['auc'] is None else format(s.curve['auc'], '.3f')}")
    if s.anomaly is not None:
        at = s.anomaly["defect_recall_at_false_reject"]
        out.append(f"anomaly score: ROC AUC {'-' if s.anomaly['roc_auc'] is None else format(s.anomaly['roc_auc'], '.3f')}; "
                   "defect recall at " + ", ".join(f"{100 * float(r):g} %: {pct(v['recall']) if v else '-'}"
                                                   for r, v in at.items()) + " false rejects")
    header = ["false reject <=", "defect recall", "threshold"]
    rows = [[f"{100 * float(r):g} %", pct(v["recall"]) if v else "-", f"{v['threshold']:.3f}" if v else "-"]
            for r, v in s.at_rates.items()]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    out.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    said = sorted({c for row in s.confusion.values() for c in row} - {"missed"}) + ["missed"]
    header = ["truth \\ said", *said]
    rows = [[t, *(str(s.confusion[t].get(c, 0)) for c in said)] for t in sorted(s.confusion)]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    out.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    if s.latency_frames:
        ms = s.latency_ms()
        lat = ", ".join(f"{k} {v:g}" + (f" ({ms[k]:g} ms)" if ms else "") for k, v in s.latency_frames.items())
        out.append(f"decision latency, frames from entering the view to the event: {lat}")
    return "\n".join(out)


def plot_items(s: ItemScore, path: Path) -> Path:
    """The ROC with the false-reject rates marked, as a PNG (its numbers embedded)."""
    from detect.scoring.figures import save_png, subplots

    fig, ax = subplots(1, 1, figsize=(4.8, 4.2))
    ax.plot(s.curve["fpr"], s.curve["tpr"], marker=".", label="ROC")
    for r in s.at_rates:
        ax.axvline(float(r), color="grey", lw=0.6, ls=":")
    auc = s.curve["auc"]
    ax.set_title(f"items: ROC{'' if auc is None else f' (AUC {auc:.3f})'}")
    ax.set_xlabel("intact items rejected (false reject)")
    ax.set_ylabel("defective items rejected (recall)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    return save_png(fig, path, embed=True)


def run_items(events: str | None, truth: str | None, *, json_path: str | None = None, report: str | None = None,
              max_false_reject: float | None = None, echo=print) -> int:
    """``detect.eval --items EVENTS --truth MOT``: score, ``echo`` the table, write the JSON
    (``json_path``) and, in ``report``, ``items.md`` with ``items_roc.png``; with
    ``max_false_reject``, also the :func:`operating_point` for it; returns 0.

    Raises:
        UsageError: one of the two is missing, or either file is not what it should be.
    """
    from detect.common.files import write_atomic
    from detect.data.mot import read_mot

    if not events or not truth:
        raise UsageError("--items EVENTS and --truth MOT go together: the events.jsonl of detect.predict --track on "
                         "a video, and that video's track ground truth (a MOT 1.1 folder or zip, as CVAT exports it)")
    if max_false_reject is not None and not 0 < max_false_reject <= 0.5:
        operating_point(np.zeros(1), np.zeros(1, bool), max_false_reject)  # the one-line usage error
    s = score_items(read_mot(truth), read_events(events))
    text = format_items(s)
    point = None
    if max_false_reject is not None:
        point = operating_point(s.scores, s.positive, max_false_reject)
        text += (f"\noperating point for at most {100 * max_false_reject:g} % false rejects: {s.scored_by} >= "
                 f"{point['threshold']:g} (detect.predict --track --defect-threshold {point['threshold']:g}) rejects "
                 f"{100 * point['false_reject']:.1f} % of these {point['intact']} intact items and catches "
                 + ("-" if point["recall"] is None else f"{100 * point['recall']:.1f} %")
                 + f" of the {point['defective']} defective ones")
    echo(text)
    if json_path:
        write_atomic(json_path, json.dumps({"items": s.as_dict(), "operating_point": point, "events": str(events),
                                            "truth": str(truth)}, indent=1) + "\n")
        echo(f"wrote {show(json_path)}")
    if report:
        folder = Path(report)
        folder.mkdir(parents=True, exist_ok=True)
        plot_items(s, folder / "items_roc.png")
        md = write_atomic(folder / "items.md", f"# Items\n\nEvents `{events}` against the truth `{truth}`.\n\n"
                                               f"```\n{text}\n```\n\n![ROC](items_roc.png)\n")
        echo(f"wrote {show(md)}")
    return 0
