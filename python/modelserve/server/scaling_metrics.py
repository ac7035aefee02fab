"""Scrape-time metrics of autoscaling, admission and memory budgets (Note [Metrics at scrape
time] in server/metrics.py: read from state the runtime keeps anyway, nothing per request).

=============================================  =======  ====================================
metric                                         type     labels
=============================================  =======  ====================================
modelserve_model_saturation                    gauge    model, version
modelserve_instances_min                       gauge    model, version
modelserve_instances_max                       gauge    model, version
modelserve_scale_events_total                  counter  model, version, direction
modelserve_cold_start_seconds                  gauge    model, version (the last cold start)
modelserve_model_memory_bytes                  gauge    model, version (charged: per instance x instances)
modelserve_memory_budget_bytes                 gauge    device, kind (limit, used)
=============================================  =======  ====================================

``modelserve_model_saturation`` is the autoscaler's signal, normalised so that 1.0 means every
instance holds its target load: mean (queued + in-flight) over the look-back window divided by
(instances x target). External autoscalers (Kubernetes HPA, KEDA; see ``deploy/``) scale replicas
on it. ``direction`` is ``up``, ``down``, ``to_zero``, ``cold_start`` or ``evicted``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ScalingCollector"]


class ScalingCollector(Collector):
    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        saturation = GaugeMetricFamily(
            "modelserve_model_saturation",
            "Mean (queued + in-flight) over the autoscaling window / (instances x target per instance)", labels=mv)
        lo = GaugeMetricFamily("modelserve_instances_min", "Autoscaling lower bound of instances", labels=mv)
        hi = GaugeMetricFamily("modelserve_instances_max", "Autoscaling upper bound of instances", labels=mv)
        events = CounterMetricFamily("modelserve_scale_events", "Instance count changes by direction",
                                     labels=mv + ["direction"])
        cold = GaugeMetricFamily("modelserve_cold_start_seconds", "Duration of the last cold start", labels=mv)
        memory = GaugeMetricFamily("modelserve_model_memory_bytes", "Memory charged to the version's instances",
                                   labels=mv)
        repository = self.runtime.repository
        with repository._lock:
            models = list(repository.models.values())
        for model in models:
            with model._lock:
                versions = [v for v in model.versions.values() if v.state.value == "READY"]
            for v in versions:
                labels = [model.name, str(v.version)]
                saturation.add_metric(labels, v.scaler.saturation)
                lo.add_metric(labels, v.scaling.min)
                hi.add_metric(labels, v.scaling.max)
                for direction, n in sorted(v.scale_events.items()):
                    events.add_metric(labels + [direction], n)
                if v.last_cold_start_s is not None:
                    cold.add_metric(labels, v.last_cold_start_s)
                memory.add_metric(labels, v.memory.get("per_instance_bytes", 0) * v.instances)
        yield from (saturation, lo, hi, events, cold, memory)
        budget = repository.budget
        if budget is not None:
            family = GaugeMetricFamily("modelserve_memory_budget_bytes", "Memory budget per device",
                                       labels=["device", "kind"])
            for device, info in budget.describe()["devices"].items():
                family.add_metric([device, "limit"], info["limit_bytes"])
                family.add_metric([device, "used"], info["used_bytes"])
            yield family
