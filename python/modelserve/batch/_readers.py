"""Readers: a dataset file as a sequence of chunks of rows, resumable at any chunk boundary.

Every reader exposes the file's columns (with what its schema says about them) and
``chunks(needed, chunk_rows, start)``, which yields :class:`RawChunk` s of exactly ``chunk_rows``
rows (the last one shorter) beginning at the position ``start`` that an earlier chunk reported
as its ``end``. Positions are small dicts (``row``; text formats add the byte ``offset`` and the
``line``), so a resumed job seeks straight to its row instead of reading what it already did.

Reading never holds more than one chunk of the needed columns: an .npy chunk maps its rows of the
file (and unmaps them when the chunk is done, so the mapped pages stay bounded too), npz arrays
are streamed out of the zip, Parquet is read by record batches, CSV and JSON Lines line by line.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnavailableError
from ._schema import MISSING, ColumnInfo, InputError

__all__ = ["RawChunk", "Reader", "open_reader", "FORMATS", "format_of"]

#: File name endings and the formats they mean.
FORMATS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".csv": "csv"}


def format_of(path: Path, given: str | None, option: str) -> str:
    if given:
        if given not in set(FORMATS.values()):
            raise InputError(path, f"unknown format {given!r} ({option}); expected one of "
                             f"{sorted(set(FORMATS.values()))}")
        return given
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise InputError(path, f"cannot tell the format from the name's ending {path.suffix!r}: expected "
                         f"{', '.join(FORMATS)}, or give {option}")
    return found


@dataclass
class RawChunk:
    """Rows ``[start, start + n)`` of a file, as read: each needed column as a numpy array (npy,
    npz), a pyarrow array (Parquet), a list of JSON values (JSON Lines) or of text cells (CSV,
    ``text``). ``bad`` are rows the reader itself could not read (not JSON, wrong field count);
    ``lines`` the 1-based line of each row in text formats; ``end`` the position after it."""

    start: int
    n: int
    columns: dict[str, Any]
    end: dict[str, int]
    text: bool = False
    lines: list[int] | None = None
    bad: dict[int, InputError] = field(default_factory=dict)


class Reader:
    format = ""
    total_rows: int | None = None   # None: known only at the end (CSV, JSON Lines)
    total_bytes: int | None = None  # for progress where rows are not known

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: dict[str, ColumnInfo] = {}
        try:
            self.total_bytes = path.stat().st_size
        except OSError as e:
            raise InputError(path, f"cannot read the file: {e.strerror}") from None

    def prepare(self, needed: list[str]) -> None:
        """Called once the needed columns are known (npz checks their lengths agree)."""

    def chunks(self, needed: list[str], chunk_rows: int, start: dict[str, int]) -> Iterator[RawChunk]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_reader(path: Path, fmt: str, *, array_name: str) -> Reader:
    """A reader for ``path``; ``array_name`` names the one array of an .npy file."""
    if not path.exists():
        raise InputError(path, "cannot read the file: no such file")
    if path.is_dir():
        raise InputError(path, "cannot read the file: it is a folder")
    cls = {"npy": NpyReader, "npz": NpzReader, "parquet": ParquetReader, "jsonl": JsonlReader,
           "csv": CsvReader}[fmt]
    return cls(path, array_name) if cls is NpyReader else cls(path)


# --- npy and npz ----------------------------------------------------------------------------------

@dataclass
class _Array:
    """An array's header: where its data starts, its shape and dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _read_header(f: Any, where: str) -> _Array:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = fmt._read_array_header(f, version)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(where, f"not a .npy array: {e}") from None
    if dtype.hasobject:
        raise InputError(where, "holds Python objects (saved with pickling), which cannot be read in chunks; "
                         "store text as fixed-width strings (numpy dtype 'S' or 'U')")
    if not shape:
        raise InputError(where, "is a 0-d array; batch input arrays have rows first ([rows, ...])")
    if fortran and len(shape) > 1:
        raise InputError(where, "is Fortran-ordered, which cannot be read row by row; save it with "
                         "numpy.ascontiguousarray(...)")
    return _Array(f.tell(), tuple(shape), dtype)


