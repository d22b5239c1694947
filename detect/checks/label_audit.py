"""Label audit with a model, and picking what to annotate next (``python -m detect.audit``).

A trained detector is run over annotated images and what it sees is compared with what
the annotation says. Four kinds of likely mistake come out, each a :class:`AuditFinding`
that formats as the checker's :class:`~detect.checks.findings.Finding` line:

=======  ===============  ====================================================================
code     kind             rule (defaults of :class:`AuditSettings`)
=======  ===============  ====================================================================
AUD101   ``missing``      a detection scoring >= ``conf`` that overlaps no annotation of any
                          class at IoU >= ``cover_iou`` (0.3): an object nobody boxed
AUD102   ``wrong_class``  an annotated box that a detection of another class covers at IoU >=
                          ``match_iou`` (0.5), scoring >= ``conf`` and above every detection of
                          the annotated class there: intact vs defective, Lata vs Botella
AUD103   ``loose``        an annotated box whose best same-class detection scores >= ``conf``
                          but reaches only IoU ``loose_iou`` (0.3 to 0.6), and that detection
                          belongs to no other annotation: a loose, shifted or grown box
AUD104   ``spurious``     an annotated box no detection of any class touches at IoU >=
                          ``cover_iou``, at any score the model gives (``floor``), in a class
                          the model finds elsewhere (it recalls >= ``min_recall`` of that
                          class's other boxes): a box around nothing, or a copy-paste left over
=======  ===============  ====================================================================

How sure a finding is (``confidence``, what the list is ranked by): for the first three
the score of the model's detection that contradicts the annotation; for ``spurious`` the
share of that class's annotated boxes the model does find, i.e. how likely it would have
seen this one had it been there.

Intact vs defective, by the verdict classifier (:class:`ItemVerdicts`, when the model has a
``verdict.pt``): for an annotated box of a class that has a counterpart (:func:`defect_pairs`:
``Lata`` and ``Lata_defectuosa``), the classifier's defect probability ``p`` on the box's crop
decides instead of the detector: at or above its stored threshold the item is defective, below
it intact, and a label that says otherwise is a ``wrong_class`` finding (``by="verdict"``)
whose sureness is the probability of the side it suggests (``p``, or ``1 - p``). The
detector's detections of the counterpart then count for nothing there; its other confusions
(a can labelled as a bottle) keep the rule above. A box the classifier has no pixels for, or
a class without a counterpart, keeps the detector's rule too.

The audit works on :class:`~detect.common.types.Detections`, whatever produced them: the
CLI runs a :class:`~detect.inference.predictor.Detector` (a ``.pt`` or an ``.onnx``) with
:func:`detect_records`; tests pass detections they control. Nothing here writes over an
annotation: :func:`write_corrections` writes the suggested files into a folder of their own.

Choosing what to annotate next (:func:`margin_uncertainty`): the images whose most
uncertain detected object has the smallest *score margin*, the best score minus the
runner-up among the other classes and background (1 - the sum of the class scores at that
place). Why margin: Faster R-CNN's scores of one place are a softmax over the classes and
background, so the margin is that softmax's own measure of doubt, it needs one pass per
image (a flip test needs two, on a small CPU box at the line), and it is smallest exactly
where the model hesitates between intact and defective, or between object and background.

Torch-free: this module runs with onnxruntime and OpenCV only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from detect.checks.findings import Finding, box_text
from detect.common.errors import UsageError, show
from detect.common.files import check_writable
from detect.common.thresholds import CONF
from detect.common.types import Detections
from detect.data.images import read_image
from detect.data.records import Record
from detect.data.voc import Annotation, Box, VocObject, write_voc
from detect.scoring.metrics import box_iou

log = logging.getLogger(__name__)


def _model_box_text(box) -> str:
    """A model's box for a message: pixels to 0.1 (the annotation's own numbers are quoted exactly)."""
    return ",".join(f"{float(v):.1f}".removesuffix(".0") for v in box)

__all__ = [
    "AUDIT_CODES",
    "KINDS",
    "AuditFinding",
    "AuditReport",
    "AuditSettings",
    "ItemVerdicts",
    "Uncertainty",
    "audit",
    "class_mismatch",
    "corrected_annotation",
    "defect_pairs",
    "detect_records",
    "margin_uncertainty",
    "rank_uncertain",
    "training_overlap",
    "write_corrections",
]

KINDS = ("missing", "wrong_class", "loose", "spurious")
AUDIT_CODES: dict[str, tuple[str, str]] = {
    "AUD101": ("warning", "likely missing box"),
    "AUD102": ("warning", "likely wrong class"),
    "AUD103": ("warning", "likely loose or shifted box"),
    "AUD104": ("warning", "likely spurious box"),
}
CODE_OF = dict(zip(KINDS, AUDIT_CODES))


@dataclass(frozen=True)
class AuditSettings:
    """The audit's thresholds (see the module docstring for how each is used)."""

    conf: float = CONF
    match_iou: float = 0.5
    cover_iou: float = 0.3
    loose_iou: tuple[float, float] = (0.3, 0.6)
    floor: float = 0.0
    min_recall: float = 0.5
    min_found: int = 3

    def __post_init__(self) -> None:
        lo, hi = self.loose_iou
        if not (0 < self.cover_iou <= lo < hi <= self.match_iou + 0.5 and 0 <= self.conf <= 1):
            raise ValueError(f"inconsistent audit settings: {self}")


