"""The HTTP/REST frontend: the Open Inference Protocol's ``/v2`` routes, with the Triton extensions
that ``tritonclient.http`` uses, as an ASGI app (Starlette) served by uvicorn in the server's event
loop. Handlers only translate: decode, call :class:`modelserve.Runtime`, encode.

Routes (``{v}`` is a version number or a label; ``/versions/{v}`` may be left out everywhere)::

    GET  /v2/health/live | /v2/health/ready            200 = yes, 400 = no; empty body
    GET  /v2/models/{m}[/versions/{v}]/ready           200 = ready, 400 = not (unknown models too)
    GET  /v2                                           server metadata
    GET  /v2/models/{m}[/versions/{v}]                 model metadata
    GET  /v2/models/{m}[/versions/{v}]/config          model configuration (Triton's JSON form)
    GET  /v2/models/stats | /v2/models/{m}[/versions/{v}]/stats     statistics
    POST /v2/models/{m}[/versions/{v}]/infer           inference: JSON or binary tensor data
    POST /v2/repository/index                          repository index ({"ready": true} optional)
    POST /v2/repository/models/{m}/load | unload       model control (admin token)
    .../v2/models/{m}/traffic | rollout ...            traffic management (server/traffic_http.py)
    GET  /metrics                                      Prometheus exposition (404 without metrics)

Not implemented, as over gRPC: shared memory status lists no regions and unregistering succeeds
(nothing is ever registered); registering, trace and log settings, classification outputs and
shared-memory tensors answer 501. Every error is JSON ``{"error": "..."}`` with the status of
modelserve's one error table (unknown routes 404, wrong methods 405, bodies over
``--max-message-bytes`` 413, responses over it 400).

Authorisation (``Authorization: Bearer <token>``, 403 otherwise): with ``inference_token`` set,
every route but health and ``/metrics`` needs it; load/unload need ``admin_token`` when it is set,
else the inference token when that is set (management is never easier to reach than inference).

Note [Binary tensor data]: a request body is the JSON header (``Inference-Header-Content-Length``
bytes, or all of it without that header) followed by the blobs of the inputs that carry
``parameters.binary_data_size``, in input order. Python reads the JSON header; the core decodes
and checks the tensors against the version the request goes to, with the code and messages of the
gRPC path (Note [HTTP requests] in csrc/python/py_protocol.cc): binary inputs are views of the body
as uvicorn hands it over (joined once when it came in several chunks), and nothing is copied
between there and the batch gather. Binary outputs go to uvicorn as memoryviews of the output
tensors, which its h11 protocol copies once into the socket write. The blobs must add up to
exactly the tail of the body; anything else is a 400 naming the input.
``Inference-Header-Content-Length: 0`` is Triton's raw binary request (the whole body is the one
input of a one-input model, batch 1, its spec that of the version that runs; every output comes
back binary). No Content-Type is required or checked. Requests may be gzip/deflate
compressed (``Content-Encoding``); responses are never compressed.

Note [Client disconnects]: uvicorn does not cancel a handler when its client goes away; it answers
the app's next ``receive()`` with ``http.disconnect``. Once an inference request's body is read,
its handler awaits the inference and ``receive()`` side by side, and cancels the inference if the
disconnect comes first: Runtime.infer_async then takes the request out of its queue (one already
executing finishes, and its outputs are dropped). Nothing polls. uvicorn cancels handlers only
in stop(), once the grace period is over: those requests are cancelled the same way and their
clients get a 503.

Versions: a number, a label or nothing (the default) is resolved to a number before the request
is queued; that number runs and is the response's ``model_version``. A version that is neither a
number nor a label is 404 ("no version or label"), not Triton's 400: labels make any string a
possible version. The spec defines no HTTP deadline header: the request parameter ``timeout``
(microseconds) is the queue timeout and ``priority`` is passed on, as over gRPC. Sequence
parameters are accepted and ignored (no model is a sequence model); other ``triton_*`` parameters
are 400.

JSON ``data`` (flat, or nested in the tensor's shape) follows the value rule table of ``common``
(Note [Value rules]), the same one gRPC's typed contents follow: a value of the wrong type or out
of the datatype's range is a 400 naming the input, the flat index of the first bad element, the
value and what was expected; nothing is converted silently. FP16 takes JSON numbers (what
tritonclient sends with ``binary_data=False``); BF16 is binary only, as in tritonclient. The
``NaN``/``Infinity`` tokens that Python's json writes are accepted for the FP datatypes.

Tracing and payload logging (modelserve.observe): with either on, an inference request gets a
watch from the Runtime's observer (``traceparent``/``tracestate`` read from its headers; its span
is ``POST /v2/models/{m}/infer``), which the Runtime finishes; a request refused before it reaches
the Runtime (a bad body, an unknown model) is finished here with its error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import socket
import ssl
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route, Router, request_response

from .. import _core
from .._version import __version__
from ..admission import DEADLINE_HEADER, header_deadline_us
from ..errors import InternalError, InvalidArgumentError, ModelserveError, NotFoundError, UnimplementedError
from ..tensor import Tensor
from .common import (
    EXTENSIONS,
    NUMPY_DTYPES,
    ServerOptions,
    check_token,
    http_actor,
    request_options,
    tensor_from_values,
    tensor_values,
)
from .health import Health
from .runtime_api import ServingRuntime
from .settings_routes import settings_routes

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["create_app", "HttpFrontend"]

log = logging.getLogger("modelserve.server.http")
_protocol = _core.protocol

_HEADER_LENGTH = "inference-header-content-length"
_JSON = "application/json"
_BINARY = "application/octet-stream"


class _HttpError(ModelserveError):
    """A refusal with an HTTP status of its own, outside the shared error table (413, 415)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


