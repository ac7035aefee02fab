"""Batch (offline) inference: ``Runtime.run_batch`` and ``modelserve batch``.

The models: ``mlp`` and ``recommender`` from the bundled examples, and small Python models
written here: ``double`` (OUTPUT0 = 2 x INPUT0, FP32 [2]; a row whose first value is -1 makes its
batch fail, and BATCH_TEST_DELAY seconds of sleep per batch slow it down for the crash test),
``upper`` (BYTES in, BYTES out), ``total`` (a model that does not batch) and ``shift`` (OUTPUT0 =
INPUT0 + 1, INT32 [2]).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import modelserve
from modelserve import batch
from modelserve.batch import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"
FORMATS = ["npy", "npz", "csv", "jsonl", "parquet"]

DOUBLE = """
import os
import time

class Model:
    def execute(self, inputs):
        x = inputs["INPUT0"]
        if (x[:, 0] == -1).any():
            raise ValueError("poison row in this batch")
        delay = float(os.environ.get("BATCH_TEST_DELAY", "0"))
        if delay:
            time.sleep(delay)
        return {"OUTPUT0": x * 2}
"""

UPPER = """
import numpy as np

class Model:
    def execute(self, inputs):
        x = inputs["TEXT"]
        out = np.empty(x.shape, dtype=object)
        out.reshape(-1)[:] = [v.upper() for v in x.reshape(-1)]
        return {"UPPER": out}
"""

TOTAL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"].sum(keepdims=True)}
"""

SHIFT = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"] + 1}
"""


def write_model(repo: Path, name: str, config: str, code: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.yaml").write_text(config)
    (repo / name / "1" / "model.py").write_text(code)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("mlp", "recommender"):
        (repo / name).symlink_to(EXAMPLES / name, target_is_directory=True)
    write_model(repo, "double", """
backend: python
max_batch_size: 8
inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]
""", DOUBLE)
    write_model(repo, "upper", """
backend: python
max_batch_size: 8
inputs: [{name: TEXT, datatype: BYTES, shape: [1]}]
outputs: [{name: UPPER, datatype: BYTES, shape: [1]}]
""", UPPER)
    write_model(repo, "total", """
backend: python
max_batch_size: 0
inputs: [{name: INPUT0, datatype: FP32, shape: [3]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [1]}]
""", TOTAL)
    write_model(repo, "shift", """
backend: python
max_batch_size: 8
inputs: [{name: INPUT0, datatype: INT32, shape: [2]}]
outputs: [{name: OUTPUT0, datatype: INT32, shape: [2]}]
""", SHIFT)
    return repo


@pytest.fixture(scope="module")
def rt(repo):
    with modelserve.Runtime(repo) as runtime:
        yield runtime


def requests_served(rt, model: str) -> int:
    """Requests the model has completed (succeeded or failed), all versions."""
    return sum(s["success_count"] + s["failure_count"] for s in rt.model_statistics(model))


# --- writing inputs and reading outputs in every format ------------------------------------------

def write_input(path: Path, columns: dict[str, np.ndarray], fmt: str) -> None:
    """``columns``: name -> array with rows first. A 2-D column is one tensor per row."""
    if fmt == "npy":
        (array,) = columns.values()
        np.save(path, array)
    elif fmt == "npz":
        np.savez(path, **columns)
    elif fmt == "jsonl":
        rows = zip(*(c.tolist() for c in columns.values()))
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(list(columns))
            for r in zip(*(c.tolist() for c in columns.values())):
                out.writerow([json.dumps(v) if isinstance(v, list) else v for v in r])
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({k: list(v) if v.ndim > 1 else v for k, v in columns.items()}), path,
                       row_group_size=300)


def read_output(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """Output columns as arrays: tensors ``[rows, ...]``, failed rows NaN (float outputs)."""
    if fmt == "npy":
        return {"": np.load(path)}
    if fmt == "npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {k: np.array([r[k] if r[k] is not None else np.nan for r in rows]) for k in (rows[0] if rows else {})}
    if fmt == "csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        return {k: np.array([r[i] for r in body]) for i, k in enumerate(header)}
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(path)
    return {k: np.array([v if v is not None else [np.nan] * 2 for v in table.column(k).to_pylist()])
            for k in table.column_names}


def doubled(out: dict[str, np.ndarray], fmt: str) -> np.ndarray:
    """OUTPUT0 of the ``double`` model as FP32 [rows, 2], whatever the format's layout."""
    if fmt == "npy":
        return out[""]
    if fmt == "csv":
        return np.stack([np.where(out[f"OUTPUT0_{i}"] == "", "nan", out[f"OUTPUT0_{i}"]).astype(np.float32)
                         for i in range(2)], axis=1)
    values = out["OUTPUT0"]
    return np.array([v if np.ndim(v) else [v, v] for v in values.tolist()], np.float32)


