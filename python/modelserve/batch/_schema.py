"""How dataset columns become a model's input tensors: the binding of inputs to columns, the
datatype rules, the conversion of one chunk, and the ID columns carried through.

Everything here is pure (no threads, no files): readers hand it raw columns, it returns numpy
arrays shaped ``[rows, *input shape]`` and the rows it could not convert, each with a message that
names the file, the column, the row and the expected type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._readers import RawChunk

__all__ = ["InputError", "InputBinding", "IdColumn", "numpy_dtype", "bind_inputs", "convert_chunk"]

#: The protocol's datatypes as numpy types (BF16 has none: numpy has no bfloat16).
NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}

#: A JSON Lines row without the key.
MISSING = object()


class InputError(InvalidArgumentError):
    """Bad input data: an unreadable file, a missing column, a wrong datatype or a ragged row.

    The message names the file and, where they apply, the column, the row (0-based, counting
    data rows only; text formats add the 1-based line) and the expected type; the same facts are
    attributes.
    """

    def __init__(self, path: str | Path, problem: str, *, column: str | None = None, row: int | None = None,
                 line: int | None = None, expected: str | None = None) -> None:
        self.path = str(path)
        self.column = column
        self.row = row
        self.line = line
        self.expected = expected
        self.problem = problem
        where = []
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        text = f"{path}: " + (", ".join(where) + ": " if where else "") + problem
        if expected is not None:
            text += f"; expected {expected}"
        super().__init__(text)


def numpy_dtype(datatype: str, what: str) -> np.dtype:
    try:
        return np.dtype(NUMPY_TYPES[datatype])
    except KeyError:
        raise InvalidArgumentError(
            f"{what} is {datatype}, which batch files cannot hold (numpy has no bfloat16); "
            f"supported: {', '.join(NUMPY_TYPES)}"
        ) from None


def describe(datatype: str, shape: tuple[int, ...]) -> str:
    """``FP32 [256] (256 values per row)``: the expected type, as error messages state it."""
    dims = "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"
    count = math.prod(shape)
    per_row = "" if any(d < 0 for d in shape) else f" ({count} value{'s' if count != 1 else ''} per row)"
    return f"{datatype} {dims}{per_row}"


@dataclass
class InputBinding:
    """Where one model input comes from.

    ``columns`` is one column holding the whole tensor of each row (a list, an array, or a
    scalar when the tensor has one element), or, with ``scalars``, one scalar column per element
    of the flattened tensor (``INPUT0_0 .. INPUT0_255``). ``shape`` is the tensor of one row:
    the input's shape without the batch dimension, variable dimensions fixed by the data.
    """

    name: str
    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]
    columns: list[str]
    scalars: bool
    cast: bool = False  # typed values of another numeric datatype are converted (--cast)

    @property
    def expected(self) -> str:
        return describe(self.datatype, self.shape)

    @property
    def target(self) -> str:
        """``input 'INPUT0' is FP32 (float32)``, as refusals of a datatype state it."""
        return f"input '{self.name}' is {self.datatype} ({self.dtype.name})"

    @property
    def source(self) -> str:
        if self.scalars and len(self.columns) > 2:
            return f"{self.columns[0]}..{self.columns[-1]}"
        return ",".join(self.columns)


@dataclass
class IdColumn:
    """A column copied from input to output. ``kind`` is int, float, bool or text."""

    name: str
    kind: str

    DTYPES = {"int": np.dtype(np.int64), "float": np.dtype(np.float64), "bool": np.dtype(np.bool_),
              "text": np.dtype(object)}


@dataclass
class Converted:
    """One chunk, converted: input arrays ``[n, *shape]``, ID arrays ``[n]``, and the rows that
    could not be converted (row within the chunk -> the error)."""

    inputs: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    bad: dict[int, InputError] = field(default_factory=dict)


# --- binding: which columns feed which input ---------------------------------------------------

def bind_inputs(path: Path, columns: dict[str, "ColumnInfo"], inputs: list[dict[str, Any]],
                mapping: dict[str, list[str]], batching: bool, cast: bool = False) -> list[InputBinding]:
    """Pick the columns of every model input (``mapping`` first, then by name) and check what
    the file's schema already tells (npy/npz/Parquet: datatypes and shapes) against the model
    (``cast``: see :func:`_cast_problem`). Raises :class:`InputError` naming the file, the
    input's column(s) and the expected type."""
    names = [i["name"] for i in inputs]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise InvalidArgumentError(f"column mapping names unknown input(s) {unknown}; the model's inputs: {names}")
    bindings = []
    for meta in inputs:
        name = meta["name"]
        shape = tuple(meta["shape"][1:] if batching else meta["shape"])
        dtype = numpy_dtype(meta["datatype"], f"input '{name}'")
        expected = describe(meta["datatype"], shape)
        count = math.prod(shape) if all(d >= 0 for d in shape) else None
        if name in mapping:
            chosen = mapping[name]
            missing = [c for c in chosen if c not in columns]
            if missing:
                raise InputError(path, f"no such column (mapped to input '{name}'); {_listing(columns)}",
                                 column=missing[0], expected=expected)
        elif name in columns:
            chosen = [name]
        elif count is not None and count > 0 and all(f"{name}_{i}" in columns for i in range(count)):
            chosen = [f"{name}_{i}" for i in range(count)]
        else:
            flat = f", or columns {name}_0..{name}_{count - 1}" if count and count > 1 else ""
            raise InputError(
                path, f"missing: input '{name}' needs a column '{name}'{flat}, or a mapping "
                f"(--map {name}=COLUMN[,COLUMN...]); {_listing(columns)}", column=name, expected=expected)
        scalars = len(chosen) > 1
        if scalars and count != len(chosen):
            raise InputError(path, f"{len(chosen)} columns are mapped to input '{name}', whose tensor has "
                             f"{'a variable number of' if count is None else count} elements",
                             column=chosen[0], expected=expected)
        binding = InputBinding(name, meta["datatype"], dtype, shape, list(chosen), scalars, cast)
        for column in chosen:
            info = columns[column]
            info.check(path, column, binding)
            if not scalars and info.row_shape is not None:
                binding.shape = _fixed_shape(path, column, binding, info.row_shape)
        bindings.append(binding)
    return bindings


