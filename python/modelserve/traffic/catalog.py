"""The seam between traffic management and whatever serves the models.

:class:`TrafficManager` never imports the Runtime or the repository: it asks a :class:`Catalog`
which versions and labels a model has, whether one is READY, what its signature is, to move a
label (promotion), and to run an inference (shadows). :class:`RepositoryCatalog` is the
in-process implementation over a ``ModelRepository``; a distributed deployment (Ray Serve)
implements the same few methods over its own handles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Catalog", "Signature", "RepositoryCatalog"]

Version = int | str | None


class Signature(NamedTuple):
    """A model version's inputs and outputs as (name, datatype, shape) without the batch
    dimension, and whether it batches: two targets of one endpoint must have equal signatures."""

    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    batched: bool

    def describe(self) -> str:
        def fmt(items: Iterable[tuple[str, str, tuple[int, ...]]]) -> str:
            return ", ".join(f"{n} {dt}{list(s)}" for n, dt, s in items)

        return f"inputs [{fmt(self.inputs)}], outputs [{fmt(self.outputs)}]{' batched' if self.batched else ''}"


@runtime_checkable
class Catalog(Protocol):
    """What the traffic manager needs from the model layer. Errors are modelserve errors:
    NotFoundError for an unknown model, version or label, UnavailableError for one not READY."""

    def resolve(self, model: str, version: Version) -> int:
        """The version number ``version`` (number, label, None = default) names now."""

    def state(self, model: str, version: int) -> str:
        """The version's state (``READY``, ``LOADING``, ...); NotFoundError if it has none."""

    def signature(self, model: str, version: int) -> Signature:
        """The version's inputs and outputs."""

    def labels(self, model: str) -> dict[str, int]:
        """The model's labels now."""

    def set_label(self, model: str, label: str, version: int) -> None:
        """Points ``label`` at a READY ``version`` at once (promotion)."""

    async def infer(self, model: str, version: Version, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Runs one request on (model, version) from the running event loop; numpy outputs."""

    # Optional (TrafficManager.rollback answers UNIMPLEMENTED without it):
    # def rollback(self, model: str, version: int | None, label: str | None) -> int:
    #     """Re-points the default (or ``label``) at ``version``, or at the newest READY version
    #     older than the current target; returns the version now targeted."""


class RepositoryCatalog:
    """:class:`Catalog` over an in-process ``ModelRepository``."""

    def __init__(self, repository: Any) -> None:
        self.repository = repository

    def resolve(self, model: str, version: Version) -> int:
        return self.repository.get(model).resolve(version)

    def state(self, model: str, version: int) -> str:
        return self.repository.get(model).lookup(version).state.value

    def signature(self, model: str, version: int) -> Signature:
        mv = self.repository.get(model).lookup(version)
        return Signature(
            tuple((t.name, t.datatype, tuple(t.shape)) for t in mv.inputs),
            tuple((t.name, t.datatype, tuple(t.shape)) for t in mv.outputs),
            mv.config.max_batch_size > 0,
        )

    def labels(self, model: str) -> dict[str, int]:
        return dict(self.repository.get(model).labels)

    def set_label(self, model: str, label: str, version: int) -> None:
        self.repository.get(model).set_label(label, version)

    def rollback(self, model: str, version: int | None, label: str | None) -> int:
        return self.repository.get(model).rollback(version, label)

    async def infer(self, model: str, version: Version, inputs: Mapping[str, Any]) -> dict[str, Any]:
        with self.repository.get(model).route(version) as mv:
            request = mv.engine.submit_async(inputs)
        return await request.outputs(as_numpy=True)
