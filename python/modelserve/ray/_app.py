"""A model repository as a Ray Serve application, and its deployment on a cluster.

The application (:func:`build_app`)::

    ingress  (Ingress: the protocol's HTTP app and gRPC rpcs; routing)
      ├── <model>-v<version>  (VersionReplica, one deployment per served version; autoscaled)
      ├── ...
      └── metrics-directory   (MetricsDirectory: where replicas announce their /metrics)

Which versions are served, their labels and the default come from each model's config.yaml
(``version_policy``, ``labels``) exactly as on one server; the replicas and resources of each
version come from its ``ray`` section (:class:`modelserve.config.RayConfig`).

Note [Swaps on the cluster]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
``modelserve ray deploy`` again after a new version folder appears is the cluster's
zero-downtime swap. The new version's deployment starts beside the serving ones; the ingress's
spec changes (its default is the new version), so Ray Serve rolls the ingress: a new ingress
replica starts, reads every version replica, and only then takes requests, while the old one
finishes what it has. The superseded version stays deployed (``keep_previous_versions``, see
:func:`plan`), so requests the old ingress still routes to it succeed; it goes at a later deploy.
Deployments whose arguments did not change keep their replicas.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import gRPCOptions

from ..config import ModelConfig, RayConfig, load_config
from ..errors import InvalidArgumentError, NotFoundError
from ..repository import scan_repository
from ._ingress import Ingress
from ._replica import MetricsDirectory, VersionReplica

__all__ = ["build_app", "deploy", "deployment_name", "GRPC_SERVICERS"]

log = logging.getLogger("modelserve.ray")

#: The servicer registrations Ray Serve's gRPC proxy imports (our committed stubs): the Open
#: Inference Protocol and modelserve's traffic service.
GRPC_SERVICERS = [
    "modelserve._proto.inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server",
    "modelserve._proto.modelserve_pb2_grpc.add_TrafficServiceServicer_to_server",
]

#: The ingress: routing only, no model; it needs little CPU but must never wait behind replicas.
INGRESS_NUM_CPUS = 0.1


def deployment_name(model: str, version: int) -> str:
    """The Ray Serve deployment of one model version (unique: the suffix parses from the right)."""
    return f"{model}-v{version}"


def _deployment_options(model: str, version: int, ray_config: RayConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": deployment_name(model, version),
        "ray_actor_options": {"num_cpus": ray_config.num_cpus, "num_gpus": ray_config.num_gpus},
        "max_ongoing_requests": ray_config.max_ongoing_requests,
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 30,  # a replica leaving finishes what it has queued
    }
    if ray_config.min_replicas == ray_config.max_replicas:
        options["num_replicas"] = ray_config.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": ray_config.min_replicas,
            "max_replicas": ray_config.max_replicas,
            "initial_replicas": ray_config.initial_replicas,
            "target_ongoing_requests": ray_config.target_ongoing_requests,
            "upscale_delay_s": ray_config.upscale_delay_s,
            "downscale_delay_s": ray_config.downscale_delay_s,
        }
    return options


def plan(
    repository: str | Path, models: Iterable[str] | None = None, previous: Mapping[str, Iterable[int]] | None = None
) -> dict[str, Any]:
    """What the application serves: ``{model: {"config", "versions", "labels", "default",
    "traffic"}}``, from the repository's folders and configs (version policy and labels as on
    one server). ``previous``: the versions each model served before (a redeploy); the newest
    ``keep_previous_versions`` of those the policy no longer selects stay served, reachable by
    number, as a single server keeps superseded versions loaded for rollback (Note [Swaps on the
    cluster]). Raises when a config is invalid, a label names a version that is not served, or
    a model asked for is missing."""
    root = Path(repository)
    scan = scan_repository(root)
    names = list(models) if models else sorted(scan)
    missing = [n for n in names if n not in scan]
    if missing:
        raise NotFoundError(f"model(s) {missing} not found in repository {root}; found {sorted(scan)}")
    out: dict[str, Any] = {}
    for name in names:
        config: ModelConfig = load_config(scan[name].path)
        versions = config.version_policy.select(sorted(scan[name].versions))
        if not versions:
            raise InvalidArgumentError(
                f"model '{name}': version_policy {config.version_policy.model_dump(exclude_none=True)} selects no "
                f"version of those on disk {sorted(scan[name].versions)}"
            )
        on_disk = set(scan[name].versions)
        superseded = sorted((set((previous or {}).get(name, ())) & on_disk) - set(versions), reverse=True)
        default = max(versions)
        versions = sorted(set(versions) | set(superseded[: config.keep_previous_versions]))
        for label, v in config.labels.items():
            if v not in versions:
                raise InvalidArgumentError(
                    f"model '{name}': label '{label}' points at version {v}, which is not served; served: {versions}"
                )
        traffic = config.traffic.model_dump(mode="json", exclude_defaults=True) if config.traffic else None
        out[name] = {"config": config, "versions": versions, "labels": dict(config.labels), "default": default,
                     "traffic": traffic}
    return out


def build_app(
    repository: str | Path,
    *,
    models: Iterable[str] | None = None,
    ingress_replicas: int = 1,
    ingress_actor_options: Mapping[str, Any] | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
    traffic_state_dir: str | Path | None = None,
    previous: Mapping[str, Iterable[int]] | None = None,
) -> serve.Application:
    """The Ray Serve application for ``repository`` (see the module docstring). The repository
    must be at the same absolute path on every node. ``ingress_actor_options`` are Ray actor
    options for the ingress and the metrics directory (e.g. ``{"resources": {"head": 0.01}}``
    to keep routing on the head node). ``traffic_state_dir``: where the ingress keeps traffic
    policies, rollouts and their audit log (a folder every node sees; None: in memory)."""
    root = Path(repository).resolve()
    served = plan(root, models, previous)
    extra = dict(ingress_actor_options or {})
    directory = MetricsDirectory.options(name="metrics-directory", num_replicas=1,
                                         ray_actor_options={"num_cpus": 0, **extra}).bind()
    handles: dict[str, Any] = {}
    spec: dict[str, Any] = {"models": {}}
    replica = serve.deployment(VersionReplica)
    for name, entry in served.items():
        for version in entry["versions"]:
            options = _deployment_options(name, version, entry["config"].ray)
            handles[options["name"]] = replica.options(**options).bind(str(root), name, version, directory)
        spec["models"][name] = {
            "versions": {v: deployment_name(name, v) for v in entry["versions"]},
            "labels": entry["labels"],
            "default": entry["default"],
            "traffic": entry["traffic"],
        }
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": INGRESS_NUM_CPUS, **extra},
        max_ongoing_requests=1000,
    )
    options = {"max_message_bytes": max_message_bytes,
               "traffic_state_dir": str(traffic_state_dir) if traffic_state_dir is not None else None}
    return ingress.bind(spec, handles, directory, options)


def _served_versions(app: str) -> dict[str, list[int]]:
    """The model versions application ``app`` serves now, from its deployments' names."""
    status = serve.status().applications.get(app)
    out: dict[str, list[int]] = {}
    for deployment in status.deployments if status is not None else ():
        model, sep, version = deployment.rpartition("-v")
        if sep and model and version.isdigit():
            out.setdefault(model, []).append(int(version))
    return out


