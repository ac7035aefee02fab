"""TrafficManager: endpoints, splits, shadows, rollouts and their state, over a Catalog.

The request path is two calls a frontend or the Runtime makes around its own dispatch::

    routed = manager.active.get(model)          # one dict lookup; None: no policy, as before
    if routed is not None:
        r = routed.route(routing)               # r.model, r.version: where to send it
        ... run the request on (r.model, r.version) ...
        r.finish(inputs, outputs)               # or r.fail(error): outcome, latency, shadows

so the same manager serves the synchronous ``Runtime.infer`` and ``asyncio`` paths;
``await manager.run_routed(...)`` does all three around an async dispatch (the Runtime's
``infer_routed_async`` and the Ray ingress). Policy
changes, rollouts and their ticks take the manager's lock; the request path takes none (it
reads the ``active`` dict, whose entries are replaced whole).

Everything else (validation, persistence, the audit log, rollout ticks) is in the methods
below; see policy.py, router.py, stats.py, shadow.py, rollout.py and store.py for the pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    InvalidArgumentError, ModelserveError, NotFoundError, UnavailableError, UnimplementedError, from_status,
)
from .catalog import Catalog, Signature
from .policy import RolloutSpec, ShadowSpec, TargetRef, TargetSpec, TrafficPolicy, parse_policy, parse_rollout
from .rollout import Rollout, RolloutState, WindowView
from .router import Router
from .shadow import BackgroundLoop, ShadowJob, ShadowMirror, snapshot_inputs, snapshot_outputs
from .stats import ShadowStats, TargetStats, readout, summary
from .store import IN_PROCESS, StateStore

__all__ = ["TrafficManager", "Routed", "RoutedPending", "Endpoint"]

log = logging.getLogger("modelserve.traffic")


class _Target:
    __slots__ = ("id", "model", "version", "weight", "stats")

    def __init__(self, id: str, model: str, version: int | str | None, weight: int, stats: TargetStats) -> None:
        self.id, self.model, self.version, self.weight, self.stats = id, model, version, weight, stats


class _Shadow:
    __slots__ = ("id", "model", "version", "percent", "stats")

    def __init__(self, id: str, model: str, version: int | str | None, percent: int, stats: ShadowStats) -> None:
        self.id, self.model, self.version, self.percent, self.stats = id, model, version, percent, stats


class Routed:
    """One request routed by a policy: where to run it, and how to report back."""

    __slots__ = ("endpoint", "target", "started")

    def __init__(self, endpoint: "Endpoint", target: _Target) -> None:
        self.endpoint = endpoint
        self.target = target
        self.started = time.perf_counter()

    @property
    def model(self) -> str:
        return self.target.model

    @property
    def version(self) -> int | str | None:
        return self.target.version

    def finish(self, inputs: Mapping[str, Any] | None = None, outputs: Mapping[str, Any] | None = None) -> None:
        """Records a success; mirrors the request to the policy's shadows when given its inputs
        and outputs (Note [Shadows never touch the caller] in shadow.py)."""
        ep = self.endpoint
        self.target.stats.record(ep.manager.clock(), "success", time.perf_counter() - self.started)
        if ep.shadows and inputs is not None and outputs is not None:
            ep.mirror(self.target, inputs, outputs)

    def fail(self, error: BaseException) -> None:
        """Records a failure as the caller sees it (its status, lower case)."""
        if isinstance(error, ModelserveError):
            outcome = error.status.lower()
        elif isinstance(error, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "internal"
        self.target.stats.record(self.endpoint.manager.clock(), outcome, time.perf_counter() - self.started)


class RoutedPending:
    """A queued request's handle (``wait()``, ``done()``, ``outputs()``, ``cancel()``, as the
    engine's) that reports its outcome to the policy once it completes."""

    __slots__ = ("_pending", "_routed", "_inputs", "_recorded")

    def __init__(self, pending: Any, routed: Routed, inputs: Mapping[str, Any]) -> None:
        self._pending, self._routed, self._inputs, self._recorded = pending, routed, inputs, False

    def wait(self, timeout: float | None = None) -> bool:
        done = self._pending.wait(timeout)
        if done and not self._recorded:
            self._record()
        return done

    def done(self) -> bool:
        return self._pending.done()

    def cancel(self) -> bool:
        return self._pending.cancel()

    def outputs(self, as_numpy: bool = True) -> dict[str, Any]:
        out = self._pending.outputs(as_numpy=as_numpy)  # raises the request's failure
        if not self._recorded:
            self._record()
        return out

    def _record(self) -> None:
        self._recorded = True
        code = self._pending.status_code
        if code != 0:
            self._routed.fail(from_status(code, self._pending.message))
        elif self._routed.endpoint.shadows:
            self._routed.finish(self._inputs, self._pending.outputs(as_numpy=True))
        else:
            self._routed.finish()

    def __getattr__(self, name: str) -> Any:  # status_code, message, timings, ...
        return getattr(self._pending, name)


