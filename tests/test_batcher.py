"""Dynamic batching: Triton's semantics (Note [Batch formation] in csrc/sched/dynamic_batcher.h).

Most tests hold the only instance busy with a first request (the ``held`` Recorder), queue what
they need, then release it, so the batches formed do not depend on timing.
"""

import threading
import time

import numpy as np
import pytest

import modelserve
from modelserve import ModelEngine


def row(value, width=3, rows=1):
    return {"INPUT0": np.full((rows, width), value, dtype=np.float32)}


def engine(backend, **kw):
    kw.setdefault("max_batch_size", 8)
    return ModelEngine("m", backend, **kw)


def start_held(e, held):
    first = e.submit(row(-1))
    assert held.started.wait(10)
    return first


def test_queued_requests_run_as_one_batch_when_an_instance_frees(held):
    with engine(held) as e:
        first = start_held(e, held)
        pending = [e.submit(row(i)) for i in range(5)]
        held.release()
        for p in [first, *pending]:
            assert p.wait(10)
        assert held.batch_sizes() == [1, 5]
        assert [p.batch_size for p in pending] == [5] * 5


def test_preferred_size_dispatches_at_once_and_the_rest_waits_for_the_delay(held):
    with engine(held, dynamic_batching={"preferred_batch_sizes": [4], "max_queue_delay_us": 300_000}) as e:
        first = start_held(e, held)
        pending = [e.submit(row(i)) for i in range(6)]
        t0 = time.monotonic()
        held.release()
        for p in [first, *pending]:
            assert p.wait(10)
        assert held.batch_sizes() == [1, 4, 2]
        assert time.monotonic() - t0 >= 0.25  # the last two waited for the delay


def test_full_batch_dispatches_without_waiting_for_the_delay(held):
    with engine(held, max_batch_size=4, dynamic_batching={"max_queue_delay_us": 5_000_000}) as e:
        first = start_held(e, held)
        pending = [e.submit(row(i)) for i in range(4)]
        held.release()
        for p in [first, *pending]:
            assert p.wait(3)  # far less than the 5 s delay
        assert held.batch_sizes() == [1, 4]


def test_lone_request_waits_the_delay_and_no_longer(recorder):
    with engine(recorder, dynamic_batching={"max_queue_delay_us": 200_000}) as e:
        t0 = time.monotonic()
        e.infer(row(1))
        waited = time.monotonic() - t0
    assert 0.19 <= waited < 2.0  # generous upper bound: never the 2 s of a lost wake-up


def test_without_dynamic_batching_a_lone_request_runs_at_once(recorder):
    with engine(recorder) as e:
        t0 = time.monotonic()
        e.infer(row(1))
        assert time.monotonic() - t0 < 1.0


def test_higher_priority_is_served_first_and_fifo_within_a_level(held):
    with engine(held, max_batch_size=1, dynamic_batching={"priority_levels": 3}) as e:
        first = start_held(e, held)
        order = [(3, 30), (2, 20), (1, 10), (3, 31), (1, 11), (0, 21)]  # 0 = default level (2)
        pending = [e.submit(row(v), priority=p) for p, v in order]
        held.release()
        for p in [first, *pending]:
            assert p.wait(10)
        served = [int(b["INPUT0"][0, 0]) for b in held.batches[1:]]
        assert served == [10, 11, 20, 21, 30, 31]


def test_priority_out_of_range_is_rejected(recorder):
    with engine(recorder, dynamic_batching={"priority_levels": 2}) as e:
        with pytest.raises(modelserve.InvalidArgumentError, match="priority 3 is out of range"):
            e.submit(row(1), priority=3)


