"""Prometheus metrics at ``GET /metrics``, every name prefixed ``modelserve_``.

Note [Metrics at scrape time]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Nothing is recorded on the request path for metrics' sake: the native core already counts
requests by outcome, sums and buckets queue, compute and end-to-end times (fixed-bound histograms
updated under the statistics lock it takes for every batch anyway), counts batch sizes, and keeps
the queued and in-flight gauges current at enqueue and dequeue. A custom collector reads those at
scrape time, with the version states and load durations of the repository and the memory pools'
statistics. So measuring costs a scrape, not a per-request lock or allocation.

Note [Series of what exists]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Every collector builds its families afresh at each scrape from what exists at that moment (no
long-lived labelled metric objects), so a series lives exactly as long as its subject: a version's
while it is loading, warming, ready, draining or failed (an UNLOADED version has none: retired
versions would otherwise pile up over a model's life); an endpoint's target and shadow series
while the policy in force names them (traffic/manager.py, ``snapshot``); a rollout's while it
runs, and once finished while its endpoint still has a policy. A removed thing's series are gone
at the next scrape. One that comes back continues from the totals kept for it (a target's or a
shadow's, which the readout still uses) or starts at zero (a reloaded version's new engine),
which Prometheus reads as a counter reset.

======================================================  =========  =================================
metric                                                  type       labels
======================================================  =========  =================================
modelserve_requests_total                               counter    model, version, outcome
modelserve_request_duration_seconds                     histogram  model, version (enqueue to done)
modelserve_queue_duration_seconds                       histogram  model, version
modelserve_compute_duration_seconds                     histogram  model, version (the request's batch)
modelserve_batch_size                                   histogram  model, version (rows per batch)
modelserve_queued_requests                              gauge      model, version
modelserve_inflight_requests                            gauge      model, version
modelserve_instances                                    gauge      model, version
modelserve_batch_delay_seconds                          gauge      model, version (the queue delay now)
modelserve_batch_target_size                            gauge      model, version (rows waited for)
modelserve_batch_max_size                               gauge      model, version (largest batch formed)
modelserve_model_state                                  gauge      model, version, state (1 = current)
modelserve_model_load_duration_seconds                  gauge      model, version, phase (load, warmup)
modelserve_memory_pool_bytes                            gauge      pool, kind (in_use, held, peak)
modelserve_memory_pool_hit_ratio                        gauge      pool
modelserve_instance_memory_bytes                        gauge      model, version, instance (a worker's PSS)
modelserve_instance_restarts_total                      counter    model, version (worker crashes)
modelserve_time_to_first_token_seconds                  histogram  model, version (generative models)
modelserve_inter_token_latency_seconds                  histogram  model, version
modelserve_prompt_tokens_total                          counter    model, version
modelserve_generated_tokens_total                       counter    model, version
modelserve_sequences                                    gauge      model, version, state (running, waiting)
modelserve_kv_cache_blocks                              gauge      model, version, state (used, free)
modelserve_preemptions_total                            counter    model, version
modelserve_prefix_cache_hit_ratio                       gauge      model, version
modelserve_input_drift_psi                              gauge      model, version, input, feature
modelserve_input_drift_ks                               gauge      model, version, input, feature (continuous)
modelserve_input_drift_reference_requests               gauge      model, version (the reference so far)
modelserve_trace_context_invalid_total                  counter    protocol (malformed traceparent headers)
modelserve_traced_requests_total                        counter    (request spans exported)
modelserve_payload_log_records_total                    counter    (records the sink took)
modelserve_payload_log_dropped_total                    counter    reason (queue_full, sink_error)
modelserve_payload_log_queue_bytes                      gauge      (bytes the queued records hold)
process_*, python_info, python_gc_*                     various    prometheus_client's standard ones
======================================================  =========  =================================

Autoscaling, saturation and memory budgets: server/scaling_metrics.py.
Traffic management adds metrics labelled ``endpoint`` and ``target`` (traffic_metrics.py).

``outcome`` is ``success`` or the failure's status in lower case (``invalid_argument``,
``resource_exhausted``, ``deadline_exceeded``, ``internal``, ``cancelled``, ``unavailable``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import memory
from ..repository import VersionState
from .scaling_metrics import ScalingCollector

if TYPE_CHECKING:
    from ..runtime import Runtime  # not a ServingRuntime: per-version state only a Runtime has

__all__ = ["Metrics"]

_BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: dict) -> None:
    buckets, running = [], 0
    for bound, count in zip(hist["bounds_ns"], hist["counts"]):
        running += count
        buckets.append((repr(bound / 1e9), running))
    buckets.append(("+Inf", hist["count"]))
    family.add_metric(labels, buckets, hist["sum_ns"] / 1e9)


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        requests = CounterMetricFamily("modelserve_requests", "Requests by model, version and outcome", labels=mv + ["outcome"])
        durations = {
            key: HistogramMetricFamily(f"modelserve_{name}_duration_seconds", text, labels=mv)
            for key, name, text in (
                ("request_hist", "request", "Time from enqueue to completion"),
                ("queue_hist", "queue", "Time requests waited in the queue"),
                ("compute_hist", "compute", "Compute time (input, infer, output) of the request's batch"),
            )
        }
        batch = HistogramMetricFamily("modelserve_batch_size", "Rows per executed batch", labels=mv)
        queued = GaugeMetricFamily("modelserve_queued_requests", "Requests waiting in the queue", labels=mv)
        inflight = GaugeMetricFamily("modelserve_inflight_requests", "Requests running on an instance", labels=mv)
        instances = GaugeMetricFamily("modelserve_instances", "Model instances", labels=mv)
        # What the batcher waits for now: the static settings, or a latency target's plan.
        plan = {
            key: GaugeMetricFamily(f"modelserve_{name}", text, labels=mv)
            for key, name, text in (
                ("batch_delay_us", "batch_delay_seconds", "How long the head of the queue may wait for a batch"),
                ("batch_rows_planned", "batch_target_size", "The batch size (rows) the batcher waits for"),
                ("batch_cap", "batch_max_size", "The largest batch (rows) the batcher forms"),
            )
        }
        for s in self.runtime.model_statistics():
            labels = [s["name"], s["version"]]
            requests.add_metric(labels + ["success"], s["success_count"])
            for code, n in s["failures"].items():
                requests.add_metric(labels + [code.lower()], n)
            for key, family in durations.items():
                _histogram(family, labels, s[key])
            running, buckets = 0, []
            sizes = sorted(s["batch_stats"].items())
            for bound in _BATCH_BOUNDS:
                running = sum(b["count"] for size, b in sizes if size <= bound)
                buckets.append((str(bound), running))
            buckets.append(("+Inf", s["execution_count"]))
            batch.add_metric(labels, buckets, s["inference_count"])
            queued.add_metric(labels, s["queued"])
            inflight.add_metric(labels, s["in_flight"])
            instances.add_metric(labels, s["instances"])
            for key, family in plan.items():
                family.add_metric(labels, s[key] / 1e6 if key == "batch_delay_us" else s[key])
        yield requests
        yield from durations.values()
        yield from (batch, queued, inflight, instances)
        yield from plan.values()

        state = GaugeMetricFamily("modelserve_model_state", "1 for each version's current state", labels=mv + ["state"])
        load = GaugeMetricFamily(
            "modelserve_model_load_duration_seconds", "Time each load phase of a version took", labels=mv + ["phase"]
        )
        for name in sorted(self.runtime.repository.models):
            try:
                info = self.runtime.model_versions(name)
            except Exception:  # unloaded between listing and reading
                continue
            for version, v in info["versions"].items():
                if v["state"] == VersionState.UNLOADED.value:  # Note [Series of what exists]
                    continue
                labels = [name, str(version)]
                for s in VersionState:
                    state.add_metric(labels + [s.value], 1.0 if v["state"] == s.value else 0.0)
                for phase in ("load", "warmup"):
                    if f"{phase}_s" in v["phases"]:
                        load.add_metric(labels + [phase], v["phases"][f"{phase}_s"])
        yield state
        yield load

        # Process instances (instances.isolation: process): each worker's proportional set size.
        worker_memory = GaugeMetricFamily(
            "modelserve_instance_memory_bytes", "Proportional set size of an instance's worker process",
            labels=mv + ["instance"],
        )
        restarts = CounterMetricFamily(
            "modelserve_instance_restarts", "Worker processes that died or were killed (and restarted)", labels=mv
        )
        for labels, workers in _versions_with(self.runtime, "workers"):
            for w in workers.workers():
                if w["pid"] > 0:
                    worker_memory.add_metric(labels + [str(w["instance"])], w["pss_bytes"])
            restarts.add_metric(labels, workers.stats()["crashes"])
        yield worker_memory
        yield restarts
        yield from _generation_metrics(self.runtime, mv)
        yield from _observe_metrics(self.runtime, mv)

        pool_bytes = GaugeMetricFamily("modelserve_memory_pool_bytes", "Memory pool bytes", labels=["pool", "kind"])
        hit = GaugeMetricFamily("modelserve_memory_pool_hit_ratio", "Allocations served from the pool", labels=["pool"])
        for pool, st in memory.pool_stats().items():
            pool_bytes.add_metric([pool, "in_use"], st["bytes_in_use"])
            pool_bytes.add_metric([pool, "held"], st["bytes_held"])
            pool_bytes.add_metric([pool, "peak"], st["peak_bytes_in_use"])
            hit.add_metric([pool], st["hit_rate"])
        yield pool_bytes
        yield hit


def _versions_with(runtime: Runtime, part: str) -> Iterator[tuple[list[str], Any]]:
    """([model, version], the version's ``part``) of every version that has that part (process
    ``workers``, a ``generator``, a ``drift`` monitor) and is not UNLOADED (Note [Series of what
    exists])."""
    for name, managed in sorted(runtime.repository.models.items()):
        for version, mv in sorted(managed.versions.items()):
            value = getattr(mv, part)
            if value is not None and mv.state is not VersionState.UNLOADED:
                yield [name, str(version)], value


def _generation_metrics(runtime: Runtime, mv: list[str]) -> Iterator[Metric]:
    """Generative versions (backend gpt2): their engines' counters, read at scrape time."""
    ttft = HistogramMetricFamily("modelserve_time_to_first_token_seconds", "Submit to first generated token", labels=mv)
    itl = HistogramMetricFamily("modelserve_inter_token_latency_seconds", "Between a sequence's tokens", labels=mv)
    prompt = CounterMetricFamily("modelserve_prompt_tokens", "Prompt tokens of admitted requests", labels=mv)
    generated = CounterMetricFamily("modelserve_generated_tokens", "Tokens generated", labels=mv)
    seqs = GaugeMetricFamily("modelserve_sequences", "Sequences by state", labels=mv + ["state"])
    blocks = GaugeMetricFamily("modelserve_kv_cache_blocks", "KV-cache blocks by state", labels=mv + ["state"])
    preempt = CounterMetricFamily("modelserve_preemptions", "Sequences preempted for KV blocks", labels=mv)
    hit = GaugeMetricFamily("modelserve_prefix_cache_hit_ratio", "Prompt blocks found in the prefix cache", labels=mv)
    for labels, engine in _versions_with(runtime, "generator"):
        s = engine.stats()
        for family, key in ((ttft, "time_to_first_token"), (itl, "inter_token_latency")):
            h = s[key]
            family.add_metric(labels, [(str(b), n) for b, n in h["buckets"]] + [("+Inf", h["count"])], h["sum"])
        prompt.add_metric(labels, s["prompt_tokens_total"])
        generated.add_metric(labels, s["generated_tokens_total"])
        seqs.add_metric(labels + ["running"], s["running"])
        seqs.add_metric(labels + ["waiting"], s["waiting"])
        b = s["blocks"]
        blocks.add_metric(labels + ["used"], b["in_use"])
        blocks.add_metric(labels + ["free"], b["free"] + b["cached"])  # cached blocks are reusable
        preempt.add_metric(labels, s["preemptions"])
        lookups = b["prefix_hits"] + b["prefix_misses"]
        hit.add_metric(labels, b["prefix_hits"] / lookups if lookups else 0.0)
    yield from (ttft, itl, prompt, generated, seqs, blocks, preempt, hit)


