"""Latency-aware batching over gRPC against the best static queue delay (issue 14; Note [Latency
target] in csrc/sched/latency_target.h).

The model is compute-bound, and batching pays: an ONNX perceptron of ``LAYERS`` ``WIDTH`` x
``WIDTH`` MatMul + ReLU layers (128 MiB of seeded weights, built here with ``onnx.helper``),
served by the onnx backend with one intra-op thread, ``max_batch_size: 64``, one instance.
Reading the weights dominates a small batch: alone (one thread) one row takes ~8.6 ms (116
rows/s), 16 rows 18.7 ms (855 rows/s), 64 rows 52 ms (1,230 rows/s). The server is ``modelserve
serve`` (a subprocess, one BLAS thread); the client is tritonclient's asyncio gRPC client in
this process, open loop: requests are sent at their scheduled times whatever the answers do, and
each latency runs from the scheduled time (so a client that falls behind does not hide queueing).

Arrival patterns, at a mean of ``rate`` requests/s: ``steady`` (evenly spaced), ``poisson``
(exponential gaps, seeded) and ``bursty`` (on/off: 100 ms at twice the rate, then 100 ms idle).
Configurations: static ``max_queue_delay_us`` in ``STATIC_DELAYS_US`` and ``latency_target_us:
TARGET_US``, switched between runs through the settings API. For each pattern and
configuration, the highest rate whose p99 stays within ``TARGET_US`` is found by bisection over
[``LOW_RATE``, ``HIGH_RATE``], each probe ``--bench-duration`` seconds after a 0.5 s warm-up.

Targets (reported, not asserted): per pattern, the latency target's highest rate >= 0.9 x the
best static delay's; at low load (``LOW_P50_RATE`` steady, measured last, once the planner has
learnt the model under load) its p50 equals delay 0's (within 0.1 ms), as medians of
``LOW_ROUNDS`` alternations. Mean batch sizes are reported at each highest rate and at low load.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .test_server_cpu import ONE_BLAS_THREAD
from .test_server_throughput import ServeProcess

grpcaio = pytest.importorskip("tritonclient.grpc.aio")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

WIDTH = 2048
LAYERS = 8
TARGET_US = 100_000
STATIC_DELAYS_US = (0, 1000, 2000, 4000)
PATTERNS = ("steady", "poisson", "bursty")
LOW_RATE, HIGH_RATE = 10.0, 2000.0
BISECTIONS = 7
LOW_P50_RATE = 20.0  # requests/s of the low-load comparison, LOW_ROUNDS alternations of each config
LOW_ROUNDS = 3
RATIO_TARGET = 0.9
MODEL = "wide"


def write_repository(root: Path, seed: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, last = [], [], "INPUT0"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        out = "OUTPUT0" if i == LAYERS - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"{out}_mm"]),
                  helper.make_node("Relu", [f"{out}_mm"], [out])]
        last = out
    graph = helper.make_graph(
        nodes, MODEL, [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / MODEL
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.yaml").write_text(
        f"# {LAYERS} x {WIDTH} MatMul + ReLU (bench/e2e/test_latency_target.py)\n"
        "max_batch_size: 64\n"
        f"inputs: [{{name: INPUT0, datatype: FP32, shape: [{WIDTH}]}}]\n"
        f"outputs: [{{name: OUTPUT0, datatype: FP32, shape: [{WIDTH}]}}]\n"
        "dynamic_batching: {max_queue_delay_us: 0}\n"
        "parameters: {intra_op_threads: 1}\n"
        "instances: {count: 1, device: cpu}\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, bench_seed):
    with pytest.MonkeyPatch.context() as env:
        for name, value in ONE_BLAS_THREAD.items():
            env.setenv(name, value)
        serve = ServeProcess(write_repository(tmp_path_factory.mktemp("repo"), bench_seed))
    yield serve
    assert serve.stop() == 0


def http(serve: ServeProcess, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{serve.http_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def configure(serve: ServeProcess, config: str) -> None:
    """``config``: "delay=N" (static, µs) or "target" (TARGET_US)."""
    batching = ({"latency_target_us": TARGET_US, "max_queue_delay_us": 0} if config == "target" else
                {"latency_target_us": None, "max_queue_delay_us": int(config.split("=")[1])})
    http(serve, "PATCH", f"/modelserve/v1/models/{MODEL}/settings", {"dynamic_batching": batching})


def counts(serve: ServeProcess) -> tuple[int, int]:
    (s,) = http(serve, "GET", f"/v2/models/{MODEL}/stats")["model_stats"]
    return int(s["inference_count"]), int(s["execution_count"])


def schedule(pattern: str, rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Send times (s from the start) of ``pattern`` at a mean of ``rate`` requests/s."""
    if pattern == "steady":
        return [k / rate for k in range(int(seconds * rate))]
    if pattern == "poisson":
        times, t = [], rng.expovariate(rate)
        while t < seconds:
            times.append(t)
            t += rng.expovariate(rate)
        return times
    times, period, on = [], 0.2, 0.1  # bursty: twice the rate for half of each period
    for k in range(int(seconds * rate)):
        t = k / (2 * rate)
        times.append((t // on) * period + t % on)
    return times


async def run_load(client, inputs, times: list[float], model: str = MODEL) -> list[float]:
    """Sends a request for ``model`` at each of ``times``; latencies (s) from the scheduled time.
    A request still unanswered 2 s after the last send counts as infinitely late."""
    latencies: list[float] = []
    start = time.perf_counter() + 0.01

    async def one(at: float) -> None:
        await client.infer(model, inputs)
        latencies.append(time.perf_counter() - at)

    tasks = []
    for t in times:
        at = start + t
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at)))
    done, late = await asyncio.wait(tasks, timeout=2.0) if tasks else (set(), set())
    for task in late:
        task.cancel()
    for task in done:
        task.result()  # a failed request fails the benchmark
    return latencies + [float("inf")] * len(late)


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))]


