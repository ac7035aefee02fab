// Executor: a model's instances, each a worker thread with its own stream, running batches.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "exec/backend.h"
#include "monitor/drift_monitor.h"
#include "sched/dynamic_batcher.h"

namespace modelserve {

struct BatchStats {
  uint64_t count = 0;  // batches of this size
  int64_t compute_input_ns = 0;
  int64_t compute_infer_ns = 0;
  int64_t compute_output_ns = 0;
};

// A cumulative latency histogram with fixed bucket bounds (Prometheus-style "le" buckets): cheap
// to update under the stats mutex, exported at scrape time.
struct LatencyHistogram {
  // Upper bounds in nanoseconds: 50 us .. 10 s, roughly x2.5 apart; the last bucket is +Inf.
  static constexpr int64_t kBoundsNs[] = {50'000, 100'000, 250'000, 500'000, 1'000'000, 2'500'000,
                                          5'000'000, 10'000'000, 25'000'000, 50'000'000, 100'000'000,
                                          250'000'000, 500'000'000, 1'000'000'000, 2'500'000'000,
                                          10'000'000'000};
  static constexpr int kBuckets = sizeof(kBoundsNs) / sizeof(kBoundsNs[0]) + 1;
  uint64_t counts[kBuckets] = {};  // per bucket, not cumulative
  int64_t sum_ns = 0;
  uint64_t count = 0;

  void observe(int64_t ns) {
    int i = 0;
    while (i < kBuckets - 1 && ns > kBoundsNs[i]) ++i;
    counts[i] += 1;
    sum_ns += ns;
    count += 1;
  }
};

// Per-model statistics, cumulative since the model started (Triton's ModelStatistics shape).
struct ModelStats {
  uint64_t success_count = 0;   // requests
  uint64_t failure_count = 0;   // requests that failed in the queue or in their batch
  uint64_t execution_count = 0; // batches run
  uint64_t inference_count = 0; // rows run
  int64_t queue_ns = 0;         // summed over successful requests
  int64_t compute_input_ns = 0;
  int64_t compute_infer_ns = 0;
  int64_t compute_output_ns = 0;
  std::map<int64_t, BatchStats> batch_stats;  // by batch size (rows)
  std::map<std::string, uint64_t> failures;   // by status code name
  LatencyHistogram queue_hist;    // enqueue -> dispatch, successful requests
  LatencyHistogram compute_hist;  // input + infer + output of the request's batch
  LatencyHistogram request_hist;  // enqueue -> completion
  uint64_t queued = 0;          // in the batcher's queue now
  uint64_t in_flight = 0;       // dispatched to an instance, not yet completed
  int instances = 0;
  // What the batcher waits for now (Note [Latency target]; the static settings without one):
  int64_t batch_rows_planned = 0;  // the batch size it waits for
  int64_t batch_cap = 0;           // the largest batch it forms
  int64_t batch_delay_us = 0;      // how long the oldest request may wait for it
  // Note [Look-ahead batches]: gathered ahead, used by their batch, dropped as stale.
  uint64_t lookahead_prepared = 0, lookahead_used = 0, lookahead_dropped = 0;
};

struct ExecutorConfig {
  std::string model;            // for messages
  int64_t max_batch_size = 0;
  Device device = Device::cpu();  // cpu, or cuda:N for GPU instances
};

// Note [Instance pipeline]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// A CPU instance runs one batch at a time on its thread: gather the inputs into pooled host
// buffers (a batch of one is passed through untouched), run the backend, and complete every
// request with zero-copy row slices of the outputs.
//
// A GPU instance whose backend wants device memory has three streams, host-to-device, compute and
// device-to-host, and takes two batches at once (free_slots counts two per instance). Its worker
// thread gathers a batch into pinned pooled memory, enqueues the copy into device pooled memory
// on the h2d stream, makes the compute stream wait on an event recorded after that copy, runs the
// backend on the compute stream, and enqueues the copies of the outputs into pinned memory on the
// d2h stream after an event on the compute stream. It then hands the batch to the instance's
// completer thread, which waits on the batch's last event and completes the requests. The worker
// is by then gathering the next batch, whose h2d copy runs while the current batch computes.
// Ordering is by events only; nothing synchronises the device. Every device and pinned buffer of
// a batch is released on the d2h stream (the last in its chain), so the pool reuses it only once
// the device is done with it (Note [Pool streams]).
//
// Resizing: set_instance_count() creates backends on the calling thread and starts their
// threads; removing instances retires idle ones first. A retiring instance takes no new batches,
// finishes those it holds (a caller running one of its batches included) and exits; the call
// returns when they have. Queued requests wait in the batcher throughout, so nothing is lost.
//
// Note [Caller runs]
// ~~~~~~~~~~~~~~~~~~
// A blocking call (Model.run: Runtime.infer, ModelEngine.infer) waits for its request anyway, so
// when its request is due the moment it is enqueued (alone in the queue, no delay to wait, a free
// slot) and a CPU instance is idle, the batch runs on the caller's own thread: claim() marks the
// instance busy exactly as taking a batch from its `work` queue does, and run_claimed() runs it
// through the same run_batch() and finish(). That saves the two thread hand-offs (to the
// instance's thread and back to the waiting caller) that cost a lone request tens of
// microseconds. What stays true:
//   - instance limits: the claimed instance is busy (load() counts it) for the whole run, so no
//     other batch is given to it and free_slots() sees one slot fewer, as for any batch;
//   - ordering: the batcher formed the batch by its one rule (Note [Batch formation]) under its
//     lock; only a request that was alone and due at once is ever run by its caller;
//   - lifetime: a retiring or stopping instance's thread waits until `busy` is zero before it
//     exits, so its backend outlives a caller's run on it.
// Asynchronous submits (the event loop's) never run on their caller: a slow model would stall
// the loop and every request on it. GPU instances keep their threads (streams, device context).
class Executor final : public BatchSink {
 public:
  // on_slot_free(rows, compute_ns): a slot became free; rows > 0 when a batch of that many rows
  // just finished, in compute_ns (gather + execute + scatter), 0 after a resize.
  Executor(ExecutorConfig config, BackendFactory factory, std::function<void(int64_t, int64_t)> on_slot_free);
  ~Executor() override;
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void set_instance_count(int count);
  int instance_count() const;
  // Waits for every dispatched batch and stops all instances.
  void stop();

