"""``modelserve serve`` end to end, against the in-process Runtime and a bare gRPC servicer.

What is measured, and against which baseline (all figures of a table come from the same run):

1. Throughput (requests/s, 1-row requests) and client-side p50/p99 latency of the ONNX models
   ``mlp`` (INPUT0 FP32 [1, 256], random data) and ``recommender`` (USER_ID INT64 [1, 1], zeros:
   user 0, as random ids would be out of range) served by ``modelserve serve`` over
   ``examples/models``, over gRPC and HTTP, closed loop at concurrency 1, 4, 16 and 64, driven by
   ``modelserve perf`` in a subprocess (so the client shares neither the server's process nor
   its GIL). Baselines: (a) the in-process ``modelserve.Runtime("examples/models")``, same model,
   same 1-row request, N requests in flight on ``rt.infer_async`` in one asyncio loop (the
   ceiling with no transport at all); (b) ``bench/e2e/bare_servicer.py``, a bare grpc.aio
   servicer echoing a request of the same shape and datatype (the floor of any Python gRPC
   server here; gRPC only). Ratios: server / Runtime and server gRPC / bare echo.
2. Server CPU per request over gRPC: the server process's CPU time (utime + stime of every
   thread, from psutil or ``/proc/PID/stat`` in clock ticks) over each step's measured window,
   divided by the requests the client completed in that window, for our server and for the bare
   servicer at the same concurrency. The model's own compute is taken out: the batches our
   server executed in the window (``modelserve_batch_size`` count and sum deltas in /metrics)
   times the CPU seconds a bare ``onnxruntime.InferenceSession`` (the onnx backend's session
   options) spends per call at that mean batch size, measured in this process (fastest of a few
   short slices), interpolated between batch sizes 1..64. The compute wall time the server
   itself reports (``modelserve_compute_duration_seconds_sum`` delta) is shown beside it, next
   to the bare session's wall time at the same batch size, and the server's CPU
   is split by thread (event loop, gRPC core, the rest: instance threads and onnxruntime's
   pool, from ``/proc/PID/task``) to show where it goes. Reported, not asserted: our
   per-request overhead (server CPU minus compute CPU) <= 1.5 x the bare servicer's
   per-request CPU. A diagnostic repeats the gRPC sweep of ``mlp`` served with
   ``parameters: {intra_op_threads: 1}`` (otherwise the examples config) beside the bare
   servicer, to separate onnxruntime's intra-op worker thread from the frontend's cost.
3. Dynamic batching lift: ``mlp`` from a temporary repository copy whose config.yaml sets
   ``max_batch_size: 0`` (no batcher, no queue delay; the ONNX file is kept, and its metadata
   then states INPUT0 [-1, 256], so perf sends ``--shape INPUT0:1,256``) against the normal
   config, gRPC, concurrency 64, 1-row requests; the two alternate in a seeded order for
   ``LIFT_ROUNDS`` rounds each and the medians are compared. Reported, not asserted: >= 3 x.

Each step measures ``--bench-duration`` seconds after a warm-up of half that (at least 0.3 s).
Within a model, the four load paths (Runtime, server gRPC, server HTTP, bare echo) run in a
seeded random order (``--bench-seed``). The server's CPU window starts and ends where perf's
does: perf prints a progress line on stderr just before each step starts, and this module
samples the server's CPU (and /metrics) at that line's arrival + warm-up and + warm-up +
duration (clock ticks are 10 ms: about +-2% of a 1 s step at one core). The machine is shared
(2 CPUs, other sessions): the load average at start is printed, and the client's own CPU use is
shown because on 2 cores the client and the server compete for them.

Sanity asserts only: no request errors, every step completes requests, the server's answers
match the Runtime's, the server's request counters cover the client's counts, the unbatched
copy executes only batches of 1.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import modelserve

from .test_runtime_throughput import REPOSITORY, bare_session, loop, run_async, usable_cpus  # noqa: F401 (loop: a fixture)

ort = pytest.importorskip("onnxruntime")
grpcclient = pytest.importorskip("tritonclient.grpc")

BARE_SERVICER = Path(__file__).resolve().with_name("bare_servicer.py")
MODELS = ("mlp", "recommender")
CONCURRENCY = (1, 4, 16, 64)
SWEEP = "1:64:x4"  # perf's spelling of CONCURRENCY
PATHS = ("runtime", "grpc", "http", "bare")
PERF_DATA = {"mlp": "random", "recommender": "zero"}  # recommender: ids 0..999 only
ECHO = {"mlp": ("256", "FP32"), "recommender": ("1", "INT64")}  # same shape and datatype
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # bare-session compute cost, interpolated between
COMPUTE_SLICES = 4  # per batch size, of --bench-duration / 40 each; the fastest is kept
OVERHEAD_TARGET = 1.5  # our per-request overhead CPU / the bare servicer's, at most
LIFT_TARGET = 3.0  # batching / unbatched throughput at concurrency 64, at least
LIFT_CONCURRENCY = 64
LIFT_ROUNDS = 2
START_LOAD = os.getloadavg()

try:
    import psutil
except ImportError:
    psutil = None


def warmup_s(duration: float) -> float:
    return max(0.3, duration / 2)


# --- the processes ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads."""
    if psutil is not None:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def thread_cpu(pid: int) -> Counter:
    """CPU seconds of process ``pid``'s live threads by group (Linux ``/proc``; empty elsewhere):
    ``loop`` the main thread (the servers' asyncio event loop: grpc.aio, handlers, protobuf),
    ``grpc io`` gRPC core's own threads (named ``event_engine``/``grpc...``), ``other`` the
    rest (our core's instance and batcher threads, onnxruntime's intra-op pools)."""
    out = Counter()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        group = ("loop" if int(tid) == pid else
                 "grpc io" if comm.startswith(("event_engine", "grpc")) else "other")
        out[group] += (int(fields[11]) + int(fields[12])) / tick
    return out


