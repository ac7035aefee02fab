"""Outcomes per target: sliding windows for rollout gates, totals for metrics, and the A/B
readout with 95% confidence intervals.

Note [What counts as an error]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Every routed request is recorded with its outcome (``success`` or the status of its failure,
lower case, as in the core's metrics) and its latency as the caller saw it, from routing to
completion. Error *rates* (gates and readout) count the failures a variant can cause:
everything but ``invalid_argument`` and ``cancelled``, which are the caller's own doing and
would otherwise land on whichever variant the request happened to reach.

Note [Readout statistics]
~~~~~~~~~~~~~~~~~~~~~~~~~
Error rate: the difference of two proportions with the Agresti-Caffo interval (one success and
one failure added to each side before the Wald interval), which keeps a sensible width at the
zero error counts healthy variants have. Latency: the difference of the means with Welch's
normal interval, and the differences of p50 and p99 with a percentile bootstrap (400 resamples
of at most 2,000 samples a side, seeded, so a readout is reproducible). "significant" means the
interval excludes 0.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["TargetStats", "ShadowStats", "compare_outputs", "LATENCY_BOUNDS_S", "readout", "summary", "CLIENT_OUTCOMES"]

#: Outcomes that are the caller's doing (Note [What counts as an error]).
CLIENT_OUTCOMES = frozenset({"invalid_argument", "cancelled"})

#: Bucket bounds (seconds) of the latency histograms exported as metrics.
LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Z95 = 1.959963984540054


class TargetStats:
    """One target's outcomes: ``max_samples`` most recent (time, error, latency) for windows and
    readouts, and running totals (by outcome, latency histogram) for metrics. Thread-safe."""

    def __init__(self, max_samples: int = 50_000) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, bool, float]] = deque(maxlen=max_samples)  # guarded by _lock
        self.outcomes: dict[str, int] = {}  # guarded by _lock
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)  # guarded by _lock; last = +Inf
        self.latency_sum = 0.0  # guarded by _lock

    def record(self, now: float, outcome: str, latency_s: float) -> None:
        error = outcome != "success" and outcome not in CLIENT_OUTCOMES
        i = 0
        while i < len(LATENCY_BOUNDS_S) and latency_s > LATENCY_BOUNDS_S[i]:
            i += 1
        with self._lock:
            self._samples.append((now, error, latency_s))
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.buckets[i] += 1
            self.latency_sum += latency_s

    def window(self, since: float | None = None, until: float | None = None) -> tuple[int, int, np.ndarray]:
        """(requests, errors, latencies in seconds) recorded in [since, until) (None: unbounded)."""
        with self._lock:  # copied in C under the lock; filtered outside it, off the request path's way
            samples = list(self._samples)
        if since is not None or until is not None:
            samples = [s for s in samples if (since is None or s[0] >= since) and (until is None or s[0] < until)]
        errors = sum(1 for s in samples if s[1])
        return len(samples), errors, np.fromiter((s[2] for s in samples), dtype=np.float64, count=len(samples))

    def totals(self) -> dict[str, Any]:
        with self._lock:
            return {"outcomes": dict(self.outcomes), "buckets": list(self.buckets), "sum": self.latency_sum}


def _kind(a: np.ndarray) -> str:
    return "numbers" if a.dtype.kind in "fc" else "classes"


def compare_outputs(primary: Mapping[str, Any], shadow: Mapping[str, Any]) -> dict[str, Any]:
    """How far a shadow's outputs are from the primary's, over the outputs both returned:
    class outputs (integers, booleans, bytes) by equal elements, numbers by absolute difference.
    An output missing or shaped differently counts as total disagreement."""
    compared = agreed = 0
    count = 0
    abs_sum = 0.0
    abs_max = 0.0
    mismatched: list[str] = []
    for name, p in primary.items():
        a = np.asarray(p)
        if name not in shadow or np.asarray(shadow[name]).shape != a.shape:
            mismatched.append(name)
            compared += max(a.size, 1)
            continue
        b = np.asarray(shadow[name])
        if _kind(a) == "numbers" and _kind(b) == "numbers":
            if a.size:
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                abs_sum += float(diff.sum())
                abs_max = max(abs_max, float(diff.max()))
                count += a.size
        else:
            compared += a.size
            agreed += int(np.count_nonzero(a == b)) if a.dtype == b.dtype or a.dtype.kind == b.dtype.kind else 0
    return {"compared": compared, "agreed": agreed, "abs_sum": abs_sum, "abs_count": count, "abs_max": abs_max,
            "mismatched": mismatched}


class ShadowStats:
    """One shadow target: its own outcomes (a TargetStats), queue drops, and the comparison of its
    outputs with the primary's, windowed like outcomes. Thread-safe."""

    def __init__(self, max_samples: int = 50_000) -> None:
        self.outcomes = TargetStats(max_samples)
        self._lock = threading.Lock()
        self.dropped = 0  # guarded by _lock
        self._comparisons: deque[tuple[float, int, int, float, int, float]] = deque(maxlen=max_samples)

    def drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def compare(self, now: float, result: Mapping[str, Any]) -> None:
        with self._lock:
            self._comparisons.append(
                (now, result["compared"], result["agreed"], result["abs_sum"], result["abs_count"], result["abs_max"])
            )

    def comparison(self, since: float | None = None) -> dict[str, Any]:
        """Requests compared, agreement rate of class elements, mean and max absolute difference of numbers."""
        with self._lock:
            rows = list(self._comparisons)
            dropped = self.dropped
        if since is not None:
            rows = [r for r in rows if r[0] >= since]
        compared = sum(r[1] for r in rows)
        agreed = sum(r[2] for r in rows)
        abs_sum = sum(r[3] for r in rows)
        abs_count = sum(r[4] for r in rows)
        return {
            "requests": len(rows),
            "agreement_rate": agreed / compared if compared else None,
            "mean_abs_diff": abs_sum / abs_count if abs_count else None,
            "max_abs_diff": max((r[5] for r in rows), default=None) if abs_count else None,
            "dropped": dropped,
        }


