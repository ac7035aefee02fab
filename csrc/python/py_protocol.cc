// modelserve._core.protocol: the Python face of the native ModelInferRequest parser
// (csrc/protocol/infer_request.h).
//
// parse(buffer) keeps the buffer's object alive and its buffer exported (a bytearray cannot be
// resized under the views) for as long as the parsed request lives; raw(i) is a memoryview into
// that same buffer, not a copy. to_dict() is the test-only full decode that tests/test_protocol.py
// compares field by field with protobuf's message.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "memory/default_resources.h"
#include "protocol/infer_codec.h"
#include "protocol/infer_request.h"
#include "python/py_protocol.h"
#include "python/py_tensor.h"

namespace py = pybind11;

namespace modelserve::python {
namespace {

using namespace modelserve::protocol;

py::str to_str(ByteView v) {  // the parser checked string fields are UTF-8
  return py::str(reinterpret_cast<const char*>(v.data), v.size);
}
py::bytes to_bytes(ByteView v) { return py::bytes(reinterpret_cast<const char*>(v.data), v.size); }

const char* kind_name(ParameterKind kind) {
  switch (kind) {
    case ParameterKind::kBool: return "bool_param";
    case ParameterKind::kInt64: return "int64_param";
    case ParameterKind::kString: return "string_param";
    case ParameterKind::kDouble: return "double_param";
    case ParameterKind::kUint64: return "uint64_param";
    default: return nullptr;
  }
}

py::object parameter_value(const InferParameter& p) {
  switch (p.kind) {
    case ParameterKind::kBool: return py::bool_(p.bool_value);
    case ParameterKind::kInt64: return py::int_(p.int64_value);
    case ParameterKind::kString: return to_str(p.string_value);
    case ParameterKind::kDouble: return py::float_(p.double_value);
    case ParameterKind::kUint64: return py::int_(p.uint64_value);
    default: return py::none();
  }
}

// {key: value} as the gRPC frontend reads parameters (value None where no member is set).
py::dict parameters_dict(const Parameters& params) {
  py::dict d;
  for (const auto& e : params.entries) d[to_str(e.key)] = parameter_value(e.value);
  return d;
}

// {key: (member name or None, value)}: to_dict's form, which tells bool_param from int64_param.
py::dict parameters_full(const Parameters& params) {
  py::dict d;
  for (const auto& e : params.entries) {
    const char* kind = kind_name(e.value.kind);
    d[to_str(e.key)] = py::make_tuple(kind ? py::object(py::str(kind)) : py::object(py::none()),
                                      parameter_value(e.value));
  }
  return d;
}

template <ContentsField F>
py::list elements_list(const ContentsElements& elements) {
  py::list out;
  for_each_element<F>(elements, [&](auto v) {
    if constexpr (std::is_same_v<decltype(v), bool>) out.append(py::bool_(v));
    else if constexpr (std::is_floating_point_v<decltype(v)>) out.append(py::float_(static_cast<double>(v)));
    else out.append(py::int_(v));
  });
  return out;
}

py::dict contents_dict(const InferTensorContents& c) {
  py::dict d;
  d["bool_contents"] = elements_list<ContentsField::kBool>(c[ContentsField::kBool]);
  d["int_contents"] = elements_list<ContentsField::kInt>(c[ContentsField::kInt]);
  d["int64_contents"] = elements_list<ContentsField::kInt64>(c[ContentsField::kInt64]);
  d["uint_contents"] = elements_list<ContentsField::kUint>(c[ContentsField::kUint]);
  d["uint64_contents"] = elements_list<ContentsField::kUint64>(c[ContentsField::kUint64]);
  d["fp32_contents"] = elements_list<ContentsField::kFp32>(c[ContentsField::kFp32]);
  d["fp64_contents"] = elements_list<ContentsField::kFp64>(c[ContentsField::kFp64]);
  py::list bytes;
  for (const ByteView& e : c[ContentsField::kBytes].elements) bytes.append(to_bytes(e));
  d["bytes_contents"] = bytes;
  return d;
}

ContentsField parse_field(const std::string& name) {
  for (int i = 0; i < kNumContentsFields; ++i) {
    if (name == contents_field_name(static_cast<ContentsField>(i))) return static_cast<ContentsField>(i);
  }
  MS_FAIL(kInvalidArgument, "'", name, "' is not a field of InferTensorContents");
}

// Note [HTTP requests]
// ~~~~~~~~~~~~~~~~~~~~
// An HTTP inference request is a JSON header and a binary tail. The frontend parses the header
// (JSON is Python's to read) and describes the request to http_request(): each input's name,
// datatype and shape, with either the place of its binary data in the body or, for JSON `data`,
// the tensor its value rules built (server/common.py, Note [Value rules]); and the requested
// outputs. That description becomes the InferRequest a gRPC message parses to, its binary data
// as raw_input_contents viewing the body, so Model.submit_parsed decodes and checks both
// protocols' requests with the same code (decode_inputs) and messages. Triton's raw binary
// request (the whole body is the one input) has its input spec filled in at submit, from the
// version the request goes to.

// A parsed ModelInferRequest (or a described HTTP request) and the object whose bytes it views.
class ParsedInferRequest {
 public:
  explicit ParsedInferRequest(const py::object& buffer) : ParsedInferRequest(buffer, "parse") {
    Status status = parse_infer_request(data_, size_, request_);
    if (!status.is_ok()) throw Error(status.code, status.message);
  }

  // Note [HTTP requests]. `inputs`: (name, datatype, shape, data) tuples, data (offset, size) of
  // the binary data in `body` or a Tensor; `single_input`: the whole body is the model's one input.
  static std::unique_ptr<ParsedInferRequest> http(const py::object& body, const py::sequence& inputs,
                                                  const std::vector<std::string>& outputs, bool single_input) {
    std::unique_ptr<ParsedInferRequest> r(new ParsedInferRequest(body, "http_request"));
    r->single_input_ = single_input;
    const size_t n = inputs.size();
    r->strings_.reserve(2 * n + outputs.size());  // never reallocated: the views below point into it
    r->request_.inputs.resize(n);
    r->request_.raw_input_contents.resize(n);
    r->given_.resize(n);
    for (size_t k = 0; k < n; ++k) {
      const auto item = inputs[k].cast<py::tuple>();
      MS_EXPECTS(item.size() == 4, kInvalidArgument, "http_request: inputs[", k,
                 "] must be (name, datatype, shape, data), got ", item.size(), " items");
      InferInputTensor& in = r->request_.inputs[k];
      in.name = r->keep(item[0].cast<std::string>());
      in.datatype = r->keep(item[1].cast<std::string>());
      in.shape = item[2].cast<Shape>();
      if (py::isinstance<Tensor>(item[3])) {
        r->given_[k] = item[3].cast<Tensor>();
        continue;
      }
      const auto [offset, size] = item[3].cast<std::pair<size_t, size_t>>();
      MS_EXPECTS(offset <= r->size_ && size <= r->size_ - offset, kInvalidArgument, "input '", in.name.str(),
                 "': binary data [", offset, ", +", size, ") goes past the end of the body of ", r->size_, " bytes");
      r->request_.raw_input_contents[k] = ByteView{r->data_ + offset, size};
    }
    r->request_.outputs.resize(outputs.size());
    for (size_t k = 0; k < outputs.size(); ++k) r->request_.outputs[k].name = r->keep(outputs[k]);
    return r;
  }

  ParsedInferRequest(ParsedInferRequest&&) = delete;  // views point into strings_

  const InferRequest& request() const { return request_; }
  // Inputs decoded by the frontend (HTTP's JSON data), by position; empty for gRPC.
  const std::vector<std::optional<Tensor>>& given() const { return given_; }
  bool single_input() const { return single_input_; }
  const py::object& owner() const { return owner_; }

  // A Buffer over the parsed bytes for the tensors that view them (raw inputs): its owner is a
  // memoryview of the request's object, which holds the buffer export as long as the Buffer lives,
  // even past this object.
  const std::shared_ptr<Buffer>& buffer() const {
    if (!buffer_) {
      buffer_ = Buffer::wrap(const_cast<uint8_t*>(data_), size_, Device::cpu(), python_owner(py::memoryview(owner_)),
                             /*read_only=*/true);
    }
    return buffer_;
  }

