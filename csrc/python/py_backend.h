// The Python backend adapter: the only code on core threads that takes the GIL.
#pragma once

#include <pybind11/pybind11.h>

#include "exec/backend.h"

namespace modelserve::python {

// Makes a BackendFactory from a Python callable `factory(instance_index, device_str) -> model`,
// where `model.execute(inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]`. Inputs are
// zero-copy views of the gathered batch (BYTES inputs are object arrays of bytes); outputs are
// taken zero-copy when C-contiguous. Exceptions raised by execute fail only that batch, with
// INTERNAL and the exception's type and message.
BackendFactory python_backend_factory(pybind11::object factory);

}  // namespace modelserve::python
