"""Where traffic state lives between restarts, and the audit log.

Note [Traffic state on disk]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The state directory (``--state-dir``; by default ``<repository>/.modelserve/``, which the
repository scan ignores, as it ignores every folder starting with ".") holds:

- ``traffic.json``: every endpoint's policy, its current or last rollout, and the labels its
  promotions and label moves over the API moved (re-applied at start, over config.yaml's
  ``labels``; an entry with labels only has no ``policy`` key and leaves config.yaml's
  ``traffic`` key in force), rewritten whole on
  every change: written to a temporary file in the same folder, flushed, fsynced, then renamed
  over the old one, so a crash leaves the old state or the new one, never half of either. A
  change is applied only once it is on disk: a change that cannot be saved fails and changes
  nothing.
- ``audit.jsonl``: one JSON object per management action, whoever asked and however it
  ended (Note [Audit entries]), appended and flushed.

With no directory (``StateStore(None)``) both stay in memory: a Ray ingress whose replicas share
no disk keeps its state elsewhere.

Note [Audit entries]
~~~~~~~~~~~~~~~~~~~~
Every management action is recorded by one context manager, :meth:`StateStore.recording`
(``TrafficManager.audited``), around the code that does it: repository ``load`` and ``unload``,
``settings``, ``policy.set``, ``policy.clear``, ``rollout.start|pause|resume|promote|abort`` (and
the controller's own ``rollout.advance|rollback|promote``), ``label`` and ``rollback``. Reads
(policies, readouts, settings, the audit listing) are not recorded. An entry holds ``time``
(UTC, seconds), ``actor``, ``action``, ``endpoint`` (the model), ``outcome`` (``"success"`` or
``"failure"``) and the action's own fields: ``before`` and ``after`` (a policy; a label's
``{"label", "version"}``, label None meaning the default version; a model's ``{"default",
"versions": {number: state}}``; the settings sections changed) and ``detail``. A failure adds
``error: {"code", "message"}`` (``code``: the status name of modelserve.errors, e.g.
``NOT_FOUND``) and keeps the fields known when it failed; the error then propagates unchanged.
An action is recorded once, where it runs: a frontend records only what it refuses before
calling the runtime (``refusals``: a body that does not decode), never the action itself.

The actor is given by whoever calls: the frontends pass the ``X-Modelserve-Actor`` header or
``x-modelserve-actor`` metadata (or a traffic rpc's ``actor`` field), else the mutual-TLS
client certificate's subject as ``mtls:<subject>`` (gRPC only: uvicorn does not hand the
certificate to the app), else the peer (``http:<host>``, ``grpc:<peer>``); see
``server/common.py``'s ``actor_of``. In-process calls default to :data:`IN_PROCESS`, the rollout
controller is ``rollout-controller``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InternalError, ModelserveError

__all__ = ["StateStore", "STATE_FILE", "AUDIT_FILE", "IN_PROCESS"]

log = logging.getLogger("modelserve.traffic")

STATE_FILE = "traffic.json"
AUDIT_FILE = "audit.jsonl"
_FORMAT = 1

#: The actor of a management action called in-process (Note [Audit entries]).
IN_PROCESS = "in-process"


class StateStore:
    """Persists traffic state (Note [Traffic state on disk]). Thread-safe."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._memory_audit: deque[dict[str, Any]] = deque(maxlen=10_000)

    def load(self) -> dict[str, dict[str, Any]]:
        """Every endpoint's saved state (``{endpoint: {"policy": ..., "rollout": ...}}``); empty
        when nothing was saved. A file that cannot be read is an error naming it: starting with
        no policies where policies were saved would silently send traffic where nobody meant."""
        if self.directory is None:
            return {}
        path = self.directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):  # nothing saved (yet)
            return {}
        except (OSError, ValueError) as e:
            raise InternalError(f"traffic state {path} cannot be read: {e}; fix or remove it") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("endpoints"), dict):
            raise InternalError(f"traffic state {path}: expected {{'format': {_FORMAT}, 'endpoints': {{...}}}}")
        return data["endpoints"]

    def save(self, endpoints: dict[str, dict[str, Any]]) -> None:
        if self.directory is None:
            return
        payload = json.dumps({"format": _FORMAT, "endpoints": endpoints}, indent=1, sort_keys=True)
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".traffic-", suffix=".json", dir=self.directory)
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(payload)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.directory / STATE_FILE)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as e:
                raise InternalError(
                    f"cannot save traffic state in {self.directory}: {e.strerror or e}; the change was not applied "
                    "(choose a writable folder with --state-dir)"
                ) from None

    def audit(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Appends ``entry`` (``time`` added; values JSON cannot hold written as text) to the
        audit log; returns it. Use :meth:`recording` for a management action."""
        entry = json.loads(json.dumps(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, default=str))
        with self._lock:
            self._memory_audit.append(entry)
            if self.directory is not None:
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    with open(self.directory / AUDIT_FILE, "a") as f:
                        f.write(json.dumps(entry, sort_keys=True) + "\n")
                except OSError as e:  # the change itself is saved: log loudly, do not undo it
                    log.error("cannot append to the audit log in %s: %s", self.directory, e)
        return entry

    @contextlib.contextmanager
    def recording(
        self, actor: str, action: str, endpoint: str, *, success: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Records the management action run in the ``with`` block (Note [Audit entries]).
        Yields a dict for the action's own fields (``before``, ``after``, ``detail``). The
        block's exception is recorded as a failure and propagates unchanged; without one the
        action is recorded as a success, unless ``success`` is False (a frontend's decoding,
        whose action the runtime records itself once it runs)."""
        fields: dict[str, Any] = {}
        head = {"actor": actor, "action": action, "endpoint": endpoint}
        try:
            yield fields
        except Exception as e:
            self.audit({**fields, **head, "outcome": "failure", "error": _error(e)})
            raise
        if success:
            self.audit({**fields, **head, "outcome": "success"})

    def read_audit(self, endpoint: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The ``limit`` most recent entries (of ``endpoint`` when given), oldest first."""
        if self.directory is None or not (self.directory / AUDIT_FILE).exists():
            with self._lock:
                entries = list(self._memory_audit)
        else:
            entries = []
            with self._lock, open(self.directory / AUDIT_FILE) as f:
                for line in f:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        continue  # a line cut short by a crash
        if endpoint is not None:
            entries = [e for e in entries if e.get("endpoint") == endpoint]
        return entries[-limit:] if limit > 0 else []



def _error(error: BaseException) -> dict[str, str]:
    """An audit entry's ``error``: the status name of the shared table and the message. An
    HTTP refusal outside the table (a body too large, an unknown encoding) is INVALID_ARGUMENT;
    anything that is no modelserve error is INTERNAL, as the frontends answer it."""
    if not isinstance(error, ModelserveError):
        return {"code": "INTERNAL", "message": f"{type(error).__name__}: {error}"}
    code = error.status
    if code == "UNKNOWN":
        code = "INVALID_ARGUMENT" if 400 <= error.http_status < 500 else "INTERNAL"
    return {"code": code, "message": str(error)}
