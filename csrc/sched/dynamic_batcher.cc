#include "sched/dynamic_batcher.h"

#include <algorithm>
#include <cstdlib>

namespace modelserve {

namespace {
int64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}
}  // namespace

void BatcherConfig::validate() const {
  MS_EXPECTS(max_batch_size >= 0, kInvalidArgument, model, ": max_batch_size must be >= 0, got ", max_batch_size);
  for (int64_t p : preferred_batch_sizes) {
    MS_EXPECTS(p >= 1 && (max_batch_size == 0 || p <= max_batch_size), kInvalidArgument, model,
               ": dynamic_batching.preferred_batch_sizes: ", p, " is not in [1, max_batch_size=", max_batch_size, "]");
  }
  MS_EXPECTS(max_queue_delay_us >= 0, kInvalidArgument, model,
             ": dynamic_batching.max_queue_delay_us must be >= 0, got ", max_queue_delay_us);
  MS_EXPECTS(latency_target_us >= 0, kInvalidArgument, model,
             ": dynamic_batching.latency_target_us must be > 0 (or unset), got ", latency_target_us);
  MS_EXPECTS(latency_target_us == 0 || max_batch_size > 0, kInvalidArgument, model,
             ": dynamic_batching.latency_target_us needs a model that batches (max_batch_size > 0)");
  MS_EXPECTS(default_timeout_us >= 0, kInvalidArgument, model,
             ": dynamic_batching.default_timeout_us must be >= 0, got ", default_timeout_us);
  MS_EXPECTS(priority_levels >= 1, kInvalidArgument, model,
             ": dynamic_batching.priority_levels must be >= 1, got ", priority_levels);
  MS_EXPECTS(default_priority_level <= priority_levels, kInvalidArgument, model,
             ": dynamic_batching.default_priority_level must be in [0, priority_levels=", priority_levels,
             "], got ", default_priority_level);
}

namespace {
// MODELSERVE_LOOKAHEAD=1 turns look-ahead batches on (Note [Look-ahead batches]: off by default).
bool lookahead_enabled() {
  const char* v = std::getenv("MODELSERVE_LOOKAHEAD");
  return v != nullptr && std::string(v) == "1";
}
}  // namespace

DynamicBatcher::DynamicBatcher(BatcherConfig config)
    : model_(config.model), lookahead_enabled_(lookahead_enabled()), config_(std::move(config)) {
  config_.validate();
  queues_.resize(config_.priority_levels);
}

DynamicBatcher::~DynamicBatcher() { stop(false); }

void DynamicBatcher::start(BatchSink* sink) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (thread_.joinable()) return;
  sink_ = sink;
  accepting_ = true;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void DynamicBatcher::stop(bool drain, std::chrono::nanoseconds drain_timeout, const std::string& reason) {
  std::vector<RequestPtr> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    accepting_ = false;
    stopping_ = true;
    drain_ = drain;
    const auto now = Clock::now();
    if (drain_timeout > std::chrono::nanoseconds::zero() && drain_timeout < Clock::time_point::max() - now) {
      drain_timeout_ = drain_timeout;
      drain_deadline_ = now + drain_timeout;
    }
    if (!drain || !thread_.joinable()) drop_all_locked(dropped);
  }
  cv_.notify_all();
  const std::string why = reason.empty() ? "" : " (" + reason + ")";
  for (auto& r : dropped) r->fail(StatusCode::kUnavailable, model_ + ": shut down before the request ran" + why);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void DynamicBatcher::drop_all_locked(std::vector<RequestPtr>& dropped) {
  for (auto& q : queues_) {
    for (auto& r : q) dropped.push_back(std::move(r));
    q.clear();
  }
  queued_ = 0;
  queued_bytes_ = 0;
  queued_rows_ = 0;
  lookahead_.reset();
}

