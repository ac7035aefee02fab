"""The HTTP frontend: the Open Inference Protocol's /v2 routes driven by the unmodified
tritonclient.http clients (sync and asyncio) and by raw requests for what they cannot send.

Every server here is real: an HttpFrontend on port 0, in an event loop on a background thread.
``main`` serves examples/models; ``extra`` serves a small repository written here (BYTES and FP16
identities, a model that holds its instance, a copy of add_sub) in explicit mode; ``locked`` serves
that repository with an admin token, an inference token and a 16 KiB message limit.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import http.client
import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import LoopThread
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

import modelserve
from modelserve.server.common import ServerOptions
from modelserve.server.health import Health
from modelserve.server.http import HttpFrontend
from modelserve.server.metrics import Metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"
ADMIN, INFER_TOKEN = "admin-s3cret", "infer-s3cret"
LIMIT = 16 * 1024

IDENTITY = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""

# Executes one request at a time; holds while the file "hold" next to its config exists, and
# appends each request's value to "executed".
GATE = """
import pathlib, time

class Model:
    def load(self, context):
        self.folder = pathlib.Path(context.version_dir).parent

    def execute(self, inputs):
        with open(self.folder / "executed", "a") as f:
            f.write(f"{float(inputs['INPUT0'][0])}\\n")
        deadline = time.monotonic() + 20
        while (self.folder / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def write_model(repo: Path, name: str, datatype: str, code: str, shape: str = "[-1]") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.yaml").write_text(
        f"backend: python\nmax_batch_size: 0\n"
        f"inputs: [{{name: INPUT0, datatype: {datatype}, shape: {shape}}}]\n"
        f"outputs: [{{name: OUTPUT0, datatype: {datatype}, shape: {shape}}}]\n"
        "instances: {count: 1, device: cpu}\n"
    )
    (repo / name / "1" / "model.py").write_text(code)


# --- servers --------------------------------------------------------------------------------------


class Served:
    def __init__(self, frontend: HttpFrontend, port: int, health: Health) -> None:
        self.frontend, self.port, self.health = frontend, port, health
        self.url = f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread("http-test-loop")
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def serve(loop, runtime, extra_runtime):
    """serve(runtime, metrics=True, **options) -> Served; every frontend stops at module end,
    before the runtimes close (they are set up first, so they are torn down after)."""
    started = []

    def start(runtime, metrics=True, **options):
        health = Health(runtime)
        frontend = HttpFrontend(runtime, ServerOptions(http_port=0, **options), health,
                                Metrics(runtime) if metrics else None)
        port = loop.run(frontend.start())
        started.append(frontend)
        return Served(frontend, port, health)

    yield start
    for frontend in started:
        loop.run(frontend.stop(1.0))


@pytest.fixture(scope="module")
def runtime():
    with modelserve.Runtime(EXAMPLES) as rt:
        yield rt


@pytest.fixture(scope="module")
def main(serve, runtime):
    return serve(runtime)


@pytest.fixture(scope="module")
def extra_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "identity_bytes", "BYTES", IDENTITY)
    write_model(repo, "identity_fp16", "FP16", IDENTITY, shape="[-1, -1]")
    write_model(repo, "gate", "FP32", GATE)
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    return repo


@pytest.fixture(scope="module")
def extra_runtime(extra_repo):
    names = ["identity_bytes", "identity_fp16", "gate", "add_sub"]
    with modelserve.Runtime(extra_repo, model_control_mode="explicit", load_models=names) as rt:
        yield rt


@pytest.fixture(scope="module")
def extra(serve, extra_runtime):
    return serve(extra_runtime)


@pytest.fixture(scope="module")
def locked(serve, extra_runtime):
    return serve(extra_runtime, metrics=False, admin_token=ADMIN, inference_token=INFER_TOKEN,
                 max_message_bytes=LIMIT)


@pytest.fixture(scope="module")
def client(main):
    with httpclient.InferenceServerClient(main.url) as c:
        yield c


# --- helpers --------------------------------------------------------------------------------------


