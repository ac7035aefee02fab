"""Payload logging: one JSON record per sampled request, written off the request path.

Note [Payload log]
~~~~~~~~~~~~~~~~~~
The request path only decides (one random draw against the model's sample rate) and, for a
sampled request, hands the writer thread a record holding references to its tensors: no copy,
no encoding, no I/O. The hand-off is a queue bounded in bytes (the tensors it keeps alive plus a
fixed allowance per record, ``queue_bytes``, 64 MiB by default): when the writer falls behind (a
slow disk, a stalled sink) the record is dropped and counted, and the request is never slowed.
The writer thread takes what has queued every 0.1 s (at once when the queue is half full, so a
burst is not dropped for want of a wake-up), turns the records into JSON-ready dicts, computing
each tensor's summary or values there, and gives them to the sink in one batch. A sink that
raises loses that batch (counted as ``sink_error``, logged once a minute at most); the writer
goes on.

A record::

    {"time": "2026-12-06T12:00:00.123456Z", "model": "mlp", "version": 2, "endpoint": "mlp",
     "target": "canary", "protocol": "grpc", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
     "status": "OK", "latency_ms": 1.93, "inputs": {...}, "outputs": {...}}

``endpoint`` is the model the request named, ``model`` and ``version`` what ran (a traffic
policy may pick another), ``target`` the policy's target id (null without a policy). A refused or
failed request has its ``status`` (the status name, e.g. ``RESOURCE_EXHAUSTED``) and ``error``
(the message), with the inputs when the core had decoded them. ``trace_id`` is the request's
trace (from ``traceparent``, or the one its span started), or a fresh random id. Tensors,
by mode: ``full``, ``{"datatype", "shape", "data"}`` with the values flattened in row-major
order as the protocol's JSON does (BYTES as UTF-8 strings, or ``{"b64": ...}`` when not UTF-8);
``summary``, ``{"datatype", "shape", "min", "max", "mean"}`` (BYTES: ``"bytes"``, the total
length); ``none``, no tensors. Names listed in ``exclude`` are left out. Generations record
``{"prompt": ...}`` and ``{"text": ..., "tokens": n}`` in the same modes (summary: lengths).
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError, ModelserveError

__all__ = ["PayloadLog", "PayloadSink", "FileSink", "load_sink", "MODES"]

log = logging.getLogger("modelserve.payload")

MODES = ("full", "summary", "none")
RECORD_ALLOWANCE = 1024  # bytes a record counts against the queue besides its tensors


class PayloadSink(Protocol):
    """Where records go. ``write`` gets a list of JSON-ready dicts, on the writer thread (it may
    block: records queue up meanwhile, then drop); ``close`` is called once at shutdown.
    ``--payload-sink module:Class`` names a class whose constructor takes no arguments."""

    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """JSON Lines in ``path``, rotated by size: when a write would take the file past
    ``max_bytes`` (0: never), it becomes ``path.1`` (``path.1`` becomes ``path.2``, ...; the
    oldest past ``keep`` is deleted) and a new file starts. Each batch is flushed."""

    def __init__(self, path: str | Path, max_bytes: int = 100 * 1024 * 1024, keep: int = 5) -> None:
        if max_bytes < 0 or keep < 1:
            raise InvalidArgumentError(f"payload log: max_bytes must be >= 0 and keep >= 1, got {max_bytes}, {keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
        except OSError as e:
            raise InvalidArgumentError(f"--payload-log {self.path}: cannot open for appending: {e.strerror}") from None
        self._size = self._file.tell()

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            line = (json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n").encode()
            if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._size += len(line)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


def load_sink(spec: str) -> PayloadSink:
    """The sink ``module:Class`` names, constructed with no arguments."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(f"--payload-sink {spec!r}: expected module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise InvalidArgumentError(f"--payload-sink {spec!r}: cannot import it: {e}") from None
    sink = cls()
    for method in ("write", "close"):
        if not callable(getattr(sink, method, None)):
            raise InvalidArgumentError(f"--payload-sink {spec!r}: the sink has no {method}() method")
    return sink


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class _Record:
    """What the request path queues: the facts and references to the tensors."""

    __slots__ = ("head", "inputs", "outputs", "mode", "exclude", "nbytes", "text")

    def __init__(self, head: dict[str, Any], inputs: Mapping[str, Any] | None, outputs: Mapping[str, Any] | None,
                 mode: str, exclude: Sequence[str], text: Mapping[str, Any] | None = None) -> None:
        self.head, self.mode, self.exclude, self.text = head, mode, exclude, text
        keep = mode != "none"
        self.inputs = inputs if keep else None
        self.outputs = outputs if keep else None
        held = sum(_nbytes(t) for t in (inputs or {}).values()) + sum(_nbytes(t) for t in (outputs or {}).values())
        self.nbytes = RECORD_ALLOWANCE + (held if keep else 0)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.head)
        if self.mode == "none":
            return out
        if self.text is not None:  # a generation
            for key, values in self.text.items():
                out[key] = {k: _text_value(v, self.mode) for k, v in values.items() if k not in self.exclude}
            return out
        for key, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            if tensors is not None:
                out[key] = {name: _tensor_value(t, self.mode) for name, t in tensors.items()
                            if name not in self.exclude}
        return out


