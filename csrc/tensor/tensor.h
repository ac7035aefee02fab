// Tensor: datatype, shape, device and a view into a reference-counted Buffer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/datatype.h"
#include "common/device.h"
#include "memory/memory_resource.h"

namespace modelserve {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);
int64_t num_elements(const Shape& shape);

// A block of memory and whoever must be told when it is no longer used: a MemoryResource (the
// block goes back to it, a pool included) or an opaque owner (Python bytes, a numpy array; see
// Note [Python-owned buffers] in csrc/python/py_owner.h). Buffers are shared by every tensor
// that views them; the last reference, from C++ or Python, releases the memory.
class Buffer {
 public:
  // `bytes` from `resource`, released to it with `stream` (see MemoryResource's stream contract).
  static std::shared_ptr<Buffer> allocate(std::shared_ptr<MemoryResource> resource, size_t bytes,
                                          StreamView stream = {});
  // Memory someone else owns; `owner` is destroyed when the buffer is.
  static std::shared_ptr<Buffer> wrap(void* data, size_t bytes, Device device, std::shared_ptr<void> owner,
                                      bool read_only = false);

  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const Device& device() const { return device_; }
  // The stream whose queued work is the last use of the buffer; the memory is released on it.
  void set_release_stream(StreamView stream) { stream_ = stream; }
  const MemoryResource* resource() const { return resource_.get(); }
  // Wraps memory that must not be written (Python bytes).
  bool read_only() const { return read_only_; }

 private:
  Buffer() = default;
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_;
  std::shared_ptr<MemoryResource> resource_;
  StreamView stream_;
  std::shared_ptr<void> owner_;
  bool read_only_ = false;
};

class Tensor {
 public:
  Tensor() = default;
  // A view of `byte_size` bytes at `offset` in `buffer`. For fixed-size datatypes byte_size must
  // equal elements x element size; for BYTES it is the serialised length (see datatype.h).
  Tensor(DataType dtype, Shape shape, std::shared_ptr<Buffer> buffer, size_t offset, size_t byte_size);

  // A new tensor in memory from `resource`. For BYTES, `byte_size` gives the serialised length.
  static Tensor empty(DataType dtype, Shape shape, const std::shared_ptr<MemoryResource>& resource,
                      StreamView stream = {}, size_t byte_size = 0);

  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t num_elements() const { return modelserve::num_elements(shape_); }
  size_t byte_size() const { return byte_size_; }
  void* data() const { return static_cast<uint8_t*>(buffer_->data()) + offset_; }
  const Device& device() const { return buffer_->device(); }
  const std::shared_ptr<Buffer>& buffer() const { return buffer_; }
  bool defined() const { return buffer_ != nullptr; }

  // Rows [begin, end) of the first dimension, sharing this tensor's buffer (no copy).
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // The same data under another shape with the same number of elements.
  Tensor reshaped(Shape shape) const;

 private:
  DataType dtype_ = DataType::kUint8;
  Shape shape_;
  std::shared_ptr<Buffer> buffer_;
  size_t offset_ = 0;
  size_t byte_size_ = 0;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};
using TensorList = std::vector<NamedTensor>;

const NamedTensor* find_tensor(const TensorList& list, const std::string& name);

}  // namespace modelserve
