"""modelserve: a model serving runtime with a native dynamic-batching core."""

from ._version import __version__
from . import cuda, errors, memory
from .engine import ModelEngine, NativeBackend
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
from .tensor import DATATYPES, Tensor, as_tensor
from .runtime import Runtime
from .repository import VersionState
from .config import ConfigError, ModelConfig, load_config

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
