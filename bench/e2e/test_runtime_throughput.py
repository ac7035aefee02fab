"""In-process Runtime throughput and time to READY, against a bare onnxruntime session.

Throughput (rows/s) of ``modelserve.Runtime("examples/models")`` for the ONNX models ``mlp``
(256-512-512-10 MLP) and ``recommender`` (default version) at request batch 1, 8 and 64.
Baseline, the limit: ``onnxruntime.InferenceSession`` on the same ``model.onnx`` with the
session options the onnx backend sets (intra-op threads = usable CPUs // instances.count unless
``parameters.intra_op_threads`` says otherwise, inter-op threads 1, graph optimisation "all"),
called in a loop with the same batch by one caller. Runtime load patterns:

- batch 1, closed loop: one caller, blocking ``rt.infer`` (the latency-oriented row);
- batch 1 and 8: asyncio, ``rt.infer_async`` with a bounded number of requests in flight
  (2 x max_batch_size rows), so that the dynamic batcher can form batches;
- batch 64: a few threads, each looping over blocking ``rt.infer``, keeping the instance busy.

Each case runs ``--bench-duration`` seconds in all, cut into ``ROUNDS`` slices; the slices of
the baseline and of the Runtime cases of one (model, batch) alternate in a seeded random order,
so that they share the machine's conditions, and each figure is the median over the slices.
Ratios are Runtime rows/s / bare rows/s in the same run. Target (reported, not asserted):
Runtime >= 90% of the bare session at batch 64. A second table splits the Runtime's time per
executed batch at batch 64, beside the bare session's time per call: ``session.run`` inside the
Runtime (timed by a thin proxy put in place of the backend's session for those tests only), the
rest of the backend's ``execute`` as the core times it, the core's gather and scatter
(``rt.model_statistics``), and the instance's idle time between batches.

Time to READY: ``load_s + warmup_s`` of every version of every example model
(``rt.model_versions``), beside the wall time of ``Runtime("examples/models")``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest

import modelserve
from modelserve.backends.onnx import session_options, usable_cpus

ort = pytest.importorskip("onnxruntime")

REPOSITORY = Path(__file__).resolve().parents[2] / "examples" / "models"
MODELS = ("mlp", "recommender")
BATCHES = (1, 8, 64)
ROUNDS = 10
TARGET = 0.90
TARGET_BATCH = 64
BATCH64_THREADS = 2
ROWS = 64  # rows of input data drawn per model; requests take the first ``batch``


def make_inputs(model: str, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    if model == "mlp":
        return {"INPUT0": rng.standard_normal((rows, 256), dtype=np.float32)}
    return {"USER_ID": rng.integers(0, 1000, (rows, 1), dtype=np.int64)}  # users 0..999


def first_rows(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(a[:rows]) for name, a in inputs.items()}


def bare_session(rt: modelserve.Runtime, model: str, version: int):
    """An InferenceSession with the options ``backends/onnx.py`` gives each instance."""
    config = rt.model_config(model, version)
    options = session_options(config["parameters"], config["instances"]["count"])
    providers: list = ["CPUExecutionProvider"]
    if (config["instances"]["device"] != "cpu" and modelserve.cuda.is_available()
            and "CUDAExecutionProvider" in ort.get_available_providers()):
        providers.insert(0, "CUDAExecutionProvider")
    path = REPOSITORY / model / str(version) / "model.onnx"
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class TimedSession:
    """Stands in for a backend's onnxruntime session and sums the time of its ``run`` calls
    (one instance, so one thread calls it)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.ns = 0

    def run(self, *args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return self.inner.run(*args, **kwargs)
        finally:
            self.ns += time.perf_counter_ns() - start

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextmanager
def timed_sessions(rt: modelserve.Runtime, model: str, version: int):
    """Proxies the ``session`` of the version's onnx backends (an internal of the repository:
    yields no proxies, and the split shows ``-``, where it is not found)."""
    mv = rt.repository.get(model).lookup(version)
    backends = [b for b in getattr(mv, "_backends", []) if getattr(b, "session", None) is not None]
    proxies = [TimedSession(b.session) for b in backends]
    for backend, proxy in zip(backends, proxies):
        backend.session = proxy
    try:
        yield proxies
    finally:
        for backend, proxy in zip(backends, proxies):
            backend.session = proxy.inner


# --- load generators: each returns (requests completed, elapsed s, latencies s) -----------------

def run_blocking(call, threads: int, seconds: float) -> tuple[int, float, list[float]]:
    """``threads`` callers, each calling ``call()`` back to back until ``seconds`` are up."""
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def caller(mine: list[float], stop: float) -> None:
        while (t0 := time.perf_counter()) < stop:
            call()
            mine.append(time.perf_counter() - t0)

    start = time.perf_counter()
    stop = start + seconds
    if threads == 1:
        caller(latencies[0], stop)
    else:
        workers = [threading.Thread(target=caller, args=(mine, stop)) for mine in latencies]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    elapsed = time.perf_counter() - start
    flat = [x for mine in latencies for x in mine]
    return len(flat), elapsed, flat


def run_async(loop, call_async, in_flight: int, seconds: float) -> tuple[int, float, list[float]]:
    """``in_flight`` asyncio tasks, each awaiting ``call_async()`` back to back."""
    latencies: list[float] = []

    async def caller(stop: float) -> None:
        while (t0 := time.perf_counter()) < stop:
            await call_async()
            latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(caller(start + seconds) for _ in range(in_flight)))
        return time.perf_counter() - start

    elapsed = loop.run_until_complete(main())
    return len(latencies), elapsed, latencies


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def started():
    """The Runtime over the example repository, and the wall seconds its start took."""
    start = time.perf_counter()
    rt = modelserve.Runtime(REPOSITORY)
    start_s = time.perf_counter() - start
    with rt:
        yield rt, start_s