def _nbytes(t: Any) -> int:
    n = getattr(t, "nbytes", None)
    return int(n) if n is not None else 0


def _tensor_value(t: Any, mode: str) -> dict[str, Any]:
    datatype = getattr(t, "datatype", None)
    a = np.asarray(t) if datatype != "BYTES" else t.numpy()
    if datatype is None:
        datatype = str(a.dtype)
    out: dict[str, Any] = {"datatype": datatype, "shape": list(a.shape)}
    if datatype == "BYTES" or a.dtype == object:
        items = [x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1)]
        if mode == "summary":
            out["bytes"] = sum(len(x) for x in items)
        else:
            out["data"] = [_text_or_b64(x) for x in items]
        return out
    if mode == "summary":
        if a.size:
            values = a.astype(np.float64, copy=False) if a.dtype != np.bool_ else a.astype(np.float64)
            out.update(min=_number(values.min()), max=_number(values.max()), mean=_number(values.mean()))
        return out
    out["data"] = a.reshape(-1).tolist() if datatype != "BF16" else a.reshape(-1).astype(np.float32).tolist()
    return out


def _number(x: Any) -> Any:
    x = float(x)
    return x if math.isfinite(x) else str(x)  # JSON has no NaN or infinity


def _text_or_b64(b: bytes) -> Any:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode("ascii")}


def _text_value(v: Any, mode: str) -> Any:
    if mode == "summary":
        return len(v) if isinstance(v, (str, list, tuple)) else v
    return v


