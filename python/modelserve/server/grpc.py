"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), plus the standard
``grpc.health.v1.Health`` service, on ``grpc.aio``.

::

    frontend = GrpcFrontend(runtime, ServerOptions(grpc_port=0), Health(runtime))
    port = await frontend.start()       # the bound port (0 picks a free one)
    ...
    await frontend.stop(grace=5.0)

The handlers only translate: decode the request, call :class:`modelserve.Runtime`, encode the
answer. Every :class:`~modelserve.errors.ModelserveError` becomes the gRPC status of its
``grpc_code`` with its message; anything else is INTERNAL (and logged with its traceback).
Protocol facts: ``../shared/spec/open-inference-protocol.md``. The decisions this module takes:

Message size (``ServerOptions.max_message_bytes``, ``--max-message-bytes``, default 64 MiB).
    gRPC refuses a message over its own ``grpc.max_receive_message_length`` before any handler
    runs, with a text of its own that names no flag. So gRPC's receive limit is set to protobuf's
    ceiling (2 GiB - 1, what tritonclient and Triton use), and every request deserializer checks
    the size of the raw message itself: a request over the limit gets RESOURCE_EXHAUSTED saying
    it was the server's receive limit, the message's size, the limit and ``--max-message-bytes``
    (and the model, read from the message's top-level fields without decoding it). The size is
    the decompressed one when the client compressed the message.
    The price: a request up to 2 GiB is received in full before it is refused (the same bound
    Triton always runs with); the limit still keeps such a request from being decoded, queued or
    run. An inference response over the limit is refused the same way (RESOURCE_EXHAUSTED, the
    server's send limit, the size); gRPC's own send limit is set to ours as a backstop for the
    other responses.

The native request path (Note [Native request path] in csrc/protocol/infer_codec.h).
    ModelInfer and ModelStreamInfer take the request's serialized bytes: the core parses them
    (``_core.protocol.parse``: every field, unknown ones skipped as protobuf does, a wire-format
    error named by field path and byte), Python reads only the model, version and parameters to
    apply the request options and the traffic policy, and the routed version's engine decodes,
    checks and enqueues the rest in one native call: raw inputs stay views of the request's bytes,
    typed contents are decoded into pooled buffers through the value rules. The core encodes the
    response into the one bytes object gRPC sends (one copy of each output). A request that a
    shadow may mirror (its outputs are compared), and every request through Ray's ingress, has
    the core decode and check its tensors the same way into Python objects instead
    (``_core.protocol.decode``, ``_infer_decoded``) and goes through the Python Runtime API. The checks, their order and their messages are recorded in
    tests/data/bad_infer_requests.json and replayed by tests/test_grpc_corpus.py.

Versions.
    ``model_version`` "" means the model's default version; numbers and labels are passed to the
    Runtime. The version string is resolved to a number before the request is queued, and that
    number is what runs and what the response's ``model_version`` reports. A version that is
    neither a number nor a label is NOT_FOUND ("no version or label"), not INVALID_ARGUMENT as in
    Triton, because labels make any string a possible version.

Deadlines, priorities, cancellation.
    Request parameters ``priority`` (uint64_param from tritonclient, int64_param accepted) and
    ``timeout`` (int64_param, microseconds) go to the Runtime. The call's gRPC deadline becomes the
    request's queue timeout when it is shorter than ``timeout`` or none is given, so a request whose
    client has given up expires in the queue instead of running. A cancelled call cancels its
    handler task, which is awaiting ``Runtime.infer_async`` directly: that removes the request from
    its queue. Timeouts above 2^40 us (12.7 days) are capped there, as "no timeout" in practice.
    ``sequence_id``/``sequence_start``/``sequence_end`` are accepted and ignored (no model is a
    sequence model); other ``triton_*`` parameters than ``triton_enable_empty_final_response`` are
    INVALID_ARGUMENT, as in Triton.

Streaming (ModelStreamInfer).
    Requests on one stream run concurrently (so they batch); each response is written when it is
    ready, with the request ``id`` and ``triton_final_response: true``, so clients correlate by
    id, not order. A failed request is answered in-band (``error_message``, with the request id
    appended when there is one) and the stream stays open, unless the call carries the metadata
    ``triton_grpc_error: true``: then the first error ends the stream with its gRPC status.
    A stream holds at most ``ServerOptions.max_stream_requests`` (``--max-stream-requests``,
    default 64) requests read and not yet answered; at that cap the handler reads no further
    message until a response has been written, so gRPC stops reading the stream and HTTP/2 flow
    control pushes back on the client. Nothing is refused or lost: the client's sends wait.
    64 lets one stream fill a batch of up to 64 while bounding what a stream holds in memory.

Typed contents (``contents``).
    Each datatype reads its own field only (spec 1.5; FP16 and BF16 have none) and every value
    passes the value rule table of ``common`` (Note [Value rules]): ``uint_contents`` 300 for
    UINT8 or ``int_contents`` -129 for INT8 is INVALID_ARGUMENT naming the input, the flat index
    of the first bad element, the value and the expected range. NaN and infinities in
    ``fp32_contents``/``fp64_contents`` are taken as they are (the fields carry them exactly).

Tracing and payload logging (modelserve.observe).
    With either on, ModelInfer and ModelStreamInfer ask the Runtime's observer for a watch per
    request, reading ``traceparent``/``tracestate`` from the call's metadata, and hand it to the
    Runtime, which finishes it; a request refused before it reaches the Runtime (an unknown model
    or version, a bad parameter) is finished here with its error. Spans are named after the rpc
    and the model (``ModelInfer mlp``).

Health.
    ServerLive, ServerReady and ModelReady answer a boolean with status OK, always (an unknown
    model is ``ready: false``). ``grpc.health.v1.Health``: service "" and
    ``inference.GRPCInferenceService`` are SERVING while the server is ready (Health.ready()),
    NOT_SERVING otherwise; other names are NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch).

Authorisation (bearer tokens in the ``authorization`` metadata, ``common.check_token``).
    With ``inference_token`` set, every rpc but the health ones needs it. RepositoryModelLoad and
    RepositoryModelUnload need ``admin_token`` when it is set, else the inference token when that
    is set (management is never easier to reach than inference).

Not implemented.
    Shared memory, trace and log settings: the rpcs exist so that tritonclient's calls get a clear
    answer. The status rpcs report no regions, unregistering succeeds (nothing is registered),
    registering and the settings rpcs are UNIMPLEMENTED with a message saying what to use
    instead. Inputs or outputs naming a shared-memory region, and classification outputs, are
    UNIMPLEMENTED too. Loading with a ``config`` or ``file:`` override, and a non-empty
    ``repository_name``, are UNIMPLEMENTED (models load from the served repository, by name).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .._native import core as _core
from .._proto import inference_pb2 as pb
from .._version import __version__
from ..admission import RETRY_PUSHBACK_KEY
from ..errors import (
    InternalError,
    InvalidArgumentError,
    ModelserveError,
    NotFoundError,
    ResourceExhaustedError,
    UnimplementedError,
)
from ..tensor import Tensor
from .common import EXTENSIONS, ServerOptions, check_token, grpc_actor, request_options
from .health import Health
from .runtime_api import ServingRuntime

__all__ = ["GrpcFrontend", "SERVICE"]

log = logging.getLogger("modelserve.server.grpc")

SERVICE = "inference.GRPCInferenceService"

#: protobuf's ceiling on a message, and what tritonclient and Triton configure.
GRPC_MAX = 2**31 - 1

#: The native ModelInferRequest parser (csrc/protocol/).
_protocol = _core.protocol

# --- wire helpers -----------------------------------------------------------------------------


class _Refused:
    """What a request deserializer returns instead of a message it refused (too large, or not
    protobuf): the handler raises ``error`` with the call's other checks done first. ``id`` is
    the request id, where it could be read (for streamed errors)."""

    __slots__ = ("error", "id")

    def __init__(self, error: ModelserveError, request_id: str = "") -> None:
        self.error = error
        self.id = request_id


class _InferReply:
    """A ModelInferResponse whose ``raw_output_contents`` are still the output buffers."""

    __slots__ = ("head", "raw", "size")

    def __init__(self, message: Any, raw: list[Any]) -> None:
        self.head = message.SerializeToString()
        self.raw = raw
        self.size = len(self.head) + sum(1 + len(_varint(len(b))) + len(b) for b in raw)

    def parts(self) -> list[Any]:
        """The response's bytes in pieces: the message, then each raw_output_contents entry
        (field 6, length-delimited) as tag, length and the output's own buffer."""
        out: list[Any] = [self.head]
        for b in self.raw:
            out += (b"\x32", _varint(len(b)), b)
        return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """The top-level fields of a serialized message: (number, start of the field, start and end
    of a length-delimited value, or -1, -1). Raises ValueError on bytes that are not protobuf."""
    pos, n = 0, len(view)
    while pos < n:
        start = pos
        key, pos = _read_varint(view, pos)
        wire, begin, end = key & 7, -1, -1
        if wire == 0:
            _, pos = _read_varint(view, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, begin = _read_varint(view, pos)
            pos = end = begin + length
        else:
            raise ValueError(f"unsupported wire type {wire} at byte {start}")
        if pos > n:
            raise ValueError(f"field {key >> 3} runs past the end of the message")
        yield key >> 3, start, begin, end


def _describe_refused(data: bytes) -> tuple[str, str]:
    """For the error about a request that is not decoded (too large): the model it names (field 1)
    and its id (field 3), from its top-level fields, or "" where they cannot be read."""
    found = {1: "", 3: ""}
    try:
        view = memoryview(data)
        for number, _, begin, end in _fields(view):
            if number in found and begin >= 0 and end - begin <= 1024:
                found[number] = bytes(view[begin:end]).decode("utf-8", "replace")
    except ValueError:
        pass
    return found[1], found[3]


def _output_buffer(name: str, tensor: Tensor) -> Any:
    """A tensor's bytes as the wire carries them (BYTES: length-prefixed), without a copy."""
    if tensor.nbytes == 0:
        return b""
    try:
        return memoryview(tensor).cast("B")
    except (ValueError, TypeError, ModelserveError) as e:  # not host memory, or not contiguous
        return _copy_out(name, tensor, e)


def _copy_out(name: str, tensor: Tensor, why: Exception) -> bytes:
    try:
        return tensor.tobytes()
    except ModelserveError:
        raise InternalError(f"output '{name}' is in {tensor.device} memory and cannot be sent: {why}") from None


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


def _metadata_reader(context: Any) -> Callable[[str], str | None]:
    """``header(key)`` for an observer's watch: the call's metadata (none without a call)."""
    return (lambda key: _metadata(context, key)) if context is not None else (lambda key: None)


def _size_error(what: str, size: int, limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"{what} is {size} bytes, more than the server's receive limit of {limit} bytes; "
        f"start the server with a larger --max-message-bytes to accept it"
    )


def _check_model_name(name: str, field: str = "model_name") -> None:
    if not name:
        raise InvalidArgumentError(f"{field} is empty; name the model")
    if "\x00" in name:
        raise InvalidArgumentError(f"{field} {name!r} contains a NUL byte")


class _Routing:
    """Where a traffic policy's sticky key is looked up: the request's parameters, then the
    call's metadata (lower-case keys, as gRPC sends them). Read only for models with a policy."""

    __slots__ = ("parameters", "context")

    def __init__(self, parameters: dict[str, Any], context: Any) -> None:
        self.parameters, self.context = parameters, context

    def get(self, key: str) -> Any:
        if key in self.parameters:
            return self.parameters[key]
        return _metadata(self.context, key.lower()) if self.context is not None else None


def _where(model: str, version: str | int | None) -> str:
    return f"model '{model}'" + (f" version {version}" if version not in (None, "") else "")


# --- the frontend -----------------------------------------------------------------------------


class GrpcFrontend:
    """The gRPC frontend over one :class:`~modelserve.server.runtime_api.ServingRuntime` (a
    :class:`~modelserve.Runtime`, or the Ray ingress's catalog); module docstring: the decisions."""

    def __init__(self, runtime: ServingRuntime, options: ServerOptions, health: Health) -> None:
        self.runtime = runtime
        self.options = options
        self.health = health
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        # Tracing and payload logging (modelserve.observe): None when both are off.
        self._observer = runtime.observer if runtime.observer.active else None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """Binds ``options.host:options.grpc_port`` (TLS when ``tls_cert``/``tls_key`` are set,
        mutual TLS with ``tls_client_ca``), starts serving, and returns the bound port."""
        o = self.options
        limit = o.max_message_bytes
        if limit <= 0 or limit > GRPC_MAX:
            raise InvalidArgumentError(f"max_message_bytes must be in [1, {GRPC_MAX}], got {limit}")
        if o.max_stream_requests < 1:
            raise InvalidArgumentError(f"max_stream_requests must be at least 1, got {o.max_stream_requests}")
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", GRPC_MAX),  # ours is checked per message
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ]
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))
        from .traffic_grpc import traffic_handler  # modelserve.v1.TrafficService (protos/modelserve.proto)

        server.add_generic_rpc_handlers((traffic_handler(self),))
        health_pb2_grpc.add_HealthServicer_to_server(_HealthServicer(self.health), server)
        host = f"[{o.host}]" if ":" in o.host and not o.host.startswith("[") else o.host
        address = f"{host}:{o.grpc_port}"
        try:
            credentials = self._credentials()
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"gRPC cannot listen on {address}: {e} (is the port in use? see --grpc-port)") from None
        if not port:
            raise OSError(f"gRPC cannot listen on {address} (is the port in use? see --grpc-port)")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace: float) -> None:
        """Stops taking calls; those in flight get ``grace`` seconds, then are cancelled."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    def _credentials(self) -> grpc.ServerCredentials | None:
        o = self.options
        if not (o.tls_cert or o.tls_key):
            if o.tls_client_ca:
                raise InvalidArgumentError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
            return None
        if not (o.tls_cert and o.tls_key):
            raise InvalidArgumentError("TLS needs both tls_cert and tls_key")
        cert, key = _read_pem(o.tls_cert, "tls_cert"), _read_pem(o.tls_key, "tls_key")
        ca = _read_pem(o.tls_client_ca, "tls_client_ca") if o.tls_client_ca else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)

    # --- dispatch -------------------------------------------------------------------------------
    def rpc_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Every rpc this frontend serves, by rpc name: ``inference.GRPCInferenceService``'s and
        ``modelserve.v1.TrafficService``'s (no name is in both). For a host that brings its own
        transport (the Ray ingress: Ray Serve's gRPC proxy calls one method per rpc): each
        handler's ``request_deserializer``, ``unary_unary`` or ``stream_stream`` and
        ``response_serializer`` are grpc's public ``RpcMethodHandler`` fields, and behave as
        they do behind :meth:`start` (authorisation, size limits, error mapping)."""
        from .traffic_grpc import traffic_method_handlers

        handlers = self._handlers()
        traffic = traffic_method_handlers(self)
        clash = sorted(handlers.keys() & traffic.keys())
        if clash:
            raise InternalError(f"rpc names in both {SERVICE} and the traffic service: {clash}")
        return {**handlers, **traffic}

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        open_, inference, admin = "open", "inference", "admin"
        unary = {
            "ServerLive": (self._server_live, pb.ServerLiveRequest, open_),
            "ServerReady": (self._server_ready, pb.ServerReadyRequest, open_),
            "ModelReady": (self._model_ready, pb.ModelReadyRequest, open_),
            "ServerMetadata": (self._server_metadata, pb.ServerMetadataRequest, inference),
            "ModelMetadata": (self._model_metadata, pb.ModelMetadataRequest, inference),
            "ModelConfig": (self._model_config, pb.ModelConfigRequest, inference),
            "ModelStatistics": (self._model_statistics, pb.ModelStatisticsRequest, inference),
            "RepositoryIndex": (self._repository_index, pb.RepositoryIndexRequest, inference),
            "RepositoryModelLoad": (self._repository_load, pb.RepositoryModelLoadRequest, admin),
            "RepositoryModelUnload": (self._repository_unload, pb.RepositoryModelUnloadRequest, admin),
            "SystemSharedMemoryStatus": (self._shm_status(pb.SystemSharedMemoryStatusResponse), pb.SystemSharedMemoryStatusRequest, inference),
            "SystemSharedMemoryRegister": (self._unimplemented("system shared memory"), pb.SystemSharedMemoryRegisterRequest, inference),
            "SystemSharedMemoryUnregister": (self._shm_unregister(pb.SystemSharedMemoryUnregisterResponse), pb.SystemSharedMemoryUnregisterRequest, inference),
            "CudaSharedMemoryStatus": (self._shm_status(pb.CudaSharedMemoryStatusResponse), pb.CudaSharedMemoryStatusRequest, inference),
            "CudaSharedMemoryRegister": (self._unimplemented("CUDA shared memory"), pb.CudaSharedMemoryRegisterRequest, inference),
            "CudaSharedMemoryUnregister": (self._shm_unregister(pb.CudaSharedMemoryUnregisterResponse), pb.CudaSharedMemoryUnregisterRequest, inference),
            "TraceSetting": (self._unimplemented("trace settings"), pb.TraceSettingRequest, inference),
            "LogSettings": (self._unimplemented("log settings"), pb.LogSettingsRequest, inference),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary_behaviour(name, fn, auth),
                request_deserializer=self._deserializer(cls),
                response_serializer=_serialize,
            )
            for name, (fn, cls, auth) in unary.items()
        }
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self._model_infer, request_deserializer=self._decode_infer, response_serializer=_serialize
        )
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._model_stream_infer, request_deserializer=self._decode_infer, response_serializer=_serialize_stream
        )
        return handlers

    def _deserializer(self, cls: Any) -> Callable[[bytes], Any]:
        limit = self.options.max_message_bytes
        name = cls.DESCRIPTOR.name

        def decode(data: bytes) -> Any:
            if len(data) > limit:
                return _Refused(_size_error(f"{name}", len(data), limit))
            try:
                return cls.FromString(data)
            except Exception as e:  # protobuf's DecodeError, or anything a hostile message provokes
                return _Refused(InvalidArgumentError(f"{name} is not a valid protobuf message: {e}"))

        return decode

    def _decode_infer(self, data: bytes) -> Any:
        limit = self.options.max_message_bytes
        if len(data) > limit:
            model, request_id = _describe_refused(data)
            what = f"ModelInferRequest for model '{model}'" if model else "ModelInferRequest"
            return _Refused(_size_error(what, len(data), limit), request_id)
        try:
            return _protocol.parse(data)  # Note [Native request path] in csrc/protocol/infer_codec.h
        except InvalidArgumentError as e:
            return _Refused(InvalidArgumentError(f"ModelInferRequest is not a valid protobuf message: {e}"))

    def _authorize(self, context: grpc.aio.ServicerContext, level: str, what: str) -> None:
        o = self.options
        if level == "open":
            return
        token = o.admin_token if level == "admin" and o.admin_token is not None else o.inference_token
        if token is not None:
            check_token(token, _metadata(context, "authorization"), what)

    def _unary_behaviour(self, rpc: str, fn: Callable[..., Any], auth: str) -> Callable[..., Any]:
        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                self._authorize(context, auth, rpc)
                if isinstance(request, _Refused):
                    raise request.error
                return await fn(request, context)
            except ModelserveError as e:
                code, message = grpc.StatusCode[e.grpc_code], str(e)
            except Exception as e:
                log.exception("%s failed", rpc)
                code, message = grpc.StatusCode.INTERNAL, f"{rpc}: internal error: {type(e).__name__}: {e}"
            await context.abort(code, message)

        return behaviour

    # --- health ---------------------------------------------------------------------------------
    async def _server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.health.live())

    async def _server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.health.ready())

    async def _model_ready(self, request: Any, context: Any) -> Any:
        if not request.name or "\x00" in request.name:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.health.model_ready(request.name, request.version or None))

    # --- metadata -------------------------------------------------------------------------------
    async def _server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="modelserve", version=__version__, extensions=EXTENSIONS)

    async def _model_metadata(self, request: Any, context: Any) -> Any:
        _check_model_name(request.name, "name")
        meta = self.runtime.model_metadata(request.name, request.version or None)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"] or "",
            inputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
        )

    async def _model_config(self, request: Any, context: Any) -> Any:
        _check_model_name(request.name, "name")
        version = request.version or None
        config = self.runtime.model_config(request.name, version)
        backend = config.get("backend") or self.runtime.model_metadata(request.name, version)["platform"]

        def data_type(datatype: str) -> int:
            return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")

        parameters = {
            k: pb.ModelParameter(string_value=v if isinstance(v, str) else json.dumps(v))
            for k, v in (config.get("parameters") or {}).items()
        }
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=config["name"],
                backend=backend or "",
                max_batch_size=config.get("max_batch_size", 0),
                input=[pb.ModelInput(name=t["name"], data_type=data_type(t["datatype"]), dims=t["shape"])
                       for t in config.get("inputs", [])],
                output=[pb.ModelOutput(name=t["name"], data_type=data_type(t["datatype"]), dims=t["shape"])
                        for t in config.get("outputs", [])],
                parameters=parameters,
                model_transaction_policy=pb.ModelTransactionPolicy(decoupled=bool(config.get("decoupled"))),
            )
        )

    async def _model_statistics(self, request: Any, context: Any) -> Any:
        if "\x00" in request.name:
            raise InvalidArgumentError(f"name {request.name!r} contains a NUL byte")
        if request.version and not request.name:
            raise InvalidArgumentError(f"statistics of version {request.version} need a model name")
        stats = self.runtime.model_statistics(request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(s) for s in stats])

    # --- repository -----------------------------------------------------------------------------
    async def _repository_index(self, request: Any, context: Any) -> Any:
        _one_repository(request.repository_name)
        index = await asyncio.to_thread(self.runtime.repository_index, request.ready)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[entry(name=e["name"], version=str(e.get("version") or ""), state=e.get("state") or "",
                          reason=e.get("reason") or "") for e in index]
        )

    # Load and unload are audited by the runtime (Note [Audit entries] in traffic/store.py); a
    # request refused here, before the runtime is called, is recorded as the action's failure.
    async def _repository_load(self, request: Any, context: Any) -> Any:
        actor = grpc_actor(context)
        with self.runtime.traffic.refusals(actor, "load", request.model_name):
            _check_model_name(request.model_name)
            _one_repository(request.repository_name)
            overrides = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
            if overrides:
                raise UnimplementedError(
                    f"model '{request.model_name}': loading with {', '.join(overrides)} is not supported; "
                    f"models load from the served repository as they are on disk"
                )
        await asyncio.to_thread(self.runtime.load_model, request.model_name, actor=actor)
        return pb.RepositoryModelLoadResponse()

    async def _repository_unload(self, request: Any, context: Any) -> Any:
        actor = grpc_actor(context)
        with self.runtime.traffic.refusals(actor, "unload", request.model_name):
            _check_model_name(request.model_name)
            _one_repository(request.repository_name)
        # unload_dependents: no model depends on another (no ensembles), so it changes nothing.
        await asyncio.to_thread(self.runtime.unload_model, request.model_name, actor=actor)
        return pb.RepositoryModelUnloadResponse()

    # --- not implemented ------------------------------------------------------------------------
    @staticmethod
    def _shm_status(response: Any) -> Callable[..., Any]:
        async def status(request: Any, context: Any) -> Any:
            if request.name:
                raise NotFoundError(f"no shared memory region '{request.name}' (modelserve registers none)")
            return response()

        return status

    @staticmethod
    def _shm_unregister(response: Any) -> Callable[..., Any]:
        async def unregister(request: Any, context: Any) -> Any:
            return response()  # nothing is ever registered, so nothing stays registered

        return unregister

    @staticmethod
    def _unimplemented(feature: str) -> Callable[..., Any]:
        hint = {
            "system shared memory": "; send tensors in raw_input_contents",
            "CUDA shared memory": "; send tensors in raw_input_contents",
        }.get(feature, "")

        async def refuse(request: Any, context: Any) -> Any:
            raise UnimplementedError(f"modelserve does not implement {feature}{hint}")

        return refuse

    # --- inference ------------------------------------------------------------------------------
    async def _model_infer(self, call: Any, context: grpc.aio.ServicerContext) -> Any:
        trailers: tuple[tuple[str, str], ...] = ()
        try:
            self._authorize(context, "inference", "ModelInfer")
            self.health.check_accepting()
            if isinstance(call, _Refused):
                raise call.error
            generator = self._generator_of(call)
            if generator is not None:  # the whole completion in one response
                async for reply, _ in self._generate(call, generator, streamed=False, context=context):
                    return reply
            return await self._infer(call, context.time_remaining(), context=context)
        except ModelserveError as e:
            code, message = grpc.StatusCode[e.grpc_code], str(e)
            retry_after = getattr(e, "retry_after_s", None)  # Note [Admission control]
            if retry_after is not None:
                trailers = ((RETRY_PUSHBACK_KEY, str(max(1, round(retry_after * 1000)))),)
        except Exception as e:
            log.exception("ModelInfer failed")
            code, message = grpc.StatusCode.INTERNAL, f"ModelInfer: internal error: {type(e).__name__}: {e}"
        await context.abort(code, message, trailers)

    async def _model_stream_infer(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            self._authorize(context, "inference", "ModelStreamInfer")
        except ModelserveError as e:
            await context.abort(grpc.StatusCode[e.grpc_code], str(e))
        strict = (_metadata(context, "triton_grpc_error") or "").lower() == "true"
        replies: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()
        end = object()

        async def answer(call: Any) -> None:
            request_id = call.id
            try:
                self.health.check_accepting()
                if isinstance(call, _Refused):
                    raise call.error
                generator = self._generator_of(call)
                if generator is not None:  # one response per chunk, the last one final
                    async for reply, final in self._generate(call, generator, streamed=True, context=context):
                        replies.put_nowait(reply if final else _Partial(reply))
                    return
                replies.put_nowait(await self._infer(call, context.time_remaining(), streamed=True, context=context))
            except ModelserveError as e:
                replies.put_nowait((grpc.StatusCode[e.grpc_code], str(e), request_id))
            except Exception as e:
                log.exception("ModelStreamInfer request failed")
                replies.put_nowait((grpc.StatusCode.INTERNAL, f"ModelStreamInfer: internal error: {type(e).__name__}: {e}", request_id))

        # At most max_stream_requests requests are read and not yet answered: a slot is taken
        # before the next message is read and given back once its response is written, so at
        # the cap the stream is not read and HTTP/2 flow control holds the client back.
        slots = asyncio.Semaphore(self.options.max_stream_requests)

        async def read() -> None:
            try:
                stream = aiter(requests)
                while True:
                    await slots.acquire()
                    try:
                        call = await anext(stream)
                    except StopAsyncIteration:
                        break
                    task = asyncio.create_task(answer(call))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*list(running), return_exceptions=True)
            except Exception as e:  # the client went away mid-stream; nothing is left to answer
                log.debug("ModelStreamInfer: reading the stream failed: %s", e)
            finally:
                replies.put_nowait(end)

        reader = asyncio.create_task(read())
        failure = None
        try:
            while (item := await replies.get()) is not end:
                if isinstance(item, _Partial):  # more of a generation follows: its slot stays taken
                    await context.write(item.reply)
                    continue
                try:
                    if isinstance(item, (bytes, _InferReply)):
                        await context.write(item)
                        continue
                    code, message, request_id = item
                    if strict:  # the first error ends the stream with its status
                        failure = (code, message)
                        break
                    note = f" (request id '{request_id}')" if request_id else ""
                    await context.write(pb.ModelStreamInferResponse(error_message=message + note))
                finally:
                    slots.release()  # this request is answered: the next one may be read
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
        if failure is not None:
            await context.abort(*failure)

    def _watch(self, model: str, streamed: bool, context: Any) -> Any:
        """The request's watch (modelserve.observe), or None when nothing samples it."""
        if self._observer is None:
            return None
        name = f"{'ModelStreamInfer' if streamed else 'ModelInfer'} {model}"
        return self._observer.watch("grpc", name, model, _metadata_reader(context))

    def _generator_of(self, call: Any) -> Any:
        """The generation engine a request goes to, or None (every runtime but the in-process one
        has none)."""
        _check_model_name(call.model_name)
        find = getattr(self.runtime, "generator_of", None)
        if find is None:
            return None
        try:
            return find(call.model_name, call.model_version or None)
        except ModelserveError:  # an unknown model or version: the inference path refuses it (and records it)
            return None

    async def _generate(self, call: Any, generator: Any, streamed: bool, context: Any = None) -> Any:
        """A generation over gRPC (Triton's convention): BYTES ``text_input`` in, sampling values
        as request parameters (``max_tokens``, ``temperature``, ...), ``text_output`` out. Yields
        (reply, final): one whole reply, or with ``streamed`` one per chunk of tokens, with
        ``triton_final_response`` false until the last."""
        from .openai_http import FieldError, sampling_params

        model = call.model_name
        version = self.runtime.resolve_version(model, call.model_version or None)
        where = _where(model, version)
        inputs, _ = _protocol.decode(call, where)
        text = inputs.get("text_input")
        if text is None or text.datatype != "BYTES" or len(text.numpy().reshape(-1)) != 1:
            raise InvalidArgumentError(f"{where}: needs one BYTES input 'text_input' of one element, got "
                                       f"{sorted(inputs)}")
        prompt = text.numpy().reshape(-1)[0]
        prompt = prompt.decode("utf-8", "replace") if isinstance(prompt, bytes) else str(prompt)
        try:
            params, _ = sampling_params(dict(call.parameters), 16, chat=False)
        except FieldError as e:
            raise InvalidArgumentError(f"{where}: {e}") from None
        handle = self.runtime.submit_generation(model, prompt, params, version=version,
                                                watch=self._watch(model, streamed, context))
        try:
            if not streamed:
                out = ""
                async for delta in handle.deltas_async(coalesce=True):
                    out += delta.text
                yield self._text_reply(call.id, model, version, out, final=None), True
                return
            async for delta in handle.deltas_async(coalesce=True):
                final = delta.finish_reason is not None
                if delta.text or final:
                    yield self._text_reply(call.id, model, version, delta.text, final=final), final
        finally:  # a cancelled call (or a dropped stream) frees the sequence
            if not handle.finished:
                handle.cancel()

    def _text_reply(self, request_id: str, model: str, version: int, text: str, final: bool | None) -> _InferReply:
        response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
        if final is not None:
            response.parameters["triton_final_response"].bool_param = final
        data = text.encode()
        response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        return _InferReply(response, [len(data).to_bytes(4, "little") + data])

    async def _infer(
        self, call: Any, time_remaining: float | None, streamed: bool = False, context: Any = None
    ) -> bytes | _InferReply:
        """One parsed ModelInferRequest (``_core.protocol.parse``): the core decodes, checks and
        enqueues it and encodes the response (Note [Native request path]); Python reads only the
        model, version and parameters. A request that a shadow may mirror, or a runtime that takes
        no parsed requests (Ray's ingress), goes the Python way (:meth:`_infer_decoded`)."""
        model = call.model_name
        _check_model_name(model)
        watch = self._watch(model, streamed, context)
        try:  # a refusal before the Runtime finishes the watch is recorded too
            requested = call.model_version or None
            version = self.runtime.resolve_version(model, requested)  # unknown models and versions first
            where = _where(model, version)
            parameters = call.parameters
            options = self._request_options(parameters, where, time_remaining)
            routing = _Routing(parameters, context)
            if not self.runtime.native_requests or self.runtime.mirrors(model, requested):
                return await self._infer_decoded(call, model, requested, where, options, routing, streamed, watch)
            # A traffic policy may choose another version (or model) for a request that names
            # none: the response reports the version that ran.
            pending, _, number = await self.runtime.infer_parsed_async(
                model, call, where, version=requested, routing=routing, watch=watch, **options
            )
            return pending.encode_response(
                _where(model, number), model, str(number), call.id, streamed, self.options.max_message_bytes
            )
        except BaseException as e:
            if watch is not None:
                watch.finish(e)
            raise

    async def _infer_decoded(
        self, call: Any, model: str, requested: str | None, where: str, options: dict[str, int], routing: Any,
        streamed: bool, watch: Any = None,
    ) -> _InferReply:
        """The request's tensors as Python objects, for shadows (which compare the outputs) and
        Ray's ingress (which forwards them): the core decodes and checks them as on the native
        path (``_core.protocol.decode``), then the Runtime routes them."""
        inputs, outputs = _protocol.decode(call, where)
        served = await self.runtime.infer_routed_async(
            model, inputs, version=requested, outputs=outputs or None, as_numpy=False, routing=routing, watch=watch,
            **options
        )
        return self._encode(call.id, model, served.version, served.outputs, outputs, streamed)

    def _request_options(self, parameters: dict[str, Any], where: str, time_remaining: float | None) -> dict[str, int]:
        deadline_us = int(time_remaining * 1e6) if time_remaining is not None else None
        return request_options(parameters, where, deadline_us)

    def _encode(
        self, request_id: str, model: str, version: int, results: dict[str, Tensor], requested: list[str], streamed: bool
    ) -> _InferReply:
        response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
        if streamed:  # one response per request: each is its request's last
            response.parameters["triton_final_response"].bool_param = True
        raw = []
        for name in requested or list(results):
            tensor = results[name]
            response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
            raw.append(_output_buffer(name, tensor))
        reply = _InferReply(response, raw)
        limit = self.options.max_message_bytes
        if reply.size > limit:
            raise ResourceExhaustedError(
                f"the response of {_where(model, version)} is {reply.size} bytes, more than the server's send "
                f"limit of {limit} bytes; start the server with a larger --max-message-bytes, or ask for fewer "
                f"outputs or a smaller batch"
            )
        return reply