def deploy(
    repository: str | Path,
    *,
    address: str | None = None,
    name: str = "modelserve",
    models: Iterable[str] | None = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    proxy_location: str = "EveryNode",
    ingress_replicas: int = 1,
    ingress_actor_options: Mapping[str, Any] | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
    traffic_state_dir: str | Path | None = None,
    blocking: bool = False,
) -> Mapping[str, Any]:
    """Deploys ``repository`` as the Ray Serve application ``name`` and waits until it is
    running; returns where it listens.

    ``address``: the Ray cluster (``"auto"``, ``"ray://head:10001"``, ...; None joins the
    cluster this process is connected to, or the one ``RAY_ADDRESS`` names, or starts a local
    one). ``host``/``http_port``/``grpc_port``: where Ray Serve's proxies listen (Serve-wide
    settings: they apply when this call starts Serve on the cluster, and are kept otherwise).
    ``proxy_location``: ``EveryNode`` or ``HeadOnly``. Deploying again with a changed repository
    updates the application in place (Note [Swaps on the cluster]).
    """
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    # Serve's per-request access log would cost the proxies and every replica a line per call.
    logging_config = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(
        proxy_location=proxy_location,
        http_options={"host": host, "port": http_port},
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICERS),
        logging_config=logging_config,
    )
    app = build_app(repository, models=models, previous=_served_versions(name), ingress_replicas=ingress_replicas,
                    ingress_actor_options=ingress_actor_options, max_message_bytes=max_message_bytes,
                    traffic_state_dir=traffic_state_dir)
    serve.run(app, name=name, route_prefix="/", blocking=blocking, logging_config=logging_config)
    return {"name": name, "http": f"{host}:{http_port}", "grpc": f"{host}:{grpc_port}"}
