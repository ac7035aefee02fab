"""What perf learns about a model from the server, and the request shapes it derives from that.

Nothing here is specific to modelserve: the facts come from the protocol's model metadata
(input names, datatypes, shapes with -1 for variable dims) and, when the server implements the
model configuration extension, from the config's ``max_batch_size``.

Note [Which dim is the batch dim]
A model that batches (``max_batch_size > 0``) reports a leading -1 in its metadata shapes that
is not part of its config dims (spec §5, "Batching"); the request's first dim is then the batch
size, ``--batch-size`` rows. When the server answers the config, its ``max_batch_size`` decides.
When it does not (the config is a Triton extension), a model whose every input shape starts
with -1 is taken to batch, and that -1 is the batch dim; any other model does not batch. A
``--shape`` override therefore never includes the batch dim of a batching model, as in Triton's
perf_analyzer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorMetadata", "ModelInfo", "RequestLayout", "resolve_layout", "require_fixed", "SetupError"]


class SetupError(RuntimeError):
    """perf cannot start: the server, the model or the options do not allow a run."""


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """The model as the server describes it. ``max_batch_size`` is None when the server does
    not answer the model configuration request."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    max_batch_size: int | None


@dataclass(frozen=True)
class RequestLayout:
    """The shape of each input in a request: batch dim included when ``batching``; -1 is left
    where neither the metadata nor ``--shape`` fixes a dim (input data files may fill it)."""

    inputs: tuple[TensorMetadata, ...]
    batching: bool
    batch_size: int
    batch_source: str  # how ``batching`` was decided, for the report

    def variable(self) -> list[TensorMetadata]:
        return [t for t in self.inputs if -1 in t.shape]


def resolve_layout(model: ModelInfo, shapes: dict[str, list[int]], batch_size: int) -> RequestLayout:
    """Derive request shapes (see Note [Which dim is the batch dim]). Raises ``SetupError``."""
    if not model.inputs:
        raise SetupError(f"model {model.name!r} reports no inputs in its metadata")
    if model.max_batch_size is not None:
        batching = model.max_batch_size > 0
        source = f"max_batch_size {model.max_batch_size} in the model config"
    else:
        batching = all(t.shape and t.shape[0] == -1 for t in model.inputs)
        source = ("no model config; every input shape starts with -1" if batching else
                  "no model config; not every input shape starts with -1")
    if not batching and batch_size != 1:
        raise SetupError(f"model {model.name!r} does not batch ({source}); "
                         f"--batch-size must be 1, got {batch_size}")
    if model.max_batch_size and batch_size > model.max_batch_size:
        raise SetupError(f"--batch-size {batch_size} exceeds the max_batch_size "
                         f"{model.max_batch_size} of model {model.name!r}")
    names = [t.name for t in model.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise SetupError(f"--shape names {', '.join(map(repr, unknown))}, not an input of model "
                         f"{model.name!r}; its inputs are {', '.join(map(repr, names))}")
    inputs = []
    for t in model.inputs:
        row = list(t.shape)
        if batching and row and row[0] == -1:
            row = row[1:]  # else the server reported shapes without the batch dim
        if t.name in shapes:
            given = shapes[t.name]
            what = "batch dim excluded, " if batching else ""
            if len(given) != len(row):
                raise SetupError(f"--shape {t.name}:{_dims(given)} has {len(given)} dims; input "
                                 f"{t.name!r} of model {model.name!r} has {len(row)} "
                                 f"({what}shape [{_dims(row)}])")
            for i, (g, r) in enumerate(zip(given, row)):
                if r != -1 and g != r:
                    raise SetupError(f"--shape {t.name}:{_dims(given)}: dim {i} of input "
                                     f"{t.name!r} is fixed at {r} ({what}shape [{_dims(row)}])")
            row = list(given)
        shape = ([batch_size] if batching else []) + row
        inputs.append(TensorMetadata(t.name, t.datatype, tuple(shape)))
    return RequestLayout(tuple(inputs), batching, batch_size, source)


def require_fixed(layout: RequestLayout, model: str) -> None:
    """Generated data needs every dim fixed; name each input that is not, and the fix."""
    missing = layout.variable()
    if missing:
        hints = " ".join(f"--shape {t.name}:{_dims(_example(t, layout))}" for t in missing)
        lines = "; ".join(f"{t.name!r} {t.datatype} [{_dims(_row(t, layout))}]" for t in missing)
        batch = " (batch dim excluded)" if layout.batching else ""
        raise SetupError(f"model {model!r} has inputs with variable (-1) dims{batch}: {lines}; "
                         f"give their shapes, e.g. {hints}, or an --input-data file")


def _row(t: TensorMetadata, layout: RequestLayout) -> tuple[int, ...]:
    return t.shape[1:] if layout.batching else t.shape


def _example(t: TensorMetadata, layout: RequestLayout) -> list[int]:
    return [16 if d == -1 else d for d in _row(t, layout)]


def _dims(dims) -> str:
    return ",".join(str(d) for d in dims)
