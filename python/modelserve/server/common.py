"""What the gRPC and HTTP frontends share: wire tensors to core tensors, request parameters,
authorisation, who makes a management call (the audit log's actor), and the protocol's
datatypes. Errors carry the status table of modelserve.errors."""

from __future__ import annotations

import hmac
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, PermissionDeniedError
from ..tensor import DATATYPES, NUMPY_DTYPES, Tensor

__all__ = [
    "EXTENSIONS",
    "MAX_PRIORITY",
    "MAX_TIMEOUT_US",
    "NUMPY_DTYPES",
    "MAX_ELEMENTS",
    "ServerOptions",
    "check_shape",
    "checked_values",
    "expected_value",
    "tensor_from_values",
    "tensor_values",
    "request_options",
    "check_token",
    "ACTOR_HEADER",
    "actor_of",
    "http_actor",
    "grpc_actor",
]

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
    # gc.freeze() once the start-up models are loaded (Note [Start-up heap] in server/app.py):
    # modelserve serve sets it; an embedding process keeps its collector as it is.
    freeze_start_up_heap: bool = False
    max_stream_requests: int = 64  # ModelStreamInfer: requests read and not yet answered, per stream


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


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Tensor:
    """A tensor from a flat row-major list of values: JSON ``data`` (Python values as ``json``
    parses them) or gRPC typed contents (a numpy array of the contents field's type, or a list of
    ``bytes`` for ``bytes_contents``). Every value must pass the rule table (Note [Value rules])."""
    _known_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if len(values) != count:
        raise InvalidArgumentError(
            f"input '{name}': shape {dims} needs {count} values, got {len(values)}"
        )
    return Tensor.from_numpy(checked_values(name, datatype, values).reshape(dims), datatype)


# Note [Value rules]: the one table of what a datatype takes as a JSON value or a gRPC typed
# contents value (README, "Tensor values"). Integer datatypes take integers within the
# datatype's range: no floats (not even 3.0), no booleans (Python's bool is an int: excluded by
# exact type). FP16/FP32/FP64 take integers or floats whose finite values stay finite in the
# datatype (1e300 for FP32 is refused, 65519 for FP16 rounds to 65504 and passes, 65520 would
# become inf and is refused); NaN and +-Infinity are taken as they are, because gRPC's float
# fields carry them exactly and Python's json (which tritonclient writes with) spells them NaN
# and Infinity. BOOL takes true/false only, BYTES strings (JSON) or bytes (gRPC). BF16 has no
# value form: numpy has no bfloat16 to check against, so it travels as binary data only.
# Checks are vectorised where the values are already a typed array (gRPC); JSON lists are
# checked by one pass over their element types, then by numpy.
_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    dt: (int(np.iinfo(NUMPY_DTYPES[dt]).min), int(np.iinfo(NUMPY_DTYPES[dt]).max))
    for dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}
_FLOAT_LIMITS: dict[str, str] = {"FP16": "65504", "FP32": "3.4028235e+38", "FP64": "1.7976931348623157e+308"}
_PYTHON_TYPES: dict[str, frozenset[type]] = {
    **{dt: frozenset({int}) for dt in _INTEGER_RANGES},
    **{dt: frozenset({int, float}) for dt in _FLOAT_LIMITS},
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str, bytes}),
}
_ARRAY_KINDS: dict[str, str] = {
    **{dt: "iu" for dt in _INTEGER_RANGES}, **{dt: "iuf" for dt in _FLOAT_LIMITS}, "BOOL": "b"
}


def expected_value(datatype: str) -> str:
    """What the rule table lets ``datatype`` take, as error messages say it."""
    if datatype in _INTEGER_RANGES:
        lo, hi = _INTEGER_RANGES[datatype]
        return f"an integer in [{lo}, {hi}] for {datatype}"
    if datatype in _FLOAT_LIMITS:
        limit = _FLOAT_LIMITS[datatype]
        return f"a number in [-{limit}, {limit}] (or NaN, +-Infinity) for {datatype}"
    return {"BOOL": "true or false for BOOL", "BYTES": "a string for BYTES"}.get(datatype, f"no value for {datatype}")


