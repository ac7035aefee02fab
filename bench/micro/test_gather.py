"""Gather of a 64-request batch: is ``core.gather`` at least as fast as ``numpy.concatenate``?

Each request is a C-contiguous FP32 array of shape [1, N], N in (16, 1024, 65536), viewed
zero-copy by ``Tensor.from_numpy``. Candidate: ``core.gather(tensors)`` into the host pool
(the result is dropped, so its buffer goes back to the pool). Baseline:
``numpy.concatenate(arrays)``. Both are timed with pytest-benchmark in the same run; the
ratio is gather time / concatenate time, target <= 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from modelserve import Tensor
from modelserve._native import core

BATCH = 64
WIDTHS = (16, 1024, 65536)


@pytest.fixture(scope="module")
def table(tables):
    return tables(f"gather {BATCH} x [1, N] FP32 (µs, pytest-benchmark median)",
                  ["N", "concatenate", "gather", "ratio"],
                  formats={"concatenate": ".2f", "gather": ".2f", "ratio": ".2f"},
                  notes=["ratio = gather / numpy.concatenate; target <= 1.00"])


@pytest.fixture(scope="module")
def batches(bench_seed):
    rng = np.random.default_rng(bench_seed)
    return {n: [rng.standard_normal((1, n), dtype=np.float32) for _ in range(BATCH)]
            for n in WIDTHS}


@pytest.mark.parametrize("impl", ["concatenate", "gather"])
@pytest.mark.parametrize("n", WIDTHS)
def test_gather(n, impl, batches, measure, table):
    arrays = batches[n]
    if impl == "gather":
        tensors = [Tensor.from_numpy(a) for a in arrays]
        assert np.array_equal(core.gather(tensors).numpy(), np.concatenate(arrays))
        seconds = measure(lambda: core.gather(tensors))
    else:
        seconds = measure(lambda: np.concatenate(arrays))
    row = table.row(n)
    row[impl] = seconds * 1e6
    if "concatenate" in row and "gather" in row:
        row["ratio"] = row["gather"] / row["concatenate"]