@dataclass(frozen=True)
class ItemVerdicts:
    """What the verdict classifier says of every annotated object: ``defect[i][j]`` is the
    defect probability of the ``j``-th object of record ``i``'s annotation (NaN where its box
    has no pixels in the image); an item is defective from ``threshold`` (the classifier's
    stored one); ``defect_classes`` are the classifier's, ``source`` names it in messages."""

    defect: Sequence[np.ndarray]
    threshold: float
    defect_classes: tuple[str, ...]
    source: str = "verdict.pt"


def defect_pairs(classes: Sequence[str], defect_classes: Sequence[str]) -> dict[str, str]:
    """Each class with an intact/defective counterpart -> that counterpart, both ways: a defect
    class and the longest intact class its name starts with (``Lata_defectuosa`` and ``Lata``)."""
    intact = [c for c in classes if c not in defect_classes]
    pairs: dict[str, str] = {}
    for d in defect_classes:
        stems = [c for c in intact if d.startswith(c) and c not in pairs]
        if stems:
            stem = max(stems, key=len)
            pairs[d], pairs[stem] = stem, d
    return pairs


@dataclass(frozen=True)
class AuditFinding:
    """One likely mistake. ``box``/``name``/``line`` are the annotated object's (None for a
    missing box), ``model_box``/``model_name``/``score`` the model's detection (None for a
    spurious box); ``iou`` between the two where both exist. ``by`` says what found it:
    ``"detector"``, or ``"verdict"`` for an intact/defective finding of the verdict classifier
    (then ``model_name`` is the class it suggests, ``score`` that side's probability,
    ``defect_probability`` and ``threshold`` its numbers, and there is no model box)."""

    kind: str
    record: Record
    confidence: float
    line: int | None = None
    index: int | None = None
    name: str | None = None
    box: tuple[float, float, float, float] | None = None
    model_name: str | None = None
    model_box: tuple[float, float, float, float] | None = None
    score: float | None = None
    iou: float | None = None
    by: str = "detector"
    defect_probability: float | None = None
    threshold: float | None = None
    source: str | None = None

    @property
    def code(self) -> str:
        return CODE_OF[self.kind]

    @property
    def message(self) -> str:
        s = f"{self.score:.2f}" if self.score is not None else ""
        if self.kind == "missing":
            return (f"likely missing box: the model sees {self.model_name} ({s}) at {_model_box_text(self.model_box)} and no "
                    f"annotation covers it; box it in LabelImg, or leave it if it is not a {self.model_name}")
        if self.kind == "wrong_class" and self.by == "verdict":
            return (f"likely wrong class: annotated {self.name} at {box_text(self.box)}, the verdict classifier "
                    f"({self.source}) on its crop says {self.model_name} (defect probability "
                    f"{self.defect_probability:.2f}, defective from {self.threshold:.2f}); check the class, relabel "
                    f"it {self.model_name} if so")
        if self.kind == "wrong_class":
            return (f"likely wrong class: annotated {self.name} at {box_text(self.box)}, the model sees "
                    f"{self.model_name} ({s}, IoU {self.iou:.2f}); check the class, relabel it {self.model_name} if so")
        if self.kind == "loose":
            return (f"likely loose or shifted box: annotated {self.name} at {box_text(self.box)}, the model's box is "
                    f"{_model_box_text(self.model_box)} ({s}, IoU {self.iou:.2f}); redraw it tight around the object")
        return (f"likely spurious box: annotated {self.name} at {box_text(self.box)}, the model sees nothing there "
                f"at any score, yet finds {self.confidence:.0%} of the other {self.name} boxes; delete it if "
                "nothing is there")

    @property
    def finding(self) -> Finding:
        severity = AUDIT_CODES[self.code][0]
        return Finding(self.record.xml, self.line, None, self.code, severity, self.message)

    def as_dict(self) -> dict[str, Any]:
        """The checker's JSON finding plus the audit's fields."""
        out = self.finding.as_dict()
        out.update({
            "kind": self.kind, "confidence": round(self.confidence, 4), "image": str(self.record.image),
            "class": self.name, "box": list(self.box) if self.box else None, "model_class": self.model_name,
            "model_box": [round(v, 1) for v in self.model_box] if self.model_box else None,
            "score": None if self.score is None else round(self.score, 4),
            "iou": None if self.iou is None else round(self.iou, 4), "by": self.by,
            "defect_probability": None if self.defect_probability is None else round(self.defect_probability, 4),
        })
        return out


