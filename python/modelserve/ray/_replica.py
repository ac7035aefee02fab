"""One replica of one model version on a Ray cluster: a whole :class:`modelserve.Runtime` that
serves exactly that version, so the native dynamic batcher and the model's instances work inside
every replica as they do in a single-process server.

This module imports ``ray`` at the top: it is loaded only where Ray runs (the replicas and
:mod:`modelserve.ray._app`), never by ``import modelserve``.

Note [One version per replica]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The repository's loader serves the versions its ``version_policy`` selects. A replica must serve
exactly one, whatever the policy says, without a second loader. So the replica stages a private
repository in a temporary folder: ``<model>/config.yaml`` is the model's own config with
``version_policy: {specific: [V]}`` and no labels, ``<model>/V`` is a symbolic link to the real
version folder, and every other entry of the model folder (warmup files and the like) is linked
too. A Runtime in explicit mode then loads that model: one version, READY before the replica
reports itself started, so Ray Serve sends it nothing earlier. The repository path must be the
same on every node (shared storage, as for a Triton fleet).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from ray import serve

from .. import errors
from ..config import CONFIG_FILE
from ..errors import ModelserveError, UnavailableError
from ..runtime import Runtime
from ..server.metrics import Metrics
from ..tensor import as_tensor

__all__ = ["VersionReplica", "MetricsDirectory", "encode_tensors", "decode_tensors", "raise_remote_error"]

log = logging.getLogger("modelserve.ray")

#: How often a replica re-announces its metrics endpoint, and how long an announcement lasts.
ANNOUNCE_INTERVAL_S = 5.0
ANNOUNCE_TTL_S = 20.0

#: A tensor on its way between ingress and replica: (datatype, array). The datatype travels with
#: the array because numpy cannot say BF16 (it reads as uint16 or ml_dtypes.bfloat16).
WireTensors = dict[str, tuple[str, np.ndarray]]


def encode_tensors(tensors: Mapping[str, Any]) -> WireTensors:
    """Tensors (modelserve Tensors or arrays) as picklable (datatype, numpy array) pairs; host
    memory is viewed, not copied (Ray's serializer takes the arrays' buffers out of band)."""
    out: WireTensors = {}
    for name, value in tensors.items():
        tensor = as_tensor(value)
        out[name] = (tensor.datatype, tensor.numpy())
    return out


def decode_tensors(wire: Mapping[str, tuple[str, np.ndarray]]) -> dict[str, Any]:
    return {name: as_tensor(array, datatype) for name, (datatype, array) in wire.items()}


def raise_remote_error(error: tuple[Any, ...]) -> None:
    """Raises, in the caller, the modelserve error a replica reported as (class name, message,
    retry hint or None): the same class, so the gRPC code and HTTP status are the single-process
    server's, and a refusal keeps its retry hint (Note [Admission control])."""
    name, message, *rest = error
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelserveError)):
        cls = errors.InternalError
    e = cls(message)
    if rest and rest[0] is not None:
        e.retry_after_s = rest[0]  # type: ignore[attr-defined]
    raise e


def _stage_version(repository: Path, model: str, version: int) -> tempfile.TemporaryDirectory:
    """Note [One version per replica]."""
    source = repository / model
    if not (source / str(version)).is_dir():
        raise errors.NotFoundError(
            f"model '{model}' version {version}: no folder {source / str(version)} on node "
            f"{ray.get_runtime_context().get_node_id()}; the model repository must be at the same path on every node"
        )
    stage = tempfile.TemporaryDirectory(prefix=f"modelserve-{model}-v{version}-")
    target = Path(stage.name) / model
    target.mkdir()
    config: dict[str, Any] = {}
    if (source / CONFIG_FILE).exists():
        config = yaml.safe_load((source / CONFIG_FILE).read_text()) or {}
    config["version_policy"] = {"specific": [version]}
    for key in ("labels", "traffic"):  # routing (labels, default, policies) is the ingress's business
        config.pop(key, None)
    (target / CONFIG_FILE).write_text(yaml.safe_dump(config))
    for entry in source.iterdir():
        if entry.name == CONFIG_FILE or (entry.name.isdigit() and entry.name != str(version)):
            continue
        os.symlink(entry.resolve(), target / entry.name)
    return stage


class _ReplicaLabels(Collector):
    """The single-process server's metrics, every sample labelled with the replica (and the Ray
    node it runs on) as well: the same names, so dashboards and alerts carry over."""

    def __init__(self, inner: Collector, replica: str, node: str) -> None:
        self.inner = inner
        self.extra = {"replica": replica, "node": node}

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, **self.extra}, s.value, s.timestamp, s.exemplar)
            yield out


