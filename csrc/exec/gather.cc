#include "exec/gather.h"

#include <cstring>

#include "common/status.h"
#include "cuda/cuda_runtime.h"

namespace modelserve {

namespace {
void copy_bytes(void* dst, const Device& dst_device, const void* src, const Device& src_device, size_t n,
                StreamView stream) {
  if (n == 0) return;
  if (dst_device.host_accessible() && src_device.host_accessible()) {
    std::memcpy(dst, src, n);
  } else if (stream.is_null()) {
    cuda::memcpy(dst, src, n);
  } else {
    cuda::memcpy_async(dst, src, n, stream.handle);
  }
}
}  // namespace

Tensor gather(const std::vector<const Tensor*>& parts, const std::shared_ptr<MemoryResource>& resource,
              StreamView stream) {
  MS_EXPECTS(!parts.empty(), kInvalidArgument, "gather needs at least one tensor");
  const Tensor& first = *parts.front();
  if (parts.size() == 1) return first;
  MS_EXPECTS(!first.shape().empty(), kInvalidArgument, "gather needs tensors with a batch dimension");
  Shape shape = first.shape();
  shape[0] = 0;
  size_t bytes = 0;
  for (const Tensor* t : parts) {
    MS_EXPECTS(t->dtype() == first.dtype() && t->shape().size() == shape.size() &&
                   std::equal(shape.begin() + 1, shape.end(), t->shape().begin() + 1),
               kInvalidArgument, "gather: tensor of ", datatype_name(t->dtype()), " ", shape_str(t->shape()),
               " does not match ", datatype_name(first.dtype()), " ", shape_str(first.shape()));
    shape[0] += t->shape()[0];
    bytes += t->byte_size();
  }
  Tensor out = Tensor::empty(first.dtype(), std::move(shape), resource, stream, bytes);
  auto* dst = static_cast<uint8_t*>(out.data());
  for (const Tensor* t : parts) {
    copy_bytes(dst, out.device(), t->data(), t->device(), t->byte_size(), stream);
    dst += t->byte_size();
  }
  return out;
}

Tensor copy_to(const Tensor& src, const std::shared_ptr<MemoryResource>& resource, StreamView stream) {
  Tensor out = Tensor::empty(src.dtype(), src.shape(), resource, stream, src.byte_size());
  copy_bytes(out.data(), out.device(), src.data(), src.device(), src.byte_size(), stream);
  return out;
}

}  // namespace modelserve
