#include "monitor/drift_monitor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

namespace modelserve {

namespace {

constexpr int kEdges = DriftMonitor::kFineBins - 1;
constexpr int kWindowBlocks = 10;
constexpr int64_t kContinuousDistinct = 20;  // more distinct reference values: continuous (KS)
constexpr size_t kMaxReferenceRows = size_t(1) << 16;  // per input, from traffic
constexpr double kFloor = 1e-4;  // PSI's floor on a bin's proportion

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise the mantissa
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
double load(const uint8_t* row, int64_t j) {
  T v;
  std::memcpy(&v, row + j * sizeof(T), sizeof(T));
  if constexpr (std::is_same_v<T, bool>) {
    return v ? 1.0 : 0.0;
  } else {
    return static_cast<double>(v);
  }
}

// Element j of a row of `dtype` as a double.
double element(const uint8_t* row, DataType dtype, int64_t j) {
  switch (dtype) {
    case DataType::kBool: return row[j] ? 1.0 : 0.0;
    case DataType::kUint8: return load<uint8_t>(row, j);
    case DataType::kUint16: return load<uint16_t>(row, j);
    case DataType::kUint32: return load<uint32_t>(row, j);
    case DataType::kUint64: return load<uint64_t>(row, j);
    case DataType::kInt8: return load<int8_t>(row, j);
    case DataType::kInt16: return load<int16_t>(row, j);
    case DataType::kInt32: return load<int32_t>(row, j);
    case DataType::kInt64: return load<int64_t>(row, j);
    case DataType::kFp16: return half_to_float(static_cast<uint16_t>(load<uint16_t>(row, j)));
    case DataType::kBf16: return bf16_to_float(static_cast<uint16_t>(load<uint16_t>(row, j)));
    case DataType::kFp32: return load<float>(row, j);
    case DataType::kFp64: return load<double>(row, j);
    case DataType::kBytes: break;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// The fine bin of v: how many of the feature's edges lie below it.
int bin_of(const double* edges, double v) {
  return static_cast<int>(std::lower_bound(edges, edges + kEdges, v) - edges);
}

}  // namespace

DriftMonitor::DriftMonitor(std::string model, std::vector<DriftInputSpec> inputs, bool batched, DriftOptions options)
    : model_(std::move(model)),
      batched_(batched),
      options_(options),
      block_requests_(std::max<int64_t>(1, options.window_requests / kWindowBlocks)) {
  MS_EXPECTS(options_.reference_requests >= 1, kInvalidArgument, model_, ": drift.reference_requests must be >= 1, got ",
             options_.reference_requests);
  MS_EXPECTS(options_.window_requests >= 1, kInvalidArgument, model_, ": drift.window_requests must be >= 1, got ",
             options_.window_requests);
  MS_EXPECTS(options_.rows_per_request >= 1 && options_.summary_elements >= 1 && options_.max_features >= 1,
             kInvalidArgument, model_, ": drift row, element and feature limits must be >= 1");
  for (auto& in : inputs) {
    if (in.dtype == DataType::kBytes) continue;
    Tracked t;
    t.name = std::move(in.name);
    t.dtype = in.dtype;
    t.dims = std::move(in.dims);
    const bool fixed = std::none_of(t.dims.begin(), t.dims.end(), [](int64_t d) { return d < 0; });
    t.row_elements = fixed ? num_elements(t.dims) : -1;
    t.summary = !fixed || t.row_elements > options_.max_features || t.row_elements == 0;
    if (t.summary) {
      t.features = 2;
      t.labels = {"mean", "std"};
    } else {
      t.features = static_cast<int>(t.row_elements);
      for (int f = 0; f < t.features; ++f) t.labels.push_back(std::to_string(f));
    }
    const size_t bins = size_t(t.features) * kFineBins;
    t.current.assign(bins, 0);
    t.window.assign(bins, 0);
    tracked_.push_back(std::move(t));
  }
}

int64_t DriftMonitor::extract(const Tracked& t, const Tensor& tensor, bool whole_is_row, int64_t max_rows,
                              std::vector<double>& out) const {
  if (!tensor.defined() || tensor.dtype() != t.dtype || !tensor.device().host_accessible()) return 0;
  const Shape& shape = tensor.shape();
  int64_t rows = 1;
  if (!whole_is_row) {
    if (shape.empty()) return 0;
    rows = shape[0];
  }
  if (rows <= 0) return 0;
  const int64_t elements = tensor.num_elements() / rows;
  if (elements <= 0 || (!t.summary && elements != t.features)) return 0;
  const int64_t take = std::min(rows, max_rows);
  const size_t item = element_size(t.dtype);
  const auto* base = static_cast<const uint8_t*>(tensor.data());
  for (int64_t k = 0; k < take; ++k) {
    const int64_t r = take == rows ? k : k * rows / take;  // evenly strided
    const uint8_t* row = base + static_cast<size_t>(r * elements) * item;
    const size_t at = out.size();
    out.resize(at + t.features);
    if (!t.summary) {
      for (int f = 0; f < t.features; ++f) out[at + f] = element(row, t.dtype, f);
      continue;
    }
    const int64_t stride = std::max<int64_t>(1, elements / options_.summary_elements);
    double sum = 0, sum_sq = 0;
    int64_t n = 0;
    for (int64_t j = 0; j < elements; j += stride) {
      const double v = element(row, t.dtype, j);
      if (std::isnan(v)) continue;
      sum += v;
      sum_sq += v * v;
      ++n;
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double mean = n ? sum / n : nan;
    out[at] = mean;
    out[at + 1] = n ? std::sqrt(std::max(0.0, sum_sq / n - mean * mean)) : nan;
  }
  return take;
}

void DriftMonitor::observe(const std::vector<RequestPtr>& requests) {
  if (tracked_.empty() || requests.empty()) return;
  // Extracted outside the lock: per request and tracked input, its rows' features.
  thread_local std::vector<double> values;
  thread_local std::vector<int64_t> rows, offsets;
  const size_t inputs = tracked_.size();
  values.clear();
  rows.assign(requests.size() * inputs, 0);
  offsets.assign(requests.size() * inputs, 0);
  for (size_t q = 0; q < requests.size(); ++q) {
    for (size_t i = 0; i < inputs; ++i) {
      const NamedTensor* in = find_tensor(requests[q]->inputs, tracked_[i].name);
      offsets[q * inputs + i] = static_cast<int64_t>(values.size());
      if (in != nullptr) {
        rows[q * inputs + i] = extract(tracked_[i], in->tensor, !batched_, options_.rows_per_request, values);
      }
    }
  }
  std::vector<const double*> request_rows(inputs);
  std::vector<int64_t> request_n(inputs);
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t q = 0; q < requests.size(); ++q) {
    for (size_t i = 0; i < inputs; ++i) {
      request_rows[i] = values.data() + offsets[q * inputs + i];
      request_n[i] = rows[q * inputs + i];
    }
    if (complete_) {
      count_locked(request_rows, request_n);
      continue;
    }
    if (from_data_) continue;  // a reference from data is being added: traffic is not part of it
    for (size_t i = 0; i < inputs; ++i) {
      Tracked& t = tracked_[i];
      int64_t n = request_n[i];
      if (t.samples.size() / t.features + n > kMaxReferenceRows) n = 0;
      t.samples.insert(t.samples.end(), request_rows[i], request_rows[i] + n * t.features);
      t.rows_of_request.push_back(static_cast<uint32_t>(n));
    }
    if (++reference_seen_ == options_.reference_requests) build_reference_locked();
  }
}

void DriftMonitor::add_reference(const std::string& input, const Tensor& data) {
  Tracked* t = nullptr;
  std::string names;
  for (auto& candidate : tracked_) {
    if (candidate.name == input) t = &candidate;
    names += (names.empty() ? "'" : ", '") + candidate.name + "'";
  }
  MS_EXPECTS(t != nullptr, kInvalidArgument, model_, ": drift reference for '", input,
             "', which is not a numeric input of the model (numeric inputs: ", names.empty() ? "none" : names, ")");
  MS_EXPECTS(data.dtype() == t->dtype, kInvalidArgument, model_, ": drift reference for input '", input,
             "': expected datatype ", datatype_name(t->dtype), ", got ", datatype_name(data.dtype()));
  const Shape& s = data.shape();
  bool fits = s.size() == t->dims.size() + 1;
  for (size_t d = 0; fits && d < t->dims.size(); ++d) fits = t->dims[d] < 0 || t->dims[d] == s[d + 1];
  MS_EXPECTS(fits, kInvalidArgument, model_, ": drift reference for input '", input, "': expected rows of shape ",
             shape_str(t->dims), " (an array of shape [rows, ", shape_str(t->dims).substr(1), "), got ", shape_str(s));
  std::vector<double> values;
  extract(*t, data, false, std::numeric_limits<int64_t>::max(), values);
  std::lock_guard<std::mutex> lock(mutex_);
  MS_EXPECTS(!complete_, kInvalidArgument, model_, ": the drift reference is complete already");
  from_data_ = true;
  t->samples.insert(t->samples.end(), values.begin(), values.end());
  reference_seen_ = std::max(reference_seen_, static_cast<int64_t>(t->samples.size() / t->features));
}

void DriftMonitor::complete_reference() {
  std::lock_guard<std::mutex> lock(mutex_);
  MS_EXPECTS(!complete_, kInvalidArgument, model_, ": the drift reference is complete already");
  from_data_ = true;
  build_reference_locked();
}

void DriftMonitor::build_reference_locked() {
  std::vector<double> column;
  for (auto& t : tracked_) {
    const size_t features = static_cast<size_t>(t.features);
    const size_t n = t.samples.size() / features;
    t.edges.assign(features * kEdges, 0.0);
    t.reference.assign(features * kFineBins, 0);
    t.continuous.assign(features, 0);
    for (size_t f = 0; f < features; ++f) {
      column.clear();
      for (size_t r = 0; r < n; ++r) {
        const double v = t.samples[r * features + f];
        if (!std::isnan(v)) column.push_back(v);
      }
      if (column.empty()) continue;  // no reference: the feature is not reported
      std::sort(column.begin(), column.end());
      const size_t m = column.size();
      double* edges = t.edges.data() + f * kEdges;
      for (int k = 1; k < kFineBins; ++k) {  // the k-th percentile, nearest rank
        const size_t rank = (static_cast<size_t>(k) * m + kFineBins - 1) / kFineBins;  // ceil(k m / 100)
        edges[k - 1] = column[std::max<size_t>(rank, 1) - 1];
      }
      const auto distinct = std::unique(column.begin(), column.end()) - column.begin();
      t.continuous[f] = t.dtype != DataType::kBool && distinct > kContinuousDistinct;
      for (size_t r = 0; r < n; ++r) {
        const double v = t.samples[r * features + f];
        if (!std::isnan(v)) t.reference[f * kFineBins + bin_of(edges, v)] += 1;
      }
    }
  }
  complete_ = true;
  if (!from_data_) {
    // The window starts as the reference's own requests (Note [Input drift]).
    const size_t inputs = tracked_.size();
    std::vector<size_t> offset(inputs, 0);
    std::vector<const double*> rows(inputs);
    std::vector<int64_t> n(inputs);
    for (int64_t q = 0; q < reference_seen_; ++q) {
      for (size_t i = 0; i < inputs; ++i) {
        Tracked& t = tracked_[i];
        n[i] = q < static_cast<int64_t>(t.rows_of_request.size()) ? t.rows_of_request[q] : 0;
        rows[i] = t.samples.data() + offset[i];
        offset[i] += static_cast<size_t>(n[i]) * t.features;
      }
      count_locked(rows, n);
    }
  }
  for (auto& t : tracked_) {
    std::vector<double>().swap(t.samples);
    std::vector<uint32_t>().swap(t.rows_of_request);
  }
}

void DriftMonitor::count_locked(const std::vector<const double*>& rows, const std::vector<int64_t>& n) {
  for (size_t i = 0; i < tracked_.size(); ++i) {
    Tracked& t = tracked_[i];
    for (int64_t r = 0; r < n[i]; ++r) {
      const double* row = rows[i] + r * t.features;
      for (int f = 0; f < t.features; ++f) {
        if (std::isnan(row[f])) continue;
        const size_t b = static_cast<size_t>(f) * kFineBins + bin_of(t.edges.data() + f * kEdges, row[f]);
        t.current[b] += 1;
        t.window[b] += 1;
      }
    }
  }
  if (++current_requests_ == block_requests_) rotate_locked();
}

void DriftMonitor::rotate_locked() {
  const bool full = complete_blocks_ == kWindowBlocks;
  for (auto& t : tracked_) {
    t.blocks.push_back(std::move(t.current));
    t.current.assign(t.window.size(), 0);
    if (full) {
      const std::vector<uint32_t>& oldest = t.blocks.front();
      for (size_t b = 0; b < oldest.size(); ++b) t.window[b] -= oldest[b];
      t.blocks.pop_front();
    }
  }
  if (!full) ++complete_blocks_;
  current_requests_ = 0;
}

DriftMonitor::Snapshot DriftMonitor::snapshot() const {
  Snapshot s;
  for (const auto& t : tracked_) {
    s.inputs.push_back(t.name);
    if (t.summary) s.summarized.push_back(t.name);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  s.reference_complete = complete_;
  s.reference_from_data = from_data_;
  s.reference_requests = reference_seen_;
  s.window_requests = complete_ ? complete_blocks_ * block_requests_ + current_requests_ : 0;
  if (!complete_ || s.window_requests == 0) return s;
  for (const auto& t : tracked_) {
    for (int f = 0; f < t.features; ++f) {
      const uint64_t* ref = t.reference.data() + static_cast<size_t>(f) * kFineBins;
      const uint64_t* win = t.window.data() + static_cast<size_t>(f) * kFineBins;
      double ref_total = 0, win_total = 0;
      for (int b = 0; b < kFineBins; ++b) {
        ref_total += static_cast<double>(ref[b]);
        win_total += static_cast<double>(win[b]);
      }
      if (ref_total == 0 || win_total == 0) continue;
      Feature out{t.name, t.labels[f]};
      const int per_bin = kFineBins / kBins;
      for (int c = 0; c < kBins; ++c) {
        double r = 0, w = 0;
        for (int b = c * per_bin; b < (c + 1) * per_bin; ++b) {
          r += static_cast<double>(ref[b]);
          w += static_cast<double>(win[b]);
        }
        if (r == 0 && w == 0) continue;
        r = std::max(r / ref_total, kFloor);
        w = std::max(w / win_total, kFloor);
        out.psi += (w - r) * std::log(w / r);
      }
      out.continuous = t.continuous[f] != 0;
      if (out.continuous) {
        double r = 0, w = 0;
        for (int b = 0; b < kFineBins; ++b) {
          r += static_cast<double>(ref[b]) / ref_total;
          w += static_cast<double>(win[b]) / win_total;
          out.ks = std::max(out.ks, std::abs(r - w));
        }
      }
      s.features.push_back(std::move(out));
    }
  }
  return s;
}

}  // namespace modelserve