void DynamicBatcher::enqueue(RequestPtr& request) {
  Request& r = *request;
  Batch batch;
  bool dispatch_now = false;
  bool caller_may_run = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    MS_EXPECTS(accepting_, kUnavailable, config_.model, ": not accepting requests (shutting down)");
    MS_EXPECTS(r.priority <= config_.priority_levels, kInvalidArgument, config_.model, ": priority ", r.priority,
               " is out of range; expected 0 (default) or 1..", config_.priority_levels, " (1 = most urgent)");
    MS_EXPECTS(config_.max_queue_size == 0 || queued_ < config_.max_queue_size, kResourceExhausted,
               config_.model, ": queue full: ", queued_, " requests queued (max_queue_size ",
               config_.max_queue_size, ")");
    r.byte_size = 0;
    for (const auto& in : r.inputs) r.byte_size += in.tensor.byte_size();
    MS_EXPECTS(config_.max_queue_bytes == 0 || queued_bytes_ + r.byte_size <= config_.max_queue_bytes,
               kResourceExhausted, config_.model, ": queue full: ", queued_bytes_, " bytes queued, request of ",
               r.byte_size, " bytes would pass max_queue_bytes ", config_.max_queue_bytes);
    if (config_.max_batch_size > 0) {
      MS_EXPECTS(!r.inputs.empty(), kInvalidArgument, config_.model, ": request has no inputs");
      const Tensor& first = r.inputs.front().tensor;
      MS_EXPECTS(!first.shape().empty(), kInvalidArgument, config_.model, ": input '", r.inputs.front().name,
                 "' has no batch dimension (the model batches: max_batch_size ", config_.max_batch_size, ")");
      r.batch_size = first.shape()[0];
      for (const auto& in : r.inputs) {
        MS_EXPECTS(!in.tensor.shape().empty() && in.tensor.shape()[0] == r.batch_size, kInvalidArgument,
                   config_.model, ": input '", in.name, "' has shape ", shape_str(in.tensor.shape()),
                   " but input '", r.inputs.front().name, "' has batch size ", r.batch_size,
                   "; every input needs the same first dimension");
      }
      MS_EXPECTS(r.batch_size >= 1 && r.batch_size <= config_.max_batch_size, kInvalidArgument, config_.model,
                 ": batch size ", r.batch_size, " is not in [1, max_batch_size=", config_.max_batch_size, "]");
    } else {
      r.batch_size = 1;
    }
    const uint32_t level = r.priority ? r.priority : config_.effective_default_level();
    r.level = level - 1;
    r.enqueue_time = Clock::now();
    latency_.on_arrival(r.batch_size, r.enqueue_time);
    const int64_t timeout_us = r.timeout_us > 0 ? r.timeout_us : config_.default_timeout_us;
    // A timeout past the clock's range is no timeout (2^62 us would overflow the nanosecond clock).
    const int64_t room_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::time_point::max() - r.enqueue_time).count();
    r.deadline = timeout_us > 0 && timeout_us < room_us ? r.enqueue_time + std::chrono::microseconds(timeout_us)
                                                        : Clock::time_point::max();
    next_deadline_ = std::min(next_deadline_, r.deadline);
    queued_ += 1;
    queued_bytes_ += r.byte_size;
    queued_rows_ += static_cast<size_t>(r.batch_size);
    queues_[r.level].push_back(std::move(request));
    // See Note [Inline dispatch]: a batch due now goes from this thread; otherwise the batcher
    // thread is woken only if it has a new timer to set (a delay to wait out on a free slot, or
    // an earlier queue deadline). With every instance busy, the next free slot forms the batch.
    Clock::time_point due;
    if (sink_ != nullptr && take_due_locked(r.enqueue_time, batch, due)) {
      dispatch_now = true;
      // Note [Caller runs]: this request alone, due at once, and its submitter waits for it.
      caller_may_run = r.caller_runs && batch.requests.size() == 1 && batch.requests.front().get() == &r;
    } else if (std::min(r.deadline, due) < sleeping_until_) {
      cv_.notify_one();
    }
    if (!dispatch_now && wants_lookahead_locked()) {  // every instance busy, a full batch queued
      lookahead_wanted_ = true;
      cv_.notify_one();
    }
  }
  if (dispatch_now) hand_off(batch, caller_may_run);
}

bool DynamicBatcher::cancel(uint64_t request_id) {
  RequestPtr found;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& q : queues_) {
      auto it = std::find_if(q.begin(), q.end(), [&](const RequestPtr& r) { return r->id == request_id; });
      if (it != q.end()) {
        found = std::move(*it);
        q.erase(it);
        queued_ -= 1;
        queued_bytes_ -= found->byte_size;
        queued_rows_ -= static_cast<size_t>(found->batch_size);
        break;
      }
    }
  }
  if (!found) return false;
  cv_.notify_one();  // a batch waiting on the delay may now be formed differently
  found->fail(StatusCode::kCancelled, model_ + ": request " + std::to_string(request_id) +
                                          " was cancelled while queued");
  return true;
}

