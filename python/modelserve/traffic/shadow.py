"""Shadow traffic: requests mirrored to a candidate whose answers are compared, never returned.

Note [Shadows never touch the caller]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A mirrored request is offered to a bounded queue only once the primary has answered (the
comparison needs the primary's outputs), from the caller's thread, in O(1) under one lock: if
``capacity`` jobs are already waiting it is dropped and counted, never waited for. Workers on a
background event loop (at most ``concurrency`` shadow calls in flight) run the jobs; a shadow
that raises, hangs or is unloaded costs its own metrics only. The primary's inputs are copied
(numpy arrays the caller may reuse) or kept (immutable request tensors), its outputs converted to
numpy, before the caller gets its answer back: that copy is the only cost a caller pays, and
only for the requests that are mirrored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelserveError
from .stats import ShadowStats, compare_outputs

__all__ = ["ShadowJob", "ShadowMirror", "BackgroundLoop"]

log = logging.getLogger("modelserve.traffic")


class BackgroundLoop:
    """An asyncio event loop on a daemon thread, started on first use: where shadow calls run and
    rollouts tick in a process that has no loop of its own to lend (the in-process Runtime)."""

    def __init__(self, name: str = "modelserve-traffic") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(10)
        except Exception:  # a stuck task: the loop stops anyway
            log.warning("traffic loop: tasks did not stop within 10 s")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


@dataclass
class ShadowJob:
    endpoint: str
    target: str
    model: str
    version: int | str | None
    inputs: dict[str, Any]
    primary: dict[str, np.ndarray]
    stats: ShadowStats


def snapshot_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs a shadow can use after the caller has moved on (Note [Shadows never touch the caller])."""
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def snapshot_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The primary's outputs as numpy copies (the Tensors a frontend holds return to their pool)."""
    return {k: np.array(v.numpy() if hasattr(v, "numpy") else v, copy=True) for k, v in outputs.items()}


class ShadowMirror:
    """The bounded queue and the workers of every shadow of one manager."""

    def __init__(
        self,
        infer: Callable[[str, int | str | None, Mapping[str, Any]], Awaitable[dict[str, Any]]],
        loop: Callable[[], asyncio.AbstractEventLoop],
        clock: Callable[[], float],
        *,
        capacity: int = 64,
        concurrency: int = 4,
    ) -> None:
        self._infer = infer
        self._get_loop = loop
        self._clock = clock
        self.capacity = capacity
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._jobs: deque[ShadowJob] = deque()  # guarded by _lock
        self._running = 0  # touched on the loop only
        self.dropped = 0  # guarded by _lock

    def offer(self, job: ShadowJob) -> bool:
        """Queues ``job``, or drops and counts it when ``capacity`` jobs already wait."""
        with self._lock:
            if len(self._jobs) >= self.capacity:
                self.dropped += 1
                job.stats.drop()
                return False
            self._jobs.append(job)
        self._get_loop().call_soon_threadsafe(self._kick)
        return True

    def queued(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _kick(self) -> None:
        while self._running < self.concurrency:
            with self._lock:
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        try:
            outputs = await self._infer(job.model, job.version, job.inputs)
        except ModelserveError as e:
            job.stats.outcomes.record(self._clock(), e.status.lower(), time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a catalog: counted, logged, never the caller's problem
            log.warning("shadow %s of endpoint '%s' failed: %s: %s", job.target, job.endpoint, type(e).__name__, e)
            job.stats.outcomes.record(self._clock(), "internal", time.perf_counter() - started)
        else:
            now = self._clock()
            job.stats.outcomes.record(now, "success", time.perf_counter() - started)
            try:
                job.stats.compare(now, compare_outputs(job.primary, outputs))
            except Exception as e:
                log.warning("shadow %s of endpoint '%s': outputs not comparable: %s", job.target, job.endpoint, e)
        finally:
            self._running -= 1
            self._kick()
