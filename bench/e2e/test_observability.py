"""What tracing, payload logging and drift cost a served request (issue 18's benchmark).

The question: at a fixed request rate of about half the server's capacity, does turning on
tracing at 1 % (exported over OTLP/HTTP to a receiver in this process), payload logging of 10 %
of requests in ``summary`` mode, and input drift (on by default) raise the server's CPU per
request or its p99 latency? And does a payload sink that never returns change that (its records
must be dropped and counted, never waited for)?

Servers (``modelserve serve`` subprocesses, bench/e2e's ``ServeProcess``, one BLAS thread), each on
its own copy of one repository: ``trivial`` from compute_models.py (OUTPUT0 = 2 * INPUT0 + 1, FP32
[16], so drift tracks 16 features), Python backend, ``max_batch_size: 64``, no queue delay, one
instance:

- ``off``: ``drift: {enabled: false}``, no tracing, no payload log (the baseline);
- ``on``: drift on, ``--trace-sample-rate 0.01`` with ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set,
  ``--payload-log FILE --payload-log-sample 0.1 --payload-log-mode summary`` and a queue of
  ``--payload-log-queue-bytes 65536`` (a stalled sink fills it within the first round);
- ``stalled``: as ``on``, but ``--payload-sink observe_sinks:StalledSink``, whose ``write`` blocks
  until the server stops;
- ``before`` (only when ``MODELSERVE_BENCH_BEFORE`` names a launcher script that runs an older
  checkout's ``modelserve``, as ``MODELSERVE_BENCH_SERVE`` does for ServeProcess): the commit
  before this issue on the same repository, for "off costs nothing measurable". Build it as this
  checkout is built (CUDA found or not: the figure moved by ~1.5 % between the two builds), e.g.
  ``git worktree add /tmp/before aa5a7ed``, configure and build it with CMake (``-DPython_EXECUTABLE``
  this venv's, ``-Dpybind11_DIR=$(python -m pybind11 --cmakedir)``, ``-DSKBUILD_PROJECT_VERSION=0.1.0``),
  copy ``_core*.so`` into its ``python/modelserve/``, and have the launcher drop the editable
  install's ``ScikitBuildRedirectingFinder`` from ``sys.meta_path``, put that ``python/`` first on
  ``sys.path`` and call ``modelserve.cli.main()``.

The capacity is measured first on ``off`` (tritonclient's asyncio client, closed loop,
concurrency 32); then every round runs each server (in an order that rotates) open loop at half
that rate, steady arrivals: a warm-up of half ``--bench-duration``, then ``--bench-duration``
seconds measured. Figures per server: CPU of its process tree (``/proc``) per completed request,
and p50/p99 latency from each request's scheduled send time. Each is the median over ``ROUNDS``
rounds. Targets (reported, never asserted): ``on`` and ``stalled`` CPU/request <= 1.05x ``off``,
p99 <= 1.1x ``off``; the stalled sink's drops counted (``modelserve_payload_log_dropped_total``).
Sanity asserts only: no request fails, records and spans reach their sinks.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import statistics
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .test_latency_target import p as q
from .test_latency_target import run_load, schedule
from .test_server_cpu import ONE_BLAS_THREAD, closed_loop, tree_cpu_seconds, write_repository
from .test_server_throughput import ServeProcess

grpcaio = pytest.importorskip("tritonclient.grpc.aio")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

ROUNDS = 5
MODEL = "trivial"
CPU_TARGET, P99_TARGET = 1.05, 1.10
HERE = Path(__file__).resolve().parent


class OtlpReceiver:
    """An OTLP/HTTP endpoint that takes span exports and answers 200 (counting them)."""

    def __init__(self) -> None:
        receiver = self
        self.posts = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.posts += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(serve: ServeProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.http_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("modelserve_payload_log_", "modelserve_traced_requests_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    receiver = OtlpReceiver()
    before = os.environ.get("MODELSERVE_BENCH_BEFORE")
    started: dict[str, ServeProcess] = {}
    payload_file = tmp_path_factory.mktemp("payload") / "payload.jsonl"
    observe = ["--trace-sample-rate", "0.01", "--payload-log-sample", "0.1", "--payload-log-mode", "summary",
               "--payload-log-queue-bytes", str(64 * 1024)]
    # Only the observed servers see the exporter's variables: one alone turns tracing on (at
    # OpenTelemetry's default sampler, every request).
    otel = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url}
    legs = {
        "off": ({}, ["drift: {enabled: false}"], []),
        "on": (otel, [], [*observe, "--payload-log", str(payload_file)]),
        "stalled": ({**otel, "PYTHONPATH": str(HERE)}, [], [*observe, "--payload-sink", "observe_sinks:StalledSink"]),
    }
    if before:
        legs["before"] = ({"MODELSERVE_BENCH_SERVE": before}, [], [])
    try:
        for name, (env, config, flags) in legs.items():
            root = write_repository(tmp_path_factory.mktemp(name), MODEL)
            with open(root / MODEL / "config.yaml", "a") as f:
                f.writelines(line + "\n" for line in config)
            with pytest.MonkeyPatch.context() as patch:
                for key, value in {**ONE_BLAS_THREAD, **env}.items():
                    patch.setenv(key, value)
                started[name] = ServeProcess(root, *flags)
        yield started, receiver, payload_file
    finally:
        for serve in started.values():
            serve.stop()
        receiver.close()


async def open_loop(client, inputs, times: list[float], pid: int) -> tuple[list[float], float, int]:
    """``run_load`` at ``times``, with the server's CPU seconds over it (process tree ``pid``);
    (latencies, CPU seconds, requests). A request left unanswered fails the benchmark."""
    cpu0 = tree_cpu_seconds(pid)
    latencies = await run_load(client, inputs, times, MODEL)
    cpu = tree_cpu_seconds(pid) - cpu0
    assert all(v != float("inf") for v in latencies), "requests unanswered 2 s after the last send"
    return latencies, cpu, len(latencies)


def test_observability_costs_at_half_capacity(servers, tables, bench_seed, bench_duration):
    started, receiver, payload_file = servers
    rng = np.random.default_rng(bench_seed)
    x = rng.standard_normal((1, 16), dtype=np.float32)
    table = tables(
        "observability at a fixed rate of half capacity (trivial, gRPC, 1-row requests)",
        ["server", "req/s", "CPU us/req", "CPU x off", "p50 ms", "p99 ms", "p99 x off"],
        formats={"CPU x off": ".3f", "p99 x off": ".3f", "p50 ms": ".3f", "p99 ms": ".3f", "req/s": ".0f"},
        notes=[f"targets: CPU/request <= {CPU_TARGET}x off, p99 <= {P99_TARGET}x off; median of {ROUNDS} rounds, "
               f"--bench-duration {bench_duration}, load average at start {os.getloadavg()[0]:.2f}"])

    async def run() -> dict[str, dict[str, list[float]]]:
        clients = {name: grpcaio.InferenceServerClient(s.url("grpc")) for name, s in started.items()}
        inputs = [grpcaio.InferInput("INPUT0", [1, 16], "FP32")]
        inputs[0].set_data_from_numpy(x)
        try:
            off = started["off"]
            capacity = await closed_loop(lambda: clients["off"].infer(MODEL, inputs), 32, max(0.3, bench_duration / 2),
                                         bench_duration, off.pid)
            rate = capacity.rps / 2
            table.notes.insert(0, f"capacity (off, closed loop, concurrency 32): {capacity.rps:.0f} req/s; "
                                  f"offered {rate:.0f} req/s")
            figures: dict[str, dict[str, list[float]]] = {
                n: {"cpu": [], "p50": [], "p99": [], "rps": []} for n in started}
            order = list(started)
            for r in range(ROUNDS):
                shift = (r + bench_seed) % len(order)
                for name in order[shift:] + order[:shift]:
                    serve, client = started[name], clients[name]
                    warm = schedule("steady", rate, max(0.3, bench_duration / 2), None)
                    await open_loop(client, inputs, warm, serve.pid)
                    measured = schedule("steady", rate, bench_duration, None)
                    latencies, cpu_s, n = await open_loop(client, inputs, measured, serve.pid)
                    figures[name]["cpu"].append(cpu_s / n * 1e6)
                    figures[name]["p50"].append(q(latencies, 0.5) * 1e3)
                    figures[name]["p99"].append(q(latencies, 0.99) * 1e3)
                    figures[name]["rps"].append(n / bench_duration)
            return figures
        finally:
            for c in clients.values():
                await c.close()

    figures = asyncio.run(run())
    med = {n: {k: statistics.median(v) for k, v in f.items()} for n, f in figures.items()}
    for name, m in med.items():
        row = table.row(name)
        row.update({"req/s": m["rps"], "CPU us/req": m["cpu"], "CPU x off": m["cpu"] / med["off"]["cpu"],
                    "p50 ms": m["p50"], "p99 ms": m["p99"], "p99 x off": m["p99"] / med["off"]["p99"]})
    on, stalled = scrape(started["on"]), scrape(started["stalled"])
    dropped = sum(v for k, v in stalled.items() if k.startswith("modelserve_payload_log_dropped_total"))
    table.notes.append(
        f"on: {on.get('modelserve_payload_log_records_total', 0):.0f} payload records written, "
        f"{on.get('modelserve_traced_requests_total', 0):.0f} requests traced ({receiver.posts} OTLP exports); "
        f"stalled: {dropped:.0f} records dropped and counted, "
        f"{stalled.get('modelserve_payload_log_records_total', 0):.0f} written")
    table.notes.append("per round: " + "; ".join(
        f"{n} CPU {', '.join(f'{v:.0f}' for v in f['cpu'])} us, p99 {', '.join(f'{v:.2f}' for v in f['p99'])} ms"
        for n, f in figures.items()))
    assert on.get("modelserve_payload_log_records_total", 0) > 0 and payload_file.stat().st_size > 0
    assert on.get("modelserve_traced_requests_total", 0) > 0
    assert dropped > 0
