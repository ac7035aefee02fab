import gc
import sys

import numpy as np
import pytest

import modelserve
from modelserve import Tensor, memory

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def test_every_protocol_datatype_is_known():
    assert set(modelserve.DATATYPES) == set(NUMERIC) | {"BF16", "BYTES"}


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_numeric_round_trip_is_zero_copy(datatype):
    a = (np.arange(24) % 7).astype(NUMERIC[datatype]).reshape(2, 3, 4)
    t = Tensor.from_numpy(a)
    assert t.datatype == datatype
    assert t.shape == (2, 3, 4)
    assert t.nbytes == a.nbytes
    assert t.data_ptr == a.ctypes.data  # a view, not a copy
    back = t.numpy()
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)
    assert back.ctypes.data == a.ctypes.data
    np.testing.assert_array_equal(np.asarray(t), a)
    np.testing.assert_array_equal(np.asarray(memoryview(t)), a)


def test_non_contiguous_arrays_are_copied_once():
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    t = Tensor.from_numpy(a)
    np.testing.assert_array_equal(t.numpy(), a)
    assert t.data_ptr != a.ctypes.data


def test_fp16_keeps_its_bits():
    a = np.array([0.5, -2.0, 65504.0, np.inf], dtype=np.float16)
    t = Tensor.from_numpy(a)
    assert t.datatype == "FP16"
    assert t.numpy().tobytes() == a.tobytes()


def test_bf16_from_raw_bits_round_trips():
    bits = np.array([0x3F80, 0xC000, 0x7F80], dtype=np.uint16)  # 1.0, -2.0, inf
    t = Tensor.from_numpy(bits, "BF16")
    assert t.datatype == "BF16" and t.nbytes == 6
    assert t.numpy().view(np.uint16).tolist() == bits.tolist()


def test_bf16_uses_ml_dtypes_when_installed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([1.0, -2.0, 0.5], dtype=ml_dtypes.bfloat16)
    t = Tensor.from_numpy(a)
    assert t.datatype == "BF16"
    assert t.numpy().dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(t.numpy().astype(np.float32), [1.0, -2.0, 0.5])


def test_bytes_round_trip_in_the_protocol_serialisation():
    a = np.array([[b"", b"abc"], ["\u00e9t\u00e9", b"\x00\xff"]], dtype=object)
    t = Tensor.from_numpy(a)
    assert t.datatype == "BYTES" and t.shape == (2, 2)
    expected = b"".join(len(s).to_bytes(4, "little") + s for s in [b"", b"abc", "\u00e9t\u00e9".encode(), b"\x00\xff"])
    assert t.tobytes() == expected
    back = t.numpy()
    assert back.dtype == object and back.shape == (2, 2)
    assert back.tolist() == [[b"", b"abc"], ["\u00e9t\u00e9".encode(), b"\x00\xff"]]
    assert t.slice_rows(1, 2).numpy().tolist() == [["\u00e9t\u00e9".encode(), b"\x00\xff"]]


def test_bytes_elements_must_be_bytes_or_str():
    with pytest.raises(modelserve.InvalidArgumentError, match="element 1 is a int"):
        Tensor.from_numpy(np.array([b"a", 3], dtype=object))


def test_from_buffer_views_request_bytes_and_keeps_them_alive():
    payload = np.arange(6, dtype=np.float32).tobytes()
    refs = sys.getrefcount(payload)
    t = Tensor.from_buffer(payload, "FP32", [2, 3])
    assert sys.getrefcount(payload) == refs + 1  # held, not copied
    view = t.numpy()
    assert not view.flags.writeable and t.read_only
    del payload
    gc.collect()
    np.testing.assert_array_equal(view, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_from_buffer_checks_the_size_against_the_shape():
    with pytest.raises(modelserve.InvalidArgumentError, match="needs 24 bytes, got 20"):
        Tensor.from_buffer(b"\0" * 20, "FP32", [2, 3])


def test_from_buffer_checks_serialised_bytes():
    good = (3).to_bytes(4, "little") + b"abc"
    assert Tensor.from_buffer(good, "BYTES", [1]).numpy().tolist() == [b"abc"]
    with pytest.raises(modelserve.InvalidArgumentError, match="claims 3 bytes"):
        Tensor.from_buffer(good[:-1], "BYTES", [1])


def test_reinterpreting_needs_the_same_element_size():
    with pytest.raises(modelserve.InvalidArgumentError, match="cannot become a BF16 tensor"):
        Tensor.from_numpy(np.zeros(3, np.float32), "BF16")


def test_pooled_tensor_returns_its_buffer_after_the_last_reference():
    pool = memory.PoolResource(memory.HostResource())
    t = Tensor.empty("FP32", [64, 16], pool)
    assert t.device == "cpu"
    assert pool.stats()["bytes_in_use"] == memory.PoolResource.size_class_of(64 * 16 * 4)
    view = t.numpy()
    view[:] = 1.0
    del t
    assert pool.stats()["bytes_in_use"] > 0  # the numpy view still holds the buffer
    capsule = view.__dlpack__()
    del view
    assert pool.stats()["bytes_in_use"] > 0  # so does an unconsumed DLPack capsule
    del capsule
    gc.collect()
    assert pool.stats()["bytes_in_use"] == 0
    t2 = Tensor.empty("FP32", [64, 16], pool)
    assert pool.stats()["hits"] == 1  # the same block came back
    del t2


def test_dlpack_export_is_zero_copy():
    a = np.arange(10, dtype=np.int64)
    t = Tensor.from_numpy(a)
    assert t.__dlpack_device__() == (1, 0)
    b = np.from_dlpack(t)
    np.testing.assert_array_equal(b, a)
    assert b.ctypes.data == a.ctypes.data


def test_dlpack_legacy_capsule_for_unversioned_consumers():
    t = Tensor.from_numpy(np.ones(3, np.float32))
    cap = t.__dlpack__()
    assert "dltensor" in repr(cap) and "versioned" not in repr(cap)
    cap = t.__dlpack__(max_version=(1, 0))
    assert "dltensor_versioned" in repr(cap)


def test_bytes_tensors_have_no_dlpack_form():
    t = Tensor.from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(modelserve.InvalidArgumentError, match="BYTES tensors have no DLPack form"):
        t.__dlpack__()


def test_slice_rows_is_a_view_of_the_same_buffer():
    a = np.arange(12, dtype=np.int32).reshape(4, 3)
    t = Tensor.from_numpy(a)
    s = t.slice_rows(1, 3)
    assert s.shape == (2, 3)
    assert s.data_ptr == a[1:3].ctypes.data
    with pytest.raises(modelserve.InvalidArgumentError, match=r"rows \[3, 5\) out of range"):
        t.slice_rows(3, 5)


def test_as_tensor_accepts_lists_and_tensors():
    t = modelserve.as_tensor([[1, 2], [3, 4]])
    assert t.datatype == "INT64" and t.shape == (2, 2)
    assert modelserve.as_tensor(t) is t
