"""Lets the scripts in bench/ import ``detect`` when run from a clone that is not installed.

``python bench/x.py`` puts ``bench/`` (not the clone) on ``sys.path``; each script imports this
module first. An installed ``detect`` is left alone.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("detect") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
