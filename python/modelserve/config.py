"""The schema of a model's ``config.yaml`` (DESIGN.md, "Model repository"), validated by pydantic.

Every key is checked; unknown keys are rejected with a "did you mean" hint; every error names the
file, the key path, what was expected and what was found. :func:`load_config` raises one
:class:`ConfigError` listing all of a file's errors at once.

Keys and defaults (``config.yaml`` may be absent: every key then takes its default)::

    backend: onnx                   # python | onnx | torch; default: inferred from the version folder
    max_batch_size: 0               # 0 = no batching; > 0: shapes below exclude the batch dimension
    inputs: []                      # [{name, datatype, shape}]; default: from the model (onnx)
    outputs: []
    dynamic_batching: null          # absent = no queue delay; see DynamicBatchingConfig
    instances: {count: 1, device: auto}   # + min, max, target, ... (autoscaling)
    version_policy: {latest: 1}     # or {all: true} or {specific: [1, 3]}
    labels: {}                      # {stable: 1}: names usable wherever a version number is
    keep_previous_versions: 1       # superseded versions kept loaded for instant rollback
    warmup: []                      # [{batch_size, count, data: zero|random|file, file}]
    parameters: {}                  # free-form, handed to the backend
    ray: {}                         # replicas and resources on a Ray cluster; see RayConfig
    traffic: null                   # the initial traffic policy (modelserve.traffic.policy)
    drift: {enabled: true}          # input drift against a reference; see DriftConfig
    payload_log: null               # this model's payload logging; see PayloadLogConfig
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidArgumentError
from .tensor import DATATYPES
from .traffic.policy import TrafficPolicy

__all__ = [
    "ConfigError",
    "TensorConfig",
    "DynamicBatchingConfig",
    "InstancesConfig",
    "VersionPolicy",
    "WarmupConfig",
    "RayConfig",
    "DriftConfig",
    "PayloadLogConfig",
    "ModelConfig",
    "load_config",
    "parse_config",
]

CONFIG_FILE = "config.yaml"


class ConfigError(InvalidArgumentError):
    """A configuration is invalid. ``errors`` lists every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class TensorConfig(_Strict):
    """An input or output: ``shape`` excludes the batch dimension when the model batches; -1 is a
    variable dimension."""

    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            hint = _did_you_mean(v.upper(), DATATYPES)
            raise ValueError(f"a datatype, one of {', '.join(DATATYPES)}{hint}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        for d in v:
            if d < -1 or d == 0:
                raise ValueError("dimensions >= 1, or -1 for a variable dimension")
        return v

    def as_spec(self) -> tuple[str, str, list[int]]:
        return (self.name, self.datatype, list(self.shape))


class DynamicBatchingConfig(_Strict):
    """Triton's dynamic batching settings (see the README's "Dynamic batching")."""

    max_queue_delay_us: int = Field(default=0, ge=0)
    # Note [Latency target] (csrc/sched/latency_target.h): the delay and batch size adapt to it.
    latency_target_us: int | None = Field(default=None, ge=1)
    preferred_batch_sizes: list[typing.Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    max_queue_size: int = Field(default=0, ge=0)
    max_queue_bytes: int = Field(default=0, ge=0)
    default_timeout_us: int = Field(default=0, ge=0)
    priority_levels: int = Field(default=1, ge=1)
    default_priority_level: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _default_level_in_range(self) -> "DynamicBatchingConfig":
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} must be in [0, priority_levels="
                f"{self.priority_levels}]"
            )
        return self


class InstancesConfig(_Strict):
    """Instances of each version; ``min``/``max`` and the rest drive autoscaling (the README's
    "Autoscaling" and Note [Autoscaling rule] in modelserve/autoscale.py)."""

    count: int = Field(default=1, ge=1)  # at load; default min when min is given
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # thread: instances share the server's interpreter; process: each is a worker process (python
    # backend only; Note [Process instances] in csrc/exec/process_backend.h).
    isolation: Literal["thread", "process"] = "thread"
    execute_timeout_s: float | None = Field(default=None, gt=0)  # process instances: per batch
    spin_us: int = Field(default=100, ge=0)  # process instances: Note [Spinning for replies]
    min: int | None = Field(default=None, ge=1)  # default: count
    max: int | None = Field(default=None, ge=1)  # default: count (min when larger)
    target: float | None = Field(default=None, gt=0)  # queued + in-flight per instance; default max(1, max_batch_size)
    window_s: float = Field(default=10.0, gt=0)
    upscale_delay_s: float = Field(default=5.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_to_zero_after_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> "InstancesConfig":
        if "count" not in self.model_fields_set and self.min is not None:
            self.count = self.min  # {min: 2, max: 4} starts with 2
        lo = self.min if self.min is not None else self.count
        hi = self.max if self.max is not None else max(self.count, lo)
        if not lo <= self.count <= hi:
            raise ValueError(f"min <= count <= max; got min={lo}, count={self.count}, max={hi}")
        if self.isolation == "process" and self.device == "gpu":
            raise ValueError("isolation: process runs instances on the CPU; it cannot be combined with device: gpu")
        if self.execute_timeout_s is not None and self.isolation != "process":
            raise ValueError("execute_timeout_s needs isolation: process (a thread instance cannot be stopped)")
        return self


class GenerationConfig(_Strict):
    """A generative model's engine (``backend: gpt2``): KV cache and continuous batching
    (Note [Generation scheduling] in csrc/gen/scheduler.h)."""

    block_size: int = Field(default=16, ge=1, le=1024)
    num_blocks: int | None = Field(default=None, ge=1)        # default: every seat at max_model_len
    kv_cache_bytes: int | None = Field(default=None, ge=1)    # or a byte budget for the cache
    max_num_seqs: int = Field(default=64, ge=1)
    max_num_batched_tokens: int = Field(default=2048, ge=1)
    max_model_len: int | None = Field(default=None, ge=2)     # default: the model's n_positions
    prefix_caching: bool = True
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _one_size(self) -> "GenerationConfig":
        if self.num_blocks is not None and self.kv_cache_bytes is not None:
            raise ValueError("give num_blocks or kv_cache_bytes, not both")
        return self


class VersionPolicy(_Strict):
    """Exactly one of ``latest: N`` (the N highest versions), ``all: true``, ``specific: [..]``."""

    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: list[typing.Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "VersionPolicy":
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of latest, all, specific")
        if self.all is False:
            raise ValueError("all: true (to serve a subset use latest or specific)")
        if self.specific is not None and not self.specific:
            raise ValueError("specific: a non-empty list of versions")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of those on disk, ascending."""
        ordered = sorted(available)
        if self.latest is not None:
            return ordered[-self.latest :]
        if self.all:
            return ordered
        return [v for v in ordered if v in set(self.specific or ())]


class WarmupConfig(_Strict):
    """Requests run on every instance before a version reports READY."""

    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1)
    data: Literal["zero", "random", "file"] = "zero"
    file: str | None = None  # .npz with one array per input, relative to the version folder

    @model_validator(mode="after")
    def _file_with_file_data(self) -> "WarmupConfig":
        if (self.data == "file") != (self.file is not None):
            raise ValueError("'file' is required with data: file and only then")
        return self


class RayConfig(_Strict):
    """How ``modelserve ray deploy`` runs each version of the model on a Ray cluster (ignored by
    ``modelserve serve``). Every replica hosts a whole Runtime for the version, so the model's
    ``instances`` and ``dynamic_batching`` apply inside each replica. ``min_replicas ==
    max_replicas`` is a fixed count; otherwise Ray Serve autoscales between them, aiming at
    ``target_ongoing_requests`` requests per replica."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    max_ongoing_requests: int = Field(default=64, ge=1)  # per replica; more wait in the caller
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    num_cpus: float = Field(default=1.0, ge=0)  # per replica
    num_gpus: float = Field(default=0.0, ge=0)  # per replica

    @model_validator(mode="after")
    def _ordered(self) -> "RayConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas <= max_replicas; got {self.min_replicas} > {self.max_replicas}")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas within [min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]"
                f"; got {initial}"
            )
        return self


class DriftConfig(_Strict):
    """Input drift (Note [Input drift] in csrc/monitor/drift_monitor.h): each numeric input's
    distribution over the last ``window_requests`` requests against a reference, the first
    ``reference_requests`` requests after the version is READY, or ``reference``: an .npz file
    (relative to the version folder, else the model folder) with one array of rows per input.
    Past ``threshold`` (a PSI), a feature is logged as drifting and named in the version's status."""

    enabled: bool = True
    reference: str | None = None
    reference_requests: int = Field(default=1000, ge=1)
    window_requests: int = Field(default=1000, ge=10)
    threshold: float | None = Field(default=None, gt=0)


class PayloadLogConfig(_Strict):
    """This model's payload logging when the server logs payloads (``--payload-log`` or
    ``--payload-sink``): the share of requests recorded (default: ``--payload-log-sample``), how
    their tensors are written (``full`` values, a ``summary`` of shape, datatype, min, max and
    mean, or ``none``; default ``--payload-log-mode``), and tensors never written."""

    sample: float | None = Field(default=None, ge=0, le=1)
    mode: Literal["full", "summary", "none"] | None = None
    exclude: list[str] = Field(default_factory=list)


class ModelConfig(_Strict):
    backend: str | None = None
    max_batch_size: int = Field(default=0, ge=0)
    inputs: list[TensorConfig] = Field(default_factory=list)
    outputs: list[TensorConfig] = Field(default_factory=list)
    dynamic_batching: DynamicBatchingConfig | None = None
    instances: InstancesConfig = Field(default_factory=InstancesConfig)
    generation: GenerationConfig | None = None  # backend: gpt2 (the defaults when absent)
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    labels: dict[str, typing.Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    keep_previous_versions: int = Field(default=1, ge=0)
    warmup: list[WarmupConfig] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    ray: RayConfig = Field(default_factory=RayConfig)
    traffic: TrafficPolicy | None = None  # the initial policy; a saved change wins (README)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    payload_log: PayloadLogConfig | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        from .backends import registered  # late: backends import this module

        if v is not None and v not in registered():
            raise ValueError(f"a backend, one of {', '.join(registered())}{_did_you_mean(v, registered())}")
        return v

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, int]) -> dict[str, int]:
        for name in v:
            if not name or name.isdigit() or name == "latest":
                raise ValueError(f"label names that are not numbers or 'latest', got {name!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        names = [t.name for t in self.inputs + self.outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"unique input and output names; {dupes} appear more than once")
        if self.dynamic_batching is not None:
            for size in self.dynamic_batching.preferred_batch_sizes:
                if self.max_batch_size == 0 or size > self.max_batch_size:
                    raise ValueError(
                        f"dynamic_batching.preferred_batch_sizes within [1, max_batch_size={self.max_batch_size}]"
                        f"; {size} is not"
                    )
        for w in self.warmup:
            if self.max_batch_size and w.batch_size > self.max_batch_size:
                raise ValueError(f"warmup batch_size <= max_batch_size={self.max_batch_size}; got {w.batch_size}")
        return self

    def batching_settings(self) -> dict[str, Any]:
        """The ``dynamic_batching`` settings as the engine takes them."""
        return self.dynamic_batching.model_dump() if self.dynamic_batching else {}


# --- loading and error reporting ------------------------------------------------------------


def load_config(path: str | Path) -> ModelConfig:
    """Reads and validates ``path`` (a config.yaml, or a model folder holding one). A model folder
    without config.yaml gets the defaults. Raises ConfigError listing every problem."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
        if not path.exists():
            return ModelConfig()
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError([f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}"]) from None
    return parse_config(data, source=str(path))


def parse_config(data: Any, source: str = CONFIG_FILE) -> ModelConfig:
    """Validates already-parsed config data; ``source`` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of config keys, got {type(data).__name__}"])
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError([_describe(source, err) for err in e.errors(include_url=False)]) from None


def _describe(source: str, err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
    key = _key_path(loc)
    actual = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = _did_you_mean(str(loc[-1]), allowed)
        return f"{source}: {key}: unknown key{hint}; expected one of {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{source}: {key}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = "expected " + msg[len("Value error, ") :]
    elif msg.startswith("Input should be "):
        msg = "expected " + msg[len("Input should be ") :]
    if isinstance(actual, dict) and len(repr(actual)) > 120:
        actual = "{" + ", ".join(map(str, actual)) + "}"
    return f"{source}: {key or '(top level)'}: {msg}, got {actual!r}"


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = ModelConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = _inner_model(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _inner_model(arg)
        if found:
            return found
    return None


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
