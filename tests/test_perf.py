"""``modelserve perf``, the load generator, against servers that are not modelserve.

perf must work with any Open Inference Protocol server, so these tests drive it against
``bench/e2e/bare_servicer.py`` (a bare grpc.aio echo servicer on tritonclient's own stubs) and a
tiny aiohttp echo server defined here, and never against modelserve's own frontends.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LoopThread

from modelserve import perf
from modelserve.perf._load import StepResult
from modelserve.perf._model import ModelInfo, SetupError, TensorMetadata, resolve_layout
from modelserve.perf._options import parse_sweep
from modelserve.perf import _report
from modelserve.perf._report import notes

ROOT = Path(__file__).resolve().parents[1]
BARE_SERVICER = ROOT / "bench" / "e2e" / "bare_servicer.py"
SHORT = ["--duration", "0.5", "--warmup", "0.2", "--quiet"]


# --- servers -------------------------------------------------------------------------------

def _load_bare_servicer():
    spec = importlib.util.spec_from_file_location("bare_servicer", BARE_SERVICER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def echo_url():
    """The bare servicer run standalone, as benchmarks do: it prints its port on stdout."""
    proc = subprocess.Popen([sys.executable, str(BARE_SERVICER), "--port", "0",
                             "--input-shape", "16", "--datatype", "FP32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture
def inprocess_servicer():
    """Start the bare servicer in this process via its importable ``start``; yields a function
    taking ``start``'s keyword arguments and returning the URL."""
    bare = _load_bare_servicer()
    loop = LoopThread()
    servers = []

    def start(**kwargs) -> str:
        server, port = loop.run(bare.start(0, **kwargs))
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        loop.run(server.stop(None))
    loop.close()


class EchoHTTP:
    """A minimal HTTP server of the Open Inference Protocol, standing in for ANY such server
    (not modelserve's): model metadata, no model config (404, so perf must fall back to the
    metadata alone), and an infer route that echoes every input as ``OUTPUT<i>``, reading JSON
    or binary tensors and answering in the encoding each output asks for. It records what it
    received, and can wait ``delay`` seconds before answering."""

    DTYPES = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16}

    def __init__(self, inputs: list[dict], delay: float = 0.0) -> None:
        self.inputs = inputs
        self.delay = delay
        self.binary_requests = self.json_requests = 0
        self.last: dict[str, np.ndarray] = {}
        self.seen: list[dict[str, np.ndarray]] = []

    def metadata(self, name: str) -> dict:
        outs = [dict(t, name=f"OUTPUT{i}") for i, t in enumerate(self.inputs)]
        return {"name": name, "versions": ["1"], "platform": "echo", "inputs": self.inputs,
                "outputs": outs}

    async def start(self) -> int:
        from aiohttp import web

        async def metadata(request):
            return web.json_response(self.metadata(request.match_info["model"]))

        async def config(request):
            return web.json_response({"error": "model configuration is not implemented"},
                                     status=404)

        async def infer(request):
            body = await request.read()
            size = int(request.headers.get("Inference-Header-Content-Length", len(body)))
            header, tail = json.loads(body[:size]), body[size:]
            arrays, offset, binary = {}, 0, False
            for t in header["inputs"]:
                dtype = self.DTYPES[t["datatype"]]
                n = t.get("parameters", {}).get("binary_data_size")
                if n is not None:
                    binary = True
                    arrays[t["name"]] = np.frombuffer(tail[offset:offset + n], dtype).reshape(t["shape"])
                    offset += n
                else:
                    arrays[t["name"]] = np.array(t["data"], dtype).reshape(t["shape"])
            self.binary_requests += binary
            self.json_requests += not binary
            self.last = arrays
            if len(self.seen) < 16:
                self.seen.append(arrays)
            if self.delay:
                await asyncio.sleep(self.delay)
            wanted = {o["name"]: o.get("parameters", {}).get("binary_data", False)
                      for o in header.get("outputs", [])}
            default = header.get("parameters", {}).get("binary_data_output", False)
            outputs, blobs = [], []
            for i, t in enumerate(header["inputs"]):
                a = arrays[t["name"]]
                out = {"name": f"OUTPUT{i}", "datatype": t["datatype"], "shape": list(a.shape)}
                if wanted.get(out["name"], default):
                    out["parameters"] = {"binary_data_size": a.nbytes}
                    blobs.append(a.tobytes())
                else:
                    out["data"] = a.reshape(-1).tolist()
                outputs.append(out)
            text = json.dumps({"model_name": request.match_info["model"], "model_version": "1",
                               "outputs": outputs}).encode()
            headers = {"Inference-Header-Content-Length": str(len(text))} if blobs else {}
            return web.Response(body=text + b"".join(blobs), headers=headers)

        app = web.Application()
        app.router.add_get("/v2/models/{model}", metadata)
        app.router.add_get("/v2/models/{model}/config", config)
        app.router.add_post("/v2/models/{model}/infer", infer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]


