#include "memory/host_resource.h"

#include <cstdlib>

#include "common/status.h"

namespace modelserve {

void* HostResource::do_allocate(size_t bytes, StreamView) {
  // aligned_alloc needs a multiple of the alignment; 0 becomes one aligned unit (a distinct pointer).
  MS_EXPECTS(bytes <= (size_t{1} << 48), kResourceExhausted, "host: cannot allocate ", bytes,
             " bytes (more than the address space allows)");
  size_t rounded = bytes == 0 ? kHostAlignment : (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  void* p = std::aligned_alloc(kHostAlignment, rounded);
  MS_EXPECTS(p != nullptr, kResourceExhausted, "host: out of memory allocating ", bytes, " bytes");
  return p;
}

void HostResource::do_deallocate(void* ptr, size_t, StreamView) noexcept { std::free(ptr); }

}  // namespace modelserve
