"""One batch job: preflight, the request pipeline, commits and the final file.

Three threads, each bounded:

- the **reader** reads and converts chunk after chunk (``_Prefetch``, at most one chunk ahead);
- the calling thread **dispatches**: it cuts chunks into requests of ``batch_size`` rows, keeps
  up to ``max_in_flight`` of them submitted to the Runtime, waits on the oldest, copies its
  outputs into its chunk, and hands finished chunks, in order, to
- the **committer** (``_Committer``), which appends them to the output files, fsyncs, and
  journals each one.

Requests complete in about the order they were submitted (one FIFO batcher), so waiting on the
oldest costs nothing, and the calling thread is the only one that submits, which keeps the
request boundaries (and so the batches the model sees) the same from run to run.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CancelledError,
    InternalError,
    InvalidArgumentError,
    ModelserveError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from ._journal import Workspace
from ._progress import Callback, Progress, ProgressBar
from ._readers import RawChunk, Reader, file_identity, format_of, open_reader, pyarrow_parquet
from ._schema import Converted, IdColumn, InputBinding, InputError, bind_inputs, convert_chunk, id_kind, numpy_dtype
from ._writers import Appender, DoneChunk, OutputField, Writer, check_output_format, fill_value, make_writer

__all__ = ["run_batch", "BatchResult", "DEFAULT_CHUNK_ROWS"]

#: Rows per chunk unless ``chunk_rows`` says otherwise (at least 16 requests' worth). It does not
#: depend on ``max_in_flight``, so that a resumed job may change that.
DEFAULT_CHUNK_ROWS = 4096
#: A full model queue at submit is retried for this long before the job gives up.
QUEUE_FULL_PATIENCE_S = 60.0
#: How long an interrupted job waits for its requests in flight before cancelling them.
ABORT_GRACE_S = 2.0
#: Errors that end the job (the model is gone or shutting down), as opposed to a failed row.
FATAL = (UnavailableError, NotFoundError, CancelledError)


@dataclass(frozen=True)
class BatchResult:
    """What a finished job did. ``rows`` counts every input row (in the output, in order);
    ``failed`` those written as nulls, with their reasons in ``errors``; ``resumed_rows`` those
    an earlier, interrupted run had committed; ``seconds`` and ``rows_per_s`` are this run's:
    ``rows_per_s`` is ``rows_this_run / seconds``, never the resumed rows over this run's time."""

    model: str
    version: int
    output: Path | None
    errors: Path | None
    rows: int
    failed: int
    resumed_rows: int
    seconds: float
    rows_per_s: float

    @property
    def succeeded(self) -> int:
        return self.rows - self.failed

    @property
    def rows_this_run(self) -> int:
        return self.rows - self.resumed_rows

    def summary(self) -> str:
        """``mlp v1: 6,000 rows in 1.2 s (5,000 rows/s), 0 failed``; a resumed run states the rows
        it did with its time and rate, then the whole: ``mlp v1: 4,976 rows in 1.0 s (4,976
        rows/s), resumed after row 1,024: 6,000 rows in all, 0 failed``."""
        text = (f"{self.model} v{self.version}: {self.rows_this_run:,} rows in {self.seconds:.1f} s "
                f"({self.rows_per_s:,.0f} rows/s), ")
        if self.resumed_rows:
            text += f"resumed after row {self.resumed_rows:,}: {self.rows:,} rows in all, "
        text += f"{self.failed:,} failed"
        if self.output is not None:
            text += f"; output {self.output}"
        if self.errors is not None:
            text += f"; errors {self.errors}"
        return text


