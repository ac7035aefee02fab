"""The ingress deployment: the Open Inference Protocol at the cluster's door, in front of the
version deployments.

Ray Serve's HTTP proxy hands every request to this deployment's ASGI app, which is the
single-process server's own app (:func:`modelserve.server.http.create_app`); Ray Serve's gRPC proxy
calls this deployment's methods named after the rpcs of ``inference.GRPCInferenceService`` and
``modelserve.v1.TrafficService``, which run the single-process server's own handlers
(:class:`modelserve.server.grpc.GrpcFrontend`, by :meth:`~modelserve.server.grpc.GrpcFrontend.rpc_handlers`).
Both frontends talk to a :class:`ClusterCatalog` instead of a :class:`~modelserve.Runtime`: the
same interface (:class:`~modelserve.server.runtime_api.ServingRuntime`), answered from the version
deployments. So decoding, encoding, errors, versions and labels
behave exactly as on one server; only where a request runs differs.

Note [Routing seam]
~~~~~~~~~~~~~~~~~~~
Every inference goes through :meth:`ClusterCatalog.infer_routed_async`: the model's traffic
policy (when the request names no version and the model has one) picks (model, version);
:meth:`ClusterCatalog.resolve_version` turns a label, "latest" or the default into a number from
the application's spec (which ``modelserve ray deploy`` builds from the repository's configs);
:meth:`ClusterCatalog._dispatch` sends the request to that version's deployment handle. Metadata,
configs and statistics come from the version replicas themselves, read at start and refreshed
every ``REFRESH_S`` seconds (statistics over the protocol are those of the replica that answered
the last refresh; ``/metrics`` has every replica's).

Note [Traffic on the cluster]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The ingress runs the same :class:`~modelserve.traffic.TrafficManager` as a single server, with
:class:`ClusterCatalog` as its Catalog: a request that names no version goes where the model's
policy sends it, shadows are copied to their version deployments, and rollouts advance on the
ingress's event loop. Policies set over HTTP (``/v2/models/{m}/traffic``, ``/rollout``), rollouts
and labels moved by a promotion live in the ingress replica (and in ``traffic_state_dir`` when one
is given: a folder every node sees), so run one ingress replica, the default, when using them;
policies in config.yaml are applied by every ingress replica at start.

Note [Errors across the hop]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A replica reports a modelserve error as (class name, message, retry hint) and the ingress raises the same
class, so clients see the status and message a single server would give. A replica that dies with
requests on it (its node went away) fails those requests with UNAVAILABLE, naming the model and
version; inference is never retried on another replica, because the ingress cannot know whether
the model ran. Requests not on it are unaffected: Ray Serve stops routing to a dead replica and
replaces it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..errors import InvalidArgumentError, ModelserveError, NotFoundError, UnavailableError, UnimplementedError
from ..observe import Observer, Watch, watched
from ..runtime import Served
from ..server.common import ServerOptions
from ..server.grpc import GrpcFrontend
from ..server.health import Health
from ..server.http import create_app
from ..server.traffic_metrics import TrafficCollector
from ..traffic import Signature, TrafficManager
from ..traffic.store import IN_PROCESS
from ._replica import decode_tensors, encode_tensors, raise_remote_error

__all__ = ["ClusterCatalog", "Ingress", "GRPC_UNARY_RPCS", "TRAFFIC_RPCS"]

log = logging.getLogger("modelserve.ray")

#: Seconds between two reads of the version replicas' metadata, state and statistics.
REFRESH_S = 5.0

#: The unary rpcs the ingress answers: inference.GRPCInferenceService's (ModelStreamInfer, a
#: bidirectional stream, has a method of its own) and modelserve.v1.TrafficService's. Ray Serve's
#: gRPC proxy calls the ingress method named after the rpc, so the names must not collide.
GRPC_UNARY_RPCS = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    "TraceSetting", "LogSettings", "ModelInfer",
)
TRAFFIC_RPCS = (
    "GetPolicy", "SetPolicy", "ClearPolicy", "GetReadout", "StartRollout", "GetRollout", "PauseRollout",
    "ResumeRollout", "PromoteRollout", "AbortRollout", "ListAudit", "SetLabel", "Rollback",
)


class ClusterCatalog:
    """What the frontends ask a Runtime (:class:`~modelserve.server.runtime_api.ServingRuntime`),
    answered by the version deployments of one application.

    ``spec``: ``{"models": {name: {"versions": {number: deployment}, "labels": {label: number},
    "default": number, "traffic": policy or None}}}``; ``handles``: deployment name ->
    DeploymentHandle. It is also the :class:`~modelserve.traffic.Catalog` of its traffic manager.
    """

    #: Requests reach the replicas as tensors (the Python path), never as parsed native requests.
    native_requests = False
    #: The ingress neither traces nor logs payloads (modelserve.observe): nothing is watched.
    observer = Observer()

    def __init__(
        self,
        spec: Mapping[str, Any],
        handles: Mapping[str, Any],
        *,
        traffic_state_dir: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.models: dict[str, dict[str, Any]] = {
            name: {
                "versions": {int(v): d for v, d in m["versions"].items()},
                "labels": {label: int(v) for label, v in m.get("labels", {}).items()},
                "default": int(m["default"]),
                "traffic": m.get("traffic"),
            }
            for name, m in spec["models"].items()
        }
        self.handles = dict(handles)
        self._described: dict[tuple[str, int], dict[str, Any]] = {}
        self._failures: dict[tuple[str, int], str] = {}
        #: Splits, sticky keys, shadows and rollouts (Note [Traffic on the cluster]); this object
        #: is its Catalog. Shadows and rollout ticks run on ``loop``, the ingress replica's own.
        self.traffic = TrafficManager(self, state_dir=traffic_state_dir, loop=loop)

    def start_traffic(self) -> None:
        """Restores saved traffic state, then applies the config.yaml policies nothing saved
        overrides (as the Runtime does at start)."""
        self.traffic.restore()
        for name, info in self.models.items():
            if info["traffic"] is not None:
                self.traffic.apply_config(name, info["traffic"])

    # --- the version replicas' view ----------------------------------------------------------
    async def refresh(self, timeout_s: float | None = None) -> None:
        """Reads every version's metadata, config, state and statistics from one of its replicas
        (a version with no replica answering within ``timeout_s`` counts as not ready)."""
        keys = [(m, v) for m, info in self.models.items() for v in info["versions"]]

        async def one(key: tuple[str, int]) -> None:
            model, version = key
            handle = self.handles[self.models[model]["versions"][version]]
            try:
                self._described[key] = await asyncio.wait_for(handle.describe.remote(), timeout_s)
                self._failures.pop(key, None)
            except Exception as e:  # no replica right now (starting, or its node went away)
                self._failures[key] = f"{type(e).__name__}: {e}"
                described = self._described.get(key)
                if described is not None:
                    described["ready"] = False

        await asyncio.gather(*(one(k) for k in keys))

    def _model(self, model: str) -> dict[str, Any]:
        info = self.models.get(model)
        if info is None:
            raise NotFoundError(f"model '{model}' is not served by this application; served: {sorted(self.models)}")
        return info

    def _described_version(self, model: str, version: int | str | None) -> dict[str, Any]:
        number = self.resolve_version(model, version)
        described = self._described.get((model, number))
        if described is None:
            why = self._failures.get((model, number), "not read yet")
            raise UnavailableError(f"model '{model}' version {number}: no replica has answered yet ({why})")
        return described

    # --- routing (Note [Routing seam]) ---------------------------------------------------------
    def resolve_version(self, model: str, version: int | str | None = None) -> int:
        info = self._model(model)
        if version is None or version == "":
            return info["default"]
        if isinstance(version, int) or (isinstance(version, str) and version.isdigit()):
            number = int(version)
            if number not in info["versions"]:
                raise NotFoundError(
                    f"model '{model}' has no version {number} on this cluster; served: {sorted(info['versions'])}"
                )
            return number
        if version == "latest":
            return max(info["versions"])
        if version in info["labels"]:
            return info["labels"][version]
        raise NotFoundError(
            f"model '{model}' has no version or label '{version}'; versions: {sorted(info['versions'])}, "
            f"labels: {sorted(info['labels'])}"
        )

    async def infer_routed_async(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Any = None,
        priority: int = 0,
        timeout_us: int = 0,
        as_numpy: bool = True,
        routing: Mapping[str, Any] | None = None,
        watch: Watch | None = None,
    ) -> Served:
        """Runs one request where the model's traffic policy sends it (when it names no
        version and the model has a policy), else on ``version``; returns the outputs and the
        model and version number that ran, as :meth:`modelserve.Runtime.infer_routed_async`."""
        async def run(target: str, target_version: int | str | None) -> tuple[dict[str, Any], int]:
            number = self.resolve_version(target, target_version)
            if watch is not None:
                watch.routed(target, number)
            return await self._dispatch(target, number, inputs, outputs, priority, timeout_us, as_numpy), number

        if watch is None:
            return Served(*await self.traffic.run_routed(model, version, inputs, routing, run))
        return Served(*await watched(watch, self.traffic.run_routed(model, version, inputs, routing, run,
                                                                    watch.on_route),
                                     inputs=inputs, outputs=lambda r: r[0]))

    async def infer_async(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Any = None,
        priority: int = 0,
        timeout_us: int = 0,
        as_numpy: bool = True,
        routing: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        served = await self.infer_routed_async(
            model, inputs, version=version, outputs=outputs, priority=priority, timeout_us=timeout_us,
            as_numpy=as_numpy, routing=routing,
        )
        return served.outputs

    async def _dispatch(
        self, model: str, number: int, inputs: Mapping[str, Any], outputs: Any, priority: int, timeout_us: int,
        as_numpy: bool,
    ) -> dict[str, Any]:
        handle = self.handles[self.models[model]["versions"][number]]
        try:
            status, payload = await handle.infer.remote(
                encode_tensors(inputs), list(outputs) if outputs else None, priority, timeout_us
            )
        except ModelserveError:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:  # Note [Errors across the hop]: the replica or its node went away
            first_line = (str(e).strip().splitlines() or [""])[0][:300]  # Ray's texts carry tracebacks
            raise UnavailableError(
                f"model '{model}' version {number}: the replica serving the request failed: "
                f"{type(e).__name__}: {first_line}"
            ) from None
        if status != "ok":
            raise_remote_error(payload)
        results = decode_tensors(payload)
        return {k: t.numpy() for k, t in results.items()} if as_numpy else results

    # --- the traffic manager's Catalog -------------------------------------------------------
    def resolve(self, model: str, version: int | str | None) -> int:
        return self.resolve_version(model, version)

    def state(self, model: str, version: int) -> str:
        number = self.resolve_version(model, version)
        return "READY" if self.model_ready(model, number) else "UNAVAILABLE"

    def signature(self, model: str, version: int) -> Signature:
        config = self._described_version(model, version)["config"]

        def tensors(key: str) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
            return tuple((t["name"], t["datatype"], tuple(t["shape"])) for t in config[key])

        return Signature(tensors("inputs"), tensors("outputs"), config["max_batch_size"] > 0)

    def labels(self, model: str) -> dict[str, int]:
        return dict(self._model(model)["labels"])

    def set_label(self, model: str, label: str, version: int) -> None:
        """Points ``label`` at ``version`` in this ingress (Note [Traffic on the cluster])."""
        info = self._model(model)
        if not label or label.isdigit() or label == "latest":
            raise InvalidArgumentError(f"model '{model}': '{label}' cannot be a label (a number or 'latest')")
        number = self.resolve_version(model, version)
        if not self.model_ready(model, number):
            raise UnavailableError(f"model '{model}': cannot point label '{label}' at version {number}: it is not READY")
        info["labels"][label] = number

    def rollback(self, model: str, version: int | None, label: str | None) -> int:
        """Re-points the default (or ``label``) in this ingress at ``version``, or at the newest
        READY version below its current one; returns the version now targeted (as
        ``ModelVersions.rollback`` does in one process)."""
        info = self._model(model)
        current = info["labels"].get(label) if label else info["default"]
        if label and current is None:
            raise NotFoundError(f"model '{model}' has no label '{label}'; labels {info['labels']}")
        if version is None:
            older = [v for v in sorted(info["versions"]) if v < current and self.model_ready(model, v)]
            if not older:
                raise UnavailableError(
                    f"model '{model}': no READY version older than {current} to roll back to; "
                    f"ready versions: {self._ready_versions(model)}"
                )
            version = older[-1]
        number = self.resolve_version(model, version)
        if not self.model_ready(model, number):
            raise UnavailableError(f"model '{model}': rollback needs a READY version; version {number} is not READY")
        if label:
            info["labels"][label] = number
        else:
            info["default"] = number
        log.warning("model '%s': rolled back %s from version %s to %d", model, label or "default", current, number)
        return number

    async def infer(self, model: str, version: int | str | None, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """One request on (model, version), bypassing the policy (shadow copies)."""
        number = self.resolve_version(model, version)
        return await self._dispatch(model, number, inputs, None, 0, 0, True)

    # --- what the frontends read -------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return all(self.model_ready(name) for name in self.models)

    def model_ready(self, model: str, version: int | str | None = None) -> bool:
        try:
            return bool(self._described_version(model, version)["ready"])
        except ModelserveError:
            return False

    def _ready_versions(self, model: str) -> list[str]:
        return [str(v) for v in sorted(self.models[model]["versions"]) if self.model_ready(model, v)]

    def model_metadata(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        meta = dict(self._described_version(model, version)["metadata"])
        meta["versions"] = self._ready_versions(model)
        return meta

    def model_config(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        info = self._model(model)
        config = dict(self._described_version(model, version)["config"])
        config["labels"] = dict(info["labels"])
        return config

    def model_statistics(self, model: str | None = None, version: int | str | None = None) -> list[dict[str, Any]]:
        names = [model] if model else sorted(self.models)
        out = []
        for name in names:
            numbers = [self.resolve_version(name, version)] if version is not None else sorted(self._model(name)["versions"])
            for number in numbers:
                described = self._described.get((name, number))
                if described is not None:
                    out.extend(described["statistics"])
        return out

    def model_versions(self, model: str) -> dict[str, Any]:
        info = self._model(model)
        versions = {}
        for v, deployment in sorted(info["versions"].items()):
            described = self._described.get((model, v))
            versions[v] = {
                "state": "READY" if described and described["ready"] else "UNAVAILABLE",
                "deployment": deployment,
                "reason": self._failures.get((model, v), ""),
            }
        return {"name": model, "default": info["default"], "labels": dict(info["labels"]), "versions": versions}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self.models):
            for v, entry in self.model_versions(name)["versions"].items():
                if ready_only and entry["state"] != "READY":
                    continue
                out.append({"name": name, "version": str(v), "state": entry["state"], "reason": entry["reason"]})
        return out

    # Refused management actions are audited as a single server audits them (Note [Audit entries]).
    def load_model(self, model: str, *, actor: str = IN_PROCESS) -> None:
        with self.traffic.audited(actor, "load", model):
            raise UnimplementedError(
                f"cannot load model '{model}' through the protocol on a Ray cluster: the application's models are "
                "those of the repository it was deployed from; change the repository and run `modelserve ray deploy` "
                "again"
            )

    def unload_model(self, model: str, *, actor: str = IN_PROCESS) -> None:
        with self.traffic.audited(actor, "unload", model):
            raise UnimplementedError(
                f"cannot unload model '{model}' through the protocol on a Ray cluster: remove it from the repository "
                "and run `modelserve ray deploy` again"
            )

    def settings(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        raise UnimplementedError(
            f"runtime settings of model '{model}' are not served on a Ray cluster: each replica keeps the "
            "instances and dynamic_batching of config.yaml, and Ray Serve scales replicas by the model's `ray:` "
            "section; change config.yaml and run `modelserve ray deploy` again"
        )

    def update_settings(
        self, model: str, version: int | str | None = None, *, instances: Mapping[str, Any] | None = None,
        dynamic_batching: Mapping[str, Any] | None = None, actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        with self.traffic.audited(actor, "settings", model):
            return self.settings(model, version)


# --- metrics ---------------------------------------------------------------------------------


class _Merged(Collector):
    """Families parsed from several replicas' expositions, merged by name (each sample already
    carries its ``replica`` label, so none collide)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def collect(self) -> Any:
        families: dict[str, Metric] = {}
        for text in self.texts:
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                merged.samples.extend(family.samples)
        yield from families.values()


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - the replicas' own endpoints
        return reply.read().decode()


