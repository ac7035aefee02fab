#include "tensor/tensor.h"

#include <sstream>

#include "common/status.h"

namespace modelserve {

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t num_elements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::shared_ptr<Buffer> Buffer::allocate(std::shared_ptr<MemoryResource> resource, size_t bytes,
                                         StreamView stream) {
  std::shared_ptr<Buffer> b(new Buffer());
  b->data_ = resource->allocate(bytes, stream);
  b->size_ = bytes;
  b->device_ = resource->device();
  b->stream_ = stream;
  b->resource_ = std::move(resource);
  return b;
}

std::shared_ptr<Buffer> Buffer::wrap(void* data, size_t bytes, Device device, std::shared_ptr<void> owner,
                                     bool read_only) {
  std::shared_ptr<Buffer> b(new Buffer());
  b->read_only_ = read_only;
  b->data_ = data;
  b->size_ = bytes;
  b->device_ = device;
  b->owner_ = std::move(owner);
  return b;
}

Buffer::~Buffer() {
  if (resource_) resource_->deallocate(data_, size_, stream_);
}

Tensor::Tensor(DataType dtype, Shape shape, std::shared_ptr<Buffer> buffer, size_t offset, size_t byte_size)
    : dtype_(dtype), shape_(std::move(shape)), buffer_(std::move(buffer)), offset_(offset), byte_size_(byte_size) {
  for (int64_t d : shape_) {
    MS_EXPECTS(d >= 0, kInvalidArgument, "tensor shape ", shape_str(shape_), " has a negative dimension");
  }
  MS_EXPECTS(buffer_ != nullptr, kInvalidArgument, "tensor has no buffer");
  MS_EXPECTS(offset_ + byte_size_ <= buffer_->size(), kInvalidArgument, "tensor view [", offset_, ", ",
             offset_ + byte_size_, ") lies outside its ", buffer_->size(), "-byte buffer");
  if (dtype_ != DataType::kBytes) {
    size_t expected = static_cast<size_t>(num_elements()) * element_size(dtype_);
    MS_EXPECTS(expected == byte_size_, kInvalidArgument, "tensor of datatype ", datatype_name(dtype_),
               " and shape ", shape_str(shape_), " needs ", expected, " bytes, got ", byte_size_);
  }
}

Tensor Tensor::empty(DataType dtype, Shape shape, const std::shared_ptr<MemoryResource>& resource,
                     StreamView stream, size_t byte_size) {
  if (dtype != DataType::kBytes) byte_size = static_cast<size_t>(modelserve::num_elements(shape)) * element_size(dtype);
  auto buffer = Buffer::allocate(resource, byte_size, stream);
  return Tensor(dtype, std::move(shape), std::move(buffer), 0, byte_size);
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  MS_EXPECTS(!shape_.empty(), kInvalidArgument, "cannot slice rows of a scalar tensor");
  MS_EXPECTS(0 <= begin && begin <= end && end <= shape_[0], kInvalidArgument, "rows [", begin, ", ", end,
             ") out of range for shape ", shape_str(shape_));
  Shape shape = shape_;
  shape[0] = end - begin;
  const int64_t row_elements = shape_[0] ? num_elements() / shape_[0] : 0;
  size_t first, size;
  if (dtype_ == DataType::kBytes) {
    MS_EXPECTS(device().host_accessible(), kInvalidArgument, "BYTES tensors must be in host memory");
    const auto* base = static_cast<const uint8_t*>(data());
    first = bytes_elements_span(base, byte_size_, static_cast<size_t>(begin * row_elements));
    size = bytes_elements_span(base + first, byte_size_ - first, static_cast<size_t>((end - begin) * row_elements));
  } else {
    const size_t row_bytes = static_cast<size_t>(row_elements) * element_size(dtype_);
    first = static_cast<size_t>(begin) * row_bytes;
    size = static_cast<size_t>(end - begin) * row_bytes;
  }
  return Tensor(dtype_, std::move(shape), buffer_, offset_ + first, size);
}

Tensor Tensor::reshaped(Shape shape) const {
  MS_EXPECTS(modelserve::num_elements(shape) == num_elements(), kInvalidArgument, "cannot reshape ",
             shape_str(shape_), " to ", shape_str(shape));
  return Tensor(dtype_, std::move(shape), buffer_, offset_, byte_size_);
}

const NamedTensor* find_tensor(const TensorList& list, const std::string& name) {
  for (const auto& t : list) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace modelserve
