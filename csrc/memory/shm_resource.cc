#include "memory/shm_resource.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/status.h"

namespace modelserve {

namespace {
size_t page_rounded(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return bytes == 0 ? page : (bytes + page - 1) / page * page;
}
}  // namespace

SharedMemoryResource::~SharedMemoryResource() {
  for (auto& [base, seg] : segments_) {
    munmap(reinterpret_cast<void*>(base), seg.bytes);
    close(seg.fd);
  }
}

void* SharedMemoryResource::do_allocate(size_t bytes, StreamView) {
  const size_t size = page_rounded(bytes);
  auto fail = [&](const char* what, int err) {
    MS_FAIL(kResourceExhausted, "shared memory for process instances: ", what, " for a segment of ", size,
            " bytes failed: ", std::strerror(err), " (", bytes_mapped(), " bytes in ", segments(),
            " segments mapped now)");
  };
  const int fd = memfd_create("modelserve-shm", MFD_CLOEXEC);
  if (fd < 0) fail("memfd_create", errno);
  // posix_fallocate reserves the pages now: an exhausted machine fails here, not with SIGBUS later.
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(size)); err != 0) {
    close(fd);
    fail("fallocate", err);
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    close(fd);
    fail("mmap", err);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  segments_.emplace(reinterpret_cast<uintptr_t>(base), Segment{next_id_++, fd, size});
  bytes_mapped_ += size;
  return base;
}

void SharedMemoryResource::do_deallocate(void* ptr, size_t, StreamView) noexcept {
  Segment seg{};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = segments_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == segments_.end()) return;  // not ours; the pool never does this
    seg = it->second;
    segments_.erase(it);
    bytes_mapped_ -= seg.bytes;
    generation_ += 1;
  }
  munmap(ptr, seg.bytes);
  close(seg.fd);
}

std::optional<ShmLocation> SharedMemoryResource::locate(const void* ptr) const {
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = segments_.upper_bound(p);
  if (it == segments_.begin()) return std::nullopt;
  --it;
  if (p >= it->first + it->second.bytes) return std::nullopt;
  return ShmLocation{it->second.id, it->second.fd, it->second.bytes, static_cast<size_t>(p - it->first)};
}

bool SharedMemoryResource::live(uint32_t segment) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [base, seg] : segments_) {
    if (seg.id == segment) return true;
  }
  return false;
}

uint64_t SharedMemoryResource::generation() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return generation_;
}

size_t SharedMemoryResource::bytes_mapped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_mapped_;
}

size_t SharedMemoryResource::segments() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return segments_.size();
}

namespace {
// Intentionally leaked, like the other process-wide pools (default_resources.h).
SharedMemoryResource* const g_segments = new SharedMemoryResource();
}  // namespace

const SharedMemoryResource& shm_segments() { return *g_segments; }

std::shared_ptr<PoolResource> shm_pool() {
  static const std::shared_ptr<PoolResource> pool = *new std::shared_ptr<PoolResource>(
      std::make_shared<PoolResource>(std::shared_ptr<MemoryResource>(g_segments, [](MemoryResource*) {}), 0,
                                     "shm_pool"));
  return pool;
}

}  // namespace modelserve