// Note [Inline dispatch]
// ~~~~~~~~~~~~~~~~~~~~~~~
// A batch that is due is formed by whichever thread makes it due, under the one lock and rule:
// the instance thread that frees a slot, or the submitting thread whose request arrives at a free
// slot. Waking the batcher thread to do it would cost a thread hand-off per batch. A popped batch
// takes its slot only when dispatched, after the lock is released; `dispatching_` counts those in
// between, so the threads together never pop more batches than there are free slots, and a batch
// that finds no instance (a resize to zero raced it) goes back to the front of the queue. The
// batcher thread keeps the timers (queue delays, deadlines) and shutdown; others wake it only
// when they bring a timer earlier than the one it sleeps on (`sleeping_until_`), so a request
// arriving while every instance is busy costs no wake-up at all.
void DynamicBatcher::notify(int64_t rows, int64_t compute_ns) {
  Batch batch;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (rows > 0) latency_.on_batch(rows, compute_ns);
    Clock::time_point wake;
    if (sink_ == nullptr || !take_due_locked(Clock::now(), batch, wake)) {
      if (wake < sleeping_until_) cv_.notify_one();  // a delay to wait out; under the lock
      return;
    }
  }
  hand_off(batch);
}

void DynamicBatcher::hand_off(Batch& batch, bool caller_may_run) {
  BatchSink::Claim claim;
  const bool claimed = caller_may_run && sink_->claim(batch, claim);
  const bool taken = claimed || sink_->dispatch(batch);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dispatching_ -= 1;  // the batch holds its slot now: claimed, dispatched, or back in the queue
    if (!taken) {
      // No instance left (a resize to zero raced the dispatch): back to the front, in order.
      for (auto it = batch.requests.rbegin(); it != batch.requests.rend(); ++it) {
        queued_ += 1;
        queued_bytes_ += (*it)->byte_size;
        queued_rows_ += static_cast<size_t>((*it)->batch_size);
        queues_[std::min<size_t>((*it)->level, queues_.size() - 1)].push_front(std::move(*it));
      }
    }
    cv_.notify_one();  // more may be due, or the batcher's timer may need resetting
  }
  // The caller keeps the model alive (it is in submit), and the executor's stop waits for the
  // claimed instance to be idle again, so running outside the batcher's lock is safe.
  if (claimed) sink_->run_claimed(claim);
}

bool DynamicBatcher::take_due_locked(Clock::time_point now, Batch& batch, Clock::time_point& wake) {
  wake = Clock::time_point::max();
  if (queued_ == 0 || sink_->free_slots() <= dispatching_) return false;
  Formed f = form_locked(now);
  if (f.count == 0) {
    wake = f.wait_until;
    return false;
  }
  batch = pop_locked(f.count, now);
  dispatching_ += 1;
  return true;
}

void DynamicBatcher::set_config(BatcherConfig config) {
  config.validate();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (config.priority_levels != queues_.size()) {
      // Requests keep their order; those on levels that no longer exist join the least urgent one.
      std::vector<std::deque<RequestPtr>> queues(config.priority_levels);
      for (size_t i = 0; i < queues_.size(); ++i) {
        size_t to = std::min<size_t>(i, config.priority_levels - 1);
        for (auto& r : queues_[i]) {
          r->level = static_cast<uint32_t>(to);
          queues[to].push_back(std::move(r));
        }
      }
      queues_ = std::move(queues);
    }
    config_ = std::move(config);
    config_.model = model_;
  }
  cv_.notify_one();
}

BatcherConfig DynamicBatcher::config() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return config_;
}

size_t DynamicBatcher::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queued_;
}

size_t DynamicBatcher::queued_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queued_bytes_;
}

LatencyTarget::Plan DynamicBatcher::plan() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (config_.latency_target_us > 0) return plan_;
  LatencyTarget::Plan p;
  p.rows = config_.max_batch_size;
  p.cap = config_.max_batch_size;
  p.delay_us = config_.max_queue_delay_us;
  return p;
}

