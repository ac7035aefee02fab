"""Latency-aware batching (Note [Latency target] in csrc/sched/latency_target.h): the planner on
its own with synthetic times (deterministic), then the batcher serving a real Python model."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelserve
from modelserve import ModelEngine, errors
from modelserve._native import core
from modelserve.config import ConfigError

Planner = core._bench.LatencyTarget


def trained(alpha_us, beta_us, sizes=(1, 2, 4, 8, 16, 32, 64), rounds=5):
    """A planner that has seen noiseless batches of c(b) = alpha + beta * b microseconds."""
    p = Planner()
    for _ in range(rounds):
        for b in sizes:
            p.on_batch(b, int((alpha_us + beta_us * b) * 1000))
    return p


def arrivals(p, rate_per_ms, count=200, start_us=0.0):
    """`count` one-row arrivals at a steady `rate_per_ms`; returns the time of the last."""
    gap = 1000.0 / rate_per_ms
    t = start_us
    for _ in range(count):
        p.on_arrival(1, t)
        t += gap
    return t - gap


def test_the_fit_recovers_the_batch_time_model():
    p = trained(2000, 50)
    for b in (1, 10, 64):
        assert p.compute_us(b) == pytest.approx(2000 + 50 * b, rel=1e-6)
    assert p.compute_p99_us(10) == pytest.approx(p.compute_us(10), rel=1e-3)  # no noise, no margin


def test_nothing_measured_or_one_batch_size_seen_waits_for_nothing():
    fresh = Planner()
    assert fresh.plan(10_000, 64, 1, 0.0) == {"rows": 1, "cap": 64, "delay_us": 0}
    one_size = trained(2000, 50, sizes=(1,))
    now = arrivals(one_size, rate_per_ms=5)
    assert one_size.plan(10_000, 64, 1, now)["rows"] == 1  # batching's worth is unknown yet
    assert one_size.plan(10_000, 64, 1, now)["delay_us"] == 0


def test_a_lone_request_at_low_load_is_dispatched_at_once():
    p = trained(2000, 50)
    now = arrivals(p, rate_per_ms=0.01)  # one request every 100 ms
    assert p.plan(20_000, 64, 1, now) == {"rows": 1, "cap": 64, "delay_us": 0}


def test_under_load_it_waits_for_the_batch_that_keeps_up_within_the_target():
    p = trained(2000, 50)
    now = arrivals(p, rate_per_ms=5)
    plan = p.plan(20_000, 64, 1, now)
    rows = plan["rows"]
    assert 1 < rows <= plan["cap"] <= 64
    lam = 5 / 1000  # rows per microsecond
    assert lam * (2000 + 50 * rows) / rows <= 0.8 + 1e-9  # the instance keeps up ...
    assert lam * (2000 + 50 * (rows - 1)) / (rows - 1) > 0.8  # ... and no smaller batch would
    assert plan["delay_us"] == pytest.approx(20_000 - 2 * (2000 + 50 * rows), abs=2)
    # A second instance halves the load: smaller batches are enough.
    assert p.plan(20_000, 64, 2, now)["rows"] < rows


def test_the_cap_keeps_batches_within_the_target():
    p = trained(1000, 400)  # c(64) = 26.6 ms
    now = arrivals(p, rate_per_ms=0.5)
    plan = p.plan(12_000, 64, 1, now)
    assert plan["cap"] == 12  # 2 * c(12) = 11.6 ms <= 12 ms < 2 * c(13)
    overloaded = trained(1000, 400)
    now = arrivals(overloaded, rate_per_ms=2.4)  # needs batches past the cap to keep up at all
    assert overloaded.plan(12_000, 64, 1, now)["cap"] == 64


def test_the_rate_decays_once_traffic_stops():
    p = trained(2000, 50)
    now = arrivals(p, rate_per_ms=5)
    assert p.plan(20_000, 64, 1, now)["rows"] > 1
    assert p.plan(20_000, 64, 1, now + 2_000_000)["rows"] == 1  # two silent seconds later


def test_noisy_batch_times_widen_the_margin():
    p = Planner()
    for i in range(400):
        b = (1, 8, 32, 64)[i % 4]
        jitter = 1.3 if i % 3 == 0 else 0.85
        p.on_batch(b, int((2000 + 50 * b) * jitter * 1000))
    assert p.compute_p99_us(32) > 1.2 * p.compute_us(32)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(alpha=st.floats(0, 20_000), beta=st.floats(0, 2_000), rate=st.floats(0.001, 50),
       target=st.integers(100, 200_000), max_batch=st.integers(1, 128), instances=st.integers(1, 4))
def test_every_plan_keeps_its_invariants(alpha, beta, rate, target, max_batch, instances):
    p = trained(alpha, beta, sizes=(1, 3, 9, 27))
    now = arrivals(p, rate, count=50)
    plan = p.plan(target, max_batch, instances, now)
    assert 1 <= plan["rows"] <= max(plan["cap"], 1) <= max(max_batch, 1)
    assert plan["delay_us"] >= 0
    if plan["rows"] == 1:
        assert plan["delay_us"] == 0  # nothing to wait for
    else:  # gathering the rows and running them (after one batch ahead) fits the target
        gather_us = (plan["rows"] - 1) / (rate / 1000)
        assert gather_us + 2 * p.compute_p99_us(plan["rows"]) <= target * (1 + 1e-6) + 1


# --- the batcher with a target, on a real model ---------------------------------------------------


class Timed:
    """c(b) = 2 ms + 0.1 ms per row, sleeping (the GIL is free meanwhile)."""

    def execute(self, inputs):
        x = inputs["INPUT0"]
        time.sleep(0.002 + 0.0001 * len(x))
        return {"OUTPUT0": x + 1}


def one():
    return {"INPUT0": np.zeros((1, 4), np.float32)}


def closed_loop(engine, threads, seconds):
    latencies, stop = [], time.monotonic() + seconds
    lock = threading.Lock()

    def caller():
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            engine.infer(one())
            with lock:
                latencies.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return sorted(latencies)


def test_under_load_batches_form_and_p99_stays_within_a_generous_target():
    target_s = 0.5  # generous: the machine is shared
    with ModelEngine("m", Timed(), max_batch_size=64, dynamic_batching={"latency_target_us": int(target_s * 1e6)}) as e:
        latencies = closed_loop(e, threads=24, seconds=1.5)
        s = e.stats()
    assert s["inference_count"] / s["execution_count"] > 2  # batches formed
    assert latencies[int(len(latencies) * 0.99)] < target_s
    assert s["batch_cap"] >= 1 and s["batch_rows_planned"] >= 1


def test_a_lone_request_after_a_busy_spell_is_not_held_back():
    target_us = 400_000  # a static delay this long would hold a lone request for 0.4 s
    with ModelEngine("m", Timed(), max_batch_size=64, dynamic_batching={"latency_target_us": target_us}) as e:
        closed_loop(e, threads=16, seconds=0.5)
        time.sleep(0.5)  # traffic stops: the rate decays
        pending = e.submit(one())  # not run by the caller: through the batcher
        assert pending.wait(20)
        queue_us = pending.timings["queue_ns"] / 1000
    assert queue_us < target_us / 10


def test_without_the_key_the_static_delay_holds_exactly_as_before():
    with ModelEngine("m", Timed(), max_batch_size=64, dynamic_batching={"max_queue_delay_us": 30_000}) as e:
        pending = e.submit(one())
        assert pending.wait(20)
        assert pending.timings["queue_ns"] >= 30_000 * 1000  # a lone request waits the whole delay
        s = e.stats()
    assert (s["batch_delay_us"], s["batch_rows_planned"], s["batch_cap"]) == (30_000, 64, 64)
    assert e.batching["latency_target_us"] is None


def test_the_target_must_be_positive_and_the_model_must_batch():
    with pytest.raises(errors.InvalidArgumentError, match="latency_target_us must be > 0"):
        ModelEngine("m", Timed(), max_batch_size=8, dynamic_batching={"latency_target_us": -5})
    with pytest.raises(errors.InvalidArgumentError, match="latency_target_us needs a model that batches"):
        ModelEngine("m", Timed(), max_batch_size=0, dynamic_batching={"latency_target_us": 1000})


CONFIG = """
max_batch_size: 16
inputs: [{name: INPUT0, datatype: FP32, shape: [4]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [4]}]
dynamic_batching: {latency_target_us: 50000}
"""
MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"] + 1}
"""


def test_config_key_settings_api_and_metrics(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text(CONFIG)
    (tmp_path / "m" / "1" / "model.py").write_text(MODEL)
    with modelserve.Runtime(tmp_path) as rt:
        assert rt.settings("m")["dynamic_batching"]["latency_target_us"] == 50_000
        np.testing.assert_array_equal(rt.infer("m", one())["OUTPUT0"], np.ones((1, 4)))
        rt.set_batching("m", latency_target_us=20_000)
        assert rt.settings("m")["dynamic_batching"]["latency_target_us"] == 20_000
        rt.set_batching("m", latency_target_us=None)  # off: the static rules again
        assert rt.settings("m")["dynamic_batching"]["latency_target_us"] is None
        with pytest.raises(ConfigError, match="latency_target_us"):
            rt.set_batching("m", latency_target_us=0)
        from modelserve.server.metrics import Metrics

        text = Metrics(rt).render()[0].decode()
    for name in ("modelserve_batch_delay_seconds", "modelserve_batch_target_size", "modelserve_batch_max_size"):
        assert f'{name}{{model="m",version="1"}}' in text
