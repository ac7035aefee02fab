"""What input drift adds to a request: the core's DriftMonitor (Note [Input drift]) counting the
inputs of every batch on the instance thread.

``ModelEngine.run`` of the core's identity backend (no Python model, so the figure is the core's
own) on FP32 [rows, 16] requests, with the version's monitor attached (its reference complete)
and without, alternated ``ROUNDS`` times; the figure is the difference of the medians, per request.
Baseline in the same run: the request without a monitor. Cases: 1-row requests (16 features
counted) and 64-row requests (8 rows counted, evenly strided).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from modelserve.config import DriftConfig
from modelserve.engine import ModelEngine, NativeBackend
from modelserve.observe.drift import InputDrift

ROUNDS = 20


def test_drift_cost_per_request(tables, bench_seed, bench_duration):
    columns = ["rows", "without us", "with us", "drift us"]
    table = tables("input drift per request (ModelEngine.run, native identity backend, FP32 [rows, 16])", columns,
                   formats={c: ".2f" for c in columns[1:]},
                   notes=[f"median of {ROUNDS} alternated rounds of ~{bench_duration / ROUNDS:.2f} s each"])
    engine = ModelEngine("m", NativeBackend("identity"), max_batch_size=64, inputs=[("X", "FP32", [16])])
    drift = InputDrift("model 'm' version 1", [("X", "FP32", [16])], batched=True, config=DriftConfig())
    rng = np.random.default_rng(bench_seed)
    try:
        engine.set_drift_monitor(drift.monitor)
        for _ in range(1000):  # the reference, then a warm window
            engine.run({"X": rng.standard_normal((1, 16), dtype=np.float32)})
        assert drift.snapshot()["reference_complete"]
        for rows in (1, 64):
            x = {"X": rng.standard_normal((rows, 16), dtype=np.float32)}
            calls = max(200, int(bench_duration / ROUNDS / 20e-6))
            per_call: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(ROUNDS):
                for on in (True, False):
                    engine.set_drift_monitor(drift.monitor if on else None)
                    start = time.perf_counter()
                    for _ in range(calls):
                        engine.run(x)
                    per_call[on].append((time.perf_counter() - start) / calls * 1e6)
            with_, without = statistics.median(per_call[True]), statistics.median(per_call[False])
            table.row(rows).update({"without us": without, "with us": with_, "drift us": with_ - without})
    finally:
        engine.close()