def request(served, method, path, body=None, headers=None):
    """A raw request without any header the caller did not give (no Content-Type):
    (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def error_of(status_headers_body):
    status, headers, body = status_headers_body
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)["error"]


def add_sub_inputs(a, b, binary=True):
    inputs = []
    for name, x in (("INPUT0", a), ("INPUT1", b)):
        i = httpclient.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    return inputs


A = np.arange(32, dtype=np.float32).reshape(2, 16)
B = np.full((2, 16), 0.5, dtype=np.float32)


def serves(served) -> None:
    """The server still answers a correct inference (after a bad one)."""
    with httpclient.InferenceServerClient(served.url) as c:
        result = c.infer("add_sub", add_sub_inputs(A, B))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def infer_body(inputs, outputs=None, parameters=None, **extra):
    """(body, headers) of a JSON inference request; ``inputs`` may carry ``_blob`` bytes, sent
    as binary data after the JSON header."""
    blobs = []
    specs = []
    for spec in inputs:
        spec = dict(spec)
        blob = spec.pop("_blob", None)
        if blob is not None:
            spec.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        specs.append(spec)
    header = {"inputs": specs, **extra}
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text))} if blobs else {}
    return text + b"".join(blobs), headers


def fp32(name, shape, values=None):
    values = np.zeros(int(np.prod(shape)), np.float32) if values is None else values
    return {"name": name, "datatype": "FP32", "shape": shape, "_blob": np.asarray(values, np.float32).tobytes()}


GOOD = [fp32("INPUT0", [1, 16]), fp32("INPUT1", [1, 16])]


# --- health and metadata (spec section 6, checks 1-3) ----------------------------------------------


def test_server_is_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_health_answers_are_status_codes_with_empty_bodies(main):
    assert request(main, "GET", "/v2/health/live")[::2] == (200, b"")
    assert request(main, "GET", "/v2/health/ready")[::2] == (200, b"")
    assert request(main, "GET", "/v2/models/nope/ready")[::2] == (400, b"")


def test_model_ready_by_version_and_label(client):
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("recommender", "1")
    assert client.is_model_ready("recommender", "stable")
    assert not client.is_model_ready("recommender", "9")
    assert not client.is_model_ready("nope")


def test_server_metadata_lists_the_binary_tensor_data_extension(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "modelserve"
    assert meta["version"] == modelserve.__version__
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" in meta["extensions"]


def test_model_metadata_shows_the_batch_dimension(client):
    meta = client.get_model_metadata("add_sub")
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_metadata_of_a_version_and_a_label(client):
    assert client.get_model_metadata("recommender", "1")["versions"] == ["1", "2"]
    assert client.get_model_metadata("recommender", "stable")["inputs"][0]["datatype"] == "INT64"


def test_model_config_uses_triton_data_types(client):
    config = client.get_model_config("add_sub")
    assert config["name"] == "add_sub"
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [16]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["modelserve"]["inputs"][0]["datatype"] == "FP32"


def test_model_config_of_bytes_is_type_string(extra):
    with httpclient.InferenceServerClient(extra.url) as c:
        assert c.get_model_config("identity_bytes")["input"][0]["data_type"] == "TYPE_STRING"


# --- inference (checks 4-8, 12, 18) -----------------------------------------------------------------


def test_infer_in_the_default_binary_mode(client):
    result = client.infer("add_sub", add_sub_inputs(A, B), request_id="abc")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert result.as_numpy("OUTPUT0").dtype == np.float32
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("add_sub", "1", "abc")
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_infer_in_pure_json(client):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("add_sub", add_sub_inputs(A, B, binary=False), outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert "data" in result.get_response()["outputs"][0]
    assert "id" not in result.get_response()


def test_infer_mixes_binary_and_json_per_tensor(client):
    inputs = add_sub_inputs(A, B)
    inputs[1].set_data_from_numpy(B, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    kinds = [sorted(o) for o in result.get_response()["outputs"]]
    assert kinds == [["datatype", "name", "parameters", "shape"], ["data", "datatype", "name", "shape"]]


def test_infer_returns_only_the_requested_outputs(client):
    result = client.infer("add_sub", add_sub_inputs(A, B), outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def test_json_data_may_be_nested_in_the_shape(main):
    body, _ = infer_body(
        [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": A.tolist()},
         {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": B.ravel().tolist()}]
    )
    status, _, reply = request(main, "POST", "/v2/models/add_sub/infer", body)
    assert status == 200
    out = {o["name"]: o for o in json.loads(reply)["outputs"]}
    assert out["OUTPUT0"]["shape"] == [2, 16]
    assert out["OUTPUT0"]["data"] == (A + B).ravel().tolist()



@pytest.mark.parametrize("data, message", [
    ([[1.0] * 16, [1.0] * 15 + [1.0, 1.0]], r"data\[1\] has 17 elements, the shape \[2, 16\] needs 16 in dimension 1"),
    ([[1.0] * 17, [1.0] * 15], r"data\[0\] has 17 elements"),
    ([[1.0] * 16, [[1.0]] * 16], r"data\[1\]\[0\] is nested deeper than the shape \[2, 16\]"),
    ([[1.0] * 16, 1.0], r"data\[1\] is 1.0, a list of 16 was expected"),
])
def test_ragged_nested_json_data_is_refused_naming_the_list(main, data, message):
    body, _ = infer_body(
        [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": data},
         {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": B.ravel().tolist()}]
    )
    status, _, reply = request(main, "POST", "/v2/models/add_sub/infer", body)
    assert status == 400
    assert re.search(r"input 'INPUT0': " + message, json.loads(reply)["error"]), json.loads(reply)["error"]

def test_replies_are_not_held_back_by_delayed_acks(client):
    # A reply written in two parts (headers, body) without TCP_NODELAY waits out the client's
    # delayed ACK: 40 ms a call on Linux, 0.8 s for these 20. Unhindered they take a few ms each.
    start = time.perf_counter()
    for _ in range(20):
        client.get_model_metadata("add_sub")
    assert time.perf_counter() - start < 0.5


def test_request_without_content_type_succeeds(main):
    body, headers = infer_body(GOOD)
    assert "Content-Type" not in headers
    status, reply_headers, reply = request(main, "POST", "/v2/models/add_sub/infer", body, headers)
    assert status == 200
    assert reply_headers["content-type"] == "application/json"


def test_versions_numbers_labels_and_the_default(client):
    users = np.array([[7]], dtype=np.int64)
    i = httpclient.InferInput("USER_ID", [1, 1], "INT64")
    i.set_data_from_numpy(users)
    answers = {}
    for version, expected in (("1", "1"), ("2", "2"), ("", "2"), ("stable", "1")):
        result = client.infer("recommender", [i], model_version=version)
        assert result.get_response()["model_version"] == expected
        answers[expected] = result.as_numpy("ITEMS")
    assert not np.array_equal(answers["1"], answers["2"])
    for version in ("9", "x"):
        with pytest.raises(InferenceServerException) as e:
            client.infer("recommender", [i], model_version=version)
        assert e.value.status() == "404"
        assert "recommender" in e.value.message()


def test_priority_timeout_and_custom_parameters_are_accepted(client):
    result = client.infer("add_sub", add_sub_inputs(A, B), priority=1, timeout=1_000_000,
                          parameters={"my_key": 5, "note": "x"})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def test_gzip_and_deflate_requests(client):
    for algorithm in ("gzip", "deflate"):
        result = client.infer("add_sub", add_sub_inputs(A, B), request_compression_algorithm=algorithm,
                              response_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def test_raw_binary_request_with_header_length_zero(main):
    x = np.array([1, 2, 3, 4], np.float32)
    status, headers, reply = request(main, "POST", "/v2/models/torch_linear/infer", x.tobytes(),
                                     {"Inference-Header-Content-Length": "0"})
    assert status == 200
    n = int(headers["inference-header-content-length"])
    out = json.loads(reply[:n])["outputs"][0]
    assert out["shape"] == [1, 3] and out["parameters"]["binary_data_size"] == 12
    probabilities = np.frombuffer(reply[n:], np.float32)
    assert abs(probabilities.sum() - 1) < 1e-5


def test_a_raw_binary_request_to_a_model_with_two_inputs_names_the_count(main):
    status, message = error_of(request(main, "POST", "/v2/models/add_sub/infer", bytes(64),
                                       {"Inference-Header-Content-Length": "0"}))
    assert status == 400
    assert message == ("model 'add_sub': a raw binary request (Inference-Header-Content-Length: 0) needs a model "
                       "with exactly one input; this one has 2")


def test_inference_reads_no_model_config_or_metadata(main, runtime, client, monkeypatch):
    """The core checks a request against the version it goes to (Note [HTTP requests]): the
    frontend asks the runtime for no config or metadata per request, on any of the three paths."""
    calls = []
    for name in ("model_config", "model_metadata"):
        def spy(*args, _name=name, _real=getattr(runtime, name), **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(runtime, name, spy)
    for binary in (True, False):
        np.testing.assert_array_equal(client.infer("add_sub", add_sub_inputs(A, B, binary)).as_numpy("OUTPUT0"), A + B)
    status, _, _ = request(main, "POST", "/v2/models/torch_linear/infer", np.ones(4, np.float32).tobytes(),
                           {"Inference-Header-Content-Length": "0"})
    assert status == 200 and calls == []


def test_bytes_round_trip_binary_and_json(extra):
    elements = np.array([b"abc", b"", b"\x00\x01", "h\u00e9llo".encode()], dtype=np.object_)
    with httpclient.InferenceServerClient(extra.url) as c:
        for binary in (True, False):
            i = httpclient.InferInput("INPUT0", [4], "BYTES")
            i.set_data_from_numpy(elements, binary_data=binary)
            result = c.infer("identity_bytes", [i], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
            out = result.as_numpy("OUTPUT0")
            if binary:
                assert list(out) == list(elements)
            else:  # JSON carries strings
                assert list(out) == [e.decode() for e in elements]


def test_fp16_round_trips_as_binary_and_as_json(extra):
    x = np.array([[0.5, -2, 65504]], np.float16)
    with httpclient.InferenceServerClient(extra.url) as c:
        for binary in (True, False):
            i = httpclient.InferInput("INPUT0", [1, 3], "FP16")
            i.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            np.testing.assert_array_equal(c.infer("identity_fp16", [i], outputs=[out]).as_numpy("OUTPUT0"), x)


def test_bf16_is_refused_as_json(extra):
    body, _ = infer_body([{"name": "INPUT0", "datatype": "BF16", "shape": [1, 3], "data": [0.5, -2, 1]}])
    status, message = error_of(request(extra, "POST", "/v2/models/identity_fp16/infer", body))
    assert status == 400 and "BF16" in message and "binary" in message


def test_empty_tensors_round_trip(extra):
    with httpclient.InferenceServerClient(extra.url) as c:
        for binary in (True, False):
            i = httpclient.InferInput("INPUT0", [0], "BYTES")
            i.set_data_from_numpy(np.array([], dtype=np.object_), binary_data=binary)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            result = c.infer("identity_bytes", [i], outputs=[out])
            assert result.as_numpy("OUTPUT0").shape == (0,)
        i = httpclient.InferInput("INPUT0", [0, 3], "FP16")
        i.set_data_from_numpy(np.zeros((0, 3), np.float16))
        assert c.infer("identity_fp16", [i]).as_numpy("OUTPUT0").shape == (0, 3)


# --- errors (checks 9-11, 21) -------------------------------------------------------------------------


def test_wrong_shape_with_the_same_element_count(client):
    inputs = add_sub_inputs(A.reshape(4, 8), B.reshape(4, 8))
    with pytest.raises(InferenceServerException) as e:
        client.infer("add_sub", inputs)
    assert e.value.status() == "400"
    assert "INPUT0" in e.value.message() and "[4, 8]" in e.value.message()


def test_wrong_datatype(client):
    x = A.astype(np.float64)
    i0 = httpclient.InferInput("INPUT0", [2, 16], "FP64")
    i0.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer("add_sub", [i0, add_sub_inputs(A, B)[1]])
    assert e.value.status() == "400"
    assert "INPUT0" in e.value.message() and "FP64" in e.value.message()


def test_unknown_model_is_404_for_infer_and_metadata(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", add_sub_inputs(A, B))
    assert e.value.status() == "404" and "'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404"


def test_missing_extra_and_unknown_tensors(client):
    inputs = add_sub_inputs(A, B)
    with pytest.raises(InferenceServerException, match="missing input 'INPUT1'") as e:
        client.infer("add_sub", inputs[:1])
    assert e.value.status() == "400"
    extra_input = httpclient.InferInput("INPUT2", [2, 16], "FP32")
    extra_input.set_data_from_numpy(A)
    with pytest.raises(InferenceServerException, match="unexpected input 'INPUT2'"):
        client.infer("add_sub", inputs + [extra_input])
    with pytest.raises(InferenceServerException, match="unknown output 'NOPE'"):
        client.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("NOPE")])


def bytes_blob(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


BAD_REQUESTS = {
    # name: (path, body, headers, status, words the message must contain)
    "binary size not matching the shape": (
        "add_sub", *infer_body([fp32("INPUT0", [1, 16], np.zeros(15)), GOOD[1]]), 400, ["INPUT0", "64 bytes", "60"]),
    "binary sizes short of the body": (
        "add_sub", infer_body(GOOD)[0] + b"\0" * 4, infer_body(GOOD)[1], 400, ["132 bytes", "add up to 128"]),
    "binary size beyond the body": (
        "add_sub", infer_body(GOOD)[0][:-8], infer_body(GOOD)[1], 400, ["INPUT1", "binary_data_size 64", "56 bytes"]),
    "header length beyond the body": (
        "add_sub", infer_body(GOOD)[0], {"Inference-Header-Content-Length": "100000"}, 400,
        ["Inference-Header-Content-Length 100000", "body of"]),
    "header length not a number": (
        "add_sub", infer_body(GOOD)[0], {"Inference-Header-Content-Length": "ten"}, 400,
        ["Inference-Header-Content-Length", "'ten'"]),
    "header not JSON": ("add_sub", b"{not json" + b"\0" * 8, {"Inference-Header-Content-Length": "9"}, 400,
                        ["add_sub", "not valid JSON"]),
    "body not JSON": ("add_sub", b"\xff\xfe", {}, 400, ["not valid JSON"]),
    "header not an object": ("add_sub", b"[1, 2]", {}, 400, ["JSON object"]),
    "no inputs": ("add_sub", b"{}", {}, 400, ["'inputs'"]),
    "BYTES with a truncated length prefix": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "BYTES", "shape": [2],
                                 "_blob": bytes_blob(b"abc") + b"\x05\0"}]), 400, ["INPUT0", "BYTES"]),
    "BYTES JSON that is not strings": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "BYTES", "shape": [1], "data": [5]}]), 400,
        ["INPUT0", "element 0 is 5", "expected a string for BYTES"]),
    "negative dimension": (
        "add_sub", *infer_body([fp32("INPUT0", [1, -16], np.zeros(16)), GOOD[1]]), 400, ["INPUT0", "negative"]),
    "absurd dimensions": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": [1 << 20, 1 << 20], "data": []}]),
        400, ["INPUT0", "elements"]),
    "JSON data count not matching the shape": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 15}, GOOD[1]]),
        400, ["INPUT0", "16 values", "15"]),
    "data and binary_data_size together": (
        "add_sub", *infer_body([{**fp32("INPUT0", [1, 16]), "data": [0.0] * 16}, GOOD[1]]), 400, ["INPUT0", "both"]),
    "neither data nor binary_data_size": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}, GOOD[1]]), 400,
        ["INPUT0", "neither"]),
    "unknown datatype": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "FLOAT", "shape": [1], "data": [1]}]), 400,
        ["INPUT0", "FLOAT"]),
    "shape not a list of integers": (
        "add_sub", *infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": "16", "data": [1]}]), 400,
        ["INPUT0", "shape"]),
    "input named twice": ("add_sub", *infer_body([GOOD[0], GOOD[0]]), 400, ["INPUT0", "more than once"]),
    "id not a string": ("add_sub", *infer_body(GOOD, id=7), 400, ["'id'"]),
    "priority not an integer": ("add_sub", *infer_body(GOOD, parameters={"priority": "high"}), 400, ["priority"]),
    "priority beyond 32 bits": ("add_sub", *infer_body(GOOD, parameters={"priority": 2**40}), 400, ["priority"]),
    "unknown reserved parameter": ("add_sub", *infer_body(GOOD, parameters={"triton_x": 1}), 400, ["triton_x"]),
    "binary_data not a bool": (
        "add_sub", *infer_body(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": "yes"}}]), 400,
        ["OUTPUT0", "binary_data"]),
    "classification": (
        "add_sub", *infer_body(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"classification": 2}}]), 501,
        ["OUTPUT0", "classification"]),
    "unknown version": ("add_sub/versions/9", *infer_body(GOOD), 404, ["add_sub", "version 9"]),
    "unknown model": ("nope", *infer_body(GOOD), 404, ["'nope'"]),
    "NUL in the model name": ("add%00sub", *infer_body(GOOD), 400, ["NUL"]),
    "unknown Content-Encoding": ("add_sub", infer_body(GOOD)[0], {**infer_body(GOOD)[1], "Content-Encoding": "br"},
                                 415, ["br"]),
    "corrupt gzip": ("add_sub", b"\x1f\x8b\x08\0garbage", {"Content-Encoding": "gzip"}, 400, ["gzip"]),
    "truncated gzip": ("add_sub", gzip.compress(infer_body(GOOD)[0])[:-12], {"Content-Encoding": "gzip"}, 400,
                       ["truncated"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_with_a_message_naming_the_problem(main, case):
    model, body, headers, status, words = BAD_REQUESTS[case]
    got, message = error_of(request(main, "POST", f"/v2/models/{model}/infer", body, headers))
    assert got == status, message
    for word in words:
        assert word in message
    serves(main)


def test_client_error_message_equals_the_json_error(client, main):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert error_of(request(main, "GET", "/v2/models/nope")) == (404, e.value.message())


def test_unknown_routes_and_wrong_methods_answer_json(main):
    assert error_of(request(main, "GET", "/v2/nothing/here")) == (404, "no route for GET /v2/nothing/here")
    assert error_of(request(main, "GET", "/v2/"))[0] == 404
    status, message = error_of(request(main, "GET", "/v2/models/add_sub/infer"))
    assert status == 405 and "POST" in message
    status, message = error_of(request(main, "POST", "/v2/health/live"))
    assert status == 405 and "GET" in message



def test_an_infer_request_is_routed_without_trying_the_route_patterns(main, monkeypatch):
    from starlette.routing import Route

    tried = []
    original = Route.matches
    monkeypatch.setattr(Route, "matches", lambda self, scope: tried.append(self.path) or original(self, scope))
    body, _ = infer_body(
        [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": A.ravel().tolist()},
         {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": B.ravel().tolist()}]
    )
    for path in ("/v2/models/add_sub/infer", "/v2/models/add_sub/versions/1/infer"):
        status, _, reply = request(main, "POST", path, body)
        assert status == 200 and json.loads(reply)["model_version"] == "1"
    assert tried == []
    status, message = error_of(request(main, "POST", "/v2/models/versions/infer", body))
    assert status == 404 and "model 'versions'" in message  # a model named "versions": looked up, not a route
    assert request(main, "GET", "/v2/models/add_sub/ready")[0] == 200 and tried  # the rest: Starlette's

def test_shared_memory_has_no_regions_and_cannot_register(client):
    assert client.get_system_shared_memory_status() == []
    assert client.get_cuda_shared_memory_status() == []
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory("region")
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status("region")
    assert e.value.status() == "404" and "'region'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory("region", "/key", 64)
    assert e.value.status() == "501" and "shared memory" in e.value.message()


def test_trace_and_log_settings_answer_501(client):
    for call in (client.get_trace_settings, client.get_log_settings, lambda: client.get_trace_settings("add_sub")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "501" and "does not implement" in e.value.message()


def test_sequence_parameters_are_accepted_and_ignored(client):
    result = client.infer("add_sub", add_sub_inputs(A, B), sequence_id=7, sequence_start=True)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def test_huge_timeout_means_no_timeout(main):
    body, headers = infer_body(GOOD, parameters={"timeout": 2**62})
    assert request(main, "POST", "/v2/models/add_sub/infer", body, headers)[0] == 200


# --- statistics, repository, metrics (checks 13-15) ---------------------------------------------------


def test_statistics_count_successes_and_failures(client):
    def counts():
        (stats,) = client.get_inference_statistics("add_sub")["model_stats"]
        return stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]

    before = counts()
    for _ in range(3):
        client.infer("add_sub", add_sub_inputs(A, B))
    with pytest.raises(InferenceServerException):
        client.infer("add_sub", add_sub_inputs(A.reshape(4, 8), B.reshape(4, 8)))
    after = counts()
    assert after[0] - before[0] == 3
    assert after[1] - before[1] == 1


def test_statistics_of_every_model_and_of_one_version(client):
    names = {(s["name"], s["version"]) for s in client.get_inference_statistics()["model_stats"]}
    assert {("add_sub", "1"), ("recommender", "1"), ("recommender", "2")} <= names
    (one,) = client.get_inference_statistics("recommender", "1")["model_stats"]
    assert one["version"] == "1" and "batch_stats" in one


def test_repository_index_lists_every_version_with_its_state(client, main):
    index = client.get_model_repository_index()
    assert {"name": "recommender", "version": "2", "state": "READY", "reason": ""} in index
    status, _, body = request(main, "POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(e["state"] == "READY" for e in json.loads(body))


def test_load_in_model_control_mode_none_is_refused(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("add_sub")
    assert e.value.status() == "503" and "explicit" in e.value.message()


def test_unload_and_load_with_the_admin_token(locked, extra_runtime):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    infer_auth = {"Authorization": f"Bearer {INFER_TOKEN}"}
    with httpclient.InferenceServerClient(locked.url) as c:
        for headers in (None, {"Authorization": "Bearer wrong"}, infer_auth):
            with pytest.raises(InferenceServerException) as e:
                c.unload_model("add_sub", headers=headers)
            assert e.value.status() == "403" and "token" in e.value.message()
        assert extra_runtime.model_ready("add_sub")
        c.unload_model("add_sub", headers=auth, unload_dependents=True)
        assert not c.is_model_ready("add_sub")
        with pytest.raises(InferenceServerException) as e:
            c.infer("add_sub", add_sub_inputs(A, B), headers=infer_auth)
        assert e.value.status() == "404"
        c.load_model("add_sub", headers=auth)
        assert c.is_model_ready("add_sub")
        np.testing.assert_array_equal(
            c.infer("add_sub", add_sub_inputs(A, B), headers=infer_auth).as_numpy("OUTPUT0"), A + B)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("add_sub", headers=auth, config='{"max_batch_size": 2}')
        assert e.value.status() == "501"
        with pytest.raises(InferenceServerException) as e:  # a name, looked up; never a path
            c.load_model("..", headers=auth)
        assert e.value.status() == "404" and "'..' not found" in e.value.message()


def test_without_an_admin_token_the_inference_token_guards_load(serve, extra_runtime):
    served = serve(extra_runtime, inference_token=INFER_TOKEN)
    with httpclient.InferenceServerClient(served.url) as c:
        with pytest.raises(InferenceServerException) as e:
            c.load_model("add_sub")
        assert e.value.status() == "403"
        c.load_model("add_sub", headers={"Authorization": f"Bearer {INFER_TOKEN}"})


def test_inference_token_guards_inference_and_metadata_not_health(locked):
    infer_auth = {"Authorization": f"Bearer {INFER_TOKEN}"}
    with httpclient.InferenceServerClient(locked.url) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("add_sub")
        for call in (lambda h: c.infer("add_sub", add_sub_inputs(A, B), headers=h),
                     lambda h: c.get_model_metadata("add_sub", headers=h),
                     lambda h: c.get_server_metadata(headers=h),
                     lambda h: c.get_inference_statistics(headers=h)):
            with pytest.raises(InferenceServerException) as e:
                call(None)
            assert e.value.status() == "403"
            call(infer_auth)


def test_metrics_are_served_in_prometheus_format(main, locked):
    status, headers, _ = request(main, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert error_of(request(locked, "GET", "/metrics"))[0] == 404


# --- limits -------------------------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_with_413(locked):
    headers = {"Authorization": f"Bearer {INFER_TOKEN}"}
    status, message = error_of(request(locked, "POST", "/v2/models/add_sub/infer", b"{" + b" " * LIMIT + b"}", headers))
    assert status == 413
    assert f"{LIMIT + 2} bytes" in message and f"limit of {LIMIT} bytes" in message
    assert "--max-message-bytes" in message and "add_sub" in message
    serves_locked(locked)


def test_chunked_body_over_the_limit_is_refused_with_413(locked):
    with socket.create_connection(("127.0.0.1", locked.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Authorization: Bearer " + INFER_TOKEN.encode() + b"\r\n\r\n")
        chunk = b" " * 4096
        for _ in range(LIMIT // len(chunk) + 1):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = s.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert "--max-message-bytes" in json.loads(body)["error"]


def test_gzip_bomb_is_refused_with_413(locked):
    headers = {"Authorization": f"Bearer {INFER_TOKEN}", "Content-Encoding": "gzip"}
    bomb = gzip.compress(b"{" + b" " * (LIMIT * 8) + b"}")
    assert len(bomb) < LIMIT
    status, message = error_of(request(locked, "POST", "/v2/models/add_sub/infer", bomb, headers))
    assert status == 413 and "--max-message-bytes" in message


def test_response_over_the_limit_is_refused(locked):
    rows = np.random.default_rng(0).random((64, 16)).astype(np.float32)  # 8 KiB in; ~40 KiB as JSON out
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "OUTPUT1")]
    with httpclient.InferenceServerClient(locked.url) as c:
        with pytest.raises(InferenceServerException) as e:
            c.infer("add_sub", add_sub_inputs(rows, rows), outputs=outputs,
                    headers={"Authorization": f"Bearer {INFER_TOKEN}"})
    assert e.value.status() == "400" and "--max-message-bytes" in e.value.message()


def serves_locked(locked):
    with httpclient.InferenceServerClient(locked.url) as c:
        result = c.infer("add_sub", add_sub_inputs(A, B), headers={"Authorization": f"Bearer {INFER_TOKEN}"})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


# --- concurrency, disconnects, shutdown -----------------------------------------------------------------


def test_many_concurrent_asyncio_clients_get_their_own_answers(main):
    async def one_client(k):
        async with aioclient.InferenceServerClient(main.url) as c:
            async def one(j):
                x = np.full((1, 16), k * 100 + j, np.float32)
                inputs = []
                for name in ("INPUT0", "INPUT1"):
                    i = aioclient.InferInput(name, [1, 16], "FP32")
                    i.set_data_from_numpy(x, binary_data=j % 2 == 0)
                    inputs.append(i)
                result = await c.infer("add_sub", inputs, request_id=f"{k}-{j}")
                assert result.get_response()["id"] == f"{k}-{j}"
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)

            await asyncio.gather(*(one(j) for j in range(16)))

    async def everyone():
        await asyncio.gather(*(one_client(k) for k in range(8)))

    asyncio.run(everyone())


def test_bad_requests_do_not_disturb_concurrent_good_ones(main):
    async def run():
        async with aioclient.InferenceServerClient(main.url) as c:
            async def good():
                result = await c.infer("add_sub", [aio_input("INPUT0", A), aio_input("INPUT1", B)])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)

            async def bad():
                with pytest.raises(InferenceServerException):
                    await c.infer("add_sub", [aio_input("INPUT0", A.reshape(4, 8)), aio_input("INPUT1", B)])

            await asyncio.gather(*(good() if j % 2 else bad() for j in range(40)))

    asyncio.run(run())


def aio_input(name, x):
    i = aioclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def test_sync_async_infer_greenlets(main):
    with httpclient.InferenceServerClient(main.url, concurrency=4) as c:
        pending = [c.async_infer("add_sub", add_sub_inputs(A + j, B)) for j in range(12)]
        for j, p in enumerate(pending):
            np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT0"), A + j + B)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_client_disconnect_cancels_its_queued_request(extra, extra_repo, extra_runtime):
    folder = extra_repo / "gate"
    (folder / "hold").touch()
    executed = folder / "executed"
    executed.unlink(missing_ok=True)
    queued = lambda: extra_runtime.model_statistics("gate")[0]["queued"]  # noqa: E731
    results = {}

    def first():
        with httpclient.InferenceServerClient(extra.url) as c:
            i = httpclient.InferInput("INPUT0", [1], "FP32")
            i.set_data_from_numpy(np.array([1], np.float32))
            results["first"] = c.infer("gate", [i]).as_numpy("OUTPUT0")

    holder = threading.Thread(target=first)
    try:
        holder.start()
        wait_for(lambda: executed.exists() and executed.read_text() == "1.0\n")  # the instance is held
        body, headers = infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": [1], "_blob": struct.pack("<f", 2)}])
        with socket.create_connection(("127.0.0.1", extra.port), timeout=10) as s:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            s.sendall(f"POST /v2/models/gate/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
                      .encode() + body)
            wait_for(lambda: queued() == 1)
        wait_for(lambda: queued() == 0)  # cancelled while the instance is still held
    finally:
        (folder / "hold").unlink()
        holder.join(20)
    np.testing.assert_array_equal(results["first"], [1])
    assert executed.read_text() == "1.0\n"  # the second request never ran
    assert extra_runtime.model_statistics("gate")[0]["failures"].get("CANCELLED") == 1


def test_stop_answers_requests_running_past_the_grace_period_with_503(serve, loop, extra_repo, extra_runtime):
    served = serve(extra_runtime)
    folder = extra_repo / "gate"
    (folder / "hold").touch()
    executed = folder / "executed"
    executed.unlink(missing_ok=True)
    body, headers = infer_body([{"name": "INPUT0", "datatype": "FP32", "shape": [1], "_blob": struct.pack("<f", 3)}])
    replies = []
    caller = threading.Thread(target=lambda: replies.append(request(served, "POST", "/v2/models/gate/infer", body, headers)))
    try:
        caller.start()
        wait_for(lambda: executed.exists() and executed.read_text() == "3.0\n")
        loop.run(served.frontend.stop(0.2))
    finally:
        (folder / "hold").unlink()
        caller.join(20)
    status, message = error_of(replies[0])
    assert status == 503 and "shut down" in message


def test_start_on_a_port_in_use_raises(loop, runtime, main):
    frontend = HttpFrontend(runtime, ServerOptions(http_port=main.port), Health(runtime))
    with pytest.raises(OSError):
        loop.run(frontend.start())


def test_draining_server_is_not_ready_and_refuses_inference(serve, loop, runtime):
    served = serve(runtime)
    with httpclient.InferenceServerClient(served.url) as c:
        served.health.draining = True
        assert not c.is_server_ready() and not c.is_model_ready("add_sub")
        assert c.is_server_live()
        served.health.accepting = False
        with pytest.raises(InferenceServerException) as e:
            c.infer("add_sub", add_sub_inputs(A, B))
        assert e.value.status() == "503" and "shutting down" in e.value.message()
    loop.run(served.frontend.stop(1.0))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()


# --- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files
    (made with the cryptography package, else the openssl command)."""
    folder = tmp_path_factory.mktemp("pki")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pki_with_openssl(folder)
    else:
        pki_with_cryptography(folder)
    return folder


