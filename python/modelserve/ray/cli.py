"""``modelserve ray deploy``: the command line of :mod:`modelserve.ray` (registered by
``modelserve.cli``; Ray is imported only when the command runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_parser"]


def _deploy(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.model_repository):  # before Ray starts or is reached
        print(f"modelserve ray deploy: --model-repository {args.model_repository}: no such folder", file=sys.stderr)
        return 1
    from . import deploy  # imports Ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address is None and not args.blocking:
        # A Ray instance this command started would end with it, taking the application along:
        # without --blocking, deploy to a running cluster (ray start --head starts one here).
        address = "auto"
    try:
        where = deploy(
            args.model_repository,
            address=address,
            name=args.name,
            models=args.model or None,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            proxy_location=args.proxy_location,
            ingress_replicas=args.ingress_replicas,
            max_message_bytes=args.max_message_bytes,
            traffic_state_dir=args.state_dir,
            blocking=args.blocking,
        )
    except ConnectionError as e:
        raise SystemExit(
            f"modelserve ray deploy: no Ray cluster at {address}: {e}; start one (ray start --head) or pass "
            "--address, or run a local one in the foreground with --blocking"
        ) from None
    print(json.dumps(where), file=sys.stdout)
    return 0


def add_parser(sub: Any) -> None:
    """Adds ``ray`` (with its ``deploy`` subcommand) to the ``modelserve`` command's subparsers."""
    r = sub.add_parser("ray", help="scale out on a Ray cluster with Ray Serve (pip install 'modelserve[ray]')")
    rsub = r.add_subparsers(dest="ray_command", required=True, metavar="COMMAND")
    d = rsub.add_parser("deploy", help="deploy a model repository as a Ray Serve application, then return")
    d.add_argument("--model-repository", required=True, metavar="PATH",
                   help="the model repository folder (at this same path on every node)")
    d.add_argument("--address", default=None, metavar="ADDR",
                   help="the Ray cluster: auto, ray://HOST:10001, HOST:6379 (default: RAY_ADDRESS, else a local one)")
    d.add_argument("--name", default="modelserve", help="the Ray Serve application name (default modelserve)")
    d.add_argument("--model", action="append", default=[], metavar="NAME", help="deploy only these models")
    d.add_argument("--host", default="127.0.0.1", help="address Ray Serve's proxies bind (0.0.0.0 for all)")
    d.add_argument("--http-port", type=int, default=8000, help="HTTP port of Ray Serve's proxies (default 8000)")
    d.add_argument("--grpc-port", type=int, default=8001, help="gRPC port of Ray Serve's proxies (default 8001)")
    d.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], default="EveryNode")
    d.add_argument("--ingress-replicas", type=int, default=1, help="replicas of the routing ingress (default 1)")
    d.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest gRPC message / HTTP body the ingress accepts (default 64 MiB)")
    d.add_argument("--state-dir", metavar="PATH",
                   help="traffic policies, rollouts and their audit log, on storage every node sees (default: in memory)")
    d.add_argument("--blocking", action="store_true", help="stay in the foreground, logging status, until Ctrl-C")
    d.set_defaults(run=_deploy)
