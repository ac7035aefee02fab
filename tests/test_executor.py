"""Instances, resizing, failures, the GIL, and completions reaching asyncio."""

import asyncio
import threading
import time

import numpy as np
import pytest

import modelserve
from modelserve import ModelEngine, NativeBackend, memory
from modelserve._native import core


def row(value, rows=1):
    return {"INPUT0": np.full((rows, 4), value, dtype=np.float32)}


def test_instances_run_batches_concurrently():
    barrier = threading.Barrier(3, timeout=10)

    class Meet:
        def execute(self, inputs):
            barrier.wait()  # passes only if three instances are inside execute at once
            return {"OUTPUT0": inputs["INPUT0"]}

    with ModelEngine("m", Meet(), max_batch_size=1, instance_count=3) as e:
        pending = [e.submit(row(i)) for i in range(3)]
        for p in pending:
            assert p.wait(20)
            p.outputs()
        assert e.stats()["instances"] == 3


def test_each_instance_gets_its_own_backend_from_a_factory():
    made = []

    class Tagged:
        def __init__(self, index, device):
            self.index = index
            made.append((index, device))

        def execute(self, inputs):
            return {"OUTPUT0": np.full_like(inputs["INPUT0"], self.index)}

    with ModelEngine("m", Tagged, max_batch_size=4, instance_count=2, device="cpu") as e:
        assert sorted(made) == [(0, "cpu"), (1, "cpu")]
        e.infer(row(0))


def test_resizing_under_load_loses_nothing():
    backend = NativeBackend("identity", delay_us=2000)
    with ModelEngine("m", backend, max_batch_size=4, instance_count=1) as e:
        pending = []
        for count in (4, 2, 1, 3, 0, 2):
            pending += [e.submit(row(len(pending) + i)) for i in range(100)]
            e.set_instance_count(count)
            assert e.instance_count == count
        for i, p in enumerate(pending):
            assert p.wait(60), f"request {i} never completed"
            np.testing.assert_array_equal(p.outputs()["INPUT0"], np.full((1, 4), i, np.float32))
        stats = e.stats()
    assert stats["success_count"] == 600 and stats["failure_count"] == 0


def test_backend_exception_fails_only_its_own_batch():
    class Fussy:
        def execute(self, inputs):
            if (inputs["INPUT0"] == 13).any():
                raise ValueError("unlucky input 13")
            return {"OUTPUT0": inputs["INPUT0"]}

    with ModelEngine("fussy", Fussy(), max_batch_size=1, instance_count=2) as e:
        pending = [e.submit(row(i)) for i in range(20)]
        for p in pending:
            assert p.wait(10)
        for i, p in enumerate(pending):
            if i == 13:
                with pytest.raises(modelserve.InternalError, match="model 'fussy' version 1.*ValueError: unlucky input 13"):
                    p.outputs()
            else:
                np.testing.assert_array_equal(p.outputs()["OUTPUT0"], np.full((1, 4), i, np.float32))
        stats = e.stats()
        assert stats["failures"] == {"INTERNAL": 1} and stats["success_count"] == 19
        e.infer(row(1))  # the instance lives on


def test_bad_backend_output_is_an_internal_error_naming_the_output():
    class Short:
        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"][:1]}

    with ModelEngine("short", Short(), max_batch_size=8) as e:
        with pytest.raises(modelserve.InternalError, match=r"output 'OUTPUT0' with shape \[1, 4\] for a batch of 3"):
            e.infer(row(0, rows=3))


def test_missing_requested_output_is_an_internal_error():
    class NoOutputs:
        def execute(self, inputs):
            return {}

    with ModelEngine("m", NoOutputs(), max_batch_size=8) as e:
        with pytest.raises(modelserve.InternalError, match="did not return the requested output 'OUTPUT0'"):
            e.infer(row(0), outputs=["OUTPUT0"])


def test_another_python_thread_progresses_while_a_batch_runs():
    with ModelEngine("slow", NativeBackend("identity", delay_us=300_000), max_batch_size=4) as e:
        done = threading.Event()
        counter = 0

        def request():
            e.infer(row(1))
            done.set()

        t = threading.Thread(target=request)
        t.start()
        while not done.is_set():
            counter += 1
        t.join()
    assert counter > 10_000  # the main thread ran Python code throughout the 300 ms wait


