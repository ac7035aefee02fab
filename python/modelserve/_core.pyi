"""Stub of ``modelserve._core``, the native core's Python module (csrc/python/: bindings.cc,
py_tensor.cc, dlpack.cc, completion_queue.cc, native_bench.cc, py_protocol.cc). Private: use
the modelserve package. ``tests/test_package.py`` checks that it names exactly what the module
exports (top level, each class's public members, each submodule's); change it with the bindings.

Submodules are written as a ``ModuleType`` subclass (``_Cuda``, ...) and a module-level name of
that type (``cuda``): a single stub file cannot hold ``modelserve._core.cuda`` as a module.
"""

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, SupportsIndex

import numpy as np
from typing_extensions import Buffer, CapsuleType

__version__: str

#: Status name -> code, as the core's StatusCode (OK 0 ... UNIMPLEMENTED 9).
STATUS_CODES: dict[str, int]
#: The datatype names, in the core's DataType order (BOOL ... BYTES).
DATATYPES: list[str]

def _set_error_factory(factory: Callable[[int, str], BaseException], /) -> None:
    """Core errors become ``factory(code, message)`` (modelserve.errors.from_status)."""

def element_size(datatype: str, /) -> int: ...

# --- memory ---------------------------------------------------------------------------------

class MemoryResource:
    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def alignment(self) -> int: ...
    def allocate(self, bytes: SupportsIndex) -> int:
        """The address of ``bytes`` bytes."""
    def deallocate(self, ptr: SupportsIndex, bytes: SupportsIndex) -> None: ...

class HostResource(MemoryResource):
    def __init__(self) -> None: ...

class PinnedResource(MemoryResource):
    def __init__(self) -> None: ...

class DeviceResource(MemoryResource):
    def __init__(self, device: SupportsIndex = 0) -> None: ...

class PoolResource(MemoryResource):
    def __init__(self, upstream: MemoryResource, limit: SupportsIndex = 0, name: str = "") -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def trim(self) -> int:
        """Returns what it held and no longer holds, in bytes."""
    @property
    def limit(self) -> int: ...
    @limit.setter
    def limit(self, value: SupportsIndex) -> None: ...
    @property
    def upstream(self) -> MemoryResource: ...
    @staticmethod
    def size_class_of(bytes: SupportsIndex) -> int: ...

def host_pool() -> PoolResource: ...
def pinned_pool() -> PoolResource: ...
def device_pool(device: SupportsIndex = 0) -> PoolResource: ...
def shm_pool() -> PoolResource: ...
def shm_segments() -> dict[str, int]: ...  # segments, bytes_mapped

# --- tensors --------------------------------------------------------------------------------

