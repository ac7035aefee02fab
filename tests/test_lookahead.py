"""Look-ahead batches (Note [Look-ahead batches] in csrc/sched/dynamic_batcher.h): gathered while
the instance is busy, used only by the very batch they were gathered for, revocable until then.
They are off unless MODELSERVE_LOOKAHEAD=1 when a version loads; these tests turn them on."""

import threading
import time

import numpy as np
import pytest

from modelserve import ModelEngine, errors

MAX = 8


class Gate:
    """Holds its first batch until released; records every batch's rows."""

    def __init__(self):
        self.open = threading.Event()
        self.started = threading.Event()
        self.batches = []
        self.lock = threading.Lock()

    def execute(self, inputs):
        x = inputs["INPUT0"]
        with self.lock:
            first = not self.batches
            self.batches.append(x[:, 0].tolist())
        self.started.set()
        if first:
            assert self.open.wait(30), "the test never opened the gate"
        return {"OUTPUT0": x * 2}


def row(value):
    return {"INPUT0": np.full((1, 4), value, np.float32)}


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def held(monkeypatch):
    """An engine with look-ahead batches whose one instance is busy with a first batch, until
    `gate.open` is set."""
    monkeypatch.setenv("MODELSERVE_LOOKAHEAD", "1")
    gate = Gate()
    engine = ModelEngine("m", gate, max_batch_size=MAX, dynamic_batching={"priority_levels": 2})
    first = engine.submit(row(-1))
    assert gate.started.wait(20)
    yield engine, gate, first
    gate.open.set()
    engine.close()


def test_a_full_batch_queued_behind_a_busy_instance_is_gathered_ahead_and_used(held):
    engine, gate, first = held
    pending = [engine.submit(row(v)) for v in range(MAX)]
    wait_for(lambda: engine.stats()["lookahead_prepared"] == 1)
    gate.open.set()
    for v, p in enumerate(pending):
        assert p.wait(20)
        np.testing.assert_array_equal(p.outputs()["OUTPUT0"], np.full((1, 4), 2 * v))
    s = engine.stats()
    assert (s["lookahead_used"], s["lookahead_dropped"]) == (1, 0)
    assert gate.batches[1] == list(range(MAX))  # the same requests, in queue order


def test_a_cancelled_request_revokes_the_look_ahead(held):
    engine, gate, first = held
    pending = [engine.submit(row(v)) for v in range(MAX)]
    wait_for(lambda: engine.stats()["lookahead_prepared"] == 1)
    assert pending[3].cancel()  # still queued: the look-ahead took nothing from the queue
    gate.open.set()
    with pytest.raises(errors.CancelledError):
        pending[3].wait(20)
        pending[3].outputs()
    for v, p in enumerate(pending):
        if v != 3:
            assert p.wait(20)
            np.testing.assert_array_equal(p.outputs()["OUTPUT0"], np.full((1, 4), 2 * v))
    s = engine.stats()
    assert s["lookahead_used"] == 0 and s["lookahead_dropped"] == 1
    assert gate.batches[1] == [v for v in range(MAX) if v != 3]


def test_a_more_urgent_request_overtakes_a_look_ahead(held):
    engine, gate, first = held
    pending = [engine.submit(row(v), priority=2) for v in range(MAX)]
    wait_for(lambda: engine.stats()["lookahead_prepared"] == 1)
    urgent = engine.submit(row(100), priority=1)
    gate.open.set()
    assert urgent.wait(20)
    for p in pending:
        assert p.wait(20)
        p.outputs()
    assert gate.batches[1][0] == 100  # the rule formed the batch at take time: the urgent one first
    assert gate.batches[1][1:] == list(range(MAX - 1))
    assert engine.stats()["lookahead_used"] == 0


def test_a_request_that_expires_in_the_queue_is_not_run_by_a_look_ahead(held):
    engine, gate, first = held
    pending = [engine.submit(row(v), timeout_us=200_000 if v == 0 else 0) for v in range(MAX)]
    wait_for(lambda: engine.stats()["lookahead_prepared"] == 1)
    with pytest.raises(errors.DeadlineExceededError):
        assert pending[0].wait(20)
        pending[0].outputs()
    gate.open.set()
    for p in pending[1:]:
        assert p.wait(20)
        p.outputs()
    assert 0 not in [v for batch in gate.batches[1:] for v in batch]
    assert engine.stats()["lookahead_used"] == 0


def test_look_ahead_batches_serve_a_long_run_exactly(held):
    """Many full batches queued behind a busy instance: every request answered with its own row,
    and the look-aheads that were gathered were used."""
    engine, gate, first = held
    pending = [engine.submit(row(v)) for v in range(20 * MAX)]
    wait_for(lambda: engine.stats()["lookahead_prepared"] >= 1)
    gate.open.set()
    for v, p in enumerate(pending):
        assert p.wait(20)
        np.testing.assert_array_equal(p.outputs()["OUTPUT0"], np.full((1, 4), 2 * v))
    s = engine.stats()
    assert s["lookahead_used"] >= 1 and s["lookahead_used"] + s["lookahead_dropped"] <= s["lookahead_prepared"]


def test_look_ahead_is_off_by_default(monkeypatch):
    monkeypatch.delenv("MODELSERVE_LOOKAHEAD", raising=False)
    gate = Gate()
    with ModelEngine("m", gate, max_batch_size=MAX) as engine:
        engine.submit(row(-1))
        assert gate.started.wait(20)
        pending = [engine.submit(row(v)) for v in range(2 * MAX)]
        time.sleep(0.2)
        gate.open.set()
        for p in pending:
            assert p.wait(20)
        assert engine.stats()["lookahead_prepared"] == 0
