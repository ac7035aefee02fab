"""ModelEngine: one model version served by the native core (dynamic batcher + instances).

This is the layer the repository and the servers build on::

    engine = ModelEngine("add_one", MyModel(), max_batch_size=64,
                         dynamic_batching={"max_queue_delay_us": 500}, instance_count=2)
    out = engine.infer({"INPUT0": x})                  # blocking; the GIL is released while waiting
    out = await engine.infer_async({"INPUT0": x})      # asyncio; completions arrive in batches
    engine.close()

``backend`` is either a :class:`NativeBackend` (C++, for tests and benchmarks), the worker processes
of :func:`modelserve.backends.process.process_instances`, an object with
``execute(inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]`` shared by every
instance, or a callable ``factory(instance_index: int, device: str)`` that returns such an object
for each instance.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import cuda
from ._native import core as _core
from .errors import InvalidArgumentError

__all__ = ["ModelEngine", "AsyncRequest", "NativeBackend", "BATCHING_KEYS"]

NativeBackend = _core.NativeBackend

#: The settings of ``dynamic_batching`` (DESIGN.md's config section) the core understands.
BATCHING_KEYS = (
    "max_queue_delay_us",
    "latency_target_us",
    "preferred_batch_sizes",
    "max_queue_size",
    "max_queue_bytes",
    "default_timeout_us",
    "priority_levels",
    "default_priority_level",
)

Spec = tuple[str, str, Iterable[int]]


class _LoopCompletions:
    """Resolves the futures of one event loop from one CompletionQueue (see Note [Batched
    wake-ups] in csrc/python/completion_queue.h): one loop wake-up for many finished requests."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopCompletions]" = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = _core.CompletionQueue()
        self.futures: dict[int, asyncio.Future] = {}
        self.tags = itertools.count(1)
        loop.add_reader(self.queue.fileno(), self._drain)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_LoopCompletions":
        found = cls._by_loop.get(loop)
        if found is None:
            found = cls._by_loop[loop] = cls(loop)
        return found

    def _drain(self) -> None:
        for pending in self.queue.drain():
            future = self.futures.pop(pending.tag, None)
            if future is not None and not future.done():
                future.set_result(pending)


class AsyncRequest:
    """A queued request awaited from asyncio."""

    def __init__(self, pending: Any, future: asyncio.Future, completions: _LoopCompletions, tag: int) -> None:
        self.pending = pending
        self._future = future
        self._completions = completions
        self._tag = tag

    async def outputs(self, as_numpy: bool = True) -> dict[str, Any]:
        await self.done()
        return self.pending.outputs(as_numpy=as_numpy)

    async def done(self) -> Any:
        """Waits until the request has completed; returns its ``Pending`` (which raises the
        request's error from ``outputs()`` or ``encode_response()``)."""
        try:
            await self._future
        except asyncio.CancelledError:
            self._completions.futures.pop(self._tag, None)
            self.pending.cancel()
            raise
        return self.pending


# Engines still open when the interpreter exits are shut down by an atexit hook, while Python is
# fully alive: after that, instance threads running a Python backend could not take the GIL (the
# interpreter ends threads that try to during finalisation) and the process would crash on exit.
_open_engines: "weakref.WeakSet[ModelEngine]" = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_open_engines):
        engine.close(drain=False)


