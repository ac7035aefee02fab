"""Soak: does ``modelserve serve`` hold its memory and serve without a single error for a long run?

``modelserve serve`` (its own process) serves ``mlp`` (examples/models: ONNX, dynamic batching)
and ``echo`` (a Python model, dynamic batching, FP32 [-1] echoed back). One asyncio client
process sends a seeded mix over tritonclient: gRPC unary, HTTP unary (binary tensors) and one
long-lived gRPC stream (``start_stream``); 1-row ``mlp`` requests, small ``echo`` requests, and
3% 1 MiB ``echo`` payloads (one third per transport). Capacity is measured first, closed loop at
``--capacity-concurrency`` (64) with the same mix; then the same mix runs open loop at
``--fraction`` (0.5) of it for ``--duration`` seconds (1800; ``--smoke``: 180), sampling the RSS
of the server's process tree every second.

Targets: after the warm-up (the first 300 s; a third of the run when that is shorter) the RSS
grows < 2% (median of the last minute against the median of the minute after the warm-up;
windows of a fifth of the rest when shorter), zero failed or dropped requests. Printed beside
them: capacity, offered and achieved rates, p50/p99 overall and per ``--interval``; the plot
(``soak.png``) shows RSS and p50/p99 over time. Run: ``python -m bench.soak.soak --smoke``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.e2e.test_runtime_throughput import REPOSITORY

from ._common import Clients, Driver, Op, Records, Report, RssSampler, Server, add_capacity_options, \
    client_rows, load_average, p99_ms, parser, positive, pyplot

ECHO_MODEL = textwrap.dedent("""
    class Model:
        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}
