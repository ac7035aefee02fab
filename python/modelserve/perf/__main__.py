"""``python -m modelserve.perf``: the same as ``modelserve perf``."""

import sys

from . import main

sys.exit(main())