class PayloadLog:
    """The sampler, the bounded queue and the writer thread of payload logging (Note [Payload
    log]). ``sink``: a :class:`PayloadSink` (``FileSink`` for ``--payload-log FILE``);
    ``sample``, ``mode`` and ``exclude``: the defaults a model's ``payload_log`` config may
    override (``settings_for(model)`` returns that config or None)."""

    #: How often the writer takes what has queued (sooner when the queue is half full).
    WRITE_INTERVAL_S = 0.1

    def __init__(self, sink: PayloadSink, *, sample: float = 1.0, mode: str = "summary",
                 exclude: Sequence[str] = (), queue_bytes: int = 64 * 1024 * 1024,
                 settings_for: Callable[[str], Any] | None = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise InvalidArgumentError(f"--payload-log-sample must be in [0, 1], got {sample}")
        if mode not in MODES:
            raise InvalidArgumentError(f"--payload-log-mode must be one of {', '.join(MODES)}, got {mode!r}")
        if queue_bytes < RECORD_ALLOWANCE:
            raise InvalidArgumentError(f"payload log queue_bytes must be >= {RECORD_ALLOWANCE}, got {queue_bytes}")
        self.sink = sink
        self.sample = sample
        self.mode = mode
        self.exclude = tuple(exclude)
        self.queue_bytes = queue_bytes
        self.settings_for = settings_for
        self._queue: deque[_Record] = deque()
        self._cv = threading.Condition()
        self._queued_bytes = 0  # guarded by _cv
        self._closed = False    # guarded by _cv
        self._busy = False      # guarded by _cv: the writer holds records taken from the queue
        self._hurry = False     # guarded by _cv: flush() asks for a round now
        self.written = 0        # records the sink took (writer thread)
        self.dropped = {"queue_full": 0, "sink_error": 0}
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="modelserve-payload-log", daemon=True)
        self._thread.start()

    # --- the request path ----------------------------------------------------------------------
    def settings(self, model: str) -> tuple[float, str, tuple[str, ...]]:
        """(sample, mode, exclude) for requests naming ``model``."""
        override = self.settings_for(model) if self.settings_for is not None else None
        if override is None:
            return self.sample, self.mode, self.exclude
        return (self.sample if override.sample is None else override.sample,
                self.mode if override.mode is None else override.mode,
                self.exclude + tuple(override.exclude))

    def draw(self, model: str) -> tuple[str, tuple[str, ...]] | None:
        """The mode and exclusions of a request for ``model`` that is sampled, else None."""
        sample, mode, exclude = self.settings(model)
        if sample <= 0.0 or (sample < 1.0 and random.random() >= sample):
            return None
        return mode, exclude

    def offer(self, head: dict[str, Any], inputs: Mapping[str, Any] | None, outputs: Mapping[str, Any] | None,
              mode: str, exclude: Sequence[str], text: Mapping[str, Any] | None = None) -> bool:
        """Queues a record; False (and counted) when the queue has no room for it."""
        record = _Record(head, inputs, outputs, mode, exclude, text)
        with self._cv:
            if self._closed or self._queued_bytes + record.nbytes > self.queue_bytes:
                self.dropped["queue_full"] += 1
                return False
            self._queue.append(record)
            self._queued_bytes += record.nbytes
            if self._queued_bytes * 2 > self.queue_bytes:  # else the writer's next round takes it
                self._cv.notify()
        return True

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    # --- the writer ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                # Rounds every WRITE_INTERVAL_S (sooner once the queue is half full): a wake-up
                # per record would take the GIL from the event loop as often as records come.
                self._cv.wait_for(lambda: self._closed or self._hurry or self._queued_bytes * 2 > self.queue_bytes,
                                  timeout=self.WRITE_INTERVAL_S)
                self._hurry = False
                if not self._queue:
                    if self._closed:
                        return
                    continue
                records = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._write(records)
            finally:
                with self._cv:  # their tensors go now: the bytes they held are free
                    self._queued_bytes -= sum(r.nbytes for r in records)
                    self._busy = False
                    self._cv.notify_all()

    def _write(self, records: list[_Record]) -> None:
        out = []
        for r in records:
            try:
                out.append(r.to_dict())
            except Exception as e:  # a tensor that cannot be read: the record keeps its facts
                head = dict(r.head)
                head["payload_error"] = f"{type(e).__name__}: {e}"
                out.append(head)
        try:
            self.sink.write(out)
            self.written += len(out)
        except Exception as e:
            self.dropped["sink_error"] += len(out)
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.error("payload log: the sink failed; %d records lost (%s: %s)", len(out), type(e).__name__, e)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until every queued record has reached the sink; False on timeout."""
        with self._cv:
            self._hurry = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: not self._queue and not self._busy, timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued (for up to ``timeout_s``), then closes the sink."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        try:
            self.sink.close()
        except Exception:
            log.exception("payload log: closing the sink failed")


def status_name(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, ModelserveError):
        return error.status
    return "CANCELLED" if type(error).__name__ == "CancelledError" else "INTERNAL"
