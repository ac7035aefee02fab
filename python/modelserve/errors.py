"""The one status table: core status codes, Python exceptions, gRPC codes and HTTP statuses.

Every failure in modelserve is a :class:`ModelserveError` subclass carrying the table row, so a
frontend turns any of them into the right gRPC status or HTTP response without a lookup of its
own::

    try:
        engine.infer({"INPUT0": x})
    except modelserve.ResourceExhaustedError as e:
        e.http_status   # 429
        e.grpc_code     # "RESOURCE_EXHAUSTED"
"""

from __future__ import annotations

__all__ = [
    "ModelserveError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnavailableError",
    "ResourceExhaustedError",
    "DeadlineExceededError",
    "InternalError",
    "CancelledError",
    "PermissionDeniedError",
    "UnimplementedError",
    "from_status",
]


class ModelserveError(Exception):
    """Base of every modelserve error. ``code`` is the core's StatusCode value."""

    code: int = -1
    status: str = "UNKNOWN"
    grpc_code: str = "UNKNOWN"
    http_status: int = 500


class InvalidArgumentError(ModelserveError, ValueError):
    code, status, grpc_code, http_status = 1, "INVALID_ARGUMENT", "INVALID_ARGUMENT", 400


class NotFoundError(ModelserveError, LookupError):
    code, status, grpc_code, http_status = 2, "NOT_FOUND", "NOT_FOUND", 404


class UnavailableError(ModelserveError):
    code, status, grpc_code, http_status = 3, "UNAVAILABLE", "UNAVAILABLE", 503


class ResourceExhaustedError(ModelserveError):
    code, status, grpc_code, http_status = 4, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", 429


class DeadlineExceededError(ModelserveError, TimeoutError):
    code, status, grpc_code, http_status = 5, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", 504


class InternalError(ModelserveError):
    code, status, grpc_code, http_status = 6, "INTERNAL", "INTERNAL", 500


class PermissionDeniedError(ModelserveError):
    code, status, grpc_code, http_status = 8, "PERMISSION_DENIED", "PERMISSION_DENIED", 403


class UnimplementedError(ModelserveError):
    """A protocol feature modelserve does not implement (shared memory, trace settings, ...)."""

    code, status, grpc_code, http_status = 9, "UNIMPLEMENTED", "UNIMPLEMENTED", 501


class CancelledError(ModelserveError):
    # 499 is the de-facto "client closed request" status (nginx); no response reaches that client.
    code, status, grpc_code, http_status = 7, "CANCELLED", "CANCELLED", 499


_BY_CODE: dict[int, type[ModelserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        UnavailableError,
        ResourceExhaustedError,
        DeadlineExceededError,
        InternalError,
        CancelledError,
        PermissionDeniedError,
        UnimplementedError,
    )
}


def from_status(code: int, message: str) -> ModelserveError:
    """The exception for a core status code (INTERNAL for codes this table does not know)."""
    return _BY_CODE.get(code, InternalError)(message)
