"""The backend interface: how a model version's files become something that runs batches.

A backend class is registered by name (``python``, ``onnx``, ``torch``). Every instance of a
model version gets its own backend object: ``cls(context)``, then ``load()``, then ``execute()``
on batches from that instance's thread, then ``unload()``. ``execute`` takes and returns
``dict[str, numpy.ndarray]``; with ``max_batch_size > 0`` the first dimension is the batch.

Backend modules import their framework (onnxruntime, torch) inside ``load`` or ``signature``,
never at import time, so the base install stays light; a missing framework raises
:class:`MissingExtraError`, which names the ``pip install`` that fixes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InvalidArgumentError, UnavailableError

if TYPE_CHECKING:
    from ..config import ModelConfig, TensorConfig

__all__ = [
    "Backend",
    "BackendContext",
    "MissingExtraError",
    "register",
    "registered",
    "get",
    "infer_backend",
]


class MissingExtraError(UnavailableError):
    """A backend's framework is not installed."""

    def __init__(self, backend: str, module: str, extra: str) -> None:
        super().__init__(
            f"backend '{backend}' needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'modelserve[{extra}]'"
        )


@dataclass
class BackendContext:
    """What a backend instance is given. ``device`` is ``"cpu"`` or ``"cuda:N"``."""

    model: str
    version: int
    version_dir: Path
    config: "ModelConfig"
    device: str = "cpu"
    instance: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.config.parameters

    @property
    def label(self) -> str:
        return f"model '{self.model}' version {self.version}"


class Backend(ABC):
    """One instance's model. Subclasses set ``name`` and ``model_file``."""

    name: ClassVar[str]
    model_file: ClassVar[str]  # the file in the version folder that selects this backend
    generative: ClassVar[bool] = False  # served by a GenerationEngine (backends/gpt2.py), not execute()

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    def load(self) -> None:
        """Reads the model; raise to fail the load (the message reaches the operator)."""

    @abstractmethod
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one batch."""

    def unload(self) -> None:
        """Releases what load() took."""

    @classmethod
    def signature(
        cls, version_dir: Path, config: "ModelConfig"
    ) -> tuple[list["TensorConfig"], list["TensorConfig"]] | None:
        """The model's own inputs and outputs (shapes without the batch dimension when
        ``config.max_batch_size > 0``), or None when the format does not record them."""
        return None


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Registers a backend class under ``cls.name`` (usable as a decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Backend]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown backend '{name}'; registered: {', '.join(registered())}") from None


def infer_backend(version_dir: Path) -> str:
    """The backend whose model file is in ``version_dir``; raises when there is none or several."""
    found = [name for name, cls in sorted(_REGISTRY.items()) if (version_dir / cls.model_file).exists()]
    if len(found) == 1:
        return found[0]
    files = ", ".join(_REGISTRY[n].model_file for n in registered())
    if not found:
        raise InvalidArgumentError(
            f"{version_dir}: no model file; expected one of {files} (or set 'backend' in config.yaml)"
        )
    raise InvalidArgumentError(
        f"{version_dir}: model files for several backends ({', '.join(found)}); set 'backend' in config.yaml"
    )
