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
:mod:`detect.voc`, ``CheckpointError`` in :mod:`detect.checkpoint`, ...) and derive from
these two. This module imports nothing.
"""

from __future__ import annotations

__all__ = ["DetectError", "UsageError"]


class DetectError(Exception):
    """A problem the user can act on; the command exits with :attr:`exit_code` (1)."""

    exit_code: int = 1


class UsageError(DetectError):
    """A bad command line, or an input named on it that cannot be used at all: exit 2."""

    exit_code = 2

