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
Deployments whose replicas would host the same thing keep their replicas: each version
deployment carries a digest of its files and config as its Serve version
(:func:`_replica_version`), since ``serve.run`` would otherwise roll every deployment on every
deploy. The ingress has no such version: it rolls on every deploy, which is how it learns the
new spec.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import gRPCOptions

from .._version import __version__
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


#: Config keys that only decide routing (read by the ingress), not what a replica hosts.
_ROUTING_KEYS = {"labels", "traffic", "version_policy", "keep_previous_versions", "ray"}


def _replica_version(root: Path, model: str, version: int, config: ModelConfig) -> str:
    """A version deployment's Serve version: a digest of what its replicas are built from (the
    version folder's files by path, size and modification time; the model's config less its
    routing keys; modelserve's version). Serve rolls a deployment's replicas when its version
    changes and keeps them when it does not, so a redeploy restarts only what changed; left to
    itself, ``serve.run`` gives every deployment a fresh random version on each deploy and rolls
    every replica of every model (Note [Swaps on the cluster]). The ``ray`` section is left out:
    Serve compares replica counts, autoscaling and actor options itself."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{__version__}\0{root}\0{model}\0{version}\0".encode())
    digest.update(config.model_dump_json(exclude=_ROUTING_KEYS).encode())
    folder = root / model / str(version)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


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
    directory = MetricsDirectory.options(name="metrics-directory", num_replicas=1, version=__version__,
                                         ray_actor_options={"num_cpus": 0, **extra}, _internal=True).bind()
    handles: dict[str, Any] = {}
    spec: dict[str, Any] = {"models": {}}
    replica = serve.deployment(VersionReplica)
    for name, entry in served.items():
        for version in entry["versions"]:
            options = _deployment_options(name, version, entry["config"].ray)
            options["version"] = _replica_version(root, name, version, entry["config"])
            handles[options["name"]] = replica.options(**options, _internal=True).bind(str(root), name, version, directory)
        spec["models"][name] = {
            "versions": {v: deployment_name(name, v) for v in entry["versions"]},
            "labels": entry["labels"],
            "default": entry["default"],
            "traffic": entry["traffic"],
        }
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": INGRESS_NUM_CPUS, **extra},
        max_ongoing_requests=1000,
        # An ingress leaving waits for the requests it forwarded, which may wait on version
        # replicas that are finishing their own queues (30 s, above).
        graceful_shutdown_timeout_s=60,
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


#: How long ``deploy`` waits for Serve to replace a proxy it restarted while starting.
PROXY_START_TIMEOUT_S = 180.0


def _start_serve(
    options: Mapping[str, Any],
    *,
    timeout_s: float = PROXY_START_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``serve.start``, riding out a proxy that Serve restarts while it starts.

    Serve's controller kills a proxy that is not ready within
    ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`` (5 s by default) and starts another with a longer
    allowance; but ``serve.start`` waits on the first proxy only, so on a busy node it fails with
    ``ActorDiedError`` although Serve is up and recovering. Then this connects to the running
    Serve and waits for its replacement proxies instead."""
    try:
        serve.start(**options)
        return
    except ray.exceptions.ActorDiedError as e:
        log.warning("a Ray Serve proxy was restarted while Serve started (a slow node; raise "
                    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S on the cluster to avoid it); waiting for "
                    "its replacement: %s", str(e).splitlines()[0])
    serve.start(**options)  # the controller is running: this connects to it
    deadline = clock() + timeout_s
    while True:
        proxies = {node: str(getattr(s, "value", s)) for node, s in serve.status().proxies.items()}
        if proxies and all(s in ("HEALTHY", "DRAINING") for s in proxies.values()):
            return
        if clock() > deadline:
            raise TimeoutError(f"Ray Serve's proxies are not ready after {timeout_s:.0f} s: {proxies}")
        sleep(0.5)


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
    _start_serve({
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": http_port},
        "grpc_options": gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICERS),
        "logging_config": logging_config,
    })
    app = build_app(repository, models=models, previous=_served_versions(name), ingress_replicas=ingress_replicas,
                    ingress_actor_options=ingress_actor_options, max_message_bytes=max_message_bytes,
                    traffic_state_dir=traffic_state_dir)
    serve.run(app, name=name, route_prefix="/", blocking=blocking, logging_config=logging_config)
    return {"name": name, "http": f"{host}:{http_port}", "grpc": f"{host}:{grpc_port}"}
