// PoolResource: a caching pool of size-classed blocks over any upstream MemoryResource.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "memory/memory_resource.h"

namespace modelserve {

struct PoolStats {
  size_t bytes_in_use = 0;       // size-class bytes handed out and not yet returned
  size_t peak_bytes_in_use = 0;
  size_t bytes_held = 0;         // bytes taken from upstream: in use + idle + pending
  size_t bytes_idle = 0;         // held and free for reuse now
  size_t limit = 0;              // cap on bytes_held; 0 = none
  uint64_t allocations = 0;
  uint64_t deallocations = 0;
  uint64_t hits = 0;             // served from a cached block
  uint64_t misses = 0;           // went upstream
  uint64_t upstream_allocations = 0;
  uint64_t upstream_deallocations = 0;
  double hit_rate() const { return allocations ? double(hits) / double(allocations) : 0.0; }
};

// Note [Pool size classes]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// A request is rounded up to a size class and served from that class's free list, or from
// upstream on a miss. Classes are 256 bytes and then four per power of two (320, 384, 448, 512,
// 640, ...), so at most 25% of a block is slack while the number of classes stays small (one
// list per class, an O(1) lookup by bit arithmetic). Blocks are never split or coalesced: batch
// buffers repeat the same few sizes, so exact-class reuse is what makes the steady state free of
// upstream calls, and no fragmentation can build up. Memory goes back upstream only through
// trim(), or when a miss would pass the limit (the pool then trims itself once and retries).
//
// Note [Pool streams]
// ~~~~~~~~~~~~~~~~~~~
// A block deallocated with a non-null stream may still be read or written by work queued on that
// stream. The pool records an event on the stream and keeps the block pending; it becomes free
// once the event has completed (checked without blocking on allocate, trim and stats). Pending
// blocks are never reused early, not even on the same stream, because pinned blocks are also
// written by the host (the gather), which stream order does not cover.
//
// Thread safety: every member below mutex_ is guarded by it. One mutex is enough: a hit is a
// class computation, a vector pop and counter updates, far shorter than any contention window
// seen in the executor (one allocation per input per batch).
class PoolResource final : public MemoryResource {
 public:
  // `limit` caps the bytes held from upstream; 0 means no cap.
  explicit PoolResource(std::shared_ptr<MemoryResource> upstream, size_t limit = 0,
                        std::string name = "");
  ~PoolResource() override;

  const std::shared_ptr<MemoryResource>& upstream() const { return upstream_; }
  PoolStats stats() const;
  void set_limit(size_t limit);
  // Returns every idle block to upstream; returns the number of bytes released.
  size_t trim();

  static size_t size_class_of(size_t bytes);   // the block size a request of `bytes` gets
  static size_t class_index(size_t bytes);
  static size_t class_bytes(size_t index);

 private:
  struct PendingBlock {
    void* ptr;
    size_t class_index;
    void* event;  // recorded on the stream the block was freed on
  };

  void* do_allocate(size_t bytes, StreamView stream) override;
  void do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept override;
  void reap_pending_locked();
  size_t trim_locked();

  const std::shared_ptr<MemoryResource> upstream_;
  mutable std::mutex mutex_;
  std::vector<std::vector<void*>> free_lists_;  // guarded by mutex_; index = class_index
  std::vector<PendingBlock> pending_;           // guarded by mutex_
  std::vector<void*> spare_events_;             // guarded by mutex_
  PoolStats stats_;                             // guarded by mutex_ (bytes_idle derived on read)
  size_t bytes_pending_ = 0;                    // guarded by mutex_
};

}  // namespace modelserve
