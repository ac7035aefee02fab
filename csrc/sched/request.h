// Request, Response and Batch: what flows from the frontends through the batcher to an instance.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "tensor/tensor.h"

namespace modelserve {

using Clock = std::chrono::steady_clock;

// Where the time of one request went, in nanoseconds. Compute phases are those of its batch.
struct RequestTimings {
  int64_t queue_ns = 0;           // enqueue -> dispatched to an instance
  int64_t compute_input_ns = 0;   // gather (and host-to-device copy)
  int64_t compute_infer_ns = 0;   // the backend
  int64_t compute_output_ns = 0;  // scatter (and device-to-host copy)
};

struct Response {
  Status status;
  TensorList outputs;  // in the order requested (all outputs in the backend's order if none were)
  RequestTimings timings;
  int64_t batch_size = 0;  // rows in the batch this request ran in
};

// Called exactly once per accepted request, from a core thread (or the thread that cancels or
// shuts down). It must be quick and must not call back into the batcher under any lock it holds.
using Completion = std::function<void(Response&&)>;

struct Request {
  uint64_t id = 0;
  TensorList inputs;
  std::vector<std::string> requested_outputs;  // empty = every output
  uint32_t priority = 0;     // 0 = the model's default level; 1 is the most urgent
  int64_t timeout_us = 0;    // queue timeout; 0 = the model's default_timeout_us
  // The submitting thread waits for this request and may run it itself (Note [Caller runs]).
  bool caller_runs = false;
  Completion completion;

  // Set by the batcher on enqueue.
  int64_t batch_size = 1;    // rows: the first dimension when the model batches, else 1
  size_t byte_size = 0;      // sum of input bytes (queue byte limits)
  uint32_t level = 0;        // queue index: 0 is the most urgent
  Clock::time_point enqueue_time{};
  Clock::time_point deadline = Clock::time_point::max();

  void complete(Response&& r) {
    if (completion) {
      Completion c = std::move(completion);
      completion = nullptr;
      c(std::move(r));
    }
  }
  void fail(StatusCode code, std::string message) {
    Response r;
    r.status = {code, std::move(message)};
    r.timings.queue_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - enqueue_time).count();
    complete(std::move(r));
  }
};
using RequestPtr = std::unique_ptr<Request>;

// Requests that run together. Every request's inputs agree in names, datatypes and non-batch
// dimensions; batch_size is the sum of their rows (1 for a model that does not batch).
struct Batch {
  std::vector<RequestPtr> requests;
  int64_t batch_size = 0;
  Clock::time_point dispatch_time{};
  // The inputs, gathered ahead while the instances were busy (Note [Look-ahead batches]); empty:
  // the instance gathers them.
  TensorList gathered;
};

}  // namespace modelserve