""")
ECHO_CONFIG = """\
# echo: a Python model returning its input; FP32 [-1] so one model takes small and 1 MiB payloads
max_batch_size: 8
inputs: [{name: INPUT0, datatype: FP32, shape: [-1]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [-1]}]
dynamic_batching: {max_queue_delay_us: 100, max_queue_size: 1024}
instances: {count: 1, device: cpu}
"""
MIB_ELEMENTS = 2**20 // 4  # FP32 elements of a 1 MiB payload
GROWTH_TARGET = 2.0  # % RSS growth after the warm-up, below
MIX = (  # (model, protocol, elements, weight); the weights add up to 1
    ("mlp", "grpc", 256, 0.30), ("mlp", "http", 256, 0.30), ("mlp", "stream", 256, 0.20),
    ("echo", "grpc", 16, 0.055), ("echo", "http", 16, 0.055), ("echo", "stream", 16, 0.03),
    ("echo", "grpc", MIB_ELEMENTS, 0.01), ("echo", "http", MIB_ELEMENTS, 0.01),
    ("echo", "stream", MIB_ELEMENTS, 0.01),
)


def make_repository(root: Path) -> Path:
    shutil.copytree(REPOSITORY / "mlp", root / "mlp")
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (root / "echo" / "config.yaml").write_text(ECHO_CONFIG)
    return root


def make_ops(clients: Clients, seed: int) -> list[Op]:
    rng = np.random.default_rng(seed)
    ops = []
    for model, protocol, elements, weight in MIX:
        x = rng.standard_normal((1, elements), dtype=np.float32)
        prepared = clients.prepare(protocol, {"INPUT0": x})

        async def send(model=model, protocol=protocol, prepared=prepared, x=x) -> int:
            out, version = await clients.infer(protocol, model, prepared, ["OUTPUT0"])
            y = out["OUTPUT0"]
            if model == "mlp":
                assert y.shape == (1, 10), f"mlp answered OUTPUT0 of shape {y.shape}, expected (1, 10)"
            else:
                assert np.array_equal(y, x), f"echo answered {y.shape} not equal to its input {x.shape}"
            return version

        size = "1MiB" if elements == MIB_ELEMENTS else f"[1,{elements}]"
        ops.append(Op(f"{model} {protocol} {size}", weight, send))
    return ops


async def run(server: Server, args) -> tuple[float, float, Records, RssSampler]:
    clients = Clients(server)
    try:
        driver = Driver(make_ops(clients, args.seed), args.seed)
        capacity, _ = await driver.closed(args.capacity_concurrency, args.capacity_duration)
        rate = args.fraction * capacity
        print(f"capacity {capacity:.1f} requests/s (closed loop, concurrency {args.capacity_concurrency}); "
              f"running at {rate:.1f}/s for {args.duration:.0f} s", flush=True)
        with RssSampler(server.pid, 1.0) as rss:
            records = await driver.open(rate, args.duration)
    finally:
        await clients.close()
    return capacity, rate, records, rss


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load at the fraction (default 1800)")
    p.add_argument("--smoke", action="store_true", help="a 3-minute run (--duration 180, warm-up 60 s; overrides --duration)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before the RSS baseline (default 300, or a third of a shorter run)")
    p.add_argument("--fraction", type=float, default=0.5, help="offered load / measured capacity (default 0.5)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds per p99 point of the plot (default 10)")
    add_capacity_options(p, 64)
    args = p.parse_args(argv)
    if args.smoke:
        args.duration = 180.0
    if args.warmup is None:
        args.warmup = min(300.0, args.duration / 3)
    positive(p, args, "duration", "fraction", "interval", "capacity_duration", "capacity_concurrency")
    if not 0 <= args.warmup < args.duration:
        p.error(f"--warmup must be in [0, --duration {args.duration}), got {args.warmup}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="modelserve-soak-") as tmp:
        server = Server(make_repository(Path(tmp)))
        try:
            capacity, rate, records, rss = asyncio.run(run(server, args))
            alive = server.proc.poll() is None
        finally:
            server.stop()

    a = records.arrays()
    start, end = rss.samples[0][0], rss.samples[-1][0]
    window = min(60.0, (args.duration - args.warmup) / 5)
    baseline = rss.median(start + args.warmup, start + args.warmup + window)
    final = rss.median(end - window, end)
    growth = (final - baseline) / baseline * 100
    ok = a["latency"][a["ok"]]
    report = Report(f"soak: {args.duration:.0f} s at {args.fraction:g} x capacity, mixed gRPC/HTTP/stream, "
                    f"1 MiB payloads 3%")
    report.info("capacity (requests/s)", capacity, ".1f")
    report.info("offered (requests/s)", rate, ".1f")
    report.info("completed (requests/s)", len(a["ok"]) / args.duration, ".1f")
    report.info("requests", len(a["ok"]))
    report.check("failed requests", records.failed, records.failed == 0, "0", "d")
    report.check("dropped arrivals", records.drops, records.drops == 0, "0", "d")
    report.info("p50 ms", float(np.percentile(ok, 50) * 1e3) if len(ok) else float("nan"))
    report.info("p99 ms", p99_ms(ok))
    client_rows(report, records)
    report.info("rss after warm-up MiB", baseline / 2**20, ".1f")
    report.info("rss at end MiB", final / 2**20, ".1f")
    report.check(f"rss growth after {args.warmup:.0f} s %", growth, growth < GROWTH_TARGET, f"< {GROWTH_TARGET:g}")
    report.check("server alive at end", int(alive), alive, "1", "d")
    report.info("load average at end", load_average())
    report.print()
    for message, count in records.errors.most_common(5):
        print(f"  {count} x {message}")
    report.save(args.out, "soak")
    plot(args, a, rss, start, baseline, args.out / "soak.png")
    print(f"wrote {args.out / 'soak.png'} and {args.out / 'soak.json'}")
    return report.status


def plot(args, a: dict, rss: RssSampler, start: float, baseline: float, path: Path) -> None:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    t, b = rss.arrays()
    top.plot((t - start) / 60, b / 2**20, label="RSS, server process tree")
    top.axvspan(0, args.warmup / 60, color="0.9", label="warm-up")
    top.axhline(baseline / 2**20 * (1 + GROWTH_TARGET / 100), color="r", ls="--", lw=1,
                label=f"baseline + {GROWTH_TARGET:g}%")
    top.set_ylabel("MiB")
    top.legend(loc="lower right")
    edges = np.arange(0, args.duration + args.interval, args.interval)
    sent = a["sent"] - start
    mids, p50, p99 = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lat = a["latency"][(sent >= lo) & (sent < hi) & a["ok"]]
        if len(lat):
            mids.append((lo + hi) / 2 / 60)
            p50.append(np.percentile(lat, 50) * 1e3)
            p99.append(np.percentile(lat, 99) * 1e3)
    bottom.plot(mids, p99, label="p99")
    bottom.plot(mids, p50, label="p50")
    failed = sent[~a["ok"]]
    if len(failed):
        bottom.plot(failed / 60, np.zeros(len(failed)), "rx", label="failed")
    bottom.set_ylabel(f"latency ms (per {args.interval:g} s)")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right")
    fig.suptitle(f"soak at {args.fraction:g} x capacity (seed {args.seed}, {time.strftime('%Y-%m-%d %H:%M')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