def process_tree(pid: int):
    """``pid`` and every live descendant of it (Linux ``/proc``); a process that ends meanwhile
    is skipped."""
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            children = []
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    children.extend(int(c) for c in f.read().split())
        except OSError:  # it ended
            continue
        yield p
        stack.extend(children)


class ServeProcess:
    """``modelserve serve`` on ports 0, with extra ``flags`` (``--model-control-mode explicit``);
    the ports are read from its log (as tests/test_server)."""

    def __init__(self, repository: Path, *flags: str) -> None:
        # MODELSERVE_BENCH_SERVE names a script to run instead (one that puts another checkout's
        # modelserve first, to measure an older commit beside this one in the same run).
        launcher = os.environ.get("MODELSERVE_BENCH_SERVE")
        start = [launcher] if launcher else ["-c", "import sys; from modelserve.cli import main; sys.exit(main())"]
        cmd = [sys.executable, *start,
               "serve", "--model-repository", str(repository), "--grpc-port", "0",
               "--http-port", "0", "--shutdown-grace", "0", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.grpc_port = self.http_port = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(120):
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stderr:  # drained to the end, so the server never blocks on it
            self.lines.append(line)
            if m := re.search(r"gRPC listening on [\d.]+:(\d+)", line):
                self.grpc_port = int(m.group(1))
            if m := re.search(r"HTTP listening on \w+://[\d.]+:(\d+)", line):
                self.http_port = int(m.group(1))
            if "model versions READY" in line:
                self._ready.set()

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.grpc_port if protocol == 'grpc' else self.http_port}"

    def scrape(self, model: str) -> Counter:
        """The counters of ``model`` (all versions) that the tables use, from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=30) as r:
            text = r.read().decode()
        names = {"modelserve_requests_total": "requests",
                 "modelserve_compute_duration_seconds_sum": "compute_s",
                 "modelserve_queue_duration_seconds_sum": "queue_s",
                 "modelserve_request_duration_seconds_sum": "request_s",
                 "modelserve_batch_size_count": "batches",
                 "modelserve_batch_size_sum": "rows"}
        out = Counter()
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in names and f'model="{model}"' in rest and (
                    name != "modelserve_requests_total" or 'outcome="success"' in rest):
                out[names[name]] += float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(5)
        self.proc.stderr.close()
        return code


class EchoProcess:
    """``bare_servicer.py`` standalone, as tests/test_perf.py runs it; it serves model "echo"
    with ``max_batch_size`` 64 so that perf sends the same [1, *shape] requests as to mlp."""

    def __init__(self, shape: str, datatype: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BARE_SERVICER), "--port", "0", "--input-shape", shape,
             "--datatype", datatype, "--max-batch-size", "64"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


# --- one perf sweep, with the server's CPU and counters over each step's window -----------------

@dataclass
class Step:
    perf: dict  # perf's JSON for the step
    cpu_s: float = 0.0  # server CPU seconds over the window
    window_s: float = 0.0
    counters: Counter = field(default_factory=Counter)  # /metrics deltas (our server only)
    threads: Counter = field(default_factory=Counter)  # CPU seconds by thread group

    def per_request(self, seconds: float) -> float:
        """``seconds`` of server CPU over the window, per request, in µs."""
        return seconds / self.window_s * self.perf["duration_s"] / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.perf["requests_per_s"]

    @property
    def requests(self) -> int:
        return self.perf["requests"]


def run_perf(url: str, model: str, protocol: str, sweep: str, levels: tuple[int, ...], *,
             pid: int, duration: float, seed: int, input_data: str, server=None,
             scrape_model: str | None = None, extra: tuple[str, ...] = ()) -> list[Step]:
    """Runs ``modelserve perf`` in a subprocess and samples process ``pid``'s CPU (and, with
    ``server``, its /metrics for ``scrape_model``) over each step's measured window."""
    warmup = warmup_s(duration)
    cmd = [sys.executable, "-m", "modelserve.perf", "-m", model, "-u", url, "-i", protocol,
           "--concurrency", sweep, "--duration", str(duration), "--warmup", str(warmup),
           "--seed", str(seed), "--input-data", input_data, "--output-format", "json", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[dict] = [{} for _ in levels]
    samplers: list[threading.Thread] = []
    stderr: list[str] = []

    def sample(i: int, begun: float) -> None:
        s = samples[i]
        try:
            time.sleep(max(0.0, begun + warmup - time.perf_counter()))
            if server is not None:  # scrape first: its own CPU stays outside the window
                s["m0"] = server.scrape(scrape_model)
            s["c0"], s["t0"], s["th0"] = cpu_seconds(pid), time.perf_counter(), thread_cpu(pid)
            time.sleep(max(0.0, begun + warmup + duration - time.perf_counter()))
            s["c1"], s["t1"], s["th1"] = cpu_seconds(pid), time.perf_counter(), thread_cpu(pid)
            if server is not None:
                s["m1"] = server.scrape(scrape_model)
        except Exception as e:  # reported by the caller's asserts, never raised in a thread
            s["error"] = repr(e)

    def read() -> None:
        for line in proc.stderr:
            now = time.perf_counter()
            stderr.append(line)
            # "closed loop; ..." (the header's last line) comes just before the first step,
            # "concurrency N: ..." just after each step, i.e. just before the next one.
            if (line.startswith("[perf] closed loop") or line.startswith("[perf] concurrency")) \
                    and len(samplers) < len(levels):
                t = threading.Thread(target=sample, args=(len(samplers), now), daemon=True)
                samplers.append(t)
                t.start()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out = proc.stdout.read()
    code = proc.wait(120)
    reader.join(10)
    for t in samplers:
        t.join(duration + 30)
    proc.stdout.close()
    proc.stderr.close()
    assert code == 0, f"perf exited {code}:\n{''.join(stderr)}"
    report = json.loads(out)
    assert [s["concurrency"] for s in report["steps"]] == list(levels)
    steps = []
    for perf_step, s in zip(report["steps"], samples):
        assert "error" not in s and "c1" in s, f"sampling the server failed: {s}"
        assert perf_step["errors"] == 0, perf_step["first_error"]
        assert perf_step["requests"] > 0
        step = Step(perf_step, s["c1"] - s["c0"], s["t1"] - s["t0"])
        step.threads.update(s["th1"])
        step.threads.subtract(s["th0"])
        if server is not None:
            step.counters = s["m1"] - s["m0"]
            # the server completed at least what the client counted in (almost) the same window
            assert step.counters["requests"] >= 0.75 * perf_step["requests"]
        steps.append(step)
    return steps


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rt():
    with modelserve.Runtime(REPOSITORY) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def server():
    s = ServeProcess(REPOSITORY)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def echo():
    started: dict[str, EchoProcess] = {}
    try:
        for model, (shape, datatype) in ECHO.items():
            started[model] = EchoProcess(shape, datatype)
        yield started
    finally:
        for p in started.values():
            p.stop()


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory):
    """``mlp`` alone, from a repository copy whose config sets ``max_batch_size: 0``."""
    root = tmp_path_factory.mktemp("unbatched")
    shutil.copytree(REPOSITORY / "mlp" / "1", root / "mlp" / "1")
    (root / "mlp" / "config.yaml").write_text(
        "# examples/models/mlp without batching: no batcher, each request runs alone\n"
        "max_batch_size: 0\ninstances: {count: 1, device: auto}\n")
    s = ServeProcess(root)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def single_thread_mlp(tmp_path_factory):
    """``mlp`` alone, its examples config plus ``parameters: {intra_op_threads: 1}``."""
    root = tmp_path_factory.mktemp("intra_op_1")
    shutil.copytree(REPOSITORY / "mlp" / "1", root / "mlp" / "1")
    config = (REPOSITORY / "mlp" / "config.yaml").read_text()
    assert "\nparameters:" not in config
    (root / "mlp" / "config.yaml").write_text(config + "parameters: {intra_op_threads: 1}\n")
    s = ServeProcess(root)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def results():
    """Figures shared between the tests: (model, path, concurrency) -> Step, and compute costs."""
    return {"steps": {}, "compute": {}}


