"""The gRPC frontend, driven by the unmodified tritonclient (sync and asyncio) against real
GrpcFrontend servers on port 0: the conformance checks of the protocol spec (section 6) that apply
to gRPC, every kind of bad input, streaming, deadlines, priorities, tokens, TLS, the health
service, and the committed protobuf stubs."""

from __future__ import annotations

import asyncio
import filecmp
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import conftest

grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc.aio as aioclient  # noqa: E402
from google.protobuf import descriptor_pool  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import modelserve  # noqa: E402
from modelserve._proto import inference_pb2  # noqa: E402
from modelserve.server.common import ServerOptions  # noqa: E402
from modelserve.server.grpc import GrpcFrontend  # noqa: E402
from modelserve.server.health import Health  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
ADMIN = "admin-secret"
TOKEN = "infer-secret"
SMALL_LIMIT = 4096
MAX = 2**31 - 1


# --- the servers --------------------------------------------------------------------------------


class LoopThread(conftest.LoopThread):
    """The shared loop thread, able to start a gRPC frontend on it."""

    def start(self, runtime, **options) -> tuple[GrpcFrontend, str]:
        health = Health(runtime)
        frontend = GrpcFrontend(runtime, ServerOptions(grpc_port=0, **options), health)
        port = self.run(frontend.start())
        return frontend, f"127.0.0.1:{port}"


IDENTITY = """
import numpy as np

class Model:
    def execute(self, inputs):
        return {"Y": inputs["X"]}
"""

SLOW = """
import time
import numpy as np

class Model:
    def load(self, context):
        self.runs = 0

    def execute(self, inputs):
        x = inputs["X"]
        time.sleep(float(x.max()))   # X is how long to take, in seconds
        self.runs += 1
        return {"Y": np.full(x.shape, self.runs, dtype=np.float32)}   # the execution's sequence number
"""


