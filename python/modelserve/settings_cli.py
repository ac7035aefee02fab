"""``modelserve settings``: read and change a running server's settings over HTTP, no reload.

::

    modelserve settings get MODEL [--version V] [--url http://127.0.0.1:8000]
    modelserve settings set MODEL [--version V] [--instances N] [--min N] [--max N]
                                  [--batching KEY=VALUE ...] [--token-file FILE]

``--batching`` takes the ``dynamic_batching`` keys (``max_queue_size=64``,
``preferred_batch_sizes=4,8``). Talks to ``/modelserve/v1/models/{model}/settings``
(modelserve/server/settings_routes.py) through modelserve/_admin_client.py; prints the settings after
the call as JSON. Exit status 1 with the server's message when the server refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from ._admin_client import Refused, add_connection_options, call

__all__ = ["add_parser", "main"]


def _value(key: str, text: str) -> Any:
    if key == "preferred_batch_sizes":
        return [int(v) for v in text.split(",") if v.strip()]
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"modelserve settings: --batching {key}={text}: expected an integer") from None


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    instances = {k: getattr(args, a) for k, a in (("count", "instances"), ("min", "min"), ("max", "max"))
                 if getattr(args, a) is not None}
    if instances:
        body["instances"] = instances
    batching = {}
    for item in args.batching:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"modelserve settings: --batching {item!r}: expected KEY=VALUE")
        batching[key.strip()] = _value(key.strip(), text.strip())
    if batching:
        body["dynamic_batching"] = batching
    if not body:
        raise SystemExit("modelserve settings set: nothing to change; give --instances, --min, --max or --batching")
    return body


def _run(args: argparse.Namespace) -> int:
    path = f"/modelserve/v1/models/{urllib.parse.quote(args.model, safe='')}"
    if args.version:
        path += f"/versions/{urllib.parse.quote(args.version, safe='')}"
    try:
        if args.action == "set":
            settings = call(args, "PATCH", path + "/settings", _body(args))
        else:
            settings = call(args, "GET", path + "/settings")
    except (Refused, OSError) as e:  # OSError: --token-file
        print(f"modelserve settings {args.action}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(settings, indent=2))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("settings", help="read or change a running server's model settings (instances, batching)")
    p.add_argument("action", choices=["get", "set"])
    p.add_argument("model")
    p.add_argument("--version", help="a version number or label (default: the default version)")
    p.add_argument("--instances", type=int, metavar="N", help="set: the instance count now")
    p.add_argument("--min", type=int, metavar="N", help="set: the autoscaler's lower bound")
    p.add_argument("--max", type=int, metavar="N", help="set: the autoscaler's upper bound")
    p.add_argument("--batching", action="append", default=[], metavar="KEY=VALUE",
                   help="set: a dynamic_batching setting (repeatable)")
    add_connection_options(p)
    p.set_defaults(run=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