def _spelled(value: Any) -> str:
    """A value as the client wrote it (JSON's spelling), cut short."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    elif isinstance(value, bytes):
        text = repr(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_value(name: str, datatype: str, index: int, value: Any) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"input '{name}': element {index} is {_spelled(value)}, expected {expected_value(datatype)}"
    )


def checked_values(name: str, datatype: str, values: Sequence[Any]) -> np.ndarray:
    """``values`` (flat) as a 1-D array of ``datatype``, or InvalidArgumentError naming the tensor,
    the flat index of the first value the rule table refuses, that value and what was expected."""
    if datatype not in _PYTHON_TYPES:
        raise InvalidArgumentError(
            f"input '{name}': {datatype} values cannot travel as JSON data or typed contents; send them as binary data"
        )
    if isinstance(values, np.ndarray) and values.dtype != object:
        return _checked_array(name, datatype, values.ravel())
    values = values if isinstance(values, list) else list(values)
    allowed = _PYTHON_TYPES[datatype]
    if not set(map(type, values)) <= allowed:
        index = next(i for i, v in enumerate(values) if type(v) not in allowed)
        raise _refuse_value(name, datatype, index, values[index])
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = [v.encode() if type(v) is str else v for v in values]
        return array
    if datatype == "BOOL":
        return np.array(values, dtype=np.bool_)
    if datatype in _INTEGER_RANGES:
        lo, hi = _INTEGER_RANGES[datatype]
        try:  # every int fits one of these or the value is out of range for any datatype
            array = np.array(values, dtype=np.uint64 if datatype == "UINT64" else np.int64)
        except OverflowError:
            index = next(i for i, v in enumerate(values) if not lo <= v <= hi)
            raise _refuse_value(name, datatype, index, values[index]) from None
        return _checked_array(name, datatype, array, values)
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond any float
        index = next(i for i, v in enumerate(values) if type(v) is int and abs(v) > sys.float_info.max)
        raise _refuse_value(name, datatype, index, values[index]) from None
    return _checked_array(name, datatype, array, values)


def _checked_array(name: str, datatype: str, array: np.ndarray, original: Sequence[Any] | None = None) -> np.ndarray:
    """A typed 1-D array checked against the rule table with numpy, cast to ``datatype``; a
    refusal quotes the element of ``original`` (the client's values) where given."""
    original = array if original is None else original
    if datatype == "BYTES" or array.dtype.kind not in _ARRAY_KINDS[datatype]:
        if not len(array):
            return np.empty(0, dtype=NUMPY_DTYPES[datatype])
        raise _refuse_value(name, datatype, 0, original[0])
    target = NUMPY_DTYPES[datatype]
    if datatype in _INTEGER_RANGES:
        lo, hi = _INTEGER_RANGES[datatype]
        source = np.iinfo(array.dtype)
        if source.min < lo or source.max > hi:
            bad = np.flatnonzero((array < lo) | (array > hi))
            if len(bad):
                raise _refuse_value(name, datatype, int(bad[0]), original[int(bad[0])])
        return array.astype(target, copy=False)
    if datatype in _FLOAT_LIMITS and array.dtype != target:
        with np.errstate(over="ignore"):
            cast = array.astype(target)
        bad = np.flatnonzero(np.isinf(cast) & np.isfinite(array))
        if len(bad):
            raise _refuse_value(name, datatype, int(bad[0]), original[int(bad[0])])
        return cast
    return array.astype(target, copy=False)


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


# --- the audit log's actor ------------------------------------------------------------------------

#: The HTTP header and gRPC metadata key that name who makes a management call.
ACTOR_HEADER = "x-modelserve-actor"
#: A named actor longer than this is cut (the audit log keeps one line per action).
MAX_ACTOR_CHARS = 200


def actor_of(given: str | None, peer: str, tls_subject: str | None = None) -> str:
    """Note [Audit actor]
    ~~~~~~~~~~~~~~~~~~~~
    Who made a management call, as the audit log records it (traffic/store.py, Note [Audit
    entries]), first of: the name the caller ``given`` (the ``X-Modelserve-Actor`` header, the
    ``x-modelserve-actor`` metadata, a traffic rpc's ``actor`` field), cut to 200 characters;
    ``mtls:<subject>`` when the caller presented a client certificate that mutual TLS verified;
    the ``peer`` (``http:<host>``, ``grpc:<peer>``). A named actor is the caller's claim: with
    mutual TLS the verified subject is only recorded when the caller names nobody. HTTP has no
    ``mtls:`` step: uvicorn does not hand the client certificate to the app (it implements no
    ASGI TLS extension), so an HTTP caller without the header is its address."""
    given = (given or "").strip()
    if given:
        return given[:MAX_ACTOR_CHARS]
    if tls_subject:
        return f"mtls:{tls_subject}"
    return peer


def http_actor(request: Any) -> str:
    """:func:`actor_of` for a Starlette request."""
    client = request.client.host if request.client else "unknown"
    return actor_of(request.headers.get(ACTOR_HEADER), f"http:{client}")


def grpc_actor(context: Any, given: str = "") -> str:
    """:func:`actor_of` for a gRPC call (``context``: a grpc.aio ServicerContext, or the Ray
    ingress's stand-in, which has no ``auth_context``); ``given``: the rpc's own ``actor``
    field, which comes before the metadata."""
    if not given.strip():
        for key, value in context.invocation_metadata() or ():
            if key == ACTOR_HEADER:
                given = value if isinstance(value, str) else value.decode("utf-8", "replace")
                break
    return actor_of(given, f"grpc:{context.peer()}", _tls_subject(context))


def _tls_subject(context: Any) -> str | None:
    """The verified client certificate's subject (else its common name) of a mutual-TLS call,
    e.g. ``O=Example,CN=deployer`` (RFC 2253, as gRPC writes it); None without one. gRPC core
    puts them in the call's auth context as ``x509_subject`` and ``x509_common_name``."""
    auth_context = getattr(context, "auth_context", None)
    properties = auth_context() if auth_context is not None else None
    for key in ("x509_subject", "x509_common_name"):
        values = (properties or {}).get(key)
        if values:
            value = values[0]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None
