#pragma once

#include "memory/memory_resource.h"

namespace modelserve {

// Pageable host memory from the C library, aligned to kHostAlignment.
class HostResource final : public MemoryResource {
 public:
  HostResource() : MemoryResource("host", Device::cpu(), kHostAlignment) {}

 private:
  void* do_allocate(size_t bytes, StreamView stream) override;
  void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept override;
};

}  // namespace modelserve
