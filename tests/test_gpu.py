"""GPU paths: pinned and device pools, and the pipelined instance (Note [Instance pipeline]).
Every test here carries the gpu marker and is skipped where no CUDA device is available."""

import numpy as np
import pytest

import modelserve
from modelserve import ModelEngine, NativeBackend, Tensor, memory

pytestmark = pytest.mark.gpu


def test_device_tensors_export_through_dlpack_only():
    t = Tensor.empty("FP32", [4, 4], memory.device_pool(0))
    assert t.device == "cuda:0"
    assert t.__dlpack_device__() == (2, 0)
    with pytest.raises(modelserve.InvalidArgumentError, match="numpy needs host memory"):
        t.numpy()


def test_pinned_tensors_are_host_readable():
    t = Tensor.empty("INT32", [8], memory.pinned_pool())
    assert t.device == "cuda_host"
    t.numpy()[:] = 7
    assert t.numpy().tolist() == [7] * 8


def test_pipelined_instance_returns_every_request_its_own_rows():
    backend = NativeBackend("identity", output_names=["OUTPUT0"], device_memory=True)
    with ModelEngine("gpu", backend, max_batch_size=32, device="cuda:0", instance_count=2,
                     dynamic_batching={"max_queue_delay_us": 200}) as e:
        pending = []
        for i in range(400):
            rows = 1 + i % 4
            pending.append((e.submit({"INPUT0": np.full((rows, 256), i, np.float32)}), rows, i))
        for p, rows, i in pending:
            assert p.wait(60)
            out = p.outputs()["OUTPUT0"]
            np.testing.assert_array_equal(out, np.full((rows, 256), i, np.float32))
        stats = e.stats()
    assert stats["success_count"] == 400
    assert stats["execution_count"] < 400


def test_gpu_pools_reach_a_steady_state():
    backend = NativeBackend("identity", device_memory=True)
    with ModelEngine("gpu", backend, max_batch_size=16, device="cuda:0") as e:
        def burst():
            ps = [e.submit({"INPUT0": np.ones((1, 1024), np.float32)}) for _ in range(64)]
            for p in ps:
                assert p.wait(30)
                p.outputs()

        for _ in range(5):
            burst()
        warm = {k: v["upstream_allocations"] for k, v in memory.pool_stats().items()}
        for _ in range(20):
            burst()
        now = {k: v["upstream_allocations"] for k, v in memory.pool_stats().items()}
    # Batch sizes vary with timing, so allow a few new size classes, never growth per batch.
    for name in warm:
        assert now[name] - warm[name] <= 8, name


def test_python_backend_on_a_gpu_instance_gets_host_arrays():
    class Host:
        def execute(self, inputs):
            assert isinstance(inputs["INPUT0"], np.ndarray)
            return {"OUTPUT0": inputs["INPUT0"] + 1}

    with ModelEngine("m", Host(), max_batch_size=4, device="cuda:0") as e:
        out = e.infer({"INPUT0": np.zeros((2, 3), np.float32)})
        np.testing.assert_array_equal(out["OUTPUT0"], np.ones((2, 3)))
