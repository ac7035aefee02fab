"""The schema of a traffic policy and of a rollout (pydantic), the same in ``config.yaml`` (key
``traffic``), over HTTP and gRPC (as JSON) and in the state directory.

::

    traffic:
      targets:                       # weights in whole percent, adding up to 100
        - {version: stable, weight: 90}
        - {version: 2, weight: 10}
        - {model: recommender_v3, weight: 0}   # another model with the same signature
      sticky_key: user_id            # a request parameter or header; absent = random per request
      baseline: stable               # the target the readout compares against (default: the first)
      shadows:
        - {version: 3, percent: 20}  # mirror 20% of the requests to version 3

A target is a model (default: the endpoint's own) and a version: a number, a label, or nothing
(that model's default version). Its *id*, used in readouts, metrics and the audit log, is
``[model:]version`` with ``default`` for no version: ``stable``, ``2``, ``recommender_v3:default``.

Every error names the key, the expected and the actual value (:func:`parse_policy`,
:func:`parse_rollout` raise InvalidArgumentError listing them all).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InvalidArgumentError

__all__ = [
    "TargetRef",
    "TargetSpec",
    "ShadowSpec",
    "TrafficPolicy",
    "ErrorRateGate",
    "LatencyGate",
    "DivergenceGate",
    "Gates",
    "RolloutSpec",
    "parse_policy",
    "parse_rollout",
    "parse_target",
    "target_id",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Version = int | str | None


def target_id(model: str | None, version: Version) -> str:
    """``[model:]version`` (``default`` for no version): how a target is named everywhere."""
    v = "default" if version is None else str(version)
    return f"{model}:{v}" if model else v


def parse_target(text: str) -> dict[str, Any]:
    """``"2"``, ``"stable"``, ``"other:3"``, ``"other:default"`` as ``{model, version}`` (the CLI's
    shorthand). A bare name is a version number or label of the endpoint's model."""
    model, _, version = text.rpartition(":")
    out: dict[str, Any] = {}
    if model:
        out["model"] = model
    if version and version != "default":
        out["version"] = int(version) if version.isdigit() else version
    elif not version:
        raise InvalidArgumentError(f"target {text!r}: expected [model:]version, e.g. 2, stable or other:3")
    return out


def _check_version(v: Version) -> Version:
    if isinstance(v, bool):
        raise ValueError("a version number or label")
    if isinstance(v, int) and v < 1:
        raise ValueError("a version number >= 1 or a label")
    if isinstance(v, str):
        if not v or v == "default":
            raise ValueError("a non-empty label other than 'default' (leave version out for the default)")
        if v.isdigit():
            return int(v)
    return v


class TargetRef(_Strict):
    """A model (None: the endpoint's own) and a version (number, label, None: the default)."""

    model: str | None = Field(default=None, min_length=1)
    version: int | str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """A rollout's ``candidate: 2`` or ``baseline: "stable"`` / ``"other:3"`` (the target id)
        stands for ``{version: 2}`` / ``{version: "stable"}`` / ``{model: other, version: 3}``."""
        if isinstance(data, int) and not isinstance(data, bool):
            return {"version": data}
        if isinstance(data, str):
            try:
                return parse_target(data)
            except InvalidArgumentError as e:
                raise ValueError(str(e)) from None
        return data

    @field_validator("version")
    @classmethod
    def _version(cls, v: Version) -> Version:
        return _check_version(v)

    @property
    def id(self) -> str:
        return target_id(self.model, self.version)


class TargetSpec(TargetRef):
    """A share of an endpoint's requests: ``weight`` percent (0 keeps the target listed, idle)."""

    weight: int = Field(ge=0, le=100)


class ShadowSpec(TargetRef):
    """A mirror: ``percent`` of the endpoint's (successful) requests also go to this target, whose
    answer is only compared with the primary's, never returned."""

    percent: int = Field(ge=1, le=100)


