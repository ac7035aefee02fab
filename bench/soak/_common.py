"""What the long-running checks share: the server process, the RSS of its process tree, a mixed
load driver over tritonclient (closed loop to measure capacity, open loop to run at a fraction of
it, every request recorded), and the PASS/FAIL report.

The server is bench/e2e's ``ServeProcess`` (ports read from its log) with extra ``serve`` flags.
The driver records every request (send time, latency, outcome, the version that answered), which
``modelserve perf`` does not expose, so that the checks can compute figures over time windows
(p99 per interval, p99 during swaps); capacity is measured with the same driver and request mix
as the load it sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import re
import threading
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.e2e.test_server_throughput import ServeProcess, process_tree

DEFAULT_OUT = Path("/tmp/modelserve-soak")


# --- the server ---------------------------------------------------------------------------------

#: ``modelserve serve`` on ports 0 over a repository, with extra flags:
#: ``Server(repository, "--model-control-mode", "explicit")``.
Server = ServeProcess


# --- memory -------------------------------------------------------------------------------------

def _vmrss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss(pid: int) -> int:
    """Resident bytes (VmRSS) of process ``pid`` and all its descendants (Linux /proc)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += _vmrss(p)
        except OSError:  # it ended meanwhile
            continue
    return total


class RssSampler:
    """Samples ``tree_rss(pid)`` every ``interval`` seconds in a thread: ``samples`` holds
    ``(time.perf_counter(), bytes)``."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), tree_rss(self.pid)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.samples:
            return np.zeros(0), np.zeros(0)
        t, b = zip(*self.samples)
        return np.array(t), np.array(b, dtype=np.float64)

    def median(self, start: float, end: float) -> float:
        """The median RSS of the samples taken in ``[start, end]`` (perf_counter times)."""
        t, b = self.arrays()
        inside = b[(t >= start) & (t <= end)]
        return float(np.median(inside)) if len(inside) else float("nan")


# --- requests -----------------------------------------------------------------------------------

def describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Clients:
    """tritonclient's asyncio gRPC and HTTP clients and one long-lived gRPC stream (the sync
    client's ``start_stream``; responses matched to requests by id) to one server. Create and
    use inside the event loop."""

    PROTOCOLS = ("grpc", "http", "stream")

    def __init__(self, server: Server, *, connections: int = 256) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio
        import tritonclient.http.aio as httpaio

        self._grpc_module, self._http_module = grpcclient, httpaio
        self._loop = asyncio.get_running_loop()
        self.grpc = grpcaio.InferenceServerClient(server.url("grpc"))
        self.http = httpaio.InferenceServerClient(server.url("http"), conn_limit=connections)
        self._stream = grpcclient.InferenceServerClient(server.url("grpc"))
        self._stream.start_stream(self._on_stream)
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()

    def prepare(self, protocol: str, arrays: dict[str, np.ndarray]) -> list:
        """The request inputs for ``protocol``, serialized once and reused by every request."""
        module = self._http_module if protocol == "http" else self._grpc_module
        out = []
        for name, a in arrays.items():
            t = module.InferInput(name, list(a.shape), _DATATYPES[a.dtype.str[1:]])
            if protocol == "http":
                t.set_data_from_numpy(a, binary_data=True)
            else:
                t.set_data_from_numpy(a)
            out.append(t)
        return out

    async def infer(self, protocol: str, model: str, prepared: list, outputs: Sequence[str],
                    version: str = "") -> tuple[dict[str, np.ndarray], int]:
        """One request; returns its ``outputs`` and the version that answered; raises on failure."""
        if protocol == "grpc":
            r = await self.grpc.infer(model, prepared, model_version=version)
            answered = r.get_response().model_version
        elif protocol == "http":
            r = await self.http.infer(model, prepared, model_version=version)
            answered = r.get_response()["model_version"]
        else:
            request_id = str(next(self._ids))
            future = self._loop.create_future()
            self._pending[request_id] = future
            try:
                self._stream.async_stream_infer(model, prepared, model_version=version,
                                                request_id=request_id)
                r = await future
            finally:
                self._pending.pop(request_id, None)
            answered = r.get_response().model_version
        return {name: r.as_numpy(name) for name in outputs}, int(answered)

    def _on_stream(self, result, error) -> None:  # a gRPC thread
        self._loop.call_soon_threadsafe(self._resolve, result, error)

    def _resolve(self, result, error) -> None:
        if error is None:
            request_id = result.get_response().id
        else:  # the server appends the request id to an in-band error's message
            m = re.search(r"request id '([^']*)'", str(error))
            request_id = m.group(1) if m else None
        if request_id is None:  # an error that names no request: it fails every pending one
            futures = list(self._pending.values())
        else:
            futures = [self._pending[request_id]] if request_id in self._pending else []
        for f in futures:
            if not f.done():
                f.set_result(result) if error is None else f.set_exception(error)

    async def close(self) -> None:
        self._stream.stop_stream(cancel_requests=True)
        self._stream.close()
        await self.grpc.close()
        await self.http.close()


_DATATYPES = {"f4": "FP32", "f8": "FP64", "i4": "INT32", "i8": "INT64", "u1": "UINT8"}


@dataclass
class Op:
    """One kind of request in a mix: ``send()`` runs one and returns an int (the serving checks:
    the version that answered), raising on any failure (a wrong answer included)."""

    name: str
    weight: float
    send: Callable[[], Awaitable[int]]


@dataclass
class Records:
    """Every request of a run: send time (perf_counter), latency (s), op index, success, and the
    answer (what the op's ``send()`` returned: the version that answered, for the serving ops)."""

    ops: list[str]
    # Typed arrays, not lists: a 30-minute soak records over a million requests.
    sent: array = field(default_factory=lambda: array("d"))
    latency: array = field(default_factory=lambda: array("d"))
    op: array = field(default_factory=lambda: array("i"))
    ok: array = field(default_factory=lambda: array("b"))
    answer: array = field(default_factory=lambda: array("q"))
    errors: Counter = field(default_factory=Counter)  # "op: message" -> count
    drops: int = 0  # arrivals not sent: max_outstanding requests already in flight
    lag: array = field(default_factory=lambda: array("d"))  # open loop: s each arrival was sent after its time
    client_cpu: float = 0.0  # open loop: this process's CPU seconds / wall seconds (1.0 = one core)

    def add(self, sent: float, latency: float, op: int, answer: int, error: BaseException | None) -> None:
        self.sent.append(sent)
        self.latency.append(latency)
        self.op.append(op)
        self.ok.append(error is None)
        self.answer.append(answer)
        if error is not None:
            self.errors[f"{self.ops[op]}: {describe(error)}"[:300]] += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sent": np.array(self.sent, dtype=np.float64), "latency": np.array(self.latency, dtype=np.float64),
                "op": np.array(self.op, dtype=np.int64), "ok": np.array(self.ok, dtype=bool),
                "answer": np.array(self.answer, dtype=np.int64)}

    @property
    def failed(self) -> int:
        return len(self.ok) - sum(self.ok)


