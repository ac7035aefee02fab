#include "memory/cuda_resources.h"

#include "common/status.h"

namespace modelserve {

namespace {
void require_gpu(const char* what) {
  MS_EXPECTS(cuda::is_available(), kUnavailable, what,
             ": no CUDA device is available (modelserve.cuda.is_available() is False)");
}
}  // namespace

PinnedResource::PinnedResource() : MemoryResource("pinned", Device::cuda_host(), kDeviceAlignment) {
  require_gpu("PinnedResource");
}

void* PinnedResource::do_allocate(size_t bytes, StreamView) {
  return cuda::host_malloc_pinned(bytes == 0 ? 1 : bytes);
}

void PinnedResource::do_deallocate(void* ptr, size_t, StreamView) noexcept { cuda::host_free_pinned(ptr); }

DeviceResource::DeviceResource(int device)
    : MemoryResource("cuda:" + std::to_string(device), Device::cuda(device), kDeviceAlignment) {
  require_gpu("DeviceResource");
  MS_EXPECTS(device >= 0 && device < cuda::device_count(), kInvalidArgument, "DeviceResource: device ",
             device, " does not exist (", cuda::device_count(), " CUDA devices)");
}

void* DeviceResource::do_allocate(size_t bytes, StreamView) {
  return cuda::device_malloc(bytes == 0 ? 1 : bytes, device().id);
}

void DeviceResource::do_deallocate(void* ptr, size_t, StreamView) noexcept {
  cuda::device_free(ptr, device().id);
}

}  // namespace modelserve
