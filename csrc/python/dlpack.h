// DLPack export of tensors (__dlpack__ / __dlpack_device__).
#pragma once

#include <pybind11/pybind11.h>

#include <utility>

#include "tensor/tensor.h"

namespace modelserve::python {

// A capsule holding a DLManagedTensorVersioned ("dltensor_versioned", DLPack 1.x) or, for
// consumers that ask for no version, a DLManagedTensor ("dltensor"). The capsule keeps the
// tensor's buffer alive until the consumer calls the deleter.
pybind11::capsule to_dlpack(const Tensor& tensor, bool versioned);
std::pair<int, int> dlpack_device(const Tensor& tensor);

}  // namespace modelserve::python