@pytest.fixture(scope="module")
def rt(started):
    return started[0]


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def throughput_table(tables):
    return tables(
        "in-process Runtime vs bare onnxruntime session (rows/s, median of "
        f"{ROUNDS} interleaved slices)",
        ["model", "batch", "runtime load", "bare rows/s", "runtime rows/s", "runtime/bare",
         "mean batch", "bare p50 µs", "runtime p50 µs"],
        formats={"bare rows/s": ".0f", "runtime rows/s": ".0f", "runtime/bare": ".2f",
                 "mean batch": ".1f", "bare p50 µs": ".0f", "runtime p50 µs": ".0f"},
        notes=["bare = 1 caller, session.run in a loop; mean batch = rows / batches the core "
               "executed during the Runtime slices; p50 µs = median latency of a call / request"])


@pytest.fixture(scope="module")
def split_table(tables):
    return tables(
        f"where the time goes at batch {TARGET_BATCH} (µs per executed batch, means over the "
        "slices)",
        ["model", "bare call", "session.run", "execute - run", "gather+scatter", "idle",
         "wall/batch", "wall/bare", "queue/request"],
        formats={"bare call": ".0f", "session.run": ".0f", "execute - run": ".0f",
                 "gather+scatter": ".1f", "idle": ".0f", "wall/batch": ".0f",
                 "wall/bare": ".2f", "queue/request": ".0f"},
        notes=["bare call = bare session.run per call; session.run = the same call inside the "
               "Runtime's onnx backend; execute - run = the core's compute_infer minus that "
               "(taking the GIL, numpy views, the Python execute()); gather+scatter = "
               "compute_input + compute_output; idle = wall/batch minus all of those (from the "
               "end of one batch to the start of the next on the instance); queue/request = "
               "queue_ns per request"])


@pytest.fixture(scope="module")
def ready_table(tables):
    return tables("time to READY of the example models (ms, from rt.model_versions)",
                  ["model", "version", "backend", "load ms", "warmup ms", "ready ms"],
                  formats={"load ms": ".1f", "warmup ms": ".1f", "ready ms": ".1f"})


