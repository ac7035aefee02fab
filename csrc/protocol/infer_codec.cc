#include "protocol/infer_codec.h"

#include <algorithm>
#include <cstring>

namespace modelserve::protocol {

namespace {

std::string quoted(ByteView v) { return "'" + std::string(v.str()) + "'"; }

// The exact product of `dims` in decimal (dims may be huge: the message must not overflow).
std::string product_str(const Shape& dims) {
  std::vector<uint32_t> digits{1};  // little-endian base 1e9
  for (int64_t d : dims) {
    uint64_t carry = 0;
    const uint64_t m = static_cast<uint64_t>(d);
    for (auto& limb : digits) {
      const unsigned __int128 x = static_cast<unsigned __int128>(limb) * m + carry;
      limb = static_cast<uint32_t>(x % 1000000000u);
      carry = static_cast<uint64_t>(x / 1000000000u);
    }
    while (carry) {
      digits.push_back(static_cast<uint32_t>(carry % 1000000000u));
      carry /= 1000000000u;
    }
  }
  while (digits.size() > 1 && digits.back() == 0) digits.pop_back();
  std::string out = std::to_string(digits.back());
  for (size_t i = digits.size() - 1; i-- > 0;) {
    std::string limb = std::to_string(digits[i]);
    out += std::string(9 - limb.size(), '0') + limb;
  }
  return out;
}

// What a declared tensor is: its datatype and element count.
struct Declared {
  DataType dtype;
  int64_t count;  // at most kMaxElements
};

// server/common.py's _known_datatype and check_shape, messages included.
Declared check_datatype_and_shape(const std::string& name, ByteView datatype, const Shape& dims) {
  int found = -1;
  for (int i = 0; i < kNumDataTypes && found < 0; ++i) {
    if (datatype.str() == datatype_name(static_cast<DataType>(i))) found = i;
  }
  if (found < 0) {
    std::string names;
    for (int i = 0; i < kNumDataTypes; ++i) names += (i ? ", " : "") + std::string(datatype_name(static_cast<DataType>(i)));
    MS_FAIL(kInvalidArgument, "input '", name, "': unknown datatype ", quoted(datatype), "; expected one of ", names);
  }
  const auto dtype = static_cast<DataType>(found);
  for (int64_t d : dims) {
    MS_EXPECTS(d >= 0, kInvalidArgument, "input '", name, "': shape ", shape_str(dims), " has a negative dimension");
  }
  // Saturating: any product past kMaxElements is refused, whatever it is exactly.
  int64_t count = 1;
  bool over = false;
  for (int64_t d : dims) {
    if (d == 0) return {dtype, 0};
    over = over || count > kMaxElements / d;
    if (!over) count *= d;
  }
  MS_EXPECTS(!over && count <= kMaxElements, kInvalidArgument, "input '", name, "': shape ", shape_str(dims), " has ",
             product_str(dims), " elements, more than the ", kMaxElements, " allowed");
  return {dtype, count};
}

// The typed-contents field each datatype reads (spec 1.5).
bool typed_field_of(std::string_view datatype, ContentsField& field) {
  static const std::pair<std::string_view, ContentsField> table[] = {
      {"BOOL", ContentsField::kBool},     {"UINT8", ContentsField::kUint},   {"UINT16", ContentsField::kUint},
      {"UINT32", ContentsField::kUint},   {"UINT64", ContentsField::kUint64}, {"INT8", ContentsField::kInt},
      {"INT16", ContentsField::kInt},     {"INT32", ContentsField::kInt},    {"INT64", ContentsField::kInt64},
      {"FP32", ContentsField::kFp32},     {"FP64", ContentsField::kFp64},    {"BYTES", ContentsField::kBytes},
  };
  for (const auto& [name, f] : table) {
    if (name == datatype) {
      field = f;
      return true;
    }
  }
  return false;
}

// A tensor of `dtype` and `shape` (`count` elements) viewing `raw`, which lies in `bytes`: no copy.
// BYTES data must frame exactly `count` elements; every other size must match the shape.
Tensor view_tensor(const std::string& name, DataType dtype, int64_t count, const Shape& shape, ByteView raw,
                   const std::shared_ptr<Buffer>& bytes) {
  const auto* base = static_cast<const uint8_t*>(bytes->data());
  MS_EXPECTS(raw.size == 0 || (raw.data >= base && raw.data + raw.size <= base + bytes->size()), kInternal,
             "input '", name, "': its raw data lies outside the request's buffer");
  const size_t offset = raw.size == 0 ? 0 : static_cast<size_t>(raw.data - base);
  try {
    if (dtype == DataType::kBytes) {
      const size_t used = bytes_elements_span(raw.data, raw.size, static_cast<size_t>(count));
      MS_EXPECTS(used == raw.size, kInvalidArgument, "BYTES tensor data holds ", raw.size, " bytes but its ", count,
                 " elements use ", used);
    }
    return Tensor(dtype, shape, bytes, offset, raw.size);
  } catch (const Error& e) {
    MS_FAIL(kInvalidArgument, "input '", name, "': ", e.what());
  }
}

Tensor raw_tensor(const std::string& name, const InferInputTensor& input, ByteView raw,
                  const std::shared_ptr<Buffer>& bytes) {
  const auto [dtype, count] = check_datatype_and_shape(name, input.datatype, input.shape);
  return view_tensor(name, dtype, count, input.shape, raw, bytes);
}

Tensor typed_tensor(const std::string& name, const InferInputTensor& input,
                    const std::shared_ptr<MemoryResource>& pool) {
  const std::string_view datatype = input.datatype.str();
  MS_EXPECTS(datatype != "FP16" && datatype != "BF16", kInvalidArgument, "input '", name, "': datatype ", datatype,
             " has no typed contents field; send it in raw_input_contents");
  ContentsField field{};
  const bool has_field = typed_field_of(datatype, field);
  std::string others;
  for (int f = 0; f < kNumContentsFields; ++f) {
    const auto cf = static_cast<ContentsField>(f);
    if (input.contents[cf].count > 0 && !(has_field && cf == field)) {
      others += (others.empty() ? "" : ", ") + std::string(contents_field_name(cf));
    }
  }
  MS_EXPECTS(others.empty(), kInvalidArgument, "input '", name, "': datatype ", datatype, " carries its values ",
             has_field ? "in " + std::string(contents_field_name(field)) : std::string("nowhere (unknown datatype)"),
             ", but contents sets ", others);
  const size_t values = has_field ? input.contents[field].count : 0;
  const auto [dtype, count] = check_datatype_and_shape(name, input.datatype, input.shape);
  MS_EXPECTS(static_cast<size_t>(count) == values, kInvalidArgument, "input '", name, "': shape ",
             shape_str(input.shape), " needs ", count, " values, got ", values);
  const size_t size = dtype == DataType::kBytes ? serialized_bytes_size(input.contents[field])
                                                : static_cast<size_t>(count) * element_size(dtype);
  Tensor t = Tensor::empty(dtype, input.shape, pool, {}, size);
  if (count > 0) {
    const Status s = decode_contents(input, field, dtype, t.data(), size);
    if (!s.is_ok()) throw Error(s.code, s.message);
  }
  return t;
}

// _parameter_value(p) is truthy: the oneof is set to a non-zero / non-empty value.
bool truthy(const InferParameter& p) {
  switch (p.kind) {
    case ParameterKind::kBool: return p.bool_value;
    case ParameterKind::kInt64: return p.int64_value != 0;
    case ParameterKind::kUint64: return p.uint64_value != 0;
    case ParameterKind::kDouble: return p.double_value != 0;
    case ParameterKind::kString: return p.string_value.size != 0;
    case ParameterKind::kNone: return false;
  }
  return false;
}

// --- the wire -----------------------------------------------------------------------------------

size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

uint8_t* put_varint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

// A length-delimited field: tag, length, and `len` bytes to follow.
size_t delimited_size(size_t len) { return 1 + varint_size(len) + len; }
uint8_t* put_delimited_head(uint8_t* p, uint32_t field, size_t len) {
  *p++ = static_cast<uint8_t>(field << 3 | 2);
  return put_varint(p, len);
}
uint8_t* put_string(uint8_t* p, uint32_t field, std::string_view s) {
  p = put_delimited_head(p, field, s.size());
  if (!s.empty()) std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

constexpr std::string_view kFinalResponse = "triton_final_response";

// parameters {triton_final_response: {bool_param: true}}: a map entry (key = 1, value = 2).
size_t final_entry_size() { return delimited_size(kFinalResponse.size()) + delimited_size(2); }

size_t shape_payload_size(const Shape& shape) {
  size_t n = 0;
  for (int64_t d : shape) n += varint_size(static_cast<uint64_t>(d));
  return n;
}

size_t output_tensor_size(const NamedTensor& out) {
  const size_t shape = shape_payload_size(out.tensor.shape());
  return (out.name.empty() ? 0 : delimited_size(out.name.size())) + delimited_size(std::strlen(datatype_name(out.tensor.dtype()))) +
         (shape ? delimited_size(shape) : 0);
}

size_t message_size(const ResponseHead& h, const TensorList& outputs) {
  size_t n = 0;
  if (!h.model_name.empty()) n += delimited_size(h.model_name.size());
  if (!h.model_version.empty()) n += delimited_size(h.model_version.size());
  if (!h.id.empty()) n += delimited_size(h.id.size());
  if (h.final_response) n += delimited_size(final_entry_size());
  for (const auto& out : outputs) n += delimited_size(output_tensor_size(out));
  for (const auto& out : outputs) n += delimited_size(out.tensor.byte_size());
  return n;
}

}  // namespace

TensorList decode_inputs(const InferRequest& request, const std::shared_ptr<Buffer>& bytes,
                         const std::string& where, const std::shared_ptr<MemoryResource>& pool,
                         const std::vector<std::optional<Tensor>>* given) {
  const auto& declared = request.inputs;
  const auto& raw = request.raw_input_contents;
  if (!raw.empty()) {
    for (const auto& in : declared) {
      MS_EXPECTS(!in.has_contents, kInvalidArgument, where, ": input ", quoted(in.name),
                 " sets contents, and the request also carries raw_input_contents; send every input's data in "
                 "raw_input_contents or every input's in contents, not both");
    }
    MS_EXPECTS(raw.size() == declared.size(), kInvalidArgument, where, ": the request has ", raw.size(),
               " raw_input_contents entries for ", declared.size(),
               " inputs; expected one entry per input, in the order of inputs");
  }
  TensorList tensors;
  tensors.reserve(declared.size());
  for (size_t k = 0; k < declared.size(); ++k) {
    const InferInputTensor& in = declared[k];
    std::string name(in.name.str());
    MS_EXPECTS(find_tensor(tensors, name) == nullptr, kInvalidArgument, where, ": input '", name,
               "' appears more than once");
    MS_EXPECTS(in.parameters.find("shared_memory_region") == nullptr, kUnimplemented, where, ": input '", name,
               "' names a shared memory region; modelserve does not implement shared memory, send the data in "
               "raw_input_contents");
    try {
      Tensor t;
      if (given != nullptr && k < given->size() && (*given)[k].has_value()) {
        t = *(*given)[k];
      } else if (!raw.empty()) {
        t = raw_tensor(name, in, raw[k], bytes);
      } else if (in.has_contents) {
        t = typed_tensor(name, in, pool);
      } else {
        MS_FAIL(kInvalidArgument, "input '", name,
                "': no data; the request has neither raw_input_contents nor contents for it");
      }
      tensors.push_back({std::move(name), std::move(t)});
    } catch (const Error& e) {
      if (e.code() != StatusCode::kInvalidArgument) throw;
      MS_FAIL(kInvalidArgument, where, ": ", e.what());
    }
  }
  return tensors;
}

Tensor single_input(const std::shared_ptr<Buffer>& bytes, const std::string& name, DataType dtype,
                    const Shape& dims, bool batched, const std::string& where) {
  const auto variable = std::count(dims.begin(), dims.end(), int64_t(-1));
  MS_EXPECTS(variable <= 1, kInvalidArgument, where, ": a raw binary request needs at most one variable dimension in ",
             shape_str(dims));
  Shape shape = dims;
  const size_t size = bytes->size();
  if (variable == 1) {
    int64_t count = 1;  // BYTES: one element, whatever its length
    if (dtype != DataType::kBytes) {
      uint64_t row = element_size(dtype);  // the dims come from the model's config: no overflow
      for (int64_t d : dims) row *= d == -1 ? 1 : static_cast<uint64_t>(d);
      MS_EXPECTS(row > 0 && size % row == 0, kInvalidArgument, where, ": input '", name, "': ", size,
                 " bytes are not a whole number of ", shape_str(dims), " ", datatype_name(dtype), " rows");
      count = static_cast<int64_t>(size / row);
    }
    *std::find(shape.begin(), shape.end(), int64_t(-1)) = count;
  }
  if (batched) shape.insert(shape.begin(), 1);
  try {
    const ByteView all{static_cast<const uint8_t*>(bytes->data()), size};
    return view_tensor(name, dtype, num_elements(shape), shape, all, bytes);
  } catch (const Error& e) {
    MS_FAIL(kInvalidArgument, where, ": ", e.what());
  }
}

std::vector<std::string> requested_output_names(const InferRequest& request, const std::string& where) {
  std::vector<std::string> names;
  names.reserve(request.outputs.size());
  for (const auto& out : request.outputs) {
    std::string name(out.name.str());
    MS_EXPECTS(std::find(names.begin(), names.end(), name) == names.end(), kInvalidArgument, where, ": output '",
               name, "' is requested more than once");
    MS_EXPECTS(out.parameters.find("shared_memory_region") == nullptr, kUnimplemented, where, ": output '", name,
               "' names a shared memory region; modelserve does not implement shared memory");
    const InferParameter* classification = out.parameters.find("classification");
    MS_EXPECTS(classification == nullptr || !truthy(*classification), kUnimplemented, where, ": output '", name,
               "' asks for classification, which modelserve does not implement");
    names.push_back(std::move(name));
  }
  return names;
}

size_t infer_response_size(const ResponseHead& head, const TensorList& outputs) {
  const size_t n = message_size(head, outputs);
  return head.stream ? delimited_size(n) : n;
}

void write_infer_response(const ResponseHead& head, const TensorList& outputs, uint8_t* p) {
  if (head.stream) p = put_delimited_head(p, 2, message_size(head, outputs));
  if (!head.model_name.empty()) p = put_string(p, 1, head.model_name);
  if (!head.model_version.empty()) p = put_string(p, 2, head.model_version);
  if (!head.id.empty()) p = put_string(p, 3, head.id);
  if (head.final_response) {
    p = put_delimited_head(p, 4, final_entry_size());
    p = put_string(p, 1, kFinalResponse);
    p = put_delimited_head(p, 2, 2);
    *p++ = 0x08;  // bool_param = 1, varint
    *p++ = 0x01;
  }
  for (const auto& out : outputs) {
    p = put_delimited_head(p, 5, output_tensor_size(out));
    if (!out.name.empty()) p = put_string(p, 1, out.name);
    p = put_string(p, 2, datatype_name(out.tensor.dtype()));
    const size_t shape = shape_payload_size(out.tensor.shape());
    if (shape) {
      p = put_delimited_head(p, 3, shape);
      for (int64_t d : out.tensor.shape()) p = put_varint(p, static_cast<uint64_t>(d));
    }
  }
  for (const auto& out : outputs) {
    MS_EXPECTS(out.tensor.device().host_accessible(), kInternal, "output '", out.name, "' is in ",
               out.tensor.device().str(), " memory and cannot be encoded");
    const size_t n = out.tensor.byte_size();
    p = put_delimited_head(p, 6, n);
    if (n) std::memcpy(p, out.tensor.data(), n);
    p += n;
  }
}

}  // namespace modelserve::protocol
