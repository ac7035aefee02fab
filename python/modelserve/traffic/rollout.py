"""Canary rollouts: the state machine, with an injectable clock and no threads of its own.

Note [Rollout gates]
~~~~~~~~~~~~~~~~~~~~
A rollout walks the candidate's weight through ``steps`` (e.g. 5, 25, 50, 100 percent); the
baseline has the rest. Each :meth:`Rollout.evaluate` (the manager calls it on every tick, every
100 ms to 1 s in a server; tests call it with a fake clock) looks at the last ``window_s``
seconds of outcomes of candidate and baseline (never from before the rollout began: what an
earlier A/B test recorded is not this rollout's evidence) and gives every configured gate a
verdict:

- ``wait``: fewer than ``min_requests`` requests on either side (or mirrored comparisons, for
  divergence): no verdict yet;
- ``fail``: error rate above the baseline's plus ``margin``; p99 latency above the baseline's
  times ``1 + margin`` plus ``slack_ms``; or outputs diverging beyond their limits;
- ``pass`` otherwise.

Any ``fail`` rolls back at once (not at the next step), also while paused: the candidate's
weight goes to 0 in the same tick, and the rollout records the gate, its figures and the time.
Once ``step_interval_s`` has passed at a step (paused time excluded) and every gate says
``pass``, the weight moves to the next step; after the last step (100%) the candidate is
promoted. A gate that keeps saying ``wait`` holds the rollout at its step: no traffic, no
promotion.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .policy import RolloutSpec

__all__ = ["RolloutState", "Rollout", "GateResult", "WindowView"]


class RolloutState(str, enum.Enum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    PROMOTED = "PROMOTED"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"

    @property
    def active(self) -> bool:
        return self in (RolloutState.RUNNING, RolloutState.PAUSED)


@dataclass
class GateResult:
    gate: str
    verdict: str  # pass | fail | wait
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "verdict": self.verdict, **self.figures}


@dataclass
class WindowView:
    """What the gates see: (requests, errors, latencies in s) of each side, and the divergence
    comparison (ShadowStats.comparison) of the candidate's mirror when there is one."""

    candidate: tuple[int, int, np.ndarray]
    baseline: tuple[int, int, np.ndarray]
    divergence: dict[str, Any] | None = None


def _p99_ms(latencies: np.ndarray) -> float:
    return float(np.percentile(latencies, 99)) * 1e3


