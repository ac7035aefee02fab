"""The model repository: discovery, version policy, labels, control modes and zero-downtime swaps.

Layout (DESIGN.md)::

    <repository>/<model>/config.yaml          (optional: defaults apply without it)
    <repository>/<model>/<version>/model.*    (versions are positive integers)

Note [Zero-downtime swap]
~~~~~~~~~~~~~~~~~~~~~~~~~
Requests that name no version go to the model's *default* version: the highest READY version the
policy serves, unless a rollback pinned another. A new version is loaded and warmed beside the
ones serving; only once it is READY does the default move to it, in one assignment under the
model's lock. Versions the policy no longer serves are then retired: the ``keep_previous_versions``
most recent of them stay READY (reachable by number or label, and instant rollback targets),
older ones drain (ModelVersion.drain: no new requests, queued ones finish, then unload). A new
version that fails to load is FAILED and changes nothing else: the old default keeps serving and
the failure is in the index and the log. Rollback re-points the default, or a label, to a version
that is still READY, at once.

Note [Half-written versions]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
In poll mode a version folder (or a config.yaml) that appeared or changed since the last scan is
acted on only when its fingerprint (every file's relative path, size and modification time) is the
same at two consecutive scans: a copy in progress changes sizes or times between scans and is left
alone until it settles. Startup (modes none and poll) and explicit load() act on what is there:
the operator has said it is ready. Hidden files (starting with ".") are ignored, so tools may keep
their temporary files beside a version while they write it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..backends import infer_backend
from ..backends import get as get_backend
from ..config import CONFIG_FILE, ConfigError, ModelConfig, load_config
from ..errors import InvalidArgumentError, ModelserveError, NotFoundError, UnavailableError
from .versions import ModelVersion, VersionState

__all__ = ["LoadError", "ModelRepository", "ManagedModel", "ControlMode", "scan_repository", "validate_repository"]

log = logging.getLogger("modelserve.repository")

ControlMode = Literal["none", "explicit", "poll"]


class LoadError(ConfigError):
    """A model (or some of its versions) failed to load; ``errors`` lists why, one line each.
    Versions that were serving before keep serving."""
S = VersionState


# --- discovery ----------------------------------------------------------------------------------


def _fingerprint(path: Path) -> tuple:
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_size, st.st_mtime_ns),)
    items = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or "__pycache__" in rel.parts or not p.is_file():
            continue
        st = p.stat()
        items.append((str(rel), st.st_size, st.st_mtime_ns))
    return tuple(items)


@dataclass
class ModelDir:
    name: str
    path: Path
    config_fingerprint: tuple
    versions: dict[int, tuple] = field(default_factory=dict)  # version -> fingerprint


def scan_repository(root: Path) -> dict[str, ModelDir]:
    """Every model folder under ``root`` with its version folders and their fingerprints."""
    models: dict[str, ModelDir] = {}
    if not root.is_dir():
        raise NotFoundError(f"model repository {root} does not exist or is not a folder")
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith((".", "_")):
            continue
        config = entry / CONFIG_FILE
        model = ModelDir(entry.name, entry, _fingerprint(config) if config.exists() else ())
        for sub in entry.iterdir():
            if sub.is_dir() and sub.name.isdigit() and int(sub.name) > 0:
                model.versions[int(sub.name)] = _fingerprint(sub)
        models[entry.name] = model
    return models


# --- one model ----------------------------------------------------------------------------------


class ManagedModel:
    """All versions of one model, its routing (default version and labels), and its swaps."""

    budget = None  # the repository's MemoryBudget, if any (Note [Memory budget])

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.config: ModelConfig | None = None
        self.versions: dict[int, ModelVersion] = {}  # the serving (or last attempted) version objects
        self.failures: dict[int, ModelVersion] = {}  # failed attempts whose predecessor still serves
        self.labels: dict[str, int] = {}
        self.default: int | None = None
        self.pinned = False  # a rollback chose the default; a newer version unpins it
        self._lock = threading.RLock()  # routing: versions, labels, default
        self._loading = threading.Lock()  # one sync/unload at a time per model

    # --- routing ---------------------------------------------------------------------------------
    def resolve(self, version: int | str | None = None) -> int:
        """The version number a request for ``version`` (number, label, "latest" or None) targets."""
        with self._lock:
            if version is None or version == "" or version == "latest":
                if self.default is None:
                    raise UnavailableError(f"model '{self.name}' has no READY version{self._failure_note()}")
                return self.default
            if isinstance(version, int) or (isinstance(version, str) and version.isdigit()):
                return int(version)
            if version in self.labels:
                return self.labels[version]
            raise NotFoundError(
                f"model '{self.name}' has no version or label '{version}'; versions "
                f"{sorted(self.versions)}, labels {self.labels or '{}'}"
            )

    def lookup(self, version: int | str | None = None) -> ModelVersion:
        """The ModelVersion for ``version`` in any state (for metadata and status)."""
        number = self.resolve(version)
        with self._lock:
            mv = self.versions.get(number)
        if mv is None:
            raise NotFoundError(f"model '{self.name}' has no version {number}; versions {sorted(self.versions)}")
        return mv

    @contextlib.contextmanager
    def route(self, version: int | str | None = None) -> Iterator[ModelVersion]:
        """A READY version for one request, held until the request is in its queue (for a
        blocking ``Runtime.infer``, which enqueues and waits in one native call: until it is done)."""
        with self._lock:
            mv = self.lookup(version)
            if not mv.enter():
                raise UnavailableError(
                    f"{mv.label} is {mv.state.value}{': ' + mv.reason if mv.reason else ''}; "
                    f"ready versions: {self.ready_versions()}"
                )
        try:
            yield mv
        finally:
            mv.leave()

    def ready_versions(self) -> list[int]:
        with self._lock:
            return sorted(v for v, mv in self.versions.items() if mv.state is S.READY)

    def _failure_note(self) -> str:
        failed = [mv for mv in list(self.versions.values()) + list(self.failures.values()) if mv.state is S.FAILED]
        return "; " + "; ".join(f"version {mv.version} FAILED: {mv.reason}" for mv in failed) if failed else ""

    def set_label(self, label: str, version: int) -> None:
        if not label or label.isdigit() or label == "latest":
            raise InvalidArgumentError(f"model '{self.name}': '{label}' cannot be a label (numbers and 'latest' are reserved)")
        with self._lock:
            self._require_ready(version, f"label '{label}'")
            self.labels[label] = version
        log.info("model '%s': label '%s' -> version %d", self.name, label, version)

    def rollback(self, version: int | None = None, label: str | None = None) -> int:
        """Re-points the default (or ``label``) to ``version``, a READY version; without a version,
        to the newest READY version below the current target. Returns the version now targeted."""
        with self._lock:
            current = self.labels.get(label) if label else self.default
            if label and current is None:
                raise NotFoundError(f"model '{self.name}' has no label '{label}'; labels {self.labels}")
            if version is None:
                older = [v for v in self.ready_versions() if current is None or v < current]
                if not older:
                    raise UnavailableError(
                        f"model '{self.name}': no READY version older than {current} to roll back to; "
                        f"ready versions: {self.ready_versions()}"
                    )
                version = older[-1]
            self._require_ready(version, "rollback")
            if label:
                self.labels[label] = version
            else:
                self.default = version
                self.pinned = True
        log.warning("model '%s': rolled back %s from version %s to %d", self.name, label or "default", current, version)
        return version

    def _require_ready(self, version: int, what: str) -> None:
        mv = self.versions.get(version)
        if mv is None or mv.state is not S.READY:
            raise UnavailableError(
                f"model '{self.name}': {what} needs a READY version; version {version} is "
                f"{mv.state.value if mv else 'not loaded'}; ready versions: {self.ready_versions()}"
            )

    # --- loading ---------------------------------------------------------------------------------
    def sync(self, config: ModelConfig, available: dict[int, tuple], reload: set[int] = frozenset()) -> list[str]:
        """Brings the loaded versions in line with ``config`` and the versions on disk: loads
        what the policy wants and is not READY (and those in ``reload``), then swaps and retires
        (Note [Zero-downtime swap]). Returns the load errors; never raises for a version."""
        errors: list[str] = []
        with self._loading:
            wanted = config.version_policy.select(list(available))
            if not wanted:
                errors.append(f"model '{self.name}': no version folder matches version_policy "
                              f"{config.version_policy.model_dump(exclude_none=True)}; on disk: {sorted(available)}")
            config_changed = self.config is not None and config != self.config
            loaded: dict[int, ModelVersion] = {}
            for v in wanted:
                current = self.versions.get(v)
                if current is not None and current.state is S.READY and v not in reload and not config_changed:
                    continue
                try:
                    backend = config.backend or infer_backend(self.path / str(v))
                    mv = ModelVersion(self.name, v, self.path / str(v), config, backend, budget=self.budget)
                except ModelserveError as e:
                    errors.append(str(e))
                    continue
                try:
                    loaded[v] = mv.load()
                except Exception as e:
                    errors.append(f"model '{self.name}' version {v}: {mv.reason or e}")
                    with self._lock:
                        if current is not None and current.state is S.READY:
                            self.failures[v] = mv  # the old one keeps serving
                        else:
                            self.versions[v] = mv
            retired = self._swap(config, wanted, loaded, set(available))
            for mv in retired:
                mv.drain("superseded")
        return errors

    def _swap(self, config: ModelConfig, wanted: list[int], loaded: dict[int, ModelVersion], on_disk: set[int]) -> list[ModelVersion]:
        retired: list[ModelVersion] = []
        with self._lock:
            for v, mv in loaded.items():
                old = self.versions.get(v)
                if old is not None and old.state is S.READY:
                    retired.append(old)  # the same version, reloaded (new files or config)
                self.versions[v] = mv
                self.failures.pop(v, None)
            previous_labels = self.config.labels if self.config else {}
            self.config = config
            ready = [v for v in wanted if self.versions.get(v) and self.versions[v].state is S.READY]
            newest = max(ready, default=None)
            if self.pinned and self.default in ready and not (newest is not None and newest in loaded and newest > self.default):
                pass  # a rollback's pin holds until a newer version arrives
            else:
                self.pinned = False
                if newest is not None:
                    self.default = newest
                elif self.default is not None and self.versions[self.default].state is not S.READY:
                    self.default = None
            # A config label takes effect when its version is READY; one moved by the API (a
            # rollback) stays where it was moved until the config itself changes it.
            for label, v in config.labels.items():
                if self.versions.get(v) and self.versions[v].state is S.READY:
                    if label not in self.labels or previous_labels.get(label) != v:
                        self.labels[label] = v
            # Retire what the policy no longer serves, keeping the newest superseded ones.
            protected = set(ready) | {v for v in self.labels.values()} | ({self.default} if self.default else set())
            superseded = sorted(
                (v for v, mv in self.versions.items() if mv.state is S.READY and v not in protected),
                reverse=True,
            )
            keep = {v for v in superseded if v in on_disk}
            keep = set(sorted(keep, reverse=True)[: config.keep_previous_versions])
            for v in superseded:
                if v not in keep:
                    retired.append(self.versions[v])
            # Labels pointing at retired versions go; the default never points at one.
            retiring = {mv.version for mv in retired if self.versions.get(mv.version) is mv}
            self.labels = {k: v for k, v in self.labels.items() if v not in retiring}
        return retired

    def unload(self) -> None:
        """Drains and unloads every version."""
        with self._loading:
            with self._lock:
                serving = [mv for mv in self.versions.values() if mv.state is S.READY]
                self.default = None
                self.labels = {}
            for mv in serving:
                mv.drain("unloaded")

    # --- status ----------------------------------------------------------------------------------
    def ready(self) -> bool:
        with self._lock:
            return self.default is not None and self.versions[self.default].state is S.READY

    def describe(self) -> dict[str, Any]:
        with self._lock:
            versions = {v: mv.describe() for v, mv in sorted(self.versions.items())}
            for v, mv in self.failures.items():
                versions[v]["last_failure"] = mv.describe()
            return {"name": self.name, "default": self.default, "pinned": self.pinned,
                    "labels": dict(self.labels), "versions": versions}


# --- the repository ------------------------------------------------------------------------------


class ModelRepository:
    """Models under one folder, loaded per the model control mode:

    - ``none``: everything at start; the set of models does not change afterwards.
    - ``explicit``: only ``load_models`` at start; ``load()``/``unload()`` change the set.
    - ``poll``: everything at start, then a rescan every ``poll_interval`` seconds loads new
      versions and models, unloads removed ones and reloads changed configs (Note [Half-written
      versions] for what "new" means).
    """

    budget = None  # a MemoryBudget shared by every version (set by the Runtime), or None

    def __init__(
        self,
        root: str | Path,
        *,
        control_mode: ControlMode = "none",
        poll_interval: float = 5.0,
        load_models: tuple[str, ...] | list[str] = (),
    ) -> None:
        if control_mode not in ("none", "explicit", "poll"):
            raise InvalidArgumentError(f"model control mode '{control_mode}' is not one of none, explicit, poll")
        if poll_interval <= 0:
            raise InvalidArgumentError(f"poll interval must be > 0 seconds, got {poll_interval}")
        self.root = Path(root)
        self.control_mode = control_mode
        self.poll_interval = poll_interval
        self.models: dict[str, ManagedModel] = {}
        self.errors: dict[str, list[str]] = {}  # model -> errors of its last load
        self._lock = threading.RLock()
        self._seen: dict[str, ModelDir] = {}  # poll: the previous scan
        self._acted: dict[str, ModelDir] = {}  # poll: what the loaded state reflects
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._load_models = list(load_models)
        #: Called with a model's name after each sync of it that read a valid config (the Runtime
        #: applies config.yaml's traffic key with it); exceptions are logged, never raised.
        self.on_synced: Any = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        scan = scan_repository(self.root)
        names = list(scan) if self.control_mode != "explicit" else self._load_models
        for name in names:
            if name not in scan:
                self.errors[name] = [f"model '{name}' not found in repository {self.root}; found {sorted(scan)}"]
                log.error("%s", self.errors[name][0])
                continue
            self._load_dir(scan[name])
        self._seen = scan
        if self.control_mode == "poll":
            self._poller = threading.Thread(target=self._poll_loop, name="modelserve-poll", daemon=True)
            self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._lock:
            models = list(self.models.values())
            self.models = {}
        for m in models:
            m.unload()

    # --- explicit control ----------------------------------------------------------------------
    def load(self, name: str) -> ManagedModel:
        """Loads (or reloads) a model with everything its folder holds now. Explicit mode only."""
        if self.control_mode != "explicit":
            raise UnavailableError(
                f"cannot load model '{name}': the model control mode is '{self.control_mode}' (use explicit)"
            )
        scan = scan_repository(self.root)
        if name not in scan:
            raise NotFoundError(f"model '{name}' not found in repository {self.root}; found {sorted(scan)}")
        errors = self._load_dir(scan[name], reload=set(scan[name].versions))
        if errors:
            # What was serving before (if anything) still serves; the caller hears why the load failed.
            raise LoadError(errors)
        return self.models[name]

    def unload(self, name: str) -> None:
        if self.control_mode != "explicit":
            raise UnavailableError(
                f"cannot unload model '{name}': the model control mode is '{self.control_mode}' (use explicit)"
            )
        with self._lock:
            model = self.models.pop(name, None)
        if model is None:
            raise NotFoundError(f"model '{name}' is not loaded; loaded models: {sorted(self.models)}")
        model.unload()

    # --- access ------------------------------------------------------------------------------
    def get(self, name: str) -> ManagedModel:
        with self._lock:
            model = self.models.get(name)
            if model is None:
                errors = self.errors.get(name)
                if errors:
                    raise UnavailableError(f"model '{name}' failed to load: " + "; ".join(errors))
                raise NotFoundError(f"model '{name}' is not loaded; loaded models: {sorted(self.models)}")
            return model

    def ready(self) -> bool:
        with self._lock:
            return all(m.ready() for m in self.models.values()) and not any(
                n not in self.models for n in self.errors
            )

    def index(self) -> list[dict[str, Any]]:
        """Every model and version the repository knows, with its state and reason."""
        out = []
        scan = scan_repository(self.root)
        with self._lock:
            models = dict(self.models)
        for name in sorted(set(scan) | set(models) | set(self.errors)):
            model = models.get(name)
            if model is None:
                reason = "; ".join(self.errors.get(name, ())) or "not loaded"
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
                continue
            for v, info in model.describe()["versions"].items():
                reason = info["reason"]
                if "last_failure" in info:
                    reason = f"reload failed: {info['last_failure']['reason']}"
                out.append({"name": name, "version": str(v), "state": info["state"], "reason": reason})
        return out

    # --- loading -------------------------------------------------------------------------------
    def _load_dir(self, d: ModelDir, reload: set[int] = frozenset()) -> list[str]:
        """Syncs one model with its folder (``reload``: versions to load again even if READY);
        returns the errors, which are also kept in ``self.errors``."""
        try:
            config = load_config(d.path)
        except ConfigError as e:
            self.errors[d.name] = e.errors
            serving = " (the loaded versions keep serving)" if d.name in self.models else ""
            log.error("model '%s': config rejected%s: %s", d.name, serving, e)
            return e.errors
        with self._lock:
            model = self.models.get(d.name) or ManagedModel(d.name, d.path)
            model.budget = self.budget
        errors = model.sync(config, d.versions, reload=reload)
        with self._lock:
            if model.versions:
                self.models[d.name] = model
            if errors:
                self.errors[d.name] = errors
            else:
                self.errors.pop(d.name, None)
            self._acted[d.name] = d
        if self.on_synced is not None and model.versions:
            try:
                self.on_synced(d.name)
            except Exception:
                log.exception("model '%s': after-sync hook failed", d.name)
        return errors

    def poll_once(self) -> None:
        """One rescan (poll mode runs this every poll_interval; tests call it directly)."""
        scan = scan_repository(self.root)
        previous, self._seen = self._seen, scan
        for name, d in scan.items():
            acted = self._acted.get(name)
            stable = previous.get(name)
            if stable is None:
                continue  # first sight: wait for a second scan
            changed_versions = {
                v for v, fp in d.versions.items()
                if (acted is None or acted.versions.get(v) != fp) and stable.versions.get(v) == fp
            }
            removed = set(acted.versions) - set(d.versions) if acted else set()
            config_changed = (acted is None or acted.config_fingerprint != d.config_fingerprint) and (
                stable.config_fingerprint == d.config_fingerprint
            )
            unsettled = {v for v, fp in d.versions.items() if stable.versions.get(v) != fp}
            if not (changed_versions or removed or config_changed):
                continue
            # Act on the settled part only: unsettled versions are hidden until they settle.
            settled = ModelDir(d.name, d.path, d.config_fingerprint,
                               {v: fp for v, fp in d.versions.items() if v not in unsettled})
            if acted is not None:
                # Versions that changed on disk reload; unchanged ones stay as they are.
                reload = {v for v in changed_versions if v in acted.versions}
            else:
                reload = set()
            log.info("model '%s': repository changed (new or changed versions %s, removed %s, config %s)",
                     name, sorted(changed_versions), sorted(removed), "changed" if config_changed else "same")
            self._load_dir(settled, reload)
        for name in set(self._acted) - set(scan):
            log.info("model '%s': folder removed; unloading", name)
            with self._lock:
                model = self.models.pop(name, None)
                self._acted.pop(name, None)
            if model is not None:
                model.unload()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("repository poll failed; retrying in %.1f s", self.poll_interval)


# --- offline validation ------------------------------------------------------------------------


def validate_repository(root: str | Path) -> list[str]:
    """Every problem in a repository, without loading models: configs, version folders, backends,
    model files, and (where the format records it) signatures against the config."""
    from ..observe.drift import InputDrift
    from .versions import resolve_io

    root = Path(root)
    try:
        scan = scan_repository(root)
    except NotFoundError as e:
        return [str(e)]
    if not scan:
        return [f"{root}: no model folders"]
    errors: list[str] = []
    for name, d in scan.items():
        try:
            config = load_config(d.path)
        except ConfigError as e:
            errors.extend(e.errors)
            continue
        if not d.versions:
            errors.append(f"{d.path}: no version folders (positive integers, e.g. {d.path}/1/)")
            continue
        wanted = config.version_policy.select(list(d.versions))
        if not wanted:
            errors.append(f"{d.path / CONFIG_FILE}: version_policy selects none of the versions on disk {sorted(d.versions)}")
        for label, v in config.labels.items():
            if v not in d.versions:
                errors.append(f"{d.path / CONFIG_FILE}: labels.{label}: version {v} has no folder; on disk: {sorted(d.versions)}")
        if config.traffic is not None:  # where the policy points must exist (readiness is checked at start)
            for i, t in enumerate([*config.traffic.targets, *config.traffic.shadows]):
                key = f"traffic.{'targets' if i < len(config.traffic.targets) else 'shadows'}"
                if t.model is not None and t.model not in scan:
                    errors.append(f"{d.path / CONFIG_FILE}: {key}: model '{t.model}' is not in the repository")
                elif t.model is None and isinstance(t.version, int) and t.version not in d.versions:
                    errors.append(f"{d.path / CONFIG_FILE}: {key}: version {t.version} has no folder; on disk: {sorted(d.versions)}")
                elif t.model is None and isinstance(t.version, str) and t.version not in config.labels:
                    errors.append(f"{d.path / CONFIG_FILE}: {key}: label '{t.version}' is not in labels {config.labels}")
        for v in wanted:
            vdir = d.path / str(v)
            try:
                backend_name = config.backend or infer_backend(vdir)
                backend = get_backend(backend_name)
                if not (vdir / backend.model_file).exists():
                    errors.append(f"{vdir}: backend '{backend_name}' needs {backend.model_file}")
                    continue
                if config.instances.isolation == "process" and backend_name != "python":
                    errors.append(f"{d.path / CONFIG_FILE}: instances.isolation: process is for the python backend, "
                                  f"not '{backend_name}' (version {v})")
                    continue
                inputs, _ = resolve_io(name, vdir, config, backend)
                if config.drift.enabled and config.drift.reference is not None and inputs:
                    # The reference file is read and checked against the inputs as a load would.
                    InputDrift(f"{d.path / CONFIG_FILE}: drift.reference (version {v})", [t.as_spec() for t in inputs],
                               batched=config.max_batch_size > 0, config=config.drift, folders=(vdir, d.path))
            except ModelserveError as e:
                errors.extend(str(e).splitlines())
            except Exception as e:  # a model file the framework cannot read
                errors.append(f"{vdir}: {type(e).__name__}: {e}")
    return errors
