"""Request tracing with OpenTelemetry (``pip install 'modelserve[otel]'``).

The W3C ``traceparent``/``tracestate`` of an HTTP request's headers or a gRPC call's metadata
becomes the remote parent of the request's span; without one (or with a malformed one, which is
counted) the request starts a new trace. Spans are built when the request completes, from the
times the core recorded (Note [Request spans] in csrc/sched/request.h), so tracing adds nothing
to the request path but the sampling decision:

- the request span (``ModelInfer mlp``, ``POST /v2/models/mlp/infer``, ``generate storyteller``;
  kind SERVER), from the moment the frontend took the request to its completion;
- its children: ``queue`` (enqueue to the batch being formed) and ``execute`` (the batch's
  gather, backend and scatter, with the batch id and size); for a generation ``queue`` (until
  first scheduled), ``first_token`` (scheduled to the first token) and ``decode`` (the rest);
- one ``batch`` span per batch that held a traced request, in a trace of its own, linked to the
  span of each traced request in it (a batch serves many traces: OpenTelemetry's way is links).

Configuration is OpenTelemetry's: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console`` or ``none``), the OTLP exporter's own
``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout, protocol ``http/protobuf`` or
``grpc``), the batch processor's ``OTEL_BSP_*``, and the sampler's ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` (``always_on``, ``always_off``, ``traceidratio`` and their
``parentbased_`` forms; parentbased_always_on when unset). ``--trace-sample-rate R`` wins over the
sampler variables: parent-based with ratio R for new traces.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import InvalidArgumentError, ModelserveError

__all__ = ["TraceParent", "Tracing", "parse_traceparent", "Sampling", "tracing_configured"]

log = logging.getLogger("modelserve.tracing")


class TraceParent(NamedTuple):
    """A remote parent: the W3C ``traceparent``'s ids and sampled flag, and the ``tracestate``."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str | None = None


_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str, tracestate: str | None = None) -> TraceParent | None:
    """The parent a W3C ``traceparent`` header names (Trace Context level 1: ``version-trace_id-
    parent_id-flags``, lower-case hex), or None when it is malformed: a wrong length or
    separator, a non-hex or upper-case digit, version ff, an all-zero trace or parent id, or a
    version 00 header with anything after the flags."""
    v = value.strip(" \t")  # the header's optional whitespace
    if len(v) < 55 or v[2] != "-" or v[35] != "-" or v[52] != "-":
        return None
    version, trace, parent, flags = v[0:2], v[3:35], v[36:52], v[53:55]
    if not _HEX.issuperset(version + trace + parent + flags) or version == "ff":
        return None
    if len(v) > 55 and (version == "00" or v[55] != "-"):  # a later version may append fields
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1), tracestate)


@dataclass(frozen=True)
class Sampling:
    """Which requests are traced: a new trace with probability ``ratio``; a request with a parent
    as its parent's sampled flag says, when ``parent_based``."""

    ratio: float = 1.0
    parent_based: bool = True

    _RATIOS = {"always_on": 1.0, "always_off": 0.0}

    @classmethod
    def from_env(cls, env: Mapping[str, str], sample_rate: float | None = None) -> "Sampling":
        """``sample_rate`` (``--trace-sample-rate``) wins; else ``OTEL_TRACES_SAMPLER`` and
        ``OTEL_TRACES_SAMPLER_ARG``. Raises InvalidArgumentError naming the variable or flag."""
        if sample_rate is not None:
            if not 0.0 <= sample_rate <= 1.0:
                raise InvalidArgumentError(f"--trace-sample-rate must be in [0, 1], got {sample_rate}")
            return cls(float(sample_rate), True)
        name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
        parent_based = name.startswith("parentbased_")
        base = name[len("parentbased_"):] if parent_based else name
        if base in cls._RATIOS:
            return cls(cls._RATIOS[base], parent_based)
        if base == "traceidratio":
            raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
            try:
                ratio = float(raw)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise InvalidArgumentError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio in [0, 1], got {raw!r}")
            return cls(ratio, parent_based)
        raise InvalidArgumentError(
            f"OTEL_TRACES_SAMPLER={name!r} is not supported; use always_on, always_off, traceidratio or "
            "their parentbased_ forms (or --trace-sample-rate)")

    def sample(self, parent: TraceParent | None) -> bool:
        if parent is not None and self.parent_based:
            return parent.sampled
        return self.ratio >= 1.0 or (self.ratio > 0.0 and random.random() < self.ratio)


