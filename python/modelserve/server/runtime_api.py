"""What the frontends need from a runtime: the one interface the gRPC and HTTP frontends, their
health answers, the traffic services and the settings routes are written against.

Two classes satisfy it: :class:`modelserve.Runtime` (the models in this process) and the Ray
ingress's :class:`modelserve.ray._ingress.ClusterCatalog` (the same questions answered by the
version deployments of a Ray Serve application). A frontend calls nothing on its runtime that is
not listed here, so both serve the same protocol the same way; ``tests/test_package.py`` checks
that both classes have every member with the same parameters.

Not in it, on purpose:

* ``/metrics`` (:class:`modelserve.server.metrics.Metrics`) reads per-version state only a
  ``Runtime`` has (its repository, engines, scalers and memory budgets), so it takes a
  ``Runtime``; the Ray ingress serves ``/metrics`` by merging its replicas' expositions, each
  from a ``Runtime`` of its own.
* Lifecycle (``start``, ``close``, ``unready_models``) is the server's (``server/app.py``),
  which builds a ``Runtime`` itself.
* The native request path (``Runtime.infer_parsed_async`` and ``mirrors``): a capability, not
  part of the interface; a runtime says it has it with ``native_requests`` (to be listed here
  once the gRPC frontend reads it). The Ray ingress's catalog answers False: its replicas keep
  the Python path (:meth:`infer_routed_async`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..traffic.store import IN_PROCESS

if TYPE_CHECKING:
    from ..observe import Observer, Watch
    from ..runtime import Served
    from ..traffic import TrafficManager

__all__ = ["ServingRuntime", "Version"]

#: A version as requests name it: a number, a label ("stable"), "latest", or None (the default).
Version = int | str | None


@runtime_checkable
class ServingRuntime(Protocol):
    """The runtime the frontends serve (module docstring). ``version`` arguments take a
    :data:`Version`; unknown models and versions raise :class:`~modelserve.errors.NotFoundError`."""

    #: Traffic policies, rollouts, labels and the audit log (the traffic services and metrics).
    traffic: TrafficManager
    #: Tracing and payload logging (modelserve.observe): the frontends ask it for a watch per
    #: request and hand the watch to the inference call, which finishes it.
    observer: Observer

    # --- health ------------------------------------------------------------------------------
    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, model: str, version: Version = None) -> bool: ...

    # --- inference ---------------------------------------------------------------------------
    def resolve_version(self, model: str, version: Version = None) -> int:
        """The version number a request for ``version`` goes to now."""
        ...

    async def infer_routed_async(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: Version = None,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        as_numpy: bool = True,
        routing: Mapping[str, Any] | None = None,
        watch: Watch | None = None,
    ) -> Served:
        """Runs one request where its traffic policy (or ``version``) sends it; returns the
        outputs and the model and version number that ran."""
        ...

    # --- metadata and the repository ---------------------------------------------------------
    def model_metadata(self, model: str, version: Version = None) -> dict[str, Any]: ...

    def model_config(self, model: str, version: Version = None) -> dict[str, Any]: ...

    def model_statistics(self, model: str | None = None, version: Version = None) -> list[dict[str, Any]]: ...

    def model_versions(self, model: str) -> dict[str, Any]: ...

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]: ...

    # Management actions take the ``actor`` the audit log records (traffic/store.py, Note [Audit
    # entries]): the frontends pass who called; in-process callers are "in-process".
    def load_model(self, model: str, *, actor: str = IN_PROCESS) -> None: ...

    def unload_model(self, model: str, *, actor: str = IN_PROCESS) -> None: ...

    # --- runtime settings (server/settings_routes.py) ----------------------------------------
    def settings(self, model: str, version: Version = None) -> dict[str, Any]: ...

    def update_settings(
        self, model: str, version: Version = None, *, instances: Mapping[str, Any] | None = None,
        dynamic_batching: Mapping[str, Any] | None = None, actor: str = IN_PROCESS,
    ) -> dict[str, Any]: ...
