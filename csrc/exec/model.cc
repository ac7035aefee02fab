#include "exec/model.h"

namespace modelserve {

namespace {
BatcherConfig with_label(BatcherConfig b, const ModelConfig& c) {
  b.model = c.label();
  return b;
}
}  // namespace

Model::Model(ModelConfig config, BackendFactory factory)
    : config_(std::move(config)),
      batcher_(with_label(config_.batching, config_)),
      executor_(ExecutorConfig{config_.label(), config_.batching.max_batch_size, config_.device}, std::move(factory),
                [this](int64_t rows, int64_t compute_ns) { batcher_.notify(rows, compute_ns); }) {
  config_.batching.model = config_.label();
  batcher_.start(&executor_);
  try {
    executor_.set_instance_count(config_.instance_count);
  } catch (...) {
    batcher_.stop(false);
    executor_.stop();
    throw;
  }
}

Model::~Model() { shutdown(false); }

void Model::check_request(const Request& r) const {
  const std::string& model = config_.batching.model;
  const bool batching = config_.batching.max_batch_size > 0;
  if (!config_.inputs.empty()) {
    for (const auto& in : r.inputs) {
      const TensorSpec* spec = nullptr;
      for (const auto& s : config_.inputs) {
        if (s.name == in.name) spec = &s;
      }
      if (!spec) {
        std::string names;
        for (const auto& s : config_.inputs) names += (names.empty() ? "'" : ", '") + s.name + "'";
        MS_FAIL(kInvalidArgument, model, ": unexpected input '", in.name, "'; the model's inputs are ", names);
      }
      MS_EXPECTS(in.tensor.dtype() == spec->dtype, kInvalidArgument, model, ": input '", in.name,
                 "': expected datatype ", datatype_name(spec->dtype), ", got ", datatype_name(in.tensor.dtype()));
      const Shape& shape = in.tensor.shape();
      const size_t skip = batching ? 1 : 0;
      bool ok = shape.size() == spec->dims.size() + skip;
      for (size_t i = 0; ok && i < spec->dims.size(); ++i) {
        ok = spec->dims[i] == -1 || spec->dims[i] == shape[i + skip];
      }
      MS_EXPECTS(ok, kInvalidArgument, model, ": input '", in.name, "': expected shape ",
                 batching ? "[-1, " + shape_str(spec->dims).substr(1) : shape_str(spec->dims),
                 batching ? " (batch dimension first)" : "", ", got ", shape_str(shape));
    }
    for (const auto& s : config_.inputs) {
      MS_EXPECTS(find_tensor(r.inputs, s.name) != nullptr, kInvalidArgument, model, ": missing input '", s.name,
                 "' (", datatype_name(s.dtype), " ", shape_str(s.dims), ")");
    }
  }
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      MS_EXPECTS(r.inputs[i].name != r.inputs[j].name, kInvalidArgument, model, ": input '", r.inputs[i].name,
                 "' given twice");
    }
  }
  if (!config_.outputs.empty()) {
    for (const auto& name : r.requested_outputs) {
      bool known = false;
      for (const auto& s : config_.outputs) known = known || s.name == name;
      if (!known) {
        std::string names;
        for (const auto& s : config_.outputs) names += (names.empty() ? "'" : ", '") + s.name + "'";
        MS_FAIL(kInvalidArgument, model, ": unknown output '", name, "' requested; the model's outputs are ", names);
      }
    }
  }
}

uint64_t Model::submit(RequestPtr& request) {
  try {
    return submit_checked(request);
  } catch (const Error& e) {
    executor_.record_failure(e.code());  // refused requests count as failures, by code
    throw;
  }
}

uint64_t Model::submit_checked(RequestPtr& request) {
  MS_EXPECTS(!shut_down_, kUnavailable, config_.batching.model, ": not accepting requests (unloading)");
  check_request(*request);
  const uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  request->id = id;
  // Failures in the queue (timeout, cancel, shutdown) count against the model.
  auto completion = std::move(request->completion);
  request->completion = [this, completion = std::move(completion)](Response&& r) {
    if (!r.status.is_ok() && r.batch_size == 0) executor_.record_failure(r.status.code);
    if (completion) completion(std::move(r));
  };
  batcher_.enqueue(request);
  return id;
}

bool Model::cancel(uint64_t request_id) { return batcher_.cancel(request_id); }

void Model::set_instance_count(int count) { executor_.set_instance_count(count); }

int Model::instance_count() const { return executor_.instance_count(); }

void Model::set_batching(BatcherConfig batching) {
  MS_EXPECTS(batching.max_batch_size == config_.batching.max_batch_size, kInvalidArgument,
             config_.batching.model, ": max_batch_size cannot change while serving (", config_.batching.max_batch_size,
             " -> ", batching.max_batch_size, "); load a new version instead");
  batcher_.set_config(batching);
}

BatcherConfig Model::batching() const { return batcher_.config(); }

// See Note [Drain].
void Model::shutdown(bool drain, std::chrono::nanoseconds drain_timeout) {
  if (shut_down_.exchange(true)) {
    return;
  }
  std::string reason;
  if (drain && executor_.instance_count() == 0 && batcher_.queued() > 0) {
    try {
      executor_.set_instance_count(1);
    } catch (const std::exception& e) {
      reason = "no instance could start to drain the queue: " + std::string(e.what());
      drain = false;
    }
  }
  batcher_.stop(drain, drain_timeout, reason);
  executor_.stop();
}

ModelStats Model::stats() const {
  ModelStats s = executor_.stats();
  s.queued = batcher_.queued();
  const LatencyTarget::Plan plan = batcher_.plan();
  s.batch_rows_planned = plan.rows;
  s.batch_cap = plan.cap;
  s.batch_delay_us = plan.delay_us;
  const DynamicBatcher::LookAheadStats ahead = batcher_.lookahead_stats();
  s.lookahead_prepared = ahead.prepared;
  s.lookahead_used = ahead.used;
  s.lookahead_dropped = ahead.dropped;
  return s;
}

}  // namespace modelserve
