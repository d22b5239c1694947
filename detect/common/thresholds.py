"""Score thresholds (``--conf``): the one default, the one check, the per-class form.

* :data:`CONF`: the score from which a detection counts (0.5), for every command and for the
  library (:class:`~detect.inference.predictor.Predictor`, the evaluation's precision/recall,
  the label audit). Counting items on a line starts lower (``detect.line.counting.TRACK_CONF``):
  there an item's frames vote.
* :func:`check_conf`: a threshold is a finite number in [0, 1]; the same check for a command
  line and for a value set from Python.
* :class:`ConfThresholds` / :func:`parse_conf`: one threshold and, optionally, one per class
  (``--conf 0.5 --conf Lata_defectuosa=0.3``).
* :class:`ConfOption`: the argparse ``type`` of ``--conf``: per item, a number in [0, 1], or
  (with ``per_class``) ``CLASS=number``; the class names are checked once the model is known.

Torch-free and free of numpy at import; it imports only :mod:`detect.common.errors`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from detect.common.errors import UsageError, show

__all__ = ["CONF", "ConfOption", "ConfThresholds", "check_conf", "parse_conf"]

CONF = 0.5
"""The default score threshold: a detection at or above it counts."""


def _number(text: str, item: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"--conf {show(item)}: '{show(text)}' is not a number; use --conf 0.5 or --conf CLASS=0.3") from None
    return check_conf(v, item)


def check_conf(value: float, item: str | None = None) -> float:
    """``value`` as a float when it is a finite number in [0, 1], else :class:`UsageError`
    ``--conf ITEM: V is outside [0, 1]``."""
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise UsageError(f"--conf {show(item if item is not None else value)}: {v:g} is outside [0, 1]")
    return v


@dataclass(frozen=True)
class ConfThresholds:
    """A score threshold per class: ``default``, except where ``per_class`` names the class."""

    default: float = CONF
    per_class: Mapping[str, float] = field(default_factory=dict)

    def vector(self, classes: Sequence[str]):
        """Threshold of label ``i`` at index ``i`` (index 0, background, is unused): a ``(K + 1,)``
        float64 array."""
        import numpy as np

        return np.array([self.default] + [self.per_class.get(c, self.default) for c in classes], dtype=np.float64)

    def describe(self) -> str:
        extra = ", ".join(f"{c} {v:g}" for c, v in self.per_class.items())
        return f"{self.default:g}" + (f" ({extra})" if extra else "")


def parse_conf(values: Sequence[str] | float | None, classes: Sequence[str], *, default: float = CONF) -> ConfThresholds:
    """``--conf`` values: one number, and/or ``CLASS=number`` items (``["0.5", "Lata_defectuosa=0.3"]``);
    ``default`` where no plain number is given.

    Raises:
        UsageError: a value is not a number in [0, 1], a class is unknown, or two plain
            numbers are given.
    """
    if values is None:
        return ConfThresholds(check_conf(default))
    if isinstance(values, (int, float)):
        values = [str(values)]
    plain: list[float] = []
    per_class: dict[str, float] = {}
    for item in values:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                name, _, text = part.partition("=")
                name = name.strip()
                if name not in classes:
                    raise UsageError(f"--conf {show(part)}: the model has no class '{show(name)}' "
                                     f"(it has {show(', '.join(classes))})")
                per_class[name] = _number(text.strip(), part)
            else:
                plain.append(_number(part, part))
    if len(plain) > 1:
        raise UsageError(f"--conf given {len(plain)} plain thresholds ({', '.join(f'{v:g}' for v in plain)}); "
                         "give one, and CLASS=value for the classes that differ")
    return ConfThresholds(plain[0] if plain else check_conf(default), per_class)


@dataclass(frozen=True)
class ConfOption:
    """The argparse ``type`` of ``--conf``: the text of one item, checked (numbers in [0, 1]).

    ``per_class=False``: a single number, returned as a float (``detect.eval``,
    ``detect.audit``). ``per_class=True``: the item as given (``"0.4"``, ``"Lata=0.3"``,
    ``"0.4,Lata=0.3"``), for :func:`parse_conf` once the model's classes are known
    (``detect.predict``, with ``action="append"``).
    """

    per_class: bool = False

    def __call__(self, text: str):
        try:
            if not self.per_class:
                if "=" in text:
                    raise UsageError(f"--conf {show(text)}: give one number here (per-class thresholds are for "
                                     "detect.predict)")
                return _number(text.strip(), text)
            for part in text.split(","):
                part = part.strip()
                if part:
                    _number(part.partition("=")[2].strip() if "=" in part else part, part)
            return text
        except UsageError as exc:  # argparse turns this into the one-line usage error, exit 2
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--conf ")) from None
