"""The tensors perf sends: generated (random or zero) or read from a .npz or .json file.

A source gives one or more payloads (``{input name: array}``); requests cycle through them.

- ``random``: one payload from ``numpy.random.default_rng(seed)``: floats uniform in [0, 1),
  integers in [0, 64) (small, so that index-like inputs stay in range), BOOL a fair coin,
  BYTES ``--string-length`` random lowercase ASCII letters per element.
- ``zero``: one payload of zeros (BYTES: ``--string-length`` b"0" characters per element).
- ``PATH.npz``: one payload, an array per input, stored under the input's name.
- ``PATH.json``: ``{"data": [ENTRY, ...]}`` (or a list of entries, or one entry), each entry
  ``{NAME: VALUES}`` where VALUES is a (nested) list, or ``{"content": [...], "shape": [...]}``
  as in Triton perf_analyzer's input files. Each entry is one payload.

An array from a file may hold the whole request (batch dim included) or, for a batching model,
one row, which is repeated ``--batch-size`` times; a flat list is reshaped when the request
shape is fixed. Its values are converted to the input's datatype when numpy can do that
without changing their kind (float64 data for an FP32 input is fine; floats for an INT32 input
are an error). Files may fill dims the metadata leaves variable (-1).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ._model import RequestLayout, SetupError, TensorMetadata, require_fixed

__all__ = ["make_payloads", "numpy_dtype"]

_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
          "BYTES": np.object_}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype tritonclient expects for a protocol datatype."""
    if datatype == "BF16":
        # tritonclient takes BF16 as ml_dtypes.bfloat16 (it depends on ml_dtypes itself).
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    if datatype not in _NUMPY:
        raise SetupError(f"datatype {datatype!r} is not an Open Inference Protocol datatype")
    return np.dtype(_NUMPY[datatype])


def make_payloads(layout: RequestLayout, source: str, *, model: str, seed: int = 0,
                  string_length: int = 16) -> list[dict[str, np.ndarray]]:
    if source in ("random", "zero"):
        require_fixed(layout, model)
        rng = np.random.default_rng(seed)
        return [{t.name: _generate(t, source, rng, string_length) for t in layout.inputs}]
    if not os.path.isfile(source):
        raise SetupError(f"--input-data {source!r}: no such file (expected random, zero, "
                         "or a .npz or .json file)")
    if source.endswith(".npz"):
        with np.load(source, allow_pickle=False) as f:
            entries = [{k: f[k] for k in f.files}]
    elif source.endswith(".json"):
        entries = _json_entries(source)
    else:
        raise SetupError(f"--input-data {source!r}: expected random, zero, or a .npz or .json file")
    payloads = []
    for n, entry in enumerate(entries):
        where = source if len(entries) == 1 else f"{source} entry {n}"
        missing = [t.name for t in layout.inputs if t.name not in entry]
        if missing:
            raise SetupError(f"{where}: no data for input(s) {', '.join(map(repr, missing))} "
                             f"of model {model!r} (it has {', '.join(entry) or 'nothing'})")
        payloads.append({t.name: _fit(t, entry[t.name], layout, where) for t in layout.inputs})
    return payloads


def _generate(t: TensorMetadata, source: str, rng: np.random.Generator, length: int) -> np.ndarray:
    dtype = numpy_dtype(t.datatype)
    shape = t.shape
    if t.datatype == "BYTES":
        count = math.prod(shape)
        if source == "zero":
            return np.full(shape, b"0" * length, dtype=object)
        letters = rng.integers(ord("a"), ord("z") + 1, size=(count, length), dtype=np.uint8)
        return np.array([row.tobytes() for row in letters] or [], dtype=object).reshape(shape)
    if source == "zero":
        return np.zeros(shape, dtype=dtype)
    if t.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 64, size=shape).astype(dtype)
    return rng.random(size=shape, dtype=np.float32).astype(dtype)


def _json_entries(path: str) -> list[dict]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SetupError(f"--input-data {path!r}: cannot read it as JSON: {e}")
    entries = doc["data"] if isinstance(doc, dict) and "data" in doc else doc
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SetupError(f"--input-data {path!r}: expected {{\"data\": [{{NAME: values, ...}}, ...]}}")
    out = []
    for n, entry in enumerate(entries):
        arrays = {}
        for name, value in entry.items():
            shape = None
            if isinstance(value, dict):
                if "content" not in value:
                    raise SetupError(f"{path} entry {n}: input {name!r} is an object without "
                                     "\"content\" (expected {\"content\": [...], \"shape\": [...]})")
                shape, value = value.get("shape"), value["content"]
            try:
                array = np.array(value)
                if shape is not None:
                    array = array.reshape(shape)
            except ValueError as e:
                raise SetupError(f"{path} entry {n}: input {name!r}: {e}")
            arrays[name] = array
        out.append(arrays)
    return out


def _matches(shape: tuple[int, ...], pattern: tuple[int, ...]) -> bool:
    return len(shape) == len(pattern) and all(p in (-1, s) for s, p in zip(shape, pattern))


def _fit(t: TensorMetadata, array: np.ndarray, layout: RequestLayout, where: str) -> np.ndarray:
    array = _convert(t, np.asarray(array), where)
    pattern = t.shape
    row = pattern[1:] if layout.batching else None
    if _matches(array.shape, pattern):
        return array
    if row is not None and _matches(array.shape, row):
        return np.repeat(array[np.newaxis], layout.batch_size, axis=0)
    if array.ndim == 1:
        for target, tile in ((pattern, False), (row, True)):
            if target is not None and -1 not in target and array.size == math.prod(target):
                array = array.reshape(target)
                return np.repeat(array[np.newaxis], layout.batch_size, axis=0) if tile else array
    per_row = f" or one row [{','.join(map(str, row))}]" if row is not None else ""
    raise SetupError(f"{where}: input {t.name!r} has shape {list(array.shape)}; the request "
                     f"needs [{','.join(map(str, pattern))}]{per_row} (-1: any size)")


def _convert(t: TensorMetadata, array: np.ndarray, where: str) -> np.ndarray:
    if t.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise SetupError(f"{where}: input {t.name!r} is BYTES but the data is {array.dtype}")
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        return np.array(flat or [], dtype=object).reshape(array.shape)
    dtype = numpy_dtype(t.datatype)
    if array.dtype == dtype:
        return array
    if t.datatype == "BF16" and array.dtype.kind == "f":
        return array.astype(dtype)
    if t.datatype == "BOOL" and array.dtype.kind in "bi" and np.isin(array, (0, 1)).all():
        return array.astype(bool)
    if array.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise SetupError(f"{where}: input {t.name!r} holds values outside {t.datatype}'s range")
        return array.astype(dtype)
    if not np.can_cast(array.dtype, dtype, casting="same_kind") and not (
            array.dtype.kind in "iu" and dtype.kind == "f"):
        raise SetupError(f"{where}: input {t.name!r} holds {array.dtype} values; model expects "
                         f"{t.datatype}")
    return array.astype(dtype)
