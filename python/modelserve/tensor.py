"""Tensors: an Open Inference Protocol datatype, a shape, a device and pooled or borrowed memory.

``Tensor`` is zero-copy in both directions where the memory allows it:

- ``Tensor.from_numpy(a)`` views a C-contiguous array (BYTES arrays, of ``bytes``/``str``
  objects, are serialised); ``Tensor.from_buffer(b, "FP32", [2, 3])`` views a request's raw
  payload, keeping the bytes object alive.
- ``t.numpy()`` / ``numpy.asarray(t)`` view host memory; ``torch.from_dlpack(t)`` takes any
  tensor but BYTES through DLPack; ``memoryview(t)`` is the buffer protocol.

A tensor from a pool returns its memory to the pool when the last reference, C++ or Python
(numpy arrays viewing it included), is gone. numpy has no bfloat16: BF16 tensors read as
``ml_dtypes.bfloat16`` when that package is installed and as ``uint16`` bits otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._native import core as _core

__all__ = ["Tensor", "DATATYPES", "NUMPY_DTYPES", "as_tensor"]

Tensor = _core.Tensor
DATATYPES: tuple[str, ...] = tuple(_core.DATATYPES)

#: numpy dtype of each datatype's values on the wire; BF16 travels as its 16-bit pattern.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "BF16": np.dtype(np.uint16), "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64), "BYTES": np.dtype(object),
}


def as_tensor(value: Any, datatype: str | None = None) -> Tensor:
    """A Tensor for ``value``: a Tensor as is, else ``numpy.asarray(value)`` viewed or converted.

    ``datatype`` reinterprets same-sized elements (``uint16`` bits as ``"BF16"``).
    """
    if isinstance(value, Tensor) and datatype in (None, value.datatype):
        return value
    return Tensor.from_numpy(np.asarray(value), datatype)
