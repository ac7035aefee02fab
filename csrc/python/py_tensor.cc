#include "python/py_tensor.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "memory/default_resources.h"

namespace modelserve::python {

namespace {
std::mutex parked_mutex;
std::vector<PyObject*>* parked = new std::vector<PyObject*>();  // guarded by parked_mutex; leaked at exit

py::object& bfloat16_dtype() {
  // Resolved once with the GIL held; None when ml_dtypes is not installed.
  static py::object* cached = [] {
    auto* obj = new py::object(py::none());
    try {
      *obj = py::module_::import("ml_dtypes").attr("bfloat16");
      *obj = py::dtype::from_args(*obj);
    } catch (py::error_already_set&) {
      PyErr_Clear();
    }
    return obj;
  }();
  return *cached;
}
}  // namespace

std::shared_ptr<void> python_owner(py::object obj) {
  PyObject* raw = obj.release().ptr();
  return std::shared_ptr<void>(raw, [](void* p) {
    auto* o = static_cast<PyObject*>(p);
    if (Py_IsInitialized() && PyGILState_Check()) {
      Py_DECREF(o);
    } else {
      std::lock_guard<std::mutex> lock(parked_mutex);
      parked->push_back(o);
    }
  });
}

void release_python_owners() {
  std::vector<PyObject*> objs;
  {
    std::lock_guard<std::mutex> lock(parked_mutex);
    if (parked->empty()) return;
    objs.swap(*parked);
  }
  for (PyObject* o : objs) Py_DECREF(o);
}

size_t parked_python_owners() {
  std::lock_guard<std::mutex> lock(parked_mutex);
  return parked->size();
}

py::dtype numpy_dtype(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return py::dtype::of<bool>();
    case DataType::kUint8: return py::dtype::of<uint8_t>();
    case DataType::kUint16: return py::dtype::of<uint16_t>();
    case DataType::kUint32: return py::dtype::of<uint32_t>();
    case DataType::kUint64: return py::dtype::of<uint64_t>();
    case DataType::kInt8: return py::dtype::of<int8_t>();
    case DataType::kInt16: return py::dtype::of<int16_t>();
    case DataType::kInt32: return py::dtype::of<int32_t>();
    case DataType::kInt64: return py::dtype::of<int64_t>();
    case DataType::kFp16: return py::dtype("float16");
    case DataType::kBf16: {
      py::object& bf16 = bfloat16_dtype();
      return bf16.is_none() ? py::dtype::of<uint16_t>() : py::reinterpret_borrow<py::dtype>(bf16);
    }
    case DataType::kFp32: return py::dtype::of<float>();
    case DataType::kFp64: return py::dtype::of<double>();
    case DataType::kBytes: return py::dtype("O");
  }
  MS_FAIL(kInternal, "unhandled datatype");
}

DataType datatype_of(const py::dtype& dtype) {
  const char kind = dtype.kind();
  const auto size = dtype.itemsize();
  switch (kind) {
    case 'b': return DataType::kBool;
    case 'u':
      if (size == 1) return DataType::kUint8;
      if (size == 2) return DataType::kUint16;
      if (size == 4) return DataType::kUint32;
      if (size == 8) return DataType::kUint64;
      break;
    case 'i':
      if (size == 1) return DataType::kInt8;
      if (size == 2) return DataType::kInt16;
      if (size == 4) return DataType::kInt32;
      if (size == 8) return DataType::kInt64;
      break;
    case 'f':
      if (size == 2) return DataType::kFp16;
      if (size == 4) return DataType::kFp32;
      if (size == 8) return DataType::kFp64;
      break;
    case 'O':
    case 'S':
    case 'U': return DataType::kBytes;
    default:
      if (size == 2 && py::str(dtype).cast<std::string>() == "bfloat16") return DataType::kBf16;
  }
  MS_FAIL(kInvalidArgument, "numpy dtype ", py::str(dtype).cast<std::string>(),
          " has no Open Inference Protocol datatype");
}

namespace {
// Serialises an object/bytes/str array into the protocol's BYTES layout (see datatype.h).
Tensor serialize_bytes(const py::array& array) {
  Shape shape(array.shape(), array.shape() + array.ndim());
  py::list flat = array.attr("ravel")().attr("tolist")();
  std::vector<std::string_view> items;
  std::vector<py::object> keep;  // encoded str items
  items.reserve(flat.size());
  size_t total = 0;
  for (size_t i = 0; i < flat.size(); ++i) {
    py::handle item = flat[i];
    char* data = nullptr;
    Py_ssize_t len = 0;
    if (PyBytes_Check(item.ptr())) {
      PyBytes_AsStringAndSize(item.ptr(), &data, &len);
    } else if (PyUnicode_Check(item.ptr())) {
      py::object encoded = py::reinterpret_steal<py::object>(PyUnicode_AsUTF8String(item.ptr()));
      if (!encoded) throw py::error_already_set();
      PyBytes_AsStringAndSize(encoded.ptr(), &data, &len);
      keep.push_back(std::move(encoded));
    } else if (PyByteArray_Check(item.ptr())) {
      data = PyByteArray_AsString(item.ptr());
      len = PyByteArray_Size(item.ptr());
    } else {
      MS_FAIL(kInvalidArgument, "BYTES tensor element ", i, " is a ", Py_TYPE(item.ptr())->tp_name,
              "; expected bytes or str");
    }
    MS_EXPECTS(static_cast<uint64_t>(len) <= UINT32_MAX, kInvalidArgument, "BYTES tensor element ", i,
               " is ", len, " bytes; the protocol limit is 4 GiB");
    items.emplace_back(data, static_cast<size_t>(len));
    total += 4 + static_cast<size_t>(len);
  }
  Tensor t = Tensor::empty(DataType::kBytes, shape, host_pool(), {}, total);
  auto* out = static_cast<uint8_t*>(t.data());
  for (const auto& s : items) {
    uint32_t len = static_cast<uint32_t>(s.size());
    std::memcpy(out, &len, 4);
    if (len) std::memcpy(out + 4, s.data(), len);
    out += 4 + len;
  }
  return t;
}
}  // namespace