def _listing(columns: dict[str, Any]) -> str:
    names = list(columns)
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"the file's columns: {shown or 'none'}"


def _fixed_shape(path: Path, column: str, binding: InputBinding, row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input's per-row shape given a column whose rows have ``row_shape`` (an npy array's
    ``shape[1:]``, a fixed-size list): equal, or the same count of elements (reshaped)."""
    shape = binding.shape
    if len(row_shape) == len(shape) and all(d < 0 or d == r for d, r in zip(shape, row_shape)):
        return tuple(row_shape)
    count = math.prod(row_shape)
    if all(d >= 0 for d in shape) and count == math.prod(shape):
        return shape
    raise InputError(path, f"each row holds shape {list(row_shape)} ({count} values)", column=column,
                     expected=binding.expected)


@dataclass
class ColumnInfo:
    """What a file's schema says about a column before reading it: the numpy datatype of its
    values (None: text or JSON, known only from the data) and the shape of one row (None:
    unknown or variable)."""

    dtype: np.dtype | None = None
    row_shape: tuple[int, ...] | None = None
    found: str = ""

    def check(self, path: Path, column: str, binding: InputBinding) -> None:
        if self.dtype is None:
            return
        problem = _cast_problem(self.dtype, binding.dtype, typed=True, cast=binding.cast,
                                target=binding.target)
        if problem:
            raise InputError(path, f"holds {self.found or self.dtype}, {problem}", column=column,
                             expected=binding.expected)


# --- datatypes ------------------------------------------------------------------------------------

def _cast_problem(src: np.dtype, dst: np.dtype, *, typed: bool = False, cast: bool = False,
                  target: str | None = None) -> str | None:
    """None when values of ``src`` may feed an input of ``dst``, else why not (the end of a
    sentence that begins "holds float64, ...").

    Note [Datatypes of batch files]. A typed file (npy, npz, Parquet: ``typed``) holds values of
    a datatype, and it must be the input's: a float64 .npy for an FP32 input is refused, not
    converted, because a conversion can lose values without a word (1e300 becomes inf, the
    outputs NaN). ``cast`` (``--cast``) converts any numeric datatype to any numeric one but
    BOOL, and :func:`cast` then refuses every value that does not fit: an integer outside the
    target's range, a finite float that would become inf, a float into an integer input that is
    not a whole number (NaN and inf included). Floats may round to the nearest value of a
    narrower float type, and large integers to the nearest float: that is what a conversion to a
    float means. Untyped values (text, JSON numbers) have no datatype of their own: they are read
    as the input's, within their kind and upwards (int -> float, float64 -> FP32, int64 -> INT32),
    with the same refusal of values that do not fit, and a float into an integer input needs
    ``cast``. Numbers never convert to BOOL; BYTES takes bytes and text (UTF-8 encoded)."""
    if dst.kind == "O":
        return None if src.kind in "SUO" else "which is not text or bytes"
    if src.kind not in "biuf":
        return "which is not numeric"
    if src.kind == dst.kind and src.itemsize == dst.itemsize:  # the same, maybe in another byte order
        return None
    if dst.kind == "b":
        return "which is not boolean (numbers do not convert to BOOL, not even with --cast)"
    if cast:
        return None
    if typed:
        return (f"but {target or 'the input is ' + dst.name}: a file's datatype must be the input's; give "
                "--cast (cast=True) to convert it, which refuses the values that do not fit")
    if np.can_cast(src, dst, "same_kind"):
        return None
    return (f"which converts to {dst.name} only with --cast (cast=True), which refuses the values that are "
            "not whole numbers")


def cast(a: np.ndarray, dst: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """``a`` as ``dst`` (rules of :func:`_cast_problem`, checked by the caller) and a mask
    ``[rows, elements per row]`` of the values that do not fit ``dst`` (None when none is found;
    see Note [Datatypes of batch files])."""
    if dst.kind == "O":
        return _as_bytes(a), None
    src = a.dtype
    if src == dst:
        return a, None
    with np.errstate(over="ignore", invalid="ignore"):  # the values that overflow are found below
        out = a.astype(dst)
    if np.can_cast(src, dst, "safe") or src.kind == "b" or not a.size:
        return out, None
    flat = a.reshape(len(a), a.size // len(a))
    if dst.kind in "iu":
        info = np.iinfo(dst)
        # info.max + 1 and info.min are powers of two (or 0): exact as floats, unlike info.max.
        misfit = (flat < info.min) | (flat >= float(info.max + 1) if src.kind == "f" else flat > info.max)
        if src.kind == "f":
            misfit |= ~np.isfinite(flat) | (flat != np.trunc(flat))
    else:
        misfit = np.isinf(out.reshape(flat.shape)) & np.isfinite(flat)
    return out, misfit if misfit.any() else None


def _misfit(value: Any, b: InputBinding) -> str:
    """Why ``value`` (a source value :func:`cast` refused) does not fit ``b``'s datatype."""
    if b.dtype.kind in "iu":
        info = np.iinfo(b.dtype)
        if isinstance(value, float) and not math.isfinite(value):
            return "not a finite number"
        if isinstance(value, float) and value != math.trunc(value):
            return "not a whole number"
        return f"outside {b.datatype}'s range [{info.min}, {info.max}]"
    top = float(np.finfo(b.dtype).max)
    return f"outside {b.datatype}'s finite range [{-top:.8g}, {top:.8g}]"


