"""Swaps under load: does a version swap cost any request, or its latency, at half of capacity?

``modelserve serve --model-control-mode explicit`` (its own process) serves ``swap``, a Python
model (dynamic batching, warm-up) whose code comes in two versions: odd version folders add 1
to INPUT0, even ones add 2, so every answer is checked against the version it says answered. A
swap is what the repository does for a new version: folder ``N + 1`` is written, then
``load_model`` over HTTP (tritonclient) loads and warms it beside version N, moves the default
to it once it is READY, and drains N (``version_policy: {latest: 1}``). Capacity is measured
first, closed loop at ``--capacity-concurrency`` (64) with the load's mix (gRPC unary, HTTP
unary, one gRPC stream; a third each); then the mix runs open loop at ``--fraction`` (0.5) of
it: 5 s of settling, ``--steady`` (30) s of steady load, then ``--swaps`` (20) swaps, one every
``--interval`` (5) s, and 5 s more.

Targets: 0 failed or dropped requests; the p99 of requests sent during the swaps (from each
``load_model`` call until the version it retired has drained and unloaded, plus ``--settle``
(1) s) <= 1.5 x the p99 of the steady phase. Printed beside them: capacity, rate, swap durations, the requests each version answered,
answers from a superseded version after its swap returned. Plot: ``swaps.png`` (p99 per second
with the swap windows shaded, and the version that answered). Run: ``python -m bench.soak.swaps``.
"""

from __future__ import annotations

import asyncio
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ._common import Clients, Driver, Op, Records, Report, Server, add_capacity_options, client_rows, \
    load_average, p99_ms, parser, positive, pyplot

MODEL = textwrap.dedent("""
    OFFSET = {offset}  # version code {code}: odd version folders add 1, even ones add 2

    class Model:
        def execute(self, inputs):
            return {{"OUTPUT0": inputs["INPUT0"] + OFFSET}}
""")
CONFIG = """\
# swap: a Python model whose versions alternate between two codes (see model.py)
max_batch_size: 8
inputs: [{name: INPUT0, datatype: FP32, shape: [16]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [16]}]
dynamic_batching: {max_queue_delay_us: 100, max_queue_size: 1024}
instances: {count: 1, device: cpu}
version_policy: {latest: 1}
warmup: [{batch_size: 1, count: 2, data: random}]
"""
P99_TARGET = 1.5  # p99 during the swaps / steady p99, at most
SETTLE_S = 5.0  # load before the steady phase, and after the last swap


def offset(version: int) -> int:
    return 1 if version % 2 else 2


def write_version(root: Path, version: int) -> None:
    folder = root / "swap" / str(version)
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL.format(offset=offset(version), code=2 - version % 2))


def make_ops(clients: Clients, seed: int) -> list[Op]:
    x = np.random.default_rng(seed).standard_normal((1, 16), dtype=np.float32)
    ops = []
    for protocol in Clients.PROTOCOLS:
        prepared = clients.prepare(protocol, {"INPUT0": x})

        async def send(protocol=protocol, prepared=prepared) -> int:
            out, version = await clients.infer(protocol, "swap", prepared, ["OUTPUT0"])
            expected = x + offset(version)
            assert np.array_equal(out["OUTPUT0"], expected), \
                f"swap version {version} answered OUTPUT0 {out['OUTPUT0'][0, :2]}..., expected {expected[0, :2]}..."
            return version

        ops.append(Op(f"swap {protocol}", 1.0, send))
    return ops