@pytest.fixture
def http_echo():
    """Yields a function ``(inputs, delay=0) -> (EchoHTTP, url)``."""
    loop = LoopThread()
    started = []

    def start(inputs, delay=0.0):
        server = EchoHTTP(inputs, delay)
        port = loop.run(server.start())
        started.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in started:
        loop.run(server.runner.cleanup())
    loop.close()


# --- helpers -------------------------------------------------------------------------------

def table_rows(text: str, first_column: str) -> list[dict[str, str]]:
    """The rows of perf's table, keyed by column name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(first_column))
    columns = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(columns):
            break
        rows.append(dict(zip(columns, cells)))
    return rows


def run_json(capsys, *argv) -> dict:
    assert perf.main([*argv, "--output-format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def assert_sane(step: dict) -> None:
    assert step["requests"] > 0
    assert step["errors"] == 0 and step["first_error"] is None
    assert step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"] <= step["max_ms"]
    assert step["requests_per_s"] == pytest.approx(step["requests"] / step["duration_s"])


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, integer, expected", [
    ("1:4:x2", True, [1, 2, 4]),
    ("1:64:x2", True, [1, 2, 4, 8, 16, 32, 64]),
    ("1:10:x2", True, [1, 2, 4, 8]),
    ("8", True, [8]),
    ("1:3", True, [1, 2, 3]),
    ("2:8:+3", True, [2, 5, 8]),
    ("100:400:+100", False, [100.0, 200.0, 300.0, 400.0]),
    ("0.1:0.3:+0.1", False, [0.1, 0.2, 0.3]),
    ("50", False, [50.0]),
])
def test_sweep_lists_start_to_end_by_step_or_factor(text, integer, expected):
    assert parse_sweep(text, integer=integer) == expected


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "4:1:x2"], "end 1 is below start 4"),
    (["--concurrency", "1:8:x1"], "factor must be > 1"),
    (["--concurrency", "0"], "start must be > 0"),
    (["--concurrency", "1.5"], "is not a whole number"),
    (["--concurrency", "1:8:/2"], "must be +STEP or xFACTOR"),
    (["--concurrency", "1:2:3:4"], "expected N, START:END"),
    (["--concurrency", "2", "--request-rate", "10"], "not allowed with argument"),
    (["--shape", "INPUT0"], "expected NAME:d1,d2"),
    (["--shape", "INPUT0:3,x"], "comma-separated non-negative integers"),
    (["--duration", "0"], "must be > 0"),
    (["--protocol", "grpc", "--no-binary"], "apply to --protocol http only"),
    (["--max-outstanding", "4"], "apply to --request-rate only"),
    (["--shape", "A:1", "--shape", "A:2"], "--shape given more than once for A"),
    (["-u", "http://localhost:8000"], "without a scheme"),
    (["--output", "/no/such/folder/r.csv"], "does not exist"),
])
def test_bad_options_exit_2_with_a_clear_message(capsys, argv, message):
    assert perf.main(["-m", "m", *argv]) == 2
    assert message in capsys.readouterr().err


def test_add_parser_registers_perf_on_a_subcommand_parser():
    parser = argparse.ArgumentParser(prog="modelserve")
    perf.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["perf", "-m", "echo", "--concurrency", "1:4:x2", "-i", "http"])
    assert args.command == "perf" and args.model == "echo" and args.protocol == "http"
    assert args.concurrency == [1, 2, 4]
    assert callable(args.run)


def test_python_dash_m_prints_help():
    done = subprocess.run([sys.executable, "-m", "modelserve.perf", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--concurrency" in done.stdout and "--request-rate" in done.stdout


# --- request shapes ------------------------------------------------------------------------

def _model(shapes, max_batch_size=None):
    inputs = tuple(TensorMetadata(f"IN{i}", "FP32", tuple(s)) for i, s in enumerate(shapes))
    return ModelInfo("m", ("1",), "", inputs, (), max_batch_size)


def test_leading_minus_one_is_the_batch_dim_when_the_config_says_the_model_batches():
    layout = resolve_layout(_model([[-1, 3, -1]], max_batch_size=8), {"IN0": [3, 5]}, 4)
    assert layout.batching and layout.inputs[0].shape == (4, 3, 5)


def test_without_a_config_every_input_starting_with_minus_one_means_batching():
    assert resolve_layout(_model([[-1, 16], [-1, 2]]), {}, 2).inputs[1].shape == (2, 2)
    layout = resolve_layout(_model([[-1, 16], [4]]), {"IN0": [7, 16]}, 1)
    assert not layout.batching and layout.inputs[0].shape == (7, 16)


@pytest.mark.parametrize("model, shapes, batch, message", [
    (_model([[16]], 0), {}, 2, "does not batch (max_batch_size 0 in the model config)"),
    (_model([[-1, 16]], 4), {}, 8, "--batch-size 8 exceeds the max_batch_size 4"),
    (_model([[-1, 16]], 4), {"NOPE": [1]}, 1, "'NOPE', not an input of model 'm'"),
    (_model([[-1, 16]], 4), {"IN0": [1, 16]}, 1, "has 2 dims; input 'IN0' of model 'm' has 1"),
    (_model([[-1, 16]], 4), {"IN0": [8]}, 1, "dim 0 of input 'IN0' is fixed at 16"),
])
def test_impossible_request_shapes_are_setup_errors(model, shapes, batch, message):
    with pytest.raises(SetupError, match=re.escape(message)):
        resolve_layout(model, shapes, batch)


# --- gRPC runs against the bare servicer ----------------------------------------------------

def test_concurrency_sweep_table_has_one_sane_row_per_step(capsys, echo_url):
    assert perf.main(["-m", "echo", "-u", echo_url, "--concurrency", "1:4:x2", *SHORT]) == 0
    out = capsys.readouterr().out
    assert "model 'echo'" in out and "INPUT0 FP32 [16]" in out
    rows = table_rows(out, "concurrency")
    assert [r["concurrency"] for r in rows] == ["1", "2", "4"]
    for r in rows:
        assert float(r["req/s"]) > 0 and r["req/s"] == r["infer/s"]  # batch size 1
        p = [float(r[c]) for c in ("p50 ms", "p90 ms", "p99 ms", "max ms")]
        assert p == sorted(p)
        assert r["errors"] == "0"
        assert r["client cpu"].rstrip("*").endswith("%")


def test_json_report_describes_the_run_and_each_step(capsys, echo_url):
    report = run_json(capsys, "-m", "echo", "-u", echo_url, "--concurrency", "2", *SHORT)
    run = report["run"]
    assert run["mode"] == "concurrency" and run["levels"] == [2] and run["protocol"] == "grpc"
    assert run["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [16]}]
    [step] = report["steps"]
    assert step["concurrency"] == 2 and step["target_rate"] is None
    assert_sane(step)
    assert 0 < step["client_cpu_percent"] and 0 < step["loop_busy_percent"]


def test_csv_file_beside_the_table_on_stdout(capsys, echo_url, tmp_path):
    path = tmp_path / "report.csv"
    assert perf.main(["-m", "echo", "-u", echo_url, "--concurrency", "1:2", "--output", str(path),
                      *SHORT]) == 0
    assert [r["concurrency"] for r in table_rows(capsys.readouterr().out, "concurrency")] == ["1", "2"]
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["mode", "concurrency", "target_rate"] and "p99_ms" in header
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [r["concurrency"] for r in rows] == ["1", "2"]
    assert all(int(r["requests"]) > 0 and r["errors"] == "0" for r in rows)


def test_request_rate_at_low_rates_achieves_the_target(capsys, echo_url):
    report = run_json(capsys, "-m", "echo", "-u", echo_url, "--request-rate", "20:40:+20",
                      "--duration", "1.5", "--warmup", "0.3", "--quiet")
    assert [s["target_rate"] for s in report["steps"]] == [20.0, 40.0]
    for step in report["steps"]:
        assert_sane(step)
        assert step["drops"] == 0
        # Arrivals follow the schedule whatever the server does; completions depend on the
        # server too, so their bound is loose (the CI machine may be busy).
        assert step["sent_per_s"] == pytest.approx(step["target_rate"], rel=0.35)
        assert 0.3 * step["target_rate"] <= step["requests_per_s"] <= 1.35 * step["target_rate"]


def test_poisson_arrivals_average_the_target_rate(capsys, echo_url):
    report = run_json(capsys, "-m", "echo", "-u", echo_url, "--request-rate", "100",
                      "--request-distribution", "poisson", "--duration", "1.5", "--warmup", "0.2",
                      "--quiet", "--seed", "3")
    [step] = report["steps"]
    assert_sane(step)
    assert 60 <= step["sent_per_s"] <= 140  # 150 expected arrivals: +-40% is > 4 sigma


def test_plot_writes_a_png(capsys, echo_url, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "latency.png"
    assert perf.main(["-m", "echo", "-u", echo_url, "--concurrency", "1:2", "--plot", str(path),
                      *SHORT]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_install_command(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert perf.main(["-m", "echo", "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_unknown_model_is_a_setup_error_naming_it(capsys, echo_url):
    assert perf.main(["-m", "nope", "-u", echo_url, *SHORT]) == 1
    err = capsys.readouterr().err
    assert "model 'nope'" in err and "NOT_FOUND" in err


def test_unreachable_server_is_a_setup_error(capsys):
    assert perf.main(["-m", "echo", "-u", "127.0.0.1:1", "--timeout", "2", *SHORT]) == 1
    assert "cannot read the metadata of model 'echo' from 127.0.0.1:1 over grpc" in capsys.readouterr().err


def test_server_errors_are_counted_not_fatal(capsys, inprocess_servicer):
    url = inprocess_servicer(input_shape=[16], fail_every=3)
    report = run_json(capsys, "-m", "echo", "-u", url, "--concurrency", "2", *SHORT)
    [step] = report["steps"]
    assert step["requests"] > 0
    assert step["errors"] == pytest.approx(step["requests"] / 2, rel=0.25, abs=3)
    assert "UNAVAILABLE" in step["first_error"] and "injected failure" in step["first_error"]
    assert any("error" in n and "first:" in n for n in report["notes"])


def test_batching_model_gets_batch_size_rows_and_shape_overrides(capsys, inprocess_servicer):
    url = inprocess_servicer(input_shape=[-1, 8], max_batch_size=4, datatype="INT32", inputs=2)
    assert perf.main(["-m", "echo", "-u", url, *SHORT]) == 1
    err = capsys.readouterr().err
    assert "variable (-1) dims (batch dim excluded)" in err and "--shape INPUT0:16,8" in err
    report = run_json(capsys, "-m", "echo", "-u", url, "-b", "3", "--shape", "INPUT0:5,8",
                      "--shape", "INPUT1:2,8", *SHORT)
    assert report["run"]["inputs"] == [{"name": "INPUT0", "datatype": "INT32", "shape": [3, 5, 8]},
                                       {"name": "INPUT1", "datatype": "INT32", "shape": [3, 2, 8]}]
    assert report["run"]["batching_source"] == "max_batch_size 4 in the model config"
    [step] = report["steps"]
    assert_sane(step)
    assert step["inferences_per_s"] == pytest.approx(3 * step["requests_per_s"])


def test_the_bare_servicer_echoes_inputs_with_tritonclient(inprocess_servicer):
    import tritonclient.grpc as grpcclient

    url = inprocess_servicer(input_shape=[4], datatype="INT64")
    client = grpcclient.InferenceServerClient(url)
    try:
        x = np.arange(4, dtype=np.int64)
        tensor = grpcclient.InferInput("INPUT0", [4], "INT64")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("echo", [tensor]).as_numpy("OUTPUT0"), x)
        assert client.get_model_config("echo").config.max_batch_size == 0
    finally:
        client.close()


# --- HTTP runs against a stand-in server ----------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
def test_http_runs_with_binary_or_json_tensors(capsys, http_echo, binary):
    server, url = http_echo([{"name": "X", "datatype": "FP32", "shape": [-1, 4]}])
    report = run_json(capsys, "-m", "anything", "-i", "http", "-u", url, "-b", "2",
                      "--binary" if binary else "--no-binary", "--concurrency", "1:2", *SHORT)
    assert report["run"]["batching_source"] == "no model config; every input shape starts with -1"
    assert report["run"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [2, 4]}]
    for step in report["steps"]:
        assert_sane(step)
    assert (server.binary_requests > 0) == binary and (server.json_requests > 0) != binary


def test_http_json_cannot_carry_fp16(capsys, http_echo):
    _, url = http_echo([{"name": "X", "datatype": "FP16", "shape": [4]}])
    assert perf.main(["-m", "m", "-i", "http", "-u", url, "--no-binary", *SHORT]) == 1
    assert "'X' (FP16) cannot travel as JSON" in capsys.readouterr().err


def test_open_loop_drops_arrivals_over_max_outstanding(capsys, http_echo):
    _, url = http_echo([{"name": "X", "datatype": "FP32", "shape": [4]}], delay=0.2)
    report = run_json(capsys, "-m", "m", "-i", "http", "-u", url, "--request-rate", "40",
                      "--max-outstanding", "2", "--duration", "1", "--warmup", "0.3", "--quiet")
    [step] = report["steps"]
    # 2 in flight for 0.2 s each allow ~10 requests/s of the 40 arriving; the rest are dropped.
    assert step["drops"] > 15 and step["sent_per_s"] < 20
    assert step["errors"] == 0
    assert any("dropped" in n for n in report["notes"])


def test_requests_over_the_timeout_are_errors(capsys, http_echo):
    _, url = http_echo([{"name": "X", "datatype": "FP32", "shape": [4]}], delay=1.0)
    report = run_json(capsys, "-m", "m", "-i", "http", "-u", url, "--timeout", "0.1",
                      "--concurrency", "2", "--duration", "0.6", "--warmup", "0.1", "--quiet")
    [step] = report["steps"]
    assert step["requests"] == 0 and step["errors"] > 0 and step["p99_ms"] is None
    assert "Timeout" in step["first_error"]


# --- input data ----------------------------------------------------------------------------

def test_json_input_data_entries_are_sent_in_turn(capsys, http_echo, tmp_path):
    server, url = http_echo([{"name": "X", "datatype": "INT32", "shape": [-1, 3]}])
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"X": [1, 2, 3]},
                                         {"X": {"content": [4, 5, 6, 7, 8, 9], "shape": [2, 3]}}]}))
    assert perf.main(["-m", "m", "-i", "http", "-u", url, "-b", "2", "--input-data", str(data),
                      "--concurrency", "1", *SHORT]) == 0
    sent = {tuple(a["X"].reshape(-1).tolist()) for a in server.seen}
    assert sent == {(1, 2, 3, 1, 2, 3), (4, 5, 6, 7, 8, 9)}  # one row repeated, then a batch


def test_npz_input_data_fills_variable_dims(capsys, http_echo, tmp_path):
    server, url = http_echo([{"name": "X", "datatype": "FP32", "shape": [-1, -1]}])
    path = tmp_path / "data.npz"
    x = np.arange(10, dtype=np.float64).reshape(2, 5)  # float64 data for an FP32 input
    np.savez(path, X=x)
    assert perf.main(["-m", "m", "-i", "http", "-u", url, "-b", "2", "--input-data", str(path),
                      "--concurrency", "1", *SHORT]) == 0
    np.testing.assert_array_equal(server.last["X"], x.astype(np.float32))


def test_input_data_that_does_not_fit_names_the_input(capsys, http_echo, tmp_path):
    _, url = http_echo([{"name": "X", "datatype": "INT32", "shape": [4]}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"X": [0.5, 1.5, 2.5, 3.5]}]}))
    assert perf.main(["-m", "m", "-i", "http", "-u", url, "--input-data", str(path), *SHORT]) == 1
    assert "input 'X' holds float64 values; model expects INT32" in capsys.readouterr().err


def test_random_data_is_seeded_and_zero_is_zero():
    from modelserve.perf._data import make_payloads

    layout = resolve_layout(_model([[-1, 6]], 8), {}, 2)
    a, b, c = (make_payloads(layout, "random", model="m", seed=s)[0]["IN0"] for s in (1, 1, 2))
    assert a.shape == (2, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not make_payloads(layout, "zero", model="m")[0]["IN0"].any()


# --- the report ------------------------------------------------------------------------------

def _step(**kw) -> StepResult:
    base = dict(mode="concurrency", concurrency=64, target_rate=None, duration_s=1.0,
                batch_size=1, requests=100, errors=0, first_error=None, requests_per_s=100.0,
                inferences_per_s=100.0, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0,
                mean_ms=1.5, sent_per_s=None, drops=None, client_cpu_percent=99.0,
                loop_busy_percent=50.0)
    return StepResult(**{**base, **kw})


def test_a_client_bound_step_is_flagged():
    assert notes([_step()]) == []
    [note] = notes([_step(loop_busy_percent=97.0)])
    assert note.startswith("* client-bound") and "concurrency 64 97%" in note
    table = _report.render("table", [_step(loop_busy_percent=97.0)], {})
    assert "99%*" in table
