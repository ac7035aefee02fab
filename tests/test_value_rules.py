"""The value rule table (README "Tensor values", Note [Value rules] in server/common.py): what
each datatype takes as HTTP JSON ``data`` and as gRPC typed contents, one table for both. A
value of the wrong type or out of range is refused (400 / INVALID_ARGUMENT) with the input, the
flat index of the first bad element, the value and what was expected; nothing is converted.

One repository of identity models (one per datatype), served over HTTP and gRPC on port 0.
"""

from __future__ import annotations

import http.client
import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import LoopThread
from tritonclient.grpc import service_pb2, service_pb2_grpc

import modelserve
from modelserve.server.common import ServerOptions
from modelserve.server.grpc import GrpcFrontend
from modelserve.server.health import Health
from modelserve.server.http import HttpFrontend

IDENTITY = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""

DATATYPES = ["UINT8", "INT8", "UINT64", "INT64", "BOOL", "FP16", "FP32", "BYTES"]


def model(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for datatype in DATATYPES:
        folder = Path(repo) / model(datatype)
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(IDENTITY)
        (folder / "config.yaml").write_text(
            "backend: python\nmax_batch_size: 0\n"
            f"inputs: [{{name: INPUT0, datatype: {datatype}, shape: [-1]}}]\n"
            f"outputs: [{{name: OUTPUT0, datatype: {datatype}, shape: [-1]}}]\n"
            "instances: {count: 1, device: cpu}\n"
        )
    with modelserve.Runtime(repo) as rt:
        yield rt


@pytest.fixture(scope="module")
def ports(runtime):
    """(HTTP port, gRPC address) of one server pair on a loop thread."""
    loop = LoopThread("value-rules-loop")
    options = ServerOptions(http_port=0, grpc_port=0)
    http_frontend = HttpFrontend(runtime, options, Health(runtime))
    grpc_frontend = GrpcFrontend(runtime, options, Health(runtime))
    http_port = loop.run(http_frontend.start())
    grpc_port = loop.run(grpc_frontend.start())
    yield http_port, f"127.0.0.1:{grpc_port}"
    loop.run(grpc_frontend.stop(0))
    loop.run(http_frontend.stop(1.0))
    loop.close()


@pytest.fixture(scope="module")
def stub(ports):
    with grpc.insecure_channel(ports[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_json(ports, datatype: str, data, shape=None) -> tuple[int, dict]:
    """POSTs a pure-JSON request (``data`` written by Python's json, NaN and Infinity included)
    and returns (status, the decoded answer)."""
    shape = shape if shape is not None else [len(data)]
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}]})
    conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=30)
    try:
        conn.request("POST", f"/v2/models/{model(datatype)}/infer", body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def infer_typed(stub, datatype: str, field: str, values):
    request = service_pb2.ModelInferRequest(model_name=model(datatype))
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[len(values)])
    getattr(tensor.contents, field).extend(values)
    return stub.ModelInfer(request, timeout=30)


def typed_error(stub, datatype: str, field: str, values) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        infer_typed(stub, datatype, field, values)
    return info.value


# --- JSON data -------------------------------------------------------------------------------------

#: datatype, data (shape [len(data)] unless given), and the message's "element I is V, expected E".
JSON_REFUSED = {
    "UINT8 beyond 255": ("UINT8", [1, 2, 300], None, "element 2 is 300, expected an integer in [0, 255] for UINT8"),
    "UINT8 negative": ("UINT8", [-1], None, "element 0 is -1, expected an integer in [0, 255] for UINT8"),
    "float for an integer": ("UINT8", [0, 1.5], None, "element 1 is 1.5, expected an integer in [0, 255]"),
    "integral float for an integer": ("INT64", [3.0], None, "element 0 is 3.0, expected an integer"),
    "boolean for an integer": ("INT8", [[1, 2], [3, True]], [2, 2], "element 3 is true, expected an integer in [-128, 127]"),
    "INT8 below -128": ("INT8", [-129], None, "element 0 is -129, expected an integer in [-128, 127] for INT8"),
    "UINT64 negative": ("UINT64", [5, -1], None, "element 1 is -1, expected an integer in [0, 18446744073709551615]"),
    "UINT64 beyond 2^64-1": ("UINT64", [2**64], None, "element 0 is 18446744073709551616, expected an integer"),
    "INT64 beyond 2^63-1": ("INT64", [2**63], None, "element 0 is 9223372036854775808, expected an integer"),
    "string for an integer": ("INT64", ["7"], None, 'element 0 is "7", expected an integer'),
    "FP32 beyond its finite range": ("FP32", [1.0, 1e300], None, "element 1 is 1e+300, expected a number in [-3.4028235e+38, 3.4028235e+38]"),
    "FP16 beyond 65504": ("FP16", [0.5, 70000], None, "element 1 is 70000, expected a number in [-65504, 65504]"),
    "string for a float": ("FP32", ["1.0"], None, 'element 0 is "1.0", expected a number'),
    "null for a float": ("FP32", [None], None, "element 0 is null, expected a number"),
    "boolean for a float": ("FP32", [False], None, "element 0 is false, expected a number"),
    "integer for BOOL": ("BOOL", [True, 1], None, "element 1 is 1, expected true or false for BOOL"),
    "number for BYTES": ("BYTES", ["a", 5], None, "element 1 is 5, expected a string for BYTES"),
}


