"""What the command line and its subcommand packages (perf, batch) share, the latter to run
standalone as well as under ``modelserve``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["ArgumentParser", "standalone_main"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``PROG: error: MESSAGE (see PROG --help)``,
    and exit status 2 (DESIGN.md, "Exit status"); its subcommand parsers are the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    parser = ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or an option argparse rejected
        return e.code if isinstance(e.code, int) else 2
    return run(args)
