"""The cost of the engine: ``mlp`` through a Ray Serve application (``modelserve.ray``) at 1 and 2
replicas, against ``modelserve serve`` on the same machine.

What is measured, and against which baseline (all figures of the table come from the same run):
throughput (requests/s and rows/s) of the bundled ONNX model ``mlp`` (INPUT0 FP32 [rows, 256],
random data), closed loop at concurrency ``CONCURRENCY`` over gRPC, driven by ``modelserve perf``
in a subprocess, for 1-row and 64-row requests, through:

- ``server``: ``modelserve serve`` over ``examples/models`` (one process; the baseline);
- ``ray x1`` / ``ray x2``: ``modelserve.ray.deploy`` of the same model on a one-node Ray cluster
  on this machine (Ray Serve's gRPC proxy -> the ingress replica -> a version replica, each its
  own process), with 1 and then 2 version replicas (``ray: {min_replicas: N, max_replicas: N}``).

The ratio column is each path's requests/s over the server's at the same request size. The
machine is shared (2 CPUs, other sessions): the load average at start is printed, and on 2 cores
the client, the proxy, the ingress and the replicas compete for them, so a second replica adds
processes, not cores. Ray's workers run at niceness 0 here (``RAY_worker_niceness``; Ray's default
is 15) and without the dashboard, so both sides compete for the CPUs on equal terms. Each step measures ``--bench-duration`` seconds (at least 3) after a
warm-up of half that. Sanity asserts only: no request errors and every step completes requests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc")

from .test_server_throughput import ServeProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 16
ROWS = (1, 64)
START_LOAD = os.getloadavg()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def perf(url: str, rows: int, duration: float, seed: int) -> dict:
    """One closed-loop step of ``modelserve perf``; its JSON step (requests_per_s, ...)."""
    cmd = [sys.executable, "-m", "modelserve.perf", "-m", "mlp", "-u", url, "-i", "grpc",
           "--concurrency", str(CONCURRENCY), "--duration", str(duration), "--warmup", str(duration / 2),
           "--seed", str(seed), "--input-data", "random", "--batch-size", str(rows), "--output-format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (step,) = json.loads(done.stdout)["steps"]
    assert step["errors"] == 0 and step["requests"] > 0, step
    return step


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ray-bench") / "models"
    repo.mkdir()
    shutil.copytree(ROOT / "examples" / "models" / "mlp", repo / "mlp")
    return repo


def _set_replicas(repo: Path, n: int) -> None:
    config = repo / "mlp" / "config.yaml"
    text = config.read_text().split("\n# ray section (bench)\n")[0]
    config.write_text(text + f"\n# ray section (bench)\nray: {{min_replicas: {n}, max_replicas: {n}, num_cpus: 0.5}}\n")


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster on loopback, shut down (every Ray process) at the end."""
    from modelserve.ray._local import loopback_cluster

    # Ray starts its workers at niceness 15: on a machine shared with other work they would
    # yield to everything, the single server included. Equal footing for the comparison:
    with loopback_cluster({"num_cpus": 2}, env={"RAY_worker_niceness": "0"}) as (c, _):
        yield c


def test_ray_overhead_against_the_single_server(repository, ray_cluster, bench_duration, bench_seed, tables):
    import modelserve.ray as modelserve_ray

    duration = max(3.0, bench_duration)
    table = tables(
        f"mlp through Ray Serve vs modelserve serve: gRPC, concurrency {CONCURRENCY} "
        f"(load average at start {START_LOAD[0]:.2f})",
        ["path", "rows/request", "requests/s", "rows/s", "p50 ms", "p99 ms", "ratio to server"],
        notes=["ratio: requests/s over the single-process server's at the same request size"],
        formats={"ratio to server": ".2f", "p50 ms": ".2f", "p99 ms": ".2f"},
    )
    baseline: dict[int, float] = {}

    def record(path: str, rows: int, step: dict) -> None:
        row = table.row(f"{path} ({rows})")
        row.update({"path": path, "rows/request": str(rows), "requests/s": step["requests_per_s"],
                    "rows/s": step["inferences_per_s"], "p50 ms": step["p50_ms"], "p99 ms": step["p99_ms"]})
        if path == "server":
            baseline[rows] = step["requests_per_s"]
        row["ratio to server"] = step["requests_per_s"] / baseline[rows]

    server = ServeProcess(repository)
    try:
        for rows in ROWS:
            record("server", rows, perf(server.url("grpc"), rows, duration, bench_seed))
    finally:
        server.stop()

    http_port, grpc_port = _free_port(), _free_port()
    for replicas in (1, 2):
        _set_replicas(repository, replicas)
        modelserve_ray.deploy(repository, name="bench", http_port=http_port, grpc_port=grpc_port,
                              proxy_location="HeadOnly")
        for rows in ROWS:
            record(f"ray x{replicas}", rows, perf(f"127.0.0.1:{grpc_port}", rows, duration, bench_seed))