@pytest.mark.parametrize("case", list(JSON_REFUSED))
def test_json_value_breaking_the_rules_is_refused_with_400_naming_tensor_index_and_value(ports, case):
    datatype, data, shape, expected = JSON_REFUSED[case]
    status, answer = infer_json(ports, datatype, data, shape)
    assert status == 400, answer
    assert answer["error"].startswith(f"model '{model(datatype)}': input 'INPUT0': "), answer
    assert expected in answer["error"], answer


#: datatype, data, and what comes back as JSON output.
JSON_ACCEPTED = {
    "UINT8 at its bounds": ("UINT8", [0, 255], [0, 255]),
    "INT8 at its bounds": ("INT8", [-128, 127], [-128, 127]),
    "UINT64 at its top": ("UINT64", [2**64 - 1, 0], [2**64 - 1, 0]),
    "INT64 at its bounds": ("INT64", [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
    "BOOL": ("BOOL", [True, False], [True, False]),
    "FP16 within its range, rounding to 65504": ("FP16", [0.5, -2, 65504, 65519], [0.5, -2.0, 65504.0, 65504.0]),
    "integers for FP32": ("FP32", [1, -3], [1.0, -3.0]),
    "FP32 at its finite bound": ("FP32", [3.4028235e38], [float(np.float32(3.4028235e38))]),
    "BYTES": ("BYTES", ["ab", ""], ["ab", ""]),
}


@pytest.mark.parametrize("case", list(JSON_ACCEPTED))
def test_json_value_within_the_rules_round_trips(ports, case):
    datatype, data, expected = JSON_ACCEPTED[case]
    status, answer = infer_json(ports, datatype, data)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == expected


def test_json_nan_and_infinity_are_taken_for_floats(ports):
    status, answer = infer_json(ports, "FP32", [math.nan, math.inf, -math.inf])  # json writes NaN, Infinity
    assert status == 200, answer
    out = answer["outputs"][0]["data"]
    assert math.isnan(out[0]) and out[1:] == [math.inf, -math.inf]


# --- gRPC typed contents ---------------------------------------------------------------------------

TYPED_REFUSED = {
    "uint_contents 300 for UINT8": ("UINT8", "uint_contents", [1, 300], "element 1 is 300, expected an integer in [0, 255] for UINT8"),
    "int_contents -129 for INT8": ("INT8", "int_contents", [127, -128, -129], "element 2 is -129, expected an integer in [-128, 127] for INT8"),
    "int_contents 128 for INT8": ("INT8", "int_contents", [128], "element 0 is 128, expected an integer in [-128, 127] for INT8"),
}


@pytest.mark.parametrize("case", list(TYPED_REFUSED))
def test_typed_value_out_of_range_is_refused_with_invalid_argument(stub, case):
    datatype, field, values, expected = TYPED_REFUSED[case]
    error = typed_error(stub, datatype, field, values)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"model '{model(datatype)}' version 1: input 'INPUT0': "), error.details()
    assert expected in error.details(), error.details()


def test_typed_values_at_the_bounds_are_accepted(stub):
    for datatype, field, values, dtype in (("UINT8", "uint_contents", [0, 255], np.uint8),
                                           ("INT8", "int_contents", [-128, 127], np.int8),
                                           ("UINT64", "uint64_contents", [2**64 - 1], np.uint64),
                                           ("BOOL", "bool_contents", [True, False], np.bool_)):
        response = infer_typed(stub, datatype, field, values)
        assert np.frombuffer(response.raw_output_contents[0], dtype).tolist() == values


def test_typed_nan_and_infinity_are_taken_for_fp32(stub):
    response = infer_typed(stub, "FP32", "fp32_contents", [math.nan, math.inf, 1.5])
    out = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert math.isnan(out[0]) and out[1:].tolist() == [math.inf, 1.5]


def test_json_and_typed_contents_refuse_with_the_same_words(ports, stub):
    _, answer = infer_json(ports, "UINT8", [7, 300])
    details = typed_error(stub, "UINT8", "uint_contents", [7, 300]).details()
    rule = "input 'INPUT0': element 1 is 300, expected an integer in [0, 255] for UINT8"
    assert answer["error"].endswith(rule) and details.endswith(rule), (answer, details)
