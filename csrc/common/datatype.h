// The Open Inference Protocol datatypes and their byte sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace modelserve {

// Order is part of the binding (the Python enum mirrors it).
enum class DataType : uint8_t {
  kBool, kUint8, kUint16, kUint32, kUint64, kInt8, kInt16, kInt32, kInt64,
  kFp16, kBf16, kFp32, kFp64, kBytes,
};
inline constexpr int kNumDataTypes = 14;

// Size of one element in bytes; 0 for BYTES, whose elements are variable length.
size_t element_size(DataType dtype);
// The protocol's name ("FP32", "BYTES", ...).
const char* datatype_name(DataType dtype);
// Parses a protocol name; throws Error(kInvalidArgument) naming the valid ones.
DataType parse_datatype(std::string_view name);

// BYTES tensors use the protocol's serialisation: every element is a 4-byte little-endian length
// followed by that many bytes, elements back to back. Batching concatenates such buffers and
// unbatching splits them after a number of elements, which needs no other metadata.
//
// Returns the byte offset just past `count` elements starting at `data`, checking bounds; throws
// Error(kInvalidArgument) when the buffer ends early.
size_t bytes_elements_span(const uint8_t* data, size_t size, size_t count);

}  // namespace modelserve
