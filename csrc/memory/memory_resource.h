// MemoryResource: the one interface every allocator in the core implements.
//
// Contract, for every implementation (tests/test_memory.py runs one suite against all of them):
// - allocate(bytes, stream) returns memory of at least `bytes` bytes, aligned to at least
//   alignment() (64 or more), distinct from every other live allocation. allocate(0) returns a
//   valid, distinct pointer that must be deallocated like any other.
// - It throws Error(kResourceExhausted) when the memory cannot be had, with the request, what is
//   in use and the limit in the message. It never returns nullptr.
// - deallocate(p, bytes, stream) takes the pointer and the same `bytes` that allocate was given.
// - Thread-safe: any thread may allocate or deallocate concurrently.
// - Streams: memory deallocated with a non-null stream may still be in use by work enqueued on
//   that stream before the call. A resource must not hand it out again until that work is done.
//   A null stream means the caller has finished with the memory: it may be reused at once.
//
// The public methods are non-virtual and call the private do_* hooks (as in RAPIDS RMM), so
// adaptors and pools wrap any resource and common checks live in one place.
#pragma once

#include <cstddef>
#include <string>

#include "common/device.h"
#include "cuda/cuda_runtime.h"

namespace modelserve {

class MemoryResource {
 public:
  virtual ~MemoryResource() = default;
  MemoryResource(const MemoryResource&) = delete;
  MemoryResource& operator=(const MemoryResource&) = delete;

  void* allocate(size_t bytes, StreamView stream = {}) { return do_allocate(bytes, stream); }
  void deallocate(void* ptr, size_t bytes, StreamView stream = {}) noexcept {
    do_deallocate(ptr, bytes, stream);
  }

  const Device& device() const { return device_; }
  size_t alignment() const { return alignment_; }
  const std::string& name() const { return name_; }

 protected:
  MemoryResource(std::string name, Device device, size_t alignment)
      : name_(std::move(name)), device_(device), alignment_(alignment) {}

 private:
  virtual void* do_allocate(size_t bytes, StreamView stream) = 0;
  virtual void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept = 0;

  std::string name_;
  Device device_;
  size_t alignment_;
};

inline constexpr size_t kHostAlignment = 64;    // a cache line; enough for AVX-512 loads
inline constexpr size_t kDeviceAlignment = 256; // what cudaMalloc guarantees

}  // namespace modelserve