def _wall() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Rollout:
    """One rollout of ``candidate`` against ``baseline`` (target ids) on ``endpoint``."""

    endpoint: str
    spec: RolloutSpec
    candidate: str
    baseline: str
    previous_policy: dict[str, Any] | None
    state: RolloutState = RolloutState.RUNNING
    step: int = 0
    step_started: float = 0.0  # clock time the current step began (paused time excluded)
    began: float = 0.0  # clock time the rollout began (or was restored): windows start no earlier
    paused_at: float | None = None
    started_at: str = field(default_factory=_wall)
    history: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None  # why it ended (gate, figures, time) or who ended it
    gates: list[dict[str, Any]] = field(default_factory=list)  # the last evaluation

    @property
    def weight(self) -> int:
        """The candidate's weight now."""
        if self.state.active:
            return self.spec.steps[self.step]
        return 100 if self.state is RolloutState.PROMOTED else 0

    def note(self, event: str, **details: Any) -> None:
        self.history.append({"time": _wall(), "event": event, "weight": self.weight, **details})

    # --- gates ------------------------------------------------------------------------------
    def check(self, view: WindowView) -> list[GateResult]:
        """Every configured gate's verdict on ``view`` (Note [Rollout gates])."""
        spec, gates = self.spec, self.spec.gates
        (n1, e1, l1), (n0, e0, l0) = view.candidate, view.baseline
        enough = n1 >= spec.min_requests and n0 >= spec.min_requests
        counts = {"candidate_requests": n1, "baseline_requests": n0, "min_requests": spec.min_requests}
        out = []
        if gates.error_rate is not None:
            if not enough:
                out.append(GateResult("error_rate", "wait", counts))
            else:
                r1, r0 = e1 / n1, e0 / n0
                limit = r0 + gates.error_rate.margin
                out.append(GateResult("error_rate", "fail" if r1 > limit else "pass",
                                      {**counts, "candidate": r1, "baseline": r0, "limit": limit}))
        if gates.p99_latency is not None:
            if not enough:
                out.append(GateResult("p99_latency", "wait", counts))
            else:
                p1, p0 = _p99_ms(l1), _p99_ms(l0)
                limit = p0 * (1 + gates.p99_latency.margin) + gates.p99_latency.slack_ms
                out.append(GateResult("p99_latency", "fail" if p1 > limit else "pass",
                                      {**counts, "candidate_ms": p1, "baseline_ms": p0, "limit_ms": limit}))
        if gates.divergence is not None:
            d = view.divergence or {"requests": 0}
            figures = {"compared_requests": d["requests"], "min_requests": spec.min_requests}
            if d["requests"] < spec.min_requests:
                out.append(GateResult("divergence", "wait", figures))
            else:
                g = gates.divergence
                disagreement = None if d["agreement_rate"] is None else 1 - d["agreement_rate"]
                failed = (disagreement is not None and disagreement > g.max_disagreement) or (
                    g.max_mean_abs_diff is not None and d["mean_abs_diff"] is not None
                    and d["mean_abs_diff"] > g.max_mean_abs_diff
                )
                out.append(GateResult("divergence", "fail" if failed else "pass", {
                    **figures, "disagreement": disagreement, "max_disagreement": g.max_disagreement,
                    "mean_abs_diff": d["mean_abs_diff"], "max_mean_abs_diff": g.max_mean_abs_diff,
                }))
        return out

    def evaluate(self, now: float, view: Callable[[], WindowView]) -> str | None:
        """One tick: ``"rollback"``, ``"advance"``, ``"promote"`` (what the manager must apply,
        this object already updated) or None. ``view`` is called only for an active rollout."""
        if not self.state.active:
            return None
        results = self.check(view())
        self.gates = [r.as_dict() for r in results]
        failed = [r for r in results if r.verdict == "fail"]
        if failed:
            self.state = RolloutState.ROLLED_BACK
            self.verdict = {"time": _wall(), "gate": failed[0].gate, "figures": failed[0].figures,
                            "step": self.spec.steps[self.step], "gates": self.gates}
            self.note("rolled_back", gate=failed[0].gate, figures=failed[0].figures)
            return "rollback"
        if self.state is RolloutState.PAUSED or now - self.step_started < self.spec.step_interval_s:
            return None
        if any(r.verdict == "wait" for r in results):
            return None
        if self.step + 1 < len(self.spec.steps):
            self.step += 1
            self.step_started = now
            self.note("advanced", gates=self.gates)
            return "advance"
        self.state = RolloutState.PROMOTED
        self.verdict = {"time": _wall(), "by": "gates", "gates": self.gates}
        self.note("promoted", gates=self.gates)
        return "promote"

    # --- manual control ---------------------------------------------------------------------
    def pause(self, now: float) -> None:
        self.state, self.paused_at = RolloutState.PAUSED, now
        self.note("paused")

    def resume(self, now: float) -> None:
        if self.paused_at is not None:
            self.step_started += now - self.paused_at
        self.state, self.paused_at = RolloutState.RUNNING, None
        self.note("resumed")

    def finish(self, state: RolloutState, actor: str) -> None:
        self.state = state
        self.verdict = {"time": _wall(), "by": actor}
        self.note(state.value.lower(), actor=actor)

    # --- persistence --------------------------------------------------------------------------
    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = {
            "endpoint": self.endpoint,
            "state": self.state.value,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "weight": self.weight,
            "step": self.step,
            "steps": list(self.spec.steps),
            "started_at": self.started_at,
            "spec": self.spec.model_dump(mode="json"),
            "previous_policy": self.previous_policy,
            "verdict": self.verdict,
            "gates": self.gates,
            "history": self.history,
        }
        if now is not None and self.state.active:
            at = self.paused_at if self.paused_at is not None else now
            out["step_elapsed_s"] = at - self.step_started
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], now: float) -> "Rollout":
        """A persisted rollout; an active one restarts its current step's interval at ``now``
        (the windows of outcomes are not persisted: the gates collect them again)."""
        r = cls(
            endpoint=data["endpoint"], spec=RolloutSpec.model_validate(data["spec"]), candidate=data["candidate"],
            baseline=data["baseline"], previous_policy=data.get("previous_policy"),
            state=RolloutState(data["state"]), step=int(data["step"]), step_started=now, began=now,
            started_at=data.get("started_at", _wall()), history=list(data.get("history", [])),
            verdict=data.get("verdict"), gates=list(data.get("gates", [])),
        )
        if r.state is RolloutState.PAUSED:
            r.paused_at = now
        return r
