// The process-wide pools the executor draws batch buffers from. Created on first use and never
// destroyed: tensors handed to Python may outlive every C++ static, so the pools must too.
#pragma once

#include <memory>

#include "memory/pool_resource.h"

namespace modelserve {

std::shared_ptr<PoolResource> host_pool();
std::shared_ptr<PoolResource> pinned_pool();          // throws Error(kUnavailable) without a GPU
std::shared_ptr<PoolResource> device_pool(int device);  // one per device; same

}  // namespace modelserve
