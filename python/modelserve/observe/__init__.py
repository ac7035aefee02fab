"""Request-level observation: traces, payload logs and input drift.

- :mod:`.tracing`: OpenTelemetry spans joined to the caller's W3C trace context
  (``pip install 'modelserve[otel]'``).
- :mod:`.payload`: sampled request records, written off the request path (Note [Payload log]).
- :mod:`.drift`: each numeric input against a reference, counted in the core (Note [Input drift]
  in csrc/monitor/drift_monitor.h); on by default, per model.

The frontends ask the Runtime's :class:`Observer` for a :class:`Watch` per request
(:meth:`Observer.watch`, which returns None for a request nothing samples: the common case costs a
header lookup and a random draw); the Runtime tells the watch where the request went and finishes
it with the outcome. Nothing here imports OpenTelemetry unless tracing is configured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .payload import PayloadLog, status_name
from .tracing import TraceParent, parse_traceparent

__all__ = ["Observer", "Watch", "watched", "TRACEPARENT", "TRACESTATE"]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: Core submit flags (csrc/python/bindings.cc, Note [Request spans]): count the request as traced
#: in its batch; keep its inputs in its response.
TRACED, KEEP_INPUTS = 1, 2


class Observer:
    """Tracing and payload logging of one Runtime's requests; either may be None (off)."""

    def __init__(self, tracing: Any = None, payload_log: PayloadLog | None = None) -> None:
        self.tracing = tracing
        self.payload_log = payload_log
        #: Whether any request may be watched; frontends skip even the header lookup when not.
        self.active = tracing is not None or payload_log is not None
        self.invalid_trace_context: dict[str, int] = {}  # by protocol: malformed traceparent headers

    def watch(self, protocol: str, name: str, model: str, header: Callable[[str], str | None]) -> "Watch | None":
        """A watch for a request naming ``model`` that arrived by ``protocol`` (``grpc``, ``http``),
        ``name`` being its span's (``ModelInfer mlp``, ``POST /v2/models/mlp/infer``), or None when
        neither tracing nor the payload log samples it. ``header(key)`` reads a request header
        or metadata entry (lower-case keys)."""
        parent = None
        traced = False
        if self.tracing is not None:
            parent = self._parent(protocol, header)
            traced = self.tracing.sampling.sample(parent)
        drawn = self.payload_log.draw(model) if self.payload_log is not None else None
        if not traced and drawn is None:
            return None
        if self.tracing is None:
            parent = self._parent(protocol, header)
        return Watch(self, protocol, name, model, parent, traced, drawn)

    def _parent(self, protocol: str, header: Callable[[str], str | None]) -> TraceParent | None:
        value = header(TRACEPARENT)
        if value is None:
            return None
        parent = parse_traceparent(value, header(TRACESTATE))
        if parent is None:  # a new trace starts; the caller's header is counted as malformed
            self.invalid_trace_context[protocol] = self.invalid_trace_context.get(protocol, 0) + 1
        return parent

    def flush(self) -> None:
        if self.tracing is not None:
            self.tracing.flush()
        if self.payload_log is not None:
            self.payload_log.flush()

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()
        if self.payload_log is not None:
            self.payload_log.close()


