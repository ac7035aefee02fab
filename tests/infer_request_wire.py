"""Generated ModelInferRequest bytes, valid and not, and the differential check of the native
parser (``_core.protocol``) against protobuf (upb). Shared by tests/test_protocol.py (driven by
Hypothesis through ``st.randoms()``) and bench/fuzz/fuzz_infer_request.py (a seeded
``random.Random``): every generator takes a Random-like ``rng``.

Three sources of bytes:
  * ``protobuf_message``: a message built from random field values with protobuf itself and
    serialized by it (what real clients send);
  * ``wire_message``: a message written tag by tag from the schema, choosing per field a packed
    or unpacked encoding, duplicate singular fields and map keys, non-canonical varints and tags,
    strings that are not UTF-8, and unknown fields of every wire type (groups nested in groups)
    spliced in at every level, known field numbers with the wrong wire type included;
  * ``mutate``: byte-level damage to either: truncation, flipped and inserted bytes, overlong
    varints, huge declared lengths, wire types 4, 6 and 7, field number 0.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from google.protobuf.message import DecodeError

from modelserve._native import core
from modelserve._proto import inference_pb2 as pb
from modelserve.errors import InvalidArgumentError

CONTENTS_FIELDS = (
    "bool_contents", "int_contents", "int64_contents", "uint_contents",
    "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents",
)
PARAMETER_KINDS = ("bool_param", "int64_param", "string_param", "double_param", "uint64_param")

# Field number -> type, per message of protos/inference.proto. "*": repeated scalar (packable).
SCHEMA: dict[str, dict[int, str]] = {
    "request": {1: "string", 2: "string", 3: "string", 4: "msg:entry", 5: "msg:input", 6: "msg:output", 7: "bytes"},
    "input": {1: "string", 2: "string", 3: "varint*", 4: "msg:entry", 5: "msg:contents"},
    "output": {1: "string", 2: "msg:entry"},
    "entry": {1: "string", 2: "msg:param"},
    "param": {1: "varint", 2: "varint", 3: "string", 4: "fixed64", 5: "varint"},
    "contents": {1: "varint*", 2: "varint*", 3: "varint*", 4: "varint*", 5: "varint*", 6: "fixed32*",
                 7: "fixed64*", 8: "bytes"},
}

_INTERESTING_INTS = (0, 1, 2, 127, 128, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**53 + 1,
                     2**63 - 1, 2**63, 2**64 - 1, 2**64 - 2**31, 2**64 - 2**32 - 1)
_INTERESTING_DOUBLES = (0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, 1e300, 5e-324, 3.4028235e38, 65504.0)
_TEXT = ("", "a", "INPUT0", "é", "€", "𝄞", "triton_x", "priority", "key", "日本")


# --- encoding ----------------------------------------------------------------------------------


def varint(n: int, pad: int = 0) -> bytes:
    """``n`` (taken mod 2**64) as a varint, with ``pad`` redundant continuation bytes."""
    n &= 2**64 - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            break
        out.append(b | 0x80)
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


class Writer:
    """Encodes fields, sometimes with valid but non-canonical varints and tags."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def varint(self, n: int) -> bytes:
        canonical = varint(n)
        if self.rng.random() < 0.04 and len(canonical) < 10:
            return varint(n, self.rng.randint(1, 10 - len(canonical)))
        return canonical

    def tag(self, number: int, wire: int) -> bytes:
        canonical = varint(number << 3 | wire)
        if self.rng.random() < 0.03 and len(canonical) < 5:
            return varint(number << 3 | wire, self.rng.randint(1, 5 - len(canonical)))
        return canonical

    def ld(self, number: int, payload: bytes) -> bytes:
        return self.tag(number, 2) + self.varint(len(payload)) + payload


# --- values ----------------------------------------------------------------------------------------


def _int(rng: Any) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(_INTERESTING_INTS)
    if r < 0.7:
        return rng.randint(0, 300)
    return rng.getrandbits(64)


