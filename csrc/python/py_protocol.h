// What other bindings need of modelserve._core.protocol (py_protocol.cc).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "protocol/infer_request.h"
#include "tensor/tensor.h"

namespace modelserve::python {

namespace py = pybind11;

// The request parsed by a _core.protocol.ParsedInferRequest `obj`, and (in `bytes`) a Buffer over
// the bytes it views that keeps them alive and exported for as long as any tensor views them.
// Throws kInvalidArgument when `obj` is not a ParsedInferRequest.
const protocol::InferRequest& parsed_request_of(const py::handle& obj, std::shared_ptr<Buffer>& bytes);

}  // namespace modelserve::python