def test_outputs_are_zero_copy_slices_of_the_batch_output(held):
    with ModelEngine("m", held, max_batch_size=8) as e:
        first = e.submit(row(-1))
        assert held.started.wait(10)
        a, b = e.submit(row(1, rows=2)), e.submit(row(2, rows=3))
        held.release()
        assert first.wait(10) and a.wait(10) and b.wait(10)
        oa, ob = a.outputs()["OUTPUT0"], b.outputs()["OUTPUT0"]
        assert oa.shape == (2, 4) and ob.shape == (3, 4)
        # Both views point into the same 5-row batch output, one after the other.
        assert ob.ctypes.data == oa.ctypes.data + oa.nbytes


def test_gather_draws_from_the_pool_and_steady_state_allocates_nothing():
    pool = memory.host_pool()
    with ModelEngine("m", NativeBackend("identity"), max_batch_size=8) as e:

        def burst():
            pending = [e.submit(row(i)) for i in range(32)]
            for p in pending:
                assert p.wait(10)
            del pending

        for _ in range(5):
            burst()
        core.release_python_owners()
        warm = pool.stats()["upstream_allocations"]
        for _ in range(20):
            burst()
        assert pool.stats()["upstream_allocations"] == warm


def test_statistics_count_timings_and_gauges(recorder):
    with ModelEngine("m", recorder, max_batch_size=8) as e:
        for i in range(3):
            e.infer(row(i))
        s = e.stats()
    assert s["success_count"] == 3 and s["execution_count"] == 3 and s["inference_count"] == 3
    assert s["batch_stats"][1]["count"] == 3
    assert s["compute_infer_ns"] > 0 and s["queue_ns"] >= 0
    assert s["queued"] == 0 and s["in_flight"] == 0


def test_pending_reports_timings():
    with ModelEngine("m", NativeBackend("identity", delay_us=20_000), max_batch_size=4) as e:
        p = e.submit(row(1))
        assert p.wait(10)
        assert p.timings["compute_infer_ns"] >= 20_000_000
        assert p.batch_size == 1


# --- asyncio ---------------------------------------------------------------------------------


def test_infer_async_resolves_many_requests():
    async def main(e):
        results = await asyncio.gather(*(e.infer_async(row(i)) for i in range(200)))
        for i, out in enumerate(results):
            np.testing.assert_array_equal(out["INPUT0"], np.full((1, 4), i, np.float32))

    with ModelEngine("m", NativeBackend("identity", delay_us=500), max_batch_size=16, instance_count=2) as e:
        asyncio.run(main(e))


def test_completions_wake_the_loop_once_for_many_requests(held):
    with ModelEngine("m", held, max_batch_size=64) as e:
        queue = core.CompletionQueue()
        first = e.submit(row(-1))
        assert held.started.wait(10)
        pending = [e._model.submit(row(i), queue=queue, tag=i) for i in range(50)]
        held.release()
        for p in pending:
            assert p.wait(10)
        # A request is marked done just before it is pushed; the last push lands microseconds
        # later. Draining early would start a second wake-up, so wait generously, then drain once.
        time.sleep(0.2)
        ready = queue.drain()
        assert sorted(p.tag for p in ready) == list(range(50))
        assert queue.wakeups == 1  # one fd write for all 50 completions
        assert first.wait(10)


def test_cancelling_the_awaiting_task_removes_the_queued_request(held):
    async def main(e):
        first = asyncio.ensure_future(e.infer_async(row(-1)))
        while not held.started.is_set():
            await asyncio.sleep(0.01)
        doomed = asyncio.ensure_future(e.infer_async(row(42)))
        await asyncio.sleep(0.05)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        held.release()
        await first

    with ModelEngine("m", held, max_batch_size=8) as e:
        asyncio.run(main(e))
        stats = e.stats()
    assert stats["failures"] == {"CANCELLED": 1}
    assert held.batch_sizes() == [1]


def test_errors_reach_asyncio_as_exceptions(held):
    async def main(e):
        with pytest.raises(modelserve.InvalidArgumentError):
            await e.infer_async({"INPUT0": np.zeros((9, 4), np.float32)})

    with ModelEngine("m", NativeBackend("identity"), max_batch_size=8) as e:
        asyncio.run(main(e))


def test_blocking_wait_can_time_out(held):
    with ModelEngine("m", held, max_batch_size=8) as e:
        p = e.submit(row(1))
        t0 = time.monotonic()
        assert p.wait(0.05) is False
        assert time.monotonic() - t0 < 5
        held.release()
        assert p.wait(10)


