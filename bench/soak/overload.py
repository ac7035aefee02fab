"""Overload: at 3x capacity, are refusals fast and hinted, do admitted requests keep their
deadline, and does the server hold its memory?

``modelserve serve`` (its own process) serves bench/e2e/test_overload.py's model: Python, one
instance, 10 ms per request, no batching (~100 requests/s), with admission control on
(``max_queue_size: 16``, ``default_timeout_us: 300000``). Capacity is measured first, closed loop
at ``--capacity-concurrency`` (8: within the queue, so nothing is refused); then requests arrive
open loop at ``--factor`` (3) x capacity for ``--duration`` (60) s, half gRPC ``ModelInfer``
(deadline = the call's timeout) and half HTTP ``/v2/models/m/infer`` (header
``Request-Timeout-Ms``), each with a ``--deadline-ms`` (300) deadline. They are sent with
tritonclient's gRPC stubs (``tritonclient.grpc.service_pb2_grpc``) and aiohttp rather than
tritonclient's clients, which drop the response headers and trailing metadata the retry hint
travels in. The RSS of the server's process tree is sampled every 0.5 s.

Targets: refusals (RESOURCE_EXHAUSTED / 429) happen and are answered in < 5 ms p99 (client side,
send to answer); every refusal carries a retry hint (HTTP ``Retry-After`` >= 1 s, gRPC trailing
``grpc-retry-pushback-ms`` >= 1); every admitted request (not refused) succeeds within its
deadline (none expires in the queue: DEADLINE_EXCEEDED / 504, none answers late); no other
error; RSS flat: the median of the last tenth of the overload within 2% of the median of its
first tenth. Printed beside them: capacity, offered, goodput, admitted p99, RSS before and peak.
Plot: ``overload.png`` (RSS, and refusal / admitted latency over time). Run:
``python -m bench.soak.overload --duration 60``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.e2e.test_overload import ADMISSION, CONFIG, MODEL

from ._common import Driver, Op, Report, RssSampler, Server, add_capacity_options, load_average, p99_ms, \
    parser, positive, pyplot, tree_rss

REFUSAL_P99_TARGET_MS = 5.0
FLAT_TARGET = 2.0  # % RSS change over the overload, at most
OK, REFUSED, REFUSED_WITHOUT_HINT, EXPIRED = 0, 1, 2, 3  # what an op's send() returns


class Overload(Exception):
    """A response that is neither a success, a refusal nor an expiry: fails the check."""


class RawClients:
    """gRPC (tritonclient's generated stubs on a grpc.aio channel) and HTTP (aiohttp) clients that
    see the retry hint: trailing metadata and response headers."""

    def __init__(self, server: Server, deadline_s: float, x: np.ndarray) -> None:
        import aiohttp
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc = grpc
        self.deadline_s = deadline_s
        self.channel = grpc.aio.insecure_channel(server.url("grpc"))
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.request = service_pb2.ModelInferRequest(model_name="m")
        t = self.request.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
        t.contents.fp32_contents.extend(x.tolist())
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.url = f"http://{server.url('http')}/v2/models/m/infer"
        self.body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape),
                                            "data": x.tolist()}]})
        self.headers = {"Content-Type": "application/json", "Request-Timeout-Ms": str(round(deadline_s * 1e3))}
        self._timeout = aiohttp.ClientTimeout(total=deadline_s + 10)  # a late answer is seen, not cut

    async def grpc_infer(self) -> int:
        codes = self._grpc.StatusCode
        try:
            await self.stub.ModelInfer(self.request, timeout=self.deadline_s)
            return OK
        except self._grpc.aio.AioRpcError as e:
            if e.code() == codes.RESOURCE_EXHAUSTED:
                hint = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms", "")
                return REFUSED if hint.isdigit() and int(hint) >= 1 else REFUSED_WITHOUT_HINT
            if e.code() == codes.DEADLINE_EXCEEDED:
                return EXPIRED
            raise Overload(f"gRPC {e.code().name}: {e.details()}") from e

    async def http_infer(self) -> int:
        async with self.session.post(self.url, data=self.body, headers=self.headers, timeout=self._timeout) as r:
            text = await r.text()
            if r.status == 200:
                return OK
            if r.status == 429:
                hint = r.headers.get("Retry-After", "")
                return REFUSED if hint.isdigit() and int(hint) >= 1 else REFUSED_WITHOUT_HINT
            if r.status == 504:
                return EXPIRED
            raise Overload(f"HTTP {r.status}: {text[:200]}")

    async def close(self) -> None:
        await self.session.close()
        await self.channel.close()


async def run(server: Server, args) -> dict:
    x = np.random.default_rng(args.seed).standard_normal(16).astype(np.float32)
    clients = RawClients(server, args.deadline_ms / 1e3, x)
    try:
        ops = [Op("grpc", 0.5, clients.grpc_infer), Op("http", 0.5, clients.http_infer)]
        driver = Driver(ops, args.seed)
        _, measured = await driver.closed(args.capacity_concurrency, args.capacity_duration)
        a = measured.arrays()
        done = a["sent"] + a["latency"]
        window = (done >= done.max() - args.capacity_duration) & a["ok"] & (a["answer"] == OK)
        capacity = float(window.sum() / args.capacity_duration)
        rate = args.factor * capacity
        print(f"capacity {capacity:.1f} requests/s (closed loop, concurrency {args.capacity_concurrency}); "
              f"offering {rate:.1f}/s for {args.duration:.0f} s", flush=True)
        before = tree_rss(server.pid)
        with RssSampler(server.pid, 0.5) as rss:
            records = await driver.open(rate, args.duration, max_outstanding=4096)
    finally:
        await clients.close()
    return {"capacity": capacity, "rate": rate, "records": records, "rss": rss, "before": before}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload (default 60)")
    p.add_argument("--factor", type=float, default=3.0, help="offered load / measured capacity (default 3)")
    p.add_argument("--deadline-ms", type=float, default=300.0, help="every request's deadline (default 300 ms)")
    add_capacity_options(p, 8)
    args = p.parse_args(argv)
    positive(p, args, "duration", "factor", "deadline_ms", "capacity_duration", "capacity_concurrency")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="modelserve-overload-") as tmp:
        root = Path(tmp)
        (root / "m" / "1").mkdir(parents=True)
        (root / "m" / "1" / "model.py").write_text(MODEL)
        (root / "m" / "config.yaml").write_text(CONFIG + ADMISSION)
        server = Server(root)
        try:
            r = asyncio.run(run(server, args))
        finally:
            server.stop()

    records, rss = r["records"], r["rss"]
    a = records.arrays()
    answered = a["ok"]
    outcome = a["answer"]
    success = answered & (outcome == OK)
    refused = answered & ((outcome == REFUSED) | (outcome == REFUSED_WITHOUT_HINT))
    hinted = answered & (outcome == REFUSED)
    expired = answered & (outcome == EXPIRED)
    late = success & (a["latency"] > args.deadline_ms / 1e3)
    admitted = success | expired
    t, b = rss.arrays()
    tenth = max(args.duration / 10, 1.0)
    first, last = rss.median(t[0], t[0] + tenth), rss.median(t[-1] - tenth, t[-1])
    change = (last - first) / first * 100

    report = Report(f"overload: {args.factor:g} x capacity for {args.duration:.0f} s, gRPC + HTTP, "
                    f"deadline {args.deadline_ms:.0f} ms, max_queue_size 16")
    report.info("capacity (requests/s)", r["capacity"], ".1f")
    report.info("offered (requests/s)", r["rate"], ".1f")
    report.info("sent (requests/s)", len(a["ok"]) / args.duration, ".1f")
    report.info("goodput (successes/s)", float(success.sum()) / args.duration, ".1f")
    report.check("refusals", int(refused.sum()), refused.sum() > 0, "> 0", "d")
    refusal_p99 = p99_ms(a["latency"][refused])
    report.check("refusal p99 ms", refusal_p99, refusal_p99 < REFUSAL_P99_TARGET_MS, f"< {REFUSAL_P99_TARGET_MS:g}")
    for i, name in enumerate(records.ops):
        report.info(f"  refusal p99 ms, {name}", p99_ms(a["latency"][refused & (a["op"] == i)]))
    share = float(hinted.sum() / refused.sum() * 100) if refused.sum() else float("nan")
    report.check("refusals with a retry hint %", share, share == 100, "100", ".1f")
    report.info("admitted requests", int(admitted.sum()))
    report.info("admitted p99 ms", p99_ms(a["latency"][success]))
    report.info("admitted max ms", float(a["latency"][success].max() * 1e3) if success.any() else float("nan"))
    missed = int(expired.sum() + late.sum())
    report.check(f"admitted past their deadline ({args.deadline_ms:.0f} ms)", missed, missed == 0, "0", "d")
    report.check("other errors", records.failed, records.failed == 0, "0", "d")
    report.check("dropped arrivals", records.drops, records.drops == 0, "0", "d")
    report.info("client send lag p99 ms", p99_ms(np.array(records.lag, dtype=np.float64)))
    report.info("rss before the overload MiB", r["before"] / 2**20, ".1f")
    report.info("rss first tenth MiB", first / 2**20, ".1f")
    report.info("rss peak MiB", float(b.max()) / 2**20, ".1f")
    report.check("rss change over the overload %", change, abs(change) < FLAT_TARGET, f"|x| < {FLAT_TARGET:g}")
    report.info("load average at end", load_average())
    report.print()
    for message, count in records.errors.most_common(5):
        print(f"  {count} x {message}")
    report.save(args.out, "overload")

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    start = t[0]
    top.plot(t - start, b / 2**20, label="RSS, server process tree")
    top.axhline(first / 2**20 * (1 + FLAT_TARGET / 100), color="r", ls="--", lw=1, label=f"first tenth + {FLAT_TARGET:g}%")
    top.set_ylabel("MiB")
    top.legend(loc="lower right")
    sent = a["sent"] - start
    bottom.plot(sent[success], a["latency"][success] * 1e3, ".", ms=1, label="admitted", rasterized=True)
    bottom.plot(sent[refused], a["latency"][refused] * 1e3, ".", ms=1, label="refused", rasterized=True)
    bottom.axhline(args.deadline_ms, color="r", ls="--", lw=1, label="deadline")
    bottom.set_yscale("log")
    bottom.set_ylabel("latency ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="center right", markerscale=8)
    fig.suptitle(f"overload at {args.factor:g} x capacity (seed {args.seed}, {time.strftime('%Y-%m-%d %H:%M')})")
    fig.tight_layout()
    fig.savefig(args.out / "overload.png", dpi=100)
    plt.close(fig)
    print(f"wrote {args.out / 'overload.png'} and {args.out / 'overload.json'}")
    return report.status


if __name__ == "__main__":
    raise SystemExit(main())