# --- tests ------------------------------------------------------------------------------------

def default_version(rt: modelserve.Runtime, model: str) -> int:
    return int(rt.model_versions(model)["default"])


@pytest.mark.parametrize("model", MODELS)
def test_outputs_match_bare_session(rt, model, bench_seed):
    """Sanity: one request of 64 rows, and 8 requests of 8 rows submitted together (so the
    batcher merges them), give the bare session's outputs."""
    version = default_version(rt, model)
    session = bare_session(rt, model, version)
    names = [o.name for o in session.get_outputs()]
    inputs = make_inputs(model, np.random.default_rng(bench_seed), ROWS)
    expected = dict(zip(names, session.run(None, inputs)))
    got = rt.infer(model, inputs)
    assert sorted(got) == sorted(names)
    for name in names:
        assert got[name].shape == expected[name].shape
        assert np.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), name
    handles = [rt.submit(model, {k: v[i:i + 8].copy() for k, v in inputs.items()})
               for i in range(0, ROWS, 8)]
    for i, handle in zip(range(0, ROWS, 8), handles):
        handle.wait()
        out = handle.outputs()
        for name in names:
            assert np.allclose(out[name], expected[name][i:i + 8], rtol=1e-4, atol=1e-5), name


def stats_snapshot(rt: modelserve.Runtime, model: str, version: int) -> Counter:
    s = rt.model_statistics(model, version=version)[0]
    per_batch = s["batch_stats"].values()
    return Counter({
        "batches": s["execution_count"], "rows": s["inference_count"],
        "requests": s["success_count"], "failures": s["failure_count"],
        "queue_ns": s["queue_ns"],  # summed over requests
        "gather_ns": sum(b["compute_input_ns"] for b in per_batch),
        "execute_ns": sum(b["compute_infer_ns"] for b in per_batch),
        "scatter_ns": sum(b["compute_output_ns"] for b in per_batch),
    })


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", MODELS)
def test_throughput(rt, loop, model, batch, bench_seed, bench_duration, throughput_table,
                    split_table):
    version = default_version(rt, model)
    max_batch = rt.model_config(model, version)["max_batch_size"]
    session = bare_session(rt, model, version)
    feeds = first_rows(make_inputs(model, np.random.default_rng(bench_seed), ROWS), batch)
    in_flight = max(2, 2 * max_batch // batch)

    def bare():
        return run_blocking(lambda: session.run(None, feeds), 1, seconds)

    def closed_loop():
        return run_blocking(lambda: rt.infer(model, feeds), 1, seconds)

    def threaded():
        return run_blocking(lambda: rt.infer(model, feeds), BATCH64_THREADS, seconds)

    def in_flight_async():
        return run_async(loop, lambda: rt.infer_async(model, feeds), in_flight, seconds)

    if batch == TARGET_BATCH:
        cases = {"bare": bare, f"{BATCH64_THREADS} threads, blocking": threaded}
    else:
        cases = {"bare": bare, f"async, {in_flight} in flight": in_flight_async}
        if batch == 1:
            cases["closed loop, 1 caller"] = closed_loop

    # Warm up every case once (thread pools, the batcher, first-touch pages), then interleave.
    seconds = min(0.1, bench_duration / ROUNDS)
    for run in cases.values():
        run()
    seconds = bench_duration / ROUNDS
    order = list(cases)
    shuffle = random.Random(f"{bench_seed}/{model}/{batch}").shuffle
    rates: dict[str, list[float]] = {name: [] for name in cases}
    latencies: dict[str, list[float]] = {name: [] for name in cases}
    stats: dict[str, Counter] = {name: Counter() for name in cases}
    walls: Counter = Counter()
    run_ns: Counter = Counter()
    timed = timed_sessions(rt, model, version) if batch == TARGET_BATCH else nullcontext([])
    with timed as proxies:
        for _ in range(ROUNDS):
            shuffle(order)
            for name in order:
                before = stats_snapshot(rt, model, version)
                before_ns = sum(p.ns for p in proxies)
                requests, elapsed, lat = cases[name]()
                run_ns[name] += sum(p.ns for p in proxies) - before_ns
                stats[name] += stats_snapshot(rt, model, version) - before
                assert requests > 0
                rates[name].append(requests * batch / elapsed)
                latencies[name].extend(lat)
                walls[name] += elapsed

    base = statistics.median(rates["bare"])
    for name in cases:
        if name == "bare":
            continue
        s = stats[name]
        assert s["failures"] == 0 and s["requests"] == len(latencies[name])
        assert s["rows"] == batch * s["requests"]  # nothing else ran on this version meanwhile
        rate = statistics.median(rates[name])
        throughput_table.row((model, batch, name)).update({
            "model": model, "batch": str(batch), "runtime load": name, "bare rows/s": base,
            "runtime rows/s": rate, "runtime/bare": rate / base,
            "mean batch": s["rows"] / s["batches"],
            "bare p50 µs": statistics.median(latencies["bare"]) * 1e6,
            "runtime p50 µs": statistics.median(latencies[name]) * 1e6})
        if batch != TARGET_BATCH:
            continue
        ratio = rate / base
        throughput_table.notes.append(
            f"{model} v{version}: Runtime / bare at batch {batch} = {ratio:.2f}; target "
            f">= {TARGET:.2f}: " + ("met" if ratio >= TARGET else "NOT met"))
        batches = s["batches"]
        execute = s["execute_ns"] / batches / 1e3
        gather_scatter = (s["gather_ns"] + s["scatter_ns"]) / batches / 1e3
        wall = walls[name] * 1e6 / batches
        bare_call = walls["bare"] * 1e6 / len(latencies["bare"])
        row = split_table.row(model)
        row.update({"bare call": bare_call, "gather+scatter": gather_scatter,
                    "idle": wall - execute - gather_scatter, "wall/batch": wall,
                    "wall/bare": wall / bare_call,
                    "queue/request": s["queue_ns"] / s["requests"] / 1e3})
        if proxies:
            session_run = run_ns[name] / batches / 1e3
            row.update({"session.run": session_run, "execute - run": execute - session_run})
    if batch == BATCHES[0] and model == MODELS[0]:
        options = session.get_session_options()
        throughput_table.notes.append(
            f"bare session: intra_op_num_threads={options.intra_op_num_threads}, "
            f"inter_op_num_threads={options.inter_op_num_threads}, graph optimisation all, "
            f"spinning {options.get_session_config_entry('session.intra_op.allow_spinning')}, "
            f"{session.get_providers()[0]} (as backends/onnx.py sets them; "
            f"{usable_cpus()} usable CPUs)")


def test_time_to_ready(started, ready_table):
    rt, start_s = started
    total = 0.0
    for model in sorted({entry["name"] for entry in rt.repository_index()}):
        for version, described in sorted(rt.model_versions(model)["versions"].items(),
                                         key=lambda kv: int(kv[0])):
            assert described["state"] == "READY"
            phases = described["phases"]
            ready = phases["load_s"] + phases["warmup_s"]
            assert 0 < ready < start_s
            total += ready
            ready_table.row((model, version)).update({
                "model": model, "version": str(version), "backend": described["backend"],
                "load ms": phases["load_s"] * 1e3, "warmup ms": phases["warmup_s"] * 1e3,
                "ready ms": ready * 1e3})
    ready_table.notes.append(
        f'Runtime("examples/models") start, wall: {start_s * 1e3:.1f} ms; sum of ready: '
        f"{total * 1e3:.1f} ms; the rest ({(start_s - total) * 1e3:.1f} ms) is outside "
        "load + warmup (repository scan, config, backend imports, model signatures)")
