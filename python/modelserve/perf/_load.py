"""The two load patterns, and what one step of a sweep measures.

Closed loop (``--concurrency N``): N workers, each sending its next request as soon as its last
one completes, so N requests are outstanding at all times. Open loop (``--request-rate R``):
requests are sent at scheduled arrival times (every 1/R s, or exponential gaps for a Poisson
process) whether or not earlier ones have completed; an arrival that finds
``--max-outstanding`` requests in flight is dropped and counted, never delayed.

Note [What a step counts]
A step runs ``warmup + duration`` seconds. Only requests that complete inside the measured
window ``[start + warmup, start + warmup + duration]`` count: their number over ``duration``
is the throughput, the successful ones give the latency percentiles (from the send to the
completion, in the client), the failed ones the error count. Requests still in flight when the
window closes are awaited, so steps never overlap, and not counted. In open loop, ``sent`` and
``drops`` count arrivals scheduled inside the window, and a send that happens after its
scheduled time (the client could not keep up) shows as a lower sent rate, not as latency.

Note [Client saturation]
One Python process drives the load from one event loop. When that loop is busy nearly all the
time, the figures measure the client, not the server. Each step therefore samples the loop
thread's CPU time (``time.thread_time``) and the whole process's (``time.process_time``, which
includes the gRPC library's own threads) over the window; the report flags a step whose loop was
at least ``SATURATED`` busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import numpy as np

from ._client import describe_error

__all__ = ["StepResult", "run_closed", "run_open", "SATURATED"]

SATURATED = 0.9  # loop-thread CPU share above which a step is flagged as client-bound


@dataclass
class StepResult:
    mode: str  # "concurrency" or "request_rate"
    concurrency: int | None
    target_rate: float | None
    duration_s: float
    batch_size: int
    requests: int  # successful requests completed in the window
    errors: int
    first_error: str | None
    requests_per_s: float
    inferences_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    sent_per_s: float | None  # open loop only
    drops: int | None  # open loop only
    client_cpu_percent: float  # process CPU time over wall time, % of one core
    loop_busy_percent: float  # event-loop thread CPU time over wall time
    error_p99_ms: float | None = None  # how fast failures were answered (refusals under overload)

    @property
    def level(self) -> float:
        return self.concurrency if self.mode == "concurrency" else self.target_rate

    @property
    def client_saturated(self) -> bool:
        return self.loop_busy_percent >= SATURATED * 100

    def as_dict(self) -> dict:
        d = asdict(self)
        d["client_saturated"] = self.client_saturated
        return d


class _Window:
    """Collects what completes inside the measured window (Note [What a step counts])."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.error_latencies: list[float] = []
        self.errors = 0
        self.first_error: str | None = None
        self.cpu = (0.0, 0.0, 0.0)  # wall, process, thread seconds over the window

    def record(self, sent: float, done: float, error: BaseException | None) -> None:
        if not self.start <= done <= self.end:
            return
        if error is None:
            self.latencies.append(done - sent)
        else:
            self.errors += 1
            self.error_latencies.append(done - sent)
            if self.first_error is None:
                self.first_error = describe_error(error)

    async def sample_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))
        w0, p0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.sleep(max(0.0, self.end - time.perf_counter()))
        self.cpu = (time.perf_counter() - w0, time.process_time() - p0, time.thread_time() - t0)

    def result(self, mode: str, level: float, duration: float, batch_size: int,
               sent: int | None = None, drops: int | None = None) -> StepResult:
        ms = np.array(self.latencies) * 1e3
        pct = np.percentile(ms, [50, 90, 99]).tolist() if len(ms) else [None] * 3
        wall, process, thread = self.cpu
        return StepResult(
            mode=mode,
            concurrency=int(level) if mode == "concurrency" else None,
            target_rate=float(level) if mode == "request_rate" else None,
            duration_s=duration, batch_size=batch_size,
            requests=len(ms), errors=self.errors, first_error=self.first_error,
            requests_per_s=len(ms) / duration, inferences_per_s=len(ms) * batch_size / duration,
            p50_ms=pct[0], p90_ms=pct[1], p99_ms=pct[2],
            max_ms=float(ms.max()) if len(ms) else None,
            mean_ms=float(ms.mean()) if len(ms) else None,
            sent_per_s=None if sent is None else sent / duration, drops=drops,
            client_cpu_percent=100 * process / wall if wall else 0.0,
            loop_busy_percent=100 * thread / wall if wall else 0.0,
            error_p99_ms=float(np.percentile(self.error_latencies, 99)) * 1e3 if self.error_latencies else None)


Send = Callable[[int], Awaitable[None]]  # sends request number i; raises on failure


async def run_closed(send: Send, concurrency: int, *, warmup: float, duration: float,
                     batch_size: int) -> StepResult:
    start = time.perf_counter() + warmup
    window = _Window(start, start + duration)

    async def worker(first: int) -> None:
        i = first
        while (sent := time.perf_counter()) < window.end:
            error = None
            try:
                await send(i)
            except Exception as e:  # every failure is counted, none aborts the run
                error = e
            window.record(sent, time.perf_counter(), error)
            i += concurrency

    sampler = asyncio.ensure_future(window.sample_cpu())
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    await sampler
    return window.result("concurrency", concurrency, duration, batch_size)


async def run_open(send: Send, rate: float, *, warmup: float, duration: float, batch_size: int,
                   poisson: bool, max_outstanding: int, rng: np.random.Generator) -> StepResult:
    begin = time.perf_counter()
    window = _Window(begin + warmup, begin + warmup + duration)
    in_flight: set[asyncio.Task] = set()
    sent = drops = 0
    i = 0

    async def one(n: int) -> None:
        t = time.perf_counter()
        error = None
        try:
            await send(n)
        except Exception as e:
            error = e
        window.record(t, time.perf_counter(), error)

    sampler = asyncio.ensure_future(window.sample_cpu())
    due = begin
    while due < window.end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        counted = window.start <= due
        if len(in_flight) >= max_outstanding:
            drops += counted
        else:
            sent += counted
            task = asyncio.ensure_future(one(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
            if delay <= 0 and i % 64 == 0:
                await asyncio.sleep(0)  # behind schedule: still let responses be handled
        due += rng.exponential(1 / rate) if poisson else 1 / rate
    if in_flight:
        await asyncio.gather(*in_flight)
    await sampler
    return window.result("request_rate", rate, duration, batch_size, sent=sent, drops=drops)

