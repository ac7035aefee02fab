"""Backends, registered by name: ``python`` (always), ``onnx`` (``modelserve[onnx]``),
``torch`` (``modelserve[torch]``) and the generative ``gpt2`` (``modelserve[generate]``). See :mod:`modelserve.backends.base` for the interface."""

from .base import Backend, BackendContext, MissingExtraError, get, infer_backend, register, registered
from . import python as _python  # noqa: F401  (registers "python")
from . import gpt2 as _gpt2  # noqa: F401  (registers "gpt2"; torch is imported when a model loads)

__all__ = ["Backend", "BackendContext", "MissingExtraError", "get", "infer_backend", "register", "registered"]

try:  # the framework backends import their frameworks lazily; only the module files are needed
    from . import onnx as _onnx  # noqa: F401
except ImportError:  # pragma: no cover - the module file ships with the package
    pass
try:
    from . import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass
