// From a parsed ModelInferRequest to the core's Request, and from a Response to the serialized
// ModelInferResponse: the per-request work of the gRPC frontend, in the core. No Python in it.
//
// Note [Native request path]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~
// A gRPC ModelInfer request arrives as bytes. parse_infer_request (infer_request.h) finds every
// field in them; Python then reads only the model, version and parameters to apply the traffic
// policy and the request options; then decode_inputs and requested_output_names below turn the
// parsed message into the Request that Model::submit checks against the model and enqueues. Raw
// inputs are views of the request's bytes (the Buffer passed in owns them): no copy. Typed
// contents are decoded into pooled host buffers, through the value rules. When the request has
// run, write_infer_response encodes its outputs straight into the one bytes object gRPC sends.
//
// The checks, their order and their messages are those of the Python decoder this replaces
// (server/grpc.py's history, recorded in tests/data/bad_infer_requests.json): the request's
// inputs first (raw and typed mixed, the count of raw entries, then each input in order: a name
// given twice, a shared-memory region, the datatype, the shape, the data), then its requested
// outputs. Every message starts with `where` ("model 'm' version 1").
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/infer_request.h"
#include "tensor/tensor.h"

namespace modelserve::protocol {

// The largest element count a request's tensor may declare (server/common.py's MAX_ELEMENTS).
inline constexpr int64_t kMaxElements = int64_t(1) << 32;

// The inputs of `request` as tensors: raw_input_contents as views of `bytes` (the buffer that
// holds the request), typed contents decoded into `pool`. Throws Error naming what is wrong.
//
// `given` (HTTP, Note [HTTP requests]): where (*given)[k] is set, input k's tensor was decoded by
// the frontend from JSON values, through its value rules, and is taken as it is (after the name
// checks); every other input k is raw, its bytes raw_input_contents[k].
TensorList decode_inputs(const InferRequest& request, const std::shared_ptr<Buffer>& bytes,
                         const std::string& where, const std::shared_ptr<MemoryResource>& pool,
                         const std::vector<std::optional<Tensor>>* given = nullptr);

// The one input of Triton's raw binary HTTP request (Inference-Header-Content-Length: 0): all of
// `bytes`, as the model's only input `name` (`dtype`, `dims` per item; batch 1 when `batched`),
// with at most one variable dimension, which the body's size fixes.
Tensor single_input(const std::shared_ptr<Buffer>& bytes, const std::string& name, DataType dtype,
                    const Shape& dims, bool batched, const std::string& where);

// The names of the outputs `request` asks for, in order (empty: every output). Throws Error
// for a name given twice, a shared-memory region or a classification output.
std::vector<std::string> requested_output_names(const InferRequest& request, const std::string& where);

// What a ModelInferResponse says besides its outputs.
struct ResponseHead {
  std::string_view model_name;
  std::string_view model_version;
  std::string_view id;
  bool final_response = false;  // a streamed response: parameters {triton_final_response: true}
  bool stream = false;          // wrapped as ModelStreamInferResponse.infer_response (field 2)
};

// The serialized size of the response, and its bytes written at `out` (which must hold that
// many): the same bytes protobuf's serializer gives for that message, with each output's bytes
// in raw_output_contents. Every output must be in host memory.
size_t infer_response_size(const ResponseHead& head, const TensorList& outputs);
void write_infer_response(const ResponseHead& head, const TensorList& outputs, uint8_t* out);

}  // namespace modelserve::protocol
