"""modelserve: a model serving runtime with a native dynamic-batching core."""

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ModelserveError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

# The rest is imported on first use (PEP 562): a process-instance worker imports only the backend
# it runs, not the servers' dependencies, so it starts in a fraction of the time.
_LAZY = {
    "cuda": ".cuda",
    "memory": ".memory",
    # Subpackages the eager imports used to bring in as attributes (modelserve.repository.x).
    "backends": ".backends",
    "config": ".config",
    "engine": ".engine",
    "generation": ".generation",
    "repository": ".repository",
    "runtime": ".runtime",
    "tensor": ".tensor",
    "observe": ".observe",
    "Runtime": ".runtime",
    "VersionState": ".repository",
    "ConfigError": ".config",
    "ModelConfig": ".config",
    "load_config": ".config",
    "ModelEngine": ".engine",
    "NativeBackend": ".engine",
    "Tensor": ".tensor",
    "as_tensor": ".tensor",
    "DATATYPES": ".tensor",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'modelserve' has no attribute '{name}'")
    module = importlib.import_module(where, __name__)
    value = module if where == "." + name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from . import cuda, memory
    from .config import ConfigError, ModelConfig, load_config
    from .engine import ModelEngine, NativeBackend
    from .repository import VersionState
    from .runtime import Runtime
    from .tensor import DATATYPES, Tensor, as_tensor

__all__ = [
    "__version__",
    "cuda",
    "errors",
    "memory",
    "Runtime",
    "VersionState",
    "ConfigError",
    "ModelConfig",
    "load_config",
    "ModelEngine",
    "NativeBackend",
    "Tensor",
    "as_tensor",
    "DATATYPES",
    "ModelserveError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnavailableError",
    "ResourceExhaustedError",
    "DeadlineExceededError",
    "InternalError",
    "CancelledError",
]
