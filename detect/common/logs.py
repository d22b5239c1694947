"""The one logging setup of every command.

Library modules log through ``logging.getLogger(__name__)`` and never print; each CLI's
``main`` calls :func:`setup_logging` once, so every command's log lines look alike::

    WARNING detect.model.build: no pretrained weights could be had (...); training from scratch

Messages go to stderr; what a command prints as its result goes to stdout.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FORMAT", "setup_logging"]

FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.WARNING) -> None:
    """Log ``level`` and above to stderr in :data:`FORMAT`.

    Like :func:`logging.basicConfig`, this does nothing when the root logger already has a
    handler (an application embedding us, or pytest capturing logs)."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
