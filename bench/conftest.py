"""Shared options and helpers for the micro-benchmarks in ``bench/micro``.

Run from the repository root with ``pytest bench/micro -s``. Options:

- ``--bench-seed`` (default 0): seeds the input data and, where a module shuffles them,
  the order of its candidate and baseline runs.
- ``--bench-duration`` (seconds, default 1.0): the time each measured case runs for.

Each module prints its figures as an aligned table when its last test is done.
"""

from __future__ import annotations

import time

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("bench", "modelserve micro-benchmarks")
    group.addoption("--bench-seed", type=int, default=0,
                    help="seed for benchmark data and run order (default 0)")
    group.addoption("--bench-duration", type=float, default=1.0,
                    help="seconds each measured case runs for (default 1.0)")


def pytest_configure(config):
    if config.getoption("--bench-duration") <= 0:
        raise pytest.UsageError("--bench-duration must be positive")


@pytest.fixture(scope="session")
def bench_seed(request) -> int:
    return request.config.getoption("--bench-seed")


@pytest.fixture(scope="session")
def bench_duration(request) -> float:
    return request.config.getoption("--bench-duration")


class Table:
    """Rows of cells keyed by their first column, printed right-aligned.

    Cells may be set in any order; floats are formatted with ``formats[column]`` (default
    ``.1f``) and missing cells print as ``-``.
    """

    def __init__(self, title: str, columns: list[str], notes: list[str] | None = None,
                 formats: dict[str, str] | None = None):
        self.title = title
        self.columns = columns
        self.notes = list(notes or [])
        self.formats = formats or {}
        self.rows: dict[object, dict[str, object]] = {}

    def row(self, key) -> dict[str, object]:
        """The cells of row ``key`` (created with ``key`` as its first cell)."""
        return self.rows.setdefault(key, {self.columns[0]: str(key)})

    def _cell(self, row: dict[str, object], column: str) -> str:
        value = row.get(column, "-")
        if isinstance(value, float):
            return format(value, self.formats.get(column, ".1f"))
        return str(value)

    def __str__(self) -> str:
        cells = [self.columns] + [[self._cell(r, c) for c in self.columns]
                                  for r in self.rows.values()]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(["", f"== {self.title}", *lines, *self.notes])


@pytest.fixture(scope="module")
def tables():
    """Make tables with ``tables(title, columns, ...)`` (see ``Table``); they print at
    module teardown."""
    made: list[Table] = []

    def make(*args, **kwargs) -> Table:
        made.append(Table(*args, **kwargs))
        return made[-1]

    yield make
    for table in made:
        print(table)


@pytest.fixture
def measure(benchmark, bench_duration):
    """``measure(fn)`` runs ``fn`` under pytest-benchmark for about ``--bench-duration``
    seconds and returns the median seconds per call."""

    def run(fn) -> float:
        if benchmark.disabled:
            pytest.skip("benchmarks are disabled")
        fn()  # warm up (first-touch page faults, pool misses) before calibrating
        # Calibrate: enough calls per round for a round to last about 1 ms.
        iterations = 1
        while True:
            start = time.perf_counter()
            for _ in range(iterations):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= 1e-3:
                break
            iterations *= 2
        rounds = max(5, int(bench_duration / elapsed))
        benchmark.pedantic(fn, iterations=iterations, rounds=rounds, warmup_rounds=1)
        return benchmark.stats.stats.median

    return run
