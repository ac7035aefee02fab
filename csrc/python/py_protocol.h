// What other bindings need of modelserve._core.protocol (py_protocol.cc).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "exec/model.h"
#include "protocol/infer_request.h"
#include "tensor/tensor.h"

namespace modelserve::python {

namespace py = pybind11;

// The inputs and requested output names of a _core.protocol.ParsedInferRequest `obj` (a gRPC
// message parsed, or an HTTP request described by protocol.http_request), decoded and checked
// (protocol::decode_inputs, requested_output_names); raw inputs view the request's bytes, which
// the tensors keep alive. A raw single-input HTTP request takes its input from `model_inputs`
// (the specs of the version it goes to; batched: the model batches) and is refused without them.
// Throws kInvalidArgument when `obj` is not a ParsedInferRequest.
std::pair<TensorList, std::vector<std::string>> decode_request(const py::handle& obj, const std::string& where,
                                                               const std::vector<TensorSpec>* model_inputs,
                                                               bool batched);

}  // namespace modelserve::python
