"""The one logging setup of every command.

Library modules log through ``logging.getLogger(__name__)`` and never print; each CLI's
``main`` calls :func:`setup_logging` once, so every command's log lines look alike::

    WARNING detect.model.build: no pretrained weights could be had (...); training from scratch

Messages go to stderr; what a command prints as its result goes to stdout.
"""

from __future__ import annotations

import copy
import logging
import os
import sys

from detect.common.errors import printable, show

__all__ = ["FORMAT", "SafeFormatter", "setup_logging"]

FORMAT = "%(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    """:data:`FORMAT` with control characters escaped in the values put into a message
    (``log.warning("%s: ...", path)``: a newline in a file name stays ``\\n``), and in
    each line of the message itself."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and record.args:
            record = copy.copy(record)
            record.args = tuple(show(a) if isinstance(a, (str, os.PathLike)) else a for a in record.args)
        elif isinstance(record.msg, str):
            record = copy.copy(record)
        record.msg = printable(record.msg) if isinstance(record.msg, str) else record.msg
        return super().format(record)


def setup_logging(level: int = logging.WARNING) -> None:
    """Log ``level`` and above to stderr in :data:`FORMAT`.

    Like :func:`logging.basicConfig`, this does nothing when the root logger already has a
    handler (an application embedding us, or pytest capturing logs)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
