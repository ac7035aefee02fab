"""``modelserve perf``: a load generator for any Open Inference Protocol server.

It assumes nothing about the server beyond the protocol (KServe v2 / Triton, gRPC or HTTP): it
reads the model's metadata to learn its inputs (and the model config's ``max_batch_size`` when
the server offers it), generates or loads request data, then drives a sweep of load levels,
closed loop (``--concurrency``) or open loop (``--request-rate``), from one asyncio process
over tritonclient's asyncio clients, and reports per step the achieved requests/s and
inferences/s, latency percentiles, errors and the client's own CPU use (so that a client-bound
step is visible). Request errors never stop a run; they are counted and reported.

Exit status: 0 when the sweep completed (request errors are in the report), 1 when the run could
not start (server unreachable, unknown model, shapes that cannot be resolved, bad data file),
2 for bad options, 130 when interrupted (the steps finished so far are still reported).

Examples::

    modelserve perf -m mlp -u localhost:8001 --concurrency 1:64:x2 --duration 5
    modelserve perf -m mlp -i http -u localhost:8000 --request-rate 100:400:+100 --plot lat.png
    python -m modelserve.perf -m resnet --shape images:3,224,224 -b 8 --output-format json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from .._cli import standalone_main
from ._model import SetupError
from ._options import UsageError, add_arguments, check_arguments

__all__ = ["add_parser", "main"]

_DESCRIPTION, _, _EPILOG = __doc__.replace("``", "").partition("\n\nExit status")
_EPILOG = "Exit status" + _EPILOG.replace("::", ":")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``perf`` subcommand on an argparse ``subparsers`` object.

    The subcommand's namespace carries ``run``: ``args.run(args)`` executes it and returns the
    exit status.
    """
    parser = subparsers.add_parser(
        "perf", help="load-test a model on any Open Inference Protocol server",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=_run_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``modelserve perf`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    return standalone_main("modelserve perf", _DESCRIPTION, _EPILOG, add_arguments, _run_command, argv)


def _error(message: str) -> None:
    print(f"modelserve perf: error: {message}", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    from . import _client, _report, _runner

    try:
        check_arguments(args)
        _client.require_tritonclient(args.protocol)
        for option, path in (("--output", args.output), ("--plot", args.plot)):
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not os.path.isdir(folder):
                raise UsageError(f"{option} {path}: folder {folder} does not exist")
        if args.plot:
            _report.require_matplotlib()
    except (UsageError, ImportError) as e:
        _error(str(e))
        return 2

    state = _runner.RunState()
    status = 0
    try:
        asyncio.run(_runner.run(args, state))
    except SetupError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        status = 130
        print(f"modelserve perf: interrupted after {len(state.steps)} step(s)", file=sys.stderr)
    if not state.steps:
        return status
    _runner.write_reports(args, state)
    return status