class Watch:
    """One observed request: its arrival, where it was routed, and (through :meth:`finish` or
    :meth:`finish_generation`) its outcome."""

    __slots__ = ("observer", "protocol", "name", "endpoint", "parent", "traced", "payload", "start_ns",
                 "start_mono_ns", "model", "version", "target", "pending", "finished", "prompt")

    def __init__(self, observer: Observer, protocol: str, name: str, endpoint: str, parent: TraceParent | None,
                 traced: bool, payload: tuple[str, tuple[str, ...]] | None) -> None:
        self.observer = observer
        self.protocol, self.name, self.endpoint = protocol, name, endpoint
        self.parent, self.traced, self.payload = parent, traced, payload
        self.start_ns, self.start_mono_ns = time.time_ns(), time.monotonic_ns()
        self.model: str = endpoint
        self.version: int | None = None
        self.target: str | None = None
        self.pending: Any = None  # the core's completed request, once known
        self.finished = False  # only the first finish counts (a frontend may finish a refusal)
        self.prompt: Any = None  # a generation's prompt as the client sent it (else the engine's)

    @property
    def flags(self) -> int:
        """The core submit flags for this request."""
        keep = self.payload is not None and self.payload[0] != "none"
        return (TRACED if self.traced else 0) | (KEEP_INPUTS if keep else 0)

    def routed(self, model: str, version: int) -> None:
        self.model, self.version = model, version

    def on_route(self, target: str) -> None:
        """A traffic policy sent the request to ``target`` (its target id)."""
        self.target = target

    def _end(self) -> tuple[int, int]:
        """(wall-clock end in ns, the offset from the steady clock to the wall clock)."""
        mono = time.monotonic_ns()
        return self.start_ns + (mono - self.start_mono_ns), self.start_ns - self.start_mono_ns

    def _attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {"modelserve.model": self.model, "modelserve.endpoint": self.endpoint,
                                      "modelserve.protocol": self.protocol}
        if self.version is not None:
            attributes["modelserve.version"] = self.version
        if self.target is not None:
            attributes["modelserve.traffic_target"] = self.target
        return attributes

    def _trace_id(self, span: Any) -> str:
        if span is not None:
            return self.observer.tracing.trace_id_of(span)
        if self.parent is not None:
            return format(self.parent.trace_id, "032x")
        return os.urandom(16).hex()

    def _head(self, end_ns: int, trace_id: str, error: BaseException | None) -> dict[str, Any]:
        head = {
            "time": _iso(self.start_ns), "model": self.model, "version": self.version, "endpoint": self.endpoint,
            "target": self.target, "protocol": self.protocol, "trace_id": trace_id, "status": status_name(error),
            "latency_ms": round((end_ns - self.start_ns) / 1e6, 3),
        }
        if error is not None:
            head["error"] = str(error)
        return head

    def finish(self, error: BaseException | None = None, inputs: Mapping[str, Any] | None = None,
               outputs: Mapping[str, Any] | None = None) -> None:
        """An inference request ended: with ``error``, or with the core's completed ``pending``
        (set by the Runtime) whose outputs are the response. ``inputs``/``outputs``: the tensors
        when the caller has them as objects (else they are read from ``pending``). Only the first
        call counts."""
        if self.finished:
            return
        self.finished = True
        end_ns, offset = self._end()
        pending = self.pending
        span = None
        tracing = self.observer.tracing
        if self.traced and tracing is not None:
            span = tracing.start_request(self.name, self.parent, self.start_ns, self._attributes())
            if pending is not None:
                tracing.infer_children(span, pending.trace, offset, True, end_ns)
            tracing.end_request(span, end_ns, error)
        if self.payload is not None and self.observer.payload_log is not None:
            mode, exclude = self.payload
            if pending is not None and mode != "none":
                if inputs is None:
                    inputs = pending.inputs()
                if outputs is None and error is None:
                    outputs = pending.outputs(as_numpy=False)
            self.observer.payload_log.offer(self._head(end_ns, self._trace_id(span), error), inputs, outputs,
                                            mode, exclude)

    def finish_generation(self, timeline: Mapping[str, Any], error: BaseException | None) -> None:
        """A generation ended (on the engine's thread). ``timeline``: the engine's perf_counter
        times (``submitted``, ``scheduled``, ``first_token``, ``finished``: None where it never
        got), ``prompt`` (text or token ids), ``text``, ``tokens`` and ``finish_reason``."""
        if self.finished:
            return
        self.finished = True
        end_ns, _ = self._end()
        offset = self.start_ns - int(timeline["submitted"] * 1e9) if timeline.get("submitted") else 0
        span = None
        tracing = self.observer.tracing
        if self.traced and tracing is not None:
            attributes = {**self._attributes(), "modelserve.prompt_tokens": timeline.get("prompt_tokens", 0),
                          "modelserve.generated_tokens": timeline.get("tokens", 0)}
            if timeline.get("finish_reason"):
                attributes["modelserve.finish_reason"] = timeline["finish_reason"]
            span = tracing.start_request(self.name, self.parent, self.start_ns, attributes)
            marks = [timeline.get(k) for k in ("submitted", "scheduled", "first_token", "finished")]
            for name, (a, b) in zip(("queue", "first_token", "decode"), zip(marks, marks[1:])):
                if a is not None and b is not None:
                    tracing.child(span, name, int(a * 1e9) + offset, int(b * 1e9) + offset)
            tracing.end_request(span, end_ns, error)
        if self.payload is not None and self.observer.payload_log is not None:
            mode, exclude = self.payload
            prompt = self.prompt if self.prompt is not None else timeline.get("prompt")
            text = {"inputs": {"prompt": prompt},
                    "outputs": {"text": timeline.get("text"), "tokens": timeline.get("tokens")}}
            if error is not None:
                text["outputs"] = {}
            self.observer.payload_log.offer(self._head(end_ns, self._trace_id(span), error), None, None, mode,
                                            exclude, text=text)


T = TypeVar("T")


async def watched(watch: Watch, request: Awaitable[T], *, inputs: Mapping[str, Any] | None = None,
                  outputs: Callable[[T], Mapping[str, Any]] | None = None) -> T:
    """Awaits an inference request and finishes ``watch`` with its outcome (``outputs(result)``:
    the response's tensors, when the caller has them as objects)."""
    try:
        result = await request
    except BaseException as e:
        watch.finish(e, inputs=inputs)
        raise
    watch.finish(inputs=inputs, outputs=outputs(result) if outputs is not None else None)
    return result


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"
