"""The model functions that ``test_server_cpu.py`` serves on both sides, one code for both.

The bare servicer's compute mode (``bare_servicer.py --compute NAME``) calls ``COMPUTES[NAME]``'s
``function`` inline on the decoded request; modelserve's Python backend runs the same function
object as its ``Model.execute`` (``backend_model(NAME)``), on whole batches. A function takes
and returns ``dict[str, numpy.ndarray]`` whose first dimension is the batch.

- ``trivial``: OUTPUT0 = 2 * INPUT0 + 1, FP32 [16] in and out.
- ``mlp``: a 256-512-512-10 perceptron in numpy (ReLU between layers), FP32 [256] -> FP32 [10],
  its weights drawn once at import from a generator seeded with ``WEIGHT_SEED``, so that every
  process that imports this file computes the same outputs.

This file imports numpy alone: modelserve loads it into its server process, the bare servicer
into its own, each from its file path (no package import needed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["COMPUTES", "Compute", "WEIGHT_SEED", "backend_model", "mlp", "trivial"]

WEIGHT_SEED = 13
MLP_LAYERS = (256, 512, 512, 10)

Arrays = dict[str, np.ndarray]


def trivial(inputs: Arrays) -> Arrays:
    return {"OUTPUT0": inputs["INPUT0"] * np.float32(2) + np.float32(1)}


def _layers() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(WEIGHT_SEED)
    return [((rng.standard_normal((n, m), dtype=np.float32) / np.float32(np.sqrt(n))),
             rng.standard_normal(m, dtype=np.float32) * np.float32(0.1))
            for n, m in zip(MLP_LAYERS, MLP_LAYERS[1:])]


(_W1, _B1), (_W2, _B2), (_W3, _B3) = _layers()


def mlp(inputs: Arrays) -> Arrays:
    h = np.maximum(inputs["INPUT0"] @ _W1 + _B1, np.float32(0))
    h = np.maximum(h @ _W2 + _B2, np.float32(0))
    return {"OUTPUT0": h @ _W3 + _B3}


class Compute(NamedTuple):
    """A served function and its tensors: ``(name, datatype, shape without the batch dim)``.
    (A NamedTuple, not a dataclass: loaded from its path, this module is not in sys.modules.)"""

    name: str
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    function: Callable[[Arrays], Arrays]


COMPUTES = {
    "trivial": Compute("trivial", (("INPUT0", "FP32", (16,)),), (("OUTPUT0", "FP32", (16,)),),
                       trivial),
    "mlp": Compute("mlp", (("INPUT0", "FP32", (MLP_LAYERS[0],)),),
                   (("OUTPUT0", "FP32", (MLP_LAYERS[-1],)),), mlp),
}


class _BackendModel:
    """A Python-backend ``Model`` (DESIGN.md) whose ``execute`` is the compute's function itself
    (an instance attribute: the backend calls it with no extra frame, as the servicer does)."""

    compute = ""

    def __init__(self) -> None:
        self.execute: Callable[[Arrays], Arrays] = COMPUTES[self.compute].function


def backend_model(name: str) -> type:
    """The ``Model`` class for a Python-backend ``model.py`` serving ``COMPUTES[name]``."""
    if name not in COMPUTES:
        raise ValueError(f"compute {name!r} is not one of {sorted(COMPUTES)}")
    return type("Model", (_BackendModel,), {"compute": name})