# --- responses ----------------------------------------------------------------------------------


class _Reply:
    """An ASGI response whose body is a list of parts (bytes or flat byte memoryviews), sent one
    after the other so that output tensors go out without being joined first."""

    __slots__ = ("status", "parts", "headers")

    def __init__(self, status: int, parts: Sequence[Any] = (), content_type: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.parts = parts
        self.headers = [(b"content-length", str(sum(len(p) for p in parts)).encode())]
        if content_type:
            self.headers.append((b"content-type", content_type.encode()))
        for key, value in (headers or {}).items():
            self.headers.append((key.lower().encode(), str(value).encode("latin-1")))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        last = len(self.parts) - 1
        if last < 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})


def _json_reply(value: Any, status: int = 200) -> _Reply:
    return _Reply(status, [json.dumps(value, separators=(",", ":")).encode()], _JSON)


def _error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, [json.dumps({"error": message}).encode()], _JSON, headers)


def _status_reply(ok: bool) -> _Reply:
    # Health answers: the status code is the answer (Triton sends 400 for "no").
    return _Reply(200 if ok else 400)


async def _route_error(request: Request, exc: Exception) -> _Reply:
    """Starlette's own refusals (no route: 404, wrong method: 405) as JSON errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return _error_reply(
            405, f"method {request.method} is not allowed for {request.url.path}; allowed: {allowed}", exc.headers
        )
    if exc.status_code == 404:
        return _error_reply(404, f"no route for {request.method} {request.url.path}")
    return _error_reply(exc.status_code, exc.detail)


# --- request decoding ---------------------------------------------------------------------------


def _flatten(data: Any, shape: Any, name: str) -> list[Any]:
    """JSON ``data``, flat or nested in the tensor's shape, as a flat row-major list. Nested data
    must have the shape exactly: a ragged or differently nested list is refused, naming the first
    list whose length is off, though its total count may be right."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    dims = list(shape) if isinstance(shape, list) else []
    out: list[Any] = []

    def walk(items: list[Any], depth: int, path: str) -> None:
        want = dims[depth] if depth < len(dims) else None
        if want is not None and len(items) != want:
            raise InvalidArgumentError(
                f"input '{name}': data{path} has {len(items)} elements, the shape {dims} needs {want} in dimension {depth}"
            )
        for i, item in enumerate(items):
            if isinstance(item, list):
                if depth + 1 >= len(dims):
                    raise InvalidArgumentError(f"input '{name}': data{path}[{i}] is nested deeper than the shape {dims}")
                walk(item, depth + 1, f"{path}[{i}]")
            elif depth + 1 < len(dims):
                raise InvalidArgumentError(
                    f"input '{name}': data{path}[{i}] is {item!r}, a list of {dims[depth + 1]} was expected for the shape {dims}"
                )
            else:
                out.append(item)

    walk(data, 0, "")
    return out