@serve.deployment
class MetricsDirectory:
    """Where the version replicas announce their metrics endpoints (one replica, no CPU). The
    ingress reads it to serve ``/metrics`` (every replica's metrics, merged) and
    ``/metrics/targets`` (Prometheus HTTP service discovery). An announcement lasts
    ``ANNOUNCE_TTL_S`` seconds; replicas renew theirs every ``ANNOUNCE_INTERVAL_S``, so a replica
    that died without saying so drops out."""

    def __init__(self) -> None:
        self._targets: dict[str, tuple[float, dict[str, Any]]] = {}

    def announce(self, replica: str, target: dict[str, Any]) -> None:
        self._targets[replica] = (time.monotonic() + ANNOUNCE_TTL_S, target)

    def withdraw(self, replica: str) -> None:
        self._targets.pop(replica, None)

    def targets(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._targets = {r: t for r, t in self._targets.items() if t[0] > now}
        return [t for _, t in self._targets.values()]


class VersionReplica:
    """One replica of ``model`` version ``version`` (a Ray Serve deployment class; see
    :func:`modelserve.ray.build_app`). The ingress calls :meth:`infer` and :meth:`describe`
    through deployment handles; Ray Serve calls :meth:`check_health`."""

    def __init__(self, repository: str, model: str, version: int, directory: Any = None) -> None:
        self.model, self.version = model, version
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self._stage = _stage_version(Path(repository), model, version)
        self.runtime = Runtime(self._stage.name, model_control_mode="explicit", load_models=[model])
        if not self.runtime.model_ready(model, version):
            reasons = "; ".join(e["reason"] for e in self.runtime.repository_index() if e["reason"]) or "unknown"
            self._close()
            raise UnavailableError(f"model '{model}' version {version} did not load on replica {self.replica}: {reasons}")
        self._directory = directory
        self._metrics_server: Any = None
        self._stop = threading.Event()
        if directory is not None:
            self._start_metrics()

    # --- serving -----------------------------------------------------------------------------
    async def infer(
        self, inputs: WireTensors, outputs: list[str] | None = None, priority: int = 0, timeout_us: int = 0
    ) -> tuple[str, Any]:
        """Runs one request; returns ``("ok", wire tensors)`` or ``("error", (class, message, retry hint))``
        (the modelserve error, by name: Ray's own exception wrapper would bury its message)."""
        try:
            results = await self.runtime.infer_async(
                self.model, decode_tensors(inputs), version=self.version, outputs=outputs,
                priority=priority, timeout_us=timeout_us, as_numpy=False,
            )
        except ModelserveError as e:
            return "error", (type(e).__name__, str(e), getattr(e, "retry_after_s", None))
        return "ok", encode_tensors(results)

    def describe(self) -> dict[str, Any]:
        """Metadata, effective config, state and statistics of this replica's version."""
        return {
            "model": self.model,
            "version": self.version,
            "replica": self.replica,
            "node": self.node,
            "ready": self.runtime.model_ready(self.model, self.version),
            "metadata": self.runtime.model_metadata(self.model, self.version),
            "config": self.runtime.model_config(self.model, self.version),
            "statistics": self.runtime.model_statistics(self.model, self.version),
        }

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose version is not READY is replaced."""
        if not self.runtime.model_ready(self.model, self.version):
            raise UnavailableError(f"model '{self.model}' version {self.version} is not READY on replica {self.replica}")

    # --- metrics -------------------------------------------------------------------------------
    def _start_metrics(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ReplicaLabels(Metrics(self.runtime).registry, self.replica, self.node))
        host = ray.util.get_node_ip_address()
        server, _ = start_http_server(0, addr=host, registry=registry)
        self._metrics_server = server
        port = server.server_address[1]
        target = {
            "targets": [f"{host}:{port}"],
            "labels": {"replica": self.replica, "node": self.node, "model": self.model, "version": str(self.version)},
        }

        def announce() -> None:
            while not self._stop.is_set():
                try:
                    self._directory.announce.remote(self.replica, target).result(timeout_s=10)
                except Exception as e:  # the directory restarting: the next round tries again
                    log.debug("replica %s: announcing metrics failed: %s", self.replica, e)
                self._stop.wait(ANNOUNCE_INTERVAL_S)

        threading.Thread(target=announce, name="modelserve-metrics-announce", daemon=True).start()

    # --- shutdown ------------------------------------------------------------------------------
    def _close(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()  # finishes what is queued, then unloads
        stage = getattr(self, "_stage", None)
        if stage is not None:
            shutil.rmtree(stage.name, ignore_errors=True)

    def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica (scale-down, redeploy, shutdown)."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            try:
                self._directory.withdraw.remote(self.replica)
            except Exception:
                pass
        if getattr(self, "_metrics_server", None) is not None:
            self._metrics_server.shutdown()
        self._close()