def test_interpreter_exit_with_work_queued_is_clean(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent("""
        import time
        import numpy as np
        import modelserve

        class Slow:
            def execute(self, inputs):
                time.sleep(0.05)
                return {"Y": inputs["X"]}

        engine = modelserve.ModelEngine("m", Slow(), max_batch_size=1, instance_count=2)
        pending = [engine.submit({"X": np.ones((1, 3), np.float32)}) for _ in range(50)]
        time.sleep(0.1)
        print("exiting")  # without closing the engine, batches running and queued
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exiting"


# --- statistics under load (Note [Count before publishing]) -------------------------------------


@pytest.mark.parametrize("max_batch_size", [0, 8])
def test_in_flight_never_wraps_while_statistics_are_sampled_under_load(max_batch_size):
    # Eight closed-loop submitters have at most eight requests outstanding: a read above that is
    # the unsigned counter wrapping (finish() subtracting before dispatch() added).
    submitters = 8
    r = core._bench.scheduler_overhead(submitters, 3000, max_batch_size=max_batch_size, instances=2,
                                       sample_stats=True)
    assert r["samples"] > 1000, "the sampler hardly ran; the test proves nothing"
    assert r["max_in_flight"] <= submitters
    assert r["max_queued"] <= submitters


def test_in_flight_and_queued_return_to_zero_after_load():
    backend = NativeBackend("identity")
    with ModelEngine("m", backend, max_batch_size=4, instance_count=2) as e:
        pending = [e.submit(row(i)) for i in range(500)]
        for p in pending:
            assert p.wait(30)
        s = e.stats()
        assert (s["in_flight"], s["queued"], s["success_count"]) == (0, 0, 500)


# --- drain (Note [Drain]) -------------------------------------------------------------------------


def test_close_with_drain_starts_an_instance_for_a_queue_that_has_none():
    backend = NativeBackend("identity")
    e = ModelEngine("m", backend, max_batch_size=4, instance_count=1)
    e.set_instance_count(0)  # scaled to zero: requests wait for a cold start
    pending = [e.submit(row(i)) for i in range(5)]
    closer = threading.Thread(target=e.close)
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "close(drain=True) hung on a queue with no instance"
    for i, p in enumerate(pending):
        assert p.wait(1)
        assert p.outputs()["INPUT0"][0, 0] == i


def test_close_with_drain_fails_the_queue_at_once_when_no_instance_can_start():
    made = []

    class OnceOnly:
        def __init__(self, index, device):
            if made:
                raise RuntimeError("weights are gone")
            made.append(index)

        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}

    e = ModelEngine("m", OnceOnly, max_batch_size=4, instance_count=1, device="cpu")
    e.set_instance_count(0)
    pending = [e.submit(row(i)) for i in range(3)]
    closer = threading.Thread(target=e.close, kwargs={"timeout_s": None})
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "close(drain=True) hung when no instance could start"
    for p in pending:
        assert p.wait(1)
        with pytest.raises(modelserve.UnavailableError, match="no instance could start.*weights are gone"):
            p.outputs()


def test_requests_still_queued_when_the_drain_timeout_passes_fail_with_unavailable(held):
    e = ModelEngine("m", held, max_batch_size=1, instance_count=1)
    first = e.submit(row(0))
    assert held.started.wait(10)  # the only instance is busy until released
    queued = [e.submit(row(i)) for i in range(1, 4)]
    closer = threading.Thread(target=e.close, kwargs={"timeout_s": 0.2})
    closer.start()
    for p in queued:
        assert p.wait(20), "a queued request outlived the drain timeout"
        with pytest.raises(modelserve.UnavailableError, match="drain timeout of 200 ms"):
            p.outputs()
    held.release()
    closer.join(20)
    assert not closer.is_alive()
    assert first.wait(1)
    assert first.outputs()["OUTPUT0"][0, 0] == 0  # the running batch finished


def test_close_refuses_a_negative_timeout(recorder):
    with ModelEngine("m", recorder, max_batch_size=1) as e:
        with pytest.raises(modelserve.InvalidArgumentError, match="timeout_s must be >= 0"):
            e.close(timeout_s=-1)


def test_a_modelserve_error_raised_by_a_python_backend_keeps_its_status_code():
    class Picky:
        def execute(self, inputs):
            if (inputs["INPUT0"] < 0).any():
                raise modelserve.InvalidArgumentError("INPUT0 must be >= 0")
            raise ValueError("a bug in the model")

    with ModelEngine("m", Picky(), max_batch_size=4) as e:
        with pytest.raises(modelserve.InvalidArgumentError, match=r"model 'm' version 1 instance 0 .*INPUT0 must be >= 0"):
            e.infer(row(-1))
        with pytest.raises(modelserve.InternalError, match="execute\\(\\) raised ValueError: a bug in the model"):
            e.infer(row(1))


def test_a_closed_engine_releases_its_backend_factory_so_its_owner_can_be_collected():
    import gc
    import weakref

    class Owner:  # as a repository version: it owns the engine, and the factory refers back to it
        def make(self, instance, device):
            return self

        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}

    owner = Owner()
    owner.engine = ModelEngine("m", owner.make, max_batch_size=4, device="cpu")  # a bound method holds owner
    owner.engine.infer(row(1))
    owner.engine.close()
    alive = weakref.ref(owner)
    del owner
    gc.collect()
    assert alive() is None, "the closed engine's factory kept its owner alive"


# --- Note [Caller runs] ---------------------------------------------------------------------------


class Threads:
    """Records the thread each batch ran on, and how many ran at once at most."""

    def __init__(self, delay_s=0.0, gate=None):
        self.delay_s, self.gate = delay_s, gate
        self.lock = threading.Lock()
        self.threads, self.active, self.most = [], 0, 0
        self.started = threading.Event()

    def execute(self, inputs):
        with self.lock:
            self.threads.append(threading.get_ident())
            self.active += 1
            self.most = max(self.most, self.active)
        self.started.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(30), "test never opened the gate"
            time.sleep(self.delay_s)
            return {"OUTPUT0": inputs["INPUT0"] + 1}
        finally:
            with self.lock:
                self.active -= 1


def test_a_blocking_call_on_an_idle_instance_runs_on_the_callers_thread():
    backend = Threads()
    with ModelEngine("m", backend, max_batch_size=8) as e:
        np.testing.assert_array_equal(e.infer(row(1))["OUTPUT0"], np.full((1, 4), 2))
        e.submit(row(2)).wait(20)  # an enqueue without waiting never runs on its caller
    assert backend.threads[0] == threading.get_ident()
    assert backend.threads[1] != threading.get_ident()


def test_a_blocking_call_with_a_queue_delay_waits_in_the_queue_as_before():
    backend = Threads()
    with ModelEngine("m", backend, max_batch_size=8, dynamic_batching={"max_queue_delay_us": 2000}) as e:
        e.infer(row(1))
    assert backend.threads == [backend.threads[0]] and backend.threads[0] != threading.get_ident()


def test_callers_running_their_own_requests_keep_to_the_instance_count():
    backend = Threads(delay_s=0.005)
    with ModelEngine("m", backend, max_batch_size=1, instance_count=2) as e:
        def call(k):
            for _ in range(10):
                np.testing.assert_array_equal(e.infer(row(k))["OUTPUT0"], np.full((1, 4), k + 1))

        workers = [threading.Thread(target=call, args=(k,)) for k in range(5)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert e.stats()["in_flight"] == 0 and e.stats()["success_count"] == 50
    assert backend.most <= 2  # never more batches at once than instances
    callers = {w.ident for w in workers}
    assert callers & set(backend.threads)  # some ran on their callers ...
    assert set(backend.threads) - callers  # ... and some, queued behind, on the instances' threads


def test_removing_an_instance_waits_for_the_caller_running_a_batch_on_it():
    gate = threading.Event()
    backend = Threads(gate=gate)
    with ModelEngine("m", backend, max_batch_size=8) as e:
        result = {}
        caller = threading.Thread(target=lambda: result.update(e.infer(row(3))))
        caller.start()
        assert backend.started.wait(20)
        resize = threading.Thread(target=e.set_instance_count, args=(0,))
        resize.start()
        resize.join(0.3)
        assert resize.is_alive()  # the backend is still in use on the caller's thread
        gate.set()
        caller.join(20)
        resize.join(20)
        assert not resize.is_alive() and e.instance_count == 0
    assert backend.threads == [caller.ident]
    np.testing.assert_array_equal(result["OUTPUT0"], np.full((1, 4), 4))
