"""Runtime: the in-process API, and the one place requests enter the core.

::

    import modelserve
    with modelserve.Runtime("examples/models") as rt:
        out = rt.infer("add_sub", {"INPUT0": x, "INPUT1": y})
        out = await rt.infer_async("recommender", {"USER_ID": ids}, version="stable")

The gRPC and HTTP servers are thin frontends over exactly this object. Every method is safe to
call from many threads and asyncio tasks at once.

Requests that name no version go through the model's traffic policy when it has one
(``rt.traffic``, a :class:`modelserve.traffic.TrafficManager`: splits, sticky keys, shadows,
rollouts); ``routing`` carries the request parameters and headers its sticky key is read from.
A request that names a version (number or label) bypasses the split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import settings as _settings
from .admission import with_retry_hint
from .autoscale import AutoscaleController
from .errors import InvalidArgumentError, ModelserveError, NotFoundError, ResourceExhaustedError, from_status
from .memory_budget import MemoryBudget
from .observe import Observer, Watch, watched
from .repository import ModelRepository
from .repository.repository import ControlMode
from .traffic import RepositoryCatalog, TrafficManager
from .traffic.manager import RoutedPending
from .traffic.store import IN_PROCESS

__all__ = ["Runtime", "Served"]

Version = int | str | None


class Served(NamedTuple):
    """What :meth:`Runtime.infer_routed_async` returns: the outputs, and the model and version
    number that ran (a traffic policy may have sent the request to another version or model)."""

    outputs: dict[str, Any]
    model: str
    version: int


class Runtime:
    """Serves the models of one repository in this process.

    Note [Server readiness]
    ~~~~~~~~~~~~~~~~~~~~~~~
    :meth:`ready` (the server's ``/v2/health/ready`` and ``ServerReady`` when no
    ``--require-model`` is named) is False until :meth:`start` has finished loading, then True
    while every model loaded at start (every model folder found in modes ``none`` and ``poll``;
    ``load_models`` in mode ``explicit``) has a READY default version. A model that failed at
    start keeps it False until a later load of it succeeds (poll, :meth:`load_model`). Models
    added after start never hold it back: their own model-ready answers report them. A start
    model unloaded on purpose since (:meth:`unload_model`, its folder removed in poll mode) is
    no longer served and no longer counts.

    ``model_control_mode``: ``"none"`` loads every model at start; ``"explicit"`` loads only
    ``load_models`` and then what :meth:`load_model` asks for; ``"poll"`` loads everything and
    rescans every ``poll_interval`` seconds. ``version`` arguments take a number, a label
    (``"stable"``), ``"latest"`` or None (the model's default version, or its traffic policy).

    ``state_dir`` keeps traffic policies, rollouts and their audit log across restarts (default
    ``<repository>/.modelserve``). ``traffic_clock``: a clock for rollouts and windows; given,
    rollouts advance only when ``rt.traffic.tick()`` is called (tests and simulations).

    ``memory_budget`` (``"cpu=2GiB"`` or ``{"cpu": "2GiB"}``) caps what model instances hold per
    device; ``memory_evict`` lets a load or scale-up evict idle models, least recently used first
    (Note [Memory budget]). ``autoscale_tick_s`` is how often the autoscaler looks (Note
    [Autoscaling rule]). ``observer``: tracing and payload logging of the requests the servers
    hand over with a watch (:mod:`modelserve.observe`); closed with the Runtime.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        model_control_mode: ControlMode = "none",
        poll_interval: float = 5.0,
        load_models: Iterable[str] = (),
        start: bool = True,
        memory_budget: str | Mapping[str, int | str] | None = None,
        memory_evict: bool = False,
        autoscale_tick_s: float = 0.5,
        state_dir: str | Path | None = None,
        traffic_clock: Callable[[], float] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.repository = ModelRepository(
            repository, control_mode=model_control_mode, poll_interval=poll_interval, load_models=list(load_models)
        )
        if memory_budget:
            self.repository.budget = MemoryBudget(memory_budget, evict=memory_evict)
        self.autoscaler = AutoscaleController(self.repository, tick_s=autoscale_tick_s)
        clock = {"clock": traffic_clock, "tick_interval_s": None} if traffic_clock is not None else {}
        self.traffic = TrafficManager(
            RepositoryCatalog(self.repository),
            state_dir=Path(state_dir) if state_dir is not None else Path(repository) / ".modelserve",
            **clock,
        )
        #: Tracing and payload logging of served requests (modelserve.observe); off by default.
        self.observer = observer if observer is not None else Observer()
        payload = self.observer.payload_log
        if payload is not None and payload.settings_for is None:
            payload.settings_for = self._payload_settings
        self._closed = False
        self._started = False
        self._loaded = False  # start() has loaded (or failed to load) every model it loads at start
        self._explicit_start = list(load_models) if model_control_mode == "explicit" else None
        self._start_models: list[str] = []  # what start() loaded: readiness waits for these
        if start:
            self.start()

    def start(self) -> None:
        """Loads the models (what the constructor does unless given ``start=False``: the server
        starts its frontends first, so it is live while the models load)."""
        if not self._started:
            self._started = True
            self.repository.start()
            # Note [Server readiness]: every model found at start (explicit mode: each of
            # load_models), loaded or failed; models added later do not join.
            known = set(self.repository.models) | set(self.repository.errors)
            self._start_models = self._explicit_start if self._explicit_start is not None else sorted(known)
            self._loaded = True
            self.autoscaler.start()
            self._start_traffic()
            # From now on every (re)load of a model re-reads its config's traffic key (poll mode, load_model).
            self.repository.on_synced = lambda name: self._start_traffic([name])

    def _payload_settings(self, model: str) -> Any:
        """A model's ``payload_log`` config (None: the server's defaults apply)."""
        managed = self.repository.models.get(model)
        return managed.config.payload_log if managed is not None and managed.config is not None else None

    def _start_traffic(self, models: Iterable[str] | None = None) -> None:
        """Restores saved traffic state, then applies config.yaml policies nothing saved overrides."""
        if models is None:
            self.traffic.restore()
        for name in list(models if models is not None else self.repository.models):
            config = self.repository.models[name].config if name in self.repository.models else None
            if config is not None and config.traffic is not None:
                self.traffic.apply_config(name, config.traffic)

    # --- inference ------------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: Version = None,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        routing: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs one request (batched with others by the model's dynamic batcher) and returns its
        outputs as numpy arrays."""
        pending = self._enqueue(
            "run", model, inputs, version=version, outputs=outputs, priority=priority, timeout_us=timeout_us,
            routing=routing,
        )
        pending.wait()  # done already (ModelEngine.run); a routed request records its outcome here
        return pending.outputs()

    def submit(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: Version = None,
        outputs: Iterable[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        routing: Mapping[str, Any] | None = None,
    ) -> Any:
        """Enqueues a request; returns a handle with ``wait()``, ``outputs()``, ``cancel()``."""
        return self._enqueue(
            "submit", model, inputs, version=version, outputs=outputs, priority=priority, timeout_us=timeout_us,
            routing=routing,
        )

    def generate(
        self,
        model: str,
        prompt: str | Sequence[int],
        params: Any = None,
        *,
        version: Version = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> Any:
        """Generates from a generative model (``backend: gpt2``): ``prompt`` is text (with the model's
        tokenizer.json) or token ids, ``params`` a :class:`modelserve.generation.SamplingParams`.
        Returns a :class:`modelserve.generation.Completion`; the request joins the running batch at
        the next iteration (Note [Generation scheduling] in csrc/gen/scheduler.h)."""
        return self._generation(model, prompt, params, version, priority, timeout_s).result()

    def stream(
        self,
        model: str,
        prompt: str | Sequence[int],
        params: Any = None,
        *,
        version: Version = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`generate`, one :class:`modelserve.generation.Delta` per iteration. Closing
        the iterator early (``break``, ``close()``) cancels the request and frees its KV blocks
        within one iteration."""
        request = self._generation(model, prompt, params, version, priority, timeout_s)
        try:
            yield from request
        finally:
            if request._finished is None:
                request.cancel()

    def submit_generation(self, model: str, prompt: str | Sequence[int], params: Any = None, *,
                          version: Version = None, priority: int = 0, timeout_s: float | None = None,
                          routing: Mapping[str, Any] | None = None, watch: Watch | None = None) -> Any:
        """Enqueues a generation and returns its :class:`modelserve.generation.GenerationRequest`
        (``result()``, iteration, ``deltas_async()`` for an event loop, ``cancel()``).
        ``routing`` holds a traffic policy's sticky key (the OpenAI routes pass ``user``);
        ``watch``, the request's :class:`modelserve.observe.Watch`, is finished when it ends."""
        return self._generation(model, prompt, params, version, priority, timeout_s, routing, watch)

    def generative_models(self) -> list[dict[str, Any]]:
        """The models with a READY generative version: name, READY generative versions, and the
        load time of the newest (the OpenAI route's ``created``)."""
        found = []
        for name in sorted(self.repository.models):
            managed = self.repository.models.get(name)
            if managed is None:
                continue
            ready = [mv for v, mv in sorted(managed.versions.items())
                     if mv.generator is not None and mv.state.value == "READY"]
            if ready:
                found.append({"name": name, "versions": [mv.version for mv in ready],
                              "created": int(ready[-1].history[0].at)})
        return found

    def _generation(self, model: str, prompt: Any, params: Any, version: Version, priority: int,
                    timeout_s: float | None, routing: Mapping[str, Any] | None = None,
                    watch: Watch | None = None) -> Any:
        """Note [Routed generations]: a traffic policy picks the target as for infer; the
        target's latency is the time to the first token (what a rollout's latency gate judges),
        recorded when it comes, and a failure before it is the target's error. Shadows never
        mirror a generation."""
        endpoint = self.traffic.active.get(model) if version is None else None
        routed = endpoint.route(routing) if endpoint is not None else None
        target, which = (routed.model, routed.version) if routed is not None else (model, version)
        if watch is not None and routed is not None:
            watch.on_route(routed.target.id)
        try:
            with self.repository.get(target).route(which) as mv:
                if mv.generator is None:
                    raise InvalidArgumentError(
                        f"{mv.label} is not generative (backend '{mv.backend_name}'): use infer()")
                if watch is not None:
                    watch.routed(target, mv.version)
                return mv.generator.submit(prompt, params, priority=priority, timeout_s=timeout_s,
                                           on_first_token=routed.finish if routed is not None else None,
                                           on_error=routed.fail if routed is not None else None,
                                           on_done=watch.finish_generation if watch is not None else None)
        except BaseException as e:
            if routed is not None:
                routed.fail(e)
            if watch is not None:
                watch.finish_generation({"prompt": prompt}, e)
            raise

    def _enqueue(
        self,
        how: str,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: Version,
        outputs: Iterable[str] | None,
        priority: int,
        timeout_us: int,
        routing: Mapping[str, Any] | None,
    ) -> Any:
        """:meth:`submit` through the routed engine's ``how``: ``"submit"`` (enqueue) or ``"run"``
        (enqueue and wait, ModelEngine.run)."""
        endpoint = self.traffic.active.get(model) if version is None else None
        if endpoint is None:
            with self.repository.get(model).route(version) as mv:
                return _submit(mv, getattr(_engine_of(mv), how), inputs, outputs=outputs, priority=priority,
                               timeout_us=timeout_us)
        routed = endpoint.route(routing)
        try:
            with self.repository.get(routed.model).route(routed.version) as mv:
                pending = _submit(mv, getattr(_engine_of(mv), how), inputs, outputs=outputs, priority=priority,
                                  timeout_us=timeout_us)
        except BaseException as e:
            routed.fail(e)
            raise
        return RoutedPending(pending, routed, inputs)

    async def infer_async(
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
    ) -> dict[str, Any]:
        """:meth:`infer` for asyncio; cancelling the task removes a still-queued request."""
        served = await self.infer_routed_async(
            model, inputs, version=version, outputs=outputs, priority=priority, timeout_us=timeout_us,
            as_numpy=as_numpy, routing=routing,
        )
        return served.outputs

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
        """:meth:`infer_async`, also saying which model and version number ran (what the
        frontends report): the version named, or the one the traffic policy chose. ``watch``:
        the request's :class:`modelserve.observe.Watch` (:attr:`observer`), finished here."""
        async def run(target: str, target_version: Version) -> tuple[Any, int]:
            with self.repository.get(target).route(target_version) as mv:
                request = _submit(mv, _engine_of(mv).submit_async, inputs, outputs=outputs, priority=priority,
                                  timeout_us=timeout_us, observe=watch.flags if watch is not None else 0)
            if watch is not None:
                watch.routed(target, mv.version)
                watch.pending = request.pending
            return await request.outputs(as_numpy=as_numpy), mv.version

        if watch is None:
            return Served(*await self.traffic.run_routed(model, version, inputs, routing, run))
        return Served(*await watched(watch, self.traffic.run_routed(model, version, inputs, routing, run,
                                                                    watch.on_route),
                                     inputs=inputs, outputs=lambda r: r[0]))

    #: The gRPC frontend may hand requests over parsed (``infer_parsed_async``).
    native_requests = True

    async def infer_parsed_async(
        self,
        model: str,
        request: Any,
        where: str,
        *,
        version: Version = None,
        priority: int = 0,
        timeout_us: int = 0,
        routing: Mapping[str, Any] | None = None,
        watch: Watch | None = None,
    ) -> tuple[Any, str, int]:
        """One parsed ModelInferRequest (``_core.protocol.parse``) where it belongs: returns its
        completed ``Pending``, the model and the version number that ran. The core decodes and
        checks its tensors (Note [Native request path]); nothing of it becomes a Python object,
        so an endpoint whose policy mirrors to shadows (which need the tensors) is for
        :meth:`infer_routed_async` instead: see :meth:`mirrors`. ``watch``: the request's
        :class:`modelserve.observe.Watch`, finished here."""
        async def run(target: str, target_version: Version) -> tuple[Any, int]:
            with self.repository.get(target).route(target_version) as mv:
                queued = _submit(mv, _engine_of(mv).submit_parsed_async, request, where, priority=priority,
                                 timeout_us=timeout_us, observe=watch.flags if watch is not None else 0)
            if watch is not None:
                watch.routed(target, mv.version)
                watch.pending = queued.pending
            pending = await queued.done()
            if pending.status_code:
                raise from_status(pending.status_code, pending.message)
            return pending, mv.version

        if watch is None:
            return await self.traffic.run_routed(model, version, None, routing, run)
        return await watched(watch, self.traffic.run_routed(model, version, None, routing, run, watch.on_route))

    def mirrors(self, model: str, version: Version = None) -> bool:
        """Whether a request for (model, version) may be mirrored to shadows (which needs its
        tensors as Python objects)."""
        if version is not None:
            return False
        endpoint = self.traffic.active.get(model)
        return endpoint is not None and bool(endpoint.shadows)

    def run_batch(self, model: str, input: str | Path, output: str | Path, **options: Any) -> Any:
        """Scores the dataset file ``input`` with ``model`` and writes ``output`` (npy, npz,
        Parquet, JSON Lines or CSV), streaming, resumable; returns a ``BatchResult``. The options
        and rules are those of :func:`modelserve.batch.run_batch`."""
        from .batch import run_batch  # the batch package sits above the Runtime: imported on use

        return run_batch(self, model, input, output, **options)

    def resolve_version(self, model: str, version: Version = None) -> int:
        """The version number a request for ``version`` goes to now (a label or None resolved).
        Frontends pass the number on, so the response names the version that ran."""
        return self.repository.get(model).resolve(version)

    # --- health and metadata ----------------------------------------------------------------
    def live(self) -> bool:
        return not self._closed

    def ready(self) -> bool:
        """Note [Server readiness]: True once :meth:`start` has loaded the models it loads at
        start and each of them has a READY default version."""
        return self._loaded and not self._closed and not self.unready_models()

    def unready_models(self) -> dict[str, str]:
        """Why the Runtime is not ready: each model loaded at start that is not READY now, with
        the reason (empty while loading: nothing is known to be missing yet)."""
        out = {}
        for name in self._start_models:
            try:
                managed = self.repository.get(name)
                managed.resolve(None)  # raises why there is no READY default version
                if not managed.ready():
                    out[name] = f"model '{name}' version {managed.default} is not READY"
            except NotFoundError:
                continue  # unloaded since (explicit unload, folder removed in poll mode): not served
            except ModelserveError as e:
                out[name] = str(e)
        return out

    def model_ready(self, model: str, version: Version = None) -> bool:
        try:
            mv = self.repository.get(model).lookup(version)
        except Exception:
            return False
        return mv.state.value == "READY"

    def model_metadata(self, model: str, version: Version = None) -> dict[str, Any]:
        """Name, ready versions, platform (the backend) and the inputs and outputs, with the batch
        dimension (-1) first when the model batches, as the Open Inference Protocol shows them."""
        managed = self.repository.get(model)
        mv = managed.lookup(version)
        batch = [-1] if mv.config.max_batch_size > 0 else []
        return {
            "name": model,
            "versions": [str(v) for v in managed.ready_versions()],
            "platform": mv.backend_name,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": batch + t.shape} for t in mv.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": batch + t.shape} for t in mv.outputs],
        }

    def model_config(self, model: str, version: Version = None) -> dict[str, Any]:
        """The effective configuration (defaults filled, inputs and outputs resolved)."""
        mv = self.repository.get(model).lookup(version)
        config = mv.config.model_dump(mode="json")
        config["name"] = model
        config["inputs"] = [t.model_dump() for t in mv.inputs]
        config["outputs"] = [t.model_dump() for t in mv.outputs]
        # A generative model answers a stream request with many responses (Triton's decoupled).
        config["decoupled"] = mv.generator is not None
        return config

    def generator_of(self, model: str, version: Version = None) -> Any:
        """The GenerationEngine of the version a request for ``version`` goes to, or None when
        that version is not generative."""
        return self.repository.get(model).lookup(version).generator

    def model_statistics(self, model: str | None = None, version: Version = None) -> list[dict[str, Any]]:
        """Per-version statistics of the core (counts, queue and compute times, batch sizes)."""
        names = [model] if model else sorted(self.repository.models)
        out = []
        for name in names:
            managed = self.repository.get(name)
            versions = [managed.lookup(version)] if version is not None else [
                managed.versions[v] for v in managed.ready_versions()
            ]
            for mv in versions:
                if mv.engine is not None:
                    out.append({"name": name, "version": str(mv.version), **mv.engine.stats(),
                                "memory": dict(mv.memory), "scaling": mv.scaling_state()})
        return out

    def model_versions(self, model: str) -> dict[str, Any]:
        """Routing (default version, labels) and every version's state, reason, history and
        load duration by phase."""
        return self.repository.get(model).describe()

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        index = self.repository.index()
        return [e for e in index if e["state"] == "READY"] if ready_only else index

    # --- control --------------------------------------------------------------------------------
    # Note [Audit entries] (traffic/store.py): every method here records its action in the audit
    # log (``rt.traffic.audit()``) with ``actor`` (in-process by default; the frontends pass theirs)
    # and its outcome; a failure is recorded, then raised unchanged.
    def load_model(self, model: str, *, actor: str = IN_PROCESS) -> None:
        """Loads or reloads ``model`` (model control mode ``explicit``)."""
        with self.traffic.audited(actor, "load", model) as entry:
            entry["before"] = self._loaded_versions(model)
            self.repository.load(model)
            entry["after"] = self._loaded_versions(model)

    def unload_model(self, model: str, *, actor: str = IN_PROCESS) -> None:
        """Drains and unloads every version of ``model`` (model control mode ``explicit``)."""
        with self.traffic.audited(actor, "unload", model) as entry:
            entry["before"] = self._loaded_versions(model)
            self.repository.unload(model)
            entry["after"] = None

    def _loaded_versions(self, model: str) -> dict[str, Any] | None:
        """The audit log's picture of a model: its default version and each version's state
        (None: not loaded)."""
        managed = self.repository.models.get(model)
        if managed is None:
            return None
        described = managed.describe()
        return {"default": described["default"],
                "versions": {str(v): info["state"] for v, info in described["versions"].items()}}

    def rollback(
        self, model: str, version: int | None = None, *, label: str | None = None, actor: str = IN_PROCESS
    ) -> int:
        """Points the default (or ``label``) at ``version`` (default: the newest READY version
        older than the current one) at once; returns the version now targeted."""
        with self.traffic.audited(actor, "rollback", model) as entry:
            managed = self.repository.get(model)
            routing = managed.describe()
            before = routing["labels"].get(label) if label else routing["default"]
            entry["before"] = {"label": label, "version": before}
            after = managed.rollback(version, label)
            entry["after"] = {"label": label, "version": after}
            return after

    def set_label(self, model: str, label: str, version: int, *, actor: str = IN_PROCESS) -> None:
        """Points ``label`` at ``version`` (a READY version) at once."""
        with self.traffic.audited(actor, "label", model) as entry:
            managed = self.repository.get(model)
            entry["before"] = {"label": label, "version": managed.describe()["labels"].get(label)}
            managed.set_label(label, version)
            entry["after"] = {"label": label, "version": version}

    # --- runtime settings (no reload; see modelserve/settings.py) --------------------------------
    def settings(self, model: str, version: Version = None) -> dict[str, Any]:
        """A version's live settings: instances (count, autoscaling bounds, saturation) and
        dynamic batching."""
        return _settings.describe(self.repository.get(model).lookup(version))

    def update_settings(
        self, model: str, version: Version = None, *, instances: Mapping[str, Any] | None = None,
        dynamic_batching: Mapping[str, Any] | None = None, actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        """Applies a settings change (both sections checked first); returns the settings now.
        Audited as ``settings``: the changed sections before and after, the change asked for."""
        with self.traffic.audited(actor, "settings", model) as entry:
            change = {k: dict(v) for k, v in (("instances", instances), ("dynamic_batching", dynamic_batching)) if v}
            entry["detail"] = {"version": version, "change": change}
            mv = self.repository.get(model).lookup(version)
            entry["detail"]["version"] = mv.version
            entry["before"] = _settings.changeable(_settings.describe(mv), change)
            result = _settings.update(mv, instances=instances, dynamic_batching=dynamic_batching)
            entry["after"] = _settings.changeable(result, change)
            return result

    def set_batching(
        self, model: str, version: Version = None, *, actor: str = IN_PROCESS, **settings: Any
    ) -> dict[str, Any]:
        """Changes dynamic batching settings (queue delay, queue limits, timeouts, priorities)
        of a serving version at once, losing no request; returns the settings now."""
        return self.update_settings(model, version, dynamic_batching=settings, actor=actor)

    def set_instances(
        self, model: str, version: Version = None, *, count: int | None = None, min: int | None = None,
        max: int | None = None, actor: str = IN_PROCESS,
    ) -> dict[str, Any]:
        """Sets the instance count now and/or the autoscaling bounds of a serving version;
        returns the settings now."""
        instances = {k: v for k, v in (("count", count), ("min", min), ("max", max)) if v is not None}
        return self.update_settings(model, version, instances=instances, actor=actor)

    def close(self) -> None:
        """Stops taking requests, finishes those queued, and unloads every model."""
        if not self._closed:
            self._closed = True
            self.autoscaler.close()
            self.traffic.close()
            self.repository.close()
            self.observer.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _engine_of(mv: Any) -> Any:
    """The version's ModelEngine; a generative version has none and says where to go instead."""
    if mv.engine is None:
        raise InvalidArgumentError(
            f"{mv.label} is generative (backend '{mv.backend_name}'): send it generate requests "
            "(Runtime.generate, POST /v1/completions, POST /v2/models/{m}/generate), not infer")
    return mv.engine


def _submit(mv: Any, submit: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``submit(*args, **kwargs)``, an enqueue on a routed version's engine; a full queue's
    refusal carries a retry hint."""
    try:
        return submit(*args, **kwargs)
    except ResourceExhaustedError as e:
        raise with_retry_hint(e, mv)
