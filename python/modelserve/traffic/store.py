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
- ``audit.jsonl``: one JSON object per change (``time``, ``actor``, ``action``, ``endpoint``,
  ``before``, ``after``, ``detail``), appended and flushed. Label moves (``label``) and rollbacks
  (``rollback``) record ``{"label", "version"}`` before and after (label None: the default
  version).

With no directory (``StateStore(None)``) both stay in memory: a Ray ingress whose replicas share
no disk keeps its state elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import InternalError

__all__ = ["StateStore", "STATE_FILE", "AUDIT_FILE"]

log = logging.getLogger("modelserve.traffic")

STATE_FILE = "traffic.json"
AUDIT_FILE = "audit.jsonl"
_FORMAT = 1


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
        """Appends ``entry`` (``time`` added) to the audit log; returns it."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
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