def _write_model(root: Path, name: str, code: str, config: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    (root / name / "config.yaml").write_text(textwrap.dedent(config))


def _identity_config(datatype: str) -> str:
    return f"""
        backend: python
        inputs: [{{name: X, datatype: {datatype}, shape: [-1]}}]
        outputs: [{{name: Y, datatype: {datatype}, shape: [-1]}}]
        instances: {{count: 1, device: cpu}}
    """


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def runtime():
    with modelserve.Runtime(EXAMPLES) as rt:
        yield rt


@pytest.fixture(scope="module")
def extra_runtime(tmp_path_factory):
    """Models the examples lack: a slow one (max_batch_size 1, one instance, two priority levels),
    identities for FP32, FP16 and BYTES, and `echo` to load and unload (explicit mode)."""
    root = tmp_path_factory.mktemp("repository")
    _write_model(root, "slow", SLOW, """
        backend: python
        max_batch_size: 1
        inputs: [{name: X, datatype: FP32, shape: [1]}]
        outputs: [{name: Y, datatype: FP32, shape: [1]}]
        dynamic_batching: {priority_levels: 2, default_priority_level: 2}
        instances: {count: 1, device: cpu}
    """)
    for name, datatype in (("identity", "FP32"), ("half", "FP16"), ("text", "BYTES"), ("echo", "FP32")):
        _write_model(root, name, IDENTITY, _identity_config(datatype))
    names = ["slow", "identity", "half", "text", "echo"]
    with modelserve.Runtime(root, model_control_mode="explicit", load_models=names) as rt:
        yield rt


@pytest.fixture(scope="module")
def servers(loop, runtime, extra_runtime):
    """main: the examples, default options. extra: the extra models, admin token. guarded: the
    examples with an inference token and a 4 KiB message limit."""
    started = {
        "main": loop.start(runtime),
        "extra": loop.start(extra_runtime, admin_token=ADMIN),
        "guarded": loop.start(runtime, inference_token=TOKEN, max_message_bytes=SMALL_LIMIT),
    }
    yield {name: url for name, (_, url) in started.items()} | {"frontends": {n: f for n, (f, _) in started.items()}}
    for frontend, _ in started.values():
        loop.run(frontend.stop(0))


@pytest.fixture(scope="module")
def main_url(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def client(main_url):
    c = grpcclient.InferenceServerClient(main_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def extra(servers):
    c = grpcclient.InferenceServerClient(servers["extra"])
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(main_url):
    """tritonclient's own generated stub, for requests tritonclient's API will not build."""
    channel = grpc.insecure_channel(
        main_url, options=[("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]
    )
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# --- request helpers ----------------------------------------------------------------------------


def add_sub_inputs(a: np.ndarray, b: np.ndarray, module=grpcclient) -> list:
    inputs = []
    for name, x in (("INPUT0", a), ("INPUT1", b)):
        inp = module.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        inputs.append(inp)
    return inputs


def rand(rows: int = 1, cols: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, cols), dtype=np.float32)


def one_input(name: str, x: np.ndarray, datatype: str) -> list:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return [inp]


def raw_request(model="add_sub", inputs=None, raw=None, **fields) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest for add_sub's two FP32 [1, 16] inputs, with anything replaced."""
    inputs = inputs if inputs is not None else [("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [1, 16])]
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    for r in raw if raw is not None else [np.ones(16, np.float32).tobytes()] * len(inputs):
        request.raw_input_contents.append(r)
    return request


def rpc_error(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30, **kwargs)
    return info.value


def server_error(fn, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)
    return info.value


def assert_serving(client) -> None:
    a, b = rand(seed=1), rand(seed=2)
    result = client.infer("add_sub", add_sub_inputs(a, b))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


# --- section 6 conformance ----------------------------------------------------------------------


def test_health_rpcs_answer_booleans(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("recommender", "1") and client.is_model_ready("recommender", "stable")
    assert client.is_model_ready("nope") is False  # OK status, ready=false
    assert client.is_model_ready("add_sub", "9") is False


def test_server_metadata_names_server_and_extensions(client):
    meta = client.get_server_metadata()
    assert meta.name == "modelserve" and meta.version == modelserve.__version__
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(meta.extensions)
    assert client.get_server_metadata(as_json=True)["name"] == "modelserve"


def test_model_metadata_shows_batch_dimension_and_versions(client):
    meta = client.get_model_metadata("add_sub")
    assert meta.name == "add_sub" and list(meta.versions) == ["1"] and meta.platform == "python"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 16]), ("INPUT1", "FP32", [-1, 16])]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert client.get_model_metadata("add_sub", model_version="1").name == "add_sub"
    as_json = client.get_model_metadata("recommender", as_json=True)
    assert as_json["versions"] == ["1", "2"] and as_json["inputs"][0]["shape"] == ["-1", "1"]  # int64 as JSON strings


def test_infer_returns_raw_outputs_with_name_version_and_id(client):
    a, b = rand(seed=3), rand(seed=4)
    result = client.infer("add_sub", add_sub_inputs(a, b), request_id="abc")
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert out0.dtype == np.float32 and out0.shape == (1, 16)
    np.testing.assert_allclose(out0, a + b, rtol=1e-6)
    np.testing.assert_allclose(out1, a - b, rtol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "abc")
    assert len(response.raw_output_contents) == len(response.outputs) == 2


def test_batched_request_and_other_backends(client):
    x = rand(8, 64, seed=5)
    result = client.infer("digits", one_input("INPUT0", x, "FP32"))
    assert result.as_numpy("LABEL").shape == (8, 1) and result.as_numpy("LABEL").dtype == np.int64
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES").sum(axis=1), 1, rtol=1e-4)
    result = client.infer("torch_linear", one_input("INPUT0", np.ones((2, 4), np.float32), "FP32"))
    assert result.as_numpy("OUTPUT0").shape == (2, 3)


def test_fp32_and_fp16_round_trip(extra):
    x32 = np.linspace(-1, 1, 1000, dtype=np.float32)
    np.testing.assert_array_equal(extra.infer("identity", one_input("X", x32, "FP32")).as_numpy("Y"), x32)
    x16 = np.linspace(-1, 1, 17).astype(np.float16)
    out = extra.infer("half", one_input("X", x16, "FP16")).as_numpy("Y")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x16)


def test_bytes_round_trip_element_by_element(extra):
    values = np.array([b"abc", b"", b"\x00\x01", "h\u00e9llo".encode()], dtype=object)
    result = extra.infer("text", one_input("X", values, "BYTES"))
    assert list(result.as_numpy("Y")) == list(values)
    strings = np.array(["a", "h\u00e9llo"], dtype=object)  # str elements go as UTF-8
    assert list(extra.infer("text", one_input("X", strings, "BYTES")).as_numpy("Y")) == [b"a", "h\u00e9llo".encode()]


def test_requested_output_subset(client):
    a, b = rand(seed=6), rand(seed=7)
    result = client.infer("add_sub", add_sub_inputs(a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_unknown_model_is_not_found(client):
    error = server_error(client.infer, "nope", add_sub_inputs(rand(), rand()))
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope'" in error.message()
    error = server_error(client.get_model_metadata, "nope")
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope'" in error.message()
    assert server_error(client.get_model_config, "nope").status() == "StatusCode.NOT_FOUND"


def test_version_selection(client):
    users = np.array([[7], [42]], dtype=np.int64)
    for version, expected in (("1", "1"), ("2", "2"), ("", "2"), ("stable", "1")):
        result = client.infer("recommender", one_input("USER_ID", users, "INT64"), model_version=version)
        assert result.get_response().model_version == expected
        assert result.as_numpy("ITEMS").shape == (2, 10)
    error = server_error(client.infer, "recommender", one_input("USER_ID", users, "INT64"), model_version="9")
    assert error.status() == "StatusCode.NOT_FOUND" and "version 9" in error.message()
    # Labels make any string a possible version: an unknown one is NOT_FOUND (module docstring).
    error = server_error(client.infer, "recommender", one_input("USER_ID", users, "INT64"), model_version="x")
    assert error.status() == "StatusCode.NOT_FOUND" and "'x'" in error.message()


def test_statistics_count_successes_and_failures(client, runtime):
    def counts():
        stats = client.get_inference_statistics("add_sub").model_stats[0]
        return stats.inference_stats.success.count, stats.inference_stats.fail.count

    success, fail = counts()
    for seed in range(3):
        client.infer("add_sub", add_sub_inputs(rand(seed=seed), rand(seed=seed + 1)))
    server_error(client.infer, "add_sub", one_input("INPUT0", rand(), "FP32"))  # missing INPUT1
    assert counts() == (success + 3, fail + 1)
    stats = client.get_inference_statistics("add_sub").model_stats[0]
    assert (stats.name, stats.version) == ("add_sub", "1")
    assert stats.execution_count >= 1 and stats.inference_count >= 3
    assert stats.inference_stats.compute_infer.ns > 0 and stats.batch_stats
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} == {"add_sub", "digits", "mlp", "torch_linear", "recommender"}
    assert client.get_inference_statistics("recommender", "1").model_stats[0].version == "1"
    assert client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]["name"] == "add_sub"


def test_model_config_decodes_with_tritonclient(client):
    config = client.get_model_config("add_sub").config
    assert config.name == "add_sub" and config.max_batch_size == 64 and config.backend == "python"
    assert config.input[0].name == "INPUT0" and config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [16]
    assert client.get_model_config("recommender", "1").config.output[1].data_type == model_config_pb2.TYPE_INT64
    assert client.get_model_config("digits", as_json=True)["config"]["backend"] == "onnx"


def test_repository_index_lists_versions_with_state(client):
    index = client.get_model_repository_index().models
    assert {(m.name, m.version, m.state) for m in index} >= {
        ("add_sub", "1", "READY"), ("recommender", "1", "READY"), ("recommender", "2", "READY")}


def test_repository_unload_and_load_need_the_admin_token(extra):
    error = server_error(extra.unload_model, "echo")
    assert error.status() == "StatusCode.PERMISSION_DENIED" and "bearer token" in error.message()
    wrong = {"authorization": "Bearer nope"}
    assert server_error(extra.load_model, "echo", headers=wrong).status() == "StatusCode.PERMISSION_DENIED"
    admin = {"authorization": f"Bearer {ADMIN}"}
    x = np.ones(3, np.float32)
    extra.unload_model("echo", headers=admin, unload_dependents=True)
    try:
        assert extra.is_model_ready("echo") is False
        error = server_error(extra.infer, "echo", one_input("X", x, "FP32"))
        assert error.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE") and "'echo'" in error.message()
        states = {m.name: m.state for m in extra.get_model_repository_index().models}
        assert states["echo"] == "UNAVAILABLE"
    finally:
        extra.load_model("echo", headers=admin)
    assert extra.is_model_ready("echo")
    np.testing.assert_array_equal(extra.infer("echo", one_input("X", x, "FP32")).as_numpy("Y"), x)
    assert server_error(extra.load_model, "missing", headers=admin).status() == "StatusCode.NOT_FOUND"


def test_load_with_config_override_is_unimplemented(extra):
    admin = {"authorization": f"Bearer {ADMIN}"}
    error = server_error(extra.load_model, "echo", headers=admin, config='{"max_batch_size": 2}')
    assert error.status() == "StatusCode.UNIMPLEMENTED" and "config" in error.message()


def test_load_in_model_control_mode_none_is_unavailable(client):
    error = server_error(client.load_model, "add_sub")
    assert error.status() == "StatusCode.UNAVAILABLE" and "explicit" in error.message()


def test_stream_answers_each_request_and_survives_a_bad_one(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: results.put((result, error)))
    try:
        inputs = add_sub_inputs(rand(seed=8), rand(seed=9))
        for request_id in ("r1", "r2", "r3"):
            client.async_stream_infer("add_sub", inputs, request_id=request_id)
        got = [results.get(timeout=10) for _ in range(3)]
        assert all(error is None for _, error in got)
        assert sorted(r.get_response().id for r, _ in got) == ["r1", "r2", "r3"]
        response = got[0][0].get_response()
        assert response.parameters["triton_final_response"].bool_param is True
        client.async_stream_infer("add_sub", add_sub_inputs(rand(2, 8), rand(2, 8)), request_id="bad")
        result, error = results.get(timeout=10)
        assert result is None and "INPUT0" in str(error) and "'bad'" in str(error)
        client.async_stream_infer("add_sub", inputs, request_id="r4")  # the stream still works
        result, error = results.get(timeout=10)
        assert error is None and result.get_response().id == "r4"
    finally:
        client.stop_stream()


def test_stream_with_triton_grpc_error_ends_with_a_status(main_url):
    c = grpcclient.InferenceServerClient(main_url)
    results: queue.Queue = queue.Queue()
    c.start_stream(lambda result, error: results.put((result, error)), headers={"triton_grpc_error": "true"})
    try:
        c.async_stream_infer("add_sub", add_sub_inputs(rand(2, 8), rand(2, 8)))
        result, error = results.get(timeout=10)
        assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT" and "INPUT0" in error.message()
    finally:
        c.stop_stream()
        c.close()


def test_asyncio_client_infer_and_stream(loop, main_url):
    async def run():
        async with aioclient.InferenceServerClient(main_url) as c:
            a, b = rand(seed=10), rand(seed=11)
            result = await c.infer("add_sub", add_sub_inputs(a, b, aioclient), request_id="x")
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)

            async def requests():
                for i in range(3):
                    yield {"model_name": "add_sub", "inputs": add_sub_inputs(a, b, aioclient), "request_id": str(i)}

            ids = []
            async for result, error in c.stream_infer(requests()):
                assert error is None
                ids.append(result.get_response().id)
                if len(ids) == 3:
                    break
            return sorted(ids)

    assert asyncio.run(run()) == ["0", "1", "2"]


def test_async_infer_matches_infer(client):
    a, b = rand(seed=12), rand(seed=13)
    done: queue.Queue = queue.Queue()
    client.async_infer("add_sub", add_sub_inputs(a, b), lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=10)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), client.infer("add_sub", add_sub_inputs(a, b)).as_numpy("OUTPUT0"))


