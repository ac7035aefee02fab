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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import cuda
from ..backends import Backend, BackendContext, get as get_backend
from ..backends import python as python_backend
from ..config import ModelConfig, TensorConfig
from ..engine import ModelEngine
from ..errors import InternalError, InvalidArgumentError
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
    S.READY: frozenset({S.DRAINING}),
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

    def __init__(self, name: str, version: int, path: Path, config: ModelConfig, backend: str) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config
        self.backend_name = backend
        self.inputs: list[TensorConfig] = list(config.inputs)
        self.outputs: list[TensorConfig] = list(config.outputs)
        self.engine: ModelEngine | None = None
        self.phases: dict[str, float] = {}
        self.history: list[Transition] = [Transition(S.LOADING, time.time(), "")]
        self._backends: list[Backend] = []
        self._lock = threading.Condition()
        self._submitting = 0  # guarded by _lock: requests between route() and their enqueue
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
        return {
            "version": self.version,
            "state": self.state.value,
            "reason": self.reason,
            "backend": self.backend_name,
            "phases": dict(self.phases),
            "history": [{"state": t.state.value, "at": t.at, "reason": t.reason} for t in self.history],
        }

    # --- loading --------------------------------------------------------------------------------
    def load(self) -> "ModelVersion":
        """LOADING -> WARMING -> READY; on any error FAILED (with the reason) and re-raised."""
        try:
            t0 = time.monotonic()
            backend = get_backend(self.backend_name)
            self.inputs, self.outputs = resolve_io(self.name, self.path, self.config, backend)
            cfg = self.config
            device = cfg.instances.device
            if device == "auto":
                device = "cuda:0" if cuda.is_available() else "cpu"
            elif device == "gpu":
                device = "cuda:0"
            self.engine = ModelEngine(
                self.name,
                lambda instance, dev: self._make_backend(backend, instance, dev),
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
            self._move(S.READY)
            return self
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}" if not str(e).startswith(("model '",)) else str(e)
            self._release(drain=False)
            self._move(S.FAILED, reason)
            raise

    def _make_backend(self, cls: type[Backend], instance: int, device: str) -> Backend:
        ctx = BackendContext(self.name, self.version, self.path, self.config, device=device, instance=instance)
        backend = cls(ctx)
        backend.load()
        with self._lock:
            self._backends.append(backend)
        return backend

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
        """Admits one request on its way into the queue; False unless READY."""
        with self._lock:
            if self.state is not S.READY:
                return False
            self._submitting += 1
            return True

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
        if self.engine is not None:
            self.engine.close(drain=drain)
        with self._lock:
            backends, self._backends = self._backends, []
        for b in backends:
            try:
                b.unload()
            except Exception:  # an unload failure must not stop the others
                log.exception("%s: backend unload failed", self.label)
        if self.backend_name == "python":
            python_backend.forget_module(self.path)
