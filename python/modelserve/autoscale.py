"""Instance autoscaling: how many instances each model version runs, decided from its load.

Note [Autoscaling rule]
~~~~~~~~~~~~~~~~~~~~~~~
Every ``tick_s`` (0.5 s by default) the controller samples each READY version's *load*, the
requests queued plus those running on an instance (the core's ``queued + in_flight``), and
decides with :class:`Scaler`, a pure function of the samples and the clock:

1. ``L`` is the mean load over the last ``window_s`` seconds; with ``n`` instances and a
   per-instance ``target`` the **saturation** is ``L / (max(n, 1) * target)``: 1.0 means every
   instance has ``target`` requests queued or running, which is what it is sized to hold.
2. Each tick records two recommendations, clamped to ``[min, max]``:
   ``up = ceil(L / target)`` and ``down = ceil(L / (target * (1 - tolerance)))`` (``down >= up``:
   the band between them is where neither direction acts, so a load near a boundary cannot flap).
3. **Scale up** to ``min(up over the last upscale_delay_s)`` when that is above ``n``: the load has
   asked for more instances for the whole delay. **Scale down** to ``max(down over the last
   downscale_delay_s)`` when that is below ``n``: it has asked for fewer for the whole delay.
   (The stabilisation windows of Kubernetes' HPA, applied to instances.) A constant load gives
   constant recommendations, so it never reverses a decision.
4. **Scale to zero** (only with ``scale_to_zero_after_s``): a version that has seen no request and
   had nothing queued or running for that long releases every instance. It stays READY: the next
   request enqueues as usual (bounded by the queue limits, and expiring at its deadline), triggers
   a **cold start** back to ``max(min, 1)`` instances at once, and runs when they are up. The
   cold-start time is logged and exported.

Scaling down retires idle instances first; an instance that holds a batch finishes it before it
exits, and queued requests wait in the batcher meanwhile (Note [Instance pipeline] in
csrc/exec/executor.h), so nothing is lost. Scaling up is checked against the device's memory
budget (modelserve.memory_budget) first.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["ScalingPolicy", "Scaler", "AutoscaleController", "ScaleEvent"]

log = logging.getLogger("modelserve.autoscale")


@dataclass(frozen=True)
class ScalingPolicy:
    """The settings of ``instances:`` that drive autoscaling (see Note [Autoscaling rule])."""

    min: int = 1
    max: int = 1
    target: float = 1.0
    window_s: float = 10.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    tolerance: float = 0.1
    scale_to_zero_after_s: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether anything can change the instance count on its own."""
        return self.min < self.max or self.scale_to_zero_after_s is not None

    @classmethod
    def from_config(cls, instances: Any, max_batch_size: int = 0) -> "ScalingPolicy":
        """The policy of an ``InstancesConfig``: ``min`` and ``max`` default to ``count``, the
        target to one full batch per instance (``max(1, max_batch_size)``)."""
        return cls(
            min=instances.min if instances.min is not None else instances.count,
            max=instances.max if instances.max is not None else max(instances.count, instances.min or 1),
            target=float(instances.target if instances.target is not None else max(1, max_batch_size)),
            window_s=instances.window_s,
            upscale_delay_s=instances.upscale_delay_s,
            downscale_delay_s=instances.downscale_delay_s,
            tolerance=instances.tolerance,
            scale_to_zero_after_s=instances.scale_to_zero_after_s,
        )

    def with_bounds(self, label: str, min: int | None = None, max: int | None = None) -> "ScalingPolicy":
        """This policy with new bounds, checked (``1 <= min <= max``)."""
        lo = self.min if min is None else int(min)
        hi = self.max if max is None else int(max)
        if lo < 1 or hi < lo:
            raise InvalidArgumentError(f"{label}: instances need 1 <= min <= max; got min={lo}, max={hi}")
        return replace(self, min=lo, max=hi)

    def clamp(self, n: int) -> int:
        return max(self.min, min(self.max, n))


@dataclass(frozen=True)
class ScaleEvent:
    """One decision: from ``old`` to ``new`` instances, and why."""

    old: int
    new: int
    reason: str
    saturation: float


@dataclass
class _Sample:
    at: float
    load: float
    up: int
    down: int


