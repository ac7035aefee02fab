// CUDA memory: pinned (page-locked) host memory and device memory. Both need a CUDA build and a
// GPU; constructing them elsewhere throws Error(kUnavailable).
#pragma once

#include "memory/memory_resource.h"

namespace modelserve {

// cudaHostAlloc memory: host-accessible, and the source or target of asynchronous copies.
class PinnedResource final : public MemoryResource {
 public:
  PinnedResource();

 private:
  void* do_allocate(size_t bytes, StreamView stream) override;
  void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept override;
};

// cudaMalloc memory on one device. The stream argument is accepted for the interface; cudaMalloc
// and cudaFree are not stream-ordered, and cudaFree waits for the device, so reuse is safe.
class DeviceResource final : public MemoryResource {
 public:
  explicit DeviceResource(int device);

 private:
  void* do_allocate(size_t bytes, StreamView stream) override;
  void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept override;
};

}  // namespace modelserve