  size_t free_slots() const override;
  bool dispatch(Batch& batch) override;
  bool claim(Batch& batch, Claim& claim) override;  // Note [Caller runs]
  void run_claimed(Claim& claim) override;
  size_t instances() const override;
  TensorList gather_ahead(const std::vector<TensorList>& inputs) override;  // Note [Look-ahead batches]

  // Statistics; the batcher's queue length is added by the owner (Model).
  ModelStats stats() const;
  void record_failure(StatusCode code);  // a request failed before dispatch (timeout, cancel)
  // Every batch's inputs are counted by `monitor` from now on (Note [Input drift]); null: none.
  void set_drift_monitor(std::shared_ptr<DriftMonitor> monitor);

 private:
  struct Instance;
  struct InFlight;

  void worker(Instance* instance);
  void completer(Instance* instance);
  void run_batch(Instance& instance, Batch& batch);
  void run_batch_on_device(Instance& instance, Batch& batch);
  // `start`: when the instance started the batch (Note [Request spans]).
  void finish(Instance& instance, Batch& batch, const TensorList& outputs, const RequestTimings& timings,
              Clock::time_point start, const Status& failure);
  TensorList gather_inputs(const Batch& batch, const std::shared_ptr<MemoryResource>& resource,
                           StreamView stream) const;
  // The batch inputs of requests with these inputs, in order (one tensor per input name).
  static TensorList gather_lists(const std::vector<const TensorList*>& lists,
                                 const std::shared_ptr<MemoryResource>& resource, StreamView stream);
  std::vector<std::string> requested_union(const Batch& batch) const;
  std::string where(const Instance& instance) const;

  const ExecutorConfig config_;
  // Guarded by resize_mutex_. stop() releases it: a Python factory often refers back to the
  // object that owns this executor (a repository version), a cycle Python's collector cannot see
  // through the core, so holding it past stop() would keep every unloaded version alive.
  BackendFactory factory_;
  const std::function<void(int64_t, int64_t)> on_slot_free_;

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Instance>> instances_;  // guarded by mutex_ (the vector and each
                                                      // instance's work/busy/retiring fields)
  bool stopping_ = false;                             // guarded by mutex_
  std::mutex resize_mutex_;                           // serialises set_instance_count/stop

  mutable std::mutex stats_mutex_;  // taken after mutex_ when both are held (Note [Count before publishing])
  ModelStats stats_;  // guarded by stats_mutex_
  std::shared_ptr<DriftMonitor> drift_;  // guarded by stats_mutex_
};

}  // namespace modelserve