def p99_ms(latencies: np.ndarray) -> float:
    return float(np.percentile(latencies, 99) * 1e3) if len(latencies) else float("nan")


class Driver:
    """Sends a weighted mix of ``ops``, the op of each request drawn from a generator seeded
    with ``seed``; a request taking longer than ``timeout`` seconds fails."""

    def __init__(self, ops: Sequence[Op], seed: int, timeout: float = 30.0) -> None:
        self.ops = list(ops)
        weights = np.array([op.weight for op in ops], dtype=np.float64)
        self._cumulative = list(np.cumsum(weights / weights.sum()))
        self._rng = np.random.default_rng(seed)
        self.timeout = timeout

    def _pick(self) -> int:
        return min(bisect.bisect_right(self._cumulative, self._rng.random()), len(self.ops) - 1)

    async def _one(self, records: Records) -> None:
        i = self._pick()
        sent = time.perf_counter()
        answer, error = 0, None
        try:
            answer = await asyncio.wait_for(self.ops[i].send(), self.timeout)
        except Exception as e:  # counted; no failure stops the run
            error = e
        records.add(sent, time.perf_counter() - sent, i, answer, error)

    async def closed(self, concurrency: int, duration: float, warmup: float = 2.0) -> tuple[float, Records]:
        """``concurrency`` requests outstanding for ``warmup + duration`` s; returns the
        successful requests/s completed in the last ``duration`` s, and the records."""
        records = Records([op.name for op in self.ops])
        end = time.perf_counter() + warmup + duration

        async def worker() -> None:
            while time.perf_counter() < end:
                await self._one(records)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        a = records.arrays()
        done = a["sent"] + a["latency"]
        window = (done >= end - duration) & (done <= end) & a["ok"]
        return float(window.sum() / duration), records

    async def open(self, rate: float, duration: float, *, max_outstanding: int = 1024,
                   records: Records | None = None) -> Records:
        """Arrivals every ``1 / rate`` s for ``duration`` s, whatever the latency (open loop);
        an arrival finding ``max_outstanding`` requests in flight is dropped and counted."""
        records = records if records is not None else Records([op.name for op in self.ops])
        in_flight: set[asyncio.Task] = set()
        start = due = time.perf_counter()
        cpu0 = time.process_time()
        n = 0
        while due < start + duration:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: still let responses be handled
            records.lag.append(time.perf_counter() - due)
            if len(in_flight) >= max_outstanding:
                records.drops += 1
            else:
                task = asyncio.ensure_future(self._one(records))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            n += 1
            due = start + n / rate
        if in_flight:
            await asyncio.gather(*in_flight)
        records.client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - start)
        return records


