"""Annotation checks: every mistake a VOC dataset can carry into training, as findings.

:func:`check_dataset` reads each XML once with the lenient parser of :mod:`detect.data.voc`,
reads each image's header (size, EXIF orientation; the whole image with ``deep=True``), and
returns a :class:`CheckReport` of :class:`Finding` records, each with a stable code
(:data:`CODES`). :func:`plan_fixes` and :func:`apply_fixes` repair what can be repaired.

The package, one job per module:

* :mod:`~detect.checks.findings`: codes, findings, the report and its summary;
* :mod:`~detect.checks.file_rules`: the per-file checks (VOC1xx-VOC4xx);
* :mod:`~detect.checks.dataset_rules`: the dataset-level checks (VOC2xx overlaps and sizes,
  VOC3xx, VOC5xx);
* :mod:`~detect.checks.check`: :func:`check_dataset`, which runs them (in worker processes
  for large datasets);
* :mod:`~detect.checks.fixes`: the fixes.
* :mod:`~detect.checks.session`: one run as the command asks (check, fix, check again,
  render as text, JSON or GitHub annotations);

* :mod:`~detect.checks.anchor_fit`: the anchor fit (VOC6xx), passed in as
  ``check_dataset(..., anchor_rule=...)``.

Everything here is torch-free (the anchor fit is numpy on :mod:`detect.model.anchors`), so
annotations are checked, anchor fit included, on a machine without torch. This package logs and never prints;
``python -m detect.check_xml`` (``tools/check_xml.py``) is the command line.
"""

from detect.checks.check import PARALLEL_MIN_FILES, check_dataset
from detect.checks.file_rules import ImageInfo, read_image_info
from detect.checks.findings import CODES, SEVERITIES, AnchorFit, CheckReport, Finding, Fix, format_finding, github_line, plural
from detect.checks.fixes import FilePlan, apply_fixes, plan_fixes

__all__ = [
    "CODES",
    "PARALLEL_MIN_FILES",
    "SEVERITIES",
    "AnchorFit",
    "CheckReport",
    "FilePlan",
    "Finding",
    "Fix",
    "ImageInfo",
    "apply_fixes",
    "check_dataset",
    "format_finding",
    "github_line",
    "plan_fixes",
    "plural",
    "read_image_info",
]