bool DynamicBatcher::compatible(const Request& a, const Request& b) const {
  if (a.inputs.size() != b.inputs.size()) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i];
    const NamedTensor* y = x.name == b.inputs[i].name ? &b.inputs[i] : find_tensor(b.inputs, x.name);
    if (!y || x.tensor.dtype() != y->tensor.dtype()) return false;
    const Shape& sx = x.tensor.shape();
    const Shape& sy = y->tensor.shape();
    if (sx.size() != sy.size() || !std::equal(sx.begin() + 1, sx.end(), sy.begin() + 1)) return false;
  }
  return true;
}

// See Note [Batch formation].
DynamicBatcher::Formed DynamicBatcher::form_locked(Clock::time_point now) const {
  Formed f;
  const bool planned = config_.latency_target_us > 0 && config_.max_batch_size > 0;
  if (planned) {
    plan_ = latency_.plan(config_.latency_target_us, config_.max_batch_size,
                          static_cast<int64_t>(sink_ ? sink_->instances() : 1), now);
  }
  const int64_t limit = planned ? plan_.cap : config_.max_batch_size;
  const Request* first = nullptr;
  int64_t rows = 0;
  size_t count = 0, preferred_count = 0;
  Clock::time_point oldest = Clock::time_point::max();
  bool stopped_early = false;
  for (const auto& q : queues_) {
    for (const auto& r : q) {
      if (!first) {
        first = r.get();
        if (config_.max_batch_size == 0) {
          f.count = 1;
          return f;
        }
      } else if (!compatible(*first, *r) || rows + r->batch_size > limit) {
        stopped_early = true;
        break;
      }
      rows += r->batch_size;
      count += 1;
      oldest = std::min(oldest, r->enqueue_time);
      const auto& pref = config_.preferred_batch_sizes;
      if (std::find(pref.begin(), pref.end(), rows) != pref.end()) preferred_count = count;
      if (rows >= limit) {
        stopped_early = true;
        break;
      }
    }
    if (stopped_early) break;
  }
  if (count == 0) return f;
  if (stopped_early || stopping_) {
    f.count = count;
  } else if (preferred_count > 0) {
    f.count = preferred_count;
  } else if (planned && rows >= plan_.rows) {
    f.count = count;  // the batch the plan waits for
  } else {
    const int64_t delay_us = planned ? plan_.delay_us : config_.max_queue_delay_us;
    const auto due = oldest + std::chrono::microseconds(delay_us);
    if (now >= due) {
      f.count = count;
    } else {
      f.wait_until = due;
    }
  }
  return f;
}

Batch DynamicBatcher::pop_locked(size_t count, Clock::time_point now) {
  Batch batch;
  batch.dispatch_time = now;
  batch.requests.reserve(count);
  for (auto& q : queues_) {
    while (count > 0 && !q.empty()) {
      RequestPtr r = std::move(q.front());
      q.pop_front();
      queued_ -= 1;
      queued_bytes_ -= r->byte_size;
      queued_rows_ -= static_cast<size_t>(r->batch_size);
      batch.batch_size += r->batch_size;
      batch.requests.push_back(std::move(r));
      --count;
    }
    if (count == 0) break;
  }
  match_lookahead_locked(batch);
  if (wants_lookahead_locked()) {  // the next one, while this batch runs
    lookahead_wanted_ = true;
    cv_.notify_one();
  }
  return batch;
}

bool DynamicBatcher::wants_lookahead_locked() const {
  return lookahead_enabled_ && config_.max_batch_size > 1 && !stopping_ && !lookahead_ && !lookahead_busy_ &&
         !lookahead_wanted_ &&
         queued_rows_ >= static_cast<size_t>(config_.max_batch_size);
}

void DynamicBatcher::match_lookahead_locked(Batch& batch) {
  if (!lookahead_) return;
  const auto& ids = lookahead_->ids;
  bool same = ids.size() == batch.requests.size();
  for (size_t i = 0; same && i < ids.size(); ++i) same = ids[i] == batch.requests[i]->id;
  if (same) {
    batch.gathered = std::move(lookahead_->inputs);
    lookahead_stats_.used += 1;
  } else {  // the queue changed since (a cancel, a timeout, a more urgent request): gather anew
    lookahead_stats_.dropped += 1;
  }
  lookahead_.reset();
}

bool DynamicBatcher::queue_starts_with_locked(const std::vector<uint64_t>& ids) const {
  size_t i = 0;
  for (const auto& q : queues_) {
    for (const auto& r : q) {
      if (i == ids.size()) return true;
      if (r->id != ids[i++]) return false;
    }
  }
  return i == ids.size();
}