def test_request_parameters_are_accepted(client):
    inputs = add_sub_inputs(rand(), rand())
    client.infer("add_sub", inputs, parameters={"my_key": 5, "s": "text", "flag": True, "ratio": 0.5})
    client.infer("add_sub", inputs, priority=1, timeout=10_000_000)
    client.infer("add_sub", inputs, sequence_id=7, sequence_start=True)
    error = server_error(client.infer, "add_sub", inputs, priority=2)  # reached the core as uint64_param
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "priority 2" in error.message()


def test_compressed_requests(client):
    a, b = rand(seed=14), rand(seed=15)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("add_sub", add_sub_inputs(a, b), compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


def test_large_tensor_over_the_grpc_default_limit(extra):
    x = np.arange(2 * 1024 * 1024, dtype=np.float32)  # 8 MiB
    np.testing.assert_array_equal(extra.infer("identity", one_input("X", x, "FP32")).as_numpy("Y"), x)


def test_shared_memory_trace_and_log_settings_are_unimplemented(client):
    status = client.get_system_shared_memory_status()
    assert len(status.regions) == 0 and len(client.get_cuda_shared_memory_status().regions) == 0
    client.unregister_system_shared_memory()
    error = server_error(client.register_system_shared_memory, "region", "/key", 64)
    assert error.status() == "StatusCode.UNIMPLEMENTED" and "raw_input_contents" in error.message()
    assert server_error(client.get_log_settings).status() == "StatusCode.UNIMPLEMENTED"
    assert server_error(client.get_trace_settings).status() == "StatusCode.UNIMPLEMENTED"


# --- bad input ----------------------------------------------------------------------------------


def _mixed() -> service_pb2.ModelInferRequest:
    request = raw_request(raw=[np.ones(16, np.float32).tobytes()])
    request.inputs[1].contents.fp32_contents.extend([1.0] * 16)
    return request


def _typed(values, field="fp32_contents", shape=(1, 16)) -> service_pb2.ModelInferRequest:
    request = raw_request(raw=[], inputs=[("INPUT0", "FP32", list(shape)), ("INPUT1", "FP32", [1, 16])])
    getattr(request.inputs[0].contents, field).extend(values)
    request.inputs[1].contents.fp32_contents.extend([1.0] * 16)
    return request


BAD_REQUESTS = {
    "wrong datatype": (lambda: raw_request(inputs=[("INPUT0", "INT32", [1, 16]), ("INPUT1", "FP32", [1, 16])]),
                       "INVALID_ARGUMENT", ["INPUT0", "FP32", "INT32"]),
    "wrong shape, same element count": (lambda: raw_request(inputs=[("INPUT0", "FP32", [2, 8]), ("INPUT1", "FP32", [1, 16])]),
                                        "INVALID_ARGUMENT", ["INPUT0", "[2, 8]"]),
    "unknown model": (lambda: raw_request("nope"), "NOT_FOUND", ["'nope'"]),
    "unknown version": (lambda: raw_request(model_version="9"), "NOT_FOUND", ["add_sub", "9"]),
    "missing input": (lambda: raw_request(inputs=[("INPUT0", "FP32", [1, 16])]), "INVALID_ARGUMENT", ["INPUT1"]),
    "extra input": (lambda: raw_request(inputs=[("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [1, 16]), ("EXTRA", "FP32", [1, 16])]),
                    "INVALID_ARGUMENT", ["EXTRA"]),
    "duplicate input": (lambda: raw_request(inputs=[("INPUT0", "FP32", [1, 16])] * 2), "INVALID_ARGUMENT", ["INPUT0", "more than once"]),
    "unknown output": (lambda: raw_request(outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="NOPE")]),
                       "INVALID_ARGUMENT", ["NOPE"]),
    "too few raw contents": (lambda: raw_request(raw=[np.ones(16, np.float32).tobytes()]),
                             "INVALID_ARGUMENT", ["1 raw_input_contents", "2 inputs"]),
    "too many raw contents": (lambda: raw_request(raw=[np.ones(16, np.float32).tobytes()] * 3),
                              "INVALID_ARGUMENT", ["3 raw_input_contents", "2 inputs"]),
    "byte size not matching shape": (lambda: raw_request(raw=[b"\0" * 60, np.ones(16, np.float32).tobytes()]),
                                     "INVALID_ARGUMENT", ["INPUT0", "64", "60"]),
    "negative dimension": (lambda: raw_request(inputs=[("INPUT0", "FP32", [1, -16]), ("INPUT1", "FP32", [1, 16])]),
                           "INVALID_ARGUMENT", ["INPUT0", "negative"]),
    "absurd dimensions": (lambda: raw_request(inputs=[("INPUT0", "FP32", [2**40, 2**40]), ("INPUT1", "FP32", [1, 16])]),
                          "INVALID_ARGUMENT", ["INPUT0", "elements"]),
    "unknown datatype": (lambda: raw_request(inputs=[("INPUT0", "FLOAT", [1, 16]), ("INPUT1", "FP32", [1, 16])]),
                         "INVALID_ARGUMENT", ["INPUT0", "FLOAT"]),
    "typed and raw mixed": (_mixed, "INVALID_ARGUMENT", ["INPUT1", "contents", "raw_input_contents"]),
    "typed values in the wrong field": (lambda: _typed([1] * 16, field="int_contents"), "INVALID_ARGUMENT", ["INPUT0", "fp32_contents", "int_contents"]),
    "typed value count not matching shape": (lambda: _typed([1.0] * 15), "INVALID_ARGUMENT", ["INPUT0", "16", "15"]),
    "no data at all": (lambda: raw_request(raw=[]), "INVALID_ARGUMENT", ["INPUT0", "no data"]),
    "empty model name": (lambda: raw_request(""), "INVALID_ARGUMENT", ["model_name"]),
    "NUL in the model name": (lambda: raw_request("add\x00sub"), "INVALID_ARGUMENT", ["NUL"]),
    "priority beyond the levels": (lambda: raw_request(parameters={"priority": service_pb2.InferParameter(uint64_param=7)}),
                                   "INVALID_ARGUMENT", ["priority 7"]),
    "priority of the wrong type": (lambda: raw_request(parameters={"priority": service_pb2.InferParameter(string_param="high")}),
                                   "INVALID_ARGUMENT", ["priority", "high"]),
    "negative timeout": (lambda: raw_request(parameters={"timeout": service_pb2.InferParameter(int64_param=-5)}),
                         "INVALID_ARGUMENT", ["timeout", "-5"]),
    "reserved triton_ parameter": (lambda: raw_request(parameters={"triton_bogus": service_pb2.InferParameter(bool_param=True)}),
                                   "INVALID_ARGUMENT", ["triton_bogus"]),
    "priority beyond uint32": (lambda: raw_request(parameters={"priority": service_pb2.InferParameter(uint64_param=2**40)}),
                               "INVALID_ARGUMENT", ["priority", str(2**40)]),
    "shared memory input": (lambda: _with_input_parameter("shared_memory_region", service_pb2.InferParameter(string_param="r")),
                            "UNIMPLEMENTED", ["INPUT0", "shared memory"]),
    "classification output": (lambda: raw_request(outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(
        name="OUTPUT0", parameters={"classification": service_pb2.InferParameter(int64_param=3)})]),
        "UNIMPLEMENTED", ["OUTPUT0", "classification"]),
}


BAD_BYTES = {
    "truncated element": (b"\x05\x00\x00\x00ab", [1], ["'X'", "text", "element 0"]),
    "truncated length prefix": (b"\x05\x00", [1], ["'X'", "text", "length"]),
    "element count not matching shape": (b"\x01\x00\x00\x00a", [2], ["'X'", "text"]),
}


@pytest.mark.parametrize("case", list(BAD_BYTES))
def test_bad_bytes_tensor_is_invalid_argument(case, servers, extra):
    raw, shape, fragments = BAD_BYTES[case]
    with grpc.insecure_channel(servers["extra"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        error = rpc_error(stub.ModelInfer, raw_request("text", inputs=[("X", "BYTES", shape)], raw=[raw]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())
    values = np.array([b"still", b"serving"], dtype=object)
    assert list(extra.infer("text", one_input("X", values, "BYTES")).as_numpy("Y")) == list(values)


def _with_input_parameter(key, value) -> service_pb2.ModelInferRequest:
    request = raw_request()
    request.inputs[0].parameters[key].CopyFrom(value)
    return request


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_a_message_naming_the_problem(case, stub, client):
    build, code, fragments = BAD_REQUESTS[case]
    error = rpc_error(stub.ModelInfer, build())
    assert error.code() == getattr(grpc.StatusCode, code), error.details()
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())
    assert_serving(client)


def test_bad_request_messages_name_the_model_and_version(stub):
    details = rpc_error(stub.ModelInfer, BAD_REQUESTS["byte size not matching shape"][0]()).details()
    assert "model 'add_sub' version 1" in details


def test_typed_contents_are_accepted(stub):
    a = np.arange(16, dtype=np.float32)
    request = _typed(a.tolist())
    response = stub.ModelInfer(request, timeout=10)
    out = np.frombuffer(response.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(out, a + 1)


def test_typed_bytes_contents_are_accepted(servers):
    with grpc.insecure_channel(servers["extra"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="text")
        request.inputs.add(name="X", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", b""])
        response = stub.ModelInfer(request, timeout=10)
    assert response.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_garbage_bytes_are_invalid_argument(main_url, client):
    with grpc.insecure_channel(main_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        error = rpc_error(call, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf" in error.details()
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        assert rpc_error(metadata, b"\x0a\x05ab").code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_serving(client)


def test_oversized_request_names_the_limit_and_the_flag(servers):
    c = grpcclient.InferenceServerClient(servers["guarded"])
    token = {"authorization": f"Bearer {TOKEN}"}
    try:
        x = rand(64, 16)  # two inputs of 4 KiB each: over the 4 KiB limit
        error = server_error(c.infer, "add_sub", add_sub_inputs(x, x), headers=token)
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        message = error.message()
        assert "receive limit" in message and f"{SMALL_LIMIT} bytes" in message and "--max-message-bytes" in message
        assert "model 'add_sub'" in message
        size = int(message.split(" is ")[1].split(" bytes")[0])
        assert size > 2 * x.nbytes
        assert c.infer("add_sub", add_sub_inputs(rand(), rand()), headers=token).as_numpy("OUTPUT0").shape == (1, 16)
    finally:
        c.close()


def test_oversized_request_in_a_stream_is_answered_in_band(servers):
    c = grpcclient.InferenceServerClient(servers["guarded"])
    results: queue.Queue = queue.Queue()
    c.start_stream(lambda result, error: results.put((result, error)), headers={"authorization": f"Bearer {TOKEN}"})
    try:
        x = rand(64, 16)
        c.async_stream_infer("add_sub", add_sub_inputs(x, x), request_id="big")
        result, error = results.get(timeout=10)
        assert result is None and "--max-message-bytes" in str(error) and "'big'" in str(error)
        c.async_stream_infer("add_sub", add_sub_inputs(rand(), rand()), request_id="small")
        result, error = results.get(timeout=10)
        assert error is None and result.get_response().id == "small"
    finally:
        c.stop_stream()
        c.close()


def test_oversized_response_names_the_send_limit(servers):
    c = grpcclient.InferenceServerClient(servers["guarded"])
    try:
        users = np.zeros((64, 1), np.int64)  # 512 bytes in, 64 x 20 x 8 bytes out
        error = server_error(c.infer, "recommender", one_input("USER_ID", users, "INT64"),
                             headers={"authorization": f"Bearer {TOKEN}"})
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "send limit" in error.message() and "--max-message-bytes" in error.message()
        assert "model 'recommender' version 2" in error.message()
    finally:
        c.close()


def test_inference_token_guards_everything_but_health(servers):
    c = grpcclient.InferenceServerClient(servers["guarded"])
    token = {"authorization": f"Bearer {TOKEN}"}
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("add_sub")
        for call in (lambda **kw: c.infer("add_sub", add_sub_inputs(rand(), rand()), **kw),
                     lambda **kw: c.get_model_metadata("add_sub", **kw),
                     lambda **kw: c.get_server_metadata(**kw),
                     lambda **kw: c.get_model_config("add_sub", **kw),
                     lambda **kw: c.get_inference_statistics("add_sub", **kw),
                     lambda **kw: c.get_model_repository_index(**kw)):
            assert server_error(call).status() == "StatusCode.PERMISSION_DENIED"
            call(headers=token)
        # No admin token: management needs the inference token (then fails on the control mode).
        assert server_error(c.unload_model, "add_sub").status() == "StatusCode.PERMISSION_DENIED"
        assert server_error(c.unload_model, "add_sub", headers=token).status() == "StatusCode.UNAVAILABLE"
        results: queue.Queue = queue.Queue()
        c.start_stream(lambda result, error: results.put((result, error)))
        try:
            c.async_stream_infer("add_sub", add_sub_inputs(rand(), rand()))
        except InferenceServerException:
            pass  # the stream may already have been refused
        result, error = results.get(timeout=10)
        assert result is None and error.status() == "StatusCode.PERMISSION_DENIED"
        c.stop_stream()
    finally:
        c.close()


# --- deadlines, cancellation and priorities (the slow model) ------------------------------------


def _slow_input(seconds: float, module=grpcclient) -> list:
    inp = module.InferInput("X", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[seconds]], np.float32))
    return [inp]


@pytest.fixture
def slow(extra, extra_runtime):
    """The slow model's statistics, and a way to keep its single instance busy."""

    class Slow:
        def stats(self) -> dict:
            return extra_runtime.model_statistics("slow")[0]

        def executions(self) -> int:
            return self.stats()["execution_count"]

        def failures(self, code: str) -> int:
            return self.stats()["failures"].get(code, 0)

        def occupy(self, seconds: float = 0.8) -> queue.Queue:
            """Starts a request that runs for ``seconds``; returns once it runs."""
            done: queue.Queue = queue.Queue()
            extra.async_infer("slow", _slow_input(seconds), lambda result, error: done.put((result, error)))
            deadline = time.monotonic() + 10
            while self.stats()["in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            return done

    return Slow()


def test_client_deadline_expires_in_the_queue(extra, slow):
    done = slow.occupy()
    before = slow.executions()
    expired = slow.failures("DEADLINE_EXCEEDED") + slow.failures("CANCELLED")
    error = server_error(extra.infer, "slow", _slow_input(0), client_timeout=0.2)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert done.get(timeout=10)[1] is None
    time.sleep(0.2)
    assert slow.executions() == before + 1  # only the occupying request ran: the other left the queue
    assert slow.failures("DEADLINE_EXCEEDED") + slow.failures("CANCELLED") == expired + 1


def test_cancelled_call_leaves_the_queue(extra, slow):
    done = slow.occupy()
    before, cancelled = slow.executions(), slow.failures("CANCELLED")
    outcome: queue.Queue = queue.Queue()
    call = extra.async_infer("slow", _slow_input(0), lambda result, error: outcome.put((result, error)))
    deadline = time.monotonic() + 10
    while slow.stats()["queued"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    call.cancel()
    result, error = outcome.get(timeout=10)
    assert result is None and "CANCELLED" in error.status()
    assert done.get(timeout=10)[1] is None
    time.sleep(0.2)
    assert slow.executions() == before + 1
    assert slow.failures("CANCELLED") == cancelled + 1


def test_timeout_parameter_expires_in_the_queue(extra, slow):
    done = slow.occupy()
    error = server_error(extra.infer, "slow", _slow_input(0), timeout=100_000)  # 0.1 s, in microseconds
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "'slow'" in error.message()
    done.get(timeout=10)


def test_priority_parameter_orders_the_queue(extra, slow):
    done = slow.occupy()
    order: queue.Queue = queue.Queue()
    extra.async_infer("slow", _slow_input(0), lambda result, error: order.put(("low", result, error)), priority=2)
    extra.async_infer("slow", _slow_input(0), lambda result, error: order.put(("high", result, error)), priority=1)
    deadline = time.monotonic() + 10
    while slow.stats()["queued"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.get(timeout=10)
    runs = {}
    for _ in range(2):
        name, result, error = order.get(timeout=10)
        assert error is None
        runs[name] = float(result.as_numpy("Y")[0, 0])
    assert runs["high"] < runs["low"]  # queued second, ran first


def test_asyncio_client_deadline(loop, servers):
    async def run():
        async with aioclient.InferenceServerClient(servers["extra"]) as c:
            with pytest.raises(InferenceServerException) as info:
                await c.infer("slow", _slow_input(0.5, aioclient), client_timeout=0.1)
            return info.value.status()

    assert asyncio.run(run()) == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(0.5)


def test_stream_holds_at_most_max_stream_requests_in_the_core(loop, extra_runtime):
    """At the cap the stream is not read: the core never holds more of the stream's requests
    than max_stream_requests, and every request is answered once the model frees up."""
    frontend, url = loop.start(extra_runtime, max_stream_requests=2)
    c = grpcclient.InferenceServerClient(url)

    def held() -> int:
        s = extra_runtime.model_statistics("slow")[0]
        return s["in_flight"] + s["queued"]

    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:  # what earlier tests left has finished
        time.sleep(0.01)
    results: queue.Queue = queue.Queue()
    c.start_stream(lambda result, error: results.put((result, error)))
    try:
        c.async_stream_infer("slow", _slow_input(1.0), request_id="0")  # holds the one instance for 1 s
        for i in range(1, 8):
            c.async_stream_infer("slow", _slow_input(0), request_id=str(i))
        most, deadline = 0, time.monotonic() + 0.9
        while time.monotonic() < deadline:
            most = max(most, held())
            time.sleep(0.005)
        got = [results.get(timeout=30) for _ in range(8)]
    finally:
        c.stop_stream()
        c.close()
        loop.run(frontend.stop(0))
    assert most == 2
    assert [error for _, error in got] == [None] * 8
    assert sorted(int(r.get_response().id) for r, _ in got) == list(range(8))


def test_max_stream_requests_below_one_is_refused(loop, runtime):
    frontend = GrpcFrontend(runtime, ServerOptions(grpc_port=0, max_stream_requests=0), Health(runtime))
    with pytest.raises(modelserve.InvalidArgumentError, match="max_stream_requests must be at least 1, got 0"):
        loop.run(frontend.start())


# --- many clients -------------------------------------------------------------------------------


def test_many_concurrent_clients_with_bad_ones_among_them(main_url):
    errors: list = []

    def worker(seed: int) -> None:
        c = grpcclient.InferenceServerClient(main_url)
        try:
            for i in range(20):
                a, b = rand(seed=seed * 100 + i), rand(seed=seed * 100 + i + 1)
                if seed % 4 == 3 and i % 2:
                    try:
                        c.infer("add_sub", add_sub_inputs(rand(2, 8), rand(2, 8)))
                        errors.append("bad request succeeded")
                    except InferenceServerException as e:
                        if e.status() != "StatusCode.INVALID_ARGUMENT":
                            errors.append(e)
                    continue
                result = c.infer("add_sub", add_sub_inputs(a, b), request_id=f"{seed}-{i}")
                if result.get_response().id != f"{seed}-{i}" or not np.allclose(result.as_numpy("OUTPUT0"), a + b):
                    errors.append(f"wrong answer for {seed}-{i}")
        except Exception as e:  # surfaced below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


# --- shutdown, health service -------------------------------------------------------------------


def test_draining_server_is_not_ready_and_refuses_new_requests(servers, client):
    health = servers["frontends"]["main"].health
    try:
        health.draining = True
        assert client.is_server_ready() is False and client.is_model_ready("add_sub") is False
        with grpc.insecure_channel(servers["main"]) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        health.accepting = False
        error = server_error(client.infer, "add_sub", add_sub_inputs(rand(), rand()))
        assert error.status() == "StatusCode.UNAVAILABLE" and "shutting down" in error.message()
    finally:
        health.draining, health.accepting = False, True
    assert_serving(client)


def test_grpc_health_service(main_url):
    with grpc.insecure_channel(main_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        error = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="nope"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


# --- TLS ----------------------------------------------------------------------------------------


def _certificates_with_cryptography(folder: Path) -> None:
    conftest.write_certificates(folder)


def _certificates_with_openssl(folder: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=modelserve test CA", "-days", "1")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for stem, cn in (("server", "localhost"), ("client", "client")):
        openssl("req", *key, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
        extension = ["-extfile", "server.ext"] if stem == "server" else []
        openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{stem}.crt", "-days", "1", *extension)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by
    the CA: made with `cryptography` when it is installed, else with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("TLS tests need the cryptography package or the openssl command")
        _certificates_with_openssl(folder)
    else:
        _certificates_with_cryptography(folder)
    return folder


def test_tls(loop, runtime, certificates):
    frontend, url = loop.start(runtime, tls_cert=certificates / "server.crt", tls_key=certificates / "server.key")
    try:
        c = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(certificates / "ca.crt"))
        try:
            assert c.is_server_live()
            assert_serving(c)
        finally:
            c.close()
        plain = grpcclient.InferenceServerClient(url)
        try:
            assert server_error(plain.is_server_live, client_timeout=5).status() in (
                "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
        finally:
            plain.close()
    finally:
        loop.run(frontend.stop(0))


def test_mutual_tls_requires_a_client_certificate(loop, runtime, certificates):
    frontend, url = loop.start(runtime, tls_cert=certificates / "server.crt", tls_key=certificates / "server.key",
                               tls_client_ca=certificates / "ca.crt")
    try:
        c = grpcclient.InferenceServerClient(
            url, ssl=True, root_certificates=str(certificates / "ca.crt"),
            private_key=str(certificates / "client.key"), certificate_chain=str(certificates / "client.crt"))
        try:
            assert_serving(c)
        finally:
            c.close()
        anonymous = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(certificates / "ca.crt"))
        try:
            assert server_error(anonymous.is_server_live, client_timeout=5).status() in (
                "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
        finally:
            anonymous.close()
    finally:
        loop.run(frontend.stop(0))


def test_tls_options_are_checked(loop, runtime, tmp_path):
    with pytest.raises(modelserve.InvalidArgumentError, match="tls_key"):
        loop.start(runtime, tls_cert=tmp_path / "x.crt")
    with pytest.raises(modelserve.InvalidArgumentError, match="tls_cert: cannot read"):
        loop.start(runtime, tls_cert=tmp_path / "x.crt", tls_key=tmp_path / "x.key")


def test_port_in_use_is_an_error(loop, runtime, main_url):
    port = int(main_url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=str(port)):
        loop.run(GrpcFrontend(runtime, ServerOptions(grpc_port=port), Health(runtime)).start())


# --- the protocol definition --------------------------------------------------------------------


def test_committed_stubs_match_the_generator(tmp_path):
    pytest.importorskip("grpc_tools")
    out = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    committed = ROOT / "python" / "modelserve" / "_proto"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == ["inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py",
                         "modelserve_pb2.py", "modelserve_pb2.pyi", "modelserve_pb2_grpc.py"]
    for name in generated:
        assert filecmp.cmp(tmp_path / name, committed / name, shallow=False), (
            f"{name} differs from what protos/generate.py writes; run python protos/generate.py")


def _messages(descriptor):
    for message in descriptor.message_types_by_name.values():
        yield from _nested(message)


def _nested(message):
    yield message
    for inner in message.nested_types:
        yield from _nested(inner)


def test_field_numbers_agree_with_tritonclient():
    """Every message and field modelserve declares has tritonclient's number and type (the two
    definitions live in different descriptor pools, so both can be imported at once)."""
    theirs = descriptor_pool.Default()
    checked = 0
    for message in _messages(inference_pb2.DESCRIPTOR):
        other = theirs.FindMessageTypeByName(message.full_name)
        for field in message.fields:
            twin = other.fields_by_name[field.name]
            assert (field.number, field.type) == (twin.number, twin.type), f"{message.full_name}.{field.name}"
            checked += 1
    assert checked > 150
    enums = list(inference_pb2.DESCRIPTOR.enum_types_by_name.values())
    enums += [e for m in _messages(inference_pb2.DESCRIPTOR) for e in m.enum_types]
    assert len(enums) == 2
    for enum in enums:
        twin = theirs.FindEnumTypeByName(enum.full_name)
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in twin.values}
    ours = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    other = theirs.FindServiceByName("inference.GRPCInferenceService")
    for method in ours.methods:
        twin = other.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            twin.input_type.full_name, twin.output_type.full_name)
