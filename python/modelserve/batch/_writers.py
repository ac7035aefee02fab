"""Writers: completed chunks appended to files in the job's work folder, then the final file.

A writer appends each chunk to its data files in the work folder (``OUTPUT.partial/``) and, on
``sync()``, flushes and fsyncs them and returns their sizes; the job journals those sizes after
every chunk. Resuming opens the files again truncated to the journalled sizes, which drops
whatever a crash left half-written. ``finalize(target)`` turns the data files into the output
file: in place for npy (the header is rewritten with the row count), CSV and JSON Lines (the data
file is the output), by one streaming copy for npz (a zip of the per-column arrays) and Parquet
(one row group per chunk part).

Layout of the outputs (the inverse of how inputs are read, so an output can feed another job):

- npy: the one output, ``[rows, *shape]``; npz: one array per ID column and per output.
- CSV: the ID columns, then per output one column ``NAME`` when it has one element per row, else
  ``NAME_0 .. NAME_k`` (the tensor flattened row-major).
- JSON Lines: ``{"id": ..., "OUTPUT0": [...]}``, tensors as nested lists, one-element tensors as
  plain values.
- Parquet: ID columns, then per output a scalar column (one element) or fixed-size lists nested
  like the shape.

Failed rows keep their place: null in CSV (empty cells), JSON Lines and Parquet; in npy/npz NaN
for floating-point outputs and 0 (False, b"") otherwise. The errors file says which rows failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._schema import IdColumn

__all__ = ["OutputField", "DoneChunk", "Writer", "make_writer", "Appender", "fill_value"]

HEADER_BYTES = 256  # room reserved for an .npy header, rewritten with the real shape at the end


@dataclass
class OutputField:
    """A model output as written. ``shape`` excludes the batch dimension; a variable dimension
    is fixed by the job's first result."""

    name: str
    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def scalar(self) -> bool:
        return len(self.shape) <= 1 and math.prod(self.shape) == 1

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass
class DoneChunk:
    """A chunk whose every row has an output or a failure: ``outputs`` are ``[n, *shape]`` with
    failed rows filled (:func:`fill_value`), ``ok`` marks the rows that succeeded."""

    index: int
    start: int
    n: int
    ids: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    ok: np.ndarray
    failures: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, int] = field(default_factory=dict)


def fill_value(dtype: np.dtype) -> Any:
    return np.nan if dtype.kind in "fc" else b"" if dtype.kind == "O" else 0


class Appender:
    """A file appended to and truncated back to a journalled size."""

    def __init__(self, path: Path, size: int | None) -> None:
        self.path = path
        if size is None:
            self.f = open(path, "w+b")
        else:
            self.f = open(path, "r+b")
            self.f.truncate(size)
            self.f.seek(size)

    def write(self, data: Any) -> None:
        self.f.write(data)

    def sync(self) -> int:
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


