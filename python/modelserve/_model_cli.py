"""``modelserve model ...``: labels and rollback of a running server's model, over its HTTP routes
(server/traffic_http.py), with nothing but the standard library.

::

    modelserve model label recommender stable 1           # point the label 'stable' at version 1
    modelserve model rollback recommender --label stable  # back to the newest READY older version
    modelserve model rollback recommender --version 2     # the default version back to 2

Each command prints the server's answer (``{"model", "label", "before", "after"}``) as JSON and
takes ``--url``, ``--actor``, ``--token-file`` and ``--timeout`` (modelserve/_admin_client.py).
Exit status 0 on success, 1 when the server refused (its error is printed) or could not be
reached, 2 for a bad flag or value.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from ._admin_client import Refused, add_connection_options, call

__all__ = ["add_parser"]


def _path(model: str, *rest: str) -> str:
    return "/v2/models/" + "/".join(urllib.parse.quote(p, safe="") for p in (model, *rest))


def _label(args: argparse.Namespace) -> Any:
    return call(args, "POST", _path(args.model, "labels", args.label), {"version": args.version})


def _rollback(args: argparse.Namespace) -> Any:
    body = {k: v for k, v in (("version", args.version), ("label", args.label)) if v is not None}
    return call(args, "POST", _path(args.model, "rollback"), body)


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result = handler(args)
        except (Refused, OSError) as e:  # OSError: --token-file
            print(f"modelserve model {args.action}: {e}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0

    return run


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number (a positive integer), got {text!r}")
    return int(text)


def add_parser(sub: Any) -> None:
    """Registers ``model`` under the ``modelserve`` command."""
    m = sub.add_parser("model", help="labels and rollback of a running server's model")
    ms = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ms.add_parser("label", help="point LABEL at VERSION (a READY version) now; creates the label if new")
    p.add_argument("model", metavar="NAME")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("version", metavar="VERSION", type=_version)
    add_connection_options(p, actor=True)
    p.set_defaults(run=_run(_label))
    p = ms.add_parser("rollback", help="point the default version (or --label) back at an older READY version")
    p.add_argument("model", metavar="NAME")
    p.add_argument("--version", type=_version, metavar="V",
                   help="the version to go back to (default: the newest READY one older than the current)")
    p.add_argument("--label", metavar="L", help="roll back this label instead of the default version")
    add_connection_options(p, actor=True)
    p.set_defaults(run=_run(_rollback))