class TrafficPolicy(_Strict):
    """How an endpoint's requests that name no version are spread (module docstring)."""

    targets: list[TargetSpec] = Field(min_length=1)
    sticky_key: str | None = Field(default=None, min_length=1)
    baseline: str | None = None
    shadows: list[ShadowSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "TrafficPolicy":
        weights = [t.weight for t in self.targets]
        if sum(weights) != 100:
            raise ValueError(
                f"target weights adding up to 100, got {sum(weights)} ({' + '.join(map(str, weights))})"
            )
        ids = [t.id for t in self.targets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"each target once; {dupes} appear more than once")
        if self.baseline is not None and self.baseline not in ids:
            raise ValueError(f"baseline naming one of the targets {ids}, got {self.baseline!r}")
        sids = [s.id for s in self.shadows]
        if len(set(sids)) != len(sids):
            raise ValueError(f"each shadow once; got {sids}")
        return self

    @property
    def baseline_id(self) -> str:
        return self.baseline or self.targets[0].id


class ErrorRateGate(_Strict):
    """Fails when the candidate's error rate exceeds the baseline's by more than ``margin`` (an
    absolute fraction: 0.02 = two percentage points)."""

    margin: float = Field(default=0.02, ge=0, le=1)


class LatencyGate(_Strict):
    """Fails when the candidate's p99 latency exceeds the baseline's times ``1 + margin`` plus
    ``slack_ms`` (the slack keeps sub-millisecond noise from failing a healthy candidate)."""

    margin: float = Field(default=0.5, ge=0)
    slack_ms: float = Field(default=5.0, ge=0)


class DivergenceGate(_Strict):
    """Mirrors ``shadow_percent`` of the baseline's requests to the candidate and fails when their
    outputs disagree: class outputs (integers, booleans, bytes) on more than
    ``max_disagreement`` of their elements, or numbers by more than ``max_mean_abs_diff`` on
    average (when set)."""

    shadow_percent: int = Field(default=10, ge=1, le=100)
    max_disagreement: float = Field(default=0.05, ge=0, le=1)
    max_mean_abs_diff: float | None = Field(default=None, ge=0)


class Gates(_Strict):
    error_rate: ErrorRateGate | None = Field(default_factory=ErrorRateGate)
    p99_latency: LatencyGate | None = Field(default_factory=LatencyGate)
    divergence: DivergenceGate | None = None


class RolloutSpec(_Strict):
    """A canary rollout: the candidate's weight walks through ``steps`` (percent), staying at
    each for at least ``step_interval_s`` and until every gate has a verdict on at least
    ``min_requests`` requests of candidate and baseline within the last ``window_s`` seconds.
    A gate that fails sends the candidate's weight to 0 at once; passing the last step
    promotes it (see modelserve.traffic.rollout)."""

    candidate: TargetRef
    baseline: TargetRef | None = None  # default: the label 'stable' if the model has one, else its default version
    steps: list[typing.Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [5, 25, 50, 100])
    step_interval_s: float = Field(default=60.0, gt=0)
    window_s: float = Field(default=60.0, gt=0)
    min_requests: int = Field(default=50, ge=1)
    gates: Gates = Field(default_factory=Gates)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v or any(b <= a for a, b in zip(v, v[1:])) or v[-1] != 100:
            raise ValueError("strictly increasing percentages ending at 100")
        return v


def _describe(source: str, err: dict) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union")))]
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    if err["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    if err["type"] == "missing":
        return f"{source}: {key}: required key is missing"
    msg = err["msg"]
    for prefix in ("Value error, ", "Input should be "):
        if msg.startswith(prefix):
            msg = "expected " + msg[len(prefix):]
    return f"{source}: {key or '(top level)'}: {msg}, got {err.get('input')!r}"


def _parse(cls: type[BaseModel], data: Any, source: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{source}: expected a JSON object (mapping), got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise InvalidArgumentError("\n".join(_describe(source, err) for err in e.errors(include_url=False))) from None


def parse_policy(data: Any, source: str = "traffic policy") -> TrafficPolicy:
    """A validated :class:`TrafficPolicy` from a mapping; InvalidArgumentError lists every problem."""
    return _parse(TrafficPolicy, data, source)


def parse_rollout(data: Any, source: str = "rollout") -> RolloutSpec:
    """A validated :class:`RolloutSpec` from a mapping; InvalidArgumentError lists every problem."""
    return _parse(RolloutSpec, data, source)