def run_batch(
    runtime: Any,
    model: str,
    input: str | Path,
    output: str | Path,
    *,
    version: int | str | None = None,
    batch_size: int | None = None,
    columns: Mapping[str, str | Iterable[str]] | None = None,
    id_columns: Iterable[str] = (),
    outputs: Iterable[str] | None = None,
    input_format: str | None = None,
    output_format: str | None = None,
    on_error: str = "skip",
    errors: str | Path | None = None,
    max_in_flight: int | None = None,
    chunk_rows: int | None = None,
    restart: bool = False,
    progress: bool | Callback = True,
    validate_only: bool = False,
    cast: bool = False,
) -> BatchResult:
    """Scores ``input`` with ``model`` through ``runtime`` and writes ``output``; see the
    package docstring (``modelserve.batch``) for the rules and :class:`BatchResult` for the
    answer. Raises :class:`~modelserve.batch.InputError` (an ``InvalidArgumentError``) for bad
    input before any request (a typed file whose datatype is not the input's among it, unless
    ``cast``: see ``--cast``), and the model's error for a failed row with ``on_error="fail"``;
    after an exception or ``KeyboardInterrupt`` the committed part of the output stays in
    ``OUTPUT.partial/`` and the same call resumes it."""
    job = _Job(runtime, model, Path(input), Path(output), version=version, batch_size=batch_size,
               columns=columns, id_columns=id_columns, outputs=outputs, input_format=input_format,
               output_format=output_format, on_error=on_error, errors=errors, max_in_flight=max_in_flight,
               chunk_rows=chunk_rows, restart=restart, progress=progress, cast=cast)
    return job.check() if validate_only else job.run()


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{name} must be a whole number >= 1, got {value!r}")


class _Chunk:
    """A chunk in the dispatcher: its converted inputs, the outputs filled as requests finish."""

    __slots__ = ("index", "start", "n", "inputs", "ids", "end", "outputs", "ok", "failures", "remaining", "ranges")

    def __init__(self, index: int, raw: RawChunk, converted: Converted, batch_size: int) -> None:
        self.index = index
        self.start = raw.start
        self.n = raw.n
        self.end = raw.end
        self.inputs = converted.inputs
        self.ids = converted.ids
        self.outputs: dict[str, np.ndarray] | None = None
        self.ok = np.zeros(raw.n, bool)
        self.failures: list[dict[str, Any]] = []
        self.remaining = raw.n
        self.ranges = deque(_ranges(raw.n, converted.bad, batch_size))


def _ranges(n: int, bad: Mapping[int, Any], batch: int) -> Iterable[tuple[int, int]]:
    """Requests of up to ``batch`` rows from the chunk's start, around rows that failed to read."""
    if not bad:
        return [(lo, min(lo + batch, n)) for lo in range(0, n, batch)]
    out, lo = [], 0
    while lo < n:
        if lo in bad:
            lo += 1
            continue
        hi = lo
        while hi < n and hi - lo < batch and hi not in bad:
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