@pytest.fixture(scope="module")
def throughput_table(tables):
    return tables(
        "throughput, 1-row requests (requests/s): server over gRPC and HTTP vs in-process "
        "Runtime and bare gRPC echo",
        ["model", "conc", "runtime", "grpc", "http", "bare echo", "grpc/runtime", "http/runtime",
         "grpc/bare", "rt batch", "grpc batch", "client cpu g/h/b"],
        formats={"runtime": ".0f", "grpc": ".0f", "http": ".0f", "bare echo": ".0f",
                 "grpc/runtime": ".2f", "http/runtime": ".2f", "grpc/bare": ".2f",
                 "rt batch": ".1f", "grpc batch": ".1f"},
        notes=[f"load average at start (1/5/15 min): {START_LOAD[0]:.2f} {START_LOAD[1]:.2f} "
               f"{START_LOAD[2]:.2f} on {usable_cpus()} usable CPUs (shared with other sessions)",
               "runtime = rt.infer_async with conc requests in flight in this process; grpc/http "
               "= modelserve serve driven by modelserve perf (a subprocess); bare echo = "
               "bare_servicer.py echoing the same-shaped request over gRPC",
               "rt batch / grpc batch = mean rows per executed batch in the Runtime and the "
               "server gRPC steps (the core's statistics; /metrics)",
               "client cpu g/h/b = perf's process CPU, % of one core, in the grpc/http/bare "
               "steps (* = perf flagged its event loop as saturated: client-bound)"])