def test_full_queue_rejects_with_resource_exhausted_at_once(held):
    with engine(held, dynamic_batching={"max_queue_size": 2}) as e:
        first = start_held(e, held)
        kept = [e.submit(row(i)) for i in range(2)]
        t0 = time.monotonic()
        with pytest.raises(modelserve.ResourceExhaustedError, match=r"queue full: 2 requests queued \(max_queue_size 2\)"):
            e.submit(row(9))
        assert time.monotonic() - t0 < 0.5
        held.release()
        for p in [first, *kept]:
            assert p.wait(10)
            p.outputs()  # the admitted requests still succeed


def test_queue_timeout_fires_while_every_instance_is_busy(held):
    with engine(held) as e:
        first = start_held(e, held)
        late = e.submit(row(1), timeout_us=100_000)
        assert late.wait(5), "timed out request was not failed while the instance stayed busy"
        assert not first.done()  # the running batch is still running
        with pytest.raises(modelserve.DeadlineExceededError, match="timed out in the queue"):
            late.outputs()
        held.release()
        assert first.wait(10)
    assert held.batch_sizes() == [1]  # the expired request never reached the backend
    assert e.stats()["failures"] == {"DEADLINE_EXCEEDED": 1}


def test_default_timeout_applies_when_the_request_gives_none(held):
    with engine(held, dynamic_batching={"default_timeout_us": 50_000}) as e:
        start_held(e, held)
        late = e.submit(row(1))
        assert late.wait(5)
        with pytest.raises(modelserve.DeadlineExceededError):
            late.outputs()
        held.release()


def test_cancelled_queued_request_never_reaches_the_backend(held):
    with engine(held) as e:
        first = start_held(e, held)
        doomed = e.submit(row(42))
        kept = e.submit(row(7))
        assert doomed.cancel() is True
        with pytest.raises(modelserve.CancelledError, match="cancelled while queued"):
            doomed.outputs()
        held.release()
        assert first.wait(10) and kept.wait(10)
        assert doomed.cancel() is False  # already finished
    seen = np.concatenate([b["INPUT0"][:, 0] for b in held.batches]).tolist()
    assert 42 not in seen and 7 in seen


def test_shapes_are_never_mixed_in_one_batch(held):
    with engine(held) as e:
        first = start_held(e, held)
        pending = [e.submit(row(i, width=3 if i % 2 else 5)) for i in range(8)]
        held.release()
        for p in [first, *pending]:
            assert p.wait(10)
        for p, i in zip(pending, range(8)):
            np.testing.assert_array_equal(p.outputs()["OUTPUT0"], np.full((1, 3 if i % 2 else 5), 2 * i))
    for batch in held.batches:
        assert len({tuple(r.shape) for r in batch["INPUT0"]}) == 1
    assert len(held.batches) > 2  # the alternating widths split the queue


def test_every_request_receives_exactly_its_own_rows():
    rng = np.random.default_rng(3)

    class Echo:
        def execute(self, inputs):
            time.sleep(0.001)
            return {"OUTPUT0": inputs["INPUT0"] * 10 + inputs["INPUT1"]}

    with ModelEngine("echo", Echo(), max_batch_size=16, instance_count=2,
                     dynamic_batching={"max_queue_delay_us": 2000}) as e:
        jobs = []
        for i in range(300):
            rows = int(rng.integers(1, 5))
            a = rng.integers(0, 1000, size=(rows, 4)).astype(np.int64)
            b = np.full((rows, 4), i, dtype=np.int64)
            jobs.append((e.submit({"INPUT0": a, "INPUT1": b}), a * 10 + b))
        for p, expected in jobs:
            assert p.wait(30)
            np.testing.assert_array_equal(p.outputs()["OUTPUT0"], expected)
        stats = e.stats()
    assert stats["success_count"] == 300
    assert stats["execution_count"] < 300  # requests were really batched
    assert sum(size * s["count"] for size, s in stats["batch_stats"].items()) == stats["inference_count"]


def test_requested_outputs_are_the_ones_returned(recorder):
    with engine(recorder) as e:
        out = e.infer(row(2), outputs=["OUTPUT1"])
        assert list(out) == ["OUTPUT1"]
        np.testing.assert_array_equal(out["OUTPUT1"], np.full((1, 3), 3.0))