# --- readout ------------------------------------------------------------------------------------


def _interval(d: float, se: float) -> dict[str, Any]:
    lo, hi = d - _Z95 * se, d + _Z95 * se
    return {"diff": d, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def error_rate_diff(n1: int, e1: int, n0: int, e0: int) -> dict[str, Any]:
    """Candidate minus baseline error rate with the Agresti-Caffo 95% interval."""
    p1, p0 = (e1 + 1) / (n1 + 2), (e0 + 1) / (n0 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))
    out = _interval(e1 / n1 - e0 / n0, se)
    return out


def latency_diffs(x1: np.ndarray, x0: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Candidate minus baseline latency (milliseconds): mean (Welch) and p50/p99 (bootstrap)."""
    a, b = x1 * 1e3, x0 * 1e3
    out: dict[str, Any] = {}
    if len(a) >= 2 and len(b) >= 2:
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        out["mean_ms"] = _interval(float(a.mean() - b.mean()), se)
    rng = np.random.default_rng(seed)
    sa = a if len(a) <= 2000 else rng.choice(a, 2000, replace=False)
    sb = b if len(b) <= 2000 else rng.choice(b, 2000, replace=False)
    ra = sa[rng.integers(0, len(sa), (400, len(sa)))]
    rb = sb[rng.integers(0, len(sb), (400, len(sb)))]
    for q in (50, 99):
        d = float(np.percentile(a, q) - np.percentile(b, q))
        boot = np.percentile(ra, q, axis=1) - np.percentile(rb, q, axis=1)
        lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        out[f"p{q}_ms"] = {"diff": d, "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}
    return out


def summary(n: int, errors: int, latencies: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": n, "errors": errors, "error_rate": errors / n if n else None}
    if n:
        p50, p99 = np.percentile(latencies, [50, 99])
        out.update(p50_ms=float(p50) * 1e3, p99_ms=float(p99) * 1e3, mean_ms=float(latencies.mean()) * 1e3)
    else:
        out.update(p50_ms=None, p99_ms=None, mean_ms=None)
    return out


def readout(windows: Iterable[tuple[str, tuple[int, int, np.ndarray]]], baseline: str) -> list[dict[str, Any]]:
    """Per target: requests, errors, error rate, p50/p99/mean latency, and (for all but the
    baseline, when both have requests) the differences against ``baseline`` with 95% intervals
    (Note [Readout statistics])."""
    windows = dict(windows)
    base = windows.get(baseline)
    out = []
    for target, (n, e, lat) in windows.items():
        row = {"target": target, "baseline": target == baseline, **summary(n, e, lat)}
        if target != baseline and base is not None and n and base[0]:
            row["vs_baseline"] = {"error_rate": error_rate_diff(n, e, base[0], base[1]),
                                  "latency": latency_diffs(lat, base[2])}
        out.append(row)
    return out