@pytest.fixture(scope="module")
def latency_table(tables):
    return tables(
        "latency, 1-row requests (ms, client side, p50 / p99)",
        ["model", "conc", "runtime p50", "runtime p99", "grpc p50", "grpc p99", "http p50",
         "http p99", "bare p50", "bare p99"],
        formats={c: ".2f" for c in ("runtime p50", "runtime p99", "grpc p50", "grpc p99",
                                    "http p50", "http p99", "bare p50", "bare p99")})


CPU_COLUMNS = ["model", "conc", "server cpu", "loop", "grpc io", "other", "mean batch",
               "batch wall", "bare batch wall", "compute cpu", "overhead", "bare echo cpu",
               "bare loop", "overhead/bare", "target", "server cores", "bare cores"]
CPU_NOTES = [
    "server cpu = CPU seconds of the server process (all threads) over the step / requests "
    "completed; loop / grpc io / other = the same split by thread: the main thread (asyncio "
    "event loop: grpc.aio, our handlers, protobuf), gRPC core's threads, and the rest (the core's "
    "instance and batcher threads, onnxruntime's intra-op pool); bare loop = the bare servicer's "
    "main thread",
    "batch wall = modelserve_compute_duration_seconds_sum delta / requests: the wall time of a "
    "request's batch in the server (gather, execute, scatter; each request counts its batch's); "
    "bare batch wall = a bare session call at the mean batch size; compute cpu = batches executed "
    "x bare session CPU per call at the mean batch size / requests (the model's own compute); "
    "overhead = server cpu - compute cpu; cores = CPU seconds / wall seconds",
    f"target (reported, not asserted): overhead <= {OVERHEAD_TARGET:.1f} x bare echo cpu"]