void DynamicBatcher::prepare_lookahead(std::unique_lock<std::mutex>& lock, Clock::time_point now) {
  const Formed f = form_locked(now);
  if (f.count < 2) return;  // a lone request is passed through untouched: nothing to gather
  std::vector<uint64_t> ids;
  std::vector<TensorList> inputs;
  ids.reserve(f.count);
  inputs.reserve(f.count);
  for (const auto& q : queues_) {  // the order pop_locked takes them in
    for (const auto& r : q) {
      if (ids.size() == f.count) break;
      ids.push_back(r->id);
      inputs.push_back(r->inputs);  // handles: the buffers outlive a cancel meanwhile
    }
  }
  lookahead_busy_ = true;
  lock.unlock();
  TensorList gathered;
  try {
    gathered = sink_->gather_ahead(inputs);
  } catch (const std::exception&) {
    gathered.clear();  // the instance gathers it, and reports what is wrong
  }
  inputs.clear();
  lock.lock();
  lookahead_busy_ = false;
  if (gathered.empty() || stopping_) return;
  lookahead_stats_.prepared += 1;
  if (!queue_starts_with_locked(ids)) {  // taken or changed while it was gathered
    lookahead_stats_.dropped += 1;
    return;
  }
  lookahead_ = std::make_unique<LookAhead>(LookAhead{std::move(ids), std::move(gathered)});
}

DynamicBatcher::LookAheadStats DynamicBatcher::lookahead_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lookahead_stats_;
}

void DynamicBatcher::expire_locked(Clock::time_point now, std::vector<RequestPtr>& expired) {
  if (now < next_deadline_) return;
  next_deadline_ = Clock::time_point::max();
  for (auto& q : queues_) {
    for (auto it = q.begin(); it != q.end();) {
      if ((*it)->deadline <= now) {
        queued_ -= 1;
        queued_bytes_ -= (*it)->byte_size;
        queued_rows_ -= static_cast<size_t>((*it)->batch_size);
        expired.push_back(std::move(*it));
        it = q.erase(it);
      } else {
        next_deadline_ = std::min(next_deadline_, (*it)->deadline);
        ++it;
      }
    }
  }
}

void DynamicBatcher::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<RequestPtr> expired;
  while (true) {
    const auto now = Clock::now();
    expire_locked(now, expired);
    if (!expired.empty()) {
      lock.unlock();
      for (auto& r : expired) {
        const int64_t waited_us = ns_between(r->enqueue_time, now) / 1000;
        r->fail(StatusCode::kDeadlineExceeded, model_ + ": request " + std::to_string(r->id) +
                                                   " timed out in the queue after " + std::to_string(waited_us) +
                                                   " us (queue timeout " +
                                                   std::to_string(ns_between(r->enqueue_time, r->deadline) / 1000) +
                                                   " us)");
      }
      expired.clear();
      lock.lock();
      continue;
    }
    if (stopping_ && queued_ == 0 && dispatching_ == 0) break;  // inline dispatches land first
    if (stopping_ && now >= drain_deadline_ && queued_ > 0) {
      // The drain ran out of time (Note [Drain]): what is still queued fails, and the loop ends
      // once the batches already popped have landed.
      std::vector<RequestPtr> dropped;
      drop_all_locked(dropped);
      const auto timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(drain_timeout_).count();
      lock.unlock();
      for (auto& r : dropped) {
        r->fail(StatusCode::kUnavailable, model_ + ": shut down before the request ran (the drain timeout of " +
                                              std::to_string(timeout_ms) + " ms passed)");
      }
      lock.lock();
      continue;
    }
    Batch batch;
    Clock::time_point due;
    if (take_due_locked(now, batch, due)) {
      lock.unlock();
      hand_off(batch);
      lock.lock();
      continue;
    }
    if (lookahead_wanted_) {  // Note [Look-ahead batches]
      lookahead_wanted_ = false;
      if (!stopping_) prepare_lookahead(lock, now);
      continue;
    }
    sleeping_until_ = std::min({next_deadline_, due, stopping_ ? drain_deadline_ : Clock::time_point::max()});
    if (sleeping_until_ == Clock::time_point::max()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, sleeping_until_);
    }
    sleeping_until_ = Clock::time_point{};  // awake: every change matters until it sleeps again
  }
}

}  // namespace modelserve
