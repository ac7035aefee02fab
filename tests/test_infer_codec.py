"""The native request path (Note [Native request path] in csrc/protocol/infer_codec.h): a parsed
ModelInferRequest decoded, checked and enqueued by the core, and the response encoded by it.

Proven against references: the encoder against protobuf's serializer, the typed-contents decoder
against the Python value rules (server/common.py, Note [Value rules]) it replaces on gRPC."""

import asyncio

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve import ModelEngine, errors
from modelserve._native import core
from modelserve._proto import inference_pb2 as pb
from modelserve.server.common import tensor_from_values

WHERE = "model 'm' version 1"

# The reference the native decoder is checked against: each datatype's typed-contents field (spec
# 1.5; FP16 and BF16 have none), each field's wire type as numpy reads it, and the Python value
# rules (server/common.py's tensor_from_values, which the HTTP JSON path uses).
TYPED_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
WIRE_DTYPES = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32), "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32), "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32), "fp64_contents": np.dtype(np.float64),
}
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class Echo:
    """Returns each input under its own name (or the outputs it was built with), and records the
    address of every input it saw."""

    def __init__(self, outputs=None):
        self.outputs = outputs
        self.addresses = {}

    def execute(self, inputs):
        for name, x in inputs.items():
            if x.dtype != object:
                self.addresses[name] = x.ctypes.data
        return self.outputs if self.outputs is not None else dict(inputs)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop, engine, data):
    """Parses `data`, submits it to `engine` natively and returns (parsed, completed Pending)."""
    async def go():
        parsed = core.protocol.parse(data)
        queued = engine.submit_parsed_async(parsed, WHERE)
        return parsed, await queued.done()

    return loop.run_until_complete(go())


def request(*inputs, raw=None, model="m", request_id=""):
    r = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, shape, contents in inputs:
        t = r.inputs.add(name=name, datatype=datatype, shape=shape)
        if contents is not None:
            field, values = contents
            getattr(t.contents, field).extend(values)
    if raw is not None:
        r.raw_input_contents.extend(raw)
    return r.SerializeToString()


# --- the encoder against protobuf ------------------------------------------------------------------

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


@st.composite
def outputs(draw):
    out = {}
    for i in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(NUMERIC + ["BYTES"]))
        shape = [draw(st.integers(1, 3))] + draw(st.lists(st.integers(0, 4), max_size=2))
        count = int(np.prod(shape))
        if datatype == "BYTES":
            items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
            array = np.array(items + [b""], dtype=object)[:count].reshape(shape)
        else:
            dtype = np.dtype(datatype.lower().replace("fp", "float").replace("bool", "bool_"))
            array = np.frombuffer(draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize)),
                                  dtype=np.uint8).view(dtype).reshape(shape)
            if datatype == "BOOL":
                array = array.view(np.uint8) % 2 == 1
        out[f"OUT{i}" + draw(st.sampled_from(["", "é", "_x"]))] = array
    return out


def expected_response(name, version, request_id, arrays, streamed):
    ref = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    if streamed:
        ref.parameters["triton_final_response"].bool_param = True
    for key, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else next(
            d for d in NUMERIC if np.dtype(d.lower().replace("fp", "float").replace("bool", "bool_")) == array.dtype)
        ref.outputs.add(name=key, datatype=datatype, shape=list(array.shape))
        if array.dtype == object:
            ref.raw_output_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in array.ravel()))
        else:
            ref.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    if streamed:
        return pb.ModelStreamInferResponse(infer_response=ref).SerializeToString()
    return ref.SerializeToString()


@SETTINGS
@given(arrays=outputs(), request_id=st.text(max_size=8), version=st.sampled_from(["1", "42"]), streamed=st.booleans())
def test_the_encoded_response_is_the_bytes_protobuf_serializes(loop, arrays, request_id, version, streamed):
    with ModelEngine("m", Echo(arrays), max_batch_size=0) as engine:
        _, pending = run(loop, engine, request(("X", "FP32", [1], ("fp32_contents", [1.0]))))
        got = pending.encode_response(WHERE, "m", version, request_id, streamed, 1 << 30)
    assert got == expected_response("m", version, request_id, arrays, streamed)


def test_a_response_over_the_send_limit_is_refused_with_its_size(loop):
    with ModelEngine("m", Echo({"Y": np.zeros(100, np.float32)}), max_batch_size=0) as engine:
        _, pending = run(loop, engine, request(("X", "FP32", [1], ("fp32_contents", [1.0]))))
        with pytest.raises(errors.ResourceExhaustedError,
                           match=r"the response of model 'm' version 1 is 4\d\d bytes, more than the server's send limit of 100"):
            pending.encode_response(WHERE, "m", "1", "", False, 100)


