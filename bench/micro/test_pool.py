"""Pool allocate + free: how much does a pool hit cost, against the bare upstream resource?

- Native loop (``core._bench.allocate_free``, median ns per allocate + free over 11 rounds):
  ``PoolResource(HostResource())`` after warm-up (a pool hit) against ``HostResource()``
  (aligned_alloc/free) for 256 B, 64 KiB and 4 MiB. Target: a pool hit under 100 ns median.
- Python level (pytest-benchmark): ``Tensor.empty("FP32", [64, 256], pool)`` then dropped
  (the buffer returns to the pool) against ``numpy.empty((64, 256), numpy.float32)``.

Ratios are candidate time / baseline time, both measured in the same run.
"""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from modelserve import Tensor
from modelserve._native import core

SIZES = {"256 B": 256, "64 KiB": 64 << 10, "4 MiB": 4 << 20}
ROUNDS = 11
TARGET_NS = 100.0
SHAPE = (64, 256)


def ns_per_pair(resource, size: int, iterations: int, rounds: int = ROUNDS) -> float:
    """Median ns per allocate + free of ``size`` bytes from ``resource``."""
    return statistics.median(core._bench.allocate_free(resource, size, iterations, rounds))


def test_native_allocate_free(tables, bench_seed, bench_duration):
    resources = {"pool": core.PoolResource(core.HostResource()), "host": core.HostResource()}
    cases = [(label, name) for label in SIZES for name in resources]
    random.Random(bench_seed).shuffle(cases)  # interleave pool and host runs
    budget_ns = bench_duration * 1e9 / len(cases)
    ns = {}
    for label, name in cases:
        size, resource = SIZES[label], resources[name]
        probe = ns_per_pair(resource, size, 1000, rounds=3)  # also warms the pool up
        iterations = max(1000, int(budget_ns / ROUNDS / probe))
        ns[label, name] = ns_per_pair(resource, size, iterations)

    stats = resources["pool"].stats()
    assert stats["bytes_in_use"] == 0 and stats["hits"] > 0
    worst = max(ns[label, "pool"] for label in SIZES)
    table = tables(
        "allocate + free, native loop: pool hit vs HostResource (ns, median of 11 rounds)",
        ["size", "pool ns", "host ns", "pool/host"], formats={"pool/host": ".2f"},
        notes=[f"pool hit rate {stats['hit_rate']:.4f}; target pool < {TARGET_NS:.0f} ns: "
               + ("met" if worst < TARGET_NS else f"NOT met (worst {worst:.1f} ns)")])
    for label in SIZES:
        pool_ns, host_ns = ns[label, "pool"], ns[label, "host"]
        table.row(label).update({"pool ns": pool_ns, "host ns": host_ns,
                                 "pool/host": pool_ns / host_ns})


@pytest.fixture(scope="module")
def pool():
    return core.PoolResource(core.HostResource())


@pytest.fixture(scope="module")
def empty_table(tables):
    return tables("FP32 [64, 256] allocate + drop from Python (ns, pytest-benchmark median)",
                  ["shape", "numpy.empty", "Tensor.empty", "ratio"], formats={"ratio": ".2f"},
                  notes=["ratio = Tensor.empty / numpy.empty"])


def numpy_empty(pool):
    return np.empty(SHAPE, np.float32)


def tensor_empty(pool):
    return Tensor.empty("FP32", list(SHAPE), pool)


@pytest.mark.parametrize("make", [numpy_empty, tensor_empty], ids=["numpy", "tensor"])
def test_python_empty(make, pool, measure, empty_table):
    assert make(pool).shape == SHAPE
    median_ns = measure(lambda: make(pool)) * 1e9
    row = empty_table.row("[64, 256]")
    row["numpy.empty" if make is numpy_empty else "Tensor.empty"] = median_ns
    if make is tensor_empty:
        stats = pool.stats()
        assert stats["bytes_in_use"] == 0, "dropped tensors must return their buffer"
        empty_table.notes.append(f"Tensor.empty pool hit rate {stats['hit_rate']:.4f}")
    if "numpy.empty" in row and "Tensor.empty" in row:
        row["ratio"] = row["Tensor.empty"] / row["numpy.empty"]
