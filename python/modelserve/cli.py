"""The ``modelserve`` command line (DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from ._cli import ArgumentParser

__all__ = ["main"]


def _validate(args: argparse.Namespace) -> int:
    from .repository import validate_repository

    errors = validate_repository(args.path)
    if errors:
        print(f"{args.path}: {len(errors)} error{'s' if len(errors) != 1 else ''}", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: OK")
    return 0


def _read_token(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SystemExit(f"modelserve serve: {flag} {path}: {e.strerror}") from None
    if not token:
        raise SystemExit(f"modelserve serve: {flag} {path} is empty")
    return token


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value}")
    return value


# --- option values: a bad one is a usage error (exit 2) naming the flag, from argparse itself ---


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535 (0 = any free port), got {text!r}")
    return value


def _seconds(text: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds {'> 0' if positive else '>= 0'}, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, positive=True)


def _message_bytes(text: str) -> int:
    limit = 2**31 - 1  # gRPC's own limit on a message
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"expected a number of bytes from 1 to {limit}, got {text!r}")
    return value


def _bounded(kind: type, low: float, high: float, expected: str) -> Any:
    """An argparse type: ``kind(text)`` within [low, high], else a usage error saying ``expected``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_ratio = _bounded(float, 0.0, 1.0, "a fraction from 0 to 1")
_byte_count = _bounded(int, 0, float("inf"), "a number of bytes >= 0")


def _observer(args: argparse.Namespace) -> Any:
    """Tracing (--trace-sample-rate and the OTEL_* variables) and payload logging (--payload-log,
    --payload-sink) as the flags ask; raises InvalidArgumentError naming the flag or variable."""
    import os

    from .errors import InvalidArgumentError
    from .observe import Observer
    from .observe.payload import FileSink, PayloadLog, load_sink
    from .observe.tracing import Tracing, tracing_configured

    tracing = None
    if tracing_configured(os.environ, args.trace_sample_rate):
        tracing = Tracing(sample_rate=args.trace_sample_rate)
    payload = None
    if args.payload_log and args.payload_sink:
        raise InvalidArgumentError("give --payload-log FILE or --payload-sink module:Class, not both")
    if args.payload_log or args.payload_sink:
        sink = (FileSink(args.payload_log, max_bytes=args.payload_log_max_bytes) if args.payload_log
                else load_sink(args.payload_sink))
        payload = PayloadLog(sink, sample=args.payload_log_sample, mode=args.payload_log_mode,
                             queue_bytes=args.payload_log_queue_bytes)
    else:
        given = [flag for flag, default in (("--payload-log-sample", 1.0), ("--payload-log-mode", "full"),
                                            ("--payload-log-max-bytes", 100 * 1024 * 1024),
                                            ("--payload-log-queue-bytes", 64 * 1024 * 1024))
                 if getattr(args, flag[2:].replace("-", "_")) != default]
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} need --payload-log FILE or --payload-sink module:Class")
    return Observer(tracing, payload)


def _memory_budget(text: str) -> dict[str, int]:
    """``cpu=8GiB,cuda:0=20GiB`` checked now: sizes, device names, and devices this machine has."""
    from .errors import InvalidArgumentError
    from .memory_budget import check_devices, parse_budget

    try:
        budget = parse_budget(text)
        check_devices(budget)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return budget


def _serve_failed(message: Any, status: int) -> int:
    print(f"modelserve serve: {'error: ' if status == 2 else ''}{message}", file=sys.stderr)
    return status