class _Job:
    def __init__(self, runtime: Any, model: str, input: Path, output: Path, *, version, batch_size, columns,
                 id_columns, outputs, input_format, output_format, on_error, errors, max_in_flight, chunk_rows,
                 restart, progress, cast=False) -> None:
        if on_error not in ("skip", "fail"):
            raise InvalidArgumentError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        if not isinstance(cast, bool):
            raise InvalidArgumentError(f"cast must be True or False, got {cast!r}")
        for name, value in (("batch_size", batch_size), ("max_in_flight", max_in_flight),
                            ("chunk_rows", chunk_rows)):
            _positive(name, value)
        self.runtime = runtime
        self.model = model
        self.input = input
        self.output = output
        self.on_error = on_error
        self.restart = restart
        self.started = time.monotonic()

        # The model: one version for the whole job, resumed runs included.
        self.version = runtime.resolve_version(model, version)
        meta = runtime.model_metadata(model, self.version)
        config = runtime.model_config(model, self.version)
        max_batch = int(config.get("max_batch_size", 0))
        self.batching = max_batch > 0
        # Unless given, the request and chunk sizes of an interrupted run of this job are kept, so
        # that rerunning it resumes it whatever the defaults are now.
        earlier = Workspace(output).peek() if not restart else {}
        if batch_size is None and earlier.get("batch_size") and (not self.batching or earlier["batch_size"] <= max_batch):
            batch_size = earlier["batch_size"]
        if chunk_rows is None and earlier.get("chunk_rows"):
            chunk_rows = earlier["chunk_rows"]
        if batch_size is None:
            batch_size = max_batch if self.batching else 1
        if self.batching and batch_size > max_batch:
            raise InvalidArgumentError(f"batch_size {batch_size} is above model '{model}' version {self.version}'s "
                                       f"max_batch_size {max_batch}")
        if not self.batching and batch_size != 1:
            raise InvalidArgumentError(f"model '{model}' version {self.version} does not batch (max_batch_size 0): "
                                       f"each row is one request; batch_size must be 1, got {batch_size}")
        self.batch_size = batch_size
        instances = int(config.get("instances", {}).get("count", 1) or 1)
        budget = max_in_flight or max(8, 4 * instances)
        queue_limit = int((config.get("dynamic_batching") or {}).get("max_queue_size", 0) or 0)
        self.max_in_flight = min(budget, queue_limit) if queue_limit and max_in_flight is None else budget
        rows = chunk_rows or max(DEFAULT_CHUNK_ROWS, 16 * batch_size)
        self.chunk_rows = math.ceil(rows / batch_size) * batch_size

        # Formats, inputs, outputs.
        self.input_format = format_of(input, input_format, "--input-format")
        self.output_format = format_of(output, output_format, "--output-format")
        if input.resolve() == output.resolve():
            raise InvalidArgumentError(f"{output}: the output would overwrite the input")
        if not output.parent.is_dir():
            raise InvalidArgumentError(f"{output}: folder {output.parent} does not exist")
        names = [o["name"] for o in meta["outputs"]]
        chosen = list(dict.fromkeys(outputs)) if outputs is not None else names
        unknown = [n for n in chosen if n not in names]
        if unknown or not chosen:
            raise InvalidArgumentError(f"model '{model}' has no output(s) {unknown}; its outputs: {names}")
        self.out_names = chosen if outputs is not None else None  # None: all, as the Runtime defaults
        by_name = {o["name"]: o for o in meta["outputs"]}
        self.fields = []
        for name in chosen:
            o = by_name[name]
            shape = tuple(o["shape"][1:] if self.batching else o["shape"])
            self.fields.append(OutputField(name, o["datatype"], numpy_dtype(o["datatype"], f"output '{name}'"),
                                           shape))
        self.id_names = list(dict.fromkeys(id_columns))
        clash = sorted(set(self.id_names) & set(chosen))
        if clash:
            raise InvalidArgumentError(f"ID column(s) {clash} have the names of model outputs; the output file "
                                       "would hold both under one name")
        check_output_format(self.output_format, output, self.id_names, [(f.name, f.datatype) for f in self.fields])
        if self.output_format == "parquet":
            pyarrow_parquet(output)  # a missing extra is found now, not after the first chunk
        mapping = {k: [v] if isinstance(v, str) else list(v) for k, v in (columns or {}).items()}
        mapping = {k: [c.strip() for part in v for c in part.split(",") if c.strip()] for k, v in mapping.items()}
        if self.input_format == "npy" and len(meta["inputs"]) != 1:
            raise InputError(input, f"an .npy file holds one array, and model '{model}' has "
                             f"{len(meta['inputs'])} inputs ({', '.join(i['name'] for i in meta['inputs'])}); "
                             "use an .npz with one array per input, or a table format")
        self.mapping = mapping
        self.reader: Reader = open_reader(input, self.input_format, array_name=meta["inputs"][0]["name"])
        self.bindings: list[InputBinding] = bind_inputs(input, self.reader.columns, meta["inputs"], mapping,
                                                        self.batching, cast)
        for name in self.id_names:
            if name not in self.reader.columns:
                raise InputError(input, "no such column (an ID column); the file's columns: "
                                 + ", ".join(list(self.reader.columns)[:12]), column=name)
        self.needed = list(dict.fromkeys([c for b in self.bindings for c in b.columns] + self.id_names))
        self.reader.prepare(self.needed)
        self.errors_path = Path(errors) if errors is not None else output.with_name(output.name + ".errors.jsonl")
        self.fingerprint = {
            "model": model, "version": self.version, "input": file_identity(input),
            "input_format": self.input_format, "columns": {b.name: b.columns for b in self.bindings},
            "id_columns": self.id_names, "outputs": chosen, "output_format": self.output_format,
            "batch_size": self.batch_size, "chunk_rows": self.chunk_rows,
            **({"cast": True} if cast else {}),  # absent when off, as in journals from before --cast
        }
        if callable(progress):
            self.callbacks: list[Callback] = [progress]
            self.bar = None
        else:
            self.bar = ProgressBar(f"{model} v{self.version}") if progress else None
            self.callbacks = [self.bar] if self.bar is not None and self.bar.enabled else []

    # --- preflight ----------------------------------------------------------------------------
    def _first_chunk(self, start: dict[str, int], kinds: dict[str, str] | None):
        """Reads and converts the first chunk; on a fresh start, strictly (any bad row stops the
        job before any request: a resumed run treats its rows as the interrupted run would
        have), and settles the ID columns' kinds from it."""
        chunks = self.reader.chunks(self.needed, self.chunk_rows, start)
        raw = next(chunks, None)
        if kinds is None:
            kinds = {}
            for name in self.id_names:
                info = self.reader.columns[name]
                kinds[name] = (id_kind(raw.columns[name]) if raw is not None
                               else id_kind(np.empty(0, info.dtype)) if info.dtype is not None else "text")
        self.ids = [IdColumn(name, kinds[name]) for name in self.id_names]
        converted = None
        if raw is not None:
            converted = self._convert(raw)
            if converted.bad and start.get("row", 0) == 0:
                raise converted.bad[min(converted.bad)]
        return chunks, raw, converted

    def _convert(self, raw: RawChunk) -> Converted:
        return convert_chunk(self.input, raw, self.bindings, self.ids)

    def check(self) -> BatchResult:
        """``validate_only``: read and convert the whole input, submitting nothing."""
        chunks, raw, converted = self._first_chunk({"row": 0}, None)
        rows = raw.n if raw is not None else 0
        for raw in chunks:
            converted = self._convert(raw)
            if converted.bad:
                raise converted.bad[min(converted.bad)]
            rows += raw.n
        seconds = time.monotonic() - self.started
        return BatchResult(self.model, self.version, None, None, rows, 0, 0, seconds, rows / seconds if seconds else 0.0)

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> BatchResult:
        ws = Workspace(self.output)
        header, last = ws.open(self.fingerprint, self.restart)
        try:
            if last is not None and last.get("complete"):
                return self._finish_again(ws, header, last)
            start = last["end"] if last else {"row": 0}
            kinds = header["schema"]["ids"] if header else None
            chunks, raw, converted = self._first_chunk(start, kinds)
            if last:
                for f in self.fields:
                    f.shape = tuple(last["shapes"][f.name])
            ws.begin(None if header else {"fingerprint": self.fingerprint,
                                          "schema": {"ids": {c.name: c.kind for c in self.ids}}})
        except BaseException:
            ws.close()
            raise
        self.resumed_rows = last["rows"] if last else 0
        failed_before = last["failed"] if last else 0
        writer = make_writer(self.output_format, ws.dir, self.ids, self.fields)
        errors_file = Appender(ws.dir / "errors.jsonl", last["errors"] if last else None)
        committer = _Committer(ws, writer, errors_file, self.fields, last, failed_before)
        prefetch = _Prefetch(chunks, self._convert) if raw is not None else None
        dispatcher = _Dispatcher(self, committer, prefetch, (raw, converted) if raw is not None else None,
                                 next_index=(last["chunk"] + 1) if last else 0, failed_before=failed_before)
        try:
            dispatcher.run()
            committer.finish()
        except BaseException:
            dispatcher.abort()
            committer.finish(raise_error=False)
            ws.close()
            errors_file.close()
            if getattr(writer, "opened", False):
                writer.close()
            if self.bar is not None:
                self.bar.close()
            raise
        finally:
            if prefetch is not None:
                prefetch.stop()
        rows, failed = committer.rows, committer.failed
        ws.commit({"complete": True, "rows": rows, "failed": failed, "shapes": committer.shapes(),
                   "files": committer.sizes, "errors": committer.errors_size})
        errors_file.close()
        self._finalize(ws, writer, failed)
        dispatcher.report(final=True)
        if self.bar is not None:
            self.bar.close()
        return self._result(rows, failed)

    def _finalize(self, ws: Workspace, writer: Writer, failed: int) -> None:
        final = ws.dir / ("final." + self.output_format)
        if not getattr(writer, "opened", False):
            _open_writer(writer, self.fields, None)
        writer.finalize(final)
        final.replace(self.output)
        errors = ws.dir / "errors.jsonl"
        if failed and errors.exists():
            errors.replace(self.errors_path)
        elif self.errors_path.exists():
            self.errors_path.unlink()  # a stale errors file of an earlier job on this output
        ws.remove()

    def _finish_again(self, ws: Workspace, header: dict[str, Any], last: dict[str, Any]) -> BatchResult:
        """An earlier run committed every chunk and stopped while putting the output in place."""
        ws.begin(None)
        self.ids = [IdColumn(name, kind) for name, kind in header["schema"]["ids"].items()]
        for f in self.fields:
            f.shape = tuple(last["shapes"][f.name])
        final = ws.dir / ("final." + self.output_format)
        writer = make_writer(self.output_format, ws.dir, self.ids, self.fields)
        if all((ws.dir / name).exists() for name in last["files"] if name != "parts"):
            _open_writer(writer, self.fields, last["files"])
            writer.finalize(final)
        if final.exists():
            final.replace(self.output)
        errors = ws.dir / "errors.jsonl"
        if last["failed"] and errors.exists():
            errors.replace(self.errors_path)
        ws.remove()
        self.resumed_rows = last["rows"]
        return self._result(last["rows"], last["failed"])

    def _result(self, rows: int, failed: int) -> BatchResult:
        seconds = time.monotonic() - self.started
        done = rows - self.resumed_rows
        return BatchResult(self.model, self.version, self.output, self.errors_path if failed else None, rows,
                           failed, self.resumed_rows, seconds, done / seconds if seconds > 0 else 0.0)


