"""``modelserve batch``: score a whole dataset offline through the same Runtime as the server.

A batch job runs the model's own version, backend, instances and dynamic batcher (it submits
through :meth:`modelserve.Runtime.submit`, like every frontend), so a model behaves the same
online and offline. It reads the input in chunks and writes outputs as chunks complete, with
memory bounded by the chunks and requests in flight, never by the dataset's size.

Examples::

    modelserve batch --model-repository examples/models --model mlp --input x.npy --output y.npy
    modelserve batch --model-repository repo --model ranker --version stable \\
        --input users.parquet --output scores.parquet --id-column user_id --on-error skip

    with modelserve.Runtime("examples/models") as rt:
        result = rt.run_batch("mlp", "x.npy", "y.npy")   # -> BatchResult
        print(result.summary())

Formats, by the file name's ending (or --input-format/--output-format): ``.npy``, ``.npz``,
``.parquet`` (pyarrow: ``pip install 'modelserve[batch]'``), ``.jsonl``/``.ndjson``, ``.csv``.
Any input format may be written as any output format.

Inputs. A row of the dataset is one row of every input tensor (the batch dimension); ``shape``
below is the input's shape without it.

- npy: one array ``[rows, *shape]``, for a model with one input. npz: one array per input,
  named after it, every array the same number of rows; other arrays may be ID columns.
- CSV, JSON Lines, Parquet: an input ``INPUT0`` is read from, in this order, the mapping
  ``--map INPUT0=COL`` (one column) or ``--map INPUT0=C1,C2,...`` (one scalar column per element,
  flattened row-major); a column named ``INPUT0``; or columns ``INPUT0_0 .. INPUT0_{k-1}``. A
  one-column tensor is, per row, a list (JSON array in a CSV cell, nested or flat) with the
  input's elements, or a plain value when it has one element.
- Datatypes: a typed file (npy, npz, Parquet) must hold the input's datatype: a float64 or
  int32 .npy for an FP32 input raises :class:`InputError` naming the file, the input, its
  datatype and the file's. ``--cast`` (``cast=True``) converts any numeric datatype instead,
  and refuses every value that does not fit (the row fails, naming the value, its place in the
  row and the datatype): a float that would become inf (1e300 into FP32), an integer outside
  the range (2**40 into INT32), a float into an integer input that is not a whole number (2.5,
  NaN, inf); values may round to the nearest value of the datatype (float64 -> FP32, large
  integers -> floats). Text and JSON numbers have no datatype of their own: they are read as
  the input's (int -> float, float64 -> FP32, int64 -> INT32), refusing the values that do not
  fit, and floats into an integer input need ``--cast``. Numbers never become BOOL, not even
  with ``--cast``. BYTES take text (UTF-8) or bytes.
  Variable dimensions (-1) are fixed by the data: a table format needs every row in the same
  shape (split a dataset of several shapes into files of one shape each).

Outputs keep the input's row order: row i of the output is row i of the input, failed rows
included (null in CSV, JSON Lines and Parquet; NaN, or 0 for integer outputs, in npy/npz).
The layout mirrors the inputs': npy holds the one output; npz an array per output; CSV one
column per output element (``OUTPUT0_0..``, or ``OUTPUT0`` for one element); JSON Lines and
Parquet one column per output (nested lists shaped like the tensor). ``--id-column COL``
(repeatable) copies input columns, numbers as numbers and anything else as text, in front of the
outputs and into the errors file. ``--outputs A,B`` writes only those outputs.

Requests and memory. The dataset is cut into chunks of ``--chunk-rows`` rows (default
max(4096, 16 x batch size), rounded up to whole batches) and each chunk into requests of
``--batch-size`` rows (default the model's ``max_batch_size``; 1 for a model that does not
batch). Up to ``--max-in-flight`` requests (default max(8, 4 x instances), at most the model's
``max_queue_size``) are queued at once, which keeps every instance busy; the reader stays one
chunk ahead and the writer at most two behind, so memory holds a few chunks plus the requests in
flight, whatever the dataset's size. Chunks always start at multiples of the chunk size, so the
requests (and the batches the model runs) are the same from run to run, resumed or not.

Failures. Bad input stops the job before any request: an unreadable file, a missing column, a
wrong datatype, a value that does not fit the input's datatype, a ragged row (a wrong count of
elements or fields) in the schema or anywhere in the first chunk (of a fresh start) raises
:class:`InputError` (an ``InvalidArgumentError``), whose message names the file, the column,
the row (0-based; text formats add the line) and the expected type.
``--validate-only`` reads and checks the whole input without running the model. Past the first
chunk, a row that cannot be read, and a row the model fails, is written to the errors file
(``OUTPUT.errors.jsonl``: ``{"row", "ids", "status", "error"}`` per failed row) and the job goes
on; ``--on-error fail`` stops it at the first one instead. When a request of several rows fails,
its rows are retried one by one, so only the rows at fault fail.

Resumption. The output is built in ``OUTPUT.partial/``: data files appended chunk by chunk and a
journal that records, after each chunk's data is fsync'd, the input position, the data files'
sizes and the counts so far. An interrupted job (Ctrl-C, a crash, a killed process) is resumed
by running it again: a matching journal (same model version, input file, formats, mapping, and
request and chunk sizes, which a rerun keeps unless given) is picked up, the files are cut back to the last committed chunk, and reading resumes at
its position; nothing committed is redone, and the output is the same as an uninterrupted run's.
``--restart`` discards it instead. The last step moves the finished file to ``OUTPUT``
(npz and Parquet are assembled from the parts by one streaming copy).

Progress: a bar with rows/s and ETA on stderr when it is a terminal (at most 10 updates a
second), nothing otherwise; the summary (rows, time, rows/s, failures) is printed at the end.
A resumed run's summary counts the rows it did itself with its time and rate, then the whole
("4,976 rows in 1.0 s (4,976 rows/s), resumed after row 1,024: 6,000 rows in all").

Exit status: 0 when every row succeeded; 3 when the job finished but rows failed (see the errors
file); 1 when it could not run or stopped (bad input, a model error with --on-error fail);
2 for bad options; 130 when interrupted (run it again to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._cli import standalone_main
from ._job import BatchResult, run_batch
from ._progress import Progress
from ._schema import InputError

__all__ = ["add_parser", "main", "run_batch", "BatchResult", "Progress", "InputError"]

_DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")
_EPILOG = "Exit status" + __doc__.replace("``", "").partition("\nExit status")[2]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _mapping(text: str) -> tuple[str, list[str]]:
    name, sep, columns = text.partition("=")
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    if not sep or not name.strip() or not cols:
        raise argparse.ArgumentTypeError(f"invalid mapping {text!r}: expected INPUT=COLUMN or INPUT=C1,C2,...")
    return name.strip(), cols


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = ["npy", "npz", "parquet", "jsonl", "csv"]
    required = parser.add_argument_group("job")
    required.add_argument("--model-repository", required=True, metavar="PATH", help="the model repository folder")
    required.add_argument("-m", "--model", required=True, metavar="NAME", help="the model to run")
    required.add_argument("--version", metavar="V|LABEL", default=None,
                          help="version number or label (default: the model's default version)")
    required.add_argument("--input", required=True, metavar="FILE", help=".npy, .npz, .parquet, .jsonl or .csv")
    required.add_argument("--output", required=True, metavar="FILE", help="written in the format of its ending")
    required.add_argument("--batch-size", type=_positive_int, metavar="N",
                          help="rows per request (default: the model's max_batch_size)")
    columns = parser.add_argument_group("columns")
    columns.add_argument("--map", type=_mapping, action="append", default=[], metavar="INPUT=COL[,COL...]",
                         help="read INPUT from this column, or from these scalar columns (repeatable)")
    columns.add_argument("--id-column", action="append", default=[], metavar="COL",
                         help="copy this input column to the output and the errors file (repeatable)")
    columns.add_argument("--outputs", metavar="NAME[,NAME...]", help="write only these outputs")
    columns.add_argument("--input-format", choices=formats, help="instead of the input's name ending")
    columns.add_argument("--output-format", choices=formats, help="instead of the output's name ending")
    run = parser.add_argument_group("running")
    run.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                     help="skip: failed rows go to the errors file (default); fail: stop at the first")
    run.add_argument("--errors", metavar="FILE", help="the errors file (default: OUTPUT.errors.jsonl)")
    run.add_argument("--max-in-flight", type=_positive_int, metavar="N",
                     help="requests queued at once (default: max(8, 4 x instances))")
    run.add_argument("--chunk-rows", type=_positive_int, metavar="N",
                     help="rows read, written and journalled together (default: max(4096, 16 x batch size))")
    run.add_argument("--restart", action="store_true", help="discard an interrupted run's output instead of "
                     "resuming it")
    run.add_argument("--validate-only", action="store_true", help="read and check the whole input; run nothing")
    run.add_argument("--cast", action="store_true",
                     help="convert npy/npz/Parquet values of another numeric datatype to the input's, refusing "
                     "values that do not fit (default: such a file is refused)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``batch`` subcommand on an argparse ``subparsers`` object; ``args.run(args)``
    executes it and returns the exit status."""
    parser = subparsers.add_parser(
        "batch", help="score a dataset file offline (npy, npz, Parquet, JSON Lines, CSV)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=_run_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``modelserve batch`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    return standalone_main("modelserve batch", _DESCRIPTION, _EPILOG, add_arguments, _run_command, argv)


def _error(message: str) -> None:
    print(f"modelserve batch: error: {message}", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ModelserveError
    from ..runtime import Runtime
    from ._journal import committed_rows

    mapping: dict[str, list[str]] = {}
    for name, cols in args.map:
        if name in mapping:
            _error(f"--map {name}=... is given twice")
            return 2
        mapping[name] = cols
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None
    version = int(args.version) if args.version is not None and args.version.isdigit() else args.version
    if not Path(args.model_repository).is_dir():
        _error(f"--model-repository {args.model_repository}: no such folder")
        return 1  # a run-time failure, like a missing input file (usage errors are 2)
    try:
        with Runtime(args.model_repository, model_control_mode="explicit", load_models=[args.model]) as rt:
            result = run_batch(
                rt, args.model, args.input, args.output, version=version, batch_size=args.batch_size,
                columns=mapping, id_columns=args.id_column, outputs=outputs, input_format=args.input_format,
                output_format=args.output_format, on_error=args.on_error, errors=args.errors,
                max_in_flight=args.max_in_flight, chunk_rows=args.chunk_rows, restart=args.restart,
                progress=not args.no_progress, validate_only=args.validate_only, cast=args.cast)
    except KeyboardInterrupt:
        done = committed_rows(Path(args.output)) if not args.validate_only else 0
        print(f"modelserve batch: interrupted; {done:,} rows are committed in {args.output}.partial/; run the "
              "same command again to resume", file=sys.stderr)
        return 130
    except (ModelserveError, OSError) as e:
        _error(str(e))
        return 1
    if args.validate_only:
        print(f"modelserve batch: {args.input}: {result.rows:,} rows, every one readable as the inputs of "
              f"model '{result.model}' version {result.version}", file=sys.stderr)
        return 0
    print(f"modelserve batch: {result.summary()}", file=sys.stderr)
    return 3 if result.failed else 0
