"""Progress of a job: a snapshot for callbacks, and the terminal progress bar."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Callable

__all__ = ["Progress", "ProgressBar", "format_duration"]


@dataclass(frozen=True)
class Progress:
    """Where a job stands. ``rows_done`` counts rows with an output or a failure (those of an
    earlier, resumed run included); ``rows_committed`` those on disk and journalled.
    ``fraction`` is of rows when the input's row count is known (npy, npz, Parquet), else of the
    input's bytes (CSV, JSON Lines); ``rows_per_s`` and ``eta_s`` count this run only."""

    rows_done: int
    rows_committed: int
    rows_failed: int
    total_rows: int | None
    fraction: float | None
    elapsed_s: float
    rows_per_s: float
    eta_s: float | None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """One line on a terminal, redrawn at most ``rate`` times a second; nothing when ``stream``
    is not a TTY (logs and pipes get only the summary)."""

    WIDTH = 24

    def __init__(self, label: str, stream: IO[str] | None = None, rate: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.interval = 1.0 / rate
        self.last = 0.0
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        self.drawn = True
        self.stream.write("\r" + self.line(p) + "\x1b[K")
        self.stream.flush()

    def line(self, p: Progress) -> str:
        parts = [self.label]
        if p.fraction is not None:
            filled = int(p.fraction * self.WIDTH)
            parts.append(f"{p.fraction * 100:3.0f}% |{'#' * filled}{'.' * (self.WIDTH - filled)}|")
        rows = f"{p.rows_done:,}" + (f"/{p.total_rows:,}" if p.total_rows is not None else "") + " rows"
        parts += [rows, f"{p.rows_per_s:,.0f} rows/s"]
        if p.eta_s is not None:
            parts.append(f"ETA {format_duration(p.eta_s)}")
        if p.rows_failed:
            parts.append(f"{p.rows_failed:,} failed")
        return "  ".join(parts)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


Callback = Callable[[Progress], None]
