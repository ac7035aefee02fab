"""What the subcommand packages (perf, batch) share to run standalone as well as under
``modelserve``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def standalone_main(
    prog: str,
    description: str,
    epilog: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``) and runs the command; returns the exit status
    (2 for options argparse rejected, which it has already explained)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or an option argparse rejected
        return e.code if isinstance(e.code, int) else 2
    return run(args)
