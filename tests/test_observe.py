"""Request tracing (OpenTelemetry, W3C trace context) and payload logging, on a real server driven
by tritonclient, httpx and openai over real sockets; spans land in the SDK's in-memory exporter,
records in sinks written here."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpx = pytest.importorskip("httpx")
import tritonclient.grpc.aio as aioclient  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from conftest import LoopThread  # noqa: E402
from modelserve.errors import InvalidArgumentError  # noqa: E402
from modelserve.observe import Observer  # noqa: E402
from modelserve.observe.payload import FileSink, PayloadLog, load_sink  # noqa: E402
from modelserve.observe.tracing import Sampling, Tracing, parse_traceparent, tracing_configured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DOUBLE = """
import numpy as np

class Model:
    def execute(self, inputs):
        return {"Y": inputs["X"] * 2}
"""

NOTED = """
import numpy as np

class Model:
    def execute(self, inputs):
        return {"Y": inputs["X"] + 1, "ECHO": inputs["NOTE"]}
"""


class MemorySink:
    """Records in a list; ``hold`` blocks every write until released (a stalled sink)."""

    def __init__(self, hold: bool = False) -> None:
        self.records: list[dict] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.closed = False

    def write(self, records):
        self.gate.wait()
        self.records.extend(records)

    def close(self):
        self.closed = True


def _model(root: Path, name: str, code: str, config: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    (root / name / "config.yaml").write_text(textwrap.dedent(config))


def _repository(root: Path) -> Path:
    # "batched": four requests form one batch (preferred size 4, a long delay otherwise).
    _model(root, "batched", DOUBLE, """
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [4]}]
        outputs: [{name: Y, datatype: FP32, shape: [4]}]
        dynamic_batching: {max_queue_delay_us: 5000000, preferred_batch_sizes: [4]}
    """)
    _model(root, "double", DOUBLE, """
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [4]}]
        outputs: [{name: Y, datatype: FP32, shape: [4]}]
    """)
    _model(root, "noted", NOTED, """
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [4]}, {name: NOTE, datatype: BYTES, shape: [1]}]
        outputs: [{name: Y, datatype: FP32, shape: [4]}, {name: ECHO, datatype: BYTES, shape: [1]}]
        payload_log: {mode: summary, exclude: [ECHO]}
    """)
    _model(root, "quiet", DOUBLE, """
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [4]}]
        outputs: [{name: Y, datatype: FP32, shape: [4]}]
        payload_log: {sample: 0}
    """)
    return root


class Served:
    def __init__(self, root: Path, observer: Observer | None) -> None:
        from modelserve.server.app import Server
        from modelserve.server.common import ServerOptions

        self.loop = LoopThread("observe-test")
        self.server = Server(root, ServerOptions(http_port=0, grpc_port=0, shutdown_grace_s=0), observer=observer)
        self.loop.run(self.server.start())
        self.grpc = f"127.0.0.1:{self.server.grpc_port}"
        self.http = f"http://127.0.0.1:{self.server.http_port}"

    @property
    def observer(self) -> Observer:
        return self.server.runtime.observer

    def metrics(self) -> str:
        return httpx.get(self.http + "/metrics").text

    def close(self) -> None:
        self.loop.run(self.server.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    exporter = InMemorySpanExporter()
    sink = MemorySink()
    observer = Observer(Tracing(sample_rate=1.0, exporter=exporter, batch=False), PayloadLog(sink, mode="full"))
    s = Served(_repository(tmp_path_factory.mktemp("repo")), observer)
    s.exporter, s.sink = exporter, sink
    yield s
    s.close()
    assert sink.closed  # the Runtime closes its observer


@pytest.fixture
def fresh(served):
    """Empties the exporter and the sink before a test."""
    served.observer.flush()
    served.exporter.clear()
    served.sink.records.clear()
    return served


def _x(value: float, module=grpcclient, rows: int = 1):
    x = module.InferInput("X", [rows, 4], "FP32")
    x.set_data_from_numpy(np.full((rows, 4), value, np.float32))
    return x


def _traceparent(i: int, sampled: bool = True) -> str:
    return f"00-{0xABC0 + i:032x}-{0xDEF0 + i:016x}-{'01' if sampled else '00'}"


def _spans(served, name=None):
    served.observer.flush()
    return [s for s in served.exporter.get_finished_spans() if name is None or s.name == name]


def _records(served):
    served.observer.flush()
    return list(served.sink.records)


# --- tracing --------------------------------------------------------------------------------------


def test_one_batch_span_links_the_four_requests_that_ran_in_it(fresh):
    async def four():
        client = aioclient.InferenceServerClient(fresh.grpc)
        try:
            return await asyncio.gather(*(client.infer("batched", [_x(i)], headers={"traceparent": _traceparent(i)})
                                          for i in range(4)))
        finally:
            await client.close()

    results = asyncio.run(four())
    assert [r.as_numpy("Y")[0, 0] for r in results] == [0, 2, 4, 6]
    requests = _spans(fresh, "ModelInfer batched")
    assert len(requests) == 4
    # Each request span continues its caller's trace, as a child of the caller's span.
    assert sorted(s.context.trace_id for s in requests) == [0xABC0 + i for i in range(4)]
    for s in requests:
        i = s.context.trace_id - 0xABC0
        assert s.parent is not None and s.parent.span_id == 0xDEF0 + i and s.parent.is_remote
        assert s.attributes["modelserve.model"] == "batched" and s.attributes["modelserve.version"] == 1
    children = [s for s in _spans(fresh) if s.parent is not None and s.name in ("queue", "execute")]
    for s in requests:
        mine = sorted(c.name for c in children if c.parent.span_id == s.context.span_id)
        assert mine == ["execute", "queue"]
    batches = _spans(fresh, "batch")
    assert len(batches) == 1
    batch = batches[0]
    assert batch.attributes["modelserve.batch.size"] == 4 and batch.attributes["modelserve.batch.requests"] == 4
    assert sorted((link.context.trace_id, link.context.span_id) for link in batch.links) == sorted(
        (s.context.trace_id, s.context.span_id) for s in requests)
    executes = [c for c in children if c.name == "execute"]
    assert {c.attributes["modelserve.batch.id"] for c in executes} == {batch.attributes["modelserve.batch.id"]}
    # The queue ends where the batch starts; the batch ends within the request.
    for s in requests:
        queue = next(c for c in children if c.name == "queue" and c.parent.span_id == s.context.span_id)
        assert s.start_time <= queue.start_time <= queue.end_time <= batch.start_time + 1_000_000
        assert batch.end_time <= s.end_time + 1_000_000


def test_an_http_request_joins_the_callers_trace(fresh):
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    reply = httpx.post(fresh.http + "/v2/models/double/infer", json=body,
                       headers={"traceparent": _traceparent(7), "tracestate": "vendor=abc"})
    assert reply.status_code == 200, reply.text
    [span] = _spans(fresh, "POST /v2/models/double/infer")
    assert span.context.trace_id == 0xABC0 + 7 and span.parent.span_id == 0xDEF0 + 7
    assert span.parent.trace_state.get("vendor") == "abc"
    assert span.attributes["modelserve.protocol"] == "http"


def test_a_malformed_traceparent_starts_a_new_trace_and_is_counted(fresh):
    before = fresh.observer.invalid_trace_context.get("grpc", 0)
    client = grpcclient.InferenceServerClient(fresh.grpc)
    client.infer("double", [_x(1)], headers={"traceparent": "00-not-a-trace-context-01"})
    [span] = _spans(fresh, "ModelInfer double")
    assert span.parent is None and span.context.trace_id != 0
    assert fresh.observer.invalid_trace_context["grpc"] == before + 1
    assert f'modelserve_trace_context_invalid_total{{protocol="grpc"}} {before + 1}.0' in fresh.metrics()


def test_a_caller_that_did_not_sample_is_not_traced(fresh):
    client = grpcclient.InferenceServerClient(fresh.grpc)
    client.infer("double", [_x(1)], headers={"traceparent": _traceparent(3, sampled=False)})
    assert _spans(fresh, "ModelInfer double") == []


def test_a_failed_request_ends_its_span_with_the_error(fresh):
    client = grpcclient.InferenceServerClient(fresh.grpc)
    bad = grpcclient.InferInput("X", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(Exception, match="expected shape"):
        client.infer("double", [bad], headers={"traceparent": _traceparent(9)})
    [span] = _spans(fresh, "ModelInfer double")
    assert span.status.status_code.name == "ERROR" and span.attributes["modelserve.status"] == "INVALID_ARGUMENT"


@given(st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF- \t\nxz", max_size=70),
    st.builds(lambda v, t, p, f, rest: f"{v}-{t}-{p}-{f}{rest}",
              st.sampled_from(["00", "01", "ff", "0g", "a5"]),
              st.sampled_from(["0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736", "4BF92F3577B34DA6A3CE929D0E0E4736",
                               "4bf92f3577b34da6a3ce929d0e0e473"]),
              st.sampled_from(["0" * 16, "00f067aa0ba902b7", "00f067aa0ba902b"]),
              st.sampled_from(["00", "01", "03", "ff", "0x"]),
              st.sampled_from(["", "-", "-extra", "x", " ", "\t"]))))
@settings(max_examples=600, deadline=None)
def test_traceparent_parsing_agrees_with_the_opentelemetry_propagator(header):
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": header}))
    context = theirs.get_span_context()
    ours = parse_traceparent(header)
    if not context.is_valid:
        assert ours is None, header
    else:
        assert ours is not None, header
        assert (ours.trace_id, ours.span_id, ours.sampled) == (context.trace_id, context.span_id,
                                                               context.trace_flags.sampled)


def test_the_flag_wins_over_the_sampler_variables():
    env = {"OTEL_TRACES_SAMPLER": "always_on"}
    assert Sampling.from_env(env, 0.25) == Sampling(0.25, True)
    ratio = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    assert Sampling.from_env(ratio) == Sampling(0.5, False)
    assert Sampling.from_env({}) == Sampling(1.0, True)  # OpenTelemetry's default: parentbased_always_on
    assert Sampling.from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}) == Sampling(0.0, True)
    with pytest.raises(InvalidArgumentError, match="OTEL_TRACES_SAMPLER_ARG"):
        Sampling.from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(InvalidArgumentError, match="jaeger_remote"):
        Sampling.from_env({"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(InvalidArgumentError, match="--trace-sample-rate"):
        Sampling.from_env({}, 1.5)


def test_parent_based_sampling_follows_the_caller_and_samples_new_traces_at_the_rate():
    rare = Sampling(0.0, True)
    assert rare.sample(parse_traceparent(_traceparent(1)))
    assert not rare.sample(parse_traceparent(_traceparent(1, False)))
    assert not rare.sample(None)
    assert Sampling(1.0, False).sample(parse_traceparent(_traceparent(1, False)))
    hits = sum(Sampling(0.1, True).sample(None) for _ in range(20_000))
    assert 1_500 < hits < 2_500


def test_tracing_is_on_only_when_configured():
    assert not tracing_configured({}, None)
    assert tracing_configured({}, 0.01) and not tracing_configured({}, 0.0)
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, None)
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"}, 0.5)
    assert not tracing_configured({"OTEL_TRACES_EXPORTER": "none"}, None)


# --- payload logging ------------------------------------------------------------------------------


def test_a_request_is_recorded_with_its_tensors_and_trace_id(fresh):
    client = grpcclient.InferenceServerClient(fresh.grpc)
    client.infer("double", [_x(1.5, rows=2)], headers={"traceparent": _traceparent(11)})
    [record] = _records(fresh)
    assert record["model"] == record["endpoint"] == "double" and record["version"] == 1
    assert record["status"] == "OK" and record["protocol"] == "grpc" and record["target"] is None
    assert record["trace_id"] == f"{0xABC0 + 11:032x}"
    assert record["latency_ms"] > 0 and record["time"].endswith("Z")
    assert record["inputs"] == {"X": {"datatype": "FP32", "shape": [2, 4], "data": [1.5] * 8}}
    assert record["outputs"] == {"Y": {"datatype": "FP32", "shape": [2, 4], "data": [3.0] * 8}}


def test_a_models_config_chooses_summary_mode_and_leaves_tensors_out(fresh):
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 6]},
                       {"name": "NOTE", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]}]}
    assert httpx.post(fresh.http + "/v2/models/noted/infer", json=body).status_code == 200
    [record] = _records(fresh)
    assert record["protocol"] == "http"
    assert record["inputs"]["X"] == {"datatype": "FP32", "shape": [1, 4], "min": 1.0, "max": 6.0, "mean": 3.0}
    assert record["inputs"]["NOTE"] == {"datatype": "BYTES", "shape": [1, 1], "bytes": 5}
    assert set(record["outputs"]) == {"Y"}  # ECHO is excluded


def test_a_model_sampled_at_zero_is_never_recorded(fresh):
    client = grpcclient.InferenceServerClient(fresh.grpc)
    for _ in range(5):
        client.infer("quiet", [_x(1)])
    assert _records(fresh) == []


def test_refused_and_failed_requests_are_recorded_with_their_status(fresh):
    client = grpcclient.InferenceServerClient(fresh.grpc)
    bad = grpcclient.InferInput("X", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(Exception):
        client.infer("double", [bad])
    with pytest.raises(Exception):
        client.infer("double", [_x(1)], model_version="7")
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    reply = httpx.post(fresh.http + "/v2/models/missing/infer", json=body)
    assert reply.status_code == 404, reply.text
    records = _records(fresh)
    assert [(r["endpoint"], r["status"]) for r in records] == [
        ("double", "INVALID_ARGUMENT"), ("double", "NOT_FOUND"), ("missing", "NOT_FOUND")]
    assert "expected shape" in records[0]["error"] and "version" in records[1]["error"]


def test_a_stalled_sink_slows_no_request_and_its_drops_are_counted(tmp_path):
    root = _repository(tmp_path / "repo")
    sink = MemorySink(hold=True)
    logged = Served(root, Observer(None, PayloadLog(sink, mode="full", queue_bytes=8 * 1024)))
    plain = Served(root, None)
    try:
        clients = {s: grpcclient.InferenceServerClient(s.grpc) for s in (logged, plain)}
        latencies: dict = {logged: [], plain: []}
        for i in range(150):  # interleaved, so both see the same machine
            for s in (logged, plain):
                t0 = time.perf_counter()
                clients[s].infer("double", [_x(i)])
                latencies[s].append(time.perf_counter() - t0)
        dropped = logged.observer.payload_log.dropped["queue_full"]
        assert dropped > 100  # 8 KiB holds a handful of records; the writer is stuck on the first batch
        assert f"modelserve_payload_log_dropped_total{{reason=\"queue_full\"}} {dropped}.0" in logged.metrics()
        # Generous: a request that waited for the sink would take forever, not a few percent more.
        assert statistics.median(latencies[logged]) < 2 * statistics.median(latencies[plain]) + 0.005
    finally:
        sink.gate.set()
        logged.close()
        plain.close()
    assert 0 < len(sink.records) == 150 - dropped  # written once released; nothing else lost


def test_the_file_sink_rotates_by_size_keeping_five(tmp_path):
    path = tmp_path / "logs" / "payload.jsonl"
    sink = FileSink(path, max_bytes=200, keep=5)
    for i in range(40):
        sink.write([{"n": i, "pad": "x" * 60}])
    sink.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["payload.jsonl"] + [f"payload.jsonl.{i}" for i in range(1, 6)]
    assert all(p.stat().st_size <= 200 for p in path.parent.iterdir())
    newest = [json.loads(line)["n"] for line in path.read_text().splitlines()]
    assert newest[-1] == 39
    kept = [json.loads(line)["n"] for p in sorted(path.parent.glob("payload.jsonl.*"), reverse=True)
            for line in p.read_text().splitlines()] + newest
    assert kept == list(range(40 - len(kept), 40))  # the newest records, in order, none twice


def test_the_example_sqlite_sink_takes_records(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "sinks"))
    monkeypatch.setenv("MODELSERVE_PAYLOAD_DB", str(tmp_path / "payloads.db"))
    sink = load_sink("sqlite_sink:SQLiteSink")
    sink.write([{"time": "t", "model": "m", "version": 1, "status": "OK", "trace_id": "ab", "latency_ms": 1.0,
                 "inputs": {"X": {"datatype": "FP32", "shape": [1], "data": [1.0]}}}])
    sink.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "payloads.db")
    rows = db.execute("select model, version, status, record from payloads").fetchall()
    assert rows[0][:3] == ("m", 1, "OK") and json.loads(rows[0][3])["inputs"]["X"]["data"] == [1.0]


def test_a_bad_sink_name_is_an_error_naming_it():
    with pytest.raises(InvalidArgumentError, match="module:Class"):
        load_sink("no_colon")
    with pytest.raises(InvalidArgumentError, match="cannot import"):
        load_sink("modelserve_no_such_module:Sink")


def _serve(*args):
    return subprocess.run([sys.executable, "-m", "modelserve.cli", "serve", "--model-repository",
                           str(ROOT / "examples" / "models"), *args], capture_output=True, text=True, timeout=60)


def test_payload_flags_without_a_log_are_a_usage_error():
    done = _serve("--payload-log-mode", "summary")
    assert done.returncode == 2 and "--payload-log-mode need --payload-log FILE" in done.stderr
    done = _serve("--payload-log", "x.jsonl", "--payload-sink", "a:B")
    assert done.returncode == 2 and "not both" in done.stderr


# --- generations ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generative(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    from modelserve.generation.gpt2 import write_random_checkpoint
    from test_openai import write_tokenizer

    repo = tmp_path_factory.mktemp("generative")
    version = repo / "tiny" / "1"
    write_random_checkpoint(version, vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, seed=3)
    write_tokenizer(version)
    (repo / "tiny" / "config.yaml").write_text("generation: {max_num_seqs: 4, block_size: 4}\n")
    exporter, sink = InMemorySpanExporter(), MemorySink()
    s = Served(repo, Observer(Tracing(sample_rate=1.0, exporter=exporter, batch=False), PayloadLog(sink, mode="full")))
    s.exporter, s.sink = exporter, sink
    yield s
    s.close()


def test_a_generation_is_traced_to_its_first_token_and_recorded(generative):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=generative.http + "/v1", api_key="-", max_retries=0,
                           default_headers={"traceparent": _traceparent(21)})
    out = client.completions.create(model="tiny", prompt="w5 w6 w7", max_tokens=6, temperature=0,
                                    extra_body={"ignore_eos": True})
    client.close()
    [span] = _spans(generative, "POST /v1/completions")
    assert span.context.trace_id == 0xABC0 + 21 and span.attributes["modelserve.generated_tokens"] == 6
    children = {c.name: c for c in _spans(generative)
                if c.parent is not None and c.parent.span_id == span.context.span_id}
    assert set(children) == {"queue", "first_token", "decode"}
    assert children["queue"].end_time <= children["first_token"].start_time + 1
    assert children["first_token"].end_time <= children["decode"].start_time + 1
    [record] = _records(generative)
    assert record["inputs"] == {"prompt": "w5 w6 w7"}
    assert record["outputs"] == {"text": out.choices[0].text, "tokens": 6}
    assert record["status"] == "OK" and record["trace_id"] == f"{0xABC0 + 21:032x}"
