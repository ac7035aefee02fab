#include "memory/default_resources.h"

#include <mutex>
#include <vector>

#include "common/status.h"
#include "memory/cuda_resources.h"
#include "memory/host_resource.h"

namespace modelserve {

namespace {
template <typename Make>
std::shared_ptr<PoolResource> leaked(Make make) {
  // Intentionally leaked (see the header): a heap shared_ptr is never destroyed at exit.
  return *new std::shared_ptr<PoolResource>(make());
}
}  // namespace

std::shared_ptr<PoolResource> host_pool() {
  static const std::shared_ptr<PoolResource> pool = leaked(
      [] { return std::make_shared<PoolResource>(std::make_shared<HostResource>(), 0, "host_pool"); });
  return pool;
}

std::shared_ptr<PoolResource> pinned_pool() {
  static const std::shared_ptr<PoolResource> pool = leaked(
      [] { return std::make_shared<PoolResource>(std::make_shared<PinnedResource>(), 0, "pinned_pool"); });
  return pool;
}

std::shared_ptr<PoolResource> device_pool(int device) {
  static std::mutex mutex;
  static auto* pools = new std::vector<std::shared_ptr<PoolResource>>();
  std::lock_guard<std::mutex> lock(mutex);
  MS_EXPECTS(cuda::is_available(), kUnavailable, "device_pool(", device,
             "): no CUDA device is available (modelserve.cuda.is_available() is False)");
  if (pools->empty()) pools->resize(cuda::device_count());
  MS_EXPECTS(device >= 0 && device < static_cast<int>(pools->size()), kInvalidArgument, "CUDA device ",
             device, " does not exist (", pools->size(), " CUDA devices)");
  auto& pool = (*pools)[device];
  if (!pool) {
    pool = std::make_shared<PoolResource>(std::make_shared<DeviceResource>(device), 0,
                                          "device_pool(cuda:" + std::to_string(device) + ")");
  }
  return pool;
}

}  // namespace modelserve
