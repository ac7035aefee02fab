// SharedMemoryResource: host memory that another process can map, for process-isolated instances.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "memory/memory_resource.h"
#include "memory/pool_resource.h"

namespace modelserve {

// Where a pointer lies in shared memory: the segment (its id, its descriptor for a process that
// has not mapped it yet, its size) and the offset of the pointer in it.
struct ShmLocation {
  uint32_t segment = 0;
  int fd = -1;
  size_t segment_bytes = 0;
  size_t offset = 0;
};

// Note [Shared memory segments]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Every upstream allocation is one memfd segment of its own (memfd_create, sized with fallocate so
// that a full machine fails the allocation with ENOSPC/ENOMEM instead of a SIGBUS at first touch,
// mapped MAP_SHARED). memfd has no /dev/shm size limit and no name another process can open: a
// worker gets a segment only as a descriptor passed over its control socket (SCM_RIGHTS), the
// first time a batch of it uses that segment. Segments are the blocks of the pool above
// (shm_pool()): a batch buffer of a size seen before is a cached segment, so the steady state
// makes no system calls and the workers keep their mappings. A segment goes away (munmap, close)
// only when the pool trims it; its id is never reused, and workers drop their mapping of an id
// that locate() no longer knows (ProcessBackend checks `generation()` before every batch).
//
// Thread safety: segments_ and generation_ are guarded by mutex_.
class SharedMemoryResource final : public MemoryResource {
 public:
  SharedMemoryResource() : MemoryResource("shm", Device::cpu(), kHostAlignment) {}
  ~SharedMemoryResource() override;

  // The segment holding `ptr` (any byte inside it), or nothing when it is not shared memory.
  std::optional<ShmLocation> locate(const void* ptr) const;
  bool live(uint32_t segment) const;
  // Bumped whenever a segment is unmapped.
  uint64_t generation() const;
  size_t bytes_mapped() const;
  size_t segments() const;

 private:
  struct Segment {
    uint32_t id;
    int fd;
    size_t bytes;
  };
  void* do_allocate(size_t bytes, StreamView stream) override;
  void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept override;

  mutable std::mutex mutex_;
  std::map<uintptr_t, Segment> segments_;  // guarded by mutex_; by base address
  uint32_t next_id_ = 1;                   // guarded by mutex_
  uint64_t generation_ = 0;                // guarded by mutex_
  size_t bytes_mapped_ = 0;                // guarded by mutex_
};

// The process-wide pool of shared-memory blocks (never destroyed, like host_pool()), and its
// upstream, which locates pointers.
std::shared_ptr<PoolResource> shm_pool();
const SharedMemoryResource& shm_segments();

}  // namespace modelserve