  size_t offset(ByteView v) const { return static_cast<size_t>(v.data - data_); }

  const ByteView& raw_entry(size_t i) const {
    MS_EXPECTS(i < request_.raw_input_contents.size(), kInvalidArgument, "raw_input_contents[", i, "]: the request has ",
               request_.raw_input_contents.size());
    return request_.raw_input_contents[i];
  }

  py::object raw(size_t i) const {
    const ByteView& v = raw_entry(i);
    const auto begin = static_cast<py::ssize_t>(offset(v));
    if (!memoryview_) {  // made on first use: most callers never ask for one
      memoryview_ = py::memoryview(owner_);
      if (view_->format != "B") memoryview_ = memoryview_.attr("cast")("B");
    }
    return memoryview_[py::slice(begin, begin + static_cast<py::ssize_t>(v.size), 1)];
  }

  uintptr_t raw_address(size_t i) const { return reinterpret_cast<uintptr_t>(raw_entry(i).data); }
  uintptr_t buffer_address() const { return reinterpret_cast<uintptr_t>(data_); }
  size_t buffer_size() const { return size_; }

  const InferInputTensor& input(size_t i) const {
    MS_EXPECTS(i < request_.inputs.size(), kInvalidArgument, "inputs[", i, "]: the request has ",
               request_.inputs.size());
    return request_.inputs[i];
  }

  py::bytes decode(size_t i, const std::string& field_name, const std::string& datatype) const {
    const InferInputTensor& in = input(i);
    const ContentsField field = parse_field(field_name);
    const DataType dtype = parse_datatype(datatype);
    const size_t size = field == ContentsField::kBytes ? serialized_bytes_size(in.contents[field])
                                                       : element_size(dtype) * in.contents[field].count;
    std::string out(size, '\0');
    Status status = decode_contents(in, field, dtype, out.data(), out.size());
    if (!status.is_ok()) throw Error(status.code, status.message);
    return py::bytes(out);
  }

  py::dict to_dict() const {
    const InferRequest& r = request_;
    py::dict d;
    d["model_name"] = to_str(r.model_name);
    d["model_version"] = to_str(r.model_version);
    d["id"] = to_str(r.id);
    d["parameters"] = parameters_full(r.parameters);
    py::list inputs;
    for (const InferInputTensor& in : r.inputs) {
      py::dict t;
      t["name"] = to_str(in.name);
      t["datatype"] = to_str(in.datatype);
      py::list shape;
      for (int64_t s : in.shape) shape.append(s);
      t["shape"] = shape;
      t["parameters"] = parameters_full(in.parameters);
      t["has_contents"] = in.has_contents;
      t["contents"] = contents_dict(in.contents);
      inputs.append(t);
    }
    d["inputs"] = inputs;
    py::list outputs;
    for (const InferRequestedOutputTensor& out : r.outputs) {
      py::dict t;
      t["name"] = to_str(out.name);
      t["parameters"] = parameters_full(out.parameters);
      outputs.append(t);
    }
    d["outputs"] = outputs;
    py::list raw;
    for (const ByteView& v : r.raw_input_contents) raw.append(to_bytes(v));
    d["raw_input_contents"] = raw;
    return d;
  }

 private:
  ParsedInferRequest(const py::object& buffer, const char* what) : owner_(buffer) {
    view_ = std::make_unique<py::buffer_info>(py::buffer(buffer).request());
    const bool contiguous = view_->ndim <= 1 && (view_->ndim == 0 || view_->strides[0] == view_->itemsize);
    MS_EXPECTS(contiguous, kInvalidArgument, what, ": the buffer must be contiguous");
    data_ = static_cast<const uint8_t*>(view_->ptr);
    size_ = static_cast<size_t>(view_->size * view_->itemsize);
  }

  ByteView keep(std::string s) {
    strings_.push_back(std::move(s));
    return ByteView{reinterpret_cast<const uint8_t*>(strings_.back().data()), strings_.back().size()};
  }