# --- the deployment --------------------------------------------------------------------------


class Ingress:
    """The application's ingress deployment (wrapped by ``serve.ingress`` in :mod:`._app`)."""

    async def __init__(
        self, spec: Mapping[str, Any], handles: Mapping[str, Any], directory: Any = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        options = dict(options or {})
        traffic_state_dir = options.pop("traffic_state_dir", None)
        self.catalog = ClusterCatalog(spec, handles, traffic_state_dir=traffic_state_dir,
                                      loop=asyncio.get_running_loop())
        self.options = ServerOptions(**options)
        self.health = Health(self.catalog)
        await self.catalog.refresh()
        self.catalog.start_traffic()
        # The single server's handlers, one per rpc name (the inference and traffic services').
        self._grpc = GrpcFrontend(self.catalog, self.options, self.health).rpc_handlers()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.catalog.refresh(timeout_s=2 * REFRESH_S)
            except Exception:  # keep refreshing whatever one round hit
                log.exception("refreshing the version replicas' state failed")

    def __serve_build_asgi_app__(self) -> Any:
        protocol_app = create_app(self.catalog, self.options, self.health, metrics=None)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] in ("/metrics", "/metrics/targets"):
                await self._metrics(scope, send)
                return

            async def send_picklable(message: Any) -> None:
                # The single server writes output tensors as memoryviews (no copy into the
                # socket); Ray Serve pickles ASGI messages to its proxy, and memoryviews do not
                # pickle: they become bytes here, the one copy this hop costs.
                body = message.get("body")
                if isinstance(body, memoryview):
                    message = {**message, "body": body.tobytes()}
                await send(message)

            await protocol_app(scope, receive, send_picklable)

        return app

    async def _metrics(self, scope: Any, send: Any) -> None:
        targets = await self.directory.targets.remote() if self.directory is not None else []
        if scope["path"] == "/metrics/targets":  # Prometheus HTTP service discovery
            status, body, content_type = 200, json.dumps(targets).encode(), "application/json"
        else:
            urls = [f"http://{t['targets'][0]}/metrics" for t in targets]
            texts = await asyncio.gather(*(asyncio.to_thread(_fetch, u) for u in urls), return_exceptions=True)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Merged([t for t in texts if isinstance(t, str)]))
            # Traffic metrics (by endpoint and target) are the ingress's own: its router counts them.
            registry.register(TrafficCollector(self.catalog.traffic))
            status, body, content_type = 200, generate_latest(registry), CONTENT_TYPE_LATEST
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # --- gRPC: Ray Serve's proxy calls the method named after the rpc --------------------------
    async def _grpc_call(self, rpc: str, request: Any, grpc_context: Any) -> Any:
        handler = self._grpc[rpc]
        # Ray's proxy decoded the message with the stubs' deserializer; the single server's
        # handlers take their own decoding (size limit, zero-copy raw inputs), so re-encode once.
        decoded = handler.request_deserializer(request.SerializeToString())
        try:
            reply = await handler.unary_unary(decoded, _Context(grpc_context))
        except _Aborted:
            return _Serialized(b"")
        return _Serialized(handler.response_serializer(reply))

    async def ModelStreamInfer(self, request_stream: Any, grpc_context: Any = None) -> Any:  # noqa: N802 - the rpc
        """inference.GRPCInferenceService/ModelStreamInfer (bidirectional): the single server's
        handler, reading the requests Ray's proxy streams in and writing its replies out."""
        handler = self._grpc["ModelStreamInfer"]
        replies: asyncio.Queue = asyncio.Queue()
        end = object()

        async def requests() -> Any:
            async for request in request_stream:
                yield handler.request_deserializer(request.SerializeToString())

        async def run() -> None:
            try:
                await handler.stream_stream(requests(), _Context(grpc_context, replies.put_nowait))
            except _Aborted:
                pass
            finally:
                replies.put_nowait(end)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while (reply := await replies.get()) is not end:
                yield _Serialized(handler.response_serializer(reply))
            await task
        finally:
            task.cancel()

    def __del__(self) -> None:
        refresher = getattr(self, "_refresher", None)
        if refresher is not None:
            refresher.cancel()
        catalog = getattr(self, "catalog", None)
        if catalog is not None:
            catalog.traffic.close()


