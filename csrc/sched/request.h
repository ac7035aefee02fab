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

// Note [Request spans]
// ~~~~~~~~~~~~~~~~~~~~
// A traced request's spans (python/modelserve/observe/tracing.py) are built after it completes,
// from what the core records anyway, so tracing adds no clock reads or allocations on the request
// path: its enqueue time, when its batch was formed (dispatch) and when an instance started it,
// the batch's input, infer and output phases (RequestTimings), and a batch id unique in the
// process. One span per batch is linked to the spans of the batch's traced requests; the batch
// counts them (Request::traced -> BatchTrace::batch_traced) so the frontend knows when it has
// seen the last of them and can end the batch's span exactly once, whichever order the
// completions reach it in. The times are steady-clock nanoseconds (CLOCK_MONOTONIC on Linux:
// Python's time.monotonic_ns()); Python turns them into wall-clock time.

// Where a request ran (Note [Request spans]).
struct BatchTrace {
  uint64_t batch_id = 0;          // unique in the process; 0: the request never ran in a batch
  int64_t enqueue_ns = 0;         // the request entered the queue
  int64_t dispatch_ns = 0;        // its batch was formed
  int64_t compute_start_ns = 0;   // an instance started the batch (gather, execute, scatter follow)
  uint32_t batch_requests = 0;    // requests in the batch
  uint32_t batch_traced = 0;      // of which asked to be traced (Request::traced)
};

struct Response {
  Status status;
  TensorList outputs;  // in the order requested (all outputs in the backend's order if none were)
  RequestTimings timings;
  int64_t batch_size = 0;  // rows in the batch this request ran in
  BatchTrace trace;
  TensorList inputs;   // the request's inputs, when it asked to keep them (Request::keep_inputs)
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
  // Observation (Note [Request spans]): the request is traced (its batch counts it), and its
  // inputs come back in its Response (a payload log records them; shared buffers, no copy).
  bool traced = false;
  bool keep_inputs = false;
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
    r.trace.enqueue_ns = steady_ns(enqueue_time);
    if (keep_inputs) r.inputs = inputs;
    complete(std::move(r));
  }
  static int64_t steady_ns(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
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
