"""Liveness, readiness and the shutdown sequence's admission switch, shared by both frontends."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UnavailableError
from .runtime_api import ServingRuntime

__all__ = ["Health"]


class Health:
    """Live: the process and its event loop answer. Ready: not shutting down, and every required
    model has a READY default version; with none named, the Runtime's readiness (Note [Server
    readiness] in modelserve/runtime.py: false while the models load at start, and while one
    loaded at start is not READY; models loaded later do not count).

    Shutdown (Server.shutdown): ``draining`` makes ready() False at once; ``accepting`` turns
    False after the grace period, and from then on new inference requests are refused with
    UNAVAILABLE (check_accepting) while those already admitted finish.
    """

    def __init__(self, runtime: ServingRuntime, required_models: Iterable[str] = ()) -> None:
        self.runtime = runtime
        self.required_models = list(required_models)
        self.draining = False
        self.accepting = True

    def live(self) -> bool:
        return self.runtime.live()

    def ready(self) -> bool:
        if self.draining or not self.runtime.live():
            return False
        if not self.required_models:
            return self.runtime.ready()
        return all(self.runtime.model_ready(name) for name in self.required_models)

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        return not self.draining and self.runtime.model_ready(name, version)

    def check_accepting(self) -> None:
        if not self.accepting:
            raise UnavailableError("the server is shutting down and takes no new requests")