def _read_rows(f: Any, array: _Array, n: int, where: str) -> np.ndarray:
    out = np.empty((n, *array.shape[1:]), array.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
    got = 0
    while got < len(view):
        count = f.readinto(view[got:])
        if not count:
            raise InputError(where, f"truncated: the header says {array.shape[0]} rows of {array.row_bytes} bytes, "
                             "the data ends early")
        got += count
    return out


class NpyReader(Reader):
    """One array ``[rows, ...]``, read as the column ``array_name`` (the model's one input)."""

    format = "npy"

    def __init__(self, path: Path, array_name: str) -> None:
        super().__init__(path)
        try:
            with open(path, "rb") as f:
                self.array = _read_header(f, str(path))
        except OSError as e:
            raise InputError(path, f"cannot read the file: {e.strerror}") from None
        data = (self.total_bytes or 0) - self.array.offset
        if data < self.array.shape[0] * self.array.row_bytes:
            raise InputError(path, f"truncated: the header says {self.array.shape[0]} rows of "
                             f"{self.array.row_bytes} bytes, the file holds {data} bytes of data")
        self.name = array_name
        self.total_rows = self.array.shape[0]
        self.columns = {array_name: ColumnInfo(self.array.dtype, self.array.shape[1:])}

    def chunks(self, needed, chunk_rows, start):
        # Each chunk maps its own rows of the file (no copy: the model reads the page cache), and
        # the mapping goes away with the chunk's last reference, so the pages mapped stay bounded.
        a = self.array
        row = start.get("row", 0)
        while row < a.shape[0]:
            n = min(chunk_rows, a.shape[0] - row)
            if n * a.row_bytes:
                mapped = np.memmap(self.path, a.dtype, "r", a.offset + row * a.row_bytes, (n, *a.shape[1:]))
                values = mapped.view(np.ndarray)  # slicing a plain array costs less than a memmap's
            else:
                values = np.empty((n, *a.shape[1:]), a.dtype)
            yield RawChunk(row, n, {self.name: values}, {"row": row + n})
            row += n


class NpzReader(Reader):
    """A zip of arrays (``numpy.savez``): each array is a column, read as a stream."""

    format = "npz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.arrays: dict[str, _Array] = {}
        try:
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    if member.endswith(".npy"):
                        with z.open(member) as f:
                            self.arrays[member[:-4]] = _read_header(f, f"{path}[{member}]")
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(path, f"not an .npz file (a zip of .npy arrays): {e}") from None
        self.columns = {name: ColumnInfo(a.dtype, a.shape[1:]) for name, a in self.arrays.items()}

    def prepare(self, needed):
        lengths = {name: self.arrays[name].shape[0] for name in needed}
        if len(set(lengths.values())) > 1:
            first = needed[0]
            other = next(n for n in needed if lengths[n] != lengths[first])
            raise InputError(self.path, f"arrays of different lengths: '{first}' has {lengths[first]} rows, "
                             f"'{other}' has {lengths[other]}; every array read is one column of the same rows",
                             column=other)
        self.total_rows = lengths[needed[0]] if needed else 0

    def chunks(self, needed, chunk_rows, start):
        row = start.get("row", 0)
        total = self.total_rows or 0
        with zipfile.ZipFile(self.path) as z:
            streams = {}
            try:
                for name in needed:
                    s = streams[name] = z.open(name + ".npy")
                    s.seek(self.arrays[name].offset + row * self.arrays[name].row_bytes)
                while row < total:
                    n = min(chunk_rows, total - row)
                    columns = {name: _read_rows(streams[name], self.arrays[name], n, f"{self.path}[{name}.npy]")
                               for name in needed}
                    yield RawChunk(row, n, columns, {"row": row + n})
                    row += n
            finally:
                for s in streams.values():
                    s.close()


# --- Parquet ------------------------------------------------------------------------------------

def pyarrow_parquet(path: Path) -> Any:
    """``pyarrow.parquet``, or an error naming the file and the extra that installs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UnavailableError(f"{path}: Parquet needs the 'pyarrow' package, which is not installed; install "
                               "it with: pip install 'modelserve[batch]'") from None
    return pq


def _arrow_info(t: Any) -> ColumnInfo:
    import pyarrow as pa

    shape: list[int] | None = []
    leaf = t
    while pa.types.is_list(leaf) or pa.types.is_large_list(leaf) or pa.types.is_fixed_size_list(leaf):
        if shape is not None and pa.types.is_fixed_size_list(leaf):
            shape.append(leaf.list_size)
        else:
            shape = None
        leaf = leaf.value_type
    if pa.types.is_boolean(leaf) or pa.types.is_integer(leaf) or pa.types.is_floating(leaf):
        dtype = np.dtype(leaf.to_pandas_dtype())
    else:
        dtype = np.dtype(object)
    return ColumnInfo(dtype, tuple(shape) if shape is not None else None, found=str(t))


class ParquetReader(Reader):
    format = "parquet"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        pq = pyarrow_parquet(path)
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's ArrowInvalid and friends
            raise InputError(path, f"not a Parquet file: {e}") from None
        self.total_rows = self.file.metadata.num_rows
        self.columns = {f.name: _arrow_info(f.type) for f in self.file.schema_arrow}

    def chunks(self, needed, chunk_rows, start):
        import pyarrow as pa

        row = start.get("row", 0)
        meta = self.file.metadata
        group, first = 0, 0
        while group < meta.num_row_groups and first + meta.row_group(group).num_rows <= row:
            first += meta.row_group(group).num_rows
            group += 1
        skip = row - first
        pending: list[Any] = []
        held = 0
        batches = self.file.iter_batches(batch_size=chunk_rows, row_groups=list(range(group, meta.num_row_groups)),
                                         columns=needed, use_threads=False) if group < meta.num_row_groups else []
        for batch in batches:
            if skip:
                cut = min(skip, batch.num_rows)
                batch, skip = batch.slice(cut), skip - cut
            if batch.num_rows:
                pending.append(batch)
                held += batch.num_rows
            while held >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield self._chunk(table.slice(0, chunk_rows), needed, row)
                row += chunk_rows
                rest = table.slice(chunk_rows)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield self._chunk(pa.Table.from_batches(pending), needed, row)

    def _chunk(self, table: Any, needed: list[str], row: int) -> RawChunk:
        n = table.num_rows
        return RawChunk(row, n, {name: table.column(name).combine_chunks() for name in needed}, {"row": row + n})


# --- text: JSON Lines and CSV ----------------------------------------------------------------------

class _Lines:
    """Lines of a binary file as text, counting the bytes and lines handed out, so that the
    position after any record is known exactly (csv.reader pulls lines one at a time)."""

    def __init__(self, f: Any, path: Path, offset: int, line: int, encoding: str = "utf-8") -> None:
        self.f = f
        self.path = path
        self.offset = offset
        self.line = line
        self.encoding = encoding

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise InputError(self.path, f"not UTF-8 text ({e.reason} at byte {e.start} of the line)",
                             line=self.line) from None


class JsonlReader(Reader):
    """One JSON object per line; the columns are the keys of the first row; blank lines are
    skipped."""

    format = "jsonl"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with open(path, "rb") as f:
                for number, raw in enumerate(f, 1):
                    if raw.strip():
                        first = self._parse(raw, number, 0)
                        break
                else:
                    first = {}
        except OSError as e:
            raise InputError(path, f"cannot read the file: {e.strerror}") from None
        if isinstance(first, InputError):
            raise first
        self.columns = {key: ColumnInfo() for key in first}

    def _parse(self, raw: bytes, line: int, row: int) -> dict[str, Any] | InputError:
        try:
            value = json.loads(raw)
        except ValueError as e:
            return InputError(self.path, f"not JSON: {e}", row=row, line=line)
        if not isinstance(value, dict):
            return InputError(self.path, f"not a JSON object but {type(value).__name__}", row=row, line=line)
        return value

    def chunks(self, needed, chunk_rows, start):
        row = start.get("row", 0)
        with open(self.path, "rb") as f:
            f.seek(start.get("offset", 0))
            line = start.get("line", 0)
            rows: list[Any] = []
            lines: list[int] = []
            bad: dict[int, InputError] = {}
            offset = f.tell()
            for raw in f:
                offset += len(raw)
                line += 1
                if not raw.strip():
                    continue
                value = self._parse(raw, line, row + len(rows))
                if isinstance(value, InputError):
                    bad[len(rows)] = value
                    value = {}
                rows.append(value)
                lines.append(line)
                if len(rows) == chunk_rows:
                    yield self._chunk(row, rows, lines, bad, needed, offset, line)
                    row += len(rows)
                    rows, lines, bad = [], [], {}
            if rows:
                yield self._chunk(row, rows, lines, bad, needed, offset, line)

    @staticmethod
    def _chunk(row, rows, lines, bad, needed, offset, line) -> RawChunk:
        columns = {name: [r.get(name, MISSING) for r in rows] for name in needed}
        return RawChunk(row, len(rows), columns, {"row": row + len(rows), "offset": offset, "line": line},
                        lines=lines, bad=bad)


class CsvReader(Reader):
    """Comma-separated values with a header row (RFC 4180 quoting; UTF-8, an optional BOM).
    Every cell is text, parsed as the input's datatype; a tensor is either one cell holding a
    JSON array or one column per element."""

    format = "csv"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with open(path, "rb") as f:
                lines = _Lines(f, path, 0, 0, "utf-8-sig")
                header = next(csv.reader(lines), None)
                self.data_offset, self.data_line = lines.offset, lines.line
        except OSError as e:
            raise InputError(path, f"cannot read the file: {e.strerror}") from None
        except csv.Error as e:
            raise InputError(path, f"not CSV: {e}", line=1) from None
        if not header:
            raise InputError(path, "empty: a CSV input needs a header row naming its columns")
        seen = set()
        for name in header:
            if name in seen:
                raise InputError(path, "appears twice in the header row", column=name, line=1)
            seen.add(name)
        self.header = header
        self.columns = {name: ColumnInfo() for name in header}

    def chunks(self, needed, chunk_rows, start):
        row = start.get("row", 0)
        index = [self.header.index(name) for name in needed]
        width = len(self.header)
        pick = itemgetter(*index) if index else (lambda r: ())
        with open(self.path, "rb") as f:
            offset = start.get("offset", self.data_offset)
            f.seek(offset)
            lines = _Lines(f, self.path, offset, start.get("line", self.data_line))
            records = csv.reader(lines)
            picked: list[Any] = []
            starts: list[int] = []
            bad: dict[int, InputError] = {}
            while True:
                first_line = lines.line + 1
                try:
                    record = next(records, None)
                except csv.Error as e:
                    raise InputError(self.path, f"not CSV: {e}", row=row + len(picked), line=first_line) from None
                if record is None:
                    break
                if not record:  # a blank line
                    continue
                if len(record) != width:
                    bad[len(picked)] = InputError(
                        self.path, f"ragged: {len(record)} field{'s' if len(record) != 1 else ''}, the header has "
                        f"{width}", row=row + len(picked), line=first_line)
                    record = [""] * width
                picked.append(pick(record) if len(index) != 1 else (pick(record),))
                starts.append(first_line)
                if len(picked) == chunk_rows:
                    yield self._chunk(row, picked, starts, bad, needed, lines)
                    row += len(picked)
                    picked, starts, bad = [], [], {}
            if picked:
                yield self._chunk(row, picked, starts, bad, needed, lines)

    @staticmethod
    def _chunk(row, picked, starts, bad, needed, lines) -> RawChunk:
        matrix = np.array(picked, dtype=object).reshape(len(picked), len(needed))  # str cells
        columns = {name: matrix[:, j] for j, name in enumerate(needed)}
        return RawChunk(row, len(picked), columns, {"row": row + len(picked), "offset": lines.offset,
                                                    "line": lines.line}, text=True, lines=starts, bad=bad)


def file_identity(path: Path) -> dict[str, Any]:
    """What tells a resumed job that its input is the file it started on."""
    st = os.stat(path)
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
