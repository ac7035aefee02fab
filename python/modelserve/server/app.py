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
import errno
import gc
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..observe import Observer
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


def _freeze_start_up_heap() -> None:
    """Note [Start-up heap] (``ServerOptions.freeze_start_up_heap``, on in ``modelserve serve``):
    what start-up allocated (modules, frontends, the models loaded at
    start) lives about as long as the server. Serving allocates steadily, so the collector runs
    full collections now and then, and each one walks every object tracked so far: tens of
    milliseconds on the event loop once numpy, grpc and a framework are imported. gc.freeze()
    moves the start-up objects out of the collector's generations, so a full collection walks
    only what was allocated since. The price: a reference cycle among those objects is never
    collected. A start-up version that is unloaded later is still freed, by reference counting:
    its stopped engine lets go of the backend factory that referred back to it (executor.h).
    Measured with bench/soak/swaps.py (20 swaps at half of capacity): the p99 during the swaps
    was 65 ms without it, 18 and 22 ms in two runs with it."""
    gc.collect()
    gc.freeze()


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
        memory_budget: str | Mapping[str, int | str] | None = None,
        memory_evict: bool = False,
        state_dir: str | Path | None = None,
        observer: Observer | None = None,
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
            memory_budget=memory_budget,
            memory_evict=memory_evict,
            state_dir=state_dir,
            observer=observer,
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
        """Binds both ports (live at once; ready once the models are loaded, Note [Server
        readiness] in modelserve/runtime.py), then loads. When a step fails, what had started
        is stopped again before the error propagates (a port in use names the address)."""
        try:
            await self._start()
        except BaseException:
            await asyncio.gather(self.grpc.stop(0), self.http.stop(0), return_exceptions=True)
            await asyncio.to_thread(self.runtime.close)
            raise

    async def _start(self) -> None:
        o = self.options
        scheme = "https" if o.tls_cert else "http"
        # Both addresses are tried before either frontend binds: a port in use is then one line
        # (gRPC's C core would log its own bind failure first).
        _check_listen(o.host, o.grpc_port, "gRPC", "--grpc-port")
        _check_listen(o.host, o.http_port, "HTTP", "--http-port")
        self.grpc_port = await self.grpc.start()
        try:
            self.http_port = await self.http.start()
        except OSError as e:
            raise _listen_error(e, o.host, o.http_port, "HTTP", "--http-port") from None
        log.info("gRPC listening on %s:%d%s", o.host, self.grpc_port, " (TLS)" if o.tls_cert else "")
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
        if o.freeze_start_up_heap:
            _freeze_start_up_heap()
        if not self.health.ready():
            why = [f"required model '{m}' is not READY" for m in o.required_models if not self.health.model_ready(m)]
            why += list(self.runtime.unready_models().values()) if not o.required_models else []
            log.warning("readiness (GET /v2/health/ready, gRPC ServerReady) waits for: %s", "; ".join(why))

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


def _check_listen(host: str, port: int, frontend: str, flag: str) -> None:
    """Binds ``host:port`` once and lets it go; raises what binding it for real would."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both frontends bind
            sock.bind(address)
    except OSError as e:
        raise _listen_error(e, host, port, frontend, flag) from None


def _listen_error(e: OSError, host: str, port: int, frontend: str, flag: str) -> OSError:
    """A bind failure as one line naming the address and the flag to change; other errors (a
    TLS file) pass unchanged."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        hint = "not an address of this machine; see --host"
    elif e.errno == errno.EADDRINUSE:
        hint = f"the port is in use; see {flag}"
    elif e.errno == errno.EACCES:
        hint = f"ports below 1024 need privileges; see {flag}"
    else:
        return e
    return OSError(f"{frontend} cannot listen on {address}: {e.strerror} ({hint})")