def _open_writer(writer: Writer, fields: list[OutputField], sizes: dict[str, int] | None) -> None:
    for f in fields:  # an output never produced (no row succeeded): variable dimensions read as 0
        f.shape = tuple(max(d, 0) for d in f.shape)
    writer.open(sizes)
    writer.opened = True  # type: ignore[attr-defined]


# --- the reader thread ------------------------------------------------------------------------

class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class _Prefetch:
    """Reads and converts chunks on a thread, at most ``depth`` ahead of the dispatcher."""

    def __init__(self, chunks: Iterable[RawChunk], convert: Any, depth: int = 1) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(chunks, convert), name="modelserve-batch-reader",
                                       daemon=True)
        self.thread.start()

    def _run(self, chunks: Iterable[RawChunk], convert: Any) -> None:
        try:
            for raw in chunks:
                if self.stopping.is_set():
                    return
                self._put((raw, convert(raw)))
            self._put(_END)
        except BaseException as e:  # handed to the dispatcher, which raises it
            self._put(_Raised(e))

    def _put(self, item: Any) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        """The next (raw, converted) chunk, or None at the end; raises what the reader raised."""
        while True:
            try:
                item = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    return None
        if item is _END:
            return None
        if isinstance(item, _Raised):
            raise item.error
        return item

    def stop(self) -> None:
        self.stopping.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(5)