class _Partial:
    """A stream reply that is not its request's last (a generation's chunk)."""

    __slots__ = ("reply",)

    def __init__(self, reply: Any) -> None:
        self.reply = reply


# --- encoding ---------------------------------------------------------------------------------


def _serialize(message: Any) -> bytes:
    if isinstance(message, bytes):  # encoded by the core (Note [Native request path])
        return message
    if isinstance(message, _InferReply):
        return b"".join(message.parts())
    return message.SerializeToString()


def _serialize_stream(message: Any) -> bytes:
    """ModelStreamInferResponse: field 2 (``infer_response``) holds the reply's bytes."""
    if isinstance(message, bytes):  # the core wrapped it already (encode_response(streamed=True))
        return message
    if isinstance(message, _InferReply):
        parts = message.parts()
        return b"".join([b"\x12", _varint(sum(len(p) for p in parts)), *parts])
    return message.SerializeToString()


def _statistics(s: dict[str, Any]) -> Any:
    def duration(count: int, ns: int = 0) -> Any:
        return pb.StatisticDuration(count=max(0, int(count)), ns=max(0, int(ns)))

    success = int(s.get("success_count", 0))
    request_hist = s.get("request_hist") or {}
    queue_hist = s.get("queue_hist") or {}
    return pb.ModelStatistics(
        name=s["name"],
        version=str(s["version"]),
        inference_count=int(s.get("inference_count", 0)),
        execution_count=int(s.get("execution_count", 0)),
        inference_stats=pb.InferStatistics(
            success=duration(success, request_hist.get("sum_ns", 0)),
            fail=duration(s.get("failure_count", 0)),
            queue=duration(queue_hist.get("count", success), s.get("queue_ns", 0)),
            compute_input=duration(success, s.get("compute_input_ns", 0)),
            compute_infer=duration(success, s.get("compute_infer_ns", 0)),
            compute_output=duration(success, s.get("compute_output_ns", 0)),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=int(size),
                compute_input=duration(b.get("count", 0), b.get("compute_input_ns", 0)),
                compute_infer=duration(b.get("count", 0), b.get("compute_infer_ns", 0)),
                compute_output=duration(b.get("count", 0), b.get("compute_output_ns", 0)),
            )
            for size, b in sorted((s.get("batch_stats") or {}).items(), key=lambda kv: int(kv[0]))
        ],
    )


def _one_repository(name: str) -> None:
    if name:
        raise UnimplementedError(
            f"repository_name '{name}': modelserve serves one repository; leave repository_name empty"
        )


def _read_pem(path: Path | str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"{option}: cannot read {path}: {e.strerror}") from None


# --- grpc.health.v1 ---------------------------------------------------------------------------


class _HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health`` answered from :class:`Health` (module docstring, "Health")."""

    SERVICES = ("", SERVICE)
    WATCH_INTERVAL_S = 1.0

    def __init__(self, health: Health) -> None:
        self.health = health

    def _status(self, service: str) -> int:
        if service not in self.SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        return health_pb2.HealthCheckResponse.SERVING if self.health.ready() else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'; known: {list(self.SERVICES)}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await asyncio.sleep(self.WATCH_INTERVAL_S)
