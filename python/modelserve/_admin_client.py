"""The HTTP client behind the commands that manage a running server (``modelserve traffic``,
``rollout`` and ``settings``): standard library only, one request per command.

Every such command takes ``--url`` (default ``$MODELSERVE_URL`` or http://127.0.0.1:8000),
``--token-file`` (a bearer token, for servers started with --admin-token-file) and ``--timeout``;
those that change traffic also take ``--actor``, recorded in the audit log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Refused", "add_connection_options", "call"]

DEFAULT_URL = "http://127.0.0.1:8000"


class Refused(Exception):
    """The server refused the call (its message and HTTP status), or could not be reached."""


def add_connection_options(p: argparse.ArgumentParser, *, actor: bool = False) -> None:
    p.add_argument("--url", default=os.environ.get("MODELSERVE_URL", DEFAULT_URL),
                   help=f"the server's HTTP address (default $MODELSERVE_URL or {DEFAULT_URL})")
    if actor:
        p.add_argument("--actor", default=_user(),
                       help="who makes the change, for the audit log (default: your user name)")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for servers started with --admin-token-file")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """Sends ``body`` as JSON to ``path`` on ``args.url``; returns the decoded JSON answer (None
    for an empty one). Raises :class:`Refused` with the server's own error message."""
    url = args.url.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if getattr(args, "actor", None):
        request.add_header("X-Modelserve-Actor", args.actor)
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise Refused(f"--token-file {args.token_file}: {e.strerror or e}") from None
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace") or e.reason
        raise Refused(f"{message} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Refused(f"cannot reach {args.url}: {reason}") from None
    return json.loads(text) if text else None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "cli"