# --- the committer thread ---------------------------------------------------------------------

class _Committer:
    """Appends finished chunks to the output, fsyncs, journals, on its own thread."""

    def __init__(self, ws: Workspace, writer: Writer, errors: Appender, fields: list[OutputField],
                 last: dict[str, Any] | None, failed_before: int) -> None:
        self.ws = ws
        self.writer = writer
        self.errors = errors
        self.fields = fields
        self.rows = last["rows"] if last else 0
        self.failed = failed_before
        self.sizes = last["files"] if last else None
        self.errors_size = last["errors"] if last else 0
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="modelserve-batch-writer", daemon=True)
        self.thread.start()

    def shapes(self) -> dict[str, list[int]]:
        return {f.name: list(f.shape) for f in self.fields}

    def put(self, chunk: DoneChunk) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue
            try:
                self._commit(chunk)
            except BaseException as e:
                self.error = e

    def _commit(self, chunk: DoneChunk) -> None:
        if not getattr(self.writer, "opened", False):
            _open_writer(self.writer, self.fields, self.sizes)
        self.writer.write(chunk)
        sizes = self.writer.sync()
        if chunk.failures:
            self.errors.write("".join(json.dumps(f) + "\n" for f in chunk.failures).encode("utf-8"))
        errors_size = self.errors.sync()
        failed = self.failed + len(chunk.failures)
        rows = chunk.start + chunk.n
        self.ws.commit({"chunk": chunk.index, "end": chunk.end, "rows": rows, "failed": failed, "files": sizes,
                        "errors": errors_size, "shapes": self.shapes()})
        self.rows, self.failed, self.sizes, self.errors_size = rows, failed, sizes, errors_size

    def finish(self, raise_error: bool = True) -> None:
        """Commits what was handed over, then stops the thread."""
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


