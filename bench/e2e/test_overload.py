"""Overload: what admission control buys at about 3x a model's capacity.

One question: offered three times what a model can serve, does the server keep serving what it
can, answer the rest at once, and hold its memory? A ``modelserve serve`` process serves a Python
model of known capacity (one instance, 10 ms per request, no batching: about 100 requests/s,
measured first with ``modelserve perf --concurrency 4``), and ``modelserve perf`` drives it over
HTTP open loop at 3x the measured capacity, with a client timeout of 1 s (the SLO: a request
answered later counts as lost). Two runs of the same load:

- **admission on**: ``max_queue_size: 16`` and ``default_timeout_us: 300000``: the excess is
  refused with 429 (Retry-After) at once, queued requests expire after 300 ms;
- **admission off** (the baseline): an unbounded queue and no deadline.

Printed for each: goodput (successful requests/s within the SLO), admitted p99 (successes),
refusals and their p99 answer time, and the server's peak resident memory (VmHWM) against its
resident memory before the load. ``--bench-duration`` scales the measured window (3x it, in
seconds); ``--bench-seed`` seeds the request data. Run: ``pytest bench/e2e/test_overload.py -s``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from modelserve.perf import main as perf

pytest.importorskip("tritonclient.http")

SERVICE_S = 0.010
MODEL = textwrap.dedent(f"""
    import time

    class Model:
        def execute(self, inputs):
            time.sleep({SERVICE_S})
            return {{"OUTPUT0": inputs["INPUT0"]}}
""")
CONFIG = """\
max_batch_size: 0
inputs: [{name: INPUT0, datatype: FP32, shape: [16]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [16]}]
instances: {count: 1, device: cpu}
"""
ADMISSION = "dynamic_batching: {max_queue_size: 16, default_timeout_us: 300000}\n"
SLO_S = 1.0


class _Server:
    """``modelserve serve`` on free ports, in its own process (so its memory is its own)."""

    def __init__(self, repository: Path) -> None:
        cmd = [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())", "serve",
               "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "0",
               "--shutdown-grace", "0"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.http_port: int | None = None
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                if m := re.search(r"HTTP listening on \w+://[\d.]+:(\d+)", line):
                    self.http_port = int(m.group(1))
                if "model versions READY" in line:
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(120):
            self.stop()
            raise AssertionError("the server did not start")

    def memory(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self._reader.join(10)
        self.proc.stderr.close()


def _perf(port: int, out: Path, seed: int, *load: str) -> dict:
    args = ["-m", "m", "-i", "http", "-u", f"127.0.0.1:{port}", "--timeout", str(SLO_S), "--seed", str(seed),
            "--output-format", "json", "--output", str(out), "-q", *load]
    assert perf(args) == 0
    return json.loads(out.read_text())["steps"][0]


def _repository(root: Path, admission: bool) -> Path:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.py").write_text(MODEL)
    (root / "m" / "config.yaml").write_text(CONFIG + (ADMISSION if admission else ""))
    return root


def test_overload_at_three_times_capacity(tmp_path, tables, bench_duration, bench_seed):
    duration = 3 * bench_duration
    table = tables(
        "overload at 3x capacity (HTTP, open loop, client timeout 1 s)",
        ["run", "offered/s", "sent/s", "goodput/s", "admitted p99 ms", "refused", "refusal p99 ms",
         "rss before MiB", "peak rss MiB"],
        notes=[f"model: 1 instance x {SERVICE_S * 1e3:.0f} ms per request; goodput = successes within the 1 s SLO; "
               "'refused' counts every failed request (429s with admission on, client timeouts without)"],
        formats={"admitted p99 ms": ".1f", "refusal p99 ms": ".2f"},
    )
    capacity = None
    for name, admission in (("admission on", True), ("admission off", False)):
        server = _Server(_repository(tmp_path / name.replace(" ", "_"), admission))
        try:
            if capacity is None:
                closed = _perf(server.http_port, tmp_path / "capacity.json", bench_seed,
                               "--concurrency", "4", "--duration", str(duration), "--warmup", "0.5")
                capacity = closed["requests_per_s"]
            rate = round(3 * capacity)
            before = server.memory("VmRSS")
            step = _perf(server.http_port, tmp_path / f"{name}.json", bench_seed,
                         "--request-rate", str(rate), "--duration", str(duration), "--warmup", "0.5",
                         "--max-outstanding", "100000")
            row = table.row(name)
            row.update({
                "offered/s": float(rate), "sent/s": step["sent_per_s"], "goodput/s": step["requests_per_s"],
                "admitted p99 ms": step["p99_ms"] if step["p99_ms"] is not None else "-",
                "refused": step["errors"],
                "refusal p99 ms": step["error_p99_ms"] if step["error_p99_ms"] is not None else "-",
                "rss before MiB": before / 2**20, "peak rss MiB": server.memory("VmHWM") / 2**20,
            })
        finally:
            server.stop()
    table.notes.append(f"measured capacity (closed loop, concurrency 4): {capacity:.1f} requests/s")
