"""One run of ``modelserve perf``: learn the model, build the requests, sweep, report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import numpy as np

from ._client import describe_error, open_transport
from ._data import make_payloads
from ._load import StepResult, run_closed, run_open
from ._model import SetupError, resolve_layout
from . import _report

__all__ = ["RunState", "run", "write_reports"]


@dataclass
class RunState:
    """What a run has learnt and measured so far; kept by the caller, so that an interrupted
    run still reports its finished steps."""

    run: dict = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)


def _progress(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"[perf] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, state: RunState) -> None:
    closed = args.request_rate is None
    levels = args.concurrency if closed else args.request_rate
    binary = args.binary is not False
    transport = open_transport(args.protocol, args.url, args.model, args.model_version,
                               args.timeout, binary=binary,
                               connections=max(levels) if closed else args.max_outstanding)
    try:
        model = await transport.model_info()
        layout = resolve_layout(model, dict(args.shape), args.batch_size)
        if args.protocol == "http" and not binary:
            half = [f"{t.name!r} ({t.datatype})" for t in layout.inputs if t.datatype in ("FP16", "BF16")]
            if half:
                raise SetupError(f"input {', '.join(half)} cannot travel as JSON; drop --no-binary")
        payloads = make_payloads(layout, args.input_data, model=args.model, seed=args.seed,
                                 string_length=args.string_length)
        try:
            prepared = [transport.prepare(p, layout.inputs) for p in payloads]
        except Exception as e:
            raise SetupError(f"cannot build a request for model {args.model!r}: "
                             f"{describe_error(e)}") from e

        batch = layout.batch_size if layout.batching else 1
        shapes = {t.name: list(payloads[0][t.name].shape) for t in layout.inputs}
        state.run = {
            "model": args.model, "model_version": args.model_version, "url": args.url,
            "protocol": args.protocol, "binary": binary if args.protocol == "http" else None,
            "platform": model.platform, "versions": list(model.versions),
            "mode": "concurrency" if closed else "request_rate",
            "levels": list(levels), "duration_s": args.duration, "warmup_s": args.warmup,
            "request_distribution": None if closed else args.request_distribution,
            "max_outstanding": None if closed else args.max_outstanding,
            "batch_size": batch, "batching": layout.batching, "batching_source": layout.batch_source,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": shapes[t.name]}
                       for t in layout.inputs],
            "input_data": args.input_data, "payloads": len(payloads), "seed": args.seed,
            "timeout_s": args.timeout,
        }
        version = args.model_version or "the server's choice"
        wire = f"{args.protocol}" + ("" if args.protocol == "grpc" else
                                     " (binary tensors)" if binary else " (JSON tensors)")
        inputs = ", ".join(f"{t.name} {t.datatype} [{','.join(map(str, shapes[t.name]))}]"
                           for t in layout.inputs)
        data = args.input_data + (f" (seed {args.seed})" if args.input_data == "random" else "")
        load = ("closed loop" if closed else
                f"open loop, {args.request_distribution} arrivals, at most "
                f"{args.max_outstanding} outstanding")
        state.header = [
            f"model {args.model!r} version {version} at {args.url} over {wire}",
            f"inputs: {inputs}; data: {data}; batch size {batch} ({layout.batch_source})",
            f"{load}; {args.duration:g} s measured per step after a {args.warmup:g} s warm-up",
        ]
        for line in state.header:
            _progress(args, line)

        def send(i: int):
            return transport.infer(prepared[i % len(prepared)])

        rng = np.random.default_rng(args.seed)
        for level in levels:
            if closed:
                r = await run_closed(send, level, warmup=args.warmup, duration=args.duration,
                                     batch_size=batch)
            else:
                r = await run_open(send, level, warmup=args.warmup, duration=args.duration,
                                   batch_size=batch, poisson=args.request_distribution == "poisson",
                                   max_outstanding=args.max_outstanding, rng=rng)
            state.steps.append(r)
            p99 = "-" if r.p99_ms is None else f"{r.p99_ms:.2f} ms"
            _progress(args, f"{'concurrency' if closed else 'rate'} {level:g}: "
                            f"{r.requests_per_s:.1f} req/s, p99 {p99}, {r.errors} errors")
    finally:
        await transport.close()


def write_reports(args: argparse.Namespace, state: RunState) -> None:
    """stdout gets the report in --output-format, or the table when --output takes the file."""
    if args.output:
        fmt = args.output_format if args.output_format != "table" else (
            "json" if args.output.lower().endswith(".json") else "csv")
        with open(args.output, "w", newline="") as f:
            f.write(_report.render(fmt, state.steps, state.run, state.header))
        sys.stdout.write(_report.render("table", state.steps, state.run, state.header))
    else:
        sys.stdout.write(_report.render(args.output_format, state.steps, state.run, state.header))
    sys.stdout.flush()
    if args.plot:
        title = f"{args.model} over {args.protocol}, batch {state.run.get('batch_size', 1)}"
        _report.plot(args.plot, state.steps, title)
