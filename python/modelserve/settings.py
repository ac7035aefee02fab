"""Runtime settings of a serving version, changed without a reload.

What can change while a version serves, through :meth:`Runtime.set_batching`,
:meth:`Runtime.set_instances`, ``PATCH /modelserve/v1/models/{model}/settings`` and
``modelserve settings set``:

- ``dynamic_batching``: every key but ``max_batch_size`` (``max_queue_delay_us``,
  ``latency_target_us`` (null turns it off), ``preferred_batch_sizes``, ``max_queue_size``, ``max_queue_bytes``, ``default_timeout_us``,
  ``priority_levels``, ``default_priority_level``). The batcher applies them to the next batch;
  requests already queued stay queued (a smaller queue limit refuses new requests until the queue
  is below it).
- ``instances``: ``count`` (now), ``min`` and ``max`` (the autoscaler's bounds). Retired instances
  finish what they hold first; queued requests wait.

A change lives as long as the version: a reload (a new version, a changed config.yaml) starts
from config.yaml again. Settings are per version; ``version`` None is the default version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .config import ConfigError, DynamicBatchingConfig
from .engine import BATCHING_KEYS
from .errors import InvalidArgumentError

__all__ = ["describe", "update", "changeable", "INSTANCE_KEYS", "BATCHING_KEYS"]

#: The ``instances`` keys that can change while serving.
INSTANCE_KEYS = ("count", "min", "max")


def describe(version: Any) -> dict[str, Any]:
    """The live settings of ``version`` (a ModelVersion)."""
    engine = version.engine
    batching = dict(engine.batching) if engine is not None else {}
    return {
        "name": version.name,
        "version": str(version.version),
        "state": version.state.value,
        "instances": version.scaling_state(),
        "dynamic_batching": batching,
        "memory": dict(version.memory),
    }


def changeable(settings: Mapping[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """The keys that can change of ``sections`` of ``settings`` (what :func:`describe` returns):
    what the audit log records of a change, before and after."""
    keys = {"instances": INSTANCE_KEYS, "dynamic_batching": BATCHING_KEYS}
    return {s: {k: v for k, v in settings.get(s, {}).items() if k in keys[s]} for s in sections if s in keys}


def update(
    version: Any, *, instances: Mapping[str, Any] | None = None, dynamic_batching: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Applies a change (everything is checked before anything changes); returns the settings now."""
    where = version.label
    batching = dict(dynamic_batching or {})
    scaling = dict(instances or {})
    unknown = sorted(set(batching) - set(BATCHING_KEYS))
    if unknown:
        raise InvalidArgumentError(
            f"{where}: dynamic_batching: unknown or fixed setting(s) {unknown}; changeable: {list(BATCHING_KEYS)}"
        )
    unknown = sorted(set(scaling) - set(INSTANCE_KEYS))
    if unknown:
        raise InvalidArgumentError(f"{where}: instances: unknown or fixed setting(s) {unknown}; changeable: {list(INSTANCE_KEYS)}")
    for key, value in scaling.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "count" else 1):
            raise InvalidArgumentError(f"{where}: instances.{key} must be an integer >= {0 if key == 'count' else 1}, got {value!r}")
    engine = version.engine
    if engine is None or version.state.value != "READY":
        raise InvalidArgumentError(f"{where} is {version.state.value}; settings change only while it is READY")
    if batching:
        current = {k: v for k, v in engine.batching.items() if k in BATCHING_KEYS}
        try:
            DynamicBatchingConfig.model_validate({**current, **batching})
        except Exception as e:  # pydantic's ValidationError: name the keys
            errors = getattr(e, "errors", None)
            detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}, got {err.get('input')!r}"
                               for err in errors(include_url=False)) if callable(errors) else str(e)
            raise ConfigError([f"{where}: dynamic_batching: {detail}"]) from None
    if scaling:
        version.set_scaling(**scaling)  # checks the bounds itself, before changing anything
    if batching:
        engine.set_batching(**batching)
    return describe(version)
