// LatencyTarget: the queue delay and batch size that keep queue + compute within a latency
// target, chosen online from the batch times the model shows and the rate requests arrive at.
#pragma once

#include <cstdint>

#include "sched/request.h"

namespace modelserve {

// Note [Latency target]
// ~~~~~~~~~~~~~~~~~~~~~
// With dynamic_batching.latency_target_us = T, the static queue delay gives way to a plan made
// afresh whenever a batch is formed (Note [Batch formation], rule 3):
//
//   - Batch time. Finished batches fit c(b) = alpha + beta * b (b rows; gather, execute and
//     scatter, as the executor times them) by least squares with exponential forgetting, so
//     the fit follows a model whose speed drifts. Its p99 is c99(b) = c(b) * (1 + 2.33 * s),
//     s the running deviation of observed/fitted. Until two distinct batch sizes have been seen
//     (in the forgetting window) beta is unknown: nothing waits and no batch is capped, and the
//     batches that form by themselves under load (while the instances are busy) teach the fit.
//   - Arrivals. The rate of rows arriving, lambda, from an exponentially weighted mean of the
//     gaps between arrivals; a gap still open counts once it is longer than the mean, so the
//     rate decays when traffic stops.
//   - Batch size to wait for. The smallest b whose load on the n instances stays at or below
//     rho = 0.8: lambda * c(b) / (n * b) <= rho, that is b >= lambda * alpha / (n * rho -
//     lambda * beta) (max_batch_size when no b is enough: overload). At low load this is 1: a
//     lone request on an idle instance is dispatched at once, exactly as with no delay.
//   - The cap. A batch's oldest request may wait for an instance running a batch, then for its
//     own batch: so b is at most the largest size with (b - 1) / lambda + 2 * c99(b) <= T, and
//     no batch is formed larger than that cap, however many requests wait.
//   - Delay. The oldest request waits at most T - 2 * c99(b) (never below zero) for the b rows
//     to gather; a batch that reaches b rows, or a preferred size, goes at once.
//
// The plan is a few multiplications, made under the batcher's lock. Priorities, queue timeouts
// and cancellation are untouched: the plan only says how long the head of the queue may wait
// and how large a batch may grow. Without the key, Triton's static rules apply exactly.
class LatencyTarget {
 public:
  struct Plan {
    int64_t rows = 1;      // the batch size worth waiting for
    int64_t cap = 0;       // the largest batch the target allows (<= max_batch_size)
    int64_t delay_us = 0;  // how long the oldest request may wait for `rows`
  };

  // A request of `rows` rows arrived at `t`.
  void on_arrival(int64_t rows, Clock::time_point t);
  // A batch of `rows` rows took `compute_ns` (gather + execute + scatter).
  void on_batch(int64_t rows, int64_t compute_ns);
  // The plan for target `target_us` over `instances` instances at `now`.
  Plan plan(int64_t target_us, int64_t max_batch_size, int64_t instances, Clock::time_point now) const;

  // The fitted batch time in microseconds, and its p99 (for tests and the README's figures).
  double compute_us(double rows) const;
  double compute_p99_us(double rows) const;

 private:
  bool identified() const;  // two distinct batch sizes seen: beta is known

  // c(b) = alpha + beta * b in microseconds, and the p99 factor (1 + 2.33 * s).
  struct Fit {
    double alpha = 0, beta = 0, margin = 1;
  };
  Fit fit() const;

  // Exponentially weighted least-squares sums over finished batches (x = rows, y = µs).
  double w_ = 0, sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;
  double dev2_ = 0;  // running mean of (observed / fitted - 1)^2
  int64_t first_rows_ = 0;
  bool two_sizes_ = false;
  // Arrivals: mean gap between rows, in microseconds.
  double gap_us_ = 0;
  Clock::time_point last_arrival_{};
  bool arrived_ = false;
};

}  // namespace modelserve
