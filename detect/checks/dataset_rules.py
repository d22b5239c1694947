"""The dataset-level checks: what no single file shows.

Overlapping objects within a file (VOC207/208), boxes too small for the model (VOC205),
images nobody annotated (VOC402), the same picture under two names (VOC501) or in two
splits (VOC502), split lists naming missing files (VOC504), stray files (VOC503), class
names against the class list and each other (VOC302/303) and class imbalance (VOC304).
:func:`dataset_findings` runs them all on the per-file results.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from detect.model.backbones import get_backbone
from detect.checks.file_rules import Context, FileResult, class_key, describe
from detect.checks.findings import Finding, box_text, finding, num
from detect.common.errors import show
from detect.data.layout import DatasetFiles

__all__ = ["DUPLICATE_IOU", "IMBALANCE_RATIO", "DatasetResult", "dataset_findings"]

DUPLICATE_IOU = 0.9
IMBALANCE_RATIO = 10.0
# A class in at least this share of the files is not resampled: detect.train's --balance-t default.
REPEAT_T = 0.3
_STRAY_HINT = {
    ".DS_Store": "macOS folder metadata",
    "Thumbs.db": "Windows thumbnail cache",
    "desktop.ini": "Windows folder settings",
}


MAX_PAIRS_PER_FILE = 50  # overlapping pairs listed per file; the rest are counted
MAX_COMPARISONS = 2_000_000  # box pairs compared per file at most: time and memory stay bounded
_CHUNK = 250_000


def overlapping_pairs(
    boxes: np.ndarray, threshold: float, *, max_comparisons: int = MAX_COMPARISONS
) -> tuple[list[tuple[int, int, float]], bool]:
    """Pairs ``(i, j, iou)``, ``i < j``, of ``boxes`` (``(N, 4)`` xmin, ymin, xmax, ymax with
    positive width and height) whose IoU is above ``threshold``; and whether the search was
    cut short at ``max_comparisons``.

    Near-linear: IoU > t needs ``|xmin_a - xmin_b| <= (1 - t) * min(w_a, w_b)`` (and the same
    along y), so the boxes are sorted by their lower edge along one axis and each is compared
    only with those whose edge lies within that reach (a sweep); the axis that gives fewer
    comparisons is used. Only boxes drawn nearly on top of each other are ever compared.
    """
    n = len(boxes)
    if n < 2:
        return [], False
    x0, y0, x1, y1 = boxes.T
    w, h = x1 - x0, y1 - y0
    slack = 1.0 - threshold
    best = None
    for low, size in ((x0, w), (y0, h)):
        order = np.argsort(low, kind="stable")
        edge = low[order]
        counts = np.searchsorted(edge, edge + slack * size[order], side="right") - np.arange(n) - 1
        total = int(counts.sum())
        if best is None or total < best[0]:
            best = (total, order, counts)
    total, order, counts = best
    cum = np.concatenate([[0], np.cumsum(counts)])
    rows = n if total <= max_comparisons else int(np.searchsorted(cum, max_comparisons, side="right")) - 1
    found: list[tuple[int, int, float]] = []
    row = 0
    while row < rows:
        stop = min(rows, max(row + 1, int(np.searchsorted(cum, cum[row] + _CHUNK, side="right")) - 1))
        span = np.arange(row, stop)
        c = counts[span]
        first = np.repeat(span, c)
        second = first + 1 + np.arange(int(c.sum())) - np.repeat(cum[span] - cum[row], c)
        a, b = order[first], order[second]
        near = (
            (np.abs(x0[a] - x0[b]) <= slack * np.minimum(w[a], w[b]))
            & (np.abs(y0[a] - y0[b]) <= slack * np.minimum(h[a], h[b]))
            & (np.minimum(w[a], w[b]) >= threshold * np.maximum(w[a], w[b]))
            & (np.minimum(h[a], h[b]) >= threshold * np.maximum(h[a], h[b]))
        )
        a, b = a[near], b[near]
        inter = (np.clip(np.minimum(x1[a], x1[b]) - np.maximum(x0[a], x0[b]), 0, None)
                 * np.clip(np.minimum(y1[a], y1[b]) - np.maximum(y0[a], y0[b]), 0, None))
        iou = inter / (w[a] * h[a] + w[b] * h[b] - inter)
        hit = iou > threshold
        found += [(int(min(i, j)), int(max(i, j)), float(v)) for i, j, v in zip(a[hit], b[hit], iou[hit])]
        row = stop
    found.sort()
    return found, rows < n


def _overlapping_objects(results: Sequence[FileResult]) -> list[Finding]:
    """VOC207/VOC208: pairs of boxes in one file with IoU above :data:`DUPLICATE_IOU`
    (:func:`overlapping_pairs`); at most :data:`MAX_PAIRS_PER_FILE` listed per file."""
    out: list[Finding] = []
    for r in results:
        if len(r.valid) < 2:
            continue
        boxes = np.array([o.box for o in r.valid], dtype=np.float64)
        pairs, cut = overlapping_pairs(boxes, DUPLICATE_IOU)
        for i, j, value in pairs[:MAX_PAIRS_PER_FILE]:
            a, b = r.valid[i], r.valid[j]
            if a.name == b.name:
                message = (
                    f"{describe(b)} overlaps the '{show(a.name)}' at line {a.line} at IoU {value:.2f}; probably "
                    "the same object drawn twice: delete one"
                )
                out.append(finding("VOC207", r.xml, b.line, message))
            else:
                message = (
                    f"the box of {describe(b)} is also labelled '{show(a.name)}' at line {a.line} (IoU {value:.2f}); "
                    "one object has one class: delete the wrong one"
                )
                out.append(finding("VOC208", r.xml, b.line, message))
        more = len(pairs) - MAX_PAIRS_PER_FILE
        if more > 0 or cut:
            what = f"{more} more pair(s) of boxes overlap at IoU > {DUPLICATE_IOU:g}" if more > 0 else ""
            if cut:
                what += ("; and " if what else "") + (
                    f"its {len(r.valid)} boxes lie so close together that only the first "
                    f"{MAX_COMPARISONS:,} comparisons were made")
            out.append(finding("VOC207", r.xml, None, f"{what}: the file probably holds objects drawn many times "
                                                      "over; clean it up in LabelImg"))
    return out


def _hash_file(path: Path) -> str | None:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _duplicate_images(images: Iterable[Path]) -> list[list[Path]]:
    """Groups of byte-identical images; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for img in images:
        try:
            by_size[img.stat().st_size].append(img)
        except OSError:
            continue
    groups = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_hash: dict[str, list[Path]] = defaultdict(list)
        for img in same_size:
            digest = _hash_file(img)
            if digest is not None:
                by_hash[digest].append(img)
        groups.extend(sorted(g) for g in by_hash.values() if len(g) > 1)
    return sorted(groups)


