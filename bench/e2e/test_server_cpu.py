"""Server CPU per request: ``modelserve serve`` beside a bare grpc.aio servicer running the same
Python function inline (issue 13's benchmarks).

The question: does a request cost modelserve's server more CPU than the plainest Python gRPC
server doing the same work? Baseline: ``bare_servicer.py --compute NAME`` (a subprocess), which
decodes ``raw_input_contents`` into numpy, calls the function inline and encodes
``raw_output_contents``. Candidate: ``modelserve serve`` (a subprocess, bench/e2e's
``ServeProcess``) over a temporary repository whose Python-backend model runs the SAME function
object (``compute_models.py``, imported by both), ``max_batch_size: 64``,
``dynamic_batching: {max_queue_delay_us: 0}``, one instance. Models: ``trivial`` (OUTPUT0 =
2 * INPUT0 + 1 on FP32 [16]) and ``mlp`` (numpy 256-512-512-10, seeded weights). Both servers
run with one BLAS thread (``OPENBLAS_NUM_THREADS=1``, also OMP and MKL): the figure is the
server's own per-request work, and on two cores a BLAS pool would compete with the event loop.

The client is tritonclient's asyncio client in this process, closed loop (``concurrency``
requests outstanding), 1-row requests ([1, 16] or [1, 256] FP32, seeded random data, serialized
once), outputs not decoded. Each leg runs a warm-up of half ``--bench-duration`` (at least
0.3 s) and then measures ``--bench-duration`` seconds: server CPU (utime + stime, plus
cutime + cstime, of the server process and all its descendants, from ``/proc/PID/stat``) before
and after the window, divided by the requests completed in it; requests/s; client-side p50 of
the requests completed in it; this process's CPU over the window (the client's share of the two
cores). Every scenario runs ``ROUNDS`` rounds, each a servicer leg and a modelserve leg (the
order alternates, starting as ``--bench-seed`` draws it), and each figure is the median over its
rounds. Scenarios and targets (issue 13; reported, never asserted):

- ``trivial`` over gRPC at concurrency 32: CPU/request <= 1.0 x the servicer's.
- ``mlp`` over gRPC at concurrency 32: requests/s >= 1.3 x the servicer's (batching amortises
  the model) at CPU/request <= 1.0 x.
- ``trivial`` over gRPC at concurrency 1: p50 within 0.1 ms of the servicer's, at
  CPU/request <= 1.0 x (no spinning).
- ``trivial`` over modelserve's HTTP port with binary tensor data (``tritonclient.http.aio``,
  binary inputs and outputs) at concurrency 8, beside the servicer's gRPC figures at concurrency
  8: no target.

The table prints at the end with the load average at start and end (the machine is shared: two
cores, other work). Sanity asserts only: no request fails, and both servers' answers equal the
function's.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from . import compute_models
from .test_server_throughput import BARE_SERVICER, EchoProcess, ServeProcess, process_tree, warmup_s

grpcaio = pytest.importorskip("tritonclient.grpc.aio")
httpaio = pytest.importorskip("tritonclient.http.aio")

ROUNDS = 3
COMPUTE_MODELS = Path(compute_models.__file__).resolve()
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CPU_TARGET = 1.0  # modelserve's CPU/request over the servicer's, at most
MLP_RATE_TARGET = 1.3  # modelserve's req/s over the servicer's for mlp at concurrency 32, at least
P50_TARGET_MS = 0.1  # modelserve's p50 minus the servicer's at concurrency 1, at most
START_LOAD = os.getloadavg()

MODEL_PY = '''"""Written by bench/e2e/test_server_cpu.py: serves compute_models.COMPUTES[{name!r}], the
function the bare servicer runs inline, loaded from its file."""
import importlib.util

_spec = importlib.util.spec_from_file_location("bench_compute_models", {path!r})
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)
Model = _models.backend_model({name!r})
'''


@dataclass(frozen=True)
class Scenario:
    compute: str  # a name of compute_models.COMPUTES
    concurrency: int
    protocol: str  # modelserve's side: "grpc" or "http"; the servicer is always gRPC

    @property
    def label(self) -> str:
        via = "HTTP binary" if self.protocol == "http" else "gRPC"
        return f"{self.compute} {via} c={self.concurrency}"


SCENARIOS = (Scenario("trivial", 32, "grpc"), Scenario("mlp", 32, "grpc"),
             Scenario("trivial", 1, "grpc"), Scenario("trivial", 8, "http"))


# --- the processes ------------------------------------------------------------------------------

def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and all its live descendants (utime + stime, and
    cutime + cstime for children already reaped), from Linux ``/proc``."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state first
        except OSError:  # it ended meanwhile
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


class ComputeProcess(EchoProcess):
    """``bare_servicer.py --compute NAME`` standalone, ``max_batch_size`` 64 as modelserve's
    model; the rest (stop) is EchoProcess's."""

    def __init__(self, compute: str) -> None:  # noqa: super().__init__ starts the echo
        self.proc = subprocess.Popen(
            [sys.executable, str(BARE_SERVICER), "--port", "0", "--compute", compute,
             "--max-batch-size", "64"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"bare servicer --compute {compute} did not start: {line!r}")
        self.port = int(line)


def write_repository(root: Path, compute: str) -> Path:
    """A repository with one Python-backend model named after ``compute``, running it."""
    spec = compute_models.COMPUTES[compute]
    folder = root / compute
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(MODEL_PY.format(name=compute, path=str(COMPUTE_MODELS)))

    def tensors(items) -> str:
        return "".join(f"  - {{name: {n}, datatype: {d}, shape: {list(s)}}}\n" for n, d, s in items)

    (folder / "config.yaml").write_text(
        f"# {compute} from bench/e2e/compute_models.py (test_server_cpu.py)\n"
        "backend: python\nmax_batch_size: 64\n"
        f"inputs:\n{tensors(spec.inputs)}outputs:\n{tensors(spec.outputs)}"
        "dynamic_batching: {max_queue_delay_us: 0}\n"
        "instances: {count: 1, device: cpu}\n")
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """``{compute: (bare servicer, modelserve serve)}``, both started with one BLAS thread."""
    started: dict[str, tuple] = {}
    with pytest.MonkeyPatch.context() as env:
        for name, value in ONE_BLAS_THREAD.items():
            env.setenv(name, value)
        try:
            for compute in compute_models.COMPUTES:
                bare = ComputeProcess(compute)
                try:
                    serve = ServeProcess(write_repository(tmp_path_factory.mktemp(compute),
                                                          compute))
                except BaseException:
                    bare.stop()
                    raise
                started[compute] = (bare, serve)
        except BaseException:
            for bare, serve in started.values():
                bare.stop()
                serve.stop()
            raise
    yield started
    codes = []
    for bare, serve in started.values():
        bare.stop()
        codes.append(serve.stop())
    assert codes == [0] * len(codes), f"modelserve serve exit codes {codes}"


# --- the client ---------------------------------------------------------------------------------

def one_row(compute: str, seed: int) -> np.ndarray:
    _, _, shape = compute_models.COMPUTES[compute].inputs[0]
    return np.random.default_rng(seed).standard_normal((1, *shape), dtype=np.float32)


class Target:
    """tritonclient's asyncio client of one server over one protocol; ``send()`` is one request
    of the prepared row, its outputs left undecoded."""

    def __init__(self, url: str, protocol: str, compute: str, x: np.ndarray) -> None:
        self.protocol, self.compute = protocol, compute
        module = httpaio if protocol == "http" else grpcaio
        self.client = module.InferenceServerClient(url)
        name, datatype, _ = compute_models.COMPUTES[compute].inputs[0]
        tensor = module.InferInput(name, list(x.shape), datatype)
        if protocol == "http":
            tensor.set_data_from_numpy(x, binary_data=True)
            self.outputs = [module.InferRequestedOutput(o, binary_data=True)
                            for o, _, _ in compute_models.COMPUTES[compute].outputs]
        else:
            tensor.set_data_from_numpy(x)
            self.outputs = None  # every output, raw
        self.inputs = [tensor]

    async def send(self):
        return await self.client.infer(self.compute, self.inputs, outputs=self.outputs)

    async def close(self) -> None:
        await self.client.close()


@dataclass
class Leg:
    """One measured window against one server."""

    requests: int
    window_s: float
    server_cpu_s: float
    client_cpu_s: float
    p50_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.window_s

    @property
    def cpu_us(self) -> float:
        """Server CPU µs per request."""
        return self.server_cpu_s / self.requests * 1e6

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.window_s

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.window_s


async def closed_loop(send: Callable[[], Awaitable[object]], concurrency: int, warmup: float,
                      duration: float, pid: int) -> Leg:
    """``concurrency`` workers each sending the next request when the last one answers, for
    ``warmup + duration`` s; figures over the last ``duration`` s (server process tree ``pid``)."""
    measuring = stopping = False
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        while not stopping:
            sent = time.perf_counter()
            try:
                await send()
            except Exception as e:  # noqa: BLE001 (asserted below, after the leg)
                errors.append(f"{type(e).__name__}: {e}")
                return
            if measuring:
                latencies.append(time.perf_counter() - sent)

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    cpu0, client0, t0 = tree_cpu_seconds(pid), time.process_time(), time.perf_counter()
    measuring = True
    await asyncio.sleep(duration)
    measuring = False
    cpu1, client1, t1 = tree_cpu_seconds(pid), time.process_time(), time.perf_counter()
    stopping = True
    await asyncio.gather(*workers)
    assert not errors, f"{len(errors)} requests failed; first: {errors[0]}"
    assert latencies, "no request completed in the measured window"
    return Leg(len(latencies), t1 - t0, cpu1 - cpu0, client1 - client0,
               float(np.percentile(latencies, 50) * 1e3))


async def run_leg(url: str, protocol: str, scenario: Scenario, x: np.ndarray, pid: int,
                  duration: float) -> Leg:
    target = Target(url, protocol, scenario.compute, x)
    try:
        return await closed_loop(target.send, scenario.concurrency, warmup_s(duration), duration,
                                 pid)
    finally:
        await target.close()


# --- the table ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table(tables):
    end_note: list[str] = []
    t = tables(
        f"server CPU per request, modelserve serve vs bare grpc.aio servicer running the same "
        f"function inline (1-row requests, median of {ROUNDS} interleaved rounds)",
        ["scenario", "figure", "servicer", "modelserve", "ratio", "target", "met"],
        notes=[f"load average at start (1/5/15 min): {START_LOAD[0]:.2f} {START_LOAD[1]:.2f} "
               f"{START_LOAD[2]:.2f} on {os.cpu_count()} CPUs (shared with other work)",
               "cpu µs/req = CPU of the server's process tree over the window / requests "
               "completed in it; cores = that CPU / window; client cores = this process "
               "(tritonclient) over the window; ratio = modelserve / servicer (p50: the "
               "difference, ms)",
               "HTTP binary c=8: modelserve over HTTP beside the servicer over gRPC (it has no "
               "HTTP); no target"])
    yield t
    end = os.getloadavg()
    t.notes.append(f"load average at end (1/5/15 min): {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(table, scenario: Scenario, bare: list[Leg], ours: list[Leg]) -> None:
    def med(legs: list[Leg], figure: str) -> float:
        return statistics.median(getattr(leg, figure) for leg in legs)

    label = scenario.label
    rows = {}
    for figure, name, fmt in (("cpu_us", "cpu µs/req", ".0f"), ("rps", "req/s", ".0f"),
                              ("p50_ms", "p50 ms", ".3f"), ("server_cores", "server cores", ".2f"),
                              ("client_cores", "client cores", ".2f")):
        b, o = med(bare, figure), med(ours, figure)
        ratio = f"{o - b:+.3f} ms" if figure == "p50_ms" else f"{o / b:.2f}"
        rows[figure] = table.row((label, figure))
        rows[figure].update({"scenario": label, "figure": name, "servicer": format(b, fmt),
                             "modelserve": format(o, fmt), "ratio": ratio})
    cpu = med(ours, "cpu_us") / med(bare, "cpu_us")
    if scenario.protocol == "grpc":
        rows["cpu_us"].update({"target": f"<= {CPU_TARGET:.1f}x", "met": verdict(cpu <= CPU_TARGET)})
    if scenario.compute == "mlp":
        rate = med(ours, "rps") / med(bare, "rps")
        rows["rps"].update({"target": f">= {MLP_RATE_TARGET:.1f}x",
                            "met": verdict(rate >= MLP_RATE_TARGET)})
    if scenario.concurrency == 1:
        delta = med(ours, "p50_ms") - med(bare, "p50_ms")
        rows["p50_ms"].update({"target": f"<= +{P50_TARGET_MS:.1f} ms",
                               "met": verdict(delta <= P50_TARGET_MS)})
    table.notes.append(
        f"{label} rounds, cpu µs/req servicer / modelserve: "
        + ", ".join(f"{b.cpu_us:.0f}/{o.cpu_us:.0f}" for b, o in zip(bare, ours))
        + "; req/s: " + ", ".join(f"{b.rps:.0f}/{o.rps:.0f}" for b, o in zip(bare, ours)))


# --- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compute", sorted(compute_models.COMPUTES))
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_both_servers_answer_with_the_function(servers, compute, protocol, bench_seed):
    """Sanity: the servicer (gRPC) and modelserve (``protocol``) give the function's outputs."""
    x = one_row(compute, bench_seed)
    expected = compute_models.COMPUTES[compute].function({"INPUT0": x})
    bare, serve = servers[compute]

    async def ask(url: str, via: str) -> dict[str, np.ndarray]:
        target = Target(url, via, compute, x)
        try:
            result = await target.send()
            return {name: result.as_numpy(name) for name in expected}
        finally:
            await target.close()

    for url, via in ((f"127.0.0.1:{bare.port}", "grpc"), (serve.url(protocol), protocol)):
        got = asyncio.run(ask(url, via))
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{compute} {name} from {url} over {via}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.label.replace(" ", "-"))
def test_server_cpu_per_request(servers, scenario, bench_seed, bench_duration, table):
    bare, serve = servers[scenario.compute]
    x = one_row(scenario.compute, bench_seed)
    legs = {"servicer": (f"127.0.0.1:{bare.port}", "grpc", bare.pid),
            "modelserve": (serve.url(scenario.protocol), scenario.protocol, serve.pid)}
    first = random.Random(f"{bench_seed}/{scenario.label}").choice(sorted(legs))
    order = [first, *(name for name in legs if name != first)]
    measured: dict[str, list[Leg]] = {name: [] for name in legs}

    async def rounds() -> None:
        for r in range(ROUNDS):
            for name in order if r % 2 == 0 else reversed(order):
                url, protocol, pid = legs[name]
                measured[name].append(await run_leg(url, protocol, scenario, x, pid,
                                                    bench_duration))

    asyncio.run(rounds())
    report(table, scenario, measured["servicer"], measured["modelserve"])
