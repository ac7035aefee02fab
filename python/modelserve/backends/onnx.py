"""The ``onnx`` backend: ``<version>/model.onnx`` run by onnxruntime (``pip install 'modelserve[onnx]'``).

Each instance gets its own ``onnxruntime.InferenceSession`` (``self.session``), created in
``load()`` with graph optimisation level "all".

Threads (``parameters`` in config.yaml)::

    parameters:
      intra_op_threads: 4     # default: max(1, usable CPUs // instances.count)
      inter_op_threads: 1     # default: 1
      allow_spinning: false   # default: false

The default intra-op pool splits the CPUs this process may use (``os.sched_getaffinity``, else
``os.cpu_count()``) evenly between the model's instances, so one instance uses every core and N
instances do not oversubscribe them. ``0`` means onnxruntime's own default (one thread per physical
core, per session). onnxruntime only uses inter-op threads in parallel execution mode, so
``inter_op_threads > 1`` also switches the session to ``ORT_PARALLEL``.

onnxruntime's pool threads spin-wait between runs by default. In a server those cycles are taken
from the event loop and the other instances (measured: a spinning worker cost ~1 ms of CPU per
request at ~1000 requests/s on two cores), so modelserve turns spinning off; ``allow_spinning:
true`` turns it back on for a process that does nothing but one model (a few percent faster).

Devices: on ``cuda:N`` the session uses ``CUDAExecutionProvider`` with ``device_id=N`` (and the
CPU provider for the operators CUDA lacks) when onnxruntime offers it
(``onnxruntime.get_available_providers()``, i.e. the ``onnxruntime-gpu`` build); otherwise it runs
on the CPU and logs a warning.

Datatypes: BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32 and FP64 map to their numpy types. BYTES
are ONNX string tensors, which are text: ``bytes`` elements are decoded as UTF-8 on the way in and
string outputs come back as object arrays of UTF-8 ``bytes``. BF16 is refused at load: numpy has
no bfloat16 and onnxruntime's Python API cannot return bfloat16 outputs as numpy arrays, so a
model with bfloat16 inputs or outputs fails to load with a message saying so (cast to float16 or
float inside the graph). :meth:`OnnxBackend.signature` still reports such tensors as BF16.

Logging: onnxruntime prints its own log lines to stderr (``[W:onnxruntime:...]``, coloured),
outside Python's logging, so its severity follows the level of this module's logger (what
``modelserve serve --log-level`` sets, or the application's logging configuration): DEBUG shows
onnxruntime's INFO and above, INFO and WARNING its warnings and above, ERROR its errors, CRITICAL
only fatal ones (onnxruntime's own INFO and VERBOSE lines are its developers' diagnostics, not
operator events). The session's, the default logger's (``set_default_logger_severity``) and each
run's severity are set when an instance loads. A failed run is not logged by onnxruntime except
at DEBUG: it raises, and its message reaches the caller as a modelserve error (below), so an
``[E:onnxruntime:...]`` line would only repeat it outside the log format.

Run-time errors: onnxruntime's ``InvalidArgument`` (wrong names, datatypes or ranks) raises
:class:`~modelserve.errors.InvalidArgumentError`, any other of its errors (``Fail``,
``RuntimeException``, ``EPFail``, ...: a kernel that failed on these values, such as a Reshape to
a size the input does not have) :class:`~modelserve.errors.InternalError`; both messages name the
model and version and carry onnxruntime's message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InternalError, InvalidArgumentError
from .base import Backend, MissingExtraError, register

if TYPE_CHECKING:
    from ..config import ModelConfig, TensorConfig

__all__ = ["OnnxBackend", "ORT_TYPES"]

_log = logging.getLogger(__name__)

#: onnxruntime's type strings to the protocol's datatypes.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnx", "onnxruntime", "onnx") from None
    return onnxruntime


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def log_severity(level: int | None = None) -> int:
    """onnxruntime's log severity (0 verbose, 1 info, 2 warning, 3 error, 4 fatal) for a Python
    logging level (default: the effective level of this module's logger); see the module
    docstring."""
    if level is None:
        level = _log.getEffectiveLevel()
    if level <= logging.DEBUG:
        return 1
    if level <= logging.WARNING:
        return 2
    if level <= logging.ERROR:
        return 3
    return 4


def run_log_severity(level: int | None = None) -> int:
    """The severity of each run's log: fatal only (a failed run raises instead), but at DEBUG
    that of the session."""
    severity = log_severity(level)
    return severity if severity <= 1 else 4


def session_options(parameters: Any, instance_count: int = 1, label: str = "model") -> Any:
    """The ``onnxruntime.SessionOptions`` an instance gets from config ``parameters`` (see the
    module docstring); benchmarks build their bare sessions with it too, so they compare like
    with like."""
    ort = _ort()

    def threads(key: str, default: int) -> int:
        value = parameters.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(
                f"{label}: parameters.{key}: expected an integer >= 0 (0 = onnxruntime's default), got {value!r}"
            )
        return value

    options = ort.SessionOptions()
    options.log_severity_level = log_severity()
    options.intra_op_num_threads = threads("intra_op_threads", max(1, usable_cpus() // instance_count))
    options.inter_op_num_threads = threads("inter_op_threads", 1)
    if options.inter_op_num_threads > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    spin = parameters.get("allow_spinning", False)
    if not isinstance(spin, bool):
        raise InvalidArgumentError(f"{label}: parameters.allow_spinning must be true or false, got {spin!r}")
    for pool in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        options.add_session_config_entry(pool, "1" if spin else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _open(ort: Any, path: Path, options: Any, providers: list) -> Any:
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such model file")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception
        raise InvalidArgumentError(f"{path}: onnxruntime cannot load the model: {e}") from e


def _datatype(path: Path, kind: str, name: str, ort_type: str) -> str:
    try:
        return ORT_TYPES[ort_type]
    except KeyError:
        raise InvalidArgumentError(
            f"{path}: {kind} '{name}' has type {ort_type}, which has no protocol datatype; "
            f"supported: {', '.join(ORT_TYPES)}"
        ) from None


def _text(name: str, x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            return bytes(x).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgumentError(
                f"input '{name}': ONNX string tensors hold text, and an element is not valid UTF-8 ({e.reason})"
            ) from None
    raise InvalidArgumentError(f"input '{name}': BYTES elements must be bytes or str, got {type(x).__name__}")


def _decode(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as onnxruntime wants string tensors: str elements."""
    if array.dtype.kind == "U":
        return array
    flat = [_text(name, x) for x in array.ravel()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


def _encode(array: np.ndarray) -> np.ndarray:
    """A string output as the protocol's BYTES: an object array of UTF-8 bytes."""
    flat = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.ravel()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


def _ort_message(error: Exception) -> str:
    """onnxruntime's message, as one line: ``[ONNXRuntimeError] : 1 : FAIL : ...`` keeps the
    status name and drops the trailing newline."""
    return " ".join(str(error).split("\n")).strip()


@register
class OnnxBackend(Backend):
    name = "onnx"
    model_file = "model.onnx"

    session: Any = None

    def load(self) -> None:
        ort = _ort()
        ctx = self.context
        path = ctx.version_dir / self.model_file

        options = session_options(ctx.parameters, ctx.config.instances.count, ctx.label)
        ort.set_default_logger_severity(options.log_severity_level)
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = run_log_severity()

        providers: list = ["CPUExecutionProvider"]
        if ctx.device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                device_id = int(ctx.device.partition(":")[2] or 0)
                providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            else:
                _log.warning(
                    "%s instance %d: device %s requested but onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu); running on the CPU",
                    ctx.label, ctx.instance, ctx.device,
                )

        session = _open(ort, path, options, providers)
        if len(providers) > 1 and "CUDAExecutionProvider" not in session.get_providers():
            _log.warning(
                "%s instance %d: onnxruntime could not start CUDAExecutionProvider on %s; running on the CPU",
                ctx.label, ctx.instance, ctx.device,
            )
        for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
            for arg in args:
                if _datatype(path, kind, arg.name, arg.type) == "BF16":
                    raise InvalidArgumentError(
                        f"{path}: {kind} '{arg.name}' is bfloat16, which onnxruntime's Python API cannot "
                        "exchange as numpy arrays; cast it to float16 or float inside the graph, or serve "
                        "the model with the python backend"
                    )
        self._string_inputs = {a.name for a in session.get_inputs() if a.type == "tensor(string)"}
        self._output_names = [a.name for a in session.get_outputs()]
        self._string_outputs = {a.name for a in session.get_outputs() if a.type == "tensor(string)"}
        state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
        self._invalid_argument = getattr(state, "InvalidArgument", ())
        # onnxruntime's own errors (Fail, RuntimeException, EPFail, ...) are the classes of its
        # extension module; Python's (a TypeError for a feed it cannot take) are not among them.
        self._ort_errors = tuple(
            cls for cls in vars(state).values() if isinstance(cls, type) and issubclass(cls, Exception)
        ) if state is not None else ()
        self.session = session

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session
        if session is None:
            raise InvalidArgumentError(f"{self.context.label}: execute() before load()")
        feeds = {
            name: _decode(name, array) if name in self._string_inputs else array
            for name, array in inputs.items()
        }
        try:
            results = session.run(self._output_names, feeds, self._run_options)
        except self._invalid_argument as e:  # wrong names, datatypes or ranks
            raise InvalidArgumentError(f"{self.context.label}: {_ort_message(e)}") from e
        except self._ort_errors as e:  # a kernel failed on these values, or the provider did
            raise InternalError(
                f"{self.context.label}: onnxruntime failed to run the model: {_ort_message(e)}"
            ) from e
        return {
            name: _encode(value) if name in self._string_outputs else value
            for name, value in zip(self._output_names, results)
        }

    def unload(self) -> None:
        self.session = None

    @classmethod
    def signature(
        cls, version_dir: Path, config: "ModelConfig"
    ) -> tuple[list["TensorConfig"], list["TensorConfig"]]:
        """The model's inputs and outputs. Symbolic and unknown dimensions read as -1. With
        ``max_batch_size > 0`` the first dimension is the batch and is left out; a model whose
        first dimension is fixed (or that has a scalar input or output) cannot batch, which raises."""
        from ..config import TensorConfig

        ort = _ort()
        path = version_dir / cls.model_file
        options = ort.SessionOptions()
        options.log_severity_level = log_severity()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = _open(ort, path, options, ["CPUExecutionProvider"])

        def convert(kind: str, arg: Any) -> TensorConfig:
            datatype = _datatype(path, kind, arg.name, arg.type)
            shape = [d if isinstance(d, int) and d >= 1 else -1 for d in (arg.shape or [])]
            if config.max_batch_size > 0:
                if not shape or shape[0] != -1:
                    shown = "a scalar" if not shape else f"shape {list(arg.shape)}"
                    raise InvalidArgumentError(
                        f"{path}: {kind} '{arg.name}' has {shown}, whose first dimension is not a variable "
                        f"batch dimension, so the model cannot batch; set max_batch_size: 0 (shapes then "
                        f"include every dimension) or export the model with a dynamic first dimension"
                    )
                shape = shape[1:]
            return TensorConfig(name=arg.name, datatype=datatype, shape=shape)

        inputs = [convert("input", a) for a in session.get_inputs()]
        outputs = [convert("output", a) for a in session.get_outputs()]
        return inputs, outputs
