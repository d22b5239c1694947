"""Command-line pieces every CLI shares: the parser class, value parsers, the device option.

* :class:`CliParser`: argparse with one-line usage errors (exit status 2) instead of a
  usage block, so every command fails the same way: ``--lr must be a finite number > 0,
  got nan (see --help)``.
* :class:`Number`: every numeric option's allowed range, checked when the command line is
  parsed (``type=Number(int, lo=1)``) and again by the library for values set from Python
  (:meth:`Number.check`); NaN and infinities are refused everywhere.
* :func:`class_list`: ``--classes "raccoon face,Lata"`` -> the names, each checked against the model's.
* :func:`number_list`: ``"0.5,1,2"`` or ``"0.5 1 2"`` -> ``[0.5, 1.0, 2.0]``, positive and
  finite (anchor scales and ratios).
* :func:`add_inference_options` / :func:`settings_from`: the test-time speed levers
  (``--input-size``, ``--proposals``, ...) that ``detect.export`` and ``detect.predict`` share.
* :func:`run_command`: the one entrance (parse, logging) and error and Ctrl-C tail of every command.
* :data:`DEVICE_DEFAULT` / :func:`add_device_option`: ``--device``, ``auto`` everywhere
  (CUDA when present, else the CPU); :func:`detect.common.device.resolve_device` turns the name
  into a torch device.

This module is torch-free: the evaluation of a predictions file and the annotation
checker parse their options here on a machine without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from detect.common.errors import DetectError, UsageError, printable, show
from detect.common.logs import setup_logging

__all__ = ["DEVICE_DEFAULT", "DEVICE_HELP", "CliParser", "Number", "add_device_option", "add_inference_options",
           "class_list", "given_options", "number_list", "run_command", "settings_from"]

DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda, cuda:1, mps"


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit with 2."""

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)  # for error(): which words were files
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        # "argument --lr: must be ..." -> "--lr must be ...": the option, then what is wrong.
        found = re.match(r"argument ([^:]+?): (.*)$", message, re.S)
        if found:
            option = found.group(1).split("/")[0]
            message = f"{option} {found.group(2)}"
        message = printable(message)
        files = [a for a in self._argv if a.startswith("-") and a not in self._option_string_actions
                 and os.path.exists(a)]
        if files:  # `predict -x.jpg`: argparse takes a file whose name starts with '-' for an option
            message += f"; {show(files[0])} is a file: use -- before sources that start with - (-- {show(files[0])})"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class Number:
    """The allowed values of one numeric option: ``kind`` (``int`` or ``float``), finite,
    within ``lo``..``hi`` (either may be None), the ends excluded when ``lo_open`` /
    ``hi_open``.

    An instance is an argparse ``type`` (it parses the text and raises
    ``ArgumentTypeError``) and a library check (:meth:`check` raises
    :class:`~detect.common.errors.UsageError`), so a command line and a config built in Python are
    held to the same range.
    """

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        """The range in words: ``"at least 1"``, ``"from 1 to 64"``, ``"a finite number > 0"``,
        ``"a finite number in [0, 1)"``."""
        lo, hi = self.lo, self.hi
        if self.kind is int:
            if lo is not None and hi is not None:
                return f"from {lo:g} to {hi:g}"
            if lo is not None:
                return f"at least {lo:g}"
            return f"at most {hi:g}" if hi is not None else "a whole number"
        if lo is not None and hi is not None:
            return f"a finite number in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"a finite number {'>' if self.lo_open else '>='} {lo:g}"
        if hi is not None:
            return f"a finite number {'<' if self.hi_open else '<='} {hi:g}"
        return "a finite number"

    def _wrong_kind(self, value) -> str:
        what = self.describe()
        if self.kind is int and what != "a whole number":
            what = f"a whole number, {what}"
        return f"must be {what}, got {value!r}"

    def _problem(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._wrong_kind(value)
        if self.kind is int and not (isinstance(value, int) or float(value).is_integer()):
            return self._wrong_kind(value)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            return f"must be {self.describe()}, got {value}"
        lo_bad = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        hi_bad = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
        if lo_bad or hi_bad:
            return f"must be {self.describe()}, got {value:g}" if self.kind is float else \
                f"must be {self.describe()}, got {value}"
        return None

    def __call__(self, text: str):
        """Parse ``text`` (argparse ``type``)."""
        try:
            value = int(text) if self.kind is int else float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(self._wrong_kind(text)) from None
        problem = self._problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def check(self, option: str, value):
        """``value`` unchanged when allowed; else :class:`UsageError` ``"--option must be ..."``.
        None (unset) passes."""
        if value is None:
            return value
        problem = self._problem(value)
        if problem:
            raise UsageError(f"{option} {problem}")
        return self.kind(value)


def number_list(text: str) -> list[float]:
    """An argparse type: positive finite numbers separated by commas or spaces."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '0.5,1,2', got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def class_list(option: str, text: str | None, classes: Sequence[str]) -> list[str] | None:
    """``--classes "raccoon face,Lata"``: names separated by commas, spaces inside a name kept
    (stripped only around the commas), each checked against the model's ``classes``. An item
    that is not a class but whose space-separated words all are (``"Lata Botella"``, the
    older form) is read as those words."""
    if text is None:
        return None
    names: list[str] = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        words = item.split()
        names += words if item not in classes and len(words) > 1 and all(w in classes for w in words) else [item]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise UsageError(f"{option} {show(repr(text))}: the model has no class "
                         f"{show(', '.join(repr(n) for n in unknown))}; its classes are {show(', '.join(classes))} "
                         "(separate names with commas: --classes 'raccoon face,Lata')")
    return names or None


def given_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the options ``argv`` sets explicitly (defaults left out), e.g.
    to tell ``--resume last.pt --epochs 12`` from a plain ``--resume last.pt``."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, with the default every command shares."""
    parser.add_argument("--device", default=DEVICE_DEFAULT, help=f"{DEVICE_HELP} (default: {DEVICE_DEFAULT})")


def add_inference_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """The inference-time settings (speed levers) ``detect.export`` and ``detect.predict`` share."""
    g = parser.add_argument_group(f"inference settings, {what} (default: the checkpoint's)")
    g.add_argument("--input-size", type=Number(int, 32, 8192), metavar="PX", help="longest side the model resizes images to")
    g.add_argument("--pre-nms", type=Number(int, 1), metavar="N", help="RPN proposals per level before NMS")
    g.add_argument("--proposals", type=Number(int, 1), metavar="N", help="RPN proposals kept after NMS (box-head work)")
    g.add_argument("--detections", type=Number(int, 1), metavar="N", help="most detections per image")
    g.add_argument("--score-thresh", type=Number(float, 0, 1, hi_open=True), metavar="S",
                   help="lowest score the model outputs (keep it low; --conf of detect.predict filters further)")


def settings_from(args: argparse.Namespace) -> dict:
    """The inference settings given on the command line (None where not given), by the names
    of :func:`detect.inference.torch_runtime.set_test_settings`."""
    return {"input_size": args.input_size, "rpn_pre_nms_top_n_test": args.pre_nms,
            "rpn_post_nms_top_n_test": args.proposals, "box_detections_per_img": args.detections,
            "box_score_thresh": args.score_thresh}


def run_command(body: Callable[..., int], parser: argparse.ArgumentParser | None = None,
                argv: Sequence[str] | None = None, *, interrupted: str = "interrupted",
                log_level: int | None = None) -> int:
    """The one entrance and tail of every command's ``main(argv)``.

    With ``parser``: parse ``argv`` (``None``: ``sys.argv[1:]``; a usage error exits 2 there,
    argparse's way), set up logging (``log_level``, else INFO with ``-v``/``--verbose`` and
    WARNING without) and call ``body(args)``. Without: call ``body()``.

    The tail: a :class:`DetectError` is one line ``error: ...`` on stderr and its exit status
    (2 usage, 1 failure); an ``OSError`` nobody caught (a disk that filled, a folder made
    read-only meanwhile) is one line naming the file, exit 1; standard output closed by its
    reader (``| head``) ends the command quietly with 141 (SIGPIPE's status in a shell);
    Ctrl-C that the body does not handle itself prints ``interrupted`` (what was or was not
    kept) and gives 130. For the commands only: library code raises and logs, it never prints.
    """
    try:
        if parser is None:
            return body()
        args = parser.parse_args(argv)
        setup_logging(log_level if log_level is not None else
                      logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
        return body(args)
    except DetectError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # nobody reads standard output any more: no further write error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        where = f"{show(exc.filename)}: " if exc.filename else ""
        print(f"error: {where}{show(exc.strerror or exc)}", file=sys.stderr)
        return 1
