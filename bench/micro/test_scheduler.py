"""Scheduler overhead per request, with a no-op native backend: what does the core cost?

``core._bench.scheduler_overhead`` submits from 1, 8 and 64 threads into one instance at
max_batch_size=64, max_queue_delay_us=0, sized to run about ``--bench-duration`` seconds
each. Reported: requests/s, mean batch size, p50/p99 latency and the per-request core cost
1e6 / (requests/s) µs. Baseline in the same run: one submitter at max_batch_size=1 (no
batching); ratios are run / baseline. Target: under 20 µs per request with 64 submitters.
"""

from __future__ import annotations

import random

import numpy as np

from modelserve._native import core

SUBMITTERS = (1, 8, 64)
BATCH = 64
TARGET_US = 20.0
CALIBRATION_REQUESTS = 1024


def run(submitters: int, total: int, max_batch_size: int) -> dict:
    """One harness run of about ``total`` requests, with its figures."""
    per_submitter = max(1, total // submitters)
    result = core._bench.scheduler_overhead(submitters, per_submitter,
                                            max_batch_size=max_batch_size)
    requests = submitters * per_submitter
    latencies_us = np.asarray(result["latencies_ns"]) / 1e3
    assert len(latencies_us) == requests and latencies_us.min() > 0
    assert 0 < result["batches"] <= requests
    mean_batch = requests / result["batches"]
    assert mean_batch <= max_batch_size
    rate = requests / result["elapsed_s"]
    return {"requests": requests, "req/s": rate, "mean batch": mean_batch,
            "p50 µs": float(np.percentile(latencies_us, 50)),
            "p99 µs": float(np.percentile(latencies_us, 99)), "µs/req": 1e6 / rate}


def test_scheduler_overhead(tables, bench_seed, bench_duration):
    configs = [("1, no batching", 1, 1)] + [(f"{s}, batch {BATCH}", s, BATCH)
                                           for s in SUBMITTERS]
    order = configs[:]
    random.Random(bench_seed).shuffle(order)  # the order of the runs, not of the rows
    results = {}
    for name, submitters, max_batch_size in order:
        probe = run(submitters, CALIBRATION_REQUESTS, max_batch_size)
        results[name] = run(submitters, int(probe["req/s"] * bench_duration), max_batch_size)

    table = tables(
        "scheduler overhead, no-op native backend, 1 instance, queue delay 0",
        ["submitters", "requests", "req/s", "mean batch", "p50 µs", "p99 µs", "µs/req",
         "p50/base", "µs/req/base"],
        formats={"req/s": ".0f", "mean batch": ".2f", "p50/base": ".2f",
                 "µs/req/base": ".2f"})
    base = results["1, no batching"]
    for name, _, _ in configs:
        figures = results[name]
        table.row(name).update(figures, **{
            "p50/base": figures["p50 µs"] / base["p50 µs"],
            "µs/req/base": figures["µs/req"] / base["µs/req"]})
    cost = results[f"{SUBMITTERS[-1]}, batch {BATCH}"]["µs/req"]
    table.notes.append(f"baseline = 1 submitter at max_batch_size=1; target µs/req at "
                       f"{SUBMITTERS[-1]} submitters < {TARGET_US:.0f}: "
                       + ("met" if cost < TARGET_US else f"NOT met ({cost:.1f})"))
