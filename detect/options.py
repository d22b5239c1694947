"""Command-line pieces every CLI shares: the parser class, value parsers, the device option.

* :class:`CliParser`: argparse with one-line usage errors (exit status 2) instead of a
  usage block, so every command fails the same way.
* :func:`number_list`: ``"0.5,1,2"`` or ``"0.5 1 2"`` -> ``[0.5, 1.0, 2.0]``, positive and
  finite (anchor scales and ratios).
* :data:`DEVICE_DEFAULT` / :func:`add_device_option`: ``--device``, ``auto`` everywhere
  (CUDA when present, else the CPU); :func:`detect.device.resolve_device` turns the name
  into a torch device.

This module is torch-free: the evaluation of a predictions file and the annotation
checker parse their options here on a machine without torch.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["DEVICE_DEFAULT", "DEVICE_HELP", "CliParser", "add_device_option", "number_list"]

DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda, cuda:1, mps"


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit with 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number_list(text: str) -> list[float]:
    """An argparse type: positive finite numbers separated by commas or spaces."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '0.5,1,2', got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, with the default every command shares."""
    parser.add_argument("--device", default=DEVICE_DEFAULT, help=f"{DEVICE_HELP} (default: {DEVICE_DEFAULT})")