def _double_bits(rng: Any, fmt: str) -> bytes:
    if rng.random() < 0.5:
        return struct.pack(fmt, rng.choice(_INTERESTING_DOUBLES)) if fmt == "<d" else struct.pack(
            fmt, rng.choice((0.0, -0.0, 1.5, math.inf, math.nan, -3.0)))
    return rng.getrandbits(64 if fmt == "<d" else 32).to_bytes(8 if fmt == "<d" else 4, "little")


def _text(rng: Any) -> bytes:
    r = rng.random()
    if r < 0.05:  # anything: mostly not UTF-8
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 6)))
    if r < 0.08:  # near misses: a surrogate, an overlong form, past U+10FFFF, a cut sequence
        return rng.choice((b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"a\xff", b"\xf8\x88\x80\x80\x80"))
    if r < 0.6:
        return rng.choice(_TEXT).encode()
    chars = []
    for _ in range(rng.randint(0, 5)):
        c = rng.choice((rng.randint(0x20, 0x7E), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF),
                        rng.randint(0x10000, 0x10FFFF)))
        chars.append(chr(c if not 0xD800 <= c <= 0xDFFF else 0x41))
    return "".join(chars).encode()


def _bytes(rng: Any) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 3, 8, rng.randint(0, 40)))))


# --- messages written tag by tag ----------------------------------------------------------------


def unknown_field(rng: Any, w: Writer, depth: int, number: int | None = None, wire: int | None = None) -> bytes:
    """A field that protobuf keeps as unknown: a number outside the schema (or a known number with
    a wire type that is not its own, when the caller passes both), of wire type 0, 1, 2, 3 or 5."""
    if number is None:
        number = rng.choice((rng.randint(9, 20), rng.randint(1, 2**29 - 1), 2**29 - 1, 1000))
    if wire is None:
        wire = rng.choice((0, 1, 2, 5) + ((3, 3) if depth > 0 else ()))
    if wire == 0:
        return w.tag(number, 0) + w.varint(_int(rng))
    if wire == 1:
        return w.tag(number, 1) + rng.getrandbits(64).to_bytes(8, "little")
    if wire == 5:
        return w.tag(number, 5) + rng.getrandbits(32).to_bytes(4, "little")
    if wire == 2:
        return w.ld(number, _bytes(rng))
    inner = b"".join(unknown_field(rng, w, depth - 1) for _ in range(rng.randint(0, 3)))
    return w.tag(number, 3) + inner + w.tag(number, 4)


def _wrong_wire(rng: Any, w: Writer, number: int, kind: str, depth: int) -> bytes:
    """Field ``number`` of type ``kind`` with a wire type that is not its own: an unknown field."""
    own = {"varint": 0, "fixed64": 1, "fixed32": 5}.get(kind.rstrip("*"), 2)
    others = [t for t in (0, 1, 2, 3, 5) if t != own and not (kind.endswith("*") and t == 2)]
    return unknown_field(rng, w, max(depth, 1), number, rng.choice(others))


def _scalar(rng: Any, w: Writer, kind: str) -> bytes:
    if kind == "varint":
        return w.varint(_int(rng))
    if kind == "fixed64":
        return _double_bits(rng, "<d")
    return _double_bits(rng, "<f")


def wire_field(rng: Any, w: Writer, message: str, depth: int) -> bytes:
    schema = SCHEMA[message]
    r = rng.random()
    if r < 0.12:
        return unknown_field(rng, w, depth)
    number = rng.choice(list(schema))
    kind = schema[number]
    if r < 0.18:
        return _wrong_wire(rng, w, number, kind, depth)
    if kind == "string":
        return w.ld(number, _text(rng))
    if kind == "bytes":
        return w.ld(number, _bytes(rng))
    if kind.startswith("msg:"):
        return w.ld(number, wire_message(rng, kind[4:], depth - 1, w))
    scalar = kind.rstrip("*")
    if kind.endswith("*") and rng.random() < 0.5:  # packed
        return w.ld(number, b"".join(_scalar(rng, w, scalar) for _ in range(rng.randint(0, 5))))
    wire = {"varint": 0, "fixed64": 1, "fixed32": 5}[scalar]
    return w.tag(number, wire) + _scalar(rng, w, scalar)