def cpu_row(results, model: str, g: Step, b: Step) -> dict:
    """The CPU table's cells for our server's step ``g`` beside the bare servicer's ``b``."""
    m = g.counters
    assert m["batches"] > 0 and m["rows"] >= m["batches"]
    server_cpu = g.per_request(g.cpu_s)
    mean_batch = m["rows"] / m["batches"]
    compute = m["batches"] * bare_cost(results, model, "cpu", mean_batch) / m["requests"] * 1e6
    bare_cpu = b.per_request(b.cpu_s)
    ratio = (server_cpu - compute) / bare_cpu
    return {"server cpu": server_cpu, "loop": g.per_request(g.threads["loop"]),
            "grpc io": g.per_request(g.threads["grpc io"]),
            "other": g.per_request(g.threads["other"]), "mean batch": mean_batch,
            "batch wall": m["compute_s"] / m["requests"] * 1e6,
            "bare batch wall": bare_cost(results, model, "wall", mean_batch) * 1e6,
            "compute cpu": compute,
            "overhead": server_cpu - compute, "bare echo cpu": bare_cpu,
            "bare loop": b.per_request(b.threads["loop"]), "overhead/bare": ratio,
            "target": "met" if ratio <= OVERHEAD_TARGET else "NOT met",
            "server cores": g.cpu_s / g.window_s, "bare cores": b.cpu_s / b.window_s}


@pytest.fixture(scope="module")
def cpu_table(tables):
    return tables(
        "server CPU per request over gRPC (µs of CPU per completed request)",
        CPU_COLUMNS,
        formats={c: ".0f" for c in CPU_COLUMNS[2:]} | {
            "mean batch": ".1f", "overhead/bare": ".2f", "server cores": ".2f",
            "bare cores": ".2f"},
        notes=CPU_NOTES)


@pytest.fixture(scope="module")
def split_table(tables):
    return tables(
        "where a gRPC request's time goes (ms per request, means over the step)",
        ["model", "conc", "client mean", "server e2e", "queue", "compute", "outside core"],
        formats={c: ".2f" for c in ("client mean", "server e2e", "queue", "compute",
                                    "outside core")},
        notes=["client mean = perf's mean latency; server e2e = modelserve_request_duration "
               "(enqueue to done in the core) / requests; queue = modelserve_queue_duration / "
               "requests; compute = modelserve_compute_duration / requests (the compute time "
               "of the request's batch); outside core = client mean - server e2e: the gRPC "
               "frontend (decode, encode, grpc.aio), the transport and the client"])


@pytest.fixture(scope="module")
def compute_table(tables):
    return tables(
        f"bare onnxruntime session, one caller (the compute subtracted above; µs per call, "
        f"fastest of {COMPUTE_SLICES} slices)",
        ["model", "batch", "wall", "cpu", "cpu/wall"],
        formats={"wall": ".0f", "cpu": ".0f", "cpu/wall": ".2f"})


@pytest.fixture(scope="module")
def diagnostic_table(tables):
    columns = ["conc", "req/s", "default req/s", "bare req/s"] + CPU_COLUMNS[2:]
    return tables(
        "diagnostic: mlp over gRPC with onnxruntime intra_op_threads 1 (the examples config "
        "otherwise; µs of CPU per request as above)",
        columns,
        formats={c: ".0f" for c in columns[1:]} | {
            "mean batch": ".1f", "overhead/bare": ".2f", "server cores": ".2f",
            "bare cores": ".2f"},
        notes=["default req/s = the examples config (intra-op threads = usable CPUs) from the "
               "tables above; compute cpu here from a bare session with one intra-op thread; "
               "bare = the bare servicer again, in this test"])


@pytest.fixture(scope="module")
def lift_table(tables):
    return tables(
        f"dynamic batching lift: mlp over gRPC, concurrency {LIFT_CONCURRENCY}, 1-row requests "
        f"(median of {LIFT_ROUNDS} alternating runs each)",
        ["config", "req/s", "p50 ms", "p99 ms", "mean batch", "server cpu µs/req",
         "server cores", "client cpu"],
        formats={"req/s": ".0f", "p50 ms": ".2f", "p99 ms": ".2f", "mean batch": ".1f",
                 "server cpu µs/req": ".0f", "server cores": ".2f"})


