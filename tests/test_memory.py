"""The MemoryResource contract, run against every resource (see csrc/memory/memory_resource.h)."""

import threading

import pytest

import modelserve
from modelserve import memory
from modelserve._native import core

RESOURCES = {
    "host": lambda: memory.HostResource(),
    "pool(host)": lambda: memory.PoolResource(memory.HostResource()),
    "pool(pool(host))": lambda: memory.PoolResource(memory.PoolResource(memory.HostResource())),
    "pinned": pytest.param(lambda: memory.PinnedResource(), marks=pytest.mark.gpu),
    "device": pytest.param(lambda: memory.DeviceResource(0), marks=pytest.mark.gpu),
    "pool(pinned)": pytest.param(lambda: memory.PoolResource(memory.PinnedResource()), marks=pytest.mark.gpu),
    "pool(device)": pytest.param(lambda: memory.PoolResource(memory.DeviceResource(0)), marks=pytest.mark.gpu),
}


@pytest.fixture(params=list(RESOURCES.values()), ids=list(RESOURCES))
def resource(request):
    return request.param()


def test_allocations_are_aligned_to_at_least_64_bytes(resource):
    assert resource.alignment >= 64
    for size in (1, 3, 64, 100, 4096, 1 << 20):
        ptr = resource.allocate(size)
        assert ptr % resource.alignment == 0
        resource.deallocate(ptr, size)


def test_zero_bytes_gives_distinct_valid_pointers(resource):
    a, b = resource.allocate(0), resource.allocate(0)
    assert a and b and a != b
    resource.deallocate(a, 0)
    resource.deallocate(b, 0)


def test_huge_request_raises_resource_exhausted_naming_the_size(resource):
    size = 1 << 50
    with pytest.raises(modelserve.ResourceExhaustedError, match=str(size)):
        resource.allocate(size)


def test_live_allocations_are_distinct_under_multithreaded_stress(resource):
    result = core._bench.stress(resource, threads=4, iterations=3000, max_bytes=20000, seed=7)
    assert result["allocations"] == 4 * 3000
    assert result["misaligned"] == 0
    assert result["corrupted"] == 0  # overlapping blocks would overwrite each other's stamps


def test_python_threads_may_allocate_concurrently(resource):
    errors = []

    def work():
        try:
            ptrs = [(resource.allocate(n), n) for n in range(0, 5000, 97)]
            assert len({p for p, _ in ptrs}) == len(ptrs)
            for p, n in ptrs:
                resource.deallocate(p, n)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- PoolResource ----------------------------------------------------------------------------


def test_size_classes_bound_the_slack_to_a_quarter():
    assert memory.PoolResource.size_class_of(0) == 256
    assert memory.PoolResource.size_class_of(256) == 256
    assert memory.PoolResource.size_class_of(257) == 320
    for n in (300, 1000, 4097, 10**6, 3 * 10**8):
        c = memory.PoolResource.size_class_of(n)
        assert n <= c <= n * 1.25 + 1


def test_pool_reuses_blocks_without_going_upstream_in_steady_state():
    pool = memory.PoolResource(memory.HostResource())
    sizes = [100, 5000, 70000, 1 << 20]
    for _ in range(2):  # warm-up
        ptrs = [pool.allocate(n) for n in sizes]
        for p, n in zip(ptrs, sizes):
            pool.deallocate(p, n)
    warm = pool.stats()
    for _ in range(100):
        ptrs = [pool.allocate(n) for n in sizes]
        for p, n in zip(ptrs, sizes):
            pool.deallocate(p, n)
    stats = pool.stats()
    assert stats["upstream_allocations"] == warm["upstream_allocations"] == len(sizes)
    assert stats["hits"] - warm["hits"] == 100 * len(sizes)
    assert stats["bytes_in_use"] == 0
    assert stats["hit_rate"] > 0.9


def test_pool_statistics_track_use_peak_and_held_bytes():
    pool = memory.PoolResource(memory.HostResource())
    a = pool.allocate(1000)  # class 1024
    b = pool.allocate(1000)
    s = pool.stats()
    assert s["bytes_in_use"] == 2048 and s["peak_bytes_in_use"] == 2048 and s["bytes_held"] == 2048
    pool.deallocate(a, 1000)
    s = pool.stats()
    assert s["bytes_in_use"] == 1024 and s["peak_bytes_in_use"] == 2048 and s["bytes_idle"] == 1024
    assert (s["allocations"], s["deallocations"], s["misses"]) == (2, 1, 2)
    pool.deallocate(b, 1000)


def test_pool_limit_error_states_request_use_and_limit():
    pool = memory.PoolResource(memory.HostResource(), limit=4096)
    a = pool.allocate(3000)  # class 3072
    with pytest.raises(modelserve.ResourceExhaustedError) as info:
        pool.allocate(2000)
    msg = str(info.value)
    assert "requested 2000 bytes" in msg and "in use 3072 bytes" in msg and "limit 4096 bytes" in msg
    pool.deallocate(a, 3000)
    b = pool.allocate(2000)  # the idle 3072-byte block is trimmed to make room
    assert pool.stats()["bytes_held"] <= 4096
    pool.deallocate(b, 2000)


def test_trim_returns_idle_memory_upstream():
    pool = memory.PoolResource(memory.HostResource())
    ptrs = [pool.allocate(10000) for _ in range(4)]
    keep = ptrs.pop()
    for p in ptrs:
        pool.deallocate(p, 10000)
    released = pool.trim()
    s = pool.stats()
    assert released == 3 * memory.PoolResource.size_class_of(10000)
    assert s["bytes_idle"] == 0 and s["bytes_held"] == s["bytes_in_use"]
    assert s["upstream_deallocations"] == 3
    pool.deallocate(keep, 10000)


def test_process_pools_are_reported_for_metrics():
    stats = memory.pool_stats()
    assert "host_pool" in stats
    assert {"bytes_in_use", "bytes_held", "hit_rate"} <= set(stats["host_pool"])


def test_cuda_resources_are_unavailable_without_a_gpu():
    if modelserve.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(modelserve.UnavailableError, match="no CUDA device"):
        memory.PinnedResource()
    with pytest.raises(modelserve.UnavailableError):
        memory.device_pool(0)
