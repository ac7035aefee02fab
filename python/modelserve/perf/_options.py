"""Command-line options of ``modelserve perf``: the parser, and the parsing of sweeps and shapes."""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["add_arguments", "check_arguments", "parse_sweep", "parse_shape", "UsageError"]

# A sweep never has more steps than this: a typo such as 1:100000:+1 should fail fast, not run
# for a day.
MAX_STEPS = 1000


class UsageError(ValueError):
    """A bad combination of options, found after argparse has parsed each one."""


def parse_sweep(text: str, *, integer: bool) -> list[float] | list[int]:
    """Parse ``N``, ``START:END`` (step +1), ``START:END:+STEP`` or ``START:END:xFACTOR``.

    The sweep starts at START and stops at the last value not above END; END itself is included
    when the steps land on it (``1:64:x2`` is 1, 2, 4, ..., 64; ``1:10:x2`` is 1, 2, 4, 8).
    ``integer`` (concurrency) requires whole numbers; otherwise (request rates) decimals are
    allowed. Every value must be positive. Raises ``argparse.ArgumentTypeError`` with the reason.
    """
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise argparse.ArgumentTypeError(
            f"invalid sweep {text!r}: expected N, START:END, START:END:+STEP or START:END:xFACTOR")
    number = int if integer else float
    kind = "a whole number" if integer else "a number"

    def value(part: str, what: str) -> float:
        try:
            v = number(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid sweep {text!r}: {what} {part!r} is not {kind}")
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"invalid sweep {text!r}: {what} must be > 0, got {part}")
        return v

    start = value(parts[0], "start")
    if len(parts) == 1:
        return [start]
    end = value(parts[1], "end")
    if end < start:
        raise argparse.ArgumentTypeError(f"invalid sweep {text!r}: end {parts[1]} is below start {parts[0]}")
    step_text = parts[2] if len(parts) == 3 else "+1"
    if step_text[0] in "xX*":
        factor = value(step_text[1:], "factor") if step_text[1:] else 0
        if factor <= 1:
            raise argparse.ArgumentTypeError(f"invalid sweep {text!r}: factor must be > 1, got {step_text[1:]!r}")
        advance = lambda v: v * factor  # noqa: E731
    elif step_text[0] == "+" or step_text[0].isdigit():
        step = value(step_text.lstrip("+"), "step")
        advance = lambda v: v + step  # noqa: E731
    else:
        raise argparse.ArgumentTypeError(
            f"invalid sweep {text!r}: step {step_text!r} must be +STEP or xFACTOR")
    values = []
    v = start
    # A relative tolerance keeps float rates such as 0.1:0.3:+0.1 from losing their last step.
    while v <= end * (1 + 1e-9):
        values.append(number(round(v, 9)) if not integer else int(v))
        if len(values) > MAX_STEPS:
            raise argparse.ArgumentTypeError(f"invalid sweep {text!r}: more than {MAX_STEPS} steps")
        v = advance(v)
    return values


def parse_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME:d1,d2,...`` (a ``--shape`` override) into the name and positive dims."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: expected NAME:d1,d2,... (e.g. INPUT0:3,224)")
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", dims):
        raise argparse.ArgumentTypeError(
            f"invalid shape {text!r}: dims {dims!r} must be comma-separated non-negative integers")
    return name, [int(d) for d in dims.split(",")]


