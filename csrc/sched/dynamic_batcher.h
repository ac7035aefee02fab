// DynamicBatcher: the per-model request queue and the rule that turns it into batches.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sched/latency_target.h"
#include "sched/request.h"

namespace modelserve {

struct BatcherConfig {
  std::string model;            // "name" or "name version N", for messages
  int64_t max_batch_size = 0;   // 0 = the model does not batch
  std::vector<int64_t> preferred_batch_sizes;
  int64_t max_queue_delay_us = 0;
  int64_t latency_target_us = 0;  // 0 = Triton's static rules; else Note [Latency target]
  size_t max_queue_size = 0;    // requests; 0 = unbounded
  size_t max_queue_bytes = 0;   // input bytes of queued requests; 0 = unbounded
  int64_t default_timeout_us = 0;
  uint32_t priority_levels = 1;
  uint32_t default_priority_level = 0;  // 0 = the middle level, (priority_levels + 2) / 2

  void validate() const;  // throws Error(kInvalidArgument) naming the bad key
  uint32_t effective_default_level() const {
    return default_priority_level ? default_priority_level : (priority_levels + 2) / 2;
  }
};

// What the batcher hands batches to (the Executor). The batcher counts the batches it has popped
// and not yet handed over (Note [Inline dispatch]), so free_slots() is never over-used.
class BatchSink {
 public:
  // A batch an idle instance took for the calling thread to run (Note [Caller runs]).
  struct Claim {
    void* instance = nullptr;  // the sink's own
    Batch batch;
  };

  virtual ~BatchSink() = default;
  // Batches the sink would start now without queueing them behind others.
  virtual size_t free_slots() const = 0;
  // Takes the batch and returns true; returns false, leaving `batch` untouched, when there is no
  // instance to take it (all were removed meanwhile): the batcher then queues it again.
  virtual bool dispatch(Batch& batch) = 0;
  // Takes the batch into `claim` for an idle instance that the calling thread may run it on
  // (run_claimed), and returns true; false, `batch` untouched, when no instance can (dispatch it).
  virtual bool claim(Batch& batch, Claim& claim) { return false; }
  // Runs a claimed batch on the calling thread; its requests complete before this returns.
  virtual void run_claimed(Claim& claim) {}
  // Instances that take batches (a latency target plans for their number).
  virtual size_t instances() const { return 1; }
  // The batch inputs of requests with these inputs (in order), gathered as an instance would
  // gather them, for a look-ahead batch (Note [Look-ahead batches]); empty when the sink's
  // instances gather differently (device memory) or not at all.
  virtual TensorList gather_ahead(const std::vector<TensorList>& inputs) { return {}; }
};

// Note [Batch formation]
// ~~~~~~~~~~~~~~~~~~~~~~
// Triton's dynamic batching rule, made explicit. A batch forms only when an instance can take it
// (free_slots() > 0): while every instance is busy requests accumulate, so a loaded server runs
// big batches and an idle one small batches with no delay. Candidates are taken in queue order,
// the most urgent priority level first and FIFO within a level. Starting from the first, requests
// join while they match its signature (input names, datatypes and non-batch dimensions) and the
// rows fit in max_batch_size. Then:
//   1. the batch is full, or the next request does not fit or does not match -> dispatch now;
//   2. otherwise, if the rows collected reached a preferred size at some point -> dispatch the
//      longest prefix that was of a preferred size;
//   3. otherwise, with no max_queue_delay_us (or once the oldest candidate has waited that long)
//      -> dispatch what there is; with a latency_target_us, the delay and the batch size to wait
//      for are planned afresh (Note [Latency target]), and no batch grows past the plan's cap;
//   4. otherwise wait until the oldest candidate's delay runs out, or the queue changes.
// A model with max_batch_size 0 runs every request alone, at once.
//
// Timeouts and cancellation work on the queue itself, independent of the instances: a request
// whose queue deadline passes is failed with DEADLINE_EXCEEDED at that time, even while all
// instances are busy, and cancel() removes a queued request at once. A dispatched request is
// never interrupted.
//
// Ownership: enqueue() takes the request when it returns; when it throws (a full queue, a bad
// priority, shut down) the request stays with the caller, uncompleted.
//
// Note [Look-ahead batches]
// ~~~~~~~~~~~~~~~~~~~~~~~~~
// While every instance is busy and a full batch's worth of rows is queued, the batcher thread
// forms the batch the rule would form now and has the sink gather its inputs (gather_ahead), from
// copies of the requests' tensor handles, outside the lock: the copy into one buffer per input
// happens while the instances compute, not between their batches. Nothing is taken from the
// queue for it, so it stays revocable: a request in it can still be cancelled, expire, or be
// overtaken by a more urgent one. When a slot frees, the batch is formed by the rule as always,
// and carries the gathered inputs only if it holds exactly the look-ahead's requests in the same
// order; otherwise the look-ahead is dropped (its buffers go back to the pool), as is one whose
// requests are no longer the head of the queue when its gather ends. So priorities, queue timeouts and
// cancellation stay exactly what Note [Batch formation] says: the look-ahead changes who copies
// the inputs and when, never which requests run together or in what order.
//
// It is off unless MODELSERVE_LOOKAHEAD=1 (read when a version loads). Measured on two cores
// (bench/e2e/test_runtime_throughput.py, 1-row requests, ~58 per batch), it costs more than it
// saves: the batcher thread's wake-up, the copied tensor handles (a Python-owned one is released
// off the GIL, so it is parked and released again later) and the gather compete for the same two
// cores as the instance and the callers. It is meant for machines with cores to spare.
class DynamicBatcher {
 public:
  explicit DynamicBatcher(BatcherConfig config);
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Starts the batcher thread, which dispatches to `sink` (not owned; must outlive stop()).
  void start(BatchSink* sink);
  // Stops taking requests. With drain, queued requests are still dispatched and the call returns
  // when the queue is empty; those still queued when `drain_timeout` has passed (if it is > 0),
  // and all of them without drain, fail with UNAVAILABLE (`reason` is added to the message).
  // Joins the thread.
  void stop(bool drain, std::chrono::nanoseconds drain_timeout = std::chrono::nanoseconds::zero(),
            const std::string& reason = "");

