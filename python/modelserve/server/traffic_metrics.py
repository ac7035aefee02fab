"""Prometheus metrics of traffic management, labelled by ``endpoint`` (the model name clients
call) and ``target`` (``[model:]version``, as in policies), read at scrape time from the
TrafficManager's totals (Note [Metrics at scrape time] in metrics.py): only for the targets and
shadows of the policies in force and the rollouts of endpoints that still have one (Note [Series
of what exists] in metrics.py).

==============================================  =========  ==========================================
metric                                          type       labels
==============================================  =========  ==========================================
modelserve_traffic_requests_total               counter    endpoint, target, outcome
modelserve_traffic_request_duration_seconds     histogram  endpoint, target (as the caller saw it)
modelserve_traffic_weight_percent               gauge      endpoint, target
modelserve_shadow_requests_total                counter    endpoint, target, outcome
modelserve_shadow_dropped_total                 counter    endpoint, target (queue full)
modelserve_shadow_agreement_ratio               gauge      endpoint, target (class outputs)
modelserve_shadow_mean_abs_diff                 gauge      endpoint, target (number outputs)
modelserve_shadow_max_abs_diff                  gauge      endpoint, target (number outputs)
modelserve_rollout_weight_percent               gauge      endpoint, target (the candidate)
modelserve_rollout_state                        gauge      endpoint, target, state (1 = current)
==============================================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..traffic.rollout import RolloutState
from ..traffic.stats import LATENCY_BOUNDS_S

__all__ = ["TrafficCollector"]


def _histogram(family: HistogramMetricFamily, labels: list[str], totals: dict[str, Any]) -> None:
    buckets, running = [], 0
    for bound, count in zip(LATENCY_BOUNDS_S, totals["buckets"]):
        running += count
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", running + totals["buckets"][-1]))
    family.add_metric(labels, buckets, totals["sum"])


class TrafficCollector(Collector):
    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        snap = self.manager.snapshot()
        et = ["endpoint", "target"]
        requests = CounterMetricFamily("modelserve_traffic_requests", "Routed requests by target and outcome",
                                       labels=et + ["outcome"])
        duration = HistogramMetricFamily("modelserve_traffic_request_duration_seconds",
                                         "Latency of routed requests as callers saw it", labels=et)
        for (endpoint, target), totals in sorted(snap["targets"].items()):
            for outcome, n in sorted(totals["outcomes"].items()):
                requests.add_metric([endpoint, target, outcome], n)
            _histogram(duration, [endpoint, target], totals)
        weight = GaugeMetricFamily("modelserve_traffic_weight_percent", "Weight of each target now", labels=et)
        for (endpoint, target), w in sorted(snap["weights"].items()):
            weight.add_metric([endpoint, target], w)
        yield from (requests, duration, weight)

        shadow_requests = CounterMetricFamily("modelserve_shadow_requests", "Mirrored requests by outcome",
                                              labels=et + ["outcome"])
        dropped = CounterMetricFamily("modelserve_shadow_dropped", "Mirrored requests dropped (queue full)", labels=et)
        agreement = GaugeMetricFamily("modelserve_shadow_agreement_ratio",
                                      "Share of class output elements equal to the primary's", labels=et)
        mean_diff = GaugeMetricFamily("modelserve_shadow_mean_abs_diff",
                                      "Mean absolute difference of number outputs from the primary's", labels=et)
        max_diff = GaugeMetricFamily("modelserve_shadow_max_abs_diff",
                                     "Largest absolute difference of number outputs from the primary's", labels=et)
        for (endpoint, target), s in sorted(snap["shadows"].items()):
            labels = [endpoint, target]
            for outcome, n in sorted(s["outcomes"].items()):
                shadow_requests.add_metric(labels + [outcome], n)
            c = s["comparison"]
            dropped.add_metric(labels, c["dropped"])
            for family, key in ((agreement, "agreement_rate"), (mean_diff, "mean_abs_diff"), (max_diff, "max_abs_diff")):
                if c[key] is not None:
                    family.add_metric(labels, c[key])
        yield from (shadow_requests, dropped, agreement, mean_diff, max_diff)

        rollout_weight = GaugeMetricFamily("modelserve_rollout_weight_percent", "The rollout candidate's weight",
                                           labels=et)
        state = GaugeMetricFamily("modelserve_rollout_state", "1 for the rollout's current state", labels=et + ["state"])
        for endpoint, (current, w, candidate) in sorted(snap["rollouts"].items()):
            rollout_weight.add_metric([endpoint, candidate], w)
            for s_ in RolloutState:
                state.add_metric([endpoint, candidate, s_.value], 1.0 if s_.value == current else 0.0)
        yield rollout_weight
        yield state