def wire_message(rng: Any, message: str = "request", depth: int = 4, w: Writer | None = None) -> bytes:
    """A ``message`` written field by field (see the module docstring)."""
    w = w or Writer(rng)
    count = rng.choice((0, 1, 2, 3, rng.randint(0, 12))) if depth > 0 else rng.randint(0, 2)
    fields = [wire_field(rng, w, message, max(depth, 1)) for _ in range(count)]
    if fields and rng.random() < 0.1:  # a field given twice (last wins / merges / a later map key wins)
        fields.append(rng.choice(fields))
    return b"".join(fields)


# --- messages built by protobuf ----------------------------------------------------------------


def _set_parameter(rng: Any, p: Any) -> None:
    kind = rng.choice(PARAMETER_KINDS + (None,))
    if kind == "bool_param":
        p.bool_param = rng.random() < 0.5
    elif kind == "int64_param":
        p.int64_param = _int(rng) - 2**63
    elif kind == "string_param":
        p.string_param = rng.choice(_TEXT)
    elif kind == "double_param":
        p.double_param = rng.choice(_INTERESTING_DOUBLES)
    elif kind == "uint64_param":
        p.uint64_param = _int(rng)


def _fill_parameters(rng: Any, params: Any) -> None:
    for _ in range(rng.choice((0, 0, 1, 3))):
        _set_parameter(rng, params[rng.choice(_TEXT)])


def protobuf_message(rng: Any) -> bytes:
    """A ModelInferRequest of random field values, serialized by protobuf."""
    m = pb.ModelInferRequest(model_name=rng.choice(_TEXT), model_version=rng.choice(("", "1", "2", "v")),
                             id=rng.choice(_TEXT))
    _fill_parameters(rng, m.parameters)
    for _ in range(rng.randint(0, 3)):
        t = m.inputs.add(name=rng.choice(_TEXT), datatype=rng.choice(("FP32", "INT64", "BYTES", "BOOL", "")))
        t.shape.extend(_int(rng) - 2**63 for _ in range(rng.randint(0, 3)))
        _fill_parameters(rng, t.parameters)
        if rng.random() < 0.6:
            c = t.contents
            c.SetInParent()
            n = rng.randint(0, 4)
            field = rng.choice(CONTENTS_FIELDS)
            if field == "bool_contents":
                c.bool_contents.extend(rng.random() < 0.5 for _ in range(n))
            elif field == "int_contents":
                c.int_contents.extend(_int(rng) % 2**32 - 2**31 for _ in range(n))
            elif field == "int64_contents":
                c.int64_contents.extend(_int(rng) - 2**63 for _ in range(n))
            elif field == "uint_contents":
                c.uint_contents.extend(_int(rng) % 2**32 for _ in range(n))
            elif field == "uint64_contents":
                c.uint64_contents.extend(_int(rng) for _ in range(n))
            elif field == "fp32_contents":
                c.fp32_contents.extend(struct.unpack("<f", _double_bits(rng, "<f"))[0] for _ in range(n))
            elif field == "fp64_contents":
                c.fp64_contents.extend(rng.choice(_INTERESTING_DOUBLES) for _ in range(n))
            else:
                c.bytes_contents.extend(_bytes(rng) for _ in range(n))
    for _ in range(rng.randint(0, 2)):
        o = m.outputs.add(name=rng.choice(_TEXT))
        _fill_parameters(rng, o.parameters)
    m.raw_input_contents.extend(_bytes(rng) for _ in range(rng.randint(0, 3)))
    return m.SerializeToString()


# --- byte-level damage ---------------------------------------------------------------------------