def pairs(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, (rows, 2)).astype(np.float32) / 8


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_row_order_and_ids(rt, tmp_path, fmt):
    x = pairs(1000)
    ids = np.random.default_rng(1).permutation(1000).astype(np.int64) + 10_000
    columns = {"INPUT0": x} if fmt == "npy" else {"INPUT0": x, "key": ids}
    source, target = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    write_input(source, columns, fmt)
    result = rt.run_batch("double", source, target, batch_size=8, chunk_rows=96,
                          id_columns=() if fmt == "npy" else ["key"], progress=False)
    assert (result.rows, result.failed, result.errors) == (1000, 0, None)
    out = read_output(target, fmt)
    assert np.array_equal(doubled(out, fmt), x * 2)
    if fmt != "npy":
        assert np.array_equal(out["key"].astype(np.int64), ids)
    assert not target.with_name(target.name + ".partial").exists()


@pytest.mark.parametrize("fmt", ["npz", "csv", "jsonl", "parquet"])
def test_output_feeds_another_job_in_each_format(rt, tmp_path, fmt):
    """Outputs are laid out the way inputs are read, so a job's output is the next one's input."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    x = pairs(200)
    write_input(tmp_path / "in.npy", {"INPUT0": x}, "npy")
    rt.run_batch("double", tmp_path / "in.npy", tmp_path / f"mid.{fmt}", progress=False)
    rt.run_batch("double", tmp_path / f"mid.{fmt}", tmp_path / "out.npy", columns={"INPUT0": "OUTPUT0"}
                 if fmt != "csv" else {"INPUT0": ["OUTPUT0_0", "OUTPUT0_1"]}, progress=False)
    assert np.array_equal(np.load(tmp_path / "out.npy"), x * 4)


def test_mlp_scores_equal_runtime_infer(rt, tmp_path):
    x = np.random.default_rng(2).standard_normal((1000, 256), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = rt.run_batch("mlp", tmp_path / "x.npy", tmp_path / "y.npy", progress=False)
    y = np.load(tmp_path / "y.npy")
    assert result.rows == 1000 and y.shape == (1000, 10) and y.dtype == np.float32
    expected = np.concatenate([rt.infer("mlp", {"INPUT0": x[i:i + 64]})["OUTPUT0"] for i in range(0, 1000, 64)])
    assert np.array_equal(y, expected)


def test_csv_scalar_columns_mapped_to_a_tensor_into_parquet(rt, tmp_path):
    pytest.importorskip("pyarrow")
    x = pairs(50)
    source = tmp_path / "in.csv"
    source.write_text("name,a,b\n" + "".join(f"r{i},{a},{b}\n" for i, (a, b) in enumerate(x.tolist())))
    rt.run_batch("double", source, tmp_path / "out.parquet", columns={"INPUT0": "a,b"}, id_columns=["name"],
                 progress=False)
    out = read_output(tmp_path / "out.parquet", "parquet")
    assert out["name"].tolist() == [f"r{i}" for i in range(50)]
    assert np.array_equal(out["OUTPUT0"].astype(np.float32), x * 2)


def test_recommender_two_outputs_by_version_label_into_npz(rt, tmp_path):
    users = np.arange(100, dtype=np.int64)
    np.save(tmp_path / "users.npy", users)  # 1-D: one value per row for USER_ID [1]
    result = rt.run_batch("recommender", tmp_path / "users.npy", tmp_path / "top.npz", version="stable",
                          progress=False)
    assert result.version == 1
    with np.load(tmp_path / "top.npz") as z:
        expected = rt.infer("recommender", {"USER_ID": users[:64, None]}, version=1)
        assert np.array_equal(z["ITEMS"][:64], expected["ITEMS"])
        assert z["SCORES"].shape == (100, 10)


def test_bytes_tensors_through_text_formats(rt, tmp_path):
    source = tmp_path / "words.jsonl"
    source.write_text("".join(json.dumps({"TEXT": w, "n": i}) + "\n" for i, w in enumerate(["ab", "héllo", "x"])))
    rt.run_batch("upper", source, tmp_path / "out.csv", id_columns=["n"], progress=False)
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["n", "UPPER"], ["0", "AB"], ["1", "HéLLO"], ["2", "X"]]


def test_model_without_batching_runs_row_by_row(rt, tmp_path):
    x = pairs(30).repeat(2, axis=1)[:, :3]
    np.save(tmp_path / "x.npy", x)
    rt.run_batch("total", tmp_path / "x.npy", tmp_path / "y.npy", progress=False)
    assert np.allclose(np.load(tmp_path / "y.npy")[:, 0], x.sum(axis=1))


# --- bounded memory ------------------------------------------------------------------------------

def test_dataset_larger_than_the_in_flight_budget_runs_in_bounded_memory(rt, tmp_path):
    rows, width = 40_000, 256  # 40 MB of FP32, written in slices
    source = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(source, "w+", np.float32, (rows, width))
    rng = np.random.default_rng(3)
    for i in range(0, rows, 5000):
        big[i:i + 5000] = rng.standard_normal((5000, width), dtype=np.float32)
    big.flush()
    del big
    dataset = rows * width * 4
    budget = 4 * 64 * width * 4  # max_in_flight x batch rows x row bytes
    tracemalloc.start()
    try:
        result = rt.run_batch("mlp", source, tmp_path / "out.npy", max_in_flight=4, chunk_rows=512, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows == rows
    assert dataset > 100 * budget
    assert peak < dataset / 8, f"peak {peak / 1e6:.1f} MB of Python/numpy memory for a {dataset / 1e6:.0f} MB input"
    assert np.load(tmp_path / "out.npy", mmap_mode="r").shape == (rows, 10)


# --- failed rows ---------------------------------------------------------------------------------

def poisoned(rows: int, bad: list[int]) -> np.ndarray:
    x = pairs(rows)
    x[bad, 0] = -1
    return x


def test_failed_rows_go_to_the_errors_file_and_the_rest_is_scored(rt, tmp_path):
    x = poisoned(300, [5, 6, 150])
    ids = [f"row-{i}" for i in range(300)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"INPUT0": r, "id": i}) + "\n" for r, i in zip(x.tolist(), ids)))
    target = tmp_path / "out.jsonl"
    result = rt.run_batch("double", source, target, id_columns=["id"], chunk_rows=64, progress=False)
    assert (result.rows, result.failed) == (300, 3)
    assert result.errors == tmp_path / "out.jsonl.errors.jsonl"
    errors = [json.loads(line) for line in result.errors.read_text().splitlines()]
    assert [e["row"] for e in errors] == [5, 6, 150]
    assert [e["ids"]["id"] for e in errors] == ["row-5", "row-6", "row-150"]
    assert all(e["status"] == "INTERNAL" and "poison row" in e["error"] for e in errors)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in lines] == ids
    assert lines[5]["OUTPUT0"] is None and lines[150]["OUTPUT0"] is None
    good = [i for i in range(300) if i not in (5, 6, 150)]
    assert np.array_equal(np.array([lines[i]["OUTPUT0"] for i in good], np.float32), x[good] * 2)


def test_on_error_fail_stops_at_the_first_failed_row(rt, tmp_path):
    np.save(tmp_path / "x.npy", poisoned(100, [42]))
    with pytest.raises(modelserve.InternalError, match=r"row 42 failed: .*poison row"):
        rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", on_error="fail", progress=False)
    assert not (tmp_path / "y.npy").exists()


def test_unreadable_row_past_the_first_chunk_is_a_failed_row(rt, tmp_path):
    rows = [json.dumps({"INPUT0": [i, i]}) for i in range(200)]
    rows[150] = json.dumps({"INPUT0": [1, 2, 3]})  # ragged, in the third chunk
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + "\n")
    result = rt.run_batch("double", source, tmp_path / "out.npy", chunk_rows=64, progress=False)
    assert result.failed == 1
    (error,) = [json.loads(line) for line in result.errors.read_text().splitlines()]
    assert error["row"] == 150 and error["status"] == "INVALID_ARGUMENT"
    assert "column 'INPUT0', row 150 (line 151): holds 3 values; expected FP32 [2]" in error["error"]
    assert np.isnan(np.load(tmp_path / "out.npy")[150]).all()
    with pytest.raises(InputError, match="row 150"):
        rt.run_batch("double", source, tmp_path / "out2.npy", chunk_rows=64, on_error="fail", progress=False)


# --- resumption ----------------------------------------------------------------------------------

class CtrlC:
    """The Runtime as a batch job sees it, with Ctrl-C pressed as the job submits its
    ``after + 1``-th request."""

    def __init__(self, rt, after: int) -> None:
        self.rt = rt
        self.after = after
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        if self.submitted > self.after:
            raise KeyboardInterrupt
        return self.rt.submit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.rt, name)


@pytest.mark.parametrize("fmt", ["npy", "jsonl", "parquet"])
def test_resume_after_interruption_gives_the_uninterrupted_output(rt, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    x = np.random.default_rng(4).standard_normal((6000, 256), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    whole, resumed = tmp_path / f"whole.{fmt}", tmp_path / f"resumed.{fmt}"
    rt.run_batch("mlp", tmp_path / "x.npy", whole, chunk_rows=512, progress=False)
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(CtrlC(rt, 40), "mlp", tmp_path / "x.npy", resumed, chunk_rows=512, progress=False)
    assert not resumed.exists() and (tmp_path / f"resumed.{fmt}.partial" / "journal.jsonl").exists()
    assert 1024 <= batch._journal.committed_rows(resumed) < 6000
    served = requests_served(rt, "mlp")
    result = rt.run_batch("mlp", tmp_path / "x.npy", resumed, chunk_rows=512, progress=False)
    assert result.resumed_rows >= 1024 and result.rows == 6000
    assert requests_served(rt, "mlp") - served == -(-(6000 - result.resumed_rows) // 64)  # nothing redone
    assert resumed.read_bytes() == whole.read_bytes()


def test_progress_callback_sees_rows_and_may_stop_the_job(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCH_TEST_DELAY", "0.002")  # 250 batches: about 0.5 s or more
    np.save(tmp_path / "x.npy", pairs(2000))
    seen: list[batch.Progress] = []

    def stop_after_two_chunks(p: batch.Progress) -> None:
        seen.append(p)
        if p.rows_committed >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", chunk_rows=64,
                     progress=stop_after_two_chunks)
    assert all(p.total_rows == 2000 and p.rows_committed <= p.rows_done for p in seen)
    assert seen[-1].rows_committed >= 128 and seen[-1].rows_per_s > 0 and seen[-1].eta_s is not None
    result = rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", progress=False)  # 64 kept
    assert result.resumed_rows >= 128 and result.rows == 2000


def test_resumed_run_skips_a_bad_row_as_the_interrupted_run_would(rt, tmp_path):
    rows = [json.dumps({"INPUT0": [i, i]}) for i in range(300)]
    rows[100] = json.dumps({"INPUT0": [1]})  # ragged, in the second chunk
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + "\n")
    rt.run_batch("double", source, tmp_path / "whole.jsonl", chunk_rows=64, progress=False)
    with pytest.raises(KeyboardInterrupt):  # the first chunk committed, the second not
        batch.run_batch(CtrlC(rt, 10), "double", source, tmp_path / "out.jsonl", chunk_rows=64, progress=False)
    assert batch._journal.committed_rows(tmp_path / "out.jsonl") == 64
    result = rt.run_batch("double", source, tmp_path / "out.jsonl", chunk_rows=64, progress=False)
    assert (result.resumed_rows, result.failed) == (64, 1)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_resumed_run_summary_counts_this_run_rows_over_this_run_time(rt, tmp_path):
    np.save(tmp_path / "x.npy", pairs(2000))
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(CtrlC(rt, 40), "double", tmp_path / "x.npy", tmp_path / "y.npy", chunk_rows=64,
                        progress=False)
    result = rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", progress=False)
    resumed = result.resumed_rows
    assert 64 <= resumed < 2000 and result.rows_this_run == 2000 - resumed
    assert result.rows_per_s == pytest.approx(result.rows_this_run / result.seconds)
    assert result.summary().startswith(
        f"double v1: {2000 - resumed:,} rows in {result.seconds:.1f} s ({result.rows_per_s:,.0f} rows/s), "
        f"resumed after row {resumed:,}: 2,000 rows in all, 0 failed")


def test_resume_drops_what_a_crash_left_half_written(rt, tmp_path):
    x = np.random.default_rng(5).standard_normal((3000, 256), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    rt.run_batch("mlp", tmp_path / "x.npy", tmp_path / "whole.csv", chunk_rows=512, progress=False)
    target = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(CtrlC(rt, 20), "mlp", tmp_path / "x.npy", target, chunk_rows=512, progress=False)
    work = tmp_path / "out.csv.partial"
    with open(work / "data.csv", "ab") as f:
        f.write(b"1.0,2.0,half a ro")  # a chunk being appended when the power went
    with open(work / "journal.jsonl", "ab") as f:
        f.write(b'{"chunk": 99, "end": {"ro')  # a journal line being appended
    rt.run_batch("mlp", tmp_path / "x.npy", target, chunk_rows=512, progress=False)
    assert target.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_killed_process_resumes_to_the_same_output(repo, rt, tmp_path):
    x = pairs(2000)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / "out.npy"
    command = [sys.executable, "-m", "modelserve.batch", "--model-repository", str(repo), "--model", "double",
               "--input", str(tmp_path / "x.npy"), "--output", str(target), "--chunk-rows", "64"]
    env = dict(os.environ, BATCH_TEST_DELAY="0.01")
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = tmp_path / "out.npy.partial" / "journal.jsonl"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("\n") >= 4:  # the header + 3 chunks
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("the batch job committed nothing in 30 s")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert not target.exists()
    result = rt.run_batch("double", tmp_path / "x.npy", target, chunk_rows=64, progress=False)
    assert result.resumed_rows >= 192
    assert np.array_equal(np.load(target), x * 2)


def test_resume_refuses_the_work_of_another_job_unless_restarted(rt, tmp_path):
    x = pairs(2000)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / "y.npy"
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(CtrlC(rt, 40), "double", tmp_path / "x.npy", target, chunk_rows=64, progress=False)
    np.save(tmp_path / "x.npy", x[:1000])  # the input changed
    with pytest.raises(modelserve.InvalidArgumentError, match=r"different job \(input was .*--restart"):
        rt.run_batch("double", tmp_path / "x.npy", target, chunk_rows=64, progress=False)
    result = rt.run_batch("double", tmp_path / "x.npy", target, chunk_rows=64, restart=True, progress=False)
    assert result.resumed_rows == 0 and np.array_equal(np.load(target), x[:1000] * 2)


# --- bad input stops the job before any work -----------------------------------------------------

def expect_input_error(rt, tmp_path, source: Path, model: str = "double", **options) -> InputError:
    before = requests_served(rt, model)
    with pytest.raises(InputError) as caught:
        rt.run_batch(model, source, tmp_path / "out.jsonl", progress=False, **options)
    assert requests_served(rt, model) == before
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.partial").exists()
    assert str(source) in str(caught.value)
    return caught.value


def test_missing_column_names_the_file_column_and_expected_type(rt, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("a,b\n1,2\n")
    e = expect_input_error(rt, tmp_path, source)
    assert (e.column, e.expected) == ("INPUT0", "FP32 [2] (2 values per row)")
    assert "INPUT0_0..INPUT0_1" in str(e) and "the file's columns: a, b" in str(e)


def test_wrong_dtype_names_the_column_and_expected_type(rt, tmp_path):
    np.save(tmp_path / "users.npy", np.zeros((10, 1)))  # float64 ids for an INT64 input
    e = expect_input_error(rt, tmp_path, tmp_path / "users.npy", model="recommender")
    assert e.column == "USER_ID" and "float64" in str(e) and "expected INT64 [1]" in str(e)


@pytest.mark.parametrize("fmt, dtype", [("npy", np.float64), ("npy", np.int32), ("npz", np.float64),
                                        ("parquet", np.float64)])
def test_typed_file_of_another_datatype_is_refused_naming_input_and_datatypes(rt, tmp_path, fmt, dtype):
    source = tmp_path / f"in.{fmt}"
    write_input(source, {"INPUT0": pairs(20).astype(dtype)}, fmt)
    e = expect_input_error(rt, tmp_path, source)
    found = {"npy": np.dtype(dtype).name, "npz": "float64", "parquet": "list<element: double>"}[fmt]
    assert e.column == "INPUT0" and e.expected == "FP32 [2] (2 values per row)"
    assert f"holds {found}, but input 'INPUT0' is FP32 (float32): a file's datatype must be the input's; " \
           "give --cast (cast=True) to convert it" in str(e)


def test_cast_converts_another_datatype_to_the_input_datatype(rt, tmp_path):
    x = pairs(300)
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    result = rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", cast=True, progress=False)
    assert (result.rows, result.failed) == (300, 0)
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and np.array_equal(y, x * 2)


def test_cast_refuses_a_float_that_overflows_the_input_datatype(rt, tmp_path):
    x = pairs(20).astype(np.float64)
    x[3, 1] = 1e300
    np.save(tmp_path / "x.npy", x)
    e = expect_input_error(rt, tmp_path, tmp_path / "x.npy", cast=True)
    assert (e.column, e.row) == ("INPUT0", 3)
    assert "row 3: element 1 of the row, 1e+300, does not fit input 'INPUT0': outside FP32's finite range " \
           "[-3.4028235e+38, 3.4028235e+38]; expected FP32 [2]" in str(e)


def test_cast_value_that_does_not_fit_past_the_first_chunk_is_a_failed_row(rt, tmp_path):
    x = pairs(200).astype(np.float64)
    x[150, 0] = -1e300
    np.save(tmp_path / "x.npy", x)
    result = rt.run_batch("double", tmp_path / "x.npy", tmp_path / "y.npy", chunk_rows=64, cast=True,
                          progress=False)
    assert (result.rows, result.failed) == (200, 1)
    (error,) = [json.loads(line) for line in result.errors.read_text().splitlines()]
    assert error["row"] == 150 and error["status"] == "INVALID_ARGUMENT"
    assert "element 0 of the row, -1e+300, does not fit input 'INPUT0': outside FP32's finite range" in error["error"]
    y = np.load(tmp_path / "y.npy")
    assert np.isnan(y[150]).all() and np.isfinite(np.delete(y, 150, axis=0)).all()


def test_cast_refuses_an_integer_outside_the_input_range(rt, tmp_path):
    x = np.arange(40, dtype=np.int64).reshape(20, 2)
    x[7, 0] = 2**40
    np.save(tmp_path / "x.npy", x)
    expect_input_error(rt, tmp_path, tmp_path / "x.npy", model="shift")  # int64 for INT32: refused
    e = expect_input_error(rt, tmp_path, tmp_path / "x.npy", model="shift", cast=True)
    assert e.row == 7 and "element 0 of the row, 1099511627776, does not fit input 'INPUT0': outside " \
           "INT32's range [-2147483648, 2147483647]" in str(e)


def test_cast_takes_whole_floats_into_an_integer_input_and_refuses_the_rest(rt, tmp_path):
    np.save(tmp_path / "whole.npy", np.array([[1.0, -2.0], [3.0, 2.0**31 - 1]]))
    rt.run_batch("shift", tmp_path / "whole.npy", tmp_path / "out.npy", cast=True, progress=False)
    out = np.load(tmp_path / "out.npy")
    assert out.dtype == np.int32 and out.tolist() == [[2, -1], [4, -2**31]]  # 2**31 - 1 + 1 wraps in the model
    for value, reason in ((2.5, "not a whole number"), (np.nan, "not a finite number"),
                          (2.0**31, "outside INT32's range")):
        np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [value, 4.0]]))
        e = expect_input_error(rt, tmp_path, tmp_path / "x.npy", model="shift", cast=True)
        assert e.row == 1 and f"element 0 of the row, {float(value)!r}, does not fit input 'INPUT0': {reason}" in str(e)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_value_that_overflows_fp32_is_refused(rt, tmp_path, fmt):
    source = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        source.write_text("INPUT0_0,INPUT0_1\n1,2\n3,1e300\n")
    else:
        source.write_text('{"INPUT0": [1, 2]}\n{"INPUT0": [3, 1e300]}\n')
    e = expect_input_error(rt, tmp_path, source)
    assert e.row == 1 and "outside FP32's finite range [-3.4028235e+38, 3.4028235e+38]" in str(e)
    assert ("'1e300' is" if fmt == "csv" else "element 1 of the row, 1e+300,") in str(e)


def test_unparseable_cell_names_the_row_line_and_column(rt, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("INPUT0_0,INPUT0_1\n1,2\n3,4\n5,abc\n")
    e = expect_input_error(rt, tmp_path, source)
    assert (e.column, e.row, e.line) == ("INPUT0_1", 2, 4)
    assert str(e) == f"{source}: column 'INPUT0_1', row 2 (line 4): cannot read 'abc' as FP32; expected FP32"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ragged_row_names_the_row_and_expected_shape(rt, tmp_path, fmt):
    source = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        source.write_text('INPUT0\n"[1, 2]"\n"[1, 2, 3]"\n')
    else:
        source.write_text('{"INPUT0": [1, 2]}\n{"INPUT0": [[1], [2, 3]]}\n')
    e = expect_input_error(rt, tmp_path, source)
    assert (e.column, e.row, e.line) == ("INPUT0", 1, 3 if fmt == "csv" else 2)
    assert "expected FP32 [2]" in str(e)


def test_csv_row_with_missing_fields_is_ragged(rt, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("INPUT0_0,INPUT0_1\n1,2\n3\n")
    e = expect_input_error(rt, tmp_path, source)
    assert (e.row, e.line) == (1, 3) and "ragged: 1 field, the header has 2" in str(e)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not an array", "not a .npy array"),
])
def test_unreadable_file_is_named(rt, tmp_path, content, message):
    source = tmp_path / "in.npy"
    if content is not None:
        source.write_bytes(content)
    e = expect_input_error(rt, tmp_path, source)
    assert message in str(e)


def test_npy_for_a_model_of_several_inputs_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(InputError, match=r"model 'two' has 2 inputs \(A, B\); use an .npz"):
        batch.run_batch(FakeTwoInputs(), "two", tmp_path / "x.npy", tmp_path / "y.npz", progress=False)


class FakeTwoInputs:
    """A Runtime stand-in whose model has two inputs (only the metadata is asked for)."""

    def resolve_version(self, model, version=None):
        return 1

    def model_metadata(self, model, version=None):
        tensor = {"datatype": "FP32", "shape": [-1, 2]}
        return {"inputs": [{"name": "A", **tensor}, {"name": "B", **tensor}], "outputs": [{"name": "C", **tensor}]}

    def model_config(self, model, version=None):
        return {"max_batch_size": 8, "instances": {"count": 1}}


def test_two_outputs_into_npy_is_refused_before_any_work(rt, tmp_path):
    np.save(tmp_path / "users.npy", np.arange(5, dtype=np.int64))
    with pytest.raises(modelserve.InvalidArgumentError, match="an .npy file holds one array.*write an .npz"):
        rt.run_batch("recommender", tmp_path / "users.npy", tmp_path / "top.npy", progress=False)


def test_validate_only_checks_every_row_and_runs_nothing(rt, tmp_path):
    rows = [json.dumps({"INPUT0": [i, i]}) for i in range(300)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + "\n")
    before = requests_served(rt, "double")
    assert rt.run_batch("double", source, tmp_path / "o.npy", validate_only=True, chunk_rows=64).rows == 300
    rows[299] = json.dumps({"INPUT0": "x"})
    source.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match="row 299"):
        rt.run_batch("double", source, tmp_path / "o.npy", validate_only=True, chunk_rows=64)
    assert requests_served(rt, "double") == before and not (tmp_path / "o.npy").exists()


# --- command line and progress -------------------------------------------------------------------

def test_cli_scores_a_file_and_prints_the_summary(repo, tmp_path, capsys):
    np.save(tmp_path / "x.npy", pairs(100))
    status = batch.main(["--model-repository", str(repo), "--model", "double", "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "y.csv"), "--batch-size", "4"])
    assert status == 0
    err = capsys.readouterr().err
    assert "double v1: 100 rows in" in err and "rows/s), 0 failed" in err
    assert (tmp_path / "y.csv").read_text().startswith("OUTPUT0_0,OUTPUT0_1\n")


def test_cli_exit_status_tells_failed_rows_bad_input_and_bad_options(repo, tmp_path, capsys):
    np.save(tmp_path / "x.npy", poisoned(20, [3]))
    common = ["--model-repository", str(repo), "--model", "double", "--output", str(tmp_path / "y.npy")]
    assert batch.main(common + ["--input", str(tmp_path / "x.npy")]) == 3
    assert "1 failed" in capsys.readouterr().err
    assert batch.main(common + ["--input", str(tmp_path / "missing.csv")]) == 1
    assert f"{tmp_path / 'missing.csv'}: cannot read the file: no such file" in capsys.readouterr().err
    assert batch.main(common + ["--input", str(tmp_path / "x.npy"), "--batch-size", "0"]) == 2
    assert batch.main(common + ["--input", str(tmp_path / "x.npy"), "--batch-size", "9"]) == 1
    assert "above model 'double' version 1's max_batch_size 8" in capsys.readouterr().err
    missing = ["--model-repository", str(tmp_path / "nowhere")] + common[2:]
    assert batch.main(missing + ["--input", str(tmp_path / "x.npy")]) == 1
    assert f"--model-repository {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_cli_refuses_another_datatype_unless_cast(repo, tmp_path, capsys):
    np.save(tmp_path / "x.npy", pairs(50).astype(np.float64))
    common = ["--model-repository", str(repo), "--model", "double", "--input", str(tmp_path / "x.npy"),
              "--output", str(tmp_path / "y.npy")]
    assert batch.main(common) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.npy'}: column 'INPUT0': holds float64, but input 'INPUT0' is FP32" in err
    assert "give --cast" in err
    assert batch.main(common + ["--cast"]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), pairs(50) * 2)


class Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_bar_draws_rows_per_second_and_eta_only_on_a_terminal():
    p = batch.Progress(rows_done=250_000, rows_committed=200_000, rows_failed=2, total_rows=1_000_000,
                       fraction=0.25, elapsed_s=2.5, rows_per_s=100_000.0, eta_s=7.5)
    terminal, pipe = Terminal(True), Terminal(False)
    for stream in (terminal, pipe):
        bar = batch._progress.ProgressBar("mlp v1", stream)
        bar(p)
        bar(p)  # within 0.1 s: not redrawn
        bar.close()
    assert terminal.text.count("\r") == 2  # one draw, one clear
    assert "25% |######" in terminal.text and "250,000/1,000,000 rows" in terminal.text
    assert "100,000 rows/s" in terminal.text and "ETA 0:08" in terminal.text and "2 failed" in terminal.text
    assert pipe.text == ""
