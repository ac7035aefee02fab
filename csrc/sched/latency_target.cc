#include "sched/latency_target.h"

#include <algorithm>
#include <cmath>

namespace modelserve {

namespace {
constexpr double kForget = 0.98;      // per finished batch: the fit follows the last ~50 batches
constexpr double kGapWeight = 0.2;    // per arrival
constexpr double kDevWeight = 0.05;   // per finished batch
constexpr double kRho = 0.8;          // the load the plan allows the instances
constexpr double kZ99 = 2.33;         // the p99 of a normal deviation
constexpr double kMaxGapUs = 10e6;    // a gap longer than 10 s counts as 10 s
}  // namespace

void LatencyTarget::on_arrival(int64_t rows, Clock::time_point t) {
  rows = std::max<int64_t>(rows, 1);
  if (arrived_) {
    const double gap = std::chrono::duration<double, std::micro>(t - last_arrival_).count();
    const double per_row = std::clamp(gap, 0.0, kMaxGapUs) / static_cast<double>(rows);
    gap_us_ = gap_us_ == 0 ? per_row : (1 - kGapWeight) * gap_us_ + kGapWeight * per_row;
  }
  arrived_ = true;
  last_arrival_ = t;
}

bool LatencyTarget::identified() const {
  if (!two_sizes_ || w_ <= 0) return false;
  const double mean = sx_ / w_;
  return sxx_ / w_ - mean * mean > 0.25;  // the sizes still differ in the forgetting window
}

LatencyTarget::Fit LatencyTarget::fit() const {
  Fit f;
  f.margin = 1 + kZ99 * std::sqrt(dev2_);
  if (w_ <= 0) return f;
  if (!identified()) {  // the mean time per row: a placeholder until the slope is known
    f.beta = sx_ > 0 ? sy_ / sx_ : 0;
    return f;
  }
  const double d = w_ * sxx_ - sx_ * sx_;
  f.beta = (w_ * sxy_ - sx_ * sy_) / d;
  f.alpha = (sy_ - f.beta * sx_) / w_;
  if (f.beta < 0) {  // noise: a batch time cannot fall with its size
    f.beta = 0;
    f.alpha = sy_ / w_;
  } else if (f.alpha < 0) {  // nor be negative for one row
    f.alpha = 0;
    f.beta = sxy_ / sxx_;
  }
  return f;
}

double LatencyTarget::compute_us(double rows) const {
  const Fit f = fit();
  return f.alpha + f.beta * rows;
}

double LatencyTarget::compute_p99_us(double rows) const {
  const Fit f = fit();
  return (f.alpha + f.beta * rows) * f.margin;
}

void LatencyTarget::on_batch(int64_t rows, int64_t compute_ns) {
  if (rows <= 0 || compute_ns < 0) return;
  const double x = static_cast<double>(rows), y = static_cast<double>(compute_ns) / 1000.0;
  const double fitted = identified() ? compute_us(x) : 0;  // the placeholder model says nothing of noise
  if (fitted > 0) {
    const double r = y / fitted - 1;
    dev2_ = (1 - kDevWeight) * dev2_ + kDevWeight * std::min(r * r, 4.0);  // one outlier moves it little
  }
  if (first_rows_ == 0) first_rows_ = rows;
  two_sizes_ = two_sizes_ || rows != first_rows_;
  w_ = kForget * w_ + 1;
  sx_ = kForget * sx_ + x;
  sy_ = kForget * sy_ + y;
  sxx_ = kForget * sxx_ + x * x;
  sxy_ = kForget * sxy_ + x * y;
}

LatencyTarget::Plan LatencyTarget::plan(int64_t target_us, int64_t max_batch_size, int64_t instances,
                                        Clock::time_point now) const {
  Plan p;
  p.cap = std::max<int64_t>(max_batch_size, 1);
  // Until the batch time's slope is known, nothing waits and no batch is capped: the batches
  // that form by themselves (under load, while the instances are busy) teach the fit.
  if (!identified() || target_us <= 0 || max_batch_size <= 1) return p;
  const double target = static_cast<double>(target_us);
  const double n = static_cast<double>(std::max<int64_t>(instances, 1));

  // Rows per microsecond; an open gap longer than the mean pulls the rate down.
  double lambda = 0;
  if (arrived_ && gap_us_ > 0) {
    const double open = std::chrono::duration<double, std::micro>(now - last_arrival_).count();
    lambda = 1.0 / std::max(gap_us_, open);
  }

  // One fit for the whole plan: c99(b) = margin * (alpha + beta * b).
  const Fit f = fit();
  const double a99 = f.margin * f.alpha, b99 = f.margin * f.beta;
  const auto rows_at_most = [&](double bound) {  // floor(bound) in [1, max_batch_size]
    if (!(bound >= 1)) return int64_t(1);  // NaN included
    const double b = std::floor(bound * (1 + 1e-12));  // an exact boundary stays inside
    return b >= static_cast<double>(max_batch_size) ? max_batch_size : static_cast<int64_t>(b);
  };

  // The smallest batch that keeps the instances' load at or below kRho:
  // lambda * (alpha + beta * b) / (n * b) <= kRho.
  int64_t need = max_batch_size;
  const double room = n * kRho - lambda * f.beta;
  if (room > 0) {
    const double b = std::ceil(lambda * f.alpha / room);
    need = b >= static_cast<double>(max_batch_size) ? max_batch_size : std::max<int64_t>(1, static_cast<int64_t>(b));
  }

  // The largest batch whose own time (after one batch ahead of it) fits the target,
  // 2 * c99(b) <= T; never below `need`, since a queue that cannot keep up grows without bound.
  const int64_t cap = b99 > 0 ? rows_at_most((target / 2 - a99) / b99) : (2 * a99 <= target ? max_batch_size : 1);
  p.cap = std::max(cap, need);

  // Wait for `need` rows only as long as gathering them and running them fits the target:
  // (b - 1) / lambda + 2 * c99(b) <= T.
  int64_t rows = 1;
  if (lambda > 0 && need > 1) {
    const double gap = 1 / lambda;
    rows = std::min(need, rows_at_most((target + gap - 2 * a99) / (gap + 2 * b99)));
  }
  p.rows = rows;
  p.delay_us = rows > 1 ? static_cast<int64_t>(std::max(0.0, target - 2 * (a99 + b99 * static_cast<double>(rows)))) : 0;
  return p;
}

}  // namespace modelserve