@pytest.fixture(scope="module", autouse=True)
def table_order(throughput_table, latency_table, cpu_table, split_table, compute_table,
                diagnostic_table, lift_table):
    """Creates the tables in the order they print."""


# --- tests --------------------------------------------------------------------------------------

def default_version(rt: modelserve.Runtime, model: str) -> int:
    return int(rt.model_versions(model)["default"])


def one_row(model: str, seed: int) -> dict[str, np.ndarray]:
    if model == "mlp":
        return {"INPUT0": np.random.default_rng(seed).standard_normal((1, 256), dtype=np.float32)}
    return {"USER_ID": np.zeros((1, 1), np.int64)}  # user 0, as perf's --input-data zero


@pytest.mark.parametrize("model", MODELS)
def test_server_answers_as_the_runtime(rt, server, model, bench_seed):
    """Sanity: the served model gives the in-process Runtime's outputs over gRPC."""
    inputs = one_row(model, bench_seed)
    expected = rt.infer(model, inputs)
    client = grpcclient.InferenceServerClient(server.url("grpc"))
    try:
        tensors = []
        for name, a in inputs.items():
            t = grpcclient.InferInput(name, list(a.shape), "FP32" if a.dtype == np.float32
                                      else "INT64")
            t.set_data_from_numpy(a)
            tensors.append(t)
        got = client.infer(model, tensors)
    finally:
        client.close()
    for name, want in expected.items():
        np.testing.assert_allclose(got.as_numpy(name), want, rtol=1e-5, atol=1e-6)


def measure_compute(session, model: str, label: str, duration: float, compute_table) -> dict:
    """CPU and wall seconds per call of ``session`` by batch size (one caller, this process):
    ``{"cpu": {batch: s}, "wall": {batch: s}}``, also put in ``compute_table`` under ``label``.
    Each size runs ``COMPUTE_SLICES`` short slices and keeps the one with the least wall time
    per call, the model's own cost with the least interference from the shared machine."""
    name = session.get_inputs()[0].name
    cost: dict[str, dict[int, float]] = {"cpu": {}, "wall": {}}
    for batch in BATCH_SIZES:
        feed = {name: np.zeros((batch, 256), np.float32) if model == "mlp"
                else np.zeros((batch, 1), np.int64)}
        for _ in range(5):
            session.run(None, feed)
        slices = []
        for _ in range(COMPUTE_SLICES):
            calls, w0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - w0 < duration / 40 or calls < 5:
                session.run(None, feed)
                calls += 1
            slices.append(((time.perf_counter() - w0) / calls, (time.process_time() - c0) / calls))
        wall, cpu = min(slices)
        assert cpu > 0 and wall > 0
        cost["cpu"][batch], cost["wall"][batch] = cpu, wall
        compute_table.row((label, batch)).update({
            "model": label, "batch": str(batch), "wall": wall * 1e6, "cpu": cpu * 1e6,
            "cpu/wall": cpu / wall})
    return cost


@pytest.mark.parametrize("model", MODELS)
def test_compute_cost(rt, model, bench_duration, results, compute_table):
    """The model's compute CPU by batch size, from a bare session with the backend's options."""
    session = bare_session(rt, model, default_version(rt, model))
    results["compute"][model] = measure_compute(session, model, model, bench_duration,
                                                compute_table)


def bare_cost(results, model: str, kind: str, batch: float) -> float:
    """The bare session's ``kind`` ("cpu" or "wall") seconds per call at ``batch`` rows,
    interpolated (``model`` is a key of ``results["compute"]``)."""
    cost = results["compute"][model][kind]
    sizes = sorted(cost)
    return float(np.interp(batch, sizes, [cost[b] for b in sizes]))


def run_runtime(rt, loop, model: str, levels, duration: float, seed: int) -> list[dict]:
    feeds = one_row(model, seed)
    version = default_version(rt, model)

    def executed() -> tuple[int, int]:
        s = rt.model_statistics(model, version=version)[0]
        return s["execution_count"], s["inference_count"]

    out = []
    for level in levels:
        run_async(loop, lambda: rt.infer_async(model, feeds), level, warmup_s(duration))
        batches, rows = executed()
        requests, elapsed, latencies = run_async(
            loop, lambda: rt.infer_async(model, feeds), level, duration)
        batches, rows = (now - before for now, before in zip(executed(), (batches, rows)))
        assert requests > 0 and rows == requests  # nothing else ran on this version meanwhile
        p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
        out.append({"requests_per_s": requests / elapsed, "p50_ms": p50, "p99_ms": p99,
                    "mean_batch": rows / batches})
    return out


