"""Admission control: deadlines from the transports, and the retry hint of a refused request.

Note [Admission control]
~~~~~~~~~~~~~~~~~~~~~~~~
The core does the admitting (csrc/sched/dynamic_batcher.h): a request is refused at once with
RESOURCE_EXHAUSTED when its model's queue is full by count (``max_queue_size``) or by input bytes
(``max_queue_bytes``); an admitted request waits in its priority level and is failed with
DEADLINE_EXCEEDED in the queue when its deadline passes, and removed at once when its client
cancels, so neither ever reaches the backend. What this module adds:

- **Deadlines** come from the request's ``timeout`` parameter (microseconds), the gRPC deadline,
  or the HTTP header ``Request-Timeout-Ms`` (:data:`DEADLINE_HEADER`, milliseconds); the
  earliest wins and becomes the request's queue timeout.
- **Retry hint.** A refusal carries ``retry_after_s``, the time the queue ahead needs to drain at
  the model's measured rate: ``(queued + in_flight) / (instances x requests per batch / batch
  time)``, from the core's cumulative statistics (the batch time from ``batch_stats``, where each
  batch counts once) (one second before anything has run; plus the
  last cold-start time when the version has no instance). The HTTP frontend sends it as
  ``Retry-After`` (whole seconds, at least 1), the gRPC frontend as the trailing metadata
  ``grpc-retry-pushback-ms`` (gRPC's own retry-throttling key, in milliseconds).
"""

from __future__ import annotations

import time
from typing import Any

from .errors import InvalidArgumentError, ResourceExhaustedError

__all__ = ["DEADLINE_HEADER", "RETRY_PUSHBACK_KEY", "header_deadline_us", "retry_after_s", "with_retry_hint"]

#: The HTTP request header carrying the caller's deadline, in milliseconds from now.
DEADLINE_HEADER = "Request-Timeout-Ms"
#: gRPC trailing metadata key with the retry hint in milliseconds (gRFC A6's pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

_MAX_TIMEOUT_US = 1 << 40  # as the request parameter's cap (server/common.py): "none" in practice
_MIN_HINT_S = 0.001
_MAX_HINT_S = 60.0


def header_deadline_us(value: str | None, what: str) -> int | None:
    """The ``Request-Timeout-Ms`` header as microseconds (None when absent)."""
    if value is None:
        return None
    try:
        ms = float(value.strip())
    except ValueError:
        raise InvalidArgumentError(f"{what}: header {DEADLINE_HEADER} must be a number of milliseconds, got {value!r}") from None
    if not ms > 0 or ms != ms or ms == float("inf"):
        raise InvalidArgumentError(f"{what}: header {DEADLINE_HEADER} must be > 0 milliseconds, got {value!r}")
    return max(1, int(min(ms * 1000, _MAX_TIMEOUT_US)))


def retry_after_s(stats: dict[str, Any], last_cold_start_s: float | None = None) -> float:
    """How long the queue ahead of a refused request takes to drain (Note [Admission control]).

    The model-wide ``compute_*_ns`` are summed per request (Triton's ModelStatistics), so a batch
    of n requests counts its time n times there; the time of one batch is taken from
    ``batch_stats``, where each batch counts once."""
    instances = stats.get("instances", 0)
    ahead = stats.get("queued", 0) + stats.get("in_flight", 0)
    batches = stats.get("execution_count", 0)
    completed = stats.get("success_count", 0)
    per_size = stats.get("batch_stats") or {}
    batch_count = sum(b["count"] for b in per_size.values())
    if batches and completed and batch_count:
        batch_ns = sum(b["compute_input_ns"] + b["compute_infer_ns"] + b["compute_output_ns"] for b in per_size.values())
        batch_s = batch_ns / batch_count / 1e9
        rate = max(instances, 1) * (completed / batches) / max(batch_s, 1e-6)  # requests per second
        hint = ahead / rate
    else:
        hint = 1.0
    if instances == 0:
        hint += last_cold_start_s if last_cold_start_s is not None else 1.0
    return min(max(hint, _MIN_HINT_S), _MAX_HINT_S)


def with_retry_hint(error: ResourceExhaustedError, version: Any) -> ResourceExhaustedError:
    """Attaches ``retry_after_s`` for ``version`` (a ModelVersion) to a refusal; returns it.
    The hint is recomputed at most every 50 ms per version: under overload refusals are many, and
    each must stay cheap."""
    engine = version.engine
    if engine is None or getattr(error, "retry_after_s", None) is not None:
        return error
    now = time.monotonic()
    cached = getattr(version, "_retry_hint", None)
    if cached is None or now - cached[0] > 0.05:
        try:
            cached = (now, retry_after_s(engine.stats(), version.last_cold_start_s))
        except Exception:  # the engine closed meanwhile: no hint
            return error
        version._retry_hint = cached
    error.retry_after_s = cached[1]  # type: ignore[attr-defined]
    return error