def _as_bytes(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(a.reshape(-1).tolist()):
        flat[i] = x.encode("utf-8") if isinstance(x, str) else bytes(x) if x is not None else None
    return out


# --- conversion of one chunk ----------------------------------------------------------------------

def convert_chunk(path: Path, chunk: "RawChunk", bindings: list[InputBinding], ids: list[IdColumn]) -> Converted:
    """The chunk's input tensors and ID values; rows that fail to convert are zero-filled in the
    arrays and listed in ``bad``."""
    bad: dict[int, InputError] = dict(chunk.bad)
    inputs = {b.name: _convert_input(path, chunk, b, bad) for b in bindings}
    out_ids = {c.name: _convert_id(path, chunk, c, bad) for c in ids}
    return Converted(inputs, out_ids, bad)


def _error(path: Path, chunk: "RawChunk", row: int, column: str, problem: str, expected: str | None) -> InputError:
    line = chunk.lines[row] if chunk.lines is not None else None
    return InputError(path, problem, column=column, row=chunk.start + row, line=line, expected=expected)


def _mark(bad: dict[int, InputError], row: int, error: InputError) -> None:
    bad.setdefault(row, error)


def _convert_input(path: Path, chunk: "RawChunk", b: InputBinding, bad: dict[int, InputError]) -> np.ndarray:
    n = chunk.n
    if b.scalars:
        if chunk.text:  # CSV: one text matrix for all the columns, parsed in one go
            cells = (np.stack([chunk.columns[c] for c in b.columns], axis=1) if n
                     else np.empty((0, len(b.columns)), object))
            values = _parse_text(path, chunk, cells, b, bad)
        else:
            parts = [_column_values(path, chunk, c, b, (), bad) for c in b.columns]
            values = np.stack(parts, axis=1) if n else np.empty((0, len(b.columns)), b.dtype)
        return values.reshape((n, *b.shape))
    column = b.columns[0]
    return _column_values(path, chunk, column, b, b.shape, bad)


def _column_values(path: Path, chunk: "RawChunk", column: str, b: InputBinding, shape: tuple[int, ...],
                   bad: dict[int, InputError]) -> np.ndarray:
    """One column as ``[n, *shape]`` of ``b.dtype``."""
    raw = chunk.columns[column]
    n = chunk.n
    expected = b.expected if shape else b.datatype
    if chunk.text:  # CSV: a scalar per cell, or a JSON array
        if math.prod(shape) == 1 and len(shape) <= 1:
            cells = np.asarray(raw, dtype=object).reshape(n, 1)
            return _parse_text(path, chunk, cells, b, bad, column).reshape((n, *shape))
        return _json_values(path, chunk, column, _json_cells(path, chunk, column, list(raw), expected, bad), b,
                            shape, bad)
    if isinstance(raw, np.ndarray):  # npy, npz
        problem = _cast_problem(raw.dtype, b.dtype, typed=True, cast=b.cast, target=b.target)
        if problem:
            raise _error(path, chunk, 0, column, f"holds {raw.dtype}, {problem}", expected)
        values, misfit = cast(raw, b.dtype)
        if values.shape[1:] != shape:
            values = values.reshape((n, *shape))
        _misfit_errors(path, chunk, column, b, raw, values, misfit, bad)
        return values
    if _is_arrow(raw):
        return _arrow_values(path, chunk, column, raw, b, shape, bad)
    return _json_values(path, chunk, column, raw, b, shape, bad)


def _misfit_errors(path, chunk, column, b, source, values, misfit, bad, first_row: int = 0) -> None:
    """Marks the rows with values that do not fit ``b`` (``misfit`` from :func:`cast` of
    ``source``, whose row 0 is the chunk's ``first_row``), naming the first such value of each
    row and its place in the row (row-major), and zeroes them in ``values``."""
    if misfit is None:
        return
    flat = source.reshape(misfit.shape)
    for row in np.flatnonzero(misfit.any(axis=1)):
        j = int(np.argmax(misfit[row]))
        value = flat[row, j].item()
        where = f"element {j} of the row, {value!r}," if misfit.shape[1] > 1 else f"the value {value!r}"
        _mark(bad, first_row + int(row), _error(path, chunk, first_row + int(row), column,
                                                f"{where} does not fit input '{b.name}': {_misfit(value, b)}",
                                                b.expected))
        values[row] = 0


def _parse_text(path: Path, chunk: "RawChunk", cells: np.ndarray, b: InputBinding,
                bad: dict[int, InputError], column: str | None = None) -> np.ndarray:
    """A matrix ``[n, k]`` of text cells (CSV; an object array of str: parsing from objects is
    several times faster than from numpy's fixed-width unicode) parsed as ``b.dtype``;
    unparseable cells mark their rows."""
    dst = b.dtype
    if dst.kind == "O":
        return _as_bytes(cells)
    if dst.kind == "b":
        lowered = np.char.lower(np.char.strip(cells.astype(str)))
        truth = np.isin(lowered, ("true", "1"))
        ok = truth | np.isin(lowered, ("false", "0"))
        if not ok.all():
            for row, j in zip(*np.nonzero(~ok)):
                name = column or b.columns[j]
                _mark(bad, int(row), _error(path, chunk, int(row), name, f"cannot read {str(cells[row, j])!r} as BOOL "
                                            "(true, false, 1 or 0)", b.datatype))
        return truth
    wide = np.dtype(np.float64) if dst.kind == "f" else dst  # floats are read exactly, then narrowed
    try:
        out = cells.astype(wide)
    except (ValueError, OverflowError):
        out = np.zeros(cells.shape, wide)
        for row in range(cells.shape[0]):
            for j in range(cells.shape[1]):
                text = str(cells[row, j])
                try:
                    out[row, j] = _parse_number(text, wide)
                    continue
                except OverflowError:
                    info = np.iinfo(dst)
                    problem = f"{text!r} is outside {b.datatype}'s range [{info.min}, {info.max}]"
                except ValueError:
                    problem = "empty cell" if not text.strip() else f"cannot read {text!r} as {b.datatype}"
                _mark(bad, row, _error(path, chunk, row, column or b.columns[j], problem, b.datatype))
                break
    if dst.kind != "f":
        return out
    narrow, misfit = cast(out, dst)
    # Text too large even for float64 reads as inf (float("1e400")), like an overflow of dst.
    spelled = np.isinf(out)
    if spelled.any():
        for row, j in zip(*np.nonzero(spelled)):
            if str(cells[row, j]).strip().lower().lstrip("+-") not in ("inf", "infinity"):
                misfit = np.zeros(out.shape, bool) if misfit is None else misfit
                misfit[row, j] = True
    if misfit is not None:
        top = float(np.finfo(dst).max)
        for row in np.flatnonzero(misfit.any(axis=1)):
            j = int(np.argmax(misfit[row]))
            problem = f"{str(cells[row, j])!r} is outside {b.datatype}'s finite range [{-top:.8g}, {top:.8g}]"
            _mark(bad, int(row), _error(path, chunk, int(row), column or b.columns[j], problem, b.datatype))
            narrow[row] = 0
    return narrow


def _parse_number(text: str, dst: np.dtype) -> Any:
    return np.array([text], dtype=object).astype(dst)[0]  # ValueError, or OverflowError out of range


def _json_cells(path, chunk, column, cells, expected, bad) -> list[Any]:
    try:
        return json.loads("[" + ",".join(cells) + "]")
    except ValueError:
        pass
    values: list[Any] = []
    for row, text in enumerate(cells):
        try:
            values.append(json.loads(text))
        except ValueError:
            problem = "empty cell" if not text.strip() else f"cannot read {_short(text)} as a JSON array"
            _mark(bad, row, _error(path, chunk, row, column, problem, expected))
            values.append(None)
    return values


def _json_values(path: Path, chunk: "RawChunk", column: str, values: list[Any], b: InputBinding,
                 shape: tuple[int, ...], bad: dict[int, InputError]) -> np.ndarray:
    """JSON values (scalars or nested lists), one per row, as ``[n, *shape]``: each row must hold
    the input's elements, nested like its shape, flat, or (one element) a bare scalar."""
    n = len(values)
    if any(d < 0 for d in shape):
        first = next(((row, v) for row, v in enumerate(values) if v is not MISSING and v is not None), None)
        try:
            found = np.asarray(first[1]).shape if first is not None else None
        except ValueError:
            found = None
        shape = _settle(path, chunk, column, b, first[0] if first else 0, found, None)
    expected = b.expected
    if n and not any(v is MISSING or v is None for v in values):
        try:
            a = np.asarray(values)
        except ValueError:  # ragged: rows of different lengths
            a = None
        if a is not None and not _cast_problem(a.dtype, b.dtype, cast=b.cast) and a.dtype.kind != "O":
            if a.shape[1:] == shape or (a.size == n * math.prod(shape) and a.ndim >= 1):
                source = a.reshape((n, *shape))
                out, misfit = cast(source, b.dtype)
                _misfit_errors(path, chunk, column, b, source, out, misfit, bad)
                return out
        elif a is not None and b.dtype.kind == "O" and a.dtype.kind in "UO":
            try:
                return _as_bytes(a.reshape((n, *shape)))
            except (ValueError, TypeError):
                pass
    out = np.zeros((n, *shape), b.dtype) if b.dtype.kind != "O" else np.full((n, *shape), b"", object)
    count = math.prod(shape)
    for row, value in enumerate(values):
        if row in bad:
            continue
        if value is MISSING:
            _mark(bad, row, _error(path, chunk, row, column, "missing", expected))
            continue
        if value is None:
            _mark(bad, row, _error(path, chunk, row, column, "null", expected))
            continue
        try:
            a = np.asarray(value)
        except ValueError:
            _mark(bad, row, _error(path, chunk, row, column, f"ragged: {_short(json.dumps(value))} is not a "
                                   "rectangular array", expected))
            continue
        if a.dtype.kind == "O" or (b.dtype.kind == "O" and a.dtype.kind not in "US"):
            found = "a value that is not a number" if b.dtype.kind != "O" else "a value that is not text"
            _mark(bad, row, _error(path, chunk, row, column, f"{found}: {_short(json.dumps(value))}", expected))
            continue
        problem = _cast_problem(a.dtype, b.dtype, cast=b.cast)
        if problem:
            kind = {"U": "text", "b": "booleans", "f": "floating-point numbers"}.get(a.dtype.kind, str(a.dtype))
            whole = a.dtype.kind == "f" and b.dtype.kind in "iu"
            hint = " (--cast takes those that are whole numbers)" if whole else ""
            _mark(bad, row, _error(path, chunk, row, column, f"holds {kind}: {_short(json.dumps(value))}{hint}",
                                   expected))
            continue
        if a.size != count:
            _mark(bad, row, _error(path, chunk, row, column, f"holds {a.size} value{'s' if a.size != 1 else ''}"
                                   + (f" (shape {list(a.shape)})" if a.ndim > 1 else ""), expected))
            continue
        source = a.reshape((1, *shape))
        converted, misfit = cast(source, b.dtype)
        if misfit is not None:
            _misfit_errors(path, chunk, column, b, source, converted, misfit, bad, row)
            continue
        out[row] = converted[0]
    return out


def _settle(path: Path, chunk: "RawChunk", column: str, b: InputBinding, row: int,
            found: tuple[int, ...] | None, count: int | None) -> tuple[int, ...]:
    """Fixes the variable dimensions of ``b`` from one row (its nested shape, or its count of
    values when one dimension is variable); every later row must have the same shape."""
    shape = b.shape
    if found is not None and len(found) == len(shape) and all(d < 0 or d == f for d, f in zip(shape, found)):
        b.shape = tuple(found)
        return b.shape
    fixed = math.prod(d for d in shape if d >= 0)
    if count is not None and sum(d < 0 for d in shape) == 1 and fixed and count % fixed == 0:
        b.shape = tuple(count // fixed if d < 0 else d for d in shape)
        return b.shape
    what = f"shape {list(found)}" if found is not None else f"{count} values" if count is not None else "no value"
    raise _error(path, chunk, row, column, f"holds {what}, which does not fit the input's variable dimensions",
                 b.expected)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- Parquet (pyarrow arrays) ---------------------------------------------------------------------

def _is_arrow(raw: Any) -> bool:
    return type(raw).__module__.startswith("pyarrow")


def _arrow_values(path: Path, chunk: "RawChunk", column: str, raw: Any, b: InputBinding,
                  shape: tuple[int, ...], bad: dict[int, InputError]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(raw)
    expected = b.expected if shape else b.datatype
    parents = np.arange(n)
    leaves = raw
    nested = False
    while pa.types.is_list(leaves.type) or pa.types.is_large_list(leaves.type) or \
            pa.types.is_fixed_size_list(leaves.type):
        if leaves.null_count:
            for row in np.unique(parents[np.flatnonzero(leaves.is_null().to_numpy(zero_copy_only=False))]):
                _mark(bad, int(row), _error(path, chunk, int(row), column, "null", expected))
        parents = parents[pc.list_parent_indices(leaves).to_numpy()]
        leaves = pc.list_flatten(leaves)
        nested = True
    null_leaves = leaves.is_null().to_numpy(zero_copy_only=False) if leaves.null_count else None
    if null_leaves is not None:
        for row in np.unique(parents[null_leaves]):
            _mark(bad, int(row), _error(path, chunk, int(row), column, "null", expected))
        t = leaves.type
        leaves = leaves.fill_null(False if pa.types.is_boolean(t) else 0 if pa.types.is_integer(t) or
                                  pa.types.is_floating(t) else b"" if pa.types.is_binary(t) else "")
    values = leaves.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "O" and b.dtype.kind != "O":
        raise _error(path, chunk, 0, column, f"holds {leaves.type}, which is not numeric", expected)
    problem = _cast_problem(values.dtype, b.dtype, typed=True, cast=b.cast, target=b.target)
    if problem:
        raise _error(path, chunk, 0, column, f"holds {leaves.type}, {problem}", expected)
    counts = np.bincount(parents, minlength=n) if nested else np.ones(n, int)
    if any(d < 0 for d in shape):
        shape = _settle(path, chunk, column, b, 0, None, int(counts[0]) if n else None)
    count = math.prod(shape)
    if (counts == count).all():
        source = values.reshape((n, *shape))
        out, misfit = cast(source, b.dtype)
        _misfit_errors(path, chunk, column, b, source, out, misfit, bad)
        return out
    out = np.zeros((n, *shape), b.dtype)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for row in range(n):
        if counts[row] != count:
            if row not in bad:
                _mark(bad, row, _error(path, chunk, row, column, f"ragged: holds {counts[row]} values", expected))
            continue
        source = values[starts[row]:starts[row + 1]].reshape((1, *shape))
        converted, misfit = cast(source, b.dtype)
        if misfit is not None:
            _misfit_errors(path, chunk, column, b, source, converted, misfit, bad, row)
            continue
        out[row] = converted[0]
    return out


# --- ID columns ----------------------------------------------------------------------------------

def id_kind(raw: Any) -> str:
    """The kind of an ID column from its first chunk: int, float, bool or text."""
    if isinstance(raw, np.ndarray):
        return {"b": "bool", "i": "int", "u": "int", "f": "float"}.get(raw.dtype.kind, "text")
    if _is_arrow(raw):
        import pyarrow as pa

        t = raw.type
        return ("bool" if pa.types.is_boolean(t) else "int" if pa.types.is_integer(t)
                else "float" if pa.types.is_floating(t) else "text")
    values = [v for v in raw if v is not MISSING and v is not None]
    if values and all(type(v) is bool for v in values):
        return "bool"
    if values and all(type(v) is int for v in values):
        return "int"
    if values and all(type(v) in (int, float) for v in values):
        return "float"
    return "text"


def _convert_id(path: Path, chunk: "RawChunk", c: IdColumn, bad: dict[int, InputError]) -> np.ndarray:
    raw = chunk.columns[c.name]
    if _is_arrow(raw):
        raw = raw.to_numpy(zero_copy_only=False) if c.kind != "text" else np.array(
            [None if v is None else v if isinstance(v, str) else str(v) for v in raw.to_pylist()], dtype=object)
    if isinstance(raw, np.ndarray):
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if c.kind == "text":
            return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v if isinstance(v, str)
                             else None if v is None else str(v) for v in raw.tolist()], dtype=object)
        problem = _cast_problem(raw.dtype, IdColumn.DTYPES[c.kind])
        if problem is None and raw.ndim == 1:
            return raw.astype(IdColumn.DTYPES[c.kind])
        raise _error(path, chunk, 0, c.name, f"holds {raw.dtype} {list(raw.shape[1:])}", f"{c.kind} IDs, one per row")
    out = np.empty(chunk.n, dtype=IdColumn.DTYPES[c.kind]) if c.kind != "text" else np.empty(chunk.n, object)
    for row, v in enumerate(raw):
        if v is MISSING:
            _mark(bad, row, _error(path, chunk, row, c.name, "missing (an ID column)", None))
            v = None
        if c.kind == "text":
            out[row] = v if isinstance(v, str) or v is None else json.dumps(v)
        elif v is None or type(v) not in {"int": (int,), "float": (int, float), "bool": (bool,)}[c.kind]:
            if row not in bad:
                _mark(bad, row, _error(path, chunk, row, c.name, f"ID {json.dumps(v)} is not {c.kind} like the "
                                       "first rows'", None))
            out[row] = 0
        else:
            out[row] = v
    return out
