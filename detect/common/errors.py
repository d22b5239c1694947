"""One family of errors for everything a user can get wrong, each carrying its exit status.

Every problem a person can act on (a bad option, a missing folder, a broken annotation, a
corrupt checkpoint, a malformed predictions file) is a :class:`DetectError`. Its message is
one line (or a short block) that names the file, the XML line where there is one, what is
wrong and how to fix it; its ``exit_code`` is what the command returns. So every
``main(argv)`` has one ``except DetectError`` and no Python traceback reaches a user for a
user's mistake.

Exit statuses, the same for every command:

* ``2``: usage error: the command line asks for something impossible, or names an input
  that cannot be used at all (:class:`UsageError` and its subclasses);
* ``1``: a failure found in otherwise usable input: annotation errors, a loss that turned
  NaN, a run that could not be evaluated (:class:`DetectError`);
* ``130``: interrupted by Ctrl-C (not an error class; each command handles it).

The specific classes live beside the code that raises them (``VocError`` in
:mod:`detect.data.voc`, ``CheckpointError`` in :mod:`detect.model.checkpoint`, ...) and derive from
these two. This module imports nothing.
"""

from __future__ import annotations

__all__ = ["DetectError", "UsageError", "printable", "show"]


class DetectError(Exception):
    """A problem the user can act on; the command exits with :attr:`exit_code` (1)."""

    exit_code: int = 1


class UsageError(DetectError):
    """A bad command line, or an input named on it that cannot be used at all: exit 2."""

    exit_code = 2



# Characters that would break a one-line message or disguise it on a terminal: C0 and C1
# controls (newline, carriage return, escape) and the bidirectional marks and overrides
# (U+202E shows "gpj.exe" as "exe.jpg").
_UNSAFE = frozenset((*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
                     *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def show(value: object) -> str:
    """``value`` as text safe to put inside a one-line message: control characters and
    bidirectional overrides are escaped (``\\n``, ``\\x1b``, ``\\u202e``).

    Use it for every name that comes from a file (class names, ``<filename>``, record
    fields): whoever wrote the file controls those characters.
    """
    text = str(value)
    if not any(ord(ch) in _UNSAFE for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if ord(ch) in _UNSAFE else ch for ch in text)


def printable(message: object) -> str:
    """A message for the terminal: :func:`show` on each line, keeping the line breaks the
    message itself is made of (multi-line errors list files one per line)."""
    return "\n".join(show(line) for line in str(message).split("\n"))