  py::object owner_;
  std::unique_ptr<py::buffer_info> view_;  // holds the buffer export: the bytes cannot move
  mutable py::object memoryview_;          // of owner_, for zero-copy slices
  mutable std::shared_ptr<Buffer> buffer_;  // made on first use (buffer())
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  InferRequest request_;
  std::vector<std::string> strings_;  // an HTTP request's names and datatypes (views point here)
  std::vector<std::optional<Tensor>> given_;
  bool single_input_ = false;
};

}  // namespace

std::pair<TensorList, std::vector<std::string>> decode_request(const py::handle& obj, const std::string& where,
                                                               const std::vector<TensorSpec>* model_inputs,
                                                               bool batched) {
  MS_EXPECTS(py::isinstance<ParsedInferRequest>(obj), kInvalidArgument, "expected a ParsedInferRequest, got ",
             Py_TYPE(obj.ptr())->tp_name);
  const auto& parsed = obj.cast<const ParsedInferRequest&>();
  const InferRequest& r = parsed.request();
  std::vector<std::string> outputs = requested_output_names(r, where);
  if (parsed.single_input()) {
    MS_EXPECTS(model_inputs != nullptr, kInvalidArgument, where,
               ": a raw binary request (Inference-Header-Content-Length: 0) needs the model's input specs");
    MS_EXPECTS(model_inputs->size() == 1, kInvalidArgument, where,
               ": a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input; "
               "this one has ", model_inputs->size());
    const TensorSpec& spec = model_inputs->front();
    TensorList inputs;
    inputs.push_back({spec.name, single_input(parsed.buffer(), spec.name, spec.dtype, spec.dims, batched, where)});
    return {std::move(inputs), std::move(outputs)};
  }
  return {decode_inputs(r, parsed.buffer(), where, host_pool(), &parsed.given()), std::move(outputs)};
}

void bind_protocol(py::module_& m) {
  py::module_ p = m.def_submodule("protocol", "the native ModelInferRequest parser");
  py::class_<ParsedInferRequest>(p, "ParsedInferRequest")
      .def_property_readonly("model_name", [](const ParsedInferRequest& r) { return to_str(r.request().model_name); })
      .def_property_readonly("model_version",
                             [](const ParsedInferRequest& r) { return to_str(r.request().model_version); })
      .def_property_readonly("id", [](const ParsedInferRequest& r) { return to_str(r.request().id); })
      .def_property_readonly("parameters",
                             [](const ParsedInferRequest& r) { return parameters_dict(r.request().parameters); })
      .def_property_readonly("input_count", [](const ParsedInferRequest& r) { return r.request().inputs.size(); })
      .def_property_readonly("output_count", [](const ParsedInferRequest& r) { return r.request().outputs.size(); })
      .def_property_readonly("raw_count",
                             [](const ParsedInferRequest& r) { return r.request().raw_input_contents.size(); })
      .def_property_readonly("buffer_address", &ParsedInferRequest::buffer_address)
      .def_property_readonly("buffer_size", &ParsedInferRequest::buffer_size)
      .def_property_readonly("buffer", &ParsedInferRequest::owner, "the object whose bytes were parsed")
      .def("raw", &ParsedInferRequest::raw, py::arg("i"),
           "raw_input_contents[i] as a memoryview into the parsed buffer (no copy)")
      .def("raw_address", &ParsedInferRequest::raw_address, py::arg("i"))
      .def("decode", &ParsedInferRequest::decode, py::arg("input"), py::arg("field"), py::arg("datatype"),
           "inputs[input].contents.<field> decoded as datatype elements (decode_contents), as bytes")
      .def("to_dict", &ParsedInferRequest::to_dict, "test only: every field, typed contents as lists");
  p.def(
      "http_request", &ParsedInferRequest::http, py::arg("body"), py::arg("inputs"), py::kw_only(),
      py::arg("outputs") = std::vector<std::string>{}, py::arg("single_input") = false,
      "an HTTP request (its JSON header parsed by the frontend) as a ParsedInferRequest (Note [HTTP requests]): "
      "inputs are (name, datatype, shape, (offset, size) of the binary data in body, or a Tensor)");
  p.def(
      "parse", [](const py::object& buffer) { return std::make_unique<ParsedInferRequest>(buffer); },
      py::arg("buffer"),
      "parses a serialized ModelInferRequest; InvalidArgumentError naming the field and byte where it is not valid");
}

}  // namespace modelserve::python
