"""The native ModelInferRequest parser (csrc/protocol/infer_request.h, ``_core.protocol``) proven
against protobuf (upb): Hypothesis generates valid and damaged messages (tests/infer_request_wire.py)
and every one must parse to the same fields, or be refused by both. bench/fuzz/fuzz_infer_request.py
runs the same check 100,000+ times under the sanitizers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

import infer_request_wire as wire
from modelserve._native import core
from modelserve._proto import inference_pb2 as pb
from modelserve.errors import InvalidArgumentError
from modelserve.server.common import checked_values

parse = core.protocol.parse
v = wire.varint


def ld(number: int, payload: bytes) -> bytes:
    return v(number << 3 | 2) + v(len(payload)) + payload


def tag(number: int, wire_type: int) -> bytes:
    return v(number << 3 | wire_type)


def groups(n: int) -> bytes:
    return tag(9, 3) * n + tag(9, 4) * n


# derandomize: the same cases on every run, so CI never flakes; deadline: sanitized builds are slow.
FIXED = settings(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- differential: the native parser against protobuf ---------------------------------------------


@settings(FIXED, max_examples=400)
@given(st.randoms(use_true_random=False))
def test_protobuf_serialized_requests_parse_to_the_same_fields(rng):
    assert wire.check(wire.protobuf_message(rng))


@settings(FIXED, max_examples=1000)
@given(st.randoms(use_true_random=False))
def test_wire_written_requests_with_unknown_fields_agree_with_protobuf(rng):
    wire.check(wire.wire_message(rng))


@settings(FIXED, max_examples=1500)
@given(st.randoms(use_true_random=False))
def test_damaged_requests_are_refused_exactly_where_protobuf_refuses_them(rng):
    source = wire.protobuf_message(rng) if rng.random() < 0.4 else wire.wire_message(rng)
    wire.check(wire.mutate(rng, source))


@settings(FIXED, max_examples=60)
@given(st.randoms(use_true_random=False))
def test_every_truncation_of_a_request_agrees_with_protobuf(rng):
    data = wire.protobuf_message(rng) if rng.random() < 0.5 else wire.wire_message(rng)
    for end in range(len(data)):
        wire.check(data[:end])


# --- the rules, one by one (each is also covered above; these name it) ----------------------------


@pytest.mark.parametrize(
    "inside, deepest",  # messages and groups below the top level nest 100 deep at most
    [
        (lambda b: b, 100),
        (lambda b: ld(5, b), 99),  # inputs[0]
        (lambda b: ld(5, ld(5, b)), 98),  # inputs[0].contents
        (lambda b: ld(4, ld(2, b)), 98),  # parameters[0].value
        (lambda b: ld(5, ld(4, ld(2, b))), 97),  # inputs[0].parameters[0].value
    ],
)
def test_group_nesting_is_refused_one_level_past_the_recursion_limit_as_protobuf_does(inside, deepest):
    assert wire.check(inside(groups(deepest)))
    assert not wire.check(inside(groups(deepest + 1)))
    with pytest.raises(InvalidArgumentError, match="nests deeper than 100"):
        parse(inside(groups(deepest + 1)))


def test_a_map_entry_with_an_unknown_field_is_left_out_of_the_map_as_upb_does():
    kept = ld(1, b"k") + ld(2, tag(2, 0) + v(7))
    dropped = ld(1, b"k") + ld(2, tag(1, 0) + v(1)) + tag(3, 0) + v(1)
    assert wire.check(ld(4, kept) + ld(4, dropped))
    assert parse(ld(4, kept) + ld(4, dropped)).parameters == {"k": 7}
    assert parse(ld(4, kept) + ld(4, ld(1, b"k") + ld(2, b""))).parameters == {"k": None}


def test_a_parameter_value_given_twice_in_one_entry_merges_and_the_last_member_set_wins():
    entry = ld(1, b"k") + ld(2, ld(3, b"x")) + ld(2, b"") + ld(2, tag(4, 1) + b"\0" * 7 + b"\x40")
    assert wire.check(ld(4, entry))
    assert parse(ld(4, entry)).parameters == {"k": 2.0}


def test_contents_given_twice_merge_packed_and_unpacked_elements_in_wire_order():
    data = ld(5, ld(5, tag(2, 0) + v(1) + ld(2, v(2) + v(2**64 - 1))) + ld(5, tag(2, 0) + v(2**32 + 5)))
    assert wire.check(data)
    assert parse(data).to_dict()["inputs"][0]["contents"]["int_contents"] == [1, 2, -1, 5]


@pytest.mark.parametrize(
    "data, path",
    [
        (ld(5, b"") + ld(5, ld(5, ld(6, b"\0" * 5))), "inputs[1].contents.fp32_contents: packed length 5"),
        (ld(5, ld(3, b"\x80")), "inputs[0].shape: truncated varint"),
        (ld(1, b"\xff"), "model_name: string field is not valid UTF-8"),
        (ld(4, ld(1, b"\xed\xa0\x80")), "parameters[0].key: string field is not valid UTF-8"),
        (tag(1, 2) + v(2**62), "model_name: length 4611686018427387904 runs past the end"),
        (tag(9, 0) + b"\xff" * 10 + b"\x01", "ModelInferRequest: varint longer than 10 bytes"),
        (tag(9, 6), "ModelInferRequest: field 9 has invalid wire type 6"),
        (ld(6, tag(9, 4)), "outputs[0]: end-group tag of field 9 without a start-group tag"),
        (b"\x00", "ModelInferRequest: field number 0"),
    ],
)
def test_a_refusal_names_the_field_path_and_the_byte_offset(data, path):
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    with pytest.raises(InvalidArgumentError, match=r" at byte \d+$") as e:
        parse(data)
    assert str(e.value).startswith(path), str(e.value)


# --- zero copy -------------------------------------------------------------------------------------


def _request_with_raw(payloads: list[bytes]) -> bytes:
    m = pb.ModelInferRequest(model_name="m", id="7")
    m.parameters["priority"].uint64_param = 3
    for i, p in enumerate(payloads):
        m.inputs.add(name=f"INPUT{i}", datatype="UINT8", shape=[len(p)])
        m.raw_input_contents.append(p)
    return m.SerializeToString()


def test_a_raw_input_is_a_view_into_the_request_buffer_not_a_copy():
    data = _request_with_raw([b"\x01" * 64, b"\x02" * 1000])
    start = np.frombuffer(data, np.uint8).ctypes.data
    r = parse(data)
    assert r.buffer_address == start and r.buffer_size == len(data)
    for i, size in enumerate((64, 1000)):
        address = r.raw_address(i)
        assert start <= address and address + size <= start + len(data)
        view = r.raw(i)
        assert view.obj is data and view.nbytes == size
        assert np.frombuffer(view, np.uint8).ctypes.data == address


def test_a_parsed_bytearray_cannot_be_resized_while_its_views_live():
    buffer = bytearray(_request_with_raw([b"abc"]))
    r = parse(buffer)
    with pytest.raises(BufferError):
        buffer.extend(b"x" * 4096)
    assert bytes(r.raw(0)) == b"abc"
    del r
    buffer.extend(b"")  # released with the parsed request


def test_model_version_id_and_parameters_read_without_a_full_decode():
    r = parse(_request_with_raw([b"x"]))
    assert (r.model_name, r.model_version, r.id, r.parameters) == ("m", "", "7", {"priority": 3})
    assert (r.input_count, r.output_count, r.raw_count) == (1, 0, 1)


# --- decoding typed contents into a destination buffer ------------------------------------------------

_FIELD_DTYPES = {"int_contents": np.int32, "int64_contents": np.int64, "uint_contents": np.uint32,
                 "uint64_contents": np.uint64, "fp32_contents": np.float32, "fp64_contents": np.float64,
                 "bool_contents": np.bool_}
_TARGETS = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


@settings(FIXED, max_examples=300)
@given(st.randoms(use_true_random=False))
def test_decoded_contents_follow_the_value_rules_of_the_python_decoder(rng):
    field = rng.choice(list(_FIELD_DTYPES))
    datatype = rng.choice(_TARGETS)
    m = pb.ModelInferRequest()
    t = m.inputs.add(name="x", datatype=datatype)
    values = np.array(
        [np.frombuffer(rng.getrandbits(64).to_bytes(8, "little"), np.float64)[0] if rng.random() < 0.3
         else rng.choice((0, 1, 2, 127, 255, 256, 65504, 65520, 2**31 - 1, 2**32 - 1, 2**63 - 1, 1e300, 3.0))
         for _ in range(rng.randint(0, 4))], dtype=np.float64)
    with np.errstate(all="ignore"):
        typed = values.astype(_FIELD_DTYPES[field]) if field != "bool_contents" else values != 0
    getattr(t.contents, field).extend(typed.tolist())
    r = parse(m.SerializeToString())
    try:
        expected = checked_values("x", datatype, typed).tobytes()
    except InvalidArgumentError as e:
        with pytest.raises(InvalidArgumentError) as refused:
            r.decode(0, field, datatype)
        assert str(refused.value).split(" is ")[0] == str(e).split(" is ")[0]  # the same element
        return
    assert r.decode(0, field, datatype) == expected


def test_bytes_contents_decode_to_the_protocol_serialisation():
    m = pb.ModelInferRequest()
    m.inputs.add(name="s", datatype="BYTES").contents.bytes_contents.extend([b"ab", b"", b"\xff"])
    r = parse(m.SerializeToString())
    assert r.decode(0, "bytes_contents", "BYTES") == b"\x02\0\0\0ab\0\0\0\0\x01\0\0\0\xff"