def _parameters(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidArgumentError(f"{what}: 'parameters' must be a JSON object, got {type(params).__name__}")
    return params


def _flag(params: Mapping[str, Any], key: str, default: bool, what: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what}: parameter '{key}' must be true or false, got {value!r}")
    return value


def _decode_input(spec: Any, tail_start: int, tail_size: int, offset: int, what: str) -> tuple[tuple[Any, ...], int]:
    """One ``inputs[i]`` entry as its description for ``_core.protocol.http_request`` (Note [HTTP
    requests] in csrc/python/py_protocol.cc): (name, datatype, shape, data), data the (offset,
    size) of its binary data in the body or the Tensor its JSON data makes; and the bytes of the
    binary tail it used. The core checks the datatype, shape and binary data at submit."""
    if not isinstance(spec, dict):
        raise InvalidArgumentError(f"{what}: each of 'inputs' must be a JSON object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"{what}: an input has no 'name' string")
    where = f"{what} input '{name}'"
    if not isinstance(datatype, str):
        raise InvalidArgumentError(f"{where}: 'datatype' must be a string such as \"FP32\", got {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgumentError(f"{where}: 'shape' must be a list of integers, got {shape!r}")
    params = _parameters(spec, where)
    if "shared_memory_region" in params:
        raise UnimplementedError(f"{where}: names a shared memory region; modelserve does not implement shared "
                              "memory, send the data as binary data or JSON")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise InvalidArgumentError(f"{where}: has both 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgumentError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > tail_size:
            raise InvalidArgumentError(
                f"{where}: binary_data_size {size} goes past the end of the body "
                f"({tail_size - offset} bytes of binary data left)"
            )
        if any(d < -(1 << 63) or d >= 1 << 63 for d in shape):  # what the core's int64 shape holds
            raise InvalidArgumentError(f"{where}: shape {shape} has a dimension outside the int64 range")
        return (name, datatype, shape, (tail_start + offset, size)), size
    if "data" not in spec:
        raise InvalidArgumentError(f"{where}: has neither 'data' nor parameters.binary_data_size")
    if datatype == "BF16":  # numpy has no bfloat16 to check JSON numbers against (as in tritonclient)
        raise InvalidArgumentError(f"{where}: BF16 data cannot travel as JSON; send it as binary data")
    try:
        # The value rules of common (Note [Value rules]) check every element's type and range.
        tensor = tensor_from_values(name, datatype, shape, _flatten(spec["data"], shape, name))
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{what}: {e}") from None
    return (name, datatype, shape, tensor), 0


class _InferRequest:
    """A decoded inference request's header: the inputs as ``_core.protocol.http_request``
    describes them, plus how to encode the reply."""

    __slots__ = ("id", "inputs", "single_input", "outputs", "binary", "binary_default", "options", "parameters")

    def __init__(self) -> None:
        self.id: str | None = None
        self.inputs: list[tuple[Any, ...]] = []  # (name, datatype, shape, (offset, size) or Tensor)
        self.single_input = False  # Triton's raw binary request: the body is the one input
        self.outputs: list[str] = []  # requested outputs, in order; [] = all
        self.binary: dict[str, bool] = {}  # per requested output
        self.binary_default = False
        self.options: dict[str, int] = {}
        self.parameters: Mapping[str, Any] = {}  # the request's parameters (a traffic policy's sticky key)

    def native(self, body: bytes) -> Any:
        """The request as the core decodes it (a ``_core.protocol.ParsedInferRequest``)."""
        return _protocol.http_request(body, self.inputs, outputs=self.outputs, single_input=self.single_input)


def _decode_infer(body: bytes, header_length: str | None, what: str) -> _InferRequest:
    req = _InferRequest()
    length = len(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidArgumentError(
                f"{what}: Inference-Header-Content-Length {header_length!r} is not an integer"
            ) from None
        if length < 0 or length > len(body):
            raise InvalidArgumentError(
                f"{what}: Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes"
            )
        if length == 0:  # Triton's raw binary request: the input's spec comes from the model
            req.single_input = True
            req.binary_default = True
            return req
    try:
        header = json.loads(body if length == len(body) else memoryview(body)[:length].tobytes())
    except (ValueError, RecursionError) as e:
        raise InvalidArgumentError(f"{what}: the request header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise InvalidArgumentError(f"{what}: the request header must be a JSON object")
    if "id" in header:
        if not isinstance(header["id"], str):
            raise InvalidArgumentError(f"{what}: 'id' must be a string, got {header['id']!r}")
        req.id = header["id"]
    params = _parameters(header, what)
    req.binary_default = _flag(params, "binary_data_output", False, what)
    req.options = request_options(params, what)
    req.parameters = params

    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgumentError(f"{what}: 'inputs' must be a non-empty list")
    tail = len(body) - length
    used = 0
    for spec in inputs:
        described, size = _decode_input(spec, length, tail, used, what)
        req.inputs.append(described)
        used += size
    if used != tail:
        raise InvalidArgumentError(
            f"{what}: the body carries {tail} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {used}"
        )

    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgumentError(f"{what}: 'outputs' must be a list")
    for spec in outputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"{what}: each of 'outputs' must be an object with a 'name' string")
        if name in req.binary:
            raise InvalidArgumentError(f"{what}: output '{name}' is requested more than once")
        out_params = _parameters(spec, f"{what} output '{name}'")
        if out_params.get("classification") or "shared_memory_region" in out_params:
            feature = "classification" if out_params.get("classification") else "shared memory"
            raise UnimplementedError(f"{what} output '{name}': {feature} is not supported by modelserve")
        req.binary[name] = _flag(out_params, "binary_data", req.binary_default, f"{what} output '{name}'")
        req.outputs.append(name)
    return req


def _decompress(body: bytes, encoding: str, limit: int, what: str) -> bytes:
    """A gzip or zlib ("deflate") body, refused past ``limit`` bytes unpacked (no zip bombs)."""
    d = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # either header, detected
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgumentError(f"{what}: the {encoding} body cannot be decompressed: {e}") from None
    if len(out) > limit:
        raise _HttpError(
            413, f"{what}: the {encoding} body unpacks to more than the limit of {limit} bytes; "
            "raise the limit with --max-message-bytes",
        )
    if not d.eof:
        raise InvalidArgumentError(f"{what}: the {encoding} body is truncated")
    return out


# --- response encoding --------------------------------------------------------------------------


def _flat_bytes(tensor: Tensor) -> memoryview:
    if tensor.nbytes == 0:
        return memoryview(b"")  # memoryview.cast refuses shapes with a zero in them
    view = memoryview(tensor)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _encode_infer(
    model: str, version: str, req: _InferRequest, outputs: Mapping[str, Tensor], limit: int
) -> _Reply:
    what = f"model '{model}' version {version}"
    names = req.outputs or list(outputs)
    entries, blobs = [], []
    for name in names:
        tensor = outputs[name]
        if tensor.device.startswith("cuda:"):  # backends return host memory; never the client's fault
            raise InternalError(f"{what} output '{name}' is in {tensor.device} memory; HTTP needs host memory")
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        # numpy has no bfloat16 values to write as JSON numbers: BF16 always goes binary.
        if req.binary.get(name, req.binary_default) or tensor.datatype == "BF16":
            blob = _flat_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor_values(tensor)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version}
    if req.id is not None:
        response["id"] = req.id
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":")).encode()
    total = len(header) + sum(len(b) for b in blobs)
    if total > limit:
        raise InvalidArgumentError(
            f"{what}: the response of {total} bytes is larger than the limit of {limit} bytes; "
            "raise the limit with --max-message-bytes"
        )
    if not blobs:
        return _Reply(200, [header], _JSON)
    return _Reply(200, [header, *blobs], _BINARY, {"Inference-Header-Content-Length": str(len(header))})


_DATA_TYPES = {dt: "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}" for dt in NUMPY_DTYPES}


def _triton_config(config: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """The effective configuration in Triton's ModelConfig JSON form (what tools reading
    ``/config`` expect), with modelserve's own form under ``"modelserve"``."""
    out: dict[str, Any] = {
        "name": config["name"],
        "platform": backend,
        "backend": backend,
        "max_batch_size": config["max_batch_size"],
        "input": [
            {"name": t["name"], "data_type": _DATA_TYPES.get(t["datatype"], "TYPE_INVALID"),
             "format": "FORMAT_NONE", "dims": list(t["shape"])}
            for t in config["inputs"]
        ],
        "output": [
            {"name": t["name"], "data_type": _DATA_TYPES.get(t["datatype"], "TYPE_INVALID"),
             "dims": list(t["shape"]), "label_filename": ""}
            for t in config["outputs"]
        ],
    }
    policy = config.get("version_policy") or {}
    if policy.get("latest"):
        out["version_policy"] = {"latest": {"num_versions": policy["latest"]}}
    elif policy.get("all"):
        out["version_policy"] = {"all": {}}
    elif policy.get("specific"):
        out["version_policy"] = {"specific": {"versions": policy["specific"]}}
    batching = config.get("dynamic_batching")
    if batching:
        out["dynamic_batching"] = {
            "preferred_batch_size": batching.get("preferred_batch_sizes", []),
            "max_queue_delay_microseconds": batching.get("max_queue_delay_us", 0),
            "priority_levels": batching.get("priority_levels", 1),
            "default_priority_level": batching.get("default_priority_level", 0),
            "default_queue_policy": {
                "max_queue_size": batching.get("max_queue_size", 0),
                "default_timeout_microseconds": batching.get("default_timeout_us", 0),
            },
        }
    instances = config.get("instances") or {}
    kind = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}.get(instances.get("device"), "KIND_AUTO")
    out["instance_group"] = [{"count": instances.get("count", 1), "kind": kind}]
    out["parameters"] = {k: {"string_value": v if isinstance(v, str) else json.dumps(v)}
                         for k, v in (config.get("parameters") or {}).items()}
    out["modelserve"] = dict(config)
    return out


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": int(count), "ns": int(ns)}


def _triton_statistics(stats: Mapping[str, Any]) -> dict[str, Any]:
    """One version's core statistics in Triton's ModelStatistics JSON form."""
    success = stats.get("success_count", 0)
    request_hist = stats.get("request_hist") or {}
    queue_hist = stats.get("queue_hist") or {}
    return {
        "name": stats["name"],
        "version": stats["version"],
        "last_inference": int(stats.get("last_inference_ms", 0)),
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "inference_stats": {
            "success": _duration(success, request_hist.get("sum_ns", 0)),
            "fail": _duration(stats.get("failure_count", 0), 0),
            "queue": _duration(queue_hist.get("count", success), stats.get("queue_ns", 0)),
            "compute_input": _duration(success, stats.get("compute_input_ns", 0)),
            "compute_infer": _duration(success, stats.get("compute_infer_ns", 0)),
            "compute_output": _duration(success, stats.get("compute_output_ns", 0)),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": int(size),
                "compute_input": _duration(b.get("count", 0), b.get("compute_input_ns", 0)),
                "compute_infer": _duration(b.get("count", 0), b.get("compute_infer_ns", 0)),
                "compute_output": _duration(b.get("count", 0), b.get("compute_output_ns", 0)),
            }
            for size, b in sorted((stats.get("batch_stats") or {}).items())
        ],
        "failures": dict(stats.get("failures") or {}),
        "memory_usage": [],
    }


# --- the app ------------------------------------------------------------------------------------


async def _until_disconnect(receive: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(coro: Any, receive: Callable[[], Any]) -> Any:
    """Awaits ``coro`` (the request body already read) in the handler's own task; cancels it and
    raises ClientDisconnect if the client goes away first (Note [Client disconnects]). One task
    watches ``receive()``; the inference itself needs none."""
    handler = asyncio.current_task()
    assert handler is not None
    state = {"active": True, "gone": False}

    def disconnected(watch: asyncio.Future) -> None:
        # Scheduled when the watch ends; the handler may have moved on by then (active False).
        if state["active"] and not watch.cancelled() and watch.exception() is None:
            state["gone"] = True
            handler.cancel()

    watch = asyncio.ensure_future(_until_disconnect(receive))
    watch.add_done_callback(disconnected)
    try:
        return await coro
    except asyncio.CancelledError:
        if not state["gone"]:
            raise  # uvicorn's stop(): _endpoint answers 503
        uncancel = getattr(handler, "uncancel", None)  # Python 3.11+: this cancel is handled here
        if uncancel is not None:
            uncancel()
        raise ClientDisconnect() from None
    finally:
        state["active"] = False
        watch.cancel()


class _Api:
    """The handlers; each takes a Starlette Request and returns a _Reply."""

    def __init__(
        self, runtime: ServingRuntime, options: ServerOptions, health: Health, metrics: Metrics | None
    ) -> None:
        self.runtime = runtime
        self.options = options
        self.health = health
        self.metrics = metrics
        # Tracing and payload logging (modelserve.observe): None when both are off.
        self.observer = runtime.observer if runtime.observer.active else None

    # --- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _target(request: Request) -> tuple[str, str | None]:
        model = request.path_params["model"]
        if "\x00" in model:
            raise InvalidArgumentError(f"model name {model!r} contains a NUL byte")
        return model, request.path_params.get("version")

    @staticmethod
    def _what(model: str, version: str | None) -> str:
        return f"model '{model}'" + (f" version {version}" if version is not None else "")

    async def _body(self, request: Request, what: str) -> bytes:
        """The request body, refused with 413 past ``max_message_bytes`` (checked against
        Content-Length before anything is read, then while reading) and decompressed."""
        limit = self.options.max_message_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _HttpError(
                413, f"{what}: the request body of {int(declared)} bytes is larger than the limit of "
                f"{limit} bytes; raise the limit with --max-message-bytes",
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HttpError(
                    413, f"{what}: the request body is larger than the limit of {limit} bytes "
                    f"({size} bytes received so far); raise the limit with --max-message-bytes",
                )
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            return _decompress(body, encoding, limit, what)
        if encoding not in ("", "identity"):
            raise _HttpError(415, f"{what}: Content-Encoding '{encoding}' is not supported (gzip, deflate)")
        return body

    async def _json_body(self, request: Request, what: str) -> dict[str, Any]:
        body = await self._body(request, what)
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise InvalidArgumentError(f"{what}: the request body is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"{what}: the request body must be a JSON object")
        return value

    # --- health ----------------------------------------------------------------------------------
    async def live(self, request: Request) -> _Reply:
        return _status_reply(self.health.live())

    async def ready(self, request: Request) -> _Reply:
        return _status_reply(self.health.ready())

    async def model_ready(self, request: Request) -> _Reply:
        model, version = self._target(request)
        return _status_reply(self.health.model_ready(model, version))

    # --- metadata --------------------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> _Reply:
        return _json_reply({"name": "modelserve", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> _Reply:
        model, version = self._target(request)
        return _json_reply(self.runtime.model_metadata(model, version))

    async def model_config(self, request: Request) -> _Reply:
        model, version = self._target(request)
        config = self.runtime.model_config(model, version)
        backend = config.get("backend") or self.runtime.model_metadata(model, version)["platform"]
        return _json_reply(_triton_config(config, backend))

    async def statistics(self, request: Request) -> _Reply:
        model = request.path_params.get("model")
        if model is not None:
            model, version = self._target(request)
        else:
            version = None
        stats = self.runtime.model_statistics(model, version)
        return _json_reply({"model_stats": [_triton_statistics(s) for s in stats]})

    # --- repository ------------------------------------------------------------------------------
    async def repository_index(self, request: Request) -> _Reply:
        body = await self._json_body(request, "repository index")
        ready = _flag(body, "ready", False, "repository index")
        index = await asyncio.to_thread(self.runtime.repository_index, ready)
        # Models that are not loaded have no version: the key is left out, as Triton does.
        return _json_reply([{k: v for k, v in e.items() if not (k == "version" and v == "")} for e in index])

    # Load and unload are audited by the runtime (Note [Audit entries] in traffic/store.py); a
    # request refused here, before the runtime is called, is recorded as the action's failure.
    async def load(self, request: Request) -> _Reply:
        actor = http_actor(request)
        with self.runtime.traffic.refusals(actor, "load", request.path_params["model"]):
            model, _ = self._target(request)
            params = _parameters(await self._json_body(request, f"load of model '{model}'"), f"load of model '{model}'")
            overrides = sorted(k for k in params if k == "config" or k.startswith("file:"))
            if overrides:
                raise UnimplementedError(
                    f"load of model '{model}': overriding {', '.join(overrides)} is not supported; "
                    "change the model repository instead"
                )
        await asyncio.to_thread(self.runtime.load_model, model, actor=actor)
        return _Reply(200)

    async def unload(self, request: Request) -> _Reply:
        actor = http_actor(request)
        with self.runtime.traffic.refusals(actor, "unload", request.path_params["model"]):
            model, _ = self._target(request)
            # unload_dependents is accepted and has nothing to act on: no model depends on another.
            _flag(_parameters(await self._json_body(request, f"unload of model '{model}'"), "unload"),
                  "unload_dependents", False, f"unload of model '{model}'")
        await asyncio.to_thread(self.runtime.unload_model, model, actor=actor)
        return _Reply(200)

    # --- inference -------------------------------------------------------------------------------
    async def infer(self, request: Request) -> _Reply:
        model, version = self._target(request)
        if self.observer is None:
            return await self._infer(request, model, version, None)
        watch = self.observer.watch("http", f"POST /v2/models/{model}/infer", model, request.headers.get)
        try:  # a refusal before the Runtime finishes the watch is recorded too
            return await self._infer(request, model, version, watch)
        except BaseException as e:
            if watch is not None:
                watch.finish(e)
            raise

    async def _infer(self, request: Request, model: str, version: str | None, watch: Any) -> _Reply:
        what = self._what(model, version)
        self.health.check_accepting()
        body = await self._body(request, what)
        req = _decode_infer(body, request.headers.get(_HEADER_LENGTH), what)
        deadline_us = header_deadline_us(request.headers.get(DEADLINE_HEADER), what)
        if deadline_us is not None:  # the earlier of the header and the timeout parameter wins
            req.options["timeout_us"] = min(req.options.get("timeout_us") or deadline_us, deadline_us)
        # The version (number, label, default or the traffic policy's choice) is resolved to a
        # number once, before the request is queued: that number is what runs and what the
        # response reports, whatever swap happens meanwhile. A policy's sticky key is read from
        # the request parameters, then the headers.
        routing = collections.ChainMap(req.parameters, request.headers)
        parsed = req.native(body)
        if self.runtime.native_requests and not self.runtime.mirrors(model, version):
            # The core decodes, checks and enqueues the tensors (Note [HTTP requests]).
            pending, _, number = await _cancel_on_disconnect(
                self.runtime.infer_parsed_async(model, parsed, what, version=version, routing=routing, watch=watch,
                                                **req.options),
                request.receive,
            )
            outputs = pending.outputs(as_numpy=False)
        else:  # a shadow compares the outputs, Ray's ingress forwards them: Python tensors
            inputs, names = _protocol.decode(parsed, what, **self._single_input_spec(req, model, version))
            served = await _cancel_on_disconnect(
                self.runtime.infer_routed_async(
                    model, inputs, version=version, outputs=names or None, as_numpy=False, routing=routing,
                    watch=watch, **req.options
                ),
                request.receive,
            )
            number, outputs = served.version, served.outputs
        return _encode_infer(model, str(number), req, outputs, self.options.max_message_bytes)

    def _single_input_spec(self, req: _InferRequest, model: str, version: str | None) -> dict[str, Any]:
        """What ``_core.protocol.decode`` needs to know of the model for a raw binary request."""
        if not req.single_input:
            return {}
        batched = self.runtime.model_config(model, version)["max_batch_size"] > 0
        specs = self.runtime.model_metadata(model, version)["inputs"]
        inputs = [(t["name"], t["datatype"], t["shape"][1:] if batched else t["shape"]) for t in specs]
        return {"model_inputs": inputs, "batched": batched}

    # --- metrics and unsupported extensions ------------------------------------------------------
    async def prometheus(self, request: Request) -> _Reply:
        if self.metrics is None:
            return _error_reply(404, "metrics are not enabled on this server")
        body, content_type = self.metrics.render()
        return _Reply(200, [body], content_type)


def _unsupported(feature: str, hint: str = "") -> Callable[[Request], Any]:
    async def handler(request: Request) -> _Reply:
        raise UnimplementedError(f"modelserve does not implement {feature}{hint}")

    return handler


async def _shm_status(request: Request) -> _Reply:
    region = request.path_params.get("region")
    if region is not None:
        raise NotFoundError(f"no shared memory region '{region}' (modelserve registers none)")
    return _json_reply([])


async def _shm_unregister(request: Request) -> _Reply:
    return _Reply(200)  # nothing is ever registered, so nothing stays registered


def _endpoint(handler: Callable[[Request], Any], check: Callable[[Request], None] | None = None) -> Callable:
    """Wraps a handler: authorisation first, then every failure as a JSON error reply."""

    async def endpoint(request: Request) -> _Reply:
        try:
            if check is not None:
                check(request)
            return await handler(request)
        except ModelserveError as e:
            if e.http_status == 500:  # a backend raised: worth a line; refusals are the client's
                log.warning("%s %s: %s", request.method, request.url.path, e)
            headers = {"Connection": "close"} if e.http_status == 413 else None
            retry_after = getattr(e, "retry_after_s", None)  # Note [Admission control]
            if retry_after is not None:
                headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
            return _error_reply(e.http_status, str(e), headers)
        except asyncio.CancelledError:
            # Only uvicorn cancels handlers: stop() when its grace period is over. The queued
            # request is cancelled already (_cancel_on_disconnect); the client hears why.
            return _error_reply(503, "the server shut down before the request finished", {"Connection": "close"})
        except ClientDisconnect:  # nobody reads this answer; uvicorn drops it
            log.debug("%s %s: the client disconnected", request.method, request.url.path)
            return _error_reply(499, "the client disconnected")
        except Exception as e:  # a bug here or in a backend: answer, log, keep serving
            log.exception("%s %s failed", request.method, request.url.path)
            return _error_reply(500, f"internal error: {type(e).__name__}: {e}")

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def _infer_path_params(path: str) -> dict[str, str] | None:
    """The path parameters of ``/v2/models/{model}[/versions/{version}]/infer``, or None."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer" and parts[3]:
        return {"model": parts[3]}
    if (len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions"
            and parts[6] == "infer" and parts[3] and parts[5]):
        return {"model": parts[3], "version": parts[5]}
    return None


class _Router(Router):
    """Starlette's router, except that ``POST .../infer``, the one hot route, is found by
    splitting the path rather than by trying every route's pattern in turn. Everything else
    (other routes, 404, 405) is Starlette's."""

    def __init__(self, routes: list[Route], infer: Callable[[Request], Any]) -> None:
        super().__init__(routes=routes, redirect_slashes=False)  # /v2/ is an unknown route, not a redirect
        self._infer = request_response(infer)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            params = _infer_path_params(path)
            if params is not None:
                scope["path_params"] = {**scope.get("path_params", {}), **params}
                await self._infer(scope, receive, send)
                return
        await super().app(scope, receive, send)


def create_app(
    runtime: ServingRuntime, options: ServerOptions, health: Health, metrics: Metrics | None = None
) -> Starlette:
    """The ASGI app serving ``runtime`` over the Open Inference Protocol's HTTP routes."""
    api = _Api(runtime, options, health, metrics)

    def authorised(token: str | None, what: str) -> Callable[[Request], None] | None:
        if token is None:
            return None
        return lambda request: check_token(token, request.headers.get("authorization"), what)

    infer_auth = authorised(options.inference_token, "inference")
    meta_auth = authorised(options.inference_token, "metadata")
    # Management is never easier to reach than inference: without an admin token, the inference
    # token guards load/unload too.
    admin_auth = authorised(options.admin_token or options.inference_token, "repository load/unload")

    def route(path: str, handler: Callable, methods: list[str], check: Callable | None = None) -> Route:
        return Route(path, _endpoint(handler, check), methods=methods)

    versioned = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    routes = [
        route("/v2/health/live", api.live, ["GET"]),
        route("/v2/health/ready", api.ready, ["GET"]),
        route("/v2", api.server_metadata, ["GET"], meta_auth),
        route("/v2/models/stats", api.statistics, ["GET"], meta_auth),
        route("/v2/repository/index", api.repository_index, ["POST"], meta_auth),
        route("/v2/repository/models/{model}/load", api.load, ["POST"], admin_auth),
        route("/v2/repository/models/{model}/unload", api.unload, ["POST"], admin_auth),
        route("/metrics", api.prometheus, ["GET"]),
    ]
    from .traffic_http import traffic_routes

    routes += traffic_routes(api, route, meta_auth, authorised(options.admin_token or options.inference_token,
                                                              "traffic management"))
    for base in versioned:
        routes += [
            route(base, api.model_metadata, ["GET"], meta_auth),
            route(base + "/ready", api.model_ready, ["GET"]),
            route(base + "/config", api.model_config, ["GET"], meta_auth),
            route(base + "/stats", api.statistics, ["GET"], meta_auth),
            route(base + "/infer", api.infer, ["POST"], infer_auth),
        ]
    # Shared memory: no region is ever registered (status: none, unregister: done, register: 501).
    for prefix, feature in (("/v2/systemsharedmemory", "system shared memory"),
                            ("/v2/cudasharedmemory", "CUDA shared memory")):
        register = _unsupported(feature, "; send tensors as binary data")
        routes += [
            route(prefix + "/status", _shm_status, ["GET"], meta_auth),
            route(prefix + "/region/{region}/status", _shm_status, ["GET"], meta_auth),
            route(prefix + "/unregister", _shm_unregister, ["POST"], meta_auth),
            route(prefix + "/region/{region}/unregister", _shm_unregister, ["POST"], meta_auth),
            route(prefix + "/region/{region}/register", register, ["POST"], meta_auth),
        ]
    for path, feature in (("/v2/trace/setting", "trace settings"), ("/v2/models/{model}/trace/setting", "trace settings"),
                          ("/v2/logging", "log settings")):
        routes.append(route(path, _unsupported(feature), ["GET", "POST"], meta_auth))

    routes += [route(path, handler, methods, admin_auth if "PATCH" in methods else meta_auth)
               for path, handler, methods in settings_routes(runtime)]
    from .openai_http import generate_routes, openai_routes  # generative models (openai_http.py)

    routes += openai_routes(runtime, api._json_body, infer_auth)
    routes += generate_routes(runtime, api._json_body, route, infer_auth)
    app = Starlette(exception_handlers={HTTPException: _route_error})
    app.router = _Router(routes, _endpoint(api.infer, infer_auth))
    return app


# --- the server ---------------------------------------------------------------------------------


class _UvicornServer(uvicorn.Server):
    """uvicorn without its signal handlers (the server app owns SIGTERM/SIGINT), and with an event
    set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.started_event.set()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket for ``host:port`` (port 0: a free one). Bound here rather than by
    uvicorn, whose bind failure calls sys.exit inside the event loop."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then, and
    # without it a reply written in parts waits out the client's delayed ACK (40 ms).
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpFrontend:
    """The HTTP server: :func:`create_app` under uvicorn, in the running event loop (the gRPC
    server's), on ``options.host:options.http_port`` with TLS (and mutual TLS) as configured."""

    def __init__(
        self, runtime: ServingRuntime, options: ServerOptions, health: Health, metrics: Metrics | None = None
    ) -> None:
        self.options = options
        self.app = create_app(runtime, options, health, metrics)
        self.port: int | None = None
        self._server: _UvicornServer | None = None
        self._task: asyncio.Task | None = None

    def _config(self) -> uvicorn.Config:
        o = self.options
        tls: dict[str, Any] = {}
        if o.tls_cert is None and (o.tls_key is not None or o.tls_client_ca is not None):
            raise ValueError("TLS: tls_key and tls_client_ca need tls_cert")
        if o.tls_cert is not None:
            tls = {"ssl_certfile": str(o.tls_cert), "ssl_keyfile": str(o.tls_key) if o.tls_key else None}
            if o.tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(o.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return uvicorn.Config(
            self.app,
            http="httptools",  # a dependency: ~2x the requests/s of h11 on the HTTP benchmark
            log_config=None,  # logging is configured by the server app
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            **tls,
        )

    async def start(self) -> int:
        """Starts serving; returns the bound port."""
        if self._task is not None:
            raise RuntimeError("HttpFrontend.start() was already called")
        config = self._config()
        config.load()  # TLS files are read now, so a bad one fails start() itself
        sock = _bind(self.options.host, self.options.http_port)
        server = _UvicornServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="modelserve-http")
        started = asyncio.create_task(server.started_event.wait())
        await asyncio.wait((task, started), return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            sock.close()
            task.result()  # raises why it stopped
            raise RuntimeError("the HTTP server stopped during start-up")
        self._server, self._task = server, task
        self.port = server.servers[0].sockets[0].getsockname()[1]
        log.debug("HTTP on %s:%d%s", self.options.host, self.port, " (TLS)" if self.options.tls_cert else "")
        return self.port

    async def stop(self, grace: float) -> None:
        """Stops listening, lets requests in flight finish for up to ``grace`` seconds, then
        cancels the rest (their queued inference requests are cancelled with them)."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(0.0, grace)
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server = self._task = None
