// The native parse of a serialized ModelInferRequest (protos/inference.proto): every field of the
// message, as views into the caller's buffer. No Python in it.
//
// The request's bytes are the one copy: strings, bytes_contents entries and raw_input_contents are
// ByteViews into them, typed contents are located (chunks of packed or unpacked elements) and
// decoded only when a destination buffer exists (decode_contents). The buffer must outlive the
// InferRequest and every view taken from it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "common/datatype.h"
#include "common/status.h"

namespace modelserve::protocol {

// A non-owning run of bytes inside the request's buffer.
struct ByteView {
  const uint8_t* data = nullptr;
  size_t size = 0;

  std::string_view str() const { return {reinterpret_cast<const char*>(data), size}; }
};

// InferParameter's oneof: the kind last set wins, the other members are unspecified.
enum class ParameterKind : uint8_t { kNone, kBool, kInt64, kString, kDouble, kUint64 };

struct InferParameter {
  ParameterKind kind = ParameterKind::kNone;
  bool bool_value = false;
  int64_t int64_value = 0;
  uint64_t uint64_value = 0;
  double double_value = 0;
  ByteView string_value;
};

// A map<string, InferParameter>: unique keys, sorted by key (bytewise), so find() is a binary
// search. Parsing applies protobuf's map rules (see Note [Map entries] in infer_request.cc).
struct Parameters {
  struct Entry {
    ByteView key;
    InferParameter value;
  };
  std::vector<Entry> entries;

  size_t size() const { return entries.size(); }
  bool empty() const { return entries.empty(); }
  // The parameter named `key`, or nullptr.
  const InferParameter* find(std::string_view key) const;
};

// The repeated fields of InferTensorContents, in field-number order (bool_contents = 1).
enum class ContentsField : uint8_t { kBool, kInt, kInt64, kUint, kUint64, kFp32, kFp64, kBytes };
inline constexpr int kNumContentsFields = 8;
const char* contents_field_name(ContentsField field);  // "fp32_contents", ...

// Where the elements of one numeric contents field lie. protobuf lets a repeated scalar arrive
// packed (one length-delimited payload) or unpacked (one tagged value per element), both in one
// message, interleaved: a chunk is either a packed payload or a run of consecutive unpacked
// (tag, value) pairs of this field. Chunks are in wire order, which is element order.
struct ContentsChunk {
  ByteView bytes;
  size_t count = 0;  // elements in the chunk
  bool packed = false;
};

struct ContentsElements {
  std::vector<ContentsChunk> chunks;  // numeric fields
  std::vector<ByteView> elements;     // bytes_contents: one view per element
  size_t count = 0;                   // elements in all
};

struct InferTensorContents {
  std::array<ContentsElements, kNumContentsFields> fields;

  const ContentsElements& operator[](ContentsField f) const { return fields[static_cast<int>(f)]; }
  ContentsElements& operator[](ContentsField f) { return fields[static_cast<int>(f)]; }
  // The fields that hold at least one element.
  int populated_count() const;
};

struct InferInputTensor {
  ByteView name;
  ByteView datatype;
  std::vector<int64_t> shape;
  Parameters parameters;
  bool has_contents = false;  // the contents message was present (possibly empty)
  InferTensorContents contents;
};

struct InferRequestedOutputTensor {
  ByteView name;
  Parameters parameters;
};

struct InferRequest {
  ByteView model_name;
  ByteView model_version;
  ByteView id;
  Parameters parameters;
  std::vector<InferInputTensor> inputs;
  std::vector<InferRequestedOutputTensor> outputs;
  std::vector<ByteView> raw_input_contents;  // views into the buffer, never copies
};

// Parses `size` bytes at `data` into `out` (reset first) exactly as protobuf (upb, what Python's
// protobuf runs) parses a ModelInferRequest; see Note [Wire format]. Returns kInvalidArgument
// naming the field path and byte offset where protobuf would refuse the message, and never
// reads outside [data, data + size). On failure `out` holds a partial parse; do not use it.
Status parse_infer_request(const uint8_t* data, size_t size, InferRequest& out);

// --- Reading typed contents ---------------------------------------------------------------------

namespace detail {
// A varint the parse already validated: at most 10 bytes, inside the chunk.
inline uint64_t read_valid_varint(const uint8_t*& p) {
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    uint8_t b = *p++;
    if (shift < 64) v |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) break;
  }
  return v;
}
template <typename T>
T read_fixed(const uint8_t*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the wire is little-endian, as is every supported host
  p += sizeof(T);
  return v;
}
template <ContentsField F>
auto read_element(const uint8_t*& p) {
  if constexpr (F == ContentsField::kBool) return read_valid_varint(p) != 0;
  else if constexpr (F == ContentsField::kInt) return static_cast<int32_t>(static_cast<uint32_t>(read_valid_varint(p)));
  else if constexpr (F == ContentsField::kInt64) return static_cast<int64_t>(read_valid_varint(p));
  else if constexpr (F == ContentsField::kUint) return static_cast<uint32_t>(read_valid_varint(p));
  else if constexpr (F == ContentsField::kUint64) return read_valid_varint(p);
  else if constexpr (F == ContentsField::kFp32) return read_fixed<float>(p);
  else return read_fixed<double>(p);
}
}  // namespace detail

// Calls fn(value) for every element of numeric field F, in order, with the field's C++ type
// (bool, int32_t, int64_t, uint32_t, uint64_t, float, double).
template <ContentsField F, typename Fn>
void for_each_element(const ContentsElements& elements, Fn&& fn) {
  static_assert(F != ContentsField::kBytes, "bytes_contents: use ContentsElements::elements");
  for (const ContentsChunk& chunk : elements.chunks) {
    const uint8_t* p = chunk.bytes.data;
    for (size_t i = 0; i < chunk.count; ++i) {
      if (!chunk.packed) detail::read_valid_varint(p);  // the element's tag
      fn(detail::read_element<F>(p));
    }
  }
}

// The bytes a BYTES tensor of `elements` takes in the protocol's serialisation (a 4-byte length
// before each element).
size_t serialized_bytes_size(const ContentsElements& elements);

// Decodes every element of `field` of `input`'s contents into `out` as `dtype` elements
// (`out_size` bytes: element_size(dtype) * count, or serialized_bytes_size() for BYTES, which is
// written in the protocol's serialisation). Applies the value rules (README, "Tensor values";
// server/common.py, Note [Value rules]): integer fields fill integer datatypes within range and
// the FP datatypes; fp32/fp64 fill the FP datatypes where a finite value stays finite; bool fills
// BOOL, bytes BYTES; anything else is kInvalidArgument naming the input, the element index, its
// value and what was expected.
Status decode_contents(const InferInputTensor& input, ContentsField field, DataType dtype, void* out,
                       size_t out_size);

}  // namespace modelserve::protocol