  void enqueue(RequestPtr& request);
  // Removes a queued request and completes it with CANCELLED. False if it is not queued (it ran,
  // is running, or never was).
  bool cancel(uint64_t request_id);
  // A slot became free in the sink: forms and dispatches a batch on the calling thread if one is
  // due now (saving the batcher thread's wake-up on the hot path), else wakes the batcher thread.
  // `rows` > 0: a batch of that many rows just finished in `compute_ns` (Note [Latency target]).
  void notify(int64_t rows = 0, int64_t compute_ns = 0);

  void set_config(BatcherConfig config);  // applies to the next batch; queued requests stay
  BatcherConfig config() const;
  size_t queued() const;
  size_t queued_bytes() const;
  // The latency target's last plan (Note [Latency target]); the static delay without a target.
  LatencyTarget::Plan plan() const;

  // Look-ahead batches gathered, used by the batch they were gathered for, and dropped.
  struct LookAheadStats {
    uint64_t prepared = 0, used = 0, dropped = 0;
  };
  LookAheadStats lookahead_stats() const;

 private:
  struct Formed {
    size_t count = 0;                         // requests to dispatch now; 0 = none yet
    Clock::time_point wait_until = Clock::time_point::max();
  };

  void run();
  Formed form_locked(Clock::time_point now) const;
  Batch pop_locked(size_t count, Clock::time_point now);
  void expire_locked(Clock::time_point now, std::vector<RequestPtr>& expired);
  // Moves every queued request into `dropped` (shutdown without drain, or a drain out of time).
  void drop_all_locked(std::vector<RequestPtr>& dropped);
  // Dispatches a popped batch outside the lock; queues it again if the sink has no instance.
  // With `caller_may_run`, an idle instance may run it on the calling thread (Note [Caller runs]).
  void hand_off(Batch& batch, bool caller_may_run = false);
  // Pops a batch that is due now into `batch` (true), or tells when to look again (`wake`).
  bool take_due_locked(Clock::time_point now, Batch& batch, Clock::time_point& wake);
  bool compatible(const Request& a, const Request& b) const;
  // Whether the batcher thread should gather a look-ahead now (a full batch's rows are queued
  // and none is gathered or being gathered).
  bool wants_lookahead_locked() const;
  // Forms the batch due now (whatever the free slots) and gathers it outside the lock.
  void prepare_lookahead(std::unique_lock<std::mutex>& lock, Clock::time_point now);
  // Gives `batch` the look-ahead's inputs if it holds exactly its requests; drops it otherwise.
  void match_lookahead_locked(Batch& batch);
  bool queue_starts_with_locked(const std::vector<uint64_t>& ids) const;

  struct LookAhead {
    std::vector<uint64_t> ids;  // its requests, in batch order
    TensorList inputs;
  };

  const std::string model_;                   // for messages
  const bool lookahead_enabled_;              // Note [Look-ahead batches]; MODELSERVE_LOOKAHEAD=1: on
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  BatcherConfig config_;                      // guarded by mutex_
  std::vector<std::deque<RequestPtr>> queues_;  // guarded by mutex_; index = level, 0 most urgent
  size_t queued_ = 0;                         // guarded by mutex_
  size_t queued_bytes_ = 0;                   // guarded by mutex_
  Clock::time_point next_deadline_ = Clock::time_point::max();  // guarded by mutex_; a lower bound
  bool accepting_ = false;                    // guarded by mutex_
  bool stopping_ = false;                     // guarded by mutex_
  bool drain_ = true;                         // guarded by mutex_
  // While draining: when requests still queued fail (max: never); guarded by mutex_.
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  std::chrono::nanoseconds drain_timeout_{0};  // guarded by mutex_; for the message
  // Batches popped but not yet handed to the sink (they will take a slot free_slots() still
  // counts); guarded by mutex_. See Note [Inline dispatch].
  size_t dispatching_ = 0;
  // When the batcher thread will next look by itself (max: only when woken; the epoch while it
  // is awake); guarded by mutex_. Others wake it only for an earlier deadline or delay.
  Clock::time_point sleeping_until_{};
  size_t queued_rows_ = 0;                    // guarded by mutex_
  // Note [Look-ahead batches]; all guarded by mutex_.
  std::unique_ptr<LookAhead> lookahead_;
  bool lookahead_wanted_ = false;   // the batcher thread is asked to gather one
  bool lookahead_busy_ = false;     // it is gathering one, outside the lock
  LookAheadStats lookahead_stats_;
  LatencyTarget latency_;                     // guarded by mutex_
  mutable LatencyTarget::Plan plan_;          // guarded by mutex_; the last plan form_locked made
  BatchSink* sink_ = nullptr;
  std::thread thread_;
};

}  // namespace modelserve
