"""``python -m modelserve.batch``: the same as ``modelserve batch``."""

import sys

from . import main

sys.exit(main())