def test_a_failed_request_raises_its_error_from_encode_response(loop):
    class Broken:
        def execute(self, inputs):
            raise ValueError("broken model")

    with ModelEngine("m", Broken(), max_batch_size=0) as engine:
        _, pending = run(loop, engine, request(("X", "FP32", [1], ("fp32_contents", [1.0]))))
        with pytest.raises(errors.InternalError, match="broken model"):
            pending.encode_response(WHERE, "m", "1", "", False, 1 << 20)


# --- raw inputs are views of the request ---------------------------------------------------------


def test_a_raw_inputs_data_lies_inside_the_requests_buffer(loop):
    backend = Echo()
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    data = request(("X", "FP32", [1, 64], None), ("B", "INT64", [1, 2], None),
                   raw=[x.tobytes(), np.array([[7, 8]], np.int64).tobytes()])
    with ModelEngine("m", backend, max_batch_size=8) as engine:
        parsed, pending = run(loop, engine, data)
        out = pending.outputs()
    lo, hi = parsed.buffer_address, parsed.buffer_address + parsed.buffer_size
    assert lo <= backend.addresses["X"] and backend.addresses["X"] + x.nbytes <= hi
    assert backend.addresses["X"] == parsed.raw_address(0)  # the very bytes, not a copy
    np.testing.assert_array_equal(out["X"], x)
    np.testing.assert_array_equal(out["B"], [[7, 8]])


# --- typed contents against the Python value rules -----------------------------------------------

LIMITS = {"int_contents": (-(2**31), 2**31 - 1), "uint_contents": (0, 2**32 - 1), "int64_contents": (-(2**63), 2**63 - 1),
          "uint64_contents": (0, 2**64 - 1)}


@st.composite
def typed_inputs(draw):
    datatype = draw(st.sampled_from([d for d in TYPED_FIELD if d != "BYTES"] + ["BYTES"]))
    field = TYPED_FIELD[datatype]
    count = draw(st.integers(0, 6))
    if field in LIMITS:
        lo, hi = LIMITS[field]
        edge = st.sampled_from([lo, hi, 0, 1, -1, 127, 128, 255, 256, -128, -129, 32767, 32768, 65535, 65536,
                                -32768, -32769, 2**31 - 1, 2**31, 2**32 - 1])
        values = draw(st.lists(st.one_of(st.integers(lo, hi), edge.filter(lambda v: lo <= v <= hi)),
                               min_size=count, max_size=count))
    elif field == "bool_contents":
        values = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    elif field == "bytes_contents":
        values = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
    else:
        width = 32 if field == "fp32_contents" else 64
        values = draw(st.lists(st.floats(width=width), min_size=count, max_size=count))
    shape = draw(st.sampled_from([[count], [1, count], [count, 1]] + ([] if count else [[2, 0]])))
    return datatype, field, values, shape


def python_verdict(datatype, field, values, shape):
    """What the Python path made of these typed contents: the array, or the error message."""
    if field in WIRE_DTYPES:
        values = np.fromiter(values, WIRE_DTYPES[field], len(values))
    try:
        return tensor_from_values("X", datatype, shape, values).numpy()
    except errors.InvalidArgumentError as e:
        return f"{WHERE}: {e}"


@SETTINGS
@given(case=typed_inputs())
def test_typed_contents_decode_as_the_python_value_rules_did(loop, case):
    datatype, field, values, shape = case
    expected = python_verdict(datatype, field, values, shape)
    with ModelEngine("m", Echo(), max_batch_size=0) as engine:
        try:
            _, pending = run(loop, engine, request(("X", datatype, shape, (field, values))))
            got = pending.outputs()["X"]
        except errors.InvalidArgumentError as e:
            got = str(e)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert not isinstance(got, str), got
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("datatype, field, values, message", [
    ("UINT8", "uint_contents", [1, 300], "element 1 is 300, expected an integer in [0, 255] for UINT8"),
    ("INT8", "int_contents", [-129], "element 0 is -129, expected an integer in [-128, 127] for INT8"),
    ("UINT16", "uint_contents", [65536], "element 0 is 65536, expected an integer in [0, 65535] for UINT16"),
    ("INT16", "int_contents", [0, 0, 40000], "element 2 is 40000, expected an integer in [-32768, 32767] for INT16"),
])
def test_a_typed_value_out_of_range_is_refused_naming_the_element(loop, datatype, field, values, message):
    with ModelEngine("m", Echo(), max_batch_size=0) as engine:
        with pytest.raises(errors.InvalidArgumentError) as info:
            run(loop, engine, request(("X", datatype, [len(values)], (field, values))))
    assert str(info.value) == f"{WHERE}: input 'X': {message}"


# --- HTTP requests take the same decode (Note [HTTP requests] in csrc/python/py_protocol.cc) --------

RAW_DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "COMPLEX64"]


def verdict(engine, loop, parsed):
    """submit_parsed's answer for a ParsedInferRequest: the outputs, or the error's message."""
    async def go():
        return await engine.submit_parsed_async(parsed, WHERE).done()

    try:
        return loop.run_until_complete(go()).outputs()
    except errors.ModelserveError as e:
        return f"{type(e).__name__}: {e}"