async def run(server: Server, root: Path, args) -> dict:
    clients = Clients(server)
    try:
        driver = Driver(make_ops(clients, args.seed), args.seed)
        capacity, _ = await driver.closed(args.capacity_concurrency, args.capacity_duration)
        rate = args.fraction * capacity
        total = 2 * SETTLE_S + args.steady + args.swaps * args.interval
        print(f"capacity {capacity:.1f} requests/s (closed loop, concurrency {args.capacity_concurrency}); "
              f"running at {rate:.1f}/s for {total:.0f} s with {args.swaps} swaps", flush=True)
        records = Records([op.name for op in driver.ops])
        start = time.perf_counter()
        swaps: list[tuple[int, float, float, float]] = []  # (new version, load called, returned, retired unloaded)

        async def versions() -> dict[int, str]:
            return {int(e["version"]): e.get("state") for e in await clients.http.get_model_repository_index()
                    if e["name"] == "swap"}

        async def swapper() -> None:
            await asyncio.sleep(SETTLE_S + args.steady)
            for i in range(args.swaps):
                version = 2 + i
                write_version(root, version)
                t0 = time.perf_counter()
                await clients.http.load_model("swap")
                loaded = time.perf_counter()
                states = await versions()
                assert states.get(version) == "READY", f"swap: version {version} is {states.get(version)} after load_model"
                # The swap ends when the versions the policy retired (all but the new one and the
                # one kept for rollback) have drained and unloaded.
                while any(v < version - 1 and s not in ("UNLOADED", "FAILED") for v, s in states.items()) \
                        and time.perf_counter() < loaded + 30:
                    await asyncio.sleep(0.02)
                    states = await versions()
                swaps.append((version, t0, loaded, time.perf_counter()))
                await asyncio.sleep(max(0.0, start + SETTLE_S + args.steady + (i + 1) * args.interval
                                        - time.perf_counter()))

        await asyncio.gather(driver.open(rate, total, records=records), swapper())
    finally:
        await clients.close()
    return {"capacity": capacity, "rate": rate, "records": records, "start": start, "swaps": swaps,
            "total": total}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--swaps", type=int, default=20, help="version swaps (default 20)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds from one swap to the next (default 5)")
    p.add_argument("--steady", type=float, default=30.0, help="seconds of steady load before the swaps (default 30)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds after a swap ended that still count as during the swap (default 1)")
    p.add_argument("--fraction", type=float, default=0.5, help="offered load / measured capacity (default 0.5)")
    add_capacity_options(p, 64)
    args = p.parse_args(argv)
    positive(p, args, "swaps", "interval", "steady", "fraction", "capacity_duration", "capacity_concurrency")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="modelserve-swaps-") as tmp:
        root = Path(tmp)
        (root / "swap").mkdir()
        (root / "swap" / "config.yaml").write_text(CONFIG)
        write_version(root, 1)
        server = Server(root, "--model-control-mode", "explicit", "--load-model", "swap")
        try:
            r = asyncio.run(run(server, root, args))
        finally:
            server.stop()

    records, start, swaps = r["records"], r["start"], r["swaps"]
    a = records.arrays()
    steady = (a["sent"] >= start + SETTLE_S) & (a["sent"] < start + SETTLE_S + args.steady)
    during = np.zeros(len(a["sent"]), dtype=bool)
    stale = 0
    for i, (version, t0, t1, t2) in enumerate(swaps):
        during |= (a["sent"] >= t0) & (a["sent"] <= t2 + args.settle)
        until = swaps[i + 1][1] if i + 1 < len(swaps) else a["sent"].max() + 1
        after = (a["sent"] > t1) & (a["sent"] < until) & a["ok"]
        stale += int((after & (a["answer"] < version)).sum())
    steady_p99 = p99_ms(a["latency"][steady & a["ok"]])
    swap_p99 = p99_ms(a["latency"][during & a["ok"]])
    durations = np.array([t1 - t0 for _, t0, t1, _ in swaps]) * 1e3
    retired = np.array([t2 - t0 for _, t0, _, t2 in swaps]) * 1e3
    report = Report(f"swaps under load: {len(swaps)} version swaps at {args.fraction:g} x capacity "
                    "(gRPC, HTTP, stream)")
    report.info("capacity (requests/s)", r["capacity"], ".1f")
    report.info("offered (requests/s)", r["rate"], ".1f")
    report.info("requests", len(a["ok"]))
    report.check("swaps done", len(swaps), len(swaps) == args.swaps, str(args.swaps), "d")
    report.check("failed requests", records.failed, records.failed == 0, "0", "d")
    report.check("dropped arrivals", records.drops, records.drops == 0, "0", "d")
    client_rows(report, records)
    report.info("steady p99 ms", steady_p99)
    report.info("p99 during the swaps ms", swap_p99)
    ratio = swap_p99 / steady_p99
    report.check("p99 during swaps / steady p99", ratio, ratio <= P99_TARGET, f"<= {P99_TARGET:g}")
    if len(durations):
        report.info("load_model ms (median / max)", f"{np.median(durations):.0f} / {durations.max():.0f}")
        report.info("swap ms, to the retired version unloaded (median / max)",
                    f"{np.median(retired):.0f} / {retired.max():.0f}")
    report.info("answers from the superseded version after its swap returned", stale)
    served = Counter(int(v) for v in a["answer"][a["ok"]])
    report.info("requests per version", " ".join(f"{v}:{n}" for v, n in sorted(served.items())))
    report.info("load average at end", load_average())
    report.print()
    for message, count in records.errors.most_common(5):
        print(f"  {count} x {message}")
    report.save(args.out, "swaps")
    plot(args, a, start, swaps, steady_p99, r["total"], args.out / "swaps.png")
    print(f"wrote {args.out / 'swaps.png'} and {args.out / 'swaps.json'}")
    return report.status


def plot(args, a: dict, start: float, swaps, steady_p99: float, total: float, path: Path) -> None:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    sent = a["sent"] - start
    mids, p99 = [], []
    for lo in np.arange(0, total, 1.0):
        lat = a["latency"][(sent >= lo) & (sent < lo + 1) & a["ok"]]
        if len(lat):
            mids.append(lo + 0.5)
            p99.append(np.percentile(lat, 99) * 1e3)
    for _, t0, _, t2 in swaps:
        for ax in (top, bottom):
            ax.axvspan(t0 - start, t2 - start + args.settle, color="0.85", lw=0)
    top.plot(mids, p99, label="p99 per second")
    top.axhline(steady_p99, color="g", ls="--", lw=1, label="steady p99")
    top.axhline(steady_p99 * P99_TARGET, color="r", ls="--", lw=1, label=f"{P99_TARGET:g} x steady p99")
    top.set_ylabel("latency ms")
    top.legend(loc="upper left")
    bottom.plot(sent[a["ok"]], a["answer"][a["ok"]], ",", rasterized=True)
    failed = sent[~a["ok"]]
    if len(failed):
        bottom.plot(failed, np.zeros(len(failed)), "rx", label="failed")
        bottom.legend(loc="upper left")
    bottom.set_ylabel("version that answered")
    bottom.set_xlabel("seconds (grey: swap windows)")
    fig.suptitle(f"swaps under load at {args.fraction:g} x capacity (seed {args.seed}, "
                 f"{time.strftime('%Y-%m-%d %H:%M')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