Tensor tensor_from_numpy(const py::array& array, std::optional<DataType> datatype) {
  release_python_owners();
  DataType natural = datatype_of(array.dtype());
  Shape shape(array.shape(), array.shape() + array.ndim());
  if (natural == DataType::kBytes) {
    MS_EXPECTS(!datatype || *datatype == DataType::kBytes, kInvalidArgument, "a numpy array of dtype ",
               py::str(array.dtype()).cast<std::string>(), " cannot become a ", datatype_name(*datatype), " tensor");
    return serialize_bytes(array);
  }
  DataType dtype = datatype.value_or(natural);
  MS_EXPECTS(dtype != DataType::kBytes, kInvalidArgument, "a numpy array of dtype ",
             py::str(array.dtype()).cast<std::string>(), " cannot become a BYTES tensor; pass bytes objects");
  MS_EXPECTS(element_size(dtype) == static_cast<size_t>(array.itemsize()), kInvalidArgument,
             "a numpy array of dtype ", py::str(array.dtype()).cast<std::string>(), " (", array.itemsize(),
             " bytes per element) cannot become a ", datatype_name(dtype), " tensor (", element_size(dtype),
             " bytes per element)");
  py::array contiguous = array;
  if (!(array.flags() & py::array::c_style)) {
    contiguous = py::array::ensure(array, py::array::c_style | py::array::forcecast);
  }
  const size_t bytes = static_cast<size_t>(contiguous.nbytes());
  const bool read_only = !contiguous.writeable();
  void* data = const_cast<void*>(contiguous.data());
  auto buffer = Buffer::wrap(data, bytes, Device::cpu(), python_owner(contiguous), read_only);
  return Tensor(dtype, std::move(shape), std::move(buffer), 0, bytes);
}

Tensor tensor_from_buffer(const py::buffer& obj, DataType dtype, Shape shape) {
  release_python_owners();
  py::buffer_info info = obj.request();
  MS_EXPECTS(info.ndim <= 1 || PyBuffer_IsContiguous(info.view(), 'C'), kInvalidArgument,
             "tensor data must be a contiguous buffer");
  const size_t bytes = static_cast<size_t>(info.size * info.itemsize);
  if (dtype == DataType::kBytes) {
    size_t used = bytes_elements_span(static_cast<const uint8_t*>(info.ptr), bytes,
                                      static_cast<size_t>(num_elements(shape)));
    MS_EXPECTS(used == bytes, kInvalidArgument, "BYTES tensor data holds ", bytes, " bytes but its ",
               num_elements(shape), " elements use ", used);
  }
  auto buffer = Buffer::wrap(info.ptr, bytes, Device::cpu(), python_owner(py::reinterpret_borrow<py::object>(obj)),
                             info.readonly);
  return Tensor(dtype, std::move(shape), std::move(buffer), 0, bytes);
}

Tensor as_tensor(const py::handle& obj) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  if (py::isinstance<py::array>(obj)) return tensor_from_numpy(py::reinterpret_borrow<py::array>(obj));
  return tensor_from_numpy(py::module_::import("numpy").attr("asarray")(obj));
}

py::array tensor_to_numpy(const Tensor& t) {
  MS_EXPECTS(t.device().host_accessible(), kInvalidArgument, "tensor is in ", t.device().str(),
             " memory; numpy needs host memory (use DLPack: torch.from_dlpack / cupy.from_dlpack)");
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  if (t.dtype() == DataType::kBytes) {
    py::array out(py::dtype("O"), shape);
    auto** items = static_cast<PyObject**>(out.mutable_data());
    const auto* data = static_cast<const uint8_t*>(t.data());
    size_t offset = 0;
    const int64_t n = t.num_elements();
    for (int64_t i = 0; i < n; ++i) {
      size_t end = offset + bytes_elements_span(data + offset, t.byte_size() - offset, 1);
      PyObject* b = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(data + offset + 4),
                                              static_cast<Py_ssize_t>(end - offset - 4));
      if (!b) throw py::error_already_set();
      Py_XDECREF(items[i]);
      items[i] = b;
      offset = end;
    }
    return out;
  }
  auto* keep = new std::shared_ptr<Buffer>(t.buffer());
  py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<Buffer>*>(p); });
  py::array out(numpy_dtype(t.dtype()), shape, {}, t.data(), base);
  if (t.buffer()->read_only()) {
    py::detail::array_proxy(out.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  }
  return out;
}

}  // namespace modelserve::python