@st.composite
def raw_requests(draw):
    """Binary inputs, valid or not: any datatype, shapes that may not fit the bytes, bad BYTES framing."""
    inputs = []
    for k in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["A", "B", "C"]))  # a repeated name is a case too
        datatype = draw(st.sampled_from(RAW_DATATYPES))
        shape = draw(st.lists(st.integers(-1, 4), min_size=0, max_size=3))
        data = draw(st.binary(max_size=40))
        inputs.append((name, datatype, shape, data))
    return inputs


@SETTINGS
@given(inputs=raw_requests(), pad=st.integers(0, 7))
def test_an_http_binary_request_decodes_as_the_same_grpc_request(loop, inputs, pad):
    """The differential: binary data described by http_request and the same bytes in a gRPC
    message's raw_input_contents get the same tensors, or the same error, from the one decoder."""
    grpc_bytes = request(*[(n, dt, shape, None) for n, dt, shape, _ in inputs], raw=[d for *_, d in inputs])
    body = b"h" * pad + b"".join(d for *_, d in inputs)  # a stand-in JSON header, then the tail
    described, offset = [], pad
    for name, datatype, shape, data in inputs:
        described.append((name, datatype, shape, (offset, len(data))))
        offset += len(data)
    with ModelEngine("m", Echo(), max_batch_size=0) as engine:
        want = verdict(engine, loop, core.protocol.parse(grpc_bytes))
        got = verdict(engine, loop, core.protocol.http_request(body, described))
    if isinstance(want, str):
        assert got == want
    else:
        assert not isinstance(got, str), got
        assert want.keys() == got.keys()
        for name in want:
            assert want[name].dtype == got[name].dtype and want[name].shape == got[name].shape
            np.testing.assert_array_equal(want[name], got[name])


def test_an_http_inputs_binary_data_is_the_bodys_own_bytes(loop):
    backend = Echo()
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    body = b'{"json": "header"}' + x.tobytes()
    given = core.Tensor.from_numpy(np.array([[3, 4]], np.int64))
    parsed = core.protocol.http_request(body, [("X", "FP32", [1, 8], (18, 32)), ("J", "INT64", [1, 2], given)],
                                        outputs=["J", "X"])
    with ModelEngine("m", backend, max_batch_size=8) as engine:
        out = verdict(engine, loop, parsed)
    assert list(out) == ["J", "X"]  # the requested outputs, in order
    assert parsed.buffer_address + 18 == backend.addresses["X"]  # no copy between the body and the model
    np.testing.assert_array_equal(out["X"], x)
    np.testing.assert_array_equal(out["J"], [[3, 4]])


def test_http_binary_data_past_the_end_of_the_body_is_refused():
    with pytest.raises(errors.InvalidArgumentError, match=r"input 'X': binary data \[4, \+8\) goes past the end "
                                                         r"of the body of 10 bytes"):
        core.protocol.http_request(b"0123456789", [("X", "UINT8", [8], (4, 8))])


@pytest.mark.parametrize("dims, batched, body, shape, message", [
    ([4], True, bytes(16), [1, 4], None),
    ([-1], False, bytes(12), [3], None),
    ([2, -1], True, bytes(16), [1, 2, 2], None),
    ([2, -1], True, bytes(12), None, "input 'X': 12 bytes are not a whole number of [2, -1] FP32 rows"),
    ([-1, -1], False, bytes(8), None, "a raw binary request needs at most one variable dimension in [-1, -1]"),
    ([4], False, bytes(12), None, "input 'X': tensor of datatype FP32 and shape [4] needs 16 bytes, got 12"),
])
def test_a_raw_binary_http_request_is_the_models_one_input(loop, dims, batched, body, shape, message):
    parsed = core.protocol.http_request(body, [], single_input=True)
    try:
        inputs, _ = core.protocol.decode(parsed, WHERE, model_inputs=[("X", "FP32", dims)], batched=batched)
    except errors.InvalidArgumentError as e:
        assert str(e) == f"{WHERE}: {message}"
        return
    assert message is None and list(inputs) == ["X"] and list(inputs["X"].shape) == shape


def test_a_raw_binary_http_request_needs_a_model_with_one_input(loop):
    parsed = core.protocol.http_request(bytes(8), [], single_input=True)
    with pytest.raises(errors.InvalidArgumentError, match="needs a model with exactly one input; this one has 2"):
        core.protocol.decode(parsed, WHERE, model_inputs=[("X", "FP32", [2]), ("Y", "FP32", [2])])
    with ModelEngine("m", Echo(), max_batch_size=4, inputs=[("X", "FP32", [-1])]) as engine:
        out = verdict(engine, loop, parsed)  # the version it goes to fills in the input
    assert list(out["X"].shape) == [1, 2]
