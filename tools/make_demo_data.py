"""Write the procedural demo dataset: ``python tools/make_demo_data.py OUT --images 400``.

The entry point of :mod:`detect.make_demo_data` (``make-demo-data`` once installed).
"""

import sys

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.make_demo_data import main

if __name__ == "__main__":
    sys.exit(main())