def _observe_metrics(runtime: Runtime, mv: list[str]) -> Iterator[Metric]:
    """Input drift per version (Note [Input drift]; every family is present from the start, its
    samples once a version's reference is complete), then tracing and payload logging."""
    features = mv + ["input", "feature"]
    psi = GaugeMetricFamily("modelserve_input_drift_psi",
                            "Population stability index of an input feature, window against reference", labels=features)
    ks = GaugeMetricFamily("modelserve_input_drift_ks",
                           "Kolmogorov-Smirnov statistic of a continuous input feature, window against reference",
                           labels=features)
    reference = GaugeMetricFamily("modelserve_input_drift_reference_requests",
                                  "Requests (or data rows) in a version's drift reference so far", labels=mv)
    for labels, drift in _versions_with(runtime, "drift"):
        snapshot = drift.snapshot()
        reference.add_metric(labels, snapshot["reference_requests"])
        for f in snapshot["features"]:
            psi.add_metric(labels + [f["input"], f["feature"]], f["psi"])
            if f["ks"] is not None:
                ks.add_metric(labels + [f["input"], f["feature"]], f["ks"])
    yield from (psi, ks, reference)

    observer = runtime.observer
    invalid = CounterMetricFamily("modelserve_trace_context_invalid",
                                  "Requests whose traceparent was malformed (a new trace started)", labels=["protocol"])
    for protocol, n in sorted(observer.invalid_trace_context.items()):
        invalid.add_metric([protocol], n)
    traced = CounterMetricFamily("modelserve_traced_requests", "Requests traced (request spans ended)")
    written = CounterMetricFamily("modelserve_payload_log_records", "Payload records the sink took")
    dropped = CounterMetricFamily("modelserve_payload_log_dropped", "Payload records dropped", labels=["reason"])
    queued = GaugeMetricFamily("modelserve_payload_log_queue_bytes", "Bytes the queued payload records hold")
    if observer.tracing is not None:
        traced.add_metric([], observer.tracing.spans)
    payload = observer.payload_log
    if payload is not None:
        written.add_metric([], payload.written)
        for reason, n in sorted(payload.dropped.items()):
            dropped.add_metric([reason], n)
        queued.add_metric([], payload.queued_bytes)
    yield from (invalid, traced, written, dropped, queued)


class Metrics:
    """The registry the HTTP frontend serves at /metrics; ``render()`` gives the exposition."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RuntimeCollector(runtime))
        self.registry.register(ScalingCollector(runtime))  # saturation, scaling, memory budgets
        from .traffic_metrics import TrafficCollector  # per endpoint and target: traffic_metrics.py

        self.registry.register(TrafficCollector(runtime.traffic))
        # The process's CPU, memory, file descriptors and start time, the interpreter's version
        # and its garbage collector: registered on this registry, not prometheus_client's global
        # one, so every Metrics (two servers in one process, a Ray replica) has its own.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
