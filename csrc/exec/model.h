// Model: one served model version in the core: input checks, a DynamicBatcher and an Executor.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "exec/executor.h"
#include "sched/dynamic_batcher.h"

namespace modelserve {

// A declared input or output: dims exclude the batch dimension when the model batches; -1 is a
// variable dimension.
struct TensorSpec {
  std::string name;
  DataType dtype = DataType::kFp32;
  Shape dims;
};

struct ModelConfig {
  std::string name;
  int64_t version = 1;
  BatcherConfig batching;      // batching.max_batch_size is the model's
  int instance_count = 1;
  Device device = Device::cpu();
  std::vector<TensorSpec> inputs;   // empty = accept what comes (the backend checks)
  std::vector<TensorSpec> outputs;  // empty = whatever the backend returns

  std::string label() const { return "model '" + name + "' version " + std::to_string(version); }
};

// Note [Drain]
// ~~~~~~~~~~~~
// shutdown(drain=true) stops admitting and lets the batcher dispatch what is queued, then stops
// the instances. Two things could make that wait for ever, and both are bounded here:
//   - no instance to run the queue: a version scaled to zero (or evicted) with requests waiting
//     for their cold start. The drain starts one instance for them; when that fails (the backend
//     cannot load), the queued requests fail at once with UNAVAILABLE naming the reason.
//   - a queue that does not empty in time (a slow model, a long queue, requests without a
//     timeout): with a drain_timeout, the requests still queued when it passes fail with
//     UNAVAILABLE naming the timeout. Batches already dispatched always finish; they are never
//     interrupted.
class Model {
 public:
  Model(ModelConfig config, BackendFactory factory);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }

  // Checks the request against the declared inputs and outputs, assigns its id and enqueues it.
  // Returns the id (for cancel). Throws Error when the request is refused; the request then stays
  // with the caller, uncompleted.
  uint64_t submit(RequestPtr& request);
  bool cancel(uint64_t request_id);

  void set_instance_count(int count);
  int instance_count() const;
  void set_batching(BatcherConfig batching);  // max_batch_size cannot change while serving
  BatcherConfig batching() const;

  // Stops taking requests; with drain, runs those queued first (Note [Drain]); then stops the
  // instances. A drain_timeout of zero waits as long as the queue takes.
  void shutdown(bool drain, std::chrono::nanoseconds drain_timeout = std::chrono::nanoseconds::zero());
  ModelStats stats() const;
  // Counts every batch's inputs from now on (Note [Input drift]); null stops.
  void set_drift_monitor(std::shared_ptr<DriftMonitor> monitor) { executor_.set_drift_monitor(std::move(monitor)); }

 private:
  void check_request(const Request& request) const;
  uint64_t submit_checked(RequestPtr& request);

  ModelConfig config_;
  std::atomic<uint64_t> next_id_{1};
  DynamicBatcher batcher_;
  Executor executor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace modelserve