def _serve(args: argparse.Namespace) -> int:
    from .errors import ModelserveError
    from .server.app import Server, configure_logging
    from .server.common import ServerOptions

    configure_logging(args.log_format, args.log_level)
    if bool(args.tls_cert) != bool(args.tls_key):
        return _serve_failed("--tls-cert and --tls-key go together (see modelserve serve --help)", 2)
    if args.tls_client_ca and not args.tls_cert:
        return _serve_failed("--tls-client-ca needs --tls-cert and --tls-key (see modelserve serve --help)", 2)
    repository = Path(args.model_repository)
    if not repository.is_dir():
        what = "is not a folder" if repository.exists() else "does not exist"
        return _serve_failed(f"--model-repository {repository} {what}; give the folder that holds "
                             "<model>/config.yaml (modelserve validate PATH checks one)", 1)
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path and not Path(path).is_file():
            return _serve_failed(f"{flag} {path}: no such file", 1)
    options = ServerOptions(
        freeze_start_up_heap=True,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        max_message_bytes=args.max_message_bytes,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
        admin_token=_read_token(args.admin_token_file, "--admin-token-file"),
        inference_token=_read_token(args.inference_token_file, "--inference-token-file"),
        required_models=args.require_model,
        shutdown_grace_s=args.shutdown_grace,
        drain_timeout_s=args.drain_timeout,
        max_stream_requests=args.max_stream_requests,
    )
    try:
        observer = _observer(args)
    except ModelserveError as e:
        return _serve_failed(e, 2)
    try:
        server = Server(
            args.model_repository,
            options,
            model_control_mode=args.model_control_mode,
            poll_interval=args.poll_interval,
            load_models=args.load_model,
            memory_budget=args.memory_budget,
            memory_evict=args.memory_evict,
            state_dir=args.state_dir,
            observer=observer,
        )
        return server.run()
    except (OSError, ModelserveError) as e:  # a port in use: the message names the address and the flag
        return _serve_failed(e, 1)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = ArgumentParser(prog="modelserve", description="modelserve: model serving runtime")
    parser.add_argument("--version", action="version", version=f"modelserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="check every config of a model repository offline; exit 1 listing the errors")
    v.add_argument("path", help="the model repository folder")
    v.set_defaults(run=_validate)

    s = sub.add_parser("serve", help="serve a model repository over gRPC and HTTP (Open Inference Protocol)")
    s.add_argument("--model-repository", required=True, metavar="PATH", help="the model repository folder")
    s.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port (default 8001; 0 = any free port)")
    s.add_argument("--http-port", type=_port, default=8000, help="HTTP port, also serving /metrics (default 8000; 0 = any)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    s.add_argument("--poll-interval", type=_positive_seconds, default=5.0, metavar="SECONDS", help="rescan period in poll mode")
    s.add_argument("--load-model", action="append", default=[], metavar="NAME", help="in explicit mode, load at start")
    s.add_argument("--require-model", action="append", default=[], metavar="NAME",
                   help="ready only when these models are READY (default: every loaded model)")
    s.add_argument("--log-format", choices=["text", "json"], default="text")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.add_argument("--max-message-bytes", type=_message_bytes, default=64 * 1024 * 1024,
                   help="largest gRPC message / HTTP body, both directions (default 64 MiB)")
    s.add_argument("--max-stream-requests", type=_at_least_one, default=64, metavar="N",
                   help="gRPC ModelStreamInfer: requests in flight per stream; at N the server stops "
                        "reading the stream, so flow control holds the client back (default 64)")
    s.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve gRPC and HTTP over TLS")
    s.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", metavar="FILE", help="PEM CA bundle: require client certificates (mutual TLS)")
    s.add_argument("--admin-token-file", metavar="FILE",
                   help="bearer token required by management calls (repository load/unload)")
    s.add_argument("--inference-token-file", metavar="FILE", help="bearer token required by inference and metadata")
    s.add_argument("--shutdown-grace", type=_seconds, default=5.0, metavar="SECONDS",
                   help="after SIGTERM: not ready at once; new requests refused after this long")
    s.add_argument("--drain-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="then in-flight requests get this long to finish")
    s.add_argument("--memory-budget", type=_memory_budget, metavar="DEVICE=SIZE,...",
                   help="cap on what model instances hold per device, e.g. cpu=8GiB,cuda:0=20GiB")
    s.add_argument("--memory-evict", action="store_true",
                   help="past the budget, release idle models' instances (least recently used first)")
    s.add_argument("--state-dir", metavar="PATH",
                   help="traffic policies, rollouts and their audit log (default: <repository>/.modelserve)")
    s.add_argument("--trace-sample-rate", type=_ratio, metavar="RATE",
                   help="trace this fraction of new traces with OpenTelemetry (pip install 'modelserve[otel]'); "
                        "wins over OTEL_TRACES_SAMPLER; the OTEL_* variables configure the rest")
    s.add_argument("--payload-log", metavar="FILE", help="write a JSON line per sampled request to FILE")
    s.add_argument("--payload-sink", metavar="MODULE:CLASS", help="send payload records to this class instead")
    s.add_argument("--payload-log-sample", type=_ratio, default=1.0, metavar="RATE",
                   help="fraction of requests recorded (default 1; a model's payload_log.sample wins)")
    s.add_argument("--payload-log-mode", choices=["full", "summary", "none"], default="full",
                   help="tensors as values, as shape/datatype/min/max/mean, or not at all (default full)")
    s.add_argument("--payload-log-max-bytes", type=_byte_count, default=100 * 1024 * 1024, metavar="B",
                   help="rotate FILE past this size, keeping 5 (default 100 MiB; 0 = never)")
    s.add_argument("--payload-log-queue-bytes", type=_byte_count, default=64 * 1024 * 1024, metavar="B",
                   help="records waiting for the writer may hold this much; past it they are dropped and "
                        "counted (default 64 MiB)")
    s.set_defaults(run=_serve)

    from .batch import add_parser as add_batch_parser
    from .perf import add_parser as add_perf_parser
    from .ray.cli import add_parser as add_ray_parser
    from .settings_cli import add_parser as add_settings_parser
    from .traffic._cli import add_parsers as add_traffic_parsers
    from ._model_cli import add_parser as add_model_parser

    add_perf_parser(sub)
    add_batch_parser(sub)
    add_settings_parser(sub)
    add_ray_parser(sub)
    add_traffic_parsers(sub)
    add_model_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