@dataclass
class AuditReport:
    """The findings, most sure first, and what was audited."""

    findings: list[AuditFinding]
    images: int
    objects: int
    recall: dict[str, float] = field(default_factory=dict)  # per class: share found at conf, IoU >= match_iou

    def by_kind(self) -> dict[str, int]:
        return {k: sum(f.kind == k for f in self.findings) for k in KINDS}


def _boxes(objects: Sequence[VocObject]) -> np.ndarray:
    return np.array([tuple(o.box) for o in objects], dtype=np.float64).reshape(-1, 4)


def audit(records: Sequence[Record], detections: Sequence[Detections], classes: Sequence[str],
          settings: AuditSettings = AuditSettings(), verdicts: ItemVerdicts | None = None) -> AuditReport:
    """Compare ``detections[i]`` (all the model gives, down to its lowest score) with the
    annotation of ``records[i]``; labels are ``1..K`` into ``classes``. Objects of classes
    the model lacks are skipped (the CLI refuses such data first). With ``verdicts``, the
    verdict classifier decides intact vs defective (module docstring).

    Returns:
        the findings ranked by ``confidence``, highest first (ties: file, line).
    """
    if len(records) != len(detections):
        raise ValueError(f"{len(records)} records but {len(detections)} detection lists")
    if verdicts is not None and len(verdicts.defect) != len(records):
        raise ValueError(f"{len(records)} records but {len(verdicts.defect)} verdict lists")
    pairs = defect_pairs(classes, verdicts.defect_classes) if verdicts is not None else {}
    s = settings
    label_of = {c: i + 1 for i, c in enumerate(classes)}
    found: list[AuditFinding] = []
    unseen: list[tuple[Record, VocObject, float | None]] = []  # spurious candidates: judged once recall is known
    hits: dict[str, int] = {c: 0 for c in classes}
    totals: dict[str, int] = {c: 0 for c in classes}
    n_objects = 0
    for i_rec, (rec, det) in enumerate(zip(records, detections)):
        objects = [o for o in rec.annotation.objects if o.name in label_of]
        defect_p = np.full(len(objects), np.nan)
        if verdicts is not None:
            position = {id(o): k for k, o in enumerate(rec.annotation.objects)}
            defect_p = np.array([verdicts.defect[i_rec][position[id(o)]] for o in objects], np.float64)
        n_objects += len(objects)
        gt = _boxes(objects)
        gt_labels = np.array([label_of[o.name] for o in objects], dtype=np.int64)
        keep = det.scores >= s.floor
        d_boxes, d_scores, d_labels = det.boxes[keep], det.scores[keep], det.labels[keep]
        iou = box_iou(gt, d_boxes) if len(gt) and len(d_boxes) else np.zeros((len(gt), len(d_boxes)))
        confident = d_scores >= s.conf
        same = gt_labels[:, None] == d_labels[None, :]
        # A detection "belongs" to the annotation it overlaps most in its own class.
        owner = np.full(len(d_boxes), -1)
        if len(gt) and len(d_boxes):
            masked = np.where(same, iou, -1.0)
            best_gt = masked.argmax(axis=0)
            owned = masked[best_gt, np.arange(len(d_boxes))] >= s.match_iou
            owner[owned] = best_gt[owned]

        for g, obj in enumerate(objects):
            totals[obj.name] += 1
            row = iou[g] if len(d_boxes) else np.zeros(0)
            same_near = same[g] & (row >= s.match_iou)
            best_same = float(d_scores[same_near].max()) if same_near.any() else 0.0
            if (same_near & confident).any():
                hits[obj.name] += 1
            other = ~same[g] & (row >= s.match_iou) & confident & (d_scores > best_same)
            partner = pairs.get(obj.name)
            if partner is not None and not np.isnan(defect_p[g]):
                p = float(defect_p[g])
                says_defect = p >= verdicts.threshold
                if says_defect != (obj.name in verdicts.defect_classes):
                    sure = p if says_defect else 1.0 - p
                    found.append(AuditFinding("wrong_class", rec, sure, line=obj.line, index=obj.index, name=obj.name,
                                              box=tuple(obj.box), model_name=partner, score=sure, by="verdict",
                                              defect_probability=p, threshold=verdicts.threshold,
                                              source=verdicts.source))
                    continue
                other &= d_labels != label_of[partner]  # the classifier has settled intact vs defective here
            if other.any():
                j = int(np.flatnonzero(other)[np.argmax(d_scores[other])])
                found.append(_finding("wrong_class", rec, obj, d_boxes[j], d_scores[j], classes[d_labels[j] - 1],
                                      float(row[j])))
                continue
            if best_same >= s.conf:
                continue  # the model agrees with this box
            lo, hi = s.loose_iou
            loose = same[g] & confident & (row >= lo) & (row < hi) & ((owner == -1) | (owner == g))
            if loose.any():
                j = int(np.flatnonzero(loose)[np.argmax(d_scores[loose])])
                found.append(_finding("loose", rec, obj, d_boxes[j], d_scores[j], obj.name, float(row[j])))
                continue
            near = row >= s.cover_iou
            if not near.any():
                unseen.append((rec, obj, None))

        covered = (iou >= s.cover_iou).any(axis=0) if len(gt) else np.zeros(len(d_boxes), dtype=bool)
        reported: list[np.ndarray] = []
        for j in np.argsort(-d_scores, kind="stable"):
            if not confident[j] or covered[j]:
                continue
            if reported and box_iou(d_boxes[j:j + 1], np.array(reported)).max() >= s.match_iou:
                continue  # the same unboxed object, seen as another class too
            reported.append(d_boxes[j])
            found.append(AuditFinding("missing", rec, float(d_scores[j]), line=_annotation_line(rec.annotation),
                                      model_name=classes[d_labels[j] - 1], model_box=_tuple(d_boxes[j]),
                                      score=float(d_scores[j])))

    recall = {c: hits[c] / totals[c] for c in classes if totals[c]}
    for rec, obj, _ in unseen:
        # Its own box counts among the misses: leave it out of the class's recall.
        n_other = totals[obj.name] - 1
        share = hits[obj.name] / n_other if n_other > 0 else 0.0
        if hits[obj.name] >= s.min_found and share >= s.min_recall:
            found.append(AuditFinding("spurious", rec, min(share, 1.0), line=obj.line, index=obj.index,
                                      name=obj.name, box=tuple(obj.box)))
    found.sort(key=lambda f: (-f.confidence, str(f.record.xml), f.line or 0, KINDS.index(f.kind)))
    return AuditReport(found, len(records), n_objects, recall)