class Endpoint:
    """An endpoint's compiled policy: targets with their router, sticky key and shadows.
    Immutable once built; a policy change builds a new one."""

    __slots__ = ("name", "policy", "targets", "router", "sticky_key", "shadows", "manager", "_random")

    def __init__(self, manager: "TrafficManager", name: str, policy: TrafficPolicy) -> None:
        self.manager = manager
        self.name = name
        self.policy = policy
        self.targets = [
            _Target(t.id, t.model or name, t.version, t.weight, manager._target_stats(name, t.id))
            for t in policy.targets
        ]
        self.router = Router(name, [t.weight for t in policy.targets])
        self.sticky_key = policy.sticky_key
        self.shadows = [
            _Shadow(s.id, s.model or name, s.version, s.percent, manager._shadow_stats(name, s.id))
            for s in policy.shadows
        ]
        self._random = random.Random()

    def route(self, routing: Mapping[str, Any] | None = None) -> Routed:
        """The target for one request; ``routing`` (request parameters, then headers) holds the
        sticky key when the policy has one."""
        key = None
        if self.sticky_key is not None and routing is not None:
            value = routing.get(self.sticky_key)
            if value is not None:
                key = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return Routed(self, self.targets[self.router.choose(key)])

    def mirror(self, primary: _Target, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        jobs = [s for s in self.shadows if s.id != primary.id and self._random.random() * 100 < s.percent]
        if not jobs:
            return
        copied_inputs, copied_outputs = snapshot_inputs(inputs), snapshot_outputs(outputs)
        for s in jobs:
            self.manager._mirror.offer(
                ShadowJob(self.name, s.id, s.model, s.version, copied_inputs, copied_outputs, s.stats)
            )


class TrafficManager:
    """Traffic policies, shadows and canary rollouts of every endpoint, over ``catalog``.

    ``state_dir``: where policies, rollouts and the audit log are kept (None: in memory only).
    ``clock``: monotonic seconds for windows and rollout steps (tests pass a fake one).
    ``tick_interval_s``: how often rollouts are evaluated on the background loop; None: never by
    itself (call :meth:`tick`). ``loop``: an event loop to run shadows and ticks on (default: a
    daemon thread's own, started on first use).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        state_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_interval_s: float | None = 0.25,
        loop: asyncio.AbstractEventLoop | None = None,
        shadow_capacity: int = 64,
        shadow_concurrency: int = 4,
        max_samples: int = 50_000,
    ) -> None:
        self.catalog = catalog
        self.store = StateStore(state_dir)
        self.clock = clock
        self.tick_interval_s = tick_interval_s
        self.max_samples = max_samples
        #: endpoint -> compiled policy; read without a lock on the request path.
        self.active: dict[str, Endpoint] = {}
        self._lock = threading.RLock()
        self._saved: dict[str, dict[str, Any]] = {}  # guarded by _lock: what is on disk
        self._rollouts: dict[str, Rollout] = {}  # guarded by _lock
        self._stats: dict[tuple[str, str], TargetStats] = {}  # guarded by _lock
        self._shadow_stats_: dict[tuple[str, str], ShadowStats] = {}  # guarded by _lock
        self._own_loop = BackgroundLoop() if loop is None else None
        self._loop = loop
        self._mirror = ShadowMirror(self.catalog.infer, self._get_loop, self.clock,
                                    capacity=shadow_capacity, concurrency=shadow_concurrency)
        self._ticker: asyncio.TimerHandle | None = None
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------
    def _get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else self._own_loop.loop  # type: ignore[union-attr]

    def restore(self) -> None:
        """Loads the saved policies and rollouts (no readiness checks: models may still be
        loading; a target that is not READY answers UNAVAILABLE until it is)."""
        saved = self.store.load()
        now = self.clock()
        with self._lock:
            self._saved = dict(saved)
            for name, entry in saved.items():
                try:
                    if entry.get("policy") is not None:
                        policy = parse_policy(entry["policy"], f"saved policy of '{name}'")
                        self.active[name] = Endpoint(self, name, policy)
                    if entry.get("rollout") is not None:
                        self._rollouts[name] = Rollout.from_dict(entry["rollout"], now)
                except (ModelserveError, KeyError, ValueError) as e:
                    log.error("traffic state of endpoint '%s' ignored: %s", name, e)
            for name, entry in saved.items():
                for label, version in (entry.get("labels") or {}).items():
                    try:  # a promotion's label move outlives a restart, like the policy
                        if self.catalog.labels(name).get(label) != version:
                            self.catalog.set_label(name, label, version)
                    except ModelserveError as e:
                        log.error("endpoint '%s': cannot restore label '%s' -> version %s: %s", name, label, version, e)
            if any(r.state.active for r in self._rollouts.values()):
                log.info("resuming rollouts: %s", sorted(n for n, r in self._rollouts.items() if r.state.active))
        self._schedule_ticks()

    def apply_config(self, endpoint: str, policy: TrafficPolicy | Mapping[str, Any]) -> bool:
        """The policy of ``endpoint``'s config.yaml, unless a change through the API was saved
        for it (saved state wins). Returns whether it was applied; logs why not."""
        with self._lock:
            if "policy" in self._saved.get(endpoint, {}):  # an entry with labels only leaves the key in force
                log.info("endpoint '%s': the saved traffic state wins over config.yaml's traffic key", endpoint)
                return False
            try:
                p = parse_policy(policy, f"config.yaml of '{endpoint}': traffic")
                self._validate(endpoint, p)
            except ModelserveError as e:
                log.error("endpoint '%s': config.yaml's traffic policy not applied: %s", endpoint, e)
                return False
            self.active[endpoint] = Endpoint(self, endpoint, p)
        log.info("endpoint '%s': traffic policy from config.yaml: %s", endpoint, _weights(p))
        return True

    def close(self) -> None:
        """Stops the ticks and the shadow workers (queued shadows are dropped)."""
        self._closed = True
        if self._own_loop is not None:
            self._own_loop.close()

    # --- the audit log (store.py, Note [Audit entries]) ----------------------------------------
    def audited(self, actor: str, action: str, endpoint: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Records the management action run in the ``with`` block, with its outcome; yields a
        dict for its own fields (``before``, ``after``, ``detail``). Every management action,
        traffic or not (the Runtime's load, unload and settings), is recorded through this."""
        return self.store.recording(actor, action, endpoint)

    def refusals(self, actor: str, action: str, endpoint: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Records a failure of the ``with`` block as a refused ``action``, and nothing
        otherwise: for a frontend's decoding before it calls the method that records the
        action itself (so that the action is recorded once)."""
        return self.store.recording(actor, action, endpoint, success=False)

    # --- policies ------------------------------------------------------------------------------
    def get_policy(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's policy as a mapping, or None (requests go to the default version)."""
        ep = self.active.get(endpoint)
        return None if ep is None else ep.policy.model_dump(mode="json", exclude_defaults=True)

    def set_policy(
        self, endpoint: str, policy: TrafficPolicy | Mapping[str, Any], *, actor: str = IN_PROCESS
    ) -> dict[str, Any]:
        """Validates (weights add up to 100, targets exist and are READY, signatures match the
        endpoint's), saves, applies at once and audits ``policy``; returns it."""
        with self._lock, self.audited(actor, "policy.set", endpoint) as entry:
            p = parse_policy(policy)
            self._refuse_during_rollout(endpoint, "change the traffic policy")
            self._validate(endpoint, p)
            before = self.get_policy(endpoint)
            after = p.model_dump(mode="json", exclude_defaults=True)
            self._save(endpoint, policy=after)
            self.active[endpoint] = Endpoint(self, endpoint, p)
            entry.update(before=before, after=after)
        log.info("endpoint '%s': traffic policy set by %s: %s", endpoint, actor, _weights(p))
        return after

    def clear_policy(self, endpoint: str, *, actor: str = IN_PROCESS) -> None:
        """Removes the endpoint's policy: its requests go to the model's default version."""
        with self._lock, self.audited(actor, "policy.clear", endpoint) as entry:
            self._refuse_during_rollout(endpoint, "clear the traffic policy")
            before = self.get_policy(endpoint)
            if before is None and endpoint not in self._saved:
                raise NotFoundError(f"endpoint '{endpoint}' has no traffic policy")
            self._save(endpoint, policy=None)
            self.active.pop(endpoint, None)
            entry.update(before=before, after=None)
        log.info("endpoint '%s': traffic policy cleared by %s", endpoint, actor)

    def _refuse_during_rollout(self, endpoint: str, what: str) -> None:
        r = self._rollouts.get(endpoint)
        if r is not None and r.state.active:
            raise InvalidArgumentError(
                f"endpoint '{endpoint}': cannot {what} while a rollout of {r.candidate} is {r.state.value}; "
                "promote or abort it first"
            )

    def _validate(self, endpoint: str, p: TrafficPolicy) -> None:
        reference = self._signature(endpoint, TargetRef(), endpoint, "the endpoint's default version")
        for kind, items in (("target", p.targets), ("shadow", p.shadows)):
            for t in items:
                sig = self._signature(endpoint, t, t.model or endpoint, f"{kind} '{t.id}'")
                if sig != reference:
                    raise InvalidArgumentError(
                        f"endpoint '{endpoint}': {kind} '{t.id}' has a different signature than the endpoint's "
                        f"default version: expected {reference.describe()}, got {sig.describe()}"
                    )

    def _signature(self, endpoint: str, ref: TargetRef, model: str, what: str) -> Signature:
        try:
            number = self.catalog.resolve(model, ref.version)
            state = self.catalog.state(model, number)
        except NotFoundError as e:
            raise NotFoundError(f"endpoint '{endpoint}': {what}: {e}") from None
        except UnavailableError as e:
            raise UnavailableError(f"endpoint '{endpoint}': {what}: {e}") from None
        if state != "READY":
            raise UnavailableError(
                f"endpoint '{endpoint}': {what} is model '{model}' version {number}, which is {state}; "
                "targets must be READY"
            )
        return self.catalog.signature(model, number)

    def _save(self, endpoint: str, **changes: Any) -> None:
        """Writes the endpoint's new state to disk first; only then is it applied (store.py)."""
        # A first change that only moves labels saves no policy decision (apply_config).
        fresh = {} if set(changes) == {"labels"} else {"policy": None, "rollout": None}
        entry = {**self._saved.get(endpoint, fresh), **changes}
        saved = {**self._saved, endpoint: entry}
        self.store.save(saved)
        self._saved = saved

    # --- the request path ------------------------------------------------------------------------
    def route(self, endpoint: str, routing: Mapping[str, Any] | None = None) -> Routed | None:
        """The routed request for ``endpoint``, or None when it has no policy."""
        ep = self.active.get(endpoint)
        return None if ep is None else ep.route(routing)

    async def run_routed(
        self,
        endpoint: str,
        version: int | str | None,
        inputs: Mapping[str, Any],
        routing: Mapping[str, Any] | None,
        run: Callable[[str, int | str | None], Awaitable[tuple[Any, int]]],
        on_route: Callable[[str], None] | None = None,
    ) -> tuple[Any, str, int]:
        """Runs one request where it belongs: ``run(model, version)`` does the dispatch and
        returns (outputs, version number that ran). A request that names a version, or whose
        endpoint has no policy, runs on (endpoint, version) as asked; otherwise on the target the
        policy picks (told to ``on_route`` by its id), with its outcome recorded (and shadows
        fed). Returns (outputs, model, version number). The Runtime and the Ray ingress both
        serve through this."""
        ep = self.active.get(endpoint) if version is None else None
        if ep is None:
            outputs, number = await run(endpoint, version)
            return outputs, endpoint, number
        routed = ep.route(routing)
        if on_route is not None:
            on_route(routed.target.id)
        try:
            outputs, number = await run(routed.model, routed.version)
        except BaseException as e:
            routed.fail(e)
            raise
        routed.finish(inputs, outputs)
        return outputs, routed.model, number

    # --- readout -----------------------------------------------------------------------------------
    def _target_stats(self, endpoint: str, target: str) -> TargetStats:
        with self._lock:
            stats = self._stats.get((endpoint, target))
            if stats is None:
                stats = self._stats[(endpoint, target)] = TargetStats(self.max_samples)
            return stats

    def _shadow_stats(self, endpoint: str, target: str) -> ShadowStats:
        with self._lock:
            stats = self._shadow_stats_.get((endpoint, target))
            if stats is None:
                stats = self._shadow_stats_[(endpoint, target)] = ShadowStats(self.max_samples)
            return stats

    def readout(self, endpoint: str, window_s: float | None = None) -> dict[str, Any]:
        """The A/B readout: per target requests, errors, error rate, p50/p99/mean latency and the
        differences against the baseline with 95% intervals (stats.py, Note [Readout
        statistics]); per shadow its outcomes, drops and output comparison. Over the last
        ``window_s`` seconds, or every kept sample (the most recent 50,000 per target)."""
        since = None if window_s is None else self.clock() - window_s
        with self._lock:
            ep = self.active.get(endpoint)
            rollout = self._rollouts.get(endpoint)
            ids = [t.id for t in ep.targets] if ep else []
            ids += sorted(t for (e, t) in self._stats if e == endpoint and t not in ids)
            if not ids:
                raise NotFoundError(f"endpoint '{endpoint}' has no traffic policy and no traffic recorded")
            baseline = ep.policy.baseline_id if ep else (rollout.baseline if rollout else ids[0])
            windows = [(t, self._stats[(endpoint, t)].window(since)) for t in ids if (endpoint, t) in self._stats]
            shadows = [(t, s) for (e, t), s in sorted(self._shadow_stats_.items()) if e == endpoint]
        weights = {t.id: t.weight for t in ep.targets} if ep else {}
        rows = readout(windows, baseline)
        for row in rows:
            row["weight"] = weights.get(row["target"], 0)
        shadow_rows = []
        mirrored = {s.id for s in ep.shadows} if ep else set()
        for t, s in shadows:
            n, e, lat = s.outcomes.window(since)
            if n or t in mirrored:  # a former shadow with nothing in the window is left out
                shadow_rows.append({"target": t, **summary(n, e, lat), "comparison": s.comparison(since)})
        return {
            "endpoint": endpoint,
            "window_s": window_s,
            "baseline": baseline,
            "sticky_key": ep.sticky_key if ep else None,
            "targets": rows,
            "shadows": shadow_rows,
            "rollout": self.rollout(endpoint),
        }

    # --- rollouts ------------------------------------------------------------------------------
    def rollout(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's current or last rollout, or None."""
        with self._lock:
            r = self._rollouts.get(endpoint)
            return None if r is None else r.as_dict(self.clock())

    def start_rollout(
        self, endpoint: str, spec: RolloutSpec | Mapping[str, Any], *, actor: str = IN_PROCESS
    ) -> dict[str, Any]:
        """Starts a canary rollout (rollout.py, Note [Rollout gates]) of ``spec.candidate``
        against ``spec.baseline`` (default: the label ``stable`` when the model has one, else
        its default version). The endpoint is split between the two for its duration; sticky
        key and shadows of its policy carry over; the policy is restored on rollback or abort."""
        with self._lock, self.audited(actor, "rollout.start", endpoint) as entry:
            s = parse_rollout(spec)
            current = self._rollouts.get(endpoint)
            if current is not None and current.state.active:
                raise InvalidArgumentError(
                    f"endpoint '{endpoint}': a rollout of {current.candidate} is already {current.state.value}; "
                    "promote or abort it first"
                )
            baseline = s.baseline
            if baseline is None:
                baseline = TargetRef(version="stable") if "stable" in self.catalog.labels(endpoint) else TargetRef()
            for what, ref in (("candidate", s.candidate), ("baseline", baseline)):
                self._check_target(endpoint, ref, what)
            if self._number(endpoint, s.candidate) == self._number(endpoint, baseline):
                raise InvalidArgumentError(
                    f"endpoint '{endpoint}': candidate '{s.candidate.id}' and baseline '{baseline.id}' are the same "
                    f"version ({self._number(endpoint, s.candidate)}); name another candidate or a baseline"
                )
            previous = self.get_policy(endpoint)
            now = self.clock()
            r = Rollout(endpoint, s.model_copy(update={"baseline": baseline}), s.candidate.id, baseline.id, previous,
                        step_started=now, began=now)
            r.note("started", actor=actor)
            policy = self._rollout_policy(r)
            self._save(endpoint, policy=policy.model_dump(mode="json", exclude_defaults=True), rollout=r.as_dict())
            self._rollouts[endpoint] = r
            self.active[endpoint] = Endpoint(self, endpoint, policy)
            entry.update(before=previous, after=r.as_dict(),
                         detail={"candidate": r.candidate, "baseline": r.baseline})
        log.info("endpoint '%s': rollout of %s against %s started by %s (steps %s, every %.0f s)",
                 endpoint, r.candidate, r.baseline, actor, s.steps, s.step_interval_s)
        self._schedule_ticks()
        return r.as_dict(self.clock())

    def _check_target(self, endpoint: str, ref: TargetRef, what: str) -> None:
        reference = self._signature(endpoint, TargetRef(), endpoint, "the endpoint's default version")
        sig = self._signature(endpoint, ref, ref.model or endpoint, f"{what} '{ref.id}'")
        if sig != reference:
            raise InvalidArgumentError(
                f"endpoint '{endpoint}': {what} '{ref.id}' has a different signature than the endpoint's default "
                f"version: expected {reference.describe()}, got {sig.describe()}"
            )

    def _number(self, endpoint: str, ref: TargetRef) -> tuple[str, int]:
        model = ref.model or endpoint
        return model, self.catalog.resolve(model, ref.version)

    def _rollout_policy(self, r: Rollout) -> TrafficPolicy:
        """Baseline and candidate side by side (baseline first: Note [Sticky buckets] moves only
        the keys between them), with the previous policy's sticky key and shadows."""
        spec = r.spec
        previous = parse_policy(r.previous_policy) if r.previous_policy else None
        shadows = [sh for sh in (previous.shadows if previous else []) if sh.id != r.candidate]
        if spec.gates.divergence is not None:
            shadows.append(ShadowSpec(model=spec.candidate.model, version=spec.candidate.version,
                                      percent=spec.gates.divergence.shadow_percent))
        base = spec.baseline or TargetRef()
        w = r.weight
        return TrafficPolicy(
            targets=[TargetSpec(model=base.model, version=base.version, weight=100 - w),
                     TargetSpec(model=spec.candidate.model, version=spec.candidate.version, weight=w)],
            sticky_key=previous.sticky_key if previous else None,
            baseline=r.baseline,
            shadows=shadows,
        )

    def _view(self, r: Rollout, now: float) -> WindowView:
        window = r.spec.window_s
        since = max(now - window, r.began)
        cand = self._target_stats(r.endpoint, r.candidate).window(since)
        # At 100% the baseline has no traffic: its window is the one that ended when the step began.
        base_stats = self._target_stats(r.endpoint, r.baseline)
        if r.weight >= 100:
            base = base_stats.window(max(r.step_started - window, r.began), until=r.step_started)
        else:
            base = base_stats.window(since)
        divergence = None
        if r.spec.gates.divergence is not None:
            divergence = self._shadow_stats(r.endpoint, r.candidate).comparison(since)
        return WindowView(cand, base, divergence)

    def tick(self) -> None:
        """Evaluates every active rollout once (Note [Rollout gates]) and applies the outcome."""
        now = self.clock()
        with self._lock:
            for name, r in list(self._rollouts.items()):
                if not r.state.active:
                    continue
                try:
                    action = r.evaluate(now, lambda r=r: self._view(r, now))
                    if action is not None:
                        with self.audited("rollout-controller", f"rollout.{action}", name) as entry:
                            entry.update(self._apply(r, action))
                except Exception:  # never let one endpoint's bug stop the others' ticks
                    log.exception("endpoint '%s': rollout tick failed", name)

    def _apply(self, r: Rollout, action: str) -> dict[str, Any]:
        """Saves and applies the policy that ``action`` of ``r`` leads to; returns the audit
        entry's fields (the caller records it)."""
        name = r.endpoint
        if action in ("rollback", "abort"):
            policy = self._restored_policy(r)
            self._save(name, policy=policy.model_dump(mode="json", exclude_defaults=True), rollout=r.as_dict())
            self.active[name] = Endpoint(self, name, policy)
            if action == "rollback":
                log.warning("endpoint '%s': rollout of %s ROLLED BACK: gate %s failed: %s",
                            name, r.candidate, r.verdict["gate"], r.verdict["figures"])
        elif action == "advance":
            policy = self._rollout_policy(r)
            self._save(name, policy=policy.model_dump(mode="json", exclude_defaults=True), rollout=r.as_dict())
            self.active[name] = Endpoint(self, name, policy)
            log.info("endpoint '%s': rollout of %s at %d%%", name, r.candidate, r.weight)
        elif action == "promote":
            policy = self._promoted_policy(r)
            self._save(name, policy=policy.model_dump(mode="json", exclude_defaults=True), rollout=r.as_dict())
            self.active[name] = Endpoint(self, name, policy)
            log.info("endpoint '%s': rollout of %s PROMOTED", name, r.candidate)
        return {"after": self.get_policy(name), "detail": r.verdict or {"weight": r.weight}}

    def _restored_policy(self, r: Rollout) -> TrafficPolicy:
        """After a rollback or an abort: the policy the rollout started from, or, when there was
        none, the baseline at 100% and the candidate at 0 (the model's default version may well be
        the candidate: a newer version is the default as soon as it loads)."""
        if r.previous_policy is not None:
            return parse_policy(r.previous_policy)
        base, cand = r.spec.baseline or TargetRef(), r.spec.candidate
        return TrafficPolicy(
            targets=[TargetSpec(model=base.model, version=base.version, weight=100),
                     TargetSpec(model=cand.model, version=cand.version, weight=0)],
            baseline=r.baseline,
        )

    def _promoted_policy(self, r: Rollout) -> TrafficPolicy:
        """Moves the label ``stable`` to the candidate (when it is a version of the endpoint's own
        model; the old version stays loaded) and routes everything to it."""
        cand = r.spec.candidate
        model, number = self._number(r.endpoint, cand)
        target = TargetSpec(model=cand.model, version=cand.version, weight=100)
        if model == r.endpoint:
            self.catalog.set_label(model, "stable", number)
            r.verdict = {**(r.verdict or {}), "stable": number}
            labels = {**(self._saved.get(r.endpoint, {}).get("labels") or {}), "stable": number}
            self._save(r.endpoint, labels=labels)
            target = TargetSpec(version="stable", weight=100)
        previous = parse_policy(r.previous_policy) if r.previous_policy else None
        return TrafficPolicy(
            targets=[target],
            sticky_key=previous.sticky_key if previous else None,
            shadows=[s for s in (previous.shadows if previous else []) if s.id not in (r.candidate, target.id)],
        )

    def _control(self, endpoint: str, what: str) -> Rollout:
        r = self._rollouts.get(endpoint)
        if r is None:
            raise NotFoundError(f"endpoint '{endpoint}' has no rollout to {what}")
        if not r.state.active:
            raise InvalidArgumentError(
                f"endpoint '{endpoint}': cannot {what} the rollout of {r.candidate}: it is {r.state.value}"
            )
        return r

    def pause_rollout(self, endpoint: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        """Holds the rollout at its step (failing gates still roll it back). Pausing a paused
        rollout changes nothing (and is recorded as asked)."""
        with self._lock, self.audited(actor, "rollout.pause", endpoint) as entry:
            r = self._control(endpoint, "pause")
            if r.state is RolloutState.RUNNING:
                r.pause(self.clock())
                self._save(endpoint, rollout=r.as_dict())
            entry["detail"] = {"weight": r.weight}
            return r.as_dict(self.clock())

    def resume_rollout(self, endpoint: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        with self._lock, self.audited(actor, "rollout.resume", endpoint) as entry:
            r = self._control(endpoint, "resume")
            if r.state is RolloutState.PAUSED:
                r.resume(self.clock())
                self._save(endpoint, rollout=r.as_dict())
            entry["detail"] = {"weight": r.weight}
            return r.as_dict(self.clock())

    def promote_rollout(self, endpoint: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        """Promotes the candidate now, whatever the step and the gates."""
        with self._lock, self.audited(actor, "rollout.promote", endpoint) as entry:
            r = self._control(endpoint, "promote")
            r.finish(RolloutState.PROMOTED, actor)
            entry.update(self._apply(r, "promote"))
            return r.as_dict(self.clock())

    def abort_rollout(self, endpoint: str, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        """Ends the rollout and restores the policy it started from."""
        with self._lock, self.audited(actor, "rollout.abort", endpoint) as entry:
            r = self._control(endpoint, "abort")
            r.finish(RolloutState.ABORTED, actor)
            entry.update(self._apply(r, "abort"))
            return r.as_dict(self.clock())

    def _schedule_ticks(self) -> None:
        if self.tick_interval_s is None or self._closed or self._ticker is not None:
            return
        with self._lock:
            if not any(r.state.active for r in self._rollouts.values()):
                return
        loop = self._get_loop()

        def run() -> None:
            self._ticker = None
            if self._closed:
                return
            self.tick()
            self._schedule_ticks()

        def arm() -> None:
            if self._ticker is None:
                self._ticker = loop.call_later(self.tick_interval_s, run)

        loop.call_soon_threadsafe(arm)

    # --- labels and rollback ---------------------------------------------------------------------
    def set_label(self, endpoint: str, label: str, version: Any, *, actor: str = IN_PROCESS) -> dict[str, Any]:
        """Points ``label`` of model ``endpoint`` at ``version`` (a READY version) at once,
        creating the label if it is new; saved (it outlives a restart, over config.yaml's
        ``labels``, as a promotion's move does) and audited (action ``label``). Returns
        ``{"model", "label", "before", "after"}`` (before: None for a new label)."""
        with self._lock, self.audited(actor, "label", endpoint) as entry:
            number = _version_field(version, f"model '{endpoint}': label '{label}'")
            self._refuse_during_rollout(endpoint, f"move label '{label}'")
            before = self.catalog.labels(endpoint).get(label)
            entry["before"] = {"label": label, "version": before}
            self._require_ready(endpoint, number, f"label '{label}'")
            self._move_label(endpoint, label, number, before, actor)
            entry["after"] = {"label": label, "version": number}
        return {"model": endpoint, "label": label, "before": before, "after": number}

    def rollback(
        self, endpoint: str, version: Any = None, *, label: str | None = None, actor: str = IN_PROCESS
    ) -> dict[str, Any]:
        """Points the default version of model ``endpoint`` (or its ``label``, which must exist)
        back at ``version``, or without one at the newest READY version older than the current
        target, at once; audited (action ``rollback``). A label's move is saved like
        :meth:`set_label`'s; a rolled-back default is the repository's pin (Note [Zero-downtime
        swap]): it holds until a newer version arrives, and is not saved. Undoing a promotion is
        ``rollback(endpoint, label="stable")``. Returns ``{"model", "label", "before", "after"}``
        (label None: the default version)."""
        with self._lock, self.audited(actor, "rollback", endpoint) as entry:
            if label is not None and (not isinstance(label, str) or not label):
                raise InvalidArgumentError(
                    f"model '{endpoint}': rollback: 'label' must be a non-empty string, got {label!r}"
                )
            number = None if version is None else _version_field(version, f"model '{endpoint}': rollback")
            what = f"roll back label '{label}'" if label else "roll back the default version"
            self._refuse_during_rollout(endpoint, what)
            if label is not None:
                labels = self.catalog.labels(endpoint)
                if label not in labels:
                    raise NotFoundError(f"model '{endpoint}' has no label '{label}' to roll back; labels {labels}")
                before: int | None = labels[label]
            else:
                try:
                    before = self.catalog.resolve(endpoint, None)
                except UnavailableError:
                    before = None  # no READY default: a rollback may give it one
            entry["before"] = {"label": label, "version": before}
            if number is not None:
                self._require_ready(endpoint, number, "rollback")
            if label is not None and number is not None:
                self._move_label(endpoint, label, number, before, actor)
                entry["after"] = {"label": label, "version": number}
                return {"model": endpoint, "label": label, "before": before, "after": number}
            rollback = getattr(self.catalog, "rollback", None)
            if rollback is None:
                raise UnimplementedError(
                    f"model '{endpoint}': this deployment cannot {what} without naming the version; "
                    "give the version (labels only)"
                )
            after = rollback(endpoint, number, label)
            if label is not None:
                try:
                    self._save(endpoint, labels={**(self._saved.get(endpoint, {}).get("labels") or {}), label: after})
                except BaseException:  # not on disk: not applied either
                    self.catalog.set_label(endpoint, label, before)
                    raise
            entry["after"] = {"label": label, "version": after}
        log.warning("model '%s': %s rolled back by %s from version %s to %d", endpoint,
                    f"label '{label}'" if label else "the default version", actor, before, after)
        return {"model": endpoint, "label": label, "before": before, "after": after}

    def _require_ready(self, endpoint: str, version: int, what: str) -> None:
        """Unknown version: NotFoundError naming the model's versions; one not READY:
        UnavailableError naming its state (the status table's 503, as for a policy target)."""
        state = self.catalog.state(endpoint, version)  # NotFoundError: no such version
        if state != "READY":
            raise UnavailableError(
                f"model '{endpoint}': {what} cannot point at version {version}: it is {state}; "
                "the version must be READY"
            )

    def _move_label(self, endpoint: str, label: str, version: int, before: int | None, actor: str) -> None:
        """Saves the move first (Note [Traffic state on disk]), then makes it (the caller audits it)."""
        previous = self._saved.get(endpoint)
        self._save(endpoint, labels={**((previous or {}).get("labels") or {}), label: version})
        try:
            self.catalog.set_label(endpoint, label, version)
        except BaseException:  # e.g. a reserved label name: what is saved goes back to what it was
            saved = {k: v for k, v in self._saved.items() if k != endpoint}
            if previous is not None:
                saved[endpoint] = previous
            self.store.save(saved)
            self._saved = saved
            raise
        log.info("model '%s': label '%s' moved by %s from version %s to %d", endpoint, label, actor, before, version)

    # --- audit and metrics -------------------------------------------------------------------------
    def audit(self, endpoint: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The ``limit`` most recent audit entries (of ``endpoint`` when given), oldest first."""
        return self.store.read_audit(endpoint, limit)

    def snapshot(self) -> dict[str, Any]:
        """Totals for the metrics collector: per (endpoint, target) outcomes and latency
        histograms, weights, shadows' outcomes, drops and comparisons, and rollouts.

        Only what exists now (Note [Series of what exists]): the targets and shadows of the
        policies in force, and each endpoint's rollout while it runs or, once finished, while its
        endpoint still has a policy. A target dropped from a split, a removed shadow or a cleared
        policy leaves no series behind; its samples stay for :meth:`readout` and the gates."""
        with self._lock:
            active = dict(self.active)
            targets = {(n, t.id): t for n, ep in active.items() for t in ep.targets}
            shadows = {(n, s.id): s.stats for n, ep in active.items() for s in ep.shadows}
            rollouts = {n: (r.state.value, r.weight, r.candidate) for n, r in self._rollouts.items()
                        if r.state.active or n in active}
        return {
            "targets": {k: t.stats.totals() for k, t in targets.items()},
            "weights": {k: t.weight for k, t in targets.items()},
            "shadows": {k: {**s.outcomes.totals(), "comparison": s.comparison()} for k, s in shadows.items()},
            "rollouts": rollouts,
        }


def _version_field(value: Any, what: str) -> int:
    """A version number from a request: a positive integer (or its digits as text)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{what}: 'version' must be a positive integer (a version number), got {value!r}")
    return value


def _weights(p: TrafficPolicy) -> str:
    out = ", ".join(f"{t.id} {t.weight}%" for t in p.targets)
    if p.sticky_key:
        out += f" (sticky on '{p.sticky_key}')"
    if p.shadows:
        out += "; shadows " + ", ".join(f"{s.id} {s.percent}%" for s in p.shadows)
    return out