class _Aborted(Exception):
    pass


class _Context:
    """A grpc.aio ServicerContext, as far as the single server's handlers use one, over Ray
    Serve's gRPC context: abort sets the status Ray's proxy sends back."""

    def __init__(self, ray_context: Any, write: Any = None) -> None:
        self._ray = ray_context
        self._write = write

    async def write(self, message: Any) -> None:
        """A streamed reply (ModelStreamInfer)."""
        self._write(message)

    def invocation_metadata(self) -> Any:
        return self._ray.invocation_metadata() if self._ray is not None else ()

    def peer(self) -> str:
        return self._ray.peer() if self._ray is not None else ""

    def time_remaining(self) -> float | None:
        return None  # Ray's proxy does not pass the client's deadline on (request_timeout_s bounds it)

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        if self._ray is not None:
            self._ray.set_code(code)
            self._ray.set_details(details)
            if trailing_metadata:  # e.g. the retry hint of a refusal (Note [Admission control])
                self._ray.set_trailing_metadata(list(trailing_metadata))
        raise _Aborted(details)


class _Serialized:
    """A reply already in wire form: Ray's replica calls ``SerializeToString`` on what a gRPC
    method returns."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return self.data


def _grpc_method(rpc: str) -> Any:
    async def method(self: Ingress, request: Any, grpc_context: Any = None) -> Any:
        return await self._grpc_call(rpc, request, grpc_context)

    method.__name__ = method.__qualname__ = rpc
    method.__doc__ = f"inference.GRPCInferenceService/{rpc}, as the single-process server answers it."
    return method


for _rpc in GRPC_UNARY_RPCS + TRAFFIC_RPCS:
    setattr(Ingress, _rpc, _grpc_method(_rpc))
del _rpc
