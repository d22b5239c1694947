"""Check a VOC (LabelImg) dataset before training: ``python tools/check_xml.py DATA [options]``.

The annotator-side entry point of :mod:`detect.check_xml` (``check-xml`` once installed);
``--help`` lists the options and every check code.
"""

import sys

import _repo  # noqa: F401  (makes `detect` importable from a clone)
from detect.check_xml import main

if __name__ == "__main__":
    sys.exit(main())