def test_inputs_are_checked_against_the_declared_specs(recorder):
    with engine(recorder, inputs=[("INPUT0", "FP32", [3])], outputs=[("OUTPUT0", "FP32", [3])]) as e:
        with pytest.raises(modelserve.InvalidArgumentError, match="input 'INPUT0': expected datatype FP32, got INT32"):
            e.submit({"INPUT0": np.zeros((1, 3), np.int32)})
        with pytest.raises(modelserve.InvalidArgumentError, match=r"expected shape \[-1, 3\].*got \[1, 4\]"):
            e.submit({"INPUT0": np.zeros((1, 4), np.float32)})
        with pytest.raises(modelserve.InvalidArgumentError, match="missing input 'INPUT0'"):
            e.submit({})
        with pytest.raises(modelserve.InvalidArgumentError, match="unexpected input 'X'"):
            e.submit({"INPUT0": np.zeros((1, 3), np.float32), "X": np.zeros((1, 3), np.float32)})
        with pytest.raises(modelserve.InvalidArgumentError, match="unknown output 'NOPE'"):
            e.submit(row(1), outputs=["NOPE"])
        with pytest.raises(modelserve.InvalidArgumentError, match=r"batch size 9 is not in \[1, max_batch_size=8\]"):
            e.submit(row(1, rows=9))


def test_inconsistent_batch_dimensions_are_rejected(recorder):
    with engine(recorder) as e:
        with pytest.raises(modelserve.InvalidArgumentError, match="every input needs the same first dimension"):
            e.submit({"INPUT0": np.zeros((2, 3), np.float32), "INPUT1": np.zeros((3, 3), np.float32)})


def test_model_without_batching_runs_requests_alone(recorder):
    with ModelEngine("nb", recorder, max_batch_size=0) as e:
        pending = [e.submit({"INPUT0": np.full((2, 2), i, np.float32)}) for i in range(5)]
        for p in pending:
            assert p.wait(10)
        assert [b["INPUT0"].shape for b in recorder.batches] == [(2, 2)] * 5


def test_batching_settings_change_while_serving(held):
    with engine(held, dynamic_batching={"max_queue_size": 1}) as e:
        first = start_held(e, held)
        e.submit(row(1))
        with pytest.raises(modelserve.ResourceExhaustedError):
            e.submit(row(2))
        e.set_batching(max_queue_size=10, priority_levels=2)
        assert e.batching["max_queue_size"] == 10
        extra = e.submit(row(3), priority=1)
        held.release()
        assert first.wait(10) and extra.wait(10)
        with pytest.raises(modelserve.InvalidArgumentError, match="unknown batching setting"):
            e.set_batching(max_queue_sise=3)


def test_unknown_dynamic_batching_key_names_the_key(recorder):
    with pytest.raises(modelserve.InvalidArgumentError, match="max_queue_dely_us"):
        engine(recorder, dynamic_batching={"max_queue_dely_us": 5})


def test_invalid_preferred_size_names_the_key(recorder):
    with pytest.raises(modelserve.InvalidArgumentError, match=r"preferred_batch_sizes: 16 is not in \[1, max_batch_size=8\]"):
        engine(recorder, dynamic_batching={"preferred_batch_sizes": [16]})


def test_shutdown_without_drain_fails_queued_requests_with_unavailable(held):
    e = engine(held)
    first = start_held(e, held)
    queued = e.submit(row(1))
    closer = threading.Thread(target=e.close, kwargs={"drain": False})
    closer.start()
    assert queued.wait(10)
    with pytest.raises(modelserve.UnavailableError, match="shut down"):
        queued.outputs()
    held.release()
    closer.join(10)
    assert first.wait(10)
    with pytest.raises(modelserve.UnavailableError):
        e.submit(row(2))
