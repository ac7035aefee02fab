"""Prometheus metrics at GET /metrics, names prefixed ``modelserve_``.

Everything is read at scrape time from counters the native core keeps anyway (Note [Metrics at
scrape time]): a request costs nothing extra for being measured.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """The registry the HTTP frontend serves; ``render()`` gives the exposition and its type."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=False)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