def _check_splits(files: DatasetFiles, known_ids: set[str], image_of: dict[str, Path], dup_groups) -> list[Finding]:
    out: list[Finding] = []
    lists = files.split_lists
    if not lists:
        return out

    def where(split: str, index: int) -> tuple[Path, int | None]:
        src = files.split_path(split)
        numbers = files.split_lines.get(split, ())
        return src, numbers[index] if index < len(numbers) else None

    for split, ids in lists.items():
        for i, sample in enumerate(ids):
            if sample not in known_ids:
                path, line = where(split, i)
                out.append(
                    finding(
                        "VOC504",
                        path,
                        line,
                        f"'{sample}' is listed in {split}.txt but there is no Annotations/{sample}.xml; "
                        "remove the line or add the annotation",
                    )
                )

    # The sets a sample may be in only once: train (or trainval minus val, as training reads
    # it), val and test; and trainval, which holds val by design, against test.
    val = set(lists.get("val", ()))
    groups: dict[str, list[str]] = {}
    if "train" in lists:
        groups["train"] = list(lists["train"])
    elif "trainval" in lists:
        groups["trainval"] = [i for i in lists["trainval"] if i not in val]
    groups.update((name, list(lists[name])) for name in ("val", "test") if name in lists)
    names = list(groups)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if "train" in lists and "trainval" in lists and "test" in lists:
        groups["trainval"] = list(lists["trainval"])
        pairs.append(("trainval", "test"))
    for a, b in pairs:
        in_a = set(groups[a])
        for i, sample in enumerate(lists[b]):
            if sample in in_a:
                path, line = where(b, i)
                out.append(
                    finding(
                        "VOC502",
                        path,
                        line,
                        f"'{sample}' is in both {a}.txt and {b}.txt: the model would be evaluated on an "
                        f"image it trained on; remove it from one of the lists",
                    )
                )

    # The same picture under two ids in two splits leaks just as well.
    split_of: dict[Path, tuple[str, str]] = {}
    for name in names:
        for sample in groups[name]:
            img = image_of.get(sample)
            if img is not None:
                split_of.setdefault(img, (name, sample))
    for group in dup_groups:
        placed = [split_of[img] for img in group if img in split_of]
        if len(placed) < 2:
            continue
        split_a, id_a = placed[0]
        for split_b, id_b in placed[1:]:
            if split_b == split_a:
                continue
            path, line = where(split_b, lists[split_b].index(id_b))
            out.append(
                finding(
                    "VOC502",
                    path,
                    line,
                    f"'{id_b}' ({split_b}) is the same image as '{id_a}' ({split_a}); keep one copy "
                    "and remove the other from its list",
                )
            )
    return out


