"""What the gRPC and HTTP frontends share: wire tensors to core tensors, request parameters,
authorisation, and the protocol's datatypes. Errors carry the status table of modelserve.errors."""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, PermissionDeniedError
from ..tensor import DATATYPES, Tensor

__all__ = [
    "EXTENSIONS",
    "MAX_PRIORITY",
    "MAX_TIMEOUT_US",
    "NUMPY_DTYPES",
    "MAX_ELEMENTS",
    "ServerOptions",
    "check_shape",
    "tensor_from_raw",
    "tensor_from_values",
    "tensor_values",
    "request_options",
    "check_token",
]

#: numpy dtype of each datatype's values on the wire; BF16 travels as its 16-bit pattern.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "BF16": np.dtype(np.uint16), "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64), "BYTES": np.dtype(object),
}

#: The Triton extensions both frontends implement (server metadata lists them).
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "parameters",
    "schedule_policy",
    "statistics",
]

#: The core's priority is 32 bits. Queue timeouts beyond 2^40 us (12.7 days) mean "none" in
#: practice and are capped there.
MAX_PRIORITY = 2**32 - 1
MAX_TIMEOUT_US = 1 << 40
#: Reserved-prefix parameters that are understood (and ignored) rather than refused.
KNOWN_RESERVED_PARAMETERS = frozenset({"triton_enable_empty_final_response"})

#: A request tensor may not claim more elements than this (2^32): absurd shapes are refused before
#: anything is allocated for them.
MAX_ELEMENTS = 1 << 32


@dataclass
class ServerOptions:
    """Everything ``modelserve serve`` configures; the frontends read what concerns them."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC messages and HTTP bodies, both directions
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed (mTLS)
    admin_token: str | None = None  # set: repository load/unload (and later management) need it
    inference_token: str | None = None  # set: inference and metadata need it too
    required_models: list[str] = field(default_factory=list)  # ready = these READY; [] = all loaded
    shutdown_grace_s: float = 5.0  # after SIGTERM: not ready at once, new requests refused after this
    drain_timeout_s: float = 30.0  # then in-flight and queued requests get this long to finish


def check_shape(name: str, shape: Sequence[int]) -> list[int]:
    """The shape as a list of ints; refuses negative and absurd dimensions naming the tensor."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InvalidArgumentError(f"input '{name}': shape {dims} has a negative dimension")
    if math.prod(dims) > MAX_ELEMENTS:
        raise InvalidArgumentError(
            f"input '{name}': shape {dims} has {math.prod(dims)} elements, more than the {MAX_ELEMENTS} allowed"
        )
    return dims


def _known_datatype(name: str, datatype: str) -> None:
    if datatype not in DATATYPES:
        raise InvalidArgumentError(f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}")


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: Any) -> Tensor:
    """A tensor viewing ``raw`` (bytes, memoryview: the request's payload) without a copy. BYTES
    use the protocol's serialisation (4-byte little-endian length before each element)."""
    _known_datatype(name, datatype)
    dims = check_shape(name, shape)
    try:
        return Tensor.from_buffer(raw, datatype, dims)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"input '{name}': {e}") from None


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Tensor:
    """A tensor from a flat list of values (JSON ``data``, gRPC typed contents)."""
    _known_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input '{name}': shape {dims} needs {count} values, got {len(values)}"
        )
    try:
        if datatype == "BYTES":
            items = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
            array = np.empty(count, dtype=object)
            array[:] = items
        else:
            array = np.asarray(values, dtype=NUMPY_DTYPES[datatype])
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgumentError(f"input '{name}': values do not fit datatype {datatype}: {e}") from None
    return Tensor.from_numpy(array.reshape(dims), datatype)


def tensor_values(tensor: Tensor) -> list[Any]:
    """A tensor's values as a flat list (JSON output); BYTES as str where they are UTF-8."""
    array = tensor.numpy()
    if tensor.datatype == "BYTES":
        out = []
        for b in array.ravel():
            try:
                out.append(b.decode())
            except UnicodeDecodeError:
                out.append(b.decode("latin-1"))
        return out
    return array.ravel().tolist()


def request_options(
    parameters: Mapping[str, Any], name: str = "request", deadline_us: int | None = None
) -> dict[str, int]:
    """``priority`` and ``timeout`` (microseconds) from the request parameters, as Runtime kwargs.

    A transport deadline (the gRPC call's remaining time) also bounds the queue timeout: the
    smaller one wins, so a request whose caller has given up expires in the queue. Keys with the
    reserved ``triton_`` prefix that mean nothing here are refused, as Triton does; sequence
    parameters are accepted and ignored (no model is a sequence model)."""
    for key in parameters:
        if key.startswith("triton_") and key not in KNOWN_RESERVED_PARAMETERS:
            raise InvalidArgumentError(f"{name}: unknown reserved parameter '{key}' (the triton_ prefix is reserved)")
    out = {}
    for key, kwarg in (("priority", "priority"), ("timeout", "timeout_us")):
        if key in parameters and parameters[key] is not None:
            value = parameters[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InvalidArgumentError(f"{name}: parameter '{key}' must be a non-negative integer, got {value!r}")
            out[kwarg] = int(value)
    if out.get("priority", 0) > MAX_PRIORITY:
        raise InvalidArgumentError(f"{name}: parameter 'priority' is {out['priority']}, more than {MAX_PRIORITY}")
    timeout_us = out.get("timeout_us", 0)
    if deadline_us is not None:
        deadline_us = max(1, deadline_us)
        timeout_us = min(timeout_us, deadline_us) if timeout_us else deadline_us
    if timeout_us:
        out["timeout_us"] = min(timeout_us, MAX_TIMEOUT_US)
    return out


def check_token(expected: str | None, authorization: str | None, what: str) -> None:
    """Refuses with PermissionDeniedError unless ``authorization`` is ``Bearer <expected>`` (no
    check when no token is configured). Compared in constant time."""
    if expected is None:
        return
    given = ""
    if authorization and authorization.startswith("Bearer "):
        given = authorization[len("Bearer ") :].strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise PermissionDeniedError(f"{what} needs a valid bearer token (Authorization: Bearer <token>)")
