#include "memory/pool_resource.h"

#include <algorithm>

#include "common/status.h"

namespace modelserve {

namespace {
constexpr size_t kMinClassBytes = 256;
constexpr int kMinClassLog2 = 8;
constexpr int kClassesPerDoubling = 4;

int floor_log2(size_t n) { return 63 - __builtin_clzll(static_cast<unsigned long long>(n)); }
}  // namespace

// See Note [Pool size classes].
size_t PoolResource::class_index(size_t bytes) {
  if (bytes <= kMinClassBytes) return 0;
  int p = floor_log2(bytes - 1);  // 2^p < bytes <= 2^(p+1)
  size_t base = size_t{1} << p;
  size_t step = base / kClassesPerDoubling;
  size_t k = (bytes - base + step - 1) / step;  // 1..4
  return static_cast<size_t>(p - kMinClassLog2) * kClassesPerDoubling + k;
}

size_t PoolResource::size_class_of(size_t bytes) { return class_bytes(class_index(bytes)); }

size_t PoolResource::class_bytes(size_t index) {
  if (index == 0) return kMinClassBytes;
  int p = static_cast<int>((index - 1) / kClassesPerDoubling) + kMinClassLog2;
  size_t k = (index - 1) % kClassesPerDoubling + 1;
  size_t base = size_t{1} << p;
  return base + k * (base / kClassesPerDoubling);
}

PoolResource::PoolResource(std::shared_ptr<MemoryResource> upstream, size_t limit, std::string name)
    : MemoryResource(name.empty() ? "pool(" + upstream->name() + ")" : std::move(name),
                     upstream->device(), upstream->alignment()),
      upstream_(std::move(upstream)),
      free_lists_(class_index(size_t{1} << 48) + 1) {
  stats_.limit = limit;
}

PoolResource::~PoolResource() {
  // Blocks still in use are the owners' problem (tensors keep the pool alive through their
  // shared_ptr, so this runs only when none are left). Pending blocks wait for their streams.
  for (auto& p : pending_) {
    try {
      cuda::event_synchronize(p.event);
    } catch (const Error&) {
      // The device is gone or broken; the memory goes back regardless.
    }
    cuda::event_destroy(p.event);
    upstream_->deallocate(p.ptr, class_bytes(p.class_index));
  }
  for (void* e : spare_events_) cuda::event_destroy(e);
  trim_locked();
}

PoolStats PoolResource::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  PoolStats s = stats_;
  s.bytes_idle = stats_.bytes_held - stats_.bytes_in_use - bytes_pending_;
  return s;
}

void PoolResource::set_limit(size_t limit) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.limit = limit;
}

size_t PoolResource::trim() {
  std::lock_guard<std::mutex> lock(mutex_);
  reap_pending_locked();
  return trim_locked();
}

size_t PoolResource::trim_locked() {
  size_t released = 0;
  for (size_t index = 0; index < free_lists_.size(); ++index) {
    auto& list = free_lists_[index];
    if (list.empty()) continue;
    size_t block = class_bytes(index);
    for (void* p : list) upstream_->deallocate(p, block);
    released += block * list.size();
    stats_.upstream_deallocations += list.size();
    list.clear();
    list.shrink_to_fit();
  }
  stats_.bytes_held -= released;
  return released;
}

void PoolResource::reap_pending_locked() {
  auto done = std::partition(pending_.begin(), pending_.end(),
                             [](const PendingBlock& p) { return !cuda::event_query(p.event); });
  for (auto it = done; it != pending_.end(); ++it) {
    free_lists_[it->class_index].push_back(it->ptr);
    bytes_pending_ -= class_bytes(it->class_index);
    spare_events_.push_back(it->event);
  }
  pending_.erase(done, pending_.end());
}

void* PoolResource::do_allocate(size_t bytes, StreamView stream) {
  MS_EXPECTS(bytes <= (size_t{1} << 48), kResourceExhausted, name(), ": cannot allocate ", bytes,
             " bytes (more than the address space allows)");
  const size_t index = class_index(bytes);
  const size_t block = class_bytes(index);
  std::lock_guard<std::mutex> lock(mutex_);
  auto& list = free_lists_[index];
  if (list.empty() && !pending_.empty()) reap_pending_locked();
  if (!list.empty()) {
    void* p = list.back();
    list.pop_back();
    ++stats_.hits;
    ++stats_.allocations;
    stats_.bytes_in_use += block;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    return p;
  }

  // A miss. Within the limit, idle blocks of other classes are given back first.
  if (stats_.limit && stats_.bytes_held + block > stats_.limit) {
    reap_pending_locked();
    trim_locked();
    MS_EXPECTS(stats_.bytes_held + block <= stats_.limit, kResourceExhausted, name(),
               ": out of memory: requested ", bytes, " bytes (size class ", block, " bytes), in use ",
               stats_.bytes_in_use, " bytes, limit ", stats_.limit, " bytes");
  }
  void* p = nullptr;
  try {
    p = upstream_->allocate(block, stream);
  } catch (const Error& e) {
    if (e.code() != StatusCode::kResourceExhausted) throw;
    // Upstream is full: give back what is idle and try once more.
    reap_pending_locked();
    if (trim_locked() == 0) throw;
    p = upstream_->allocate(block, stream);
  }
  ++stats_.misses;
  ++stats_.allocations;
  ++stats_.upstream_allocations;
  stats_.bytes_held += block;
  stats_.bytes_in_use += block;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  return p;
}

void PoolResource::do_deallocate(void* ptr, size_t bytes, StreamView stream) noexcept {
  const size_t index = class_index(bytes);
  const size_t block = class_bytes(index);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.deallocations;
  stats_.bytes_in_use -= block;
  if (stream.is_null()) {
    free_lists_[index].push_back(ptr);
    return;
  }
  // See Note [Pool streams].
  void* event = nullptr;
  try {
    if (!spare_events_.empty()) {
      event = spare_events_.back();
      spare_events_.pop_back();
    } else {
      event = cuda::event_create(stream.device);
    }
    cuda::event_record(event, stream.handle);
  } catch (const Error&) {
    // Cannot order the free after the stream's work: wait for the stream instead.
    if (event) spare_events_.push_back(event);
    try {
      cuda::stream_synchronize(stream.handle);
    } catch (const Error&) {
    }
    free_lists_[index].push_back(ptr);
    return;
  }
  pending_.push_back({ptr, index, event});
  bytes_pending_ += block;
}

}  // namespace modelserve