def _small_boxes(boxes, box_paths, *, backbone: str, input_size: int, scales) -> list[Finding]:
    """VOC205: boxes smaller than the model resolves at its input size.

    The floor is a quarter of the smallest anchor or half the finest feature stride,
    whichever is larger: below it a box covers too little of any anchor and of the
    feature map to be found.
    """
    spec = get_backbone(backbone)
    stride = spec.feature_strides[0]
    floor = max(spec.base_sizes[0] * min(scales) / 4, stride / 2)
    out = []
    for (W, H, x0, y0, x1, y1, line, name), path in zip(boxes, box_paths):
        scale = input_size / max(W, H)
        sw, sh = (x1 - x0) * scale, (y1 - y0) * scale
        if min(sw, sh) < floor:
            out.append(
                finding(
                    "VOC205",
                    path,
                    line,
                    f"object '{name}' ({box_text((x0, y0, x1, y1))}) is {num(round(x1 - x0, 1))}x"
                    f"{num(round(y1 - y0, 1))} px, {sw:.0f}x{sh:.0f} px at the model's input size {input_size}; "
                    f"the {backbone} model resolves objects from about {floor:.0f} px (feature stride {stride}): "
                    "check the box, or train with a larger --input-size or the resnet50 backbone",
                )
            )
    return out


@dataclass
class DatasetResult:
    """The dataset-level findings, with what the report and the anchor-fit rule need.

    ``boxes`` holds ``(image width, image height, xmin, ymin, xmax, ymax, line, class)`` of
    every box inside its image, ``box_paths`` the XML file of each.
    """

    findings: list[Finding]
    class_counts: Counter
    images_used: int
    boxes: list[tuple]
    box_paths: list[Path]


def _unclear_orientations(files: DatasetFiles, results: Sequence[FileResult]) -> list[Finding]:
    """One VOC406 for the dataset: images whose EXIF orientation the ``<size>`` cannot tell
    apart from the stored frame (180 degrees, mirrored, square), so their boxes are taken in
    the upright frame, as LabelImg 1.8.4+ draws them."""
    tagged = [(res.image, res.unclear_orientation) for res in results if res.unclear_orientation and res.image]
    if not tagged:
        return []
    by_tag = Counter(tag for _, tag in tagged)
    tags = ", ".join(f"{tag} x{n}" for tag, n in sorted(by_tag.items()))
    return [
        finding(
            "VOC406",
            files.root,
            None,
            f"{len(tagged)} image(s) carry an EXIF orientation (tag {tags}; e.g. '{show(tagged[0][0].name)}') that "
            "their <size> cannot tell apart from the stored pixels (turned 180 degrees, mirrored, or square): their "
            "boxes are taken in the upright frame LabelImg 1.8.4+, OpenCV and browsers show. If this data was "
            "annotated with a tool that shows the stored pixels (LabelImg before 1.8.4), check and train it with "
            "--exif ignore",
        )
    ]


