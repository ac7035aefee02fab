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

__all__ = [
    "__version__",
    "cuda",
    "errors",
    "memory",
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