_BAD_TOKENS = (
    b"\xff" * 10 + b"\x01",          # a varint of 11 bytes
    b"\x80",                         # a varint cut short
    varint(9 << 3 | 6), varint(9 << 3 | 7),  # wire types 6 and 7
    varint(9 << 3 | 4),              # an end-group tag without its start
    varint(9 << 3 | 3),              # a start-group tag without its end
    b"\x00\x01",                     # field number 0
    b"\x8a\x80\x80\x80\x10",         # a tag past 32 bits
    b"\x88\x80\x80\x80\x80\x00",     # a tag of 6 bytes
    varint(1 << 3 | 2) + varint(2**62),  # a huge declared length
    varint(7 << 3 | 2) + varint(2**31),
    varint(5 << 3 | 2) + varint(2**64 - 1),
    varint(9 << 3 | 1) + b"\x00" * 3,    # a fixed64 cut short
)


def mutate(rng: Any, data: bytes) -> bytes:
    """``data`` with 1 to 3 random kinds of damage (or a valid unknown field spliced in front or at
    the end, where a top-level field boundary is sure)."""
    out = bytearray(data)
    w = Writer(rng)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            del out[rng.randrange(len(out)) :]  # truncation
        elif op == 1 and out:
            out[rng.randrange(len(out))] = rng.getrandbits(8)
        elif op == 2:
            out[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4)))
        elif op == 3:
            out[pos:pos] = rng.choice(_BAD_TOKENS)
        elif op == 4 and out:
            start = rng.randrange(len(out))
            del out[start : start + rng.randint(1, 8)]
        elif op == 5:
            field = unknown_field(rng, w, 3)
            out = bytearray(field) + out if rng.random() < 0.5 else out + field
        else:
            out += rng.choice(_BAD_TOKENS)
    return bytes(out)


def generated(rng: Any) -> bytes:
    """One case: a protobuf-built or a wire-written message, damaged half the time."""
    data = protobuf_message(rng) if rng.random() < 0.35 else wire_message(rng)
    return mutate(rng, data) if rng.random() < 0.5 else data


# --- the differential check --------------------------------------------------------------------------


def _parameters(params: Any) -> dict[str, tuple[str | None, Any]]:
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = (which, getattr(p, which) if which else None)
    return out


def protobuf_dict(m: Any) -> dict[str, Any]:
    """A parsed protobuf message in the form of the native parser's to_dict()."""
    return {
        "model_name": m.model_name,
        "model_version": m.model_version,
        "id": m.id,
        "parameters": _parameters(m.parameters),
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "parameters": _parameters(t.parameters),
                "has_contents": t.HasField("contents"),
                "contents": {f: list(getattr(t.contents, f)) for f in CONTENTS_FIELDS},
            }
            for t in m.inputs
        ],
        "outputs": [{"name": o.name, "parameters": _parameters(o.parameters)} for o in m.outputs],
        "raw_input_contents": list(m.raw_input_contents),
    }


def exact(value: Any) -> Any:
    """``value`` with every scalar tagged by its type and floats as their bits, so that == tells
    True from 1, -0.0 from 0.0 and compares NaNs."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def check(data: bytes) -> bool:
    """Parses ``data`` with protobuf and with the native parser and asserts they agree: the same
    fields where protobuf accepts, InvalidArgumentError naming a byte where it refuses. Returns
    whether protobuf accepted."""
    try:
        expected = protobuf_dict(pb.ModelInferRequest.FromString(data))
    except DecodeError:
        expected = None
    try:
        got = core.protocol.parse(data).to_dict()
        error = None
    except InvalidArgumentError as e:
        got, error = None, str(e)
    if expected is None:
        assert got is None, f"protobuf refuses {data!r}, the native parser accepts it as {got}"
        assert " at byte " in error, error
        return False
    assert error is None, f"protobuf accepts {data!r}, the native parser refuses it: {error}"
    assert exact(got) == exact(expected), f"{data!r}:\n native   {got}\n protobuf {expected}"
    return True