def _tuple(box) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _annotation_line(ann: Annotation) -> int | None:
    lines = ann.lines or {}
    return lines.get("annotation") or lines.get("size") or lines.get("filename")


def _finding(kind: str, rec: Record, obj: VocObject, box, score, model_name: str, iou: float) -> AuditFinding:
    return AuditFinding(kind, rec, float(score), line=obj.line, index=obj.index, name=obj.name, box=tuple(obj.box),
                        model_name=model_name, model_box=_tuple(box), score=float(score), iou=iou)


# --------------------------------------------------------------------------------------
# Running the model


def detect_records(detector, records: Sequence[Record], *, progress=None) -> list[Detections]:
    """The detector's raw detections (every score it outputs) on each record's image,
    decoded by :func:`~detect.data.images.read_image`; ``progress(n)`` after each batch."""
    out: list[Detections] = []
    size = max(1, int(getattr(detector, "batch_size", 1) or 1))
    for start in range(0, len(records), size):
        batch = records[start:start + size]
        images = [read_image(r.image) for r in batch]
        out.extend(detector.detect(images, [r.sample_id for r in batch]))
        if progress is not None:
            progress(len(batch))
    return out


def class_mismatch(model_classes: Sequence[str], records: Sequence[Record]) -> str | None:
    """One line when the data holds classes the model does not know, else None."""
    known = set(model_classes)
    where: dict[str, str] = {}
    for r in records:
        for o in r.annotation.objects:
            if o.name not in known:
                where.setdefault(o.name, f"{r.xml}:{o.line}" if o.line else str(r.xml))
    if not where:
        return None
    shown = ", ".join(f"'{show(n)}' (first at {show(w)})" for n, w in sorted(where.items())[:5])
    return (f"the model knows the classes {', '.join(map(show, model_classes))}, but the data has {shown}; "
            "audit with a model trained on these classes, or fix the labels")