def _positive(kind):
    def convert(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number")
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return convert


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every ``perf`` option on ``parser``."""
    target = parser.add_argument_group("target")
    target.add_argument("-m", "--model", required=True, help="the model to send requests to")
    target.add_argument("--model-version", default="",
                        help="the version to ask for (default: the server's choice)")
    target.add_argument("-u", "--url", default=None,
                        help="host:port of the server (default localhost:8001 for grpc, "
                             "localhost:8000 for http)")
    target.add_argument("-i", "--protocol", choices=("grpc", "http"), default="grpc",
                        help="the Open Inference Protocol transport (default grpc)")
    target.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECONDS",
                        help="per-request timeout; a request over it counts as an error (default 30)")

    load = parser.add_argument_group("load (closed loop by default: --concurrency 1)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=lambda t: parse_sweep(t, integer=True), metavar="SWEEP",
                      help="closed loop: keep N requests outstanding, a new one sent as each "
                           "completes. A number or a sweep START:END[:+STEP|:xFACTOR], e.g. "
                           "1:64:x2 (default 1)")
    mode.add_argument("--request-rate", type=lambda t: parse_sweep(t, integer=False), metavar="SWEEP",
                      help="open loop: send requests at this rate (per second) whatever the "
                           "responses do, e.g. 100:400:+100")
    load.add_argument("--request-distribution", choices=("constant", "poisson"), default=None,
                      help="arrival times in --request-rate mode (default constant)")
    load.add_argument("--max-outstanding", type=_positive(int), default=None, metavar="N",
                      help="--request-rate mode: an arrival that finds N requests outstanding is "
                           "dropped and counted (default 1024)")
    load.add_argument("--duration", type=_positive(float), default=5.0, metavar="SECONDS",
                      help="measured seconds per step (default 5)")
    load.add_argument("--warmup", type=_non_negative, default=1.0, metavar="SECONDS",
                      help="seconds of load before each step's measurement, not counted (default 1)")

    data = parser.add_argument_group("request data")
    data.add_argument("-b", "--batch-size", type=_positive(int), default=1,
                      help="rows per request for a batching model (default 1)")
    data.add_argument("--shape", type=parse_shape, action="append", default=[], metavar="NAME:DIMS",
                      help="the shape of an input with variable (-1) dims, batch dim excluded "
                           "for a batching model, e.g. --shape INPUT0:3,224 (repeatable)")
    data.add_argument("--input-data", default="random", metavar="random|zero|PATH",
                      help="random (seeded by --seed), zero, a .npz file of arrays named after "
                           "the inputs, or a .json file {\"data\": [{NAME: values, ...}, ...]} "
                           "whose entries are sent in turn (default random)")
    data.add_argument("--seed", type=int, default=0, help="seed for random data and arrivals (default 0)")
    data.add_argument("--string-length", type=_positive(int), default=16, metavar="N",
                      help="bytes per element of generated BYTES data (default 16)")
    binary = data.add_mutually_exclusive_group()
    binary.add_argument("--binary", dest="binary", action="store_true", default=None,
                        help="http: send and receive tensors with the binary data extension (default)")
    binary.add_argument("--no-binary", dest="binary", action="store_false",
                        help="http: send and receive tensors as JSON")

    report = parser.add_argument_group("report")
    report.add_argument("--output-format", choices=("table", "csv", "json"), default="table",
                        help="the report on stdout (default table); with --output, the file's format")
    report.add_argument("--output", metavar="FILE",
                        help="also write the report to FILE as CSV or JSON (from --output-format, "
                             "else from the extension: .json is JSON, anything else CSV); stdout "
                             "then shows the table")
    report.add_argument("--plot", metavar="FILE.png",
                        help="plot latency p50/p90/p99 against throughput (needs matplotlib)")
    report.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def check_arguments(args: argparse.Namespace) -> None:
    """Checks that span several options; raises ``UsageError`` naming them."""
    if args.binary is not None and args.protocol != "http":
        raise UsageError("--binary/--no-binary apply to --protocol http only")
    if args.request_rate is None and args.concurrency is None:
        args.concurrency = [1]
    names = [name for name, _ in args.shape]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--shape given more than once for {', '.join(repeated)}")
    if args.request_rate is None and (args.request_distribution is not None
                                      or args.max_outstanding is not None):
        raise UsageError("--request-distribution and --max-outstanding apply to --request-rate only")
    args.request_distribution = args.request_distribution or "constant"
    args.max_outstanding = args.max_outstanding or 1024
    if args.url is None:
        args.url = "localhost:8001" if args.protocol == "grpc" else "localhost:8000"
    if "://" in args.url:
        raise UsageError(f"--url {args.url}: give host:port without a scheme")
