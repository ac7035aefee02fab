"""The only module that imports the compiled extension ``modelserve._core``."""

from __future__ import annotations

from . import _core  # noqa: F401  (re-exported to the wrapper modules)
from .errors import from_status

_core._set_error_factory(from_status)

core = _core
