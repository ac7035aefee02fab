// DriftMonitor: how far a model's inputs have moved from a reference, per feature.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "sched/request.h"

namespace modelserve {

// A numeric input to watch: dims are those of one row (without the batch dimension when the
// model batches; the whole tensor when it does not); -1 is a variable dimension.
struct DriftInputSpec {
  std::string name;
  DataType dtype = DataType::kFp32;
  Shape dims;
};

struct DriftOptions {
  int64_t reference_requests = 1000;  // the first requests form the reference (without a file)
  int64_t window_requests = 1000;     // the sliding window the reference is compared with
  int64_t max_features = 64;          // wider rows are tracked by their mean and std
  int64_t rows_per_request = 8;       // at most this many rows of a request are counted
  int64_t summary_elements = 4096;    // a wide row's mean and std use at most this many elements
};

// Note [Input drift]
// ~~~~~~~~~~~~~~~~~~
// What is compared. Each numeric input of a model is tracked per feature when a row has a fixed
// shape of at most max_features elements (feature "i" is the row's flat element i), otherwise by
// two summary features per row, its "mean" and "std" (over at most summary_elements elements,
// evenly strided). BYTES inputs are not tracked. A request contributes at most rows_per_request
// rows (evenly strided): a request is what the window counts, and a 64-row request must not cost
// 64 times a 1-row one.
//
// The reference. The first reference_requests requests after the version became READY (warmup
// is not traffic), or the rows of a reference data file. Once complete, each feature's values
// are sorted and cut at their percentiles into 100 fine bins (99 edges; a value v falls in the bin
// numbered by the count of edges below v, so ties and discrete features put whole values in one
// bin). The reference's own counts per fine bin are kept; its values are then dropped.
//
// The window. Requests after (and, for a reference taken from traffic, including) the reference
// are counted per fine bin into blocks of window_requests / 10 requests; the window is the last
// ten complete blocks plus the one filling, so it holds between window_requests and 1.1 x
// window_requests requests once warm and slides one block at a time. A reference taken from
// traffic seeds the window with itself, so drift is reported (and ~0) from the moment the
// reference completes; a file's reference waits for the first request.
//
// The statistics, computed when read (snapshot), never on the request path:
//   - PSI, the population stability index over 10 bins at the reference's deciles (each ten
//     fine bins): sum over bins of (w - r) ln(w / r), with the window's and the reference's
//     proportions floored at 1e-4 (a bin empty on both sides adds nothing). Below 0.1 is usually
//     read as stable, above 0.25 as a shift.
//   - KS, the Kolmogorov-Smirnov statistic, for continuous features (more than 20 distinct
//     reference values): the largest difference of the two cumulative distributions at the 99
//     percentile edges, which under-reads the exact statistic by at most the 1% of reference
//     mass a fine bin holds.
// NaN values are skipped (in the reference and the window alike).
//
// Cost: feature extraction runs on the instance thread that finished the batch, before its
// requests complete (a caller reusing its input array must not race the read), outside the lock;
// binning (a binary search over 99 edges per value) and the block rotation under it, once per
// batch.
class DriftMonitor {
 public:
  static constexpr int kFineBins = 100;
  static constexpr int kBins = 10;

  // `model` names the version in messages. Inputs whose datatype is BYTES are ignored.
  DriftMonitor(std::string model, std::vector<DriftInputSpec> inputs, bool batched, DriftOptions options);
  DriftMonitor(const DriftMonitor&) = delete;
  DriftMonitor& operator=(const DriftMonitor&) = delete;

  // Counts the inputs of a batch's requests: into the reference until it is complete, then into
  // the window. Thread-safe.
  void observe(const std::vector<RequestPtr>& requests);

  // A reference from data instead of traffic: rows of one input (shape [rows, dims...]), then
  // complete_reference(). Requests observed meanwhile are not part of it. Throws Error naming
  // the input when the shape or datatype does not fit.
  void add_reference(const std::string& input, const Tensor& rows);
  void complete_reference();

  struct Feature {
    std::string input;
    std::string feature;  // "0", "1", ... or "mean" / "std"
    double psi = 0;
    double ks = 0;
    bool continuous = false;  // KS is meaningful
  };
  struct Snapshot {
    bool reference_complete = false;
    bool reference_from_data = false;
    int64_t reference_requests = 0;  // counted so far (rows, for a reference from data)
    int64_t window_requests = 0;
    std::vector<std::string> inputs;   // tracked
    std::vector<std::string> summarized;  // tracked by mean and std
    std::vector<Feature> features;     // empty until the reference is complete and the window holds a request
  };
  Snapshot snapshot() const;
  const DriftOptions& options() const { return options_; }

 private:
  struct Tracked {
    std::string name;
    DataType dtype;
    Shape dims;
    bool summary = false;
    int64_t row_elements = -1;  // fixed elements per row, -1 when a dimension is variable
    int features = 0;
    std::vector<std::string> labels;
    // Guarded by mutex_:
    std::vector<double> samples;             // reference rows x features, until the reference is built
    std::vector<uint32_t> rows_of_request;   // reference taken from traffic: rows sampled per request
    std::vector<double> edges;               // features x (kFineBins - 1)
    std::vector<uint64_t> reference;         // features x kFineBins
    std::vector<uint8_t> continuous;         // per feature
    std::deque<std::vector<uint32_t>> blocks;  // complete blocks, oldest first: features x kFineBins
    std::vector<uint32_t> current;           // the block filling
    std::vector<uint64_t> window;            // sum of blocks and current
  };

  // The features of at most `max_rows` rows of `tensor` (evenly strided), appended to `out`
  // (rows x features); returns the rows taken. Nothing for a tensor that is not host memory of
  // the tracked datatype and row size. `whole_is_row`: the tensor is one row (a model that does
  // not batch).
  int64_t extract(const Tracked& t, const Tensor& tensor, bool whole_is_row, int64_t max_rows,
                  std::vector<double>& out) const;
  void build_reference_locked();
  // Counts one request's extracted rows (per tracked input) into the window.
  void count_locked(const std::vector<const double*>& rows, const std::vector<int64_t>& n);
  void rotate_locked();

  const std::string model_;
  const bool batched_;
  const DriftOptions options_;
  const int64_t block_requests_;  // window_requests / 10, at least 1
  std::vector<Tracked> tracked_;  // the vector is fixed at construction; members as marked

  mutable std::mutex mutex_;
  bool complete_ = false;          // guarded by mutex_
  bool from_data_ = false;         // guarded by mutex_
  int64_t reference_seen_ = 0;     // guarded by mutex_: requests (or data rows) in the reference
  int64_t current_requests_ = 0;   // guarded by mutex_: requests in the block filling
  int64_t complete_blocks_ = 0;    // guarded by mutex_: each of block_requests_ requests
};

}  // namespace modelserve