# --- the dispatcher ---------------------------------------------------------------------------

class _Op:
    __slots__ = ("chunk", "lo", "hi", "pending")

    def __init__(self, chunk: _Chunk, lo: int, hi: int, pending: Any) -> None:
        self.chunk, self.lo, self.hi, self.pending = chunk, lo, hi, pending


class _Dispatcher:
    def __init__(self, job: _Job, committer: _Committer, prefetch: _Prefetch | None,
                 first: tuple[RawChunk, Converted] | None, next_index: int, failed_before: int) -> None:
        self.job = job
        self.committer = committer
        self.prefetch = prefetch
        self.first = first
        self.next_index = next_index
        self.inflight: deque[_Op] = deque()
        self.retries: deque[tuple[_Chunk, int, int]] = deque()  # rows of failed requests, to run alone
        self.deferred: tuple[_Chunk, int, int] | None = None  # refused at submit (queue full): next
        self.waiting: deque[_Chunk] = deque()
        self.current: _Chunk | None = None
        self.source_done = first is None
        self.rows_done = job.resumed_rows
        self.failed = failed_before
        self.started = time.monotonic()
        self.last_report = 0.0
        self.position = job.resumed_rows
        self.bytes_at_start = None
        self.feeds_unbatched = not job.batching
        self.variable = {f.name for f in job.fields if any(d < 0 for d in f.shape)}

    # Chunks in.
    def _next_chunk(self) -> _Chunk | None:
        if self.first is not None:
            item, self.first = self.first, None
        else:
            item = self.prefetch.get() if self.prefetch is not None else None
        if item is None:
            self.source_done = True
            return None
        raw, converted = item
        chunk = _Chunk(self.next_index, raw, converted, self.job.batch_size)
        self.next_index += 1
        self.waiting.append(chunk)
        if "offset" in raw.end:
            if self.bytes_at_start is None:
                self.bytes_at_start = raw.end["offset"]
            self.position = raw.end["offset"]
        for row in sorted(converted.bad):
            self._fail_row(chunk, row, converted.bad[row])
        return chunk

    def _next_request(self) -> tuple[_Chunk, int, int] | None:
        if self.deferred is not None:
            request, self.deferred = self.deferred, None
            return request
        while True:
            if self.current is not None and self.current.ranges:
                lo, hi = self.current.ranges.popleft()
                return self.current, lo, hi
            if self.source_done:
                return None
            self.current = self._next_chunk()
            self._hand_over()

    # Requests.
    def _submit(self, chunk: _Chunk, lo: int, hi: int) -> Any:
        job = self.job
        if self.feeds_unbatched:
            feeds = {name: a[lo] for name, a in chunk.inputs.items()}
        else:
            feeds = {name: a[lo:hi] for name, a in chunk.inputs.items()}
        return job.runtime.submit(job.model, feeds, version=job.version, outputs=job.out_names)

    def run(self) -> None:
        queue_full_since = None
        while True:
            if self.committer.error is not None:
                raise self.committer.error
            while len(self.inflight) < self.job.max_in_flight:
                # A row retried to find out whether it fails by itself runs alone: nothing else in
                # flight, so the batcher cannot put it in a batch with another request.
                alone = bool(self.retries)
                if alone and self.inflight:
                    break
                request = self.retries.popleft() if alone else self._next_request()
                if request is None:
                    break
                chunk, lo, hi = request
                try:
                    pending = self._submit(chunk, lo, hi)
                except ResourceExhaustedError:  # the model's queue is full (others use it too)
                    if alone:
                        self.retries.appendleft(request)
                    else:
                        self.deferred = request
                    queue_full_since = queue_full_since or time.monotonic()
                    if time.monotonic() - queue_full_since > QUEUE_FULL_PATIENCE_S:
                        raise
                    if not self.inflight:
                        time.sleep(0.01)
                    break
                except FATAL:
                    raise
                except ModelserveError as e:
                    self._failed(chunk, lo, hi, e)
                    continue
                queue_full_since = None
                self.inflight.append(_Op(chunk, lo, hi, pending))
                if alone:
                    break
            self._hand_over()
            if not self.inflight:
                if (self.source_done and not self.retries and self.deferred is None
                        and (self.current is None or not self.current.ranges)):
                    break
                continue
            op = self.inflight[0]
            while not op.pending.wait(0.1):
                self.report()
            self.inflight.popleft()
            self._complete(op)
            self.report()
        self._hand_over()
        if self.waiting:
            raise InternalError(f"batch job: {len(self.waiting)} chunk(s) left unfinished")

    def _complete(self, op: _Op) -> None:
        chunk, lo, hi = op.chunk, op.lo, op.hi
        try:
            results = op.pending.outputs()
        except FATAL:
            raise
        except ModelserveError as e:
            self._failed(chunk, lo, hi, e)
            return
        if chunk.outputs is None:
            chunk.outputs = self._allocate(chunk, results)
        for name, out in chunk.outputs.items():
            got = results[name]
            if self.feeds_unbatched:
                got = got[np.newaxis]
            if got.shape[1:] != out.shape[1:]:
                raise InternalError(
                    f"model '{self.job.model}' version {self.job.version}: output '{name}' has shape "
                    f"{list(got.shape[1:])} for rows {chunk.start + lo}..{chunk.start + hi - 1}, and "
                    f"{list(out.shape[1:])} before; a batch job writes one shape per output")
            out[lo:hi] = got
        chunk.ok[lo:hi] = True
        self._resolved(chunk, hi - lo)

    def _allocate(self, chunk: _Chunk, results: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for f in self.job.fields:
            if f.name in self.variable:
                got = results[f.name].shape if self.feeds_unbatched else results[f.name].shape[1:]
                f.shape = tuple(got)
                self.variable.discard(f.name)
        return {f.name: np.empty((chunk.n, *f.shape), f.dtype) for f in self.job.fields}

    def _failed(self, chunk: _Chunk, lo: int, hi: int, error: ModelserveError) -> None:
        if hi - lo > 1:  # find the row(s) to blame: retry each row alone
            self.retries.extend((chunk, row, row + 1) for row in range(lo, hi))
            return
        self._fail_row(chunk, lo, error)

    def _fail_row(self, chunk: _Chunk, row: int, error: ModelserveError) -> None:
        absolute = chunk.start + row
        if self.job.on_error == "fail":
            if isinstance(error, InputError):
                raise error
            raise type(error)(f"{self.job.input}: row {absolute} failed: {error}")
        record: dict[str, Any] = {"row": absolute, "status": error.status, "error": str(error)}
        if chunk.ids:
            record["ids"] = {name: _json_value(values[row]) for name, values in chunk.ids.items()}
        chunk.failures.append(record)
        self.failed += 1
        self._resolved(chunk, 1)

    def _resolved(self, chunk: _Chunk, rows: int) -> None:
        chunk.remaining -= rows
        self.rows_done += rows

    def _hand_over(self) -> None:
        """Finished chunks, in order, to the committer."""
        while self.waiting and self.waiting[0].remaining == 0:
            chunk = self.waiting.popleft()
            if chunk.outputs is None:  # no row succeeded
                if self.variable:
                    names = sorted(self.variable)
                    raise InternalError(f"batch job: no row of the first chunk succeeded, so the shape of output(s) "
                                        f"{names} (variable dimensions) is unknown; see the errors")
                chunk.outputs = {f.name: np.empty((chunk.n, *f.shape), f.dtype) for f in self.job.fields}
            if not chunk.ok.all():
                for f in self.job.fields:
                    chunk.outputs[f.name][~chunk.ok] = fill_value(f.dtype)
            chunk.failures.sort(key=lambda r: r["row"])
            self.committer.put(DoneChunk(chunk.index, chunk.start, chunk.n, chunk.ids, chunk.outputs, chunk.ok,
                                         chunk.failures, chunk.end))
            chunk.inputs = {}
            if chunk is self.current and not chunk.ranges:
                self.current = None

    def abort(self) -> None:
        """After an error or Ctrl-C: give the requests in flight a moment to finish (their rows
        count), cancel the rest, wait for what still runs (so nothing of the job outlives it),
        and hand over the chunks that are finished, for the committer to commit."""
        deadline = time.monotonic() + ABORT_GRACE_S
        for op in self.inflight:
            if op.pending.wait(max(0.0, deadline - time.monotonic())):
                try:
                    self._complete(op)
                except Exception:  # a failed row under on_error="fail": it stays uncommitted
                    pass
            else:
                op.pending.cancel()
        for op in self.inflight:
            op.pending.wait(10)
        self.inflight.clear()
        try:
            self._hand_over()
        except Exception:
            pass

    # Progress.
    def report(self, final: bool = False) -> None:
        if not self.job.callbacks:
            return
        now = time.monotonic()
        if not final and now - self.last_report < 0.1:
            return
        self.last_report = now
        job = self.job
        elapsed = now - self.started
        this_run = self.rows_done - job.resumed_rows
        rate = this_run / elapsed if elapsed > 0 else 0.0
        total = job.reader.total_rows
        fraction = eta = None
        if final:
            fraction, eta = 1.0, 0.0
        elif total:
            fraction = self.rows_done / total
            eta = (total - self.rows_done) / rate if rate > 0 else None
        elif job.reader.total_bytes and self.bytes_at_start is not None:
            fraction = min(1.0, self.position / job.reader.total_bytes)
            share = (self.position - self.bytes_at_start) / job.reader.total_bytes
            eta = elapsed * (1.0 - fraction) / share if share > 0 else None
        p = Progress(self.rows_done, self.committer.rows, self.failed, total if total is not None else
                     (self.rows_done if final else None), fraction, elapsed, rate, eta)
        for callback in job.callbacks:
            callback(p)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
