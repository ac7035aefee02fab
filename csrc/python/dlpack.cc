#include "python/dlpack.h"

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace modelserve::python {

namespace py = pybind11;

namespace {

// The DLPack ABI (dlpack.h, v1.0): these layouts are fixed by the standard.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr uint64_t kDLPackFlagReadOnly = 1;
enum : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };

DLDataType dl_dtype(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return {kDLBool, 8, 1};
    case DataType::kUint8: return {kDLUInt, 8, 1};
    case DataType::kUint16: return {kDLUInt, 16, 1};
    case DataType::kUint32: return {kDLUInt, 32, 1};
    case DataType::kUint64: return {kDLUInt, 64, 1};
    case DataType::kInt8: return {kDLInt, 8, 1};
    case DataType::kInt16: return {kDLInt, 16, 1};
    case DataType::kInt32: return {kDLInt, 32, 1};
    case DataType::kInt64: return {kDLInt, 64, 1};
    case DataType::kFp16: return {kDLFloat, 16, 1};
    case DataType::kBf16: return {kDLBfloat, 16, 1};
    case DataType::kFp32: return {kDLFloat, 32, 1};
    case DataType::kFp64: return {kDLFloat, 64, 1};
    case DataType::kBytes: break;
  }
  MS_FAIL(kInvalidArgument, "BYTES tensors have no DLPack form (elements have variable length)");
}

// Owns what the DLTensor points at: the buffer reference and the shape array.
struct Context {
  std::shared_ptr<Buffer> buffer;
  std::vector<int64_t> shape;
};

template <typename Managed>
Managed* make(const Tensor& t) {
  auto* ctx = new Context{t.buffer(), t.shape()};
  auto* m = new Managed{};
  m->manager_ctx = ctx;
  m->deleter = [](Managed* self) {
    delete static_cast<Context*>(self->manager_ctx);
    delete self;
  };
  DLTensor& d = m->dl_tensor;
  d.data = t.data();  // DLPack allows any data pointer for CPU and CUDA; byte_offset stays 0
  d.device = {static_cast<int32_t>(t.device().kind), t.device().id};
  d.ndim = static_cast<int32_t>(t.shape().size());
  d.dtype = dl_dtype(t.dtype());
  d.shape = ctx->shape.data();
  d.strides = nullptr;  // compact, row-major
  d.byte_offset = 0;
  return m;
}

template <typename Managed>
void capsule_destructor(PyObject* capsule, const char* name) {
  // A consumer renames the capsule to "used_..." when it takes ownership; otherwise we free.
  if (PyCapsule_IsValid(capsule, name)) {
    auto* m = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
    if (m && m->deleter) m->deleter(m);
  } else {
    PyErr_Clear();
  }
}

}  // namespace

py::capsule to_dlpack(const Tensor& t, bool versioned) {
  if (versioned) {
    auto* m = make<DLManagedTensorVersioned>(t);
    m->version = {1, 0};
    m->flags = t.buffer()->read_only() ? kDLPackFlagReadOnly : 0;
    PyObject* c = PyCapsule_New(m, "dltensor_versioned", [](PyObject* cap) {
      capsule_destructor<DLManagedTensorVersioned>(cap, "dltensor_versioned");
    });
    if (!c) {
      m->deleter(m);
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::capsule>(c);
  }
  auto* m = make<DLManagedTensor>(t);
  PyObject* c = PyCapsule_New(m, "dltensor", [](PyObject* cap) { capsule_destructor<DLManagedTensor>(cap, "dltensor"); });
  if (!c) {
    m->deleter(m);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(c);
}

std::pair<int, int> dlpack_device(const Tensor& t) {
  return {static_cast<int>(t.device().kind), t.device().id};
}

}  // namespace modelserve::python
