"""The ``modelserve`` command line (DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

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
        raise SystemExit(f"modelserve: {flag} {path}: {e.strerror}") from None
    if not token:
        raise SystemExit(f"modelserve: {flag} {path} is empty")
    return token


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value}")
    return value


def _serve(args: argparse.Namespace) -> int:
    from .server.app import Server, configure_logging
    from .server.common import ServerOptions

    configure_logging(args.log_format, args.log_level)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("modelserve: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("modelserve: --tls-client-ca needs --tls-cert and --tls-key")
    options = ServerOptions(
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
    server = Server(
        args.model_repository,
        options,
        model_control_mode=args.model_control_mode,
        poll_interval=args.poll_interval,
        load_models=args.load_model,
        memory_budget=args.memory_budget,
        memory_evict=args.memory_evict,
        state_dir=args.state_dir,
    )
    try:
        return server.run()
    except OSError as e:  # a port that cannot be bound: the message names the address and the flag
        print(f"modelserve serve: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="modelserve", description="modelserve: model serving runtime")
    parser.add_argument("--version", action="version", version=f"modelserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="check every config of a model repository offline; exit 1 listing the errors")
    v.add_argument("path", help="the model repository folder")
    v.set_defaults(run=_validate)

    s = sub.add_parser("serve", help="serve a model repository over gRPC and HTTP (Open Inference Protocol)")
    s.add_argument("--model-repository", required=True, metavar="PATH", help="the model repository folder")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = any free port)")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port, also serving /metrics (default 8000; 0 = any)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    s.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS", help="rescan period in poll mode")
    s.add_argument("--load-model", action="append", default=[], metavar="NAME", help="in explicit mode, load at start")
    s.add_argument("--require-model", action="append", default=[], metavar="NAME",
                   help="ready only when these models are READY (default: every loaded model)")
    s.add_argument("--log-format", choices=["text", "json"], default="text")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024,
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
    s.add_argument("--shutdown-grace", type=float, default=5.0, metavar="SECONDS",
                   help="after SIGTERM: not ready at once; new requests refused after this long")
    s.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="then in-flight requests get this long to finish")
    s.add_argument("--memory-budget", metavar="DEVICE=SIZE,...",
                   help="cap on what model instances hold per device, e.g. cpu=8GiB,cuda:0=20GiB")
    s.add_argument("--memory-evict", action="store_true",
                   help="past the budget, release idle models' instances (least recently used first)")
    s.add_argument("--state-dir", metavar="PATH",
                   help="traffic policies, rollouts and their audit log (default: <repository>/.modelserve)")
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