def tracing_configured(env: Mapping[str, str], sample_rate: float | None) -> bool:
    """Whether ``modelserve serve`` traces: ``--trace-sample-rate`` above 0, or any of the
    OpenTelemetry variables that choose an exporter, an endpoint or a sampler, unless
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if sample_rate is not None:
        return sample_rate > 0
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(k) for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                       "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER"))


def _otel() -> Any:
    try:
        import opentelemetry.sdk.trace as sdk
    except ImportError:
        raise InvalidArgumentError(
            "tracing needs OpenTelemetry: pip install 'modelserve[otel]' (opentelemetry-sdk and the OTLP exporter)"
        ) from None
    return sdk


def _exporter_from_env(env: Mapping[str, str]) -> Any:
    name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise InvalidArgumentError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            raise InvalidArgumentError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use "
                                       "http/protobuf or grpc")
    except ImportError as e:
        package = f"opentelemetry-exporter-otlp-proto-{'grpc' if protocol == 'grpc' else 'http'}"
        raise InvalidArgumentError(f"the OTLP {protocol} exporter is not installed ({e}); "
                                   f"pip install {package}") from None
    return OTLPSpanExporter()  # reads its OTEL_EXPORTER_OTLP_* variables itself


class _OpenBatch:
    """The traced requests of one batch seen so far (Note [Request spans])."""

    __slots__ = ("links", "expected", "start_ns", "end_ns", "attributes", "seen_at")

    def __init__(self, expected: int, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
        self.links: list[Any] = []
        self.expected = expected
        self.start_ns, self.end_ns = start_ns, end_ns
        self.attributes = attributes
        self.seen_at = time.monotonic()


class Tracing:
    """Builds and exports the spans of traced requests (module docstring).

    ``sample_rate``: ``--trace-sample-rate`` (None: the ``OTEL_TRACES_SAMPLER`` variables).
    ``exporter``: a span exporter (default: from ``OTEL_TRACES_EXPORTER``); ``batch``: export
    through a BatchSpanProcessor (else a SimpleSpanProcessor, which exports as each span ends:
    tests). ``env``: where the variables are read (default ``os.environ``)."""

    #: A batch whose traced requests have not all completed after this long is ended with the
    #: links it has (a request whose caller went away is never recorded).
    OPEN_BATCH_S = 10.0
    MAX_OPEN_BATCHES = 1024

    def __init__(self, *, sample_rate: float | None = None, exporter: Any = None, batch: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        sdk = _otel()
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        from .._version import __version__

        self.sampling = Sampling.from_env(env, sample_rate)
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "modelserve"}
        # Our sampling decision is made before the request runs; the SDK records what we start.
        self.provider = sdk.TracerProvider(resource=Resource.create(attributes), sampler=ALWAYS_ON)
        self.exporter = exporter if exporter is not None else _exporter_from_env(env)
        if self.exporter is not None:
            processor = BatchSpanProcessor(self.exporter) if batch else SimpleSpanProcessor(self.exporter)
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("modelserve", __version__)
        self._trace = trace
        self._lock = threading.Lock()
        self._open: dict[int, _OpenBatch] = {}  # guarded by _lock: batch id -> its traced requests so far
        self.spans = 0  # guarded by _lock: request spans ended

    # --- spans -----------------------------------------------------------------------------------
    def _parent_context(self, parent: TraceParent | None) -> Any:
        if parent is None:
            return None
        t = self._trace
        state = t.TraceState.from_header([parent.tracestate]) if parent.tracestate else None
        context = t.SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                trace_flags=t.TraceFlags(t.TraceFlags.SAMPLED if parent.sampled else 0),
                                trace_state=state)
        return t.set_span_in_context(t.NonRecordingSpan(context))

    def start_request(self, name: str, parent: TraceParent | None, start_ns: int, attributes: dict[str, Any]) -> Any:
        return self.tracer.start_span(name, context=self._parent_context(parent), kind=self._trace.SpanKind.SERVER,
                                      start_time=start_ns, attributes=attributes)

    def child(self, span: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
        child = self.tracer.start_span(name, context=self._trace.set_span_in_context(span), start_time=start_ns,
                                       attributes=attributes)
        child.end(end_time=max(end_ns, start_ns))

    def end_request(self, span: Any, end_ns: int, error: BaseException | None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            status = error.status if isinstance(error, ModelserveError) else type(error).__name__
            span.set_attribute("modelserve.status", status)
            span.set_status(Status(StatusCode.ERROR, f"{status}: {error}"))
        span.end(end_time=end_ns)
        with self._lock:
            self.spans += 1

    def infer_children(self, span: Any, trace: tuple, offset_ns: int, traced: bool, end_ns: int) -> None:
        """The ``queue`` and ``execute`` children of an inference request from the core's
        ``Pending.trace`` (Note [Request spans]); ``offset_ns`` turns steady-clock times into
        wall-clock ones; ``end_ns`` ends the queue span of a request that failed in the queue. A
        traced request (the core counted it in its batch) joins the batch's
        span."""
        (batch_id, enqueue, dispatch, compute_start, input_ns, infer_ns, output_ns, requests, traced_in_batch,
         rows) = trace
        if enqueue == 0:  # refused before the queue
            return
        if batch_id == 0:  # it failed in the queue (timeout, cancel, shutdown)
            self.child(span, "queue", enqueue + offset_ns, end_ns)
            return
        self.child(span, "queue", enqueue + offset_ns, dispatch + offset_ns)
        start, end = compute_start + offset_ns, compute_start + input_ns + infer_ns + output_ns + offset_ns
        batch = {"modelserve.batch.id": batch_id, "modelserve.batch.size": rows, "modelserve.batch.requests": requests}
        self.child(span, "execute", start, end, {**batch, "modelserve.compute.input_ns": input_ns,
                                                "modelserve.compute.infer_ns": infer_ns,
                                                "modelserve.compute.output_ns": output_ns})
        if traced and traced_in_batch > 0:
            self._join_batch(batch_id, traced_in_batch, start, end, batch, span.get_span_context())

    def _join_batch(self, batch_id: int, expected: int, start_ns: int, end_ns: int, attributes: dict[str, Any],
                    link: Any) -> None:
        done: list[_OpenBatch] = []
        with self._lock:
            entry = self._open.get(batch_id)
            if entry is None:
                entry = self._open[batch_id] = _OpenBatch(expected, start_ns, end_ns, attributes)
            entry.links.append(self._trace.Link(link))
            if len(entry.links) >= entry.expected:
                done.append(self._open.pop(batch_id))
            stale = time.monotonic() - self.OPEN_BATCH_S
            for bid, e in list(self._open.items()):  # oldest first
                if e.seen_at >= stale and len(self._open) <= self.MAX_OPEN_BATCHES:
                    break
                done.append(self._open.pop(bid))
        for entry in done:
            self._end_batch(entry)

    def _end_batch(self, entry: _OpenBatch) -> None:
        attributes = {**entry.attributes, "modelserve.batch.traced_requests": len(entry.links)}
        span = self.tracer.start_span("batch", kind=self._trace.SpanKind.INTERNAL, links=entry.links,
                                      start_time=entry.start_ns, attributes=attributes)
        span.end(end_time=entry.end_ns)

    def flush(self) -> None:
        """Ends the batches still open and exports what is buffered."""
        with self._lock:
            entries, self._open = list(self._open.values()), {}
        for entry in entries:
            self._end_batch(entry)
        self.provider.force_flush()

    def close(self) -> None:
        self.flush()
        self.provider.shutdown()

    @staticmethod
    def trace_id_of(span: Any) -> str:
        return format(span.get_span_context().trace_id, "032x")