def dataset_findings(
    files: DatasetFiles, results: Sequence[FileResult], ctx: Context, *, backbone: str, input_size: int,
    scales: Sequence[float],
) -> DatasetResult:
    """Every per-file finding plus the dataset-level ones (all but the anchor fit)."""
    findings: list[Finding] = []
    counts: Counter = Counter()
    files_with: Counter = Counter()  # XML files holding each class, for the imbalance hint
    boxes: list[tuple] = []
    box_paths: list[Path] = []
    used_images: set[Path] = set()
    image_of: dict[str, Path] = {}
    sample_ids = [files.sample_id(xml) for xml in files.xml_files]
    for res, sample in zip(results, sample_ids):
        findings.extend(res.findings)
        counts.update(res.names)
        files_with.update(set(res.names))
        if res.image is not None:
            used_images.add(res.image)
            image_of[sample] = res.image
        boxes.extend(res.boxes)
        box_paths.extend([res.xml] * len(res.boxes))
    findings.extend(_overlapping_objects(results))
    findings.extend(_small_boxes(boxes, box_paths, backbone=backbone, input_size=input_size, scales=scales))

    # -- images nobody annotated
    for img in files.image_files:
        if img not in used_images:
            findings.append(
                finding(
                    "VOC402",
                    img,
                    None,
                    f"image '{img.name}' has no XML; annotate it in LabelImg (an image without objects "
                    "still needs an XML to train as background) or move it out of the dataset",
                )
            )

    # -- the same picture twice
    dup_groups = _duplicate_images(files.image_files)
    for group in dup_groups:
        for img in group[1:]:
            findings.append(
                finding(
                    "VOC501",
                    img,
                    None,
                    f"image '{img.name}' has the same content as '{group[0]}'; the picture counts twice "
                    "(and can leak between splits): delete one copy and its XML",
                )
            )
    findings.extend(_check_splits(files, set(sample_ids), image_of, dup_groups))

    findings.extend(_unclear_orientations(files, results))

    for stray in files.stray_files:
        what = _STRAY_HINT.get(stray.name) or (
            "a macOS resource-fork copy" if stray.name.startswith("._") else "not a regular file: a FIFO, device or socket")
        findings.append(
            finding("VOC503", stray, None, f"stray file ({what}), not part of the dataset; delete it")
        )

    # -- classes
    if ctx.classes is not None:
        for name in ctx.classes:
            if counts[name] == 0:
                findings.append(
                    finding(
                        "VOC303",
                        files.root,
                        None,
                        f"class '{name}' is in the classes list but no object uses it; the model cannot "
                        "learn it: annotate some, or drop it from the list",
                    )
                )
    else:
        by_key: dict[str, list[str]] = defaultdict(list)
        for name in counts:
            by_key[class_key(name)].append(name)
        for variants in by_key.values():
            if len(variants) > 1:
                variants.sort(key=lambda v: -counts[v])
                listed = ", ".join(f"'{v}' ({counts[v]})" for v in variants)
                findings.append(
                    finding(
                        "VOC302",
                        files.root,
                        None,
                        f"class names {listed} differ only in case, spaces or underscores and would be "
                        f"trained as different classes; rename them all to one, e.g. '{variants[0]}' "
                        "(with --classes FILE, --unsafe-fixes renames them)",
                        severity="warning",
                    )
                )
    used = [(n, c) for n, c in counts.most_common() if c > 0 and (ctx.classes is None or n in ctx.classes)]
    if len(used) > 1:
        (top, most), (low, least) = used[0], used[-1]
        ratio = most / least
        if ratio >= IMBALANCE_RATIO:
            share = files_with[low] / max(1, len(results))
            if share < REPEAT_T:
                remedy = ", or resample the rare classes in training (python -m detect.train --balance repeat)"
            else:  # repeat-factor sampling works on images: it cannot raise a class in most of them
                remedy = (f" (it is already in {share:.0%} of the files, so resampling images with --balance "
                          "repeat cannot raise its share)")
            findings.append(
                finding(
                    "VOC304",
                    files.root,
                    None,
                    f"class imbalance {ratio:.1f}:1 ('{top}' {most} objects, '{low}' {least}); the model "
                    f"will favour '{top}': annotate more '{low}'{remedy}",
                )
            )

    return DatasetResult(findings, counts, len(used_images), boxes, box_paths)