def client_cpu(step: Step) -> str:
    return f"{step.perf['client_cpu_percent']:.0f}" + ("*" if step.perf["client_saturated"] else "")


@pytest.mark.parametrize("model", MODELS)
def test_throughput_and_cpu(rt, loop, server, echo, model, bench_seed, bench_duration, results,
                            throughput_table, latency_table, cpu_table, split_table):
    order = list(PATHS)
    random.Random(f"{bench_seed}/{model}").shuffle(order)
    runtime: list[dict] = []
    steps: dict[str, list[Step]] = {}
    for path in order:
        if path == "runtime":
            runtime = run_runtime(rt, loop, model, CONCURRENCY, bench_duration, bench_seed)
        elif path == "bare":
            steps[path] = run_perf(f"127.0.0.1:{echo[model].port}", "echo", "grpc", SWEEP,
                                   CONCURRENCY, pid=echo[model].pid, duration=bench_duration,
                                   seed=bench_seed, input_data=PERF_DATA[model])
        else:
            steps[path] = run_perf(server.url(path), model, path, SWEEP, CONCURRENCY,
                                   pid=server.pid, duration=bench_duration, seed=bench_seed,
                                   input_data=PERF_DATA[model], server=server, scrape_model=model)
    for i, level in enumerate(CONCURRENCY):
        g, h, b, r = steps["grpc"][i], steps["http"][i], steps["bare"][i], runtime[i]
        results["steps"][(model, "grpc", level)] = g
        throughput_table.row((model, level)).update({
            "model": model, "conc": str(level), "runtime": r["requests_per_s"], "grpc": g.rps,
            "http": h.rps, "bare echo": b.rps, "grpc/runtime": g.rps / r["requests_per_s"],
            "http/runtime": h.rps / r["requests_per_s"], "grpc/bare": g.rps / b.rps,
            "rt batch": r["mean_batch"],
            "grpc batch": g.counters["rows"] / max(1, g.counters["batches"]),
            "client cpu g/h/b": f"{client_cpu(g)}/{client_cpu(h)}/{client_cpu(b)}"})
        latency_table.row((model, level)).update({
            "model": model, "conc": str(level),
            "runtime p50": r["p50_ms"], "runtime p99": r["p99_ms"],
            "grpc p50": g.perf["p50_ms"], "grpc p99": g.perf["p99_ms"],
            "http p50": h.perf["p50_ms"], "http p99": h.perf["p99_ms"],
            "bare p50": b.perf["p50_ms"], "bare p99": b.perf["p99_ms"]})

        cpu_table.row((model, level)).update(
            {"model": model, "conc": str(level)} | cpu_row(results, model, g, b))
        m = g.counters
        split_table.row((model, level)).update({
            "model": model, "conc": str(level), "client mean": g.perf["mean_ms"],
            "server e2e": m["request_s"] / m["requests"] * 1e3,
            "queue": m["queue_s"] / m["requests"] * 1e3,
            "compute": m["compute_s"] / m["requests"] * 1e3,
            "outside core": g.perf["mean_ms"] - m["request_s"] / m["requests"] * 1e3})


