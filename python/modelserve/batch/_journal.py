"""The work folder of a job (``OUTPUT.partial/``) and its journal.

``journal.jsonl`` is append-only: its first line describes the job (the fingerprint: model,
version, input file identity and every option that shapes the output, plus the schema the first
run settled: ID column kinds), and every later line records one committed chunk: the input
position after it, the rows done and failed so far, the sizes of the data files and of the errors
file, and the output shapes. A chunk's line is appended (and fsync'd) only after its data is
fsync'd, so the last complete line always describes data that is on disk; a torn last line (a
crash while appending) is ignored. Resuming truncates every file back to the sizes of the last
line and reads the input from its position: what was committed is never redone, and what was
not is redone from the same chunk boundary, with the same requests, so the output is the same
as that of an uninterrupted run.

A lock (``flock`` on ``lock``) keeps two jobs from writing the same output at once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["Workspace", "committed_rows"]


class Workspace:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".partial")
        self.journal_path = self.dir / "journal.jsonl"
        self._journal: Any = None
        self._lock: Any = None

    def peek(self) -> dict[str, Any]:
        """The fingerprint of the job an earlier run left here ({} when none), read only."""
        header, last = self._read()
        return header.get("fingerprint", {}) if header is not None and last is not None else {}

    def open(self, fingerprint: dict[str, Any], restart: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Looks at what an earlier run left, changing nothing. Returns its journal header and last
        committed record when this job can resume from them, else (None, None). Refuses the
        unfinished output of a different job unless ``restart``."""
        if not self.dir.exists():
            return None, None
        self._take_lock()
        header, last = self._read()
        if header is None or last is None or restart:
            return None, None
        if header.get("fingerprint") != fingerprint:
            self._release()
            was = header.get("fingerprint", {})
            differ = sorted(k for k in set(fingerprint) | set(was) if fingerprint.get(k) != was.get(k))
            detail = "; ".join(f"{k} was {_show(was.get(k))}, now {_show(fingerprint.get(k))}" for k in differ)
            raise InvalidArgumentError(
                f"{self.dir} holds the unfinished output of a different job ({detail}); run that job again "
                f"to finish it, or restart (--restart) to discard it")
        return header, last

    def begin(self, header: dict[str, Any] | None) -> None:
        """Starts writing: a fresh work folder with ``header`` as the journal's first line, or
        (None) the resumed one, its journal cut after the last complete line."""
        if header is not None:
            if self.dir.exists():
                self._release()
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
            self._take_lock()
            with open(self.journal_path, "w") as f:
                f.write(json.dumps(header) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _sync_dir(self.dir)
            _sync_dir(self.dir.parent)
        else:
            with open(self.journal_path, "r+b") as f:
                f.truncate(self._valid_bytes)
        self._journal = open(self.journal_path, "a")

    def _take_lock(self) -> None:
        if fcntl is None or self._lock is not None:
            return
        self._lock = open(self.dir / "lock", "a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise InvalidArgumentError(f"{self.output}: another job is writing this output now "
                                       f"(it holds {self.dir / 'lock'})") from None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _read(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        header, last = None, None
        self._valid_bytes = 0
        try:
            data = self.journal_path.read_bytes()
        except OSError:
            return None, None
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            if header is None:
                header = record
            else:
                last = record
            self._valid_bytes += len(line)
        return header, last

    def commit(self, record: dict[str, Any]) -> None:
        self._journal.write(json.dumps(record) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._release()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def committed_rows(output: Path) -> int:
    """Rows of ``output`` an interrupted job has committed (0 when none)."""
    ws = Workspace(output)
    _, last = ws._read()
    return int(last.get("rows", 0)) if last else 0