class Probe:
    def __init__(self, serve, loop, client, inputs, seconds, seed):
        self.serve, self.loop, self.client, self.inputs = serve, loop, client, inputs
        self.seconds, self.rng = seconds, random.Random(seed)

    def __call__(self, pattern: str, rate: float) -> dict:
        self.loop.run_until_complete(run_load(self.client, self.inputs, schedule(pattern, rate, 0.5, self.rng)))
        rows0, batches0 = counts(self.serve)
        latencies = self.loop.run_until_complete(
            run_load(self.client, self.inputs, schedule(pattern, rate, self.seconds, self.rng)))
        rows1, batches1 = counts(self.serve)
        return {"p50": p(latencies, 0.5), "p99": p(latencies, 0.99),
                "mean_batch": (rows1 - rows0) / max(1, batches1 - batches0)}


def highest_rate(probe: Probe, pattern: str) -> tuple[float, dict]:
    """The highest rate in [LOW_RATE, HIGH_RATE] whose p99 <= TARGET_US, by bisection on a log
    scale; (rate, its probe) or (0, the low rate's probe) when even LOW_RATE misses."""
    low = probe(pattern, LOW_RATE)
    if low["p99"] > TARGET_US / 1e6:
        return 0.0, low
    lo, hi, best = LOW_RATE, HIGH_RATE, low
    for _ in range(BISECTIONS):
        mid = (lo * hi) ** 0.5
        result = probe(pattern, mid)
        if result["p99"] <= TARGET_US / 1e6:
            lo, best = mid, result
        else:
            hi = mid
    return lo, best


@pytest.fixture(scope="module")
def table(tables):
    return tables(
        f"latency target {TARGET_US / 1000:.0f} ms vs static queue delays, over gRPC ({LAYERS} x {WIDTH} "
        "ONNX perceptron, open loop)",
        ["pattern / config", "highest rate", "p50 ms", "p99 ms", "mean batch", "vs best static", "target", "met"],
        formats={"highest rate": ".0f", "p50 ms": ".2f", "p99 ms": ".2f", "mean batch": ".1f",
                 "vs best static": ".2f"},
        notes=[f"highest rate = requests/s at which p99 stays within {TARGET_US / 1000:.0f} ms (bisection over "
               f"{LOW_RATE:.0f}-{HIGH_RATE:.0f}); p50/p99/mean batch at that rate; "
               f"target: latency target >= {RATIO_TARGET} x the best static delay"])


def test_latency_target_against_static_delays(server, table, bench_seed, bench_duration):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # grpc.aio binds a channel to the loop current when it is made

    async def connect():
        return grpcaio.InferenceServerClient(server.url("grpc"))

    client = loop.run_until_complete(connect())
    x = np.random.default_rng(bench_seed).standard_normal((1, WIDTH), dtype=np.float32)
    inputs = [grpcaio.InferInput("INPUT0", [1, WIDTH], "FP32")]
    inputs[0].set_data_from_numpy(x)
    probe = Probe(server, loop, client, inputs, max(1.0, bench_duration), bench_seed)
    configs = [f"delay={d}" for d in STATIC_DELAYS_US] + ["target"]
    try:
        for pattern in PATTERNS:
            found = {}
            for config in configs:
                configure(server, config)
                found[config] = highest_rate(probe, pattern)
            best_static = max(found[c][0] for c in configs if c != "target")
            for config in configs:
                rate, result = found[config]
                row = table.row(f"{pattern} / {config}")
                row.update({"highest rate": rate, "p50 ms": result["p50"] * 1e3, "p99 ms": result["p99"] * 1e3,
                            "mean batch": result["mean_batch"]})
                if config == "target":
                    ratio = rate / best_static if best_static else float("nan")
                    row.update({"vs best static": ratio, "target": f">= {RATIO_TARGET}",
                                "met": "yes" if ratio >= RATIO_TARGET else "NOT met"})
        # Low load, after the planner has learnt the model under load: it must not hold a lone
        # request back (its rate estimate decays, the plan waits for one row).
        low: dict[str, list[dict]] = {}
        for config in ("delay=0", "target") * LOW_ROUNDS:
            configure(server, config)
            low.setdefault(config, []).append(probe("steady", LOW_P50_RATE))
        med = {c: {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99", "mean_batch")}
               for c, runs in low.items()}
        for config in ("delay=0", "target"):
            table.row(f"low load {LOW_P50_RATE:.0f}/s steady / {config}").update(
                {"p50 ms": med[config]["p50"] * 1e3, "p99 ms": med[config]["p99"] * 1e3,
                 "mean batch": med[config]["mean_batch"]})
        diff_ms = (med["target"]["p50"] - med["delay=0"]["p50"]) * 1e3
        table.row(f"low load {LOW_P50_RATE:.0f}/s steady / target").update(
            {"target": f"p50 <= delay 0's + 0.1 ms ({diff_ms:+.2f})", "met": "yes" if diff_ms <= 0.1 else "NOT met"})
    finally:
        loop.run_until_complete(client.close())
        asyncio.set_event_loop(None)
        loop.close()
