"""The server process: a Runtime, the gRPC and HTTP frontends on one event loop, metrics, health,
logging and the shutdown sequence.

Note [Graceful shutdown]
~~~~~~~~~~~~~~~~~~~~~~~~
On SIGTERM or SIGINT: (1) readiness turns false at once, so load balancers and Kubernetes stop
sending; (2) for ``shutdown_grace_s`` new requests are still served (those already routed here
by a balancer that has not yet noticed); (3) then new inference requests are refused with
UNAVAILABLE, while admitted ones finish: the frontends stop with ``drain_timeout_s`` for
in-flight calls, and the Runtime drains every model's queue before unloading; (4) the process
exits 0. A second signal skips the waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..runtime import Runtime
from .common import ServerOptions
from .health import Health
from .metrics import Metrics

__all__ = ["Server", "configure_logging"]

log = logging.getLogger("modelserve.server")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Logs to stderr as text lines or one JSON object per line (``--log-format``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own start/stop lines repeat ours; its errors still come through.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))


class Server:
    """``modelserve serve``: build with the repository and options, then ``run()`` (blocking) or
    ``await start()`` / ``await shutdown()`` from a running loop (tests)."""

    def __init__(
        self,
        repository: str | Path,
        options: ServerOptions | None = None,
        *,
        model_control_mode: str = "none",
        poll_interval: float = 5.0,
        load_models: list[str] | tuple[str, ...] = (),
        state_dir: str | Path | None = None,
    ) -> None:
        from .grpc import GrpcFrontend
        from .http import HttpFrontend

        self.options = options or ServerOptions()
        self.runtime = Runtime(
            repository,
            model_control_mode=model_control_mode,  # type: ignore[arg-type]
            poll_interval=poll_interval,
            load_models=load_models,
            start=False,
            state_dir=state_dir,
        )
        self.health = Health(self.runtime, self.options.required_models)
        self.metrics = Metrics(self.runtime)
        self.grpc = GrpcFrontend(self.runtime, self.options, self.health)
        self.http = HttpFrontend(self.runtime, self.options, self.health, self.metrics)
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._stopped = asyncio.Event()
        self._shutting_down = False
        self._hurry = asyncio.Event()

    async def start(self) -> None:
        """Binds both ports (live at once, ready once the models are loaded), then loads."""
        o = self.options
        scheme = "https" if o.tls_cert else "http"
        self.grpc_port = await self.grpc.start()
        log.info("gRPC listening on %s:%d%s", o.host, self.grpc_port, " (TLS)" if o.tls_cert else "")
        self.http_port = await self.http.start()
        log.info("HTTP listening on %s://%s:%d (metrics at /metrics)", scheme, o.host, self.http_port)
        t0 = time.monotonic()
        await asyncio.to_thread(self.runtime.start)
        index = self.runtime.repository_index()
        ready = sum(1 for e in index if e["state"] == "READY")
        log.info("loaded %d model versions READY of %d in %.2f s; server %s", ready, len(index),
                 time.monotonic() - t0, "ready" if self.health.ready() else "NOT ready")
        for e in index:
            if e["state"] != "READY":
                log.warning("model '%s' version %s is %s: %s", e["name"], e["version"], e["state"], e["reason"])

    async def shutdown(self) -> None:
        """Note [Graceful shutdown]."""
        if self._shutting_down:
            self._hurry.set()
            return
        self._shutting_down = True
        o = self.options
        self.health.draining = True
        log.info("shutting down: not ready; new requests refused in %.1f s", o.shutdown_grace_s)
        try:
            await asyncio.wait_for(self._hurry.wait(), timeout=o.shutdown_grace_s)
        except asyncio.TimeoutError:
            pass
        self.health.accepting = False
        log.info("refusing new requests; finishing those in flight (up to %.1f s)", o.drain_timeout_s)
        grace = 0.0 if self._hurry.is_set() else o.drain_timeout_s
        await asyncio.gather(self.grpc.stop(grace), self.http.stop(grace))
        await asyncio.to_thread(self.runtime.close)
        log.info("stopped")
        self._stopped.set()

    async def serve(self) -> None:
        """Starts, then runs until SIGTERM/SIGINT and the shutdown sequence have finished."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        await self.start()
        await self._stopped.wait()

    def run(self) -> int:
        asyncio.run(self.serve())
        return 0