def client_rows(report: Report, records: Records) -> None:
    """The client's own figures (is the load generator keeping up?) and p99 per op."""
    a = records.arrays()
    report.info("client cpu (cores)", records.client_cpu)
    report.info("client send lag p99 ms", p99_ms(np.array(records.lag, dtype=np.float64)))
    for i, name in enumerate(records.ops):
        lat = a["latency"][a["ok"] & (a["op"] == i)]
        report.info(f"p50 / p99 ms {name}", f"{np.percentile(lat, 50) * 1e3:.2f} / {p99_ms(lat):.2f}" if len(lat) else "-")


# --- command line and report --------------------------------------------------------------------

def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every check takes (``--seed``, ``--out``, the capacity
    measurement); the description is the module's docstring."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seeds the request mix and data (default 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the PNG plot and the JSON figures (default {DEFAULT_OUT})")
    return p


def add_capacity_options(p: argparse.ArgumentParser, concurrency: int) -> None:
    p.add_argument("--capacity-duration", type=float, default=8.0,
                   help="seconds of the closed-loop capacity measurement, after 2 s of warm-up (default 8)")
    p.add_argument("--capacity-concurrency", type=int, default=concurrency,
                   help=f"requests outstanding while capacity is measured (default {concurrency})")


def positive(p: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


class Report:
    """Figures beside their targets; ``print()`` shows them aligned, ``status`` is 1 when any
    check failed."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str, str]] = []
        self.figures: dict[str, object] = {}

    def check(self, name: str, value: float, passed: bool, target: str, fmt: str = ".2f") -> None:
        self.rows.append((name, format(value, fmt), target, "PASS" if passed else "FAIL"))
        self.figures[name] = {"value": value, "target": target, "pass": bool(passed)}

    def info(self, name: str, value: object, fmt: str = ".2f") -> None:
        text = format(value, fmt) if isinstance(value, float) else str(value)
        self.rows.append((name, text, "", ""))
        self.figures[name] = value

    @property
    def status(self) -> int:
        return 1 if any(r[3] == "FAIL" for r in self.rows) else 0

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows + [("figure", "value", "target", "")]) for i in range(3)]
        print(f"\n== {self.title}")
        for name, value, target, verdict in [("figure", "value", "target", "")] + self.rows:
            print(f"{name.ljust(widths[0])}  {value.rjust(widths[1])}  {target.ljust(widths[2])}  {verdict}".rstrip())
        print("RESULT: " + ("FAIL" if self.status else "PASS"))

    def save(self, out: Path, name: str) -> Path:
        path = out / f"{name}.json"
        path.write_text(json.dumps({"title": self.title, "figures": self.figures}, indent=2, default=float))
        return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_average() -> str:
    a = os.getloadavg()
    return f"{a[0]:.2f} {a[1]:.2f} {a[2]:.2f} on {os.cpu_count()} CPUs"
