"""The ``modelserve`` command line (DESIGN.md, "Command line")."""

from __future__ import annotations

import argparse
import sys
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


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="modelserve", description="modelserve: model serving runtime")
    parser.add_argument("--version", action="version", version=f"modelserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="check every config of a model repository offline; exit 1 listing the errors")
    v.add_argument("path", help="the model repository folder")
    v.set_defaults(run=_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
