"""Memory resources and pools of the native core.

Every resource has ``allocate(bytes) -> int`` and ``deallocate(ptr, bytes)`` (raw pointers, for
tests and tools) and is mainly used to place tensors: ``Tensor.empty("FP32", [64, 16], pool)``.

- :class:`HostResource`: pageable host memory, 64-byte aligned.
- :class:`PinnedResource`, :class:`DeviceResource`: CUDA pinned host and device memory (need a GPU).
- :class:`PoolResource`: a thread-safe caching pool over any of them, with size classes, an
  optional byte ``limit`` (``ResourceExhaustedError`` names the request, use and limit),
  ``stats()`` and ``trim()``.

The executor draws batch buffers from the process-wide pools :func:`host_pool`,
:func:`pinned_pool` and :func:`device_pool`; :func:`pool_stats` reports them (for metrics).
"""

from __future__ import annotations

from . import cuda
from ._native import core as _core

__all__ = [
    "MemoryResource",
    "HostResource",
    "PinnedResource",
    "DeviceResource",
    "PoolResource",
    "host_pool",
    "pinned_pool",
    "device_pool",
    "shm_pool",
    "pool_stats",
]

MemoryResource = _core.MemoryResource
HostResource = _core.HostResource
PinnedResource = _core.PinnedResource
DeviceResource = _core.DeviceResource
PoolResource = _core.PoolResource


def host_pool() -> PoolResource:
    """The process-wide pool of host memory (batch buffers, BYTES tensors)."""
    return _core.host_pool()


def pinned_pool() -> PoolResource:
    """The process-wide pool of pinned host memory; raises UnavailableError without a GPU."""
    return _core.pinned_pool()


def device_pool(device: int = 0) -> PoolResource:
    """The pool of device memory on ``device``; raises UnavailableError without a GPU."""
    return _core.device_pool(device)


def shm_pool() -> PoolResource:
    """The process-wide pool of shared memory (memfd segments) that process instances exchange
    batches in (Note [Shared memory segments] in csrc/memory/shm_resource.h)."""
    return _core.shm_pool()


def pool_stats() -> dict[str, dict]:
    """Statistics of every process-wide pool, keyed by pool name."""
    pools = [host_pool(), shm_pool()]
    if cuda.is_available():
        pools.append(pinned_pool())
        pools.extend(device_pool(d) for d in range(cuda.device_count()))
    return {p.name: p.stats() for p in pools}