def test_overhead_with_one_intra_op_thread(single_thread_mlp, echo, bench_seed, bench_duration,
                                           results, compute_table, diagnostic_table):
    """Diagnostic: mlp as in examples/models but with ``parameters: {intra_op_threads: 1}``
    (no onnxruntime intra-op worker thread beside the caller), against the bare echo again."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(REPOSITORY / "mlp" / "1" / "model.onnx"),
                                   sess_options=options, providers=["CPUExecutionProvider"])
    results["compute"]["mlp/1"] = measure_compute(session, "mlp", "mlp, intra_op 1",
                                                  bench_duration, compute_table)
    order = ["intra_op 1", "bare"]
    random.Random(f"{bench_seed}/intra_op").shuffle(order)
    steps: dict[str, list[Step]] = {}
    for path in order:
        if path == "bare":
            steps[path] = run_perf(f"127.0.0.1:{echo['mlp'].port}", "echo", "grpc", SWEEP,
                                   CONCURRENCY, pid=echo["mlp"].pid, duration=bench_duration,
                                   seed=bench_seed, input_data=PERF_DATA["mlp"])
        else:
            steps[path] = run_perf(single_thread_mlp.url("grpc"), "mlp", "grpc", SWEEP,
                                   CONCURRENCY, pid=single_thread_mlp.pid,
                                   duration=bench_duration, seed=bench_seed,
                                   input_data=PERF_DATA["mlp"], server=single_thread_mlp,
                                   scrape_model="mlp")
    for i, level in enumerate(CONCURRENCY):
        g, b = steps["intra_op 1"][i], steps["bare"][i]
        default = results["steps"].get(("mlp", "grpc", level))
        diagnostic_table.row(level).update(
            {"conc": str(level), "req/s": g.rps, "bare req/s": b.rps,
             "default req/s": default.rps if default else "-"}
            | cpu_row(results, "mlp/1", g, b))
    met = sum(r.get("target") == "met" for r in diagnostic_table.rows.values())
    diagnostic_table.notes.append(f"overhead target met at {met} of {len(diagnostic_table.rows)} "
                                  "concurrencies with one intra-op thread")


def test_batching_lift(server, unbatched, bench_seed, bench_duration, results, lift_table,
                       cpu_table):
    client = grpcclient.InferenceServerClient(unbatched.url("grpc"))
    try:
        metadata = client.get_model_metadata("mlp", as_json=True)
        config = client.get_model_config("mlp", as_json=True)["config"]
    finally:
        client.close()
    assert int(config.get("max_batch_size", 0)) == 0
    shape = [int(d) for d in metadata["inputs"][0]["shape"]]
    assert shape[-1] == 256 and len(shape) == 2, shape  # [-1, 256]: the ONNX file's own dims
    configs = {"batching (examples/models)": (server, ()),
               "max_batch_size 0": (unbatched, ("--shape", "INPUT0:1,256"))}
    order = list(configs) * LIFT_ROUNDS
    random.Random(f"{bench_seed}/lift").shuffle(order)
    runs: dict[str, list[Step]] = {name: [] for name in configs}
    for name in order:
        s, extra = configs[name]
        runs[name] += run_perf(s.url("grpc"), "mlp", "grpc", str(LIFT_CONCURRENCY),
                               (LIFT_CONCURRENCY,), pid=s.pid, duration=bench_duration,
                               seed=bench_seed, input_data="random", server=s,
                               scrape_model="mlp", extra=extra)
    rates = {}
    for name, steps in runs.items():
        batches = sum(st.counters["batches"] for st in steps)
        rows = sum(st.counters["rows"] for st in steps)
        if name == "max_batch_size 0":
            assert rows == batches  # every execution was one request of one row
        rates[name] = statistics.median(st.rps for st in steps)
        lift_table.row(name).update({
            "config": name, "req/s": rates[name],
            "p50 ms": statistics.median(st.perf["p50_ms"] for st in steps),
            "p99 ms": statistics.median(st.perf["p99_ms"] for st in steps),
            "mean batch": rows / batches,
            "server cpu µs/req": statistics.median(st.per_request(st.cpu_s) for st in steps),
            "server cores": statistics.median(st.cpu_s / st.window_s for st in steps),
            "client cpu": "/".join(client_cpu(st) for st in steps)})
    lift = rates["batching (examples/models)"] / rates["max_batch_size 0"]
    lift_table.notes.append(
        f"unbatched copy's metadata: INPUT0 {shape}, so perf sends [1, 256]; lift = batching / "
        f"max_batch_size 0 = {lift:.2f}; target (reported, not asserted) >= {LIFT_TARGET:.1f}: "
        + ("met" if lift >= LIFT_TARGET else "NOT met"))
    end = os.getloadavg()
    lift_table.notes.append(f"load average at end (1/5/15 min): {end[0]:.2f} {end[1]:.2f} "
                            f"{end[2]:.2f}")
    met = sum(r.get("target") == "met" for r in cpu_table.rows.values())
    cpu_table.notes.append(f"overhead target met at {met} of {len(cpu_table.rows)} "
                           "(model, concurrency) steps")
