// Tensors across the Python boundary: numpy views, Python-owned buffers, datatype mapping.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <optional>

#include "tensor/tensor.h"

namespace modelserve::python {

namespace py = pybind11;

// Note [Python-owned buffers]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A tensor may view memory that a Python object owns: the bytes of a request payload, a numpy
// array a model returned. The tensor keeps the object alive through python_owner(), a
// shared_ptr whose deleter drops the reference. That deleter can run on a core thread (the last
// tensor of a batch dies where the batch completes), and core threads never take the GIL
// (DESIGN.md). So the deleter drops the reference at once only when the calling thread holds
// the GIL; otherwise it parks the object in a list that release_python_owners() empties. Every
// binding that runs with the GIL and is called often (submit, drain, tensor creation) calls it,
// so parked references live for microseconds, not until exit.
std::shared_ptr<void> python_owner(py::object obj);
void release_python_owners();
size_t parked_python_owners();  // for tests

// The numpy dtype of a datatype. BF16 is ml_dtypes.bfloat16 when that package is installed and
// uint16 (the raw bits) otherwise; BYTES is object.
py::dtype numpy_dtype(DataType dtype);
// The datatype of a numpy dtype; object, bytes_ and str_ arrays are BYTES. Throws kInvalidArgument.
DataType datatype_of(const py::dtype& dtype);

// A host tensor viewing the array's memory (no copy) when it is C-contiguous and not BYTES;
// otherwise a copy (BYTES arrays are serialised). `datatype` reinterprets the elements when it
// names a type of the same size (uint16 bits as BF16).
Tensor tensor_from_numpy(const py::array& array, std::optional<DataType> datatype = std::nullopt);
// A view of any buffer-protocol object (bytes, memoryview, bytearray), keeping it alive.
Tensor tensor_from_buffer(const py::buffer& buffer, DataType dtype, Shape shape);
// Any of: Tensor, numpy array, or something numpy.asarray accepts.
Tensor as_tensor(const py::handle& obj);
// A numpy array viewing a host tensor (no copy; BYTES become an object array of bytes, a copy).
// The array keeps the tensor's buffer alive.
py::array tensor_to_numpy(const Tensor& tensor);

}  // namespace modelserve::python