@dataclass
class Scaler:
    """The autoscaling decision for one version: feed it one observation per tick; it answers
    with the :class:`ScaleEvent` to apply, or None. Pure: time comes in as ``now``."""

    policy: ScalingPolicy
    samples: deque = field(default_factory=deque)
    last_activity: float | None = None  # when a request was last seen (arriving, queued or running)
    last_requests: int = -1
    saturation: float = 0.0
    since: float | None = None  # the first observation (since creation or the last reset)

    def observe(self, now: float, queued: int, in_flight: int, instances: int, requests: int) -> ScaleEvent | None:
        """``requests``: a counter that grows with every request the version took (completed or
        failed): a change means activity even when a request came and went between two ticks."""
        p = self.policy
        load = float(queued + in_flight)
        if self.last_activity is None or load > 0 or requests != self.last_requests:
            self.last_activity = now
        self.last_requests = requests
        if self.since is None:
            self.since = now
        horizon = max(p.window_s, p.upscale_delay_s, p.downscale_delay_s)
        while self.samples and self.samples[0].at < now - horizon:
            self.samples.popleft()
        in_window = [s.load for s in self.samples if s.at > now - p.window_s] + [load]
        mean = sum(in_window) / len(in_window)
        self.saturation = mean / (max(instances, 1) * p.target)
        up = p.clamp(math.ceil(mean / p.target - 1e-9))
        down = p.clamp(math.ceil(mean / (p.target * (1.0 - p.tolerance)) - 1e-9))
        self.samples.append(_Sample(now, load, up, down))

        if instances == 0:
            if load > 0:  # a request is waiting: cold start, no delay
                return ScaleEvent(0, max(p.min, 1), "cold start: a request arrived", self.saturation)
            return None
        if p.scale_to_zero_after_s is not None and now - self.last_activity >= p.scale_to_zero_after_s:
            return ScaleEvent(instances, 0, f"idle for {now - self.last_activity:.1f} s", self.saturation)
        if instances < p.min or instances > p.max:  # the bounds changed at run time
            return ScaleEvent(instances, p.clamp(instances), f"bounds now [{p.min}, {p.max}]", self.saturation)
        # A direction acts only once the samples cover its whole delay.
        if now - self.since >= p.upscale_delay_s:
            recent = [s.up for s in self.samples if s.at >= now - p.upscale_delay_s]
            want = min(recent)
            if want > instances:
                return ScaleEvent(instances, want, f"saturation {self.saturation:.2f} for {p.upscale_delay_s:g} s",
                                  self.saturation)
        if now - self.since >= p.downscale_delay_s:
            recent = [s.down for s in self.samples if s.at >= now - p.downscale_delay_s]
            want = max(recent)
            if want < instances:
                return ScaleEvent(instances, want, f"saturation {self.saturation:.2f} for {p.downscale_delay_s:g} s",
                                  self.saturation)
        return None

    def reset(self, policy: ScalingPolicy | None = None) -> None:
        """Forgets the recommendations (after a manual change of count or bounds)."""
        if policy is not None:
            self.policy = policy
        self.samples.clear()
        self.since = None


class AutoscaleController:
    """Ticks every READY version of a repository through its :class:`Scaler` on a background
    thread and applies the decisions (``ModelVersion.scale``). ``tick()`` runs one round on the
    calling thread (tests drive it with their own clock). The same thread checks input drift
    thresholds every ``DRIFT_CHECK_S`` seconds (:meth:`check_drift`)."""

    def __init__(self, repository: Any, tick_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        if tick_s <= 0:
            raise InvalidArgumentError(f"autoscale tick must be > 0 seconds, got {tick_s}")
        self.repository = repository
        self.tick_s = tick_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modelserve-autoscale", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def tick(self, now: float | None = None) -> list[tuple[Any, ScaleEvent]]:
        """One round over every READY version; returns the events applied."""
        now = self.clock() if now is None else now
        applied = []
        for mv in self._versions():
            try:
                event = mv.autoscale_tick(now)
            except Exception:  # one version's failure must not stop the others
                log.exception("%s: autoscaling failed", mv.label)
                continue
            if event is not None:
                applied.append((mv, event))
        return applied

    def _versions(self) -> list[Any]:
        with self.repository._lock:
            models = list(self.repository.models.values())
        out = []
        for m in models:
            with m._lock:
                out.extend(mv for mv in m.versions.values() if mv.state.value == "READY")
        return out

    #: How often the ticker also checks each version's input drift against its threshold.
    DRIFT_CHECK_S = 5.0

    def check_drift(self) -> None:
        """Logs the READY versions' input drift past (or back under) its threshold
        (modelserve.observe.drift)."""
        for mv in self._versions():
            if mv.drift is not None:
                try:
                    mv.drift.check()
                except Exception:
                    log.exception("%s: checking input drift failed", mv.label)

    def _run(self) -> None:
        last_drift_check = self.clock()
        while not self._stop.wait(self.tick_s):
            self.tick()
            if self.clock() - last_drift_check >= self.DRIFT_CHECK_S:
                last_drift_check = self.clock()
                self.check_drift()
