"""One model version's lifecycle: LOADING -> WARMING -> READY -> DRAINING -> UNLOADED, or FAILED.

Note [Version lifecycle]
~~~~~~~~~~~~~~~~~~~~~~~~
A ModelVersion is created LOADING: its backend instances are built and loaded and its engine
(the native batcher and executor) starts. WARMING runs the config's warmup requests through that
engine. Only then is it READY and can take traffic. Any failure on the way is FAILED, with the
reason; a FAILED version never served and holds nothing. Taking a READY version out of service is
DRAINING: routing stops handing it out first (ModelVersion.route() refuses it), then requests
already being submitted finish entering the queue, the queue runs dry, the instances stop and
the backends unload; then UNLOADED. The transitions are the only ones allowed
(``TRANSITIONS``); each is logged and kept in ``history`` with its time and reason, and the
duration of each phase is in ``phases``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import cuda
from ..autoscale import Scaler, ScaleEvent, ScalingPolicy
from ..backends import Backend, BackendContext, get as get_backend
from ..backends import python as python_backend
from ..backends.process import process_instances
from ..config import ModelConfig, TensorConfig
from ..engine import ModelEngine
from ..observe.drift import InputDrift
from ..errors import InternalError, InvalidArgumentError, UnavailableError
from ..memory_budget import MemoryBudget, folder_bytes, format_bytes, rss_bytes
from ..tensor import Tensor

__all__ = ["VersionState", "Transition", "ModelVersion", "resolve_io", "TRANSITIONS"]

log = logging.getLogger("modelserve.repository")


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


S = VersionState
TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    S.LOADING: frozenset({S.WARMING, S.FAILED}),
    S.WARMING: frozenset({S.READY, S.FAILED}),
    S.READY: frozenset({S.DRAINING, S.FAILED}),  # FAILED: its worker processes kept crashing
    S.DRAINING: frozenset({S.UNLOADED}),
    S.UNLOADED: frozenset(),
    S.FAILED: frozenset(),
}


@dataclass(frozen=True)
class Transition:
    state: VersionState
    at: float  # time.time()
    reason: str = ""


def resolve_io(
    name: str, version_dir: Path, config: ModelConfig, backend: type[Backend]
) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """The inputs and outputs a version serves: the config's, filled from (and checked against)
    the model's own signature where the format records one. A contradiction is a load error that
    states both sides."""
    signature = backend.signature(version_dir, config)
    if signature is None:
        return list(config.inputs), list(config.outputs)
    errors = []
    resolved = []
    for kind, declared, actual in (("inputs", config.inputs, signature[0]), ("outputs", config.outputs, signature[1])):
        if not declared:
            resolved.append(list(actual))
            continue
        by_name = {t.name: t for t in actual}
        for i, t in enumerate(declared):
            m = by_name.get(t.name)
            where = f"model '{name}': config.yaml {kind}[{i}] '{t.name}'"
            model_file = version_dir / backend.model_file
            if m is None:
                errors.append(f"{where}: the model ({model_file}) has no such {kind[:-1]}; it has {sorted(by_name)}")
            elif m.datatype != t.datatype or not _dims_agree(t.shape, m.shape):
                errors.append(
                    f"{where}: config says {t.datatype} {t.shape}, the model ({model_file}) says {m.datatype} {m.shape}"
                )
        if kind == "inputs":
            missing = sorted(set(by_name) - {t.name for t in declared})
            if missing:
                errors.append(f"model '{name}': config.yaml inputs omit {missing}, which the model requires")
        resolved.append(list(declared))
    if errors:
        raise InvalidArgumentError("\n".join(errors))
    return resolved[0], resolved[1]


def _dims_agree(declared: list[int], actual: list[int]) -> bool:
    return len(declared) == len(actual) and all(a == -1 or d == a for d, a in zip(declared, actual))


_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "BF16": np.uint16, "FP32": np.float32, "FP64": np.float64,
}


def warmup_inputs(spec: TensorConfig, rows: int | None, data: str, rng: np.random.Generator) -> Any:
    """Warmup data for one input: ``rows`` prepended when the model batches; -1 dims become 1."""
    shape = ([rows] if rows is not None else []) + [1 if d == -1 else d for d in spec.shape]
    if spec.datatype == "BYTES":
        n = int(np.prod(shape))
        items = [b"" if data == "zero" else rng.bytes(int(rng.integers(1, 16))) for _ in range(n)]
        return np.array(items, dtype=object).reshape(shape)
    dtype = _NUMPY[spec.datatype]
    if data == "zero":
        array = np.zeros(shape, dtype)
    elif spec.datatype == "BOOL":
        array = rng.integers(0, 2, shape).astype(np.bool_)
    elif spec.datatype in ("FP16", "FP32", "FP64"):
        array = rng.standard_normal(shape).astype(dtype)
    elif spec.datatype == "BF16":
        array = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        array = rng.integers(0, 100, shape).astype(dtype)
    return Tensor.from_numpy(array, spec.datatype) if spec.datatype == "BF16" else array


class ModelVersion:
    """A loaded (or loading, or failed) version of a model; see Note [Version lifecycle]."""

    def __init__(
        self, name: str, version: int, path: Path, config: ModelConfig, backend: str, budget: MemoryBudget | None = None
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config
        self.backend_name = backend
        self.inputs: list[TensorConfig] = list(config.inputs)
        self.outputs: list[TensorConfig] = list(config.outputs)
        self.engine: ModelEngine | None = None
        self.workers: Any = None  # the core's ProcessInstances with instances.isolation: process
        self.generator: Any = None  # a generative backend's GenerationEngine (then no engine)
        self.drift: InputDrift | None = None  # its numeric inputs against a reference (config drift)
        self.phases: dict[str, float] = {}
        self.history: list[Transition] = [Transition(S.LOADING, time.time(), "")]
        self._backends: list[Backend] = []  # guarded by _lock: the live instances' backends
        self._instances: weakref.WeakSet[_Instance] = weakref.WeakSet()  # guarded by _lock
        self._lock = threading.Condition()
        self._submitting = 0  # guarded by _lock: requests between route() and their enqueue
        # Autoscaling and memory (Note [Autoscaling rule], Note [Memory budget]).
        self.budget = budget
        self.device = "cpu"
        self.scaling = ScalingPolicy.from_config(config.instances, config.max_batch_size)
        self.scaler = Scaler(self.scaling)
        self.instances = 0  # guarded by _lock (written under _scale_lock too); read unlocked on the hot path
        self.last_used = time.monotonic()
        self.memory: dict[str, int] = {}  # footprint: weights_bytes, measured_bytes, per_instance_bytes
        self.scale_events: dict[str, int] = {"up": 0, "down": 0, "to_zero": 0, "cold_start": 0}
        self.last_cold_start_s: float | None = None
        self._scale_lock = threading.Lock()  # one change of the instance count at a time
        self._scaler_lock = threading.Lock()  # guards scaler (the ticker observes, the API resets)
        self._waking = False  # guarded by _lock: a cold start is under way
        log.info("model '%s' version %d: LOADING from %s", name, version, path)

    # --- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> VersionState:
        return self.history[-1].state

    @property
    def reason(self) -> str:
        return self.history[-1].reason

    @property
    def label(self) -> str:
        return f"model '{self.name}' version {self.version}"

    def _move(self, state: VersionState, reason: str = "") -> None:
        with self._lock:
            current = self.state
            if state not in TRANSITIONS[current]:
                raise InternalError(f"{self.label}: illegal transition {current.value} -> {state.value}")
            self.history.append(Transition(state, time.time(), reason))
        (log.error if state is S.FAILED else log.info)(
            "%s: %s%s", self.label, state.value, f" ({reason})" if reason else ""
        )

    def describe(self) -> dict[str, Any]:
        described = {
            "version": self.version,
            "state": self.state.value,
            "reason": self.reason,
            "backend": self.backend_name,
            "phases": dict(self.phases),
            "history": [{"state": t.state.value, "at": t.at, "reason": t.reason} for t in self.history],
        }
        if self.drift is not None:
            described["drift"] = self.drift.status()
        if self.workers is not None:  # process instances: pid, starts and memory of each worker
            described["workers"] = self.workers.workers()
            described["worker_stats"] = self.workers.stats()
        return described

    # --- loading --------------------------------------------------------------------------------
    def load(self) -> "ModelVersion":
        """LOADING -> WARMING -> READY; on any error FAILED (with the reason) and re-raised."""
        try:
            t0 = time.monotonic()
            backend = get_backend(self.backend_name)
            cfg = self.config
            if backend.generative:
                return self._load_generative(t0)
            self.inputs, self.outputs = resolve_io(self.name, self.path, self.config, backend)
            device = cfg.instances.device
            isolated = cfg.instances.isolation == "process"
            if isolated and self.backend_name != "python":
                raise InvalidArgumentError(
                    f"{self.label}: instances.isolation: process is for the python backend, not '{self.backend_name}' "
                    "(its framework releases the GIL already; use isolation: thread)"
                )
            if device == "auto":
                device = "cuda:0" if cuda.is_available() and not isolated else "cpu"
            elif device == "gpu":
                device = "cuda:0"
            self.device = device
            weights = folder_bytes(self.path)
            self.memory = {"weights_bytes": weights, "per_instance_bytes": weights}
            if self.budget is not None:
                self.budget.reserve(self, device, weights * cfg.instances.count, f"{self.label} (estimated from its files)")
            rss0 = rss_bytes()
            if isolated:
                self.workers = process_instances(self.name, self.version, self.path, cfg,
                                                 [t.as_spec() for t in self.outputs], on_failed=self._workers_failed)
            self.engine = ModelEngine(
                self.name,
                self.workers if isolated else (lambda instance, dev: self._make_backend(backend, instance, dev)),
                version=self.version,
                max_batch_size=cfg.max_batch_size,
                dynamic_batching=cfg.batching_settings(),
                instance_count=cfg.instances.count,
                device=device,
                inputs=[t.as_spec() for t in self.inputs],
                outputs=[t.as_spec() for t in self.outputs],
            )
            self.phases["load_s"] = time.monotonic() - t0
            self._move(S.WARMING)
            t1 = time.monotonic()
            self._warmup()
            self.phases["warmup_s"] = time.monotonic() - t1
            self._watch_drift()
            self.instances = cfg.instances.count
            # A worker's proportional set size: pages it shares (with the server, the other
            # workers) count once, split between the processes that map them.
            self._measure(self.workers_memory() if isolated else rss_bytes() - rss0)
            self._move(S.READY)
            return self
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}" if not str(e).startswith(("model '",)) else str(e)
            self._release(drain=False)
            self._move(S.FAILED, reason)
            raise

    def _watch_drift(self) -> None:
        """From now on (after warmup: it is not traffic) the core counts the numeric inputs of every
        batch against a reference (Note [Input drift] in csrc/monitor/drift_monitor.h)."""
        if not self.config.drift.enabled or all(t.datatype == "BYTES" for t in self.inputs):
            return
        assert self.engine is not None
        self.drift = InputDrift(self.label, [t.as_spec() for t in self.inputs], batched=self.config.max_batch_size > 0,
                                config=self.config.drift, folders=(self.path, self.path.parent))
        self.engine.set_drift_monitor(self.drift.monitor)

    def _load_generative(self, t0: float) -> "ModelVersion":
        """LOADING -> WARMING -> READY for a generative backend: its GenerationEngine (weights, KV
        cache, scheduler thread) instead of a ModelEngine; there is no warmup."""
        from ..config import GenerationConfig
        from ..generation import GenerationEngine

        settings = (self.config.generation or GenerationConfig()).model_dump()
        weights = folder_bytes(self.path)
        self.memory = {"weights_bytes": weights, "per_instance_bytes": weights}
        if self.budget is not None:
            self.budget.reserve(self, self.device, weights, f"{self.label} (estimated from its files)")
        rss0 = rss_bytes()
        self.generator = GenerationEngine(self.path, name=self.name, **settings)
        # What the Open Inference Protocol sees (Triton's generate convention): text in, text out.
        self.inputs = [TensorConfig(name="text_input", datatype="BYTES", shape=[1])]
        self.outputs = [TensorConfig(name="text_output", datatype="BYTES", shape=[1])]
        self.phases["load_s"] = time.monotonic() - t0
        self._move(S.WARMING)
        self.instances = 1
        self._measure(rss_bytes() - rss0)
        self._move(S.READY)
        return self

    def workers_memory(self) -> int:
        """The summed proportional set size of this version's worker processes (0 for thread
        instances)."""
        return sum(w["pss_bytes"] for w in self.workers.workers()) if self.workers is not None else 0

    def _workers_failed(self, reason: str) -> None:
        """Called on a core thread once the workers crashed too often: READY -> FAILED, and the
        engine stops (queued requests fail with UNAVAILABLE), on a thread of its own."""

        def fail() -> None:
            with self._lock:
                if self.state is not S.READY:
                    return  # a failing load reports its own error; a draining version is going anyway
            try:
                self._move(S.FAILED, reason)
            except InternalError:
                return  # it started draining meanwhile
            self._release(drain=False)

        threading.Thread(target=fail, name="modelserve-version-failed", daemon=True).start()

    def _make_backend(self, cls: type[Backend], instance: int, device: str) -> "_Instance":
        ctx = BackendContext(self.name, self.version, self.path, self.config, device=device, instance=instance)
        backend = cls(ctx)
        backend.load()
        handle = _Instance(backend, f"{self.label} instance {instance}", self._forget_backend)
        with self._lock:
            self._backends.append(backend)
            self._instances.add(handle)
        return handle

    def _forget_backend(self, backend: Backend) -> None:
        with self._lock:
            if backend in self._backends:
                self._backends.remove(backend)

    def _measure(self, grown: int) -> None:
        """Records the measured footprint (Note [Memory budget]) and charges it; a load whose
        measured footprint does not fit the budget fails."""
        count = max(1, self.instances)
        per_instance = max(self.memory["weights_bytes"], grown // count, 1)
        self.memory.update(measured_bytes=max(0, grown), per_instance_bytes=per_instance)
        if self.budget is None:
            return
        estimated = self.memory["weights_bytes"] * count
        extra = per_instance * count - estimated
        if extra > 0:
            self.budget.reserve(self, self.device, extra, f"{self.label} (measured {format_bytes(per_instance)} per "
                                f"instance x {count} after load and warmup; {format_bytes(estimated)} reserved before)")
        else:
            self.budget.charge(self, self.device, per_instance * count)

    def _warmup(self) -> None:
        cfg = self.config
        if not cfg.warmup:
            return
        if not self.inputs:
            raise InvalidArgumentError(f"{self.label}: warmup needs the inputs declared in config.yaml")
        rng = np.random.default_rng(0)
        assert self.engine is not None
        for i, w in enumerate(cfg.warmup):
            rows = w.batch_size if cfg.max_batch_size > 0 else None
            if w.data == "file":
                arrays = self._warmup_file(w.file or "")
                inputs = {t.name: arrays[t.name] for t in self.inputs}
            else:
                inputs = {t.name: warmup_inputs(t, rows, w.data, rng) for t in self.inputs}
            # Enough requests that every instance sees some, all in flight at once.
            pending = [self.engine.submit(inputs) for _ in range(w.count * cfg.instances.count)]
            for p in pending:
                p.wait()
                try:
                    p.outputs(as_numpy=False)
                except Exception as e:
                    raise type(e)(f"{self.label}: warmup[{i}] failed: {e}") from None

    def _warmup_file(self, name: str) -> dict[str, np.ndarray]:
        for folder in (self.path, self.path.parent):
            if (folder / name).exists():
                with np.load(folder / name, allow_pickle=False) as data:
                    missing = [t.name for t in self.inputs if t.name not in data.files]
                    if missing:
                        raise InvalidArgumentError(f"{self.label}: warmup file {folder / name} lacks inputs {missing}")
                    return {k: data[k] for k in data.files}
        raise InvalidArgumentError(f"{self.label}: warmup file '{name}' not found in {self.path} or {self.path.parent}")

    # --- serving --------------------------------------------------------------------------------
    def enter(self) -> bool:
        """Admits one request on its way into the queue; False unless READY. A version scaled to
        zero starts a cold start here (the request waits in the queue meanwhile)."""
        with self._lock:
            if self.state is not S.READY:
                return False
            self._submitting += 1
            self.last_used = time.monotonic()
            if self.instances == 0:
                self._wake_locked()
            return True

    def _wake_locked(self) -> None:
        """Starts a cold start on its own thread unless one is under way (``_lock`` held)."""
        if not self._waking:
            self._waking = True
            threading.Thread(target=self._cold_start, name="modelserve-cold-start", daemon=True).start()

    def leave(self) -> None:
        with self._lock:
            self._submitting -= 1
            if self._submitting == 0:
                self._lock.notify_all()

    def drain(self, reason: str = "") -> None:
        """READY -> DRAINING -> UNLOADED: stop admitting, run what is queued, unload."""
        t0 = time.monotonic()
        self._move(S.DRAINING, reason)
        with self._lock:
            self._lock.wait_for(lambda: self._submitting == 0)
        self._release(drain=True)
        self.phases["drain_s"] = time.monotonic() - t0
        self._move(S.UNLOADED)

    def _release(self, drain: bool) -> None:
        if self.generator is not None:  # a drain lets running generations finish
            self.generator.close(drain=drain)
        if self.engine is not None:
            with self._scale_lock:  # no scaling after this
                # Scaled to zero (or evicted) with requests waiting for a cold start, the engine
                # starts an instance for them (Note [Drain] in csrc/exec/model.h).
                self.engine.close(drain=drain)
        with self._lock:
            handles, self._instances = list(self._instances), weakref.WeakSet()
            self.instances = 0
        for h in handles:
            h.close()
        if self.budget is not None:
            self.budget.release(self)
        if self.backend_name == "python":
            python_backend.forget_module(self.path)

    # --- instances: autoscaling, cold starts, eviction (Note [Autoscaling rule]) ---------------
    def scale(self, count: int, reason: str, *, direction: str | None = None, blocking: bool = True) -> bool:
        """Sets the instance count while serving (queued requests wait, none are lost); reserves
        memory first when growing. Returns False when the version is not READY (any more) or a
        scale-to-zero found a request on its way in. Raises ResourceExhaustedError when the
        memory budget refuses the growth. ``blocking=False`` gives up (False) when another change
        is under way: an eviction must not wait for a version that may be evicting in turn."""
        if count < 0:
            raise InvalidArgumentError(f"{self.label}: instance count must be >= 0, got {count}")
        if not self._scale_lock.acquire(blocking):
            return False
        try:
            return self._scale_locked(count, reason, direction)
        finally:
            self._scale_lock.release()

    def _scale_locked(self, count: int, reason: str, direction: str | None) -> bool:
        with self._lock:
            old = self.instances
            if self.state is not S.READY or self.engine is None or count == old:
                return False
            if count == 0 and self._submitting:
                return False  # a request is entering: it would wait for a cold start
            if count < old:
                self.instances = count  # requests arriving from now on see it (cold start at 0)
        if count > old and self.budget is not None:
            try:
                self.budget.reserve(self, self.device, (count - old) * self.memory["per_instance_bytes"],
                                    f"{self.label} scaling {old} -> {count} instances "
                                    f"of {format_bytes(self.memory['per_instance_bytes'])}")
            except Exception:
                with self._lock:
                    self.instances = old
                raise
        try:
            self.engine.set_instance_count(count)
        except Exception:
            with self._lock:
                self.instances = self.engine.instance_count
            raise
        with self._lock:
            self.instances = count
        if self.budget is not None:
            self.budget.charge(self, self.device, count * self.memory["per_instance_bytes"])
        kind = direction or ("to_zero" if count == 0 else "up" if count > old else "down")
        self.scale_events[kind] = self.scale_events.get(kind, 0) + 1
        log.info("%s: instances %d -> %d (%s)", self.label, old, count, reason)
        return True

    def autoscale_tick(self, now: float) -> ScaleEvent | None:
        """One autoscaling round: observes the load and applies the Scaler's decision."""
        engine = self.engine
        if engine is None or self.state is not S.READY:
            return None
        st = engine.stats()
        requests = st["success_count"] + st["failure_count"]
        with self._scaler_lock:
            event = self.scaler.observe(now, st["queued"], st["in_flight"], self.instances, requests)
        if event is None or not self.scaling.enabled:
            return None
        if event.old == 0:
            with self._lock:
                self._wake_locked()  # not on the ticker's thread: other versions keep their ticks
            return event
        try:
            return event if self.scale(event.new, event.reason) else None
        except Exception as e:  # the budget refused, or the version went away meanwhile
            log.warning("%s: cannot scale %d -> %d: %s", self.label, event.old, event.new, e)
            return None

    def _cold_start(self) -> None:
        t0 = time.monotonic()
        try:
            target = max(self.scaling.min, 1)
            if self.scale(target, "cold start", direction="cold_start"):
                self.last_cold_start_s = time.monotonic() - t0
                log.info("%s: cold start took %.3f s", self.label, self.last_cold_start_s)
        except Exception as e:
            # Requests wait in the queue until their deadline; the next tick tries again.
            log.error("%s: cold start failed: %s", self.label, e)
        finally:
            with self._lock:
                self._waking = False

    def idle(self) -> bool:
        """Nothing queued, running or on its way in (an eviction candidate)."""
        engine = self.engine
        if engine is None or self.instances == 0 or self._submitting:
            return False
        st = engine.stats()
        return st["queued"] == 0 and st["in_flight"] == 0

    def evict(self, reason: str) -> None:
        """Releases every instance (the memory budget needs the room); stays READY and cold-starts
        on the next request."""
        if not self.scale(0, reason, direction="evicted", blocking=False):
            raise UnavailableError(f"{self.label}: cannot evict now (busy or not READY)")

    def set_scaling(self, count: int | None = None, min: int | None = None, max: int | None = None) -> None:
        """Changes the autoscaling bounds and/or the instance count now (runtime settings)."""
        policy = self.scaling.with_bounds(self.label, min, max)
        if count is not None and count != 0 and not policy.min <= count <= policy.max:
            raise InvalidArgumentError(
                f"{self.label}: instance count {count} is outside [min={policy.min}, max={policy.max}]"
            )
        self.scaling = policy
        with self._scaler_lock:
            self.scaler.reset(policy)
        if count is not None:
            self.scale(count, "set by the operator")
        elif self.instances and not policy.min <= self.instances <= policy.max:
            self.scale(policy.clamp(self.instances), f"bounds now [{policy.min}, {policy.max}]")

    def scaling_state(self) -> dict[str, Any]:
        p = self.scaling
        return {
            "count": self.instances,
            "min": p.min,
            "max": p.max,
            "target": p.target,
            "window_s": p.window_s,
            "upscale_delay_s": p.upscale_delay_s,
            "downscale_delay_s": p.downscale_delay_s,
            "tolerance": p.tolerance,
            "scale_to_zero_after_s": p.scale_to_zero_after_s,
            "autoscaling": p.enabled,
            "saturation": self.scaler.saturation,
            "scale_events": dict(self.scale_events),
            "last_cold_start_s": self.last_cold_start_s,
        }


class _Instance:
    """What the core holds for one instance: the backend's ``execute``, and the backend's
    ``unload()`` run when the core lets the instance go (a scale-down retired it, or the engine
    closed), so retired instances give their memory back."""

    __slots__ = ("execute", "_backend", "_label", "_forget", "__weakref__")

    def __init__(self, backend: Backend, label: str, forget: Any) -> None:
        self.execute = backend.execute
        self._backend: Backend | None = backend
        self._label = label
        self._forget = forget

    def close(self) -> None:
        backend, self._backend = self._backend, None
        self.execute = None
        if backend is not None:
            self._forget(backend)
            try:
                backend.unload()
            except Exception:  # an unload failure must not stop the others
                log.exception("%s: backend unload failed", self._label)

    def __del__(self) -> None:
        self.close()
