#include "common/datatype.h"

#include <cstring>

#include "common/status.h"

namespace modelserve {

namespace {
struct DataTypeInfo {
  const char* name;
  size_t size;
};
constexpr DataTypeInfo kInfo[kNumDataTypes] = {
    {"BOOL", 1},  {"UINT8", 1}, {"UINT16", 2}, {"UINT32", 4}, {"UINT64", 8},
    {"INT8", 1},  {"INT16", 2}, {"INT32", 4},  {"INT64", 8},  {"FP16", 2},
    {"BF16", 2},  {"FP32", 4},  {"FP64", 8},   {"BYTES", 0},
};
}  // namespace

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
  }
  return "UNKNOWN";
}

size_t element_size(DataType dtype) { return kInfo[static_cast<int>(dtype)].size; }

const char* datatype_name(DataType dtype) { return kInfo[static_cast<int>(dtype)].name; }

DataType parse_datatype(std::string_view name) {
  for (int i = 0; i < kNumDataTypes; ++i) {
    if (name == kInfo[i].name) return static_cast<DataType>(i);
  }
  std::string valid;
  for (int i = 0; i < kNumDataTypes; ++i) {
    valid += (i ? ", " : "");
    valid += kInfo[i].name;
  }
  MS_FAIL(kInvalidArgument, "unknown datatype '", name, "'; expected one of ", valid);
}

size_t bytes_elements_span(const uint8_t* data, size_t size, size_t count) {
  size_t offset = 0;
  for (size_t i = 0; i < count; ++i) {
    MS_EXPECTS(size - offset >= 4, kInvalidArgument, "BYTES tensor data ends inside the length of element ", i,
               " (", size, " bytes for ", count, " elements)");
    uint32_t len;
    std::memcpy(&len, data + offset, 4);  // little-endian hosts only (x86-64, aarch64)
    offset += 4;
    MS_EXPECTS(size - offset >= len, kInvalidArgument, "BYTES tensor element ", i, " claims ", len,
               " bytes but only ", size - offset, " remain");
    offset += len;
  }
  return offset;
}

}  // namespace modelserve