class _NpyAppender(Appender):
    """An .npy file growing by rows: a placeholder header, written for real by ``finish``."""

    def __init__(self, path: Path, size: int | None, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        super().__init__(path, size)
        self.dtype = dtype
        self.shape = shape
        self.row_bytes = math.prod(shape) * dtype.itemsize
        if size is None:
            self.f.write(b"\0" * HEADER_BYTES)

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        if a.size:
            self.f.write(memoryview(a.reshape(-1).view(np.uint8)))

    def finish(self) -> None:
        self.f.flush()
        size = self.f.seek(0, os.SEEK_END)
        rows = (size - HEADER_BYTES) // self.row_bytes if self.row_bytes else 0
        self.f.seek(0)
        self.f.write(npy_header(self.dtype, (rows, *self.shape)))
        self.f.flush()


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """An .npy 1.0 header of exactly HEADER_BYTES bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    body = HEADER_BYTES - 10
    if len(text) + 1 > body:
        raise InvalidArgumentError(f"shape {shape} is too long for an .npy header")
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + (text.ljust(body - 1) + "\n").encode("latin1")


class Writer:
    """Appends chunks to ``files`` in ``work``; see the module docstring."""

    format = ""

    def __init__(self, work: Path, ids: list[IdColumn], outputs: list[OutputField]) -> None:
        self.work = work
        self.ids = ids
        self.outputs = outputs

    def open(self, sizes: dict[str, int] | None) -> None:
        raise NotImplementedError

    def write(self, chunk: DoneChunk) -> None:
        raise NotImplementedError

    def sync(self) -> dict[str, int]:
        raise NotImplementedError

    def finalize(self, target: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def make_writer(fmt: str, work: Path, ids: list[IdColumn], outputs: list[OutputField]) -> Writer:
    cls = {"npy": NpyWriter, "npz": NpzWriter, "csv": CsvWriter, "jsonl": JsonlWriter,
           "parquet": ParquetWriter}[fmt]
    return cls(work, ids, outputs)


def check_output_format(fmt: str, path: Path, ids: list[str], outputs: list[tuple[str, str]]) -> None:
    """Refuse, before any work, outputs the format cannot hold."""
    if fmt == "npy":
        if len(outputs) != 1 or ids:
            what = f"{len(outputs)} outputs ({', '.join(n for n, _ in outputs)})" if len(outputs) != 1 else "ID columns"
            raise InvalidArgumentError(f"{path}: an .npy file holds one array, and this job writes {what}; write "
                                       "an .npz (one array per output and ID column) or pick one output")
    if fmt in ("npy", "npz"):
        for name, datatype in outputs:
            if datatype == "BYTES":
                raise InvalidArgumentError(f"{path}: output '{name}' is BYTES, which .npy/.npz files can only hold "
                                           "as pickled objects; write CSV, JSON Lines or Parquet")


# --- npy and npz --------------------------------------------------------------------------------

class NpyWriter(Writer):
    format = "npy"

    def open(self, sizes):
        o = self.outputs[0]
        self.file = _NpyAppender(self.work / "data.npy", (sizes or {}).get("data.npy"), o.dtype, o.shape)

    def write(self, chunk):
        self.file.append(chunk.outputs[self.outputs[0].name])

    def sync(self):
        return {"data.npy": self.file.sync()}

    def finalize(self, target):
        self.file.finish()
        self.file.close()
        os.replace(self.file.path, target)

    def close(self):
        self.file.close()


class NpzWriter(Writer):
    """One growing .npy per column (text IDs as JSON lines, fixed-width at the end), zipped
    (stored, zip64) by ``finalize``."""

    format = "npz"

    def open(self, sizes):
        sizes = sizes or {}
        self.files: dict[str, Appender] = {}
        for c in self.ids:
            if c.kind == "text":
                name = f"{c.name}.txt"
                self.files[c.name] = Appender(self.work / name, sizes.get(name))
            else:
                name = f"{c.name}.npy"
                self.files[c.name] = _NpyAppender(self.work / name, sizes.get(name), IdColumn.DTYPES[c.kind], ())
        for o in self.outputs:
            self.files[o.name] = _NpyAppender(self.work / f"{o.name}.npy", sizes.get(f"{o.name}.npy"), o.dtype, o.shape)

    def write(self, chunk):
        for c in self.ids:
            values = chunk.ids[c.name]
            if c.kind == "text":
                self.files[c.name].write("".join(json.dumps(v or "") + "\n" for v in values.tolist()).encode())
            else:
                self.files[c.name].append(values)
        for o in self.outputs:
            self.files[o.name].append(chunk.outputs[o.name])

    def sync(self):
        return {f.path.name: f.sync() for f in self.files.values()}

    def finalize(self, target):
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, f in self.files.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                    if isinstance(f, _NpyAppender):
                        f.finish()
                        f.f.seek(0)
                        while block := f.f.read(1 << 20):
                            member.write(block)
                    else:
                        _text_ids_as_npy(f, member)
        self.close()

    def close(self):
        for f in getattr(self, "files", {}).values():
            f.close()


def _text_ids_as_npy(f: Appender, member: Any) -> None:
    """Text IDs kept as JSON lines, written as a fixed-width unicode array (two passes)."""
    f.f.flush()
    f.f.seek(0)
    rows, width = 0, 1
    for line in f.f:
        rows += 1
        width = max(width, len(json.loads(line)))
    dtype = np.dtype(f"<U{width}")
    member.write(npy_header(dtype, (rows,)))
    f.f.seek(0)
    block: list[str] = []
    for line in f.f:
        block.append(json.loads(line))
        if len(block) == 65536:
            member.write(np.array(block, dtype).tobytes())
            block = []
    if block:
        member.write(np.array(block, dtype).tobytes())


# --- text ---------------------------------------------------------------------------------------

def _strings(a: np.ndarray, json_text: bool) -> np.ndarray:
    """Elements as text: shortest round-trip floats, integers, true/false; JSON tokens for
    non-finite floats and strings when ``json_text``."""
    if a.dtype.kind == "f":
        s = a.astype(str)
        if json_text and not np.isfinite(a).all():
            s = np.where(np.isnan(a), "NaN", np.where(np.isinf(a), np.where(a > 0, "Infinity", "-Infinity"), s))
        return s
    if a.dtype.kind == "b":
        return np.where(a, "true", "false")
    if a.dtype.kind == "O":
        text = [x.decode("utf-8", "replace") if isinstance(x, bytes) else "" if x is None else str(x)
                for x in a.reshape(-1).tolist()]
        if json_text:
            text = [json.dumps(t) for t in text]
        return np.array(text, dtype=object).reshape(a.shape)
    return a.astype(str)


def _nest(x: Any) -> str:
    return "[" + ",".join(_nest(y) if isinstance(y, list) else y for y in x) + "]"


class CsvWriter(Writer):
    format = "csv"

    def open(self, sizes):
        self.file = Appender(self.work / "data.csv", (sizes or {}).get("data.csv"))

    def _header(self) -> list[str]:
        names = [c.name for c in self.ids]
        for o in self.outputs:
            names += [o.name] if o.scalar else [f"{o.name}_{i}" for i in range(o.count)]
        return names

    def write(self, chunk):
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        if self.file.f.tell() == 0:
            out.writerow(self._header())
        columns = []
        for c in self.ids:
            values = chunk.ids[c.name]
            columns.append(_strings(values, False).reshape(chunk.n, 1) if c.kind != "text"
                           else np.array([v or "" for v in values.tolist()], dtype=object).reshape(chunk.n, 1))
        for o in self.outputs:
            cells = _strings(chunk.outputs[o.name].reshape(chunk.n, -1), False).astype(object)
            cells[~chunk.ok] = ""
            columns.append(cells)
        if chunk.n:
            out.writerows(np.concatenate(columns, axis=1).tolist() if columns else [[]] * chunk.n)
        self.file.write(buffer.getvalue().encode("utf-8"))

    def sync(self):
        return {"data.csv": self.file.sync()}

    def finalize(self, target):
        if self.file.f.tell() == 0:
            self.file.write(",".join(self._header()).encode("utf-8") + b"\n")
        self.file.close()
        os.replace(self.file.path, target)

    def close(self):
        self.file.close()


class JsonlWriter(Writer):
    format = "jsonl"

    def open(self, sizes):
        self.file = Appender(self.work / "data.jsonl", (sizes or {}).get("data.jsonl"))

    def write(self, chunk):
        fields: list[tuple[str, list[str]]] = []
        for c in self.ids:
            values = chunk.ids[c.name]
            if c.kind == "text":
                fields.append((c.name, [json.dumps(v) for v in values.tolist()]))
            else:
                fields.append((c.name, _strings(values, True).tolist()))
        for o in self.outputs:
            text = _strings(chunk.outputs[o.name], True)
            if o.scalar:
                rows = text.reshape(chunk.n).tolist()
            elif len(o.shape) == 1:
                rows = ["[" + ",".join(r) + "]" for r in text.tolist()]
            else:
                rows = [_nest(r) for r in text.tolist()]
            if not chunk.ok.all():
                rows = [r if ok else "null" for r, ok in zip(rows, chunk.ok.tolist())]
            fields.append((o.name, rows))
        keys = [json.dumps(name) + ": " for name, _ in fields]
        lines = ["{" + ", ".join(k + v for k, v in zip(keys, row)) + "}\n" for row in zip(*(v for _, v in fields))]
        self.file.write("".join(lines).encode("utf-8"))

    def sync(self):
        return {"data.jsonl": self.file.sync()}

    def finalize(self, target):
        self.file.close()
        os.replace(self.file.path, target)

    def close(self):
        self.file.close()


# --- Parquet ------------------------------------------------------------------------------------

class ParquetWriter(Writer):
    """One Parquet file per chunk (``part-NNNNNN.parquet``), concatenated by ``finalize`` (one
    row group per chunk)."""

    format = "parquet"

    def open(self, sizes):
        from ._readers import pyarrow_parquet

        self.pq = pyarrow_parquet(self.work)
        self.parts = (sizes or {}).get("parts", 0)
        for stale in self.work.glob("part-*.parquet"):
            if int(stale.stem[5:]) >= self.parts:
                stale.unlink()

    def _table(self, chunk: DoneChunk) -> Any:
        import pyarrow as pa

        arrays, names = [], []
        types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "text": pa.string()}
        for c in self.ids:
            arrays.append(pa.array(chunk.ids[c.name], type=types[c.kind]))
            names.append(c.name)
        mask = ~chunk.ok
        for o in self.outputs:
            a = chunk.outputs[o.name]
            flat = a.reshape(-1)
            leaf = pa.array(flat.tolist(), type=pa.binary()) if o.dtype.kind == "O" else pa.array(flat)
            if o.scalar:
                arrays.append(pa.array(a.reshape(-1).tolist(), type=pa.binary(), mask=mask) if o.dtype.kind == "O"
                              else pa.array(a.reshape(-1), mask=mask))
            else:
                for i, d in enumerate(reversed(o.shape)):
                    last = i == len(o.shape) - 1
                    leaf = pa.FixedSizeListArray.from_arrays(leaf, d, mask=pa.array(mask) if last else None)
                arrays.append(leaf)
            names.append(o.name)
        return pa.Table.from_arrays(arrays, names=names)

    def write(self, chunk):
        path = self.work / f"part-{self.parts:06d}.parquet"
        self.pq.write_table(self._table(chunk), path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self.parts += 1

    def sync(self):
        return {"parts": self.parts}

    def finalize(self, target):
        empty = DoneChunk(0, 0, 0, {c.name: np.empty(0, IdColumn.DTYPES[c.kind]) for c in self.ids},
                          {o.name: np.empty((0, *o.shape), o.dtype) for o in self.outputs}, np.empty(0, bool))
        schema = self._table(empty).schema
        with self.pq.ParquetWriter(target, schema) as out:
            for i in range(self.parts):
                out.write_table(self.pq.read_table(self.work / f"part-{i:06d}.parquet", schema=schema))
            if not self.parts:
                out.write_table(self._table(empty))