def pki_with_cryptography(folder: Path) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelserve test CA")])

    def write(stem, name, key, ca=False, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]) if not ca else ca_name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False), critical=True)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    write("ca", "modelserve test CA", ca_key, ca=True)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    write("server", "127.0.0.1", ec.generate_private_key(ec.SECP256R1()), san=san)
    write("client", "test client", ec.generate_private_key(ec.SECP256R1()))


def pki_with_openssl(folder: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("TLS tests need the cryptography package or the openssl command")

    def run(*args):
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=modelserve test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\n")
    for stem, cn in (("server", "127.0.0.1"), ("client", "test client")):
        run("req", *key, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{stem}.pem", "-days", "1", "-extfile", f"{stem}.ext")


def test_tls_with_the_sync_and_asyncio_clients(serve, runtime, pki):
    served = serve(runtime, tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    with httpclient.InferenceServerClient(served.url, ssl=True, ssl_options={"ca_certs": str(pki / "ca.pem")}) as c:
        assert c.is_server_live()
        np.testing.assert_array_equal(c.infer("add_sub", add_sub_inputs(A, B)).as_numpy("OUTPUT0"), A + B)

    async def aio():
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with aioclient.InferenceServerClient(served.url, ssl=True, ssl_context=context) as c:
            result = await c.infer("add_sub", [aio_input("INPUT0", A), aio_input("INPUT1", B)])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)

    asyncio.run(aio())
    with pytest.raises((OSError, http.client.HTTPException)):
        request(served, "GET", "/v2/health/live")  # plain HTTP to a TLS port is not served


def test_mutual_tls_requires_a_client_certificate(serve, runtime, pki):
    served = serve(runtime, tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    options = {"ca_certs": str(pki / "ca.pem"), "certfile": str(pki / "client.pem"), "keyfile": str(pki / "client.key")}
    with httpclient.InferenceServerClient(served.url, ssl=True, ssl_options=options) as c:
        assert c.is_server_live()
        np.testing.assert_array_equal(c.infer("add_sub", add_sub_inputs(A, B)).as_numpy("OUTPUT0"), A + B)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                if not s.recv(1024):
                    raise ConnectionResetError("closed without an answer")