def training_overlap(meta: Mapping[str, Any], records: Sequence[Record], data_root: Path) -> tuple[int, str] | None:
    """How many audited images are in the model's recorded ``train`` split, and a line saying
    so, or None. ``meta`` is a checkpoint or an ONNX export's metadata (``data.splits``,
    ``data.root``). Ids are compared: a copy of the training data under another folder is
    the same images."""
    data = meta.get("data") or {}
    splits = data.get("splits") or {}
    train = set(splits.get("train") or ())
    if not train:
        return None
    n = sum(r.sample_id in train for r in records)
    if not n:
        return None
    root = show(data.get("root") or "?")
    return n, (f"{n} of the {len(records)} audited images are in the model's training split (it was trained on "
               f"{root}): a model has learned its own training labels, mistakes included, and audits them poorly. "
               "Audit images it never saw: `python -m detect.audit --split val`, and to cover every image train "
               "K models with `python -m detect.train --folds K --fold I` (I = 0..K-1) and audit each one's val split")


# --------------------------------------------------------------------------------------
# Suggested corrections


def _labelimg_box(box, width: int, height: int) -> Box | None:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(1, x0), max(1, y0), min(width, x1), min(height, y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return Box(float(x0), float(y0), float(x1), float(y1))


def corrected_annotation(record: Record, findings: Iterable[AuditFinding]) -> Annotation:
    """The record's annotation with ``findings`` applied: missing boxes added, classes
    changed, loose boxes replaced by the model's, spurious boxes removed."""
    ann = record.annotation
    objects: list[VocObject | None] = list(ann.objects)
    position = {id(o): i for i, o in enumerate(ann.objects)}
    added: list[VocObject] = []
    for f in findings:
        if f.kind == "missing":
            box = _labelimg_box(f.model_box, ann.width, ann.height)
            if box is not None:
                added.append(VocObject(f.model_name or "", box))
            continue
        i = next((position[id(o)] for o in ann.objects if o.index == f.index and o.line == f.line), None)
        if i is None or objects[i] is None:
            continue
        if f.kind == "spurious":
            objects[i] = None
        elif f.kind == "wrong_class":
            objects[i] = replace(objects[i], name=f.model_name)
        elif f.kind == "loose":
            box = _labelimg_box(f.model_box, ann.width, ann.height)
            if box is not None:
                objects[i] = replace(objects[i], box=box)
    return replace(ann, objects=tuple([o for o in objects if o is not None] + added))


def write_corrections(findings: Sequence[AuditFinding], folder: Path, root: Path) -> list[Path]:
    """Write one corrected LabelImg XML per annotation file with findings into ``folder``,
    at its path relative to the dataset ``root`` (flat when outside it). ``folder`` may not
    be the dataset itself or inside it: the user's annotations are never touched.

    Raises:
        UsageError: ``folder`` is, or lies inside, the dataset folder, or cannot be written.
    """
    folder = Path(folder)
    real_root, real_folder = root.resolve(), folder.resolve()
    if real_folder == real_root or real_root in real_folder.parents:
        raise UsageError(f"--save-xml {show(folder)}: inside the dataset {show(root)}; pick a folder outside it "
                         "(the suggested corrections never go beside your annotations)")
    check_writable(folder)
    groups: dict[Path, list[AuditFinding]] = {}
    for f in findings:
        groups.setdefault(f.record.xml, []).append(f)
    written: list[Path] = []
    for xml, group in groups.items():
        try:
            rel = xml.resolve().relative_to(real_root)
        except ValueError:
            rel = Path(xml.name)
        target = real_folder / rel
        ann = corrected_annotation(group[0].record, group)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_voc(replace(ann, path=str(group[0].record.image.resolve())), target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------
# What to annotate next


@dataclass(frozen=True)
class Uncertainty:
    """An image's doubt: ``margin`` of its most uncertain object (1.0: nothing found),
    that object's box and its two best candidates."""

    key: str
    margin: float
    box: tuple[float, float, float, float] | None = None
    best: str | None = None
    runner_up: str | None = None
    objects: int = 0


def margin_uncertainty(det: Detections, classes: Sequence[str], *, floor: float = 0.05,
                       group_iou: float = 0.5) -> Uncertainty:
    """The score margin of an image (module docstring): detections at or above ``floor``
    are grouped by place (IoU >= ``group_iou`` with the group's best, any class); each
    group's margin is its best class score minus the larger of the best other class's
    score and the background's (1 - the sum of the group's best score per class); the image
    takes its smallest margin. An image with no detection gets 1.0 (ranked last)."""
    keep = det.scores >= floor
    boxes, scores, labels = det.boxes[keep], det.scores[keep], det.labels[keep]
    order = np.argsort(-scores, kind="stable")
    used = np.zeros(len(order), dtype=bool)
    worst = Uncertainty(det.image, 1.0)
    n = 0
    for a, i in enumerate(order):
        if used[a]:
            continue
        rest = order[a:]
        near = box_iou(boxes[i:i + 1], boxes[rest])[0] >= group_iou
        near &= ~used[a:]
        used[a:] |= near
        members = rest[near]
        per_class: dict[int, float] = {}
        for m in members:
            per_class[int(labels[m])] = max(per_class.get(int(labels[m]), 0.0), float(scores[m]))
        ranked = sorted(per_class.items(), key=lambda kv: -kv[1])
        top_label, top = ranked[0]
        second_label, second = ranked[1] if len(ranked) > 1 else (0, 0.0)
        background = max(0.0, 1.0 - sum(per_class.values()))
        if background > second:
            second_label, second = 0, background
        margin = top - second
        n += 1
        if margin < worst.margin or worst.box is None and margin <= worst.margin:
            worst = Uncertainty(det.image, margin, _tuple(boxes[i]), classes[top_label - 1],
                                "background" if second_label == 0 else classes[second_label - 1])
    return replace(worst, objects=n)


def rank_uncertain(items: Sequence[Uncertainty], count: int) -> list[Uncertainty]:
    """The ``count`` images with the smallest margin (ties: by key)."""
    return sorted(items, key=lambda u: (u.margin, u.key))[:count]