class Tensor:
    """A typed, shaped view of a buffer (host or device); the buffer protocol on host memory."""

    @staticmethod
    def from_numpy(array: np.ndarray, datatype: str | None = None) -> Tensor: ...
    @staticmethod
    def from_buffer(data: Buffer, datatype: str, shape: Sequence[SupportsIndex]) -> Tensor: ...
    @staticmethod
    def empty(
        datatype: str, shape: Sequence[SupportsIndex], resource: MemoryResource | None = None,
        byte_size: SupportsIndex = 0,
    ) -> Tensor: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def device(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def data_ptr(self) -> int: ...
    @property
    def read_only(self) -> bool: ...
    def numpy(self) -> np.ndarray: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...
    def __dlpack__(
        self, *, stream: Any = None, max_version: tuple[int, int] | None = None, dl_device: Any = None,
        copy: bool | None = None,
    ) -> CapsuleType: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def tobytes(self) -> bytes: ...
    def slice_rows(self, begin: SupportsIndex, end: SupportsIndex) -> Tensor: ...
    def __len__(self) -> int: ...

def gather(tensors: Sequence[Tensor], resource: MemoryResource | None = None) -> Tensor:
    """The tensors concatenated along the first dimension, in one new buffer."""

def release_python_owners() -> None: ...
def parked_python_owners() -> int: ...

# --- backends, completions, models ----------------------------------------------------------

class NativeBackend:
    """A backend run entirely in the core (``identity``, ...), for tests and benchmarks."""

    def __init__(
        self, kind: str = "identity", delay_us: SupportsIndex = 0, output_names: Sequence[str] = (),
        device_memory: bool = True,
    ) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def delay_us(self) -> int: ...

class ProcessInstances:
    """The worker processes of one version (Note [Process instances]); a Model's backend."""

    def __init__(
        self, label: str, argv: Sequence[str], *, init: bytes = b"", execute_timeout_s: float = 0.0,
        stop_timeout_s: float = 10.0, spin_us: SupportsIndex = 100, max_batch_size: SupportsIndex = 0,
        outputs: Sequence[tuple[str, str, Sequence[SupportsIndex]]] = (), max_crashes: SupportsIndex = 5,
        crash_window_s: float = 60.0, log: Callable[[int, str, bool], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None: ...
    def workers(self) -> list[dict[str, int]]: ...  # instance, pid, starts, pss_bytes
    def stats(self) -> dict[str, Any]: ...  # batches, control_messages, control_bytes, starts, crashes, failed

class Pending:
    """One submitted request: its completion, status and outputs."""

    @property
    def id(self) -> int: ...
    @property
    def tag(self) -> int: ...
    def done(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def cancel(self) -> bool: ...
    def outputs(self, as_numpy: bool = True) -> dict[str, Any]: ...
    @property
    def status_code(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def timings(self) -> dict[str, int]: ...
    @property
    def trace(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """Note [Request spans]: (batch_id, enqueue_ns, dispatch_ns, compute_start_ns, input_ns,
        infer_ns, output_ns, batch_requests, batch_traced, batch_rows), steady-clock nanoseconds."""
    def inputs(self, as_numpy: bool = False) -> dict[str, Any]:
        """The request's inputs, when it was submitted with ``observe & 2``."""
    def encode_response(
        self, where: str, model_name: str, model_version: str, id: str, streamed: bool, limit: SupportsIndex
    ) -> bytes:
        """The outputs as a serialized ModelInferResponse (ModelStreamInferResponse when streamed)."""

class DriftMonitor:
    """Input drift of one model version (Note [Input drift] in csrc/monitor/drift_monitor.h)."""

    def __init__(
        self, model: str, inputs: Sequence[tuple[str, str, Sequence[SupportsIndex]]], *, batched: bool,
        reference_requests: SupportsIndex = 1000, window_requests: SupportsIndex = 1000,
        max_features: SupportsIndex = 64, rows_per_request: SupportsIndex = 8,
    ) -> None: ...
    def add_reference(self, input: str, rows: Tensor) -> None: ...
    def complete_reference(self) -> None: ...
    def snapshot(self) -> dict[str, Any]:
        """reference_complete, reference_from_data, reference_requests, window_requests, inputs,
        summarized, and features: [{input, feature, psi, ks (None unless continuous)}]."""

class CompletionQueue:
    """Completed requests handed to one reader; ``fileno`` becomes readable when there are some."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[Pending]: ...
    @property
    def wakeups(self) -> int: ...

class Model:
    """One model version's queue, batcher and instances. Extra keyword arguments are its
    dynamic batching settings (as ``set_batching``)."""

    def __init__(
        self, name: str, version: SupportsIndex = 1, *, backend: Any, instance_count: SupportsIndex = 1,
        device: str = "cpu", inputs: Sequence[tuple[str, str, Sequence[SupportsIndex]]] = (),
        outputs: Sequence[tuple[str, str, Sequence[SupportsIndex]]] = (), **batching: Any,
    ) -> None:
        """``inputs``/``outputs``: (name, datatype, shape) of each tensor."""
    def submit(
        self, inputs: Mapping[str, Any], *, outputs: Sequence[str] = (), priority: SupportsIndex = 0,
        timeout_us: SupportsIndex = 0, queue: CompletionQueue | None = None, tag: SupportsIndex = 0,
        observe: SupportsIndex = 0,
    ) -> Pending:
        """``observe``: 1 counts the request as traced in its batch, 2 keeps its inputs in its
        response (Note [Request spans]; modelserve.observe.Watch.flags)."""
    def run(
        self, inputs: Mapping[str, Any], *, outputs: Sequence[str] = (), priority: SupportsIndex = 0,
        timeout_us: SupportsIndex = 0, observe: SupportsIndex = 0,
    ) -> Pending:
        """Submits and waits: a completed Pending; an idle instance may run it on this thread
        (Note [Caller runs])."""
    def submit_parsed(
        self, request: _Protocol.ParsedInferRequest, where: str, *, priority: SupportsIndex = 0,
        timeout_us: SupportsIndex = 0, queue: CompletionQueue | None = None, tag: SupportsIndex = 0,
        observe: SupportsIndex = 0,
    ) -> Pending:
        """Decodes, checks and enqueues a ``protocol.ParsedInferRequest`` (Note [Native request path])."""
    def set_instance_count(self, count: SupportsIndex, /) -> None: ...
    @property
    def instance_count(self) -> int: ...
    def set_batching(self, **batching: Any) -> None: ...
    def batching(self) -> dict[str, Any]: ...
    def set_drift_monitor(self, monitor: DriftMonitor | None) -> None:
        """Counts every batch's inputs into ``monitor`` from now on (Note [Input drift]); None stops."""
    def shutdown(self, drain: bool = True, drain_timeout_s: float = 0.0) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def device(self) -> str: ...
    def stats(self) -> dict[str, Any]: ...

# --- submodules -----------------------------------------------------------------------------

class _Cuda(ModuleType):
    """``modelserve._core.cuda``: what the core was built with and sees."""

    def compiled(self) -> bool: ...
    def device_count(self) -> int: ...
    def is_available(self) -> bool: ...
    def device_name(self, device: SupportsIndex, /) -> str: ...
    def runtime_version(self) -> str: ...

class _Protocol(ModuleType):
    """``modelserve._core.protocol``: the native ModelInferRequest parser (csrc/protocol/)."""

    class ParsedInferRequest:
        @property
        def model_name(self) -> str: ...
        @property
        def model_version(self) -> str: ...
        @property
        def id(self) -> str: ...
        @property
        def parameters(self) -> dict[str, Any]: ...
        @property
        def input_count(self) -> int: ...
        @property
        def output_count(self) -> int: ...
        @property
        def raw_count(self) -> int: ...
        @property
        def buffer_address(self) -> int: ...
        @property
        def buffer_size(self) -> int: ...
        @property
        def buffer(self) -> Any:
            """The object whose bytes were parsed."""
        def raw(self, i: SupportsIndex) -> memoryview:
            """raw_input_contents[i] as a memoryview into the parsed buffer (no copy)."""
        def raw_address(self, i: SupportsIndex) -> int: ...
        def decode(self, input: SupportsIndex, field: str, datatype: str) -> bytes:
            """inputs[input].contents.<field> decoded as datatype elements, as bytes."""
        def to_dict(self) -> dict[str, Any]:
            """Test only: every field, typed contents as lists."""

    def parse(self, buffer: Buffer) -> _Protocol.ParsedInferRequest:
        """Parses a serialized ModelInferRequest; InvalidArgumentError naming the field and byte
        where it is not valid."""

    def http_request(
        self,
        body: Buffer,
        inputs: Sequence[tuple[str, str, Sequence[int], tuple[int, int] | Tensor]],
        *,
        outputs: Sequence[str] = ...,
        single_input: bool = False,
    ) -> _Protocol.ParsedInferRequest:
        """An HTTP request, its JSON header parsed by the frontend, as a ParsedInferRequest (Note
        [HTTP requests]): each input's binary data as (offset, size) in ``body``, or a Tensor
        decoded from JSON values; ``single_input``: the whole body is the model's one input."""

    def decode(
        self,
        request: _Protocol.ParsedInferRequest,
        where: str,
        *,
        model_inputs: Sequence[tuple[str, str, Sequence[int]]] | None = None,
        batched: bool = False,
    ) -> tuple[dict[str, Tensor], list[str]]:
        """(inputs as {name: Tensor}, requested output names): submit_parsed's decode and checks;
        ``model_inputs`` and ``batched`` describe the model for a raw single-input HTTP request."""

class _Bench(ModuleType):
    """``modelserve._core._bench``: native measurement loops for bench/micro."""

    class LatencyTarget:
        """The batcher's latency planner on its own (Note [Latency target]); times in µs."""

        def __init__(self) -> None: ...
        def on_arrival(self, rows: SupportsIndex, t_us: float) -> None: ...
        def on_batch(self, rows: SupportsIndex, compute_ns: SupportsIndex) -> None: ...
        def compute_us(self, rows: float) -> float: ...
        def compute_p99_us(self, rows: float) -> float: ...
        def plan(
            self, target_us: SupportsIndex, max_batch_size: SupportsIndex, instances: SupportsIndex, now_us: float
        ) -> dict[str, int]:
            """{"rows", "cap", "delay_us"}: the batch size to wait for, the largest, the delay."""

    def allocate_free(
        self, resource: MemoryResource, bytes: SupportsIndex, iterations: SupportsIndex = 100000,
        rounds: SupportsIndex = 11,
    ) -> list[float]: ...
    def stress(
        self, resource: MemoryResource, threads: SupportsIndex = 4, iterations: SupportsIndex = 2000,
        max_bytes: SupportsIndex = 65536, seed: SupportsIndex = 0,
    ) -> dict[str, Any]: ...
    def scheduler_overhead(
        self, submitters: SupportsIndex, requests_per_submitter: SupportsIndex, max_batch_size: SupportsIndex = 64,
        max_queue_delay_us: SupportsIndex = 0, instances: SupportsIndex = 1, sample_stats: bool = False,
    ) -> dict[str, Any]: ...

class _Gen(ModuleType):
    """``modelserve._core.gen``: continuous batching over a paged KV cache (csrc/gen/)."""

    def block_hash(self, parent: SupportsIndex, tokens: Sequence[SupportsIndex] | np.ndarray) -> int: ...

    class KvBlocks:
        def __init__(self, num_blocks: SupportsIndex, block_size: SupportsIndex) -> None: ...
        @property
        def available(self) -> int: ...
        def allocate(self) -> int | None: ...
        def retain(self, block: SupportsIndex, /) -> None: ...
        def release(self, block: SupportsIndex, /) -> None: ...
        def lookup(self, hash: SupportsIndex, tokens: Sequence[SupportsIndex] | np.ndarray, /) -> int | None: ...
        def publish(self, block: SupportsIndex, hash: SupportsIndex, tokens: Sequence[SupportsIndex] | np.ndarray, /) -> None: ...
        def stats(self) -> dict[str, int]: ...

    class Scheduler:
        def __init__(
            self, *, block_size: SupportsIndex = 16, num_blocks: SupportsIndex, max_num_seqs: SupportsIndex = 64,
            max_num_batched_tokens: SupportsIndex = 2048, max_model_len: SupportsIndex = 1024,
            prefix_caching: bool = True,
        ) -> None: ...
        def add(
            self, id: SupportsIndex, prompt: Sequence[SupportsIndex] | np.ndarray, *, priority: SupportsIndex = 0,
            timeout_s: float | None = None,
        ) -> None: ...
        def abort(self, id: SupportsIndex) -> bool: ...
        def has_work(self) -> bool: ...
        # ids, starts, counts, sample, block_tables, tokens, positions, slots (numpy), expired, preempted
        def schedule(self) -> dict[str, Any]: ...
        def complete(self, sampled: Sequence[SupportsIndex], finished: Sequence[SupportsIndex]) -> None: ...
        def stats(self) -> dict[str, Any]: ...

cuda: _Cuda
protocol: _Protocol
gen: _Gen
_bench: _Bench