class ModelEngine:
    """A model version's dynamic batcher and instances in the native core."""

    def __init__(
        self,
        name: str,
        backend: Any,
        *,
        version: int = 1,
        max_batch_size: int = 0,
        dynamic_batching: Mapping[str, Any] | None = None,
        instance_count: int = 1,
        device: str = "auto",
        inputs: Iterable[Spec] = (),
        outputs: Iterable[Spec] = (),
    ) -> None:
        batching = dict(dynamic_batching or {})
        unknown = sorted(set(batching) - set(BATCHING_KEYS))
        if unknown:
            raise InvalidArgumentError(
                f"model '{name}': unknown dynamic_batching key(s) {unknown}; expected any of {list(BATCHING_KEYS)}"
            )
        if device == "auto":  # process instances run on the CPU (Note [Process instances])
            device = "cuda:0" if cuda.is_available() and not isinstance(backend, _core.ProcessInstances) else "cpu"
        self._model = _core.Model(
            name,
            version,
            backend=_factory_of(backend),
            instance_count=instance_count,
            device=device,
            inputs=[(n, dt, list(dims)) for n, dt, dims in inputs],
            outputs=[(n, dt, list(dims)) for n, dt, dims in outputs],
            max_batch_size=max_batch_size,
            **batching,
        )
        _open_engines.add(self)

    # --- requests -------------------------------------------------------------------------------
    def submit(
        self,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> Any:
        """Enqueues a request and returns its ``Pending`` handle (``wait()``, ``outputs()``,
        ``cancel()``). Raises at once when the request is refused (bad input, queue full)."""
        return self._model.submit(
            dict(inputs), outputs=list(outputs or ()), priority=priority, timeout_us=timeout_us
        )

    def infer(
        self,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> dict[str, np.ndarray]:
        """Runs one request and returns its outputs as numpy arrays (views of the batch output)."""
        return self.run(inputs, outputs=outputs, priority=priority, timeout_us=timeout_us).outputs()

    def run(
        self,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> Any:
        """Submits a request and waits for it; returns its completed ``Pending``. A request that
        finds an idle instance and nothing ahead of it runs on this thread, without a hand-off to
        the instance's thread and back (Note [Caller runs] in csrc/exec/executor.h)."""
        return self._model.run(dict(inputs), outputs=list(outputs or ()), priority=priority, timeout_us=timeout_us)

    def submit_async(
        self,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        observe: int = 0,
    ) -> "AsyncRequest":
        """Enqueues a request from a running event loop (synchronously: it is queued when this
        returns) and returns an :class:`AsyncRequest` to await. ``observe``: the flags of a
        watched request (modelserve.observe.Watch.flags)."""
        return _on_loop(lambda queue, tag: self._model.submit(
            dict(inputs), outputs=list(outputs or ()), priority=priority, timeout_us=timeout_us, queue=queue, tag=tag,
            observe=observe))

    def submit_parsed_async(self, request: Any, where: str, *, priority: int = 0, timeout_us: int = 0,
                            observe: int = 0) -> "AsyncRequest":
        """Enqueues a parsed ModelInferRequest (``_core.protocol.parse``) from a running event
        loop: the core decodes its inputs (raw ones as views of the request's bytes) and requested
        outputs, checks them and enqueues, all without Python objects per tensor (Note [Native
        request path] in csrc/protocol/infer_codec.h). ``where`` starts every error message."""
        return _on_loop(lambda queue, tag: self._model.submit_parsed(
            request, where, priority=priority, timeout_us=timeout_us, queue=queue, tag=tag, observe=observe))

    async def infer_async(
        self,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        as_numpy: bool = True,
    ) -> dict[str, Any]:
        """Like :meth:`infer` for asyncio. Cancelling the awaiting task removes the request from
        the queue if it has not started."""
        request = self.submit_async(inputs, outputs=outputs, priority=priority, timeout_us=timeout_us)
        return await request.outputs(as_numpy=as_numpy)

    # --- control --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._model.name

    @property
    def version(self) -> int:
        return self._model.version

    @property
    def device(self) -> str:
        return self._model.device

    @property
    def instance_count(self) -> int:
        return self._model.instance_count

    def set_instance_count(self, count: int) -> None:
        """Adds or retires instances while serving; queued requests wait, none are lost."""
        self._model.set_instance_count(count)

    @property
    def batching(self) -> dict[str, Any]:
        return self._model.batching()

    def set_batching(self, **settings: Any) -> None:
        """Changes dynamic batching settings while serving (not ``max_batch_size``)."""
        unknown = sorted(set(settings) - set(BATCHING_KEYS))
        if unknown:
            raise InvalidArgumentError(
                f"model '{self.name}': unknown batching setting(s) {unknown}; expected any of {list(BATCHING_KEYS)}"
            )
        self._model.set_batching(**settings)

    def set_drift_monitor(self, monitor: Any) -> None:
        """Has the core count every batch's inputs into ``monitor`` (a ``_core.DriftMonitor``,
        see modelserve.observe.drift); None stops."""
        self._model.set_drift_monitor(monitor)

    def stats(self) -> dict[str, Any]:
        """Cumulative statistics: successes, failures by code, queue and compute times, batch
        sizes, and the queued and in-flight counts now."""
        return self._model.stats()

    def close(self, drain: bool = True, timeout_s: float | None = 30.0) -> None:
        """Stops taking requests; with ``drain`` runs those queued, else fails them (UNAVAILABLE).

        A drain never waits for ever (Note [Drain] in csrc/exec/model.h): with no instance (scaled
        to zero) it starts one for the queue, and fails the queue at once when none can start;
        requests still queued after ``timeout_s`` (None: no limit) fail with UNAVAILABLE. Batches
        already running always finish."""
        if timeout_s is not None and not timeout_s >= 0:
            raise InvalidArgumentError(f"model '{self.name}': close timeout_s must be >= 0 or None, got {timeout_s}")
        # The core reads 0 as no limit.
        self._model.shutdown(drain, drain_timeout_s=0.0 if timeout_s is None else max(timeout_s, 1e-9))
        _open_engines.discard(self)

    def __enter__(self) -> "ModelEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _on_loop(submit: Any) -> AsyncRequest:
    """Runs ``submit(queue, tag)`` (a core submit that reports its completion to ``queue`` with
    ``tag``) for the running event loop, and returns the AsyncRequest that its future resolves."""
    loop = asyncio.get_running_loop()
    completions = _LoopCompletions.of(loop)
    tag = next(completions.tags)
    future = loop.create_future()
    completions.futures[tag] = future
    try:
        pending = submit(completions.queue, tag)
    except BaseException:
        completions.futures.pop(tag, None)
        raise
    return AsyncRequest(pending, future, completions, tag)


def _factory_of(backend: Any) -> Any:
    if isinstance(backend, (NativeBackend, _core.ProcessInstances)):
        return backend
    if hasattr(backend, "execute") and not isinstance(backend, type):
        return lambda instance, device: backend
    if callable(backend):
        return backend
    raise InvalidArgumentError(
        f"backend must be a NativeBackend, an object with execute(), or a factory callable; got {type(backend).__name__}"
    )

