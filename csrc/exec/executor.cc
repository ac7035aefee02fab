#include "exec/executor.h"

#include <algorithm>
#include <atomic>

#include "cuda/cuda_runtime.h"
#include "exec/gather.h"
#include "memory/default_resources.h"

namespace modelserve {

namespace {
std::atomic<uint64_t> next_batch_id{1};  // unique across every model of the process

int64_t elapsed_ns(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
}

Status status_of(const std::exception& e, const std::string& where) {
  if (const auto* err = dynamic_cast<const Error*>(&e)) {
    if (err->code() != StatusCode::kInternal) return {err->code(), where + ": " + err->what()};
  }
  return {StatusCode::kInternal, where + ": backend failed: " + e.what()};
}
}  // namespace

// Events of one batch on a GPU instance; recycled through Instance::spare_events.
struct EventSet {
  explicit EventSet(int device) : inputs_ready(device), compute_done(device), outputs_ready(device) {}
  cuda::Event inputs_ready, compute_done, outputs_ready;
};

struct Executor::InFlight {
  Batch batch;
  TensorList outputs;  // pinned host copies, valid once events->outputs_ready has fired
  TensorList device_buffers;  // kept alive until the copies are done
  std::unique_ptr<EventSet> events;
  RequestTimings timings;
  Clock::time_point start;  // the instance started the batch
  Clock::time_point infer_end;
};

struct Executor::Instance {
  int index = 0;
  Device device;
  std::unique_ptr<Backend> backend;
  bool pipelined = false;  // GPU instance whose backend takes device memory
  size_t depth = 1;        // batches it holds at once (2 when pipelined)
  std::shared_ptr<MemoryResource> input_resource;  // where CPU batches are gathered

  // Guarded by Executor::mutex_.
  std::deque<Batch> work;
  size_t busy = 0;         // batches taken from `work` and not yet finished
  bool retiring = false;
  bool recover_pending = false;  // a caller's run left the backend to recover (Backend::needs_recovery)
  std::condition_variable cv;
  std::thread thread;

  // Pipelined instances only; used by the worker and completer threads.
  std::unique_ptr<cuda::Stream> h2d, compute, d2h;
  std::mutex completer_mutex;
  std::condition_variable completer_cv;
  std::deque<InFlight> completing;  // guarded by completer_mutex
  bool completer_stop = false;      // guarded by completer_mutex
  std::vector<std::unique_ptr<EventSet>> spare_events;  // guarded by completer_mutex
  std::thread completer_thread;

  size_t load() const { return work.size() + busy; }
};

Executor::Executor(ExecutorConfig config, BackendFactory factory, std::function<void(int64_t, int64_t)> on_slot_free)
    : config_(std::move(config)), factory_(std::move(factory)), on_slot_free_(std::move(on_slot_free)) {
  if (config_.device.kind == DeviceKind::kCuda) {
    MS_EXPECTS(config_.device.id < cuda::device_count(), kUnavailable, config_.model, ": instances on ",
               config_.device.str(), " requested but ", cuda::device_count(), " CUDA devices are available");
  }
}

Executor::~Executor() { stop(); }

std::string Executor::where(const Instance& instance) const {
  return config_.model + " instance " + std::to_string(instance.index) + " (" + instance.device.str() + ")";
}

void Executor::set_instance_count(int count) {
  MS_EXPECTS(count >= 0, kInvalidArgument, config_.model, ": instance count must be >= 0, got ", count);
  std::lock_guard<std::mutex> resize(resize_mutex_);
  std::vector<std::unique_ptr<Instance>> retired;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    MS_EXPECTS(!stopping_, kUnavailable, config_.model, ": executor is stopped");
    int current = static_cast<int>(instances_.size());
    if (count < current) {
      // Retire the least loaded instances first (idle ones before busy ones).
      std::stable_sort(instances_.begin(), instances_.end(),
                       [](const auto& a, const auto& b) { return a->load() > b->load(); });
      for (int i = count; i < current; ++i) {
        instances_[i]->retiring = true;
        instances_[i]->cv.notify_all();
        retired.push_back(std::move(instances_[i]));
      }
      instances_.resize(count);
      std::sort(instances_.begin(), instances_.end(),
                [](const auto& a, const auto& b) { return a->index < b->index; });
    }
  }
  for (auto& inst : retired) inst->thread.join();  // each finishes the batches it holds
  retired.clear();                                  // backends are destroyed here

  int current;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    current = static_cast<int>(instances_.size());
  }
  for (int i = current; i < count; ++i) {
    auto inst = std::make_unique<Instance>();
    inst->index = i;
    inst->device = config_.device;
    inst->backend = factory_(InstanceInfo{i, config_.device});
    MS_EXPECTS(inst->backend != nullptr, kInternal, config_.model, ": backend factory returned no backend");
    inst->input_resource = inst->backend->input_resource();
    if (!inst->input_resource) inst->input_resource = host_pool();
    if (inst->device.kind == DeviceKind::kCuda && inst->backend->wants_device_memory()) {
      inst->pipelined = true;
      inst->depth = 2;
      inst->h2d = std::make_unique<cuda::Stream>(inst->device.id);
      inst->compute = std::make_unique<cuda::Stream>(inst->device.id);
      inst->d2h = std::make_unique<cuda::Stream>(inst->device.id);
      inst->completer_thread = std::thread([this, p = inst.get()] { completer(p); });
    }
    Instance* raw = inst.get();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      instances_.push_back(std::move(inst));
    }
    raw->thread = std::thread([this, raw] { worker(raw); });
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.instances = count;
  }
  if (on_slot_free_) on_slot_free_(0, 0);
}

int Executor::instance_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(instances_.size());
}

void Executor::stop() {
  std::lock_guard<std::mutex> resize(resize_mutex_);
  std::vector<std::unique_ptr<Instance>> all;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& inst : instances_) {
      inst->retiring = true;
      inst->cv.notify_all();
    }
    all = std::move(instances_);
    instances_.clear();
  }
  for (auto& inst : all) inst->thread.join();
  all.clear();         // the backends, before the factory that made them
  factory_ = nullptr;  // see factory_'s comment: no instance can start after stop()
}

size_t Executor::free_slots() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t slots = 0;
  for (const auto& inst : instances_) {
    if (!inst->retiring && inst->load() < inst->depth) slots += inst->depth - inst->load();
  }
  return slots;
}

// Note [Count before publishing]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// stats_.in_flight is unsigned and finish() subtracts a batch's requests from it. Once a batch is
// in an instance's `work` queue, that instance may run and finish it before this thread takes
// another step, so the batch is counted before it is published: under mutex_ (which orders the
// publication), then stats_mutex_ (lock order mutex_ -> stats_mutex_; nothing takes them the
// other way round). A reader of stats() therefore sees in_flight >= 0 at every instant.
bool Executor::dispatch(Batch& batch) {
  const size_t n = batch.requests.size();
  std::lock_guard<std::mutex> lock(mutex_);
  // The least loaded instance with a free slot; if a resize took the slot the batcher counted,
  // any live instance (one batch over its depth is harmless).
  Instance* best = nullptr;
  for (const auto& inst : instances_) {
    if (inst->retiring) continue;
    const bool free = inst->load() < inst->depth;
    const bool best_free = best && best->load() < best->depth;
    if (!best || (free && !best_free) || (free == best_free && inst->load() < best->load())) best = inst.get();
  }
  if (!best) return false;
  {
    std::lock_guard<std::mutex> stats_lock(stats_mutex_);
    stats_.in_flight += n;
  }
  best->work.push_back(std::move(batch));
  best->cv.notify_one();
  return true;
}

bool Executor::claim(Batch& batch, Claim& claim) {
  const size_t n = batch.requests.size();
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return false;
  Instance* idle = nullptr;
  for (const auto& inst : instances_) {
    if (!inst->retiring && !inst->pipelined && inst->device.kind == DeviceKind::kCpu && inst->load() == 0) {
      idle = inst.get();
      break;
    }
  }
  if (!idle) return false;
  {
    std::lock_guard<std::mutex> stats_lock(stats_mutex_);  // Note [Count before publishing]
    stats_.in_flight += n;
  }
  idle->busy += 1;
  claim.instance = idle;
  claim.batch = std::move(batch);
  return true;
}

size_t Executor::instances() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t n = 0;
  for (const auto& inst : instances_) n += inst->retiring ? 0 : 1;
  return n;
}

void Executor::run_claimed(Claim& claim) { run_batch(*static_cast<Instance*>(claim.instance), claim.batch); }

void Executor::worker(Instance* inst) {
  if (inst->device.kind == DeviceKind::kCuda) cuda::set_device(inst->device.id);
  while (true) {
    Batch batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // A retiring instance exits once nothing of it runs (a caller may be running a batch on
      // it: Note [Caller runs]); its own batches it runs first.
      inst->cv.wait(lock, [&] {
        return !inst->work.empty() || inst->recover_pending || (inst->retiring && inst->busy == 0);
      });
      if (inst->recover_pending) {
        // A caller ran the failed batch (Note [Caller runs]); its slot is still held for this.
        inst->recover_pending = false;
        lock.unlock();
        inst->backend->recover();
        lock.lock();
        inst->busy -= 1;
        lock.unlock();
        if (on_slot_free_) on_slot_free_(0, 0);
        continue;
      }
      if (inst->work.empty()) break;
      batch = std::move(inst->work.front());
      inst->work.pop_front();
      inst->busy += 1;
    }
    if (inst->pipelined) {
      run_batch_on_device(*inst, batch);
    } else {
      run_batch(*inst, batch);
    }
  }
  if (inst->pipelined) {
    {
      std::lock_guard<std::mutex> lock(inst->completer_mutex);
      inst->completer_stop = true;
    }
    inst->completer_cv.notify_all();
    inst->completer_thread.join();
  }
}

std::vector<std::string> Executor::requested_union(const Batch& batch) const {
  std::vector<std::string> names;
  for (const auto& r : batch.requests) {
    if (r->requested_outputs.empty()) return {};  // someone wants everything
    for (const auto& name : r->requested_outputs) {
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
  }
  return names;
}

TensorList Executor::gather_inputs(const Batch& batch, const std::shared_ptr<MemoryResource>& resource,
                                   StreamView stream) const {
  std::vector<const TensorList*> lists(batch.requests.size());
  for (size_t i = 0; i < batch.requests.size(); ++i) lists[i] = &batch.requests[i]->inputs;
  return gather_lists(lists, resource, stream);
}

TensorList Executor::gather_ahead(const std::vector<TensorList>& inputs) {
  // Host instances gather into the host pool; device instances gather into pinned memory on
  // their own streams, which a look-ahead cannot know in advance.
  if (config_.device.kind != DeviceKind::kCpu || inputs.empty()) return {};
  std::vector<const TensorList*> lists(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) lists[i] = &inputs[i];
  return gather_lists(lists, host_pool(), {});
}

TensorList Executor::gather_lists(const std::vector<const TensorList*>& lists,
                                  const std::shared_ptr<MemoryResource>& resource, StreamView stream) {
  const TensorList& first = *lists.front();
  TensorList inputs;
  inputs.reserve(first.size());
  std::vector<const Tensor*> parts(lists.size());
  for (const auto& in : first) {
    for (size_t i = 0; i < lists.size(); ++i) {
      const NamedTensor* t = find_tensor(*lists[i], in.name);
      parts[i] = &t->tensor;  // the batcher only batches requests with the same input names
    }
    Tensor t = gather(parts, resource, stream);
    if (!t.device().host_accessible() && resource->device().host_accessible()) {
      t = copy_to(t, resource);  // a lone device-resident input on a host instance
    }
    inputs.push_back({in.name, std::move(t)});
  }
  return inputs;
}

void Executor::run_batch(Instance& inst, Batch& batch) {
  RequestTimings timings;
  TensorList outputs;
  Status failure;
  const auto start = Clock::now();
  auto t0 = start, t1 = start;
  try {
    // Gathered ahead while the instance ran its last batch (Note [Look-ahead batches]), or now.
    TensorList inputs =
        batch.gathered.empty() ? gather_inputs(batch, inst.input_resource, {}) : std::move(batch.gathered);
    t0 = Clock::now();
    const auto requested = requested_union(batch);
    ExecuteContext ctx{inputs, requested, batch.batch_size, {}, host_pool(), inst.index};
    outputs = inst.backend->execute(ctx);
    t1 = Clock::now();
  } catch (const std::exception& e) {
    failure = status_of(e, where(inst));
    t0 = t1 = Clock::now();
  }
  timings.compute_input_ns = elapsed_ns(start, t0);
  timings.compute_infer_ns = elapsed_ns(t0, t1);
  finish(inst, batch, outputs, timings, start, failure);
}

void Executor::run_batch_on_device(Instance& inst, Batch& batch) {
  InFlight job;
  {
    std::lock_guard<std::mutex> lock(inst.completer_mutex);
    if (!inst.spare_events.empty()) {
      job.events = std::move(inst.spare_events.back());
      inst.spare_events.pop_back();
    }
  }
  Status failure;
  const auto start = job.start = Clock::now();
  auto t0 = start;
  // Declared out here so that, on failure, they outlive the stream synchronisation below: the
  // device may still be reading them.
  TensorList host_inputs, inputs;
  try {
    if (!job.events) job.events = std::make_unique<EventSet>(inst.device.id);
    const StreamView h2d = inst.h2d->view(), compute = inst.compute->view(), d2h = inst.d2h->view();
    auto device = device_pool(inst.device.id);
    auto pinned = pinned_pool();
    // Gather on the host into pinned memory, then one asynchronous copy per input.
    host_inputs = gather_inputs(batch, pinned, {});
    for (auto& in : host_inputs) {
      Tensor t = in.tensor.device().kind == DeviceKind::kCuda ? in.tensor : copy_to(in.tensor, device, h2d);
      inputs.push_back({in.name, std::move(t)});
    }
    job.events->inputs_ready.record(h2d);
    job.events->inputs_ready.block(compute);
    t0 = Clock::now();
    const auto requested = requested_union(batch);
    ExecuteContext ctx{inputs, requested, batch.batch_size, compute, device, inst.index};
    TensorList outputs = inst.backend->execute(ctx);
    job.events->compute_done.record(compute);
    job.infer_end = Clock::now();
    job.events->compute_done.block(d2h);
    for (auto& out : outputs) {
      Tensor host = out.tensor.device().host_accessible() ? out.tensor : copy_to(out.tensor, pinned, d2h);
      job.outputs.push_back({out.name, std::move(host)});
      if (!out.tensor.device().host_accessible()) out.tensor.buffer()->set_release_stream(d2h);
      job.device_buffers.push_back(std::move(out));
    }
    job.events->outputs_ready.record(d2h);
    for (auto& in : inputs) in.tensor.buffer()->set_release_stream(d2h);
    for (auto& in : host_inputs) in.tensor.buffer()->set_release_stream(h2d);
  } catch (const std::exception& e) {
    failure = status_of(e, where(inst));
    t0 = job.infer_end = Clock::now();
    try {  // a rare path: wait for whatever was enqueued before the buffers go back to the pools
      inst.h2d->synchronize();
      inst.compute->synchronize();
      inst.d2h->synchronize();
    } catch (const Error&) {
    }
  }
  job.timings.compute_input_ns = elapsed_ns(start, t0);
  job.timings.compute_infer_ns = elapsed_ns(t0, job.infer_end);
  if (!failure.is_ok()) {
    job.outputs.clear();
    finish(inst, batch, job.outputs, job.timings, start, failure);
    if (job.events) {
      std::lock_guard<std::mutex> lock(inst.completer_mutex);
      inst.spare_events.push_back(std::move(job.events));
    }
    return;
  }
  job.batch = std::move(batch);
  {
    std::lock_guard<std::mutex> lock(inst.completer_mutex);
    inst.completing.push_back(std::move(job));
  }
  inst.completer_cv.notify_one();
}

void Executor::completer(Instance* inst) {
  cuda::set_device(inst->device.id);
  while (true) {
    InFlight job;
    {
      std::unique_lock<std::mutex> lock(inst->completer_mutex);
      inst->completer_cv.wait(lock, [&] { return !inst->completing.empty() || inst->completer_stop; });
      if (inst->completing.empty()) return;
      job = std::move(inst->completing.front());
      inst->completing.pop_front();
    }
    const auto start = Clock::now();
    Status failure;
    try {
      job.events->outputs_ready.synchronize();
    } catch (const std::exception& e) {
      failure = status_of(e, where(*inst));
    }
    for (auto& out : job.outputs) out.tensor.buffer()->set_release_stream({});  // the host owns them now
    job.device_buffers.clear();
    job.timings.compute_output_ns = elapsed_ns(start, Clock::now());
    finish(*inst, job.batch, job.outputs, job.timings, job.start, failure);
    std::lock_guard<std::mutex> lock(inst->completer_mutex);
    inst->spare_events.push_back(std::move(job.events));
  }
}

void Executor::finish(Instance& inst, Batch& batch, const TensorList& outputs, const RequestTimings& batch_timings,
                      Clock::time_point start, const Status& failure) {
  const auto scatter_start = Clock::now();
  const bool batching = config_.max_batch_size > 0;
  BatchTrace trace;  // Note [Request spans]
  trace.batch_id = next_batch_id.fetch_add(1, std::memory_order_relaxed);
  trace.dispatch_ns = Request::steady_ns(batch.dispatch_time);
  trace.compute_start_ns = Request::steady_ns(start);
  trace.batch_requests = static_cast<uint32_t>(batch.requests.size());
  for (const auto& r : batch.requests) trace.batch_traced += r->traced ? 1 : 0;
  uint64_t ok = 0;
  std::map<std::string, uint64_t> failed;
  std::vector<Response> responses(batch.requests.size());
  int64_t row = 0;
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    Request& r = *batch.requests[i];
    Response& resp = responses[i];
    resp.batch_size = batch.batch_size;
    resp.status = failure;
    if (failure.is_ok()) {
      try {
        auto take = [&](const NamedTensor& out) {
          if (!batching) {
            resp.outputs.push_back(out);
            return;
          }
          const Shape& s = out.tensor.shape();
          MS_EXPECTS(!s.empty() && s[0] == batch.batch_size, kInternal, where(inst), ": backend returned output '",
                     out.name, "' with shape ", shape_str(s), " for a batch of ", batch.batch_size,
                     "; the first dimension must be the batch size");
          resp.outputs.push_back({out.name, out.tensor.slice_rows(row, row + r.batch_size)});
        };
        if (r.requested_outputs.empty()) {
          for (const auto& out : outputs) take(out);
        } else {
          for (const auto& name : r.requested_outputs) {
            const NamedTensor* out = find_tensor(outputs, name);
            MS_EXPECTS(out != nullptr, kInternal, where(inst), ": backend did not return the requested output '",
                       name, "'");
            take(*out);
          }
        }
      } catch (const Error& e) {
        resp.outputs.clear();
        resp.status = e.status();
      }
    }
    row += r.batch_size;
  }
  const auto scatter_end = Clock::now();
  RequestTimings t = batch_timings;
  t.compute_output_ns += elapsed_ns(scatter_start, scatter_end);
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    Request& r = *batch.requests[i];
    responses[i].timings = t;
    responses[i].timings.queue_ns = elapsed_ns(r.enqueue_time, batch.dispatch_time);
    responses[i].trace = trace;
    responses[i].trace.enqueue_ns = Request::steady_ns(r.enqueue_time);
    if (r.keep_inputs) responses[i].inputs = r.inputs;
    if (responses[i].status.is_ok()) {
      ++ok;
    } else {
      failed[status_code_name(responses[i].status.code)] += 1;
    }
  }
  std::shared_ptr<DriftMonitor> drift;
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    drift = drift_;
    stats_.success_count += ok;
    for (const auto& [code, n] : failed) {
      stats_.failure_count += n;
      stats_.failures[code] += n;
    }
    stats_.in_flight -= batch.requests.size();
    stats_.execution_count += 1;
    stats_.inference_count += static_cast<uint64_t>(batch.batch_size);
    auto& b = stats_.batch_stats[batch.batch_size];
    b.count += 1;
    b.compute_input_ns += t.compute_input_ns;
    b.compute_infer_ns += t.compute_infer_ns;
    b.compute_output_ns += t.compute_output_ns;
    const int64_t compute_ns = t.compute_input_ns + t.compute_infer_ns + t.compute_output_ns;
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      if (!responses[i].status.is_ok()) continue;
      stats_.queue_hist.observe(responses[i].timings.queue_ns);
      stats_.compute_hist.observe(compute_ns);
      stats_.request_hist.observe(elapsed_ns(batch.requests[i]->enqueue_time, scatter_end));
      stats_.queue_ns += responses[i].timings.queue_ns;
      stats_.compute_input_ns += t.compute_input_ns;
      stats_.compute_infer_ns += t.compute_infer_ns;
      stats_.compute_output_ns += t.compute_output_ns;
    }
  }
  auto free_slot = [&] {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      inst.busy -= 1;
      if (inst.retiring && inst.busy == 0) inst.cv.notify_all();  // its thread may exit now
    }
    if (on_slot_free_) {
      on_slot_free_(failure.is_ok() ? batch.batch_size : 0,
                    t.compute_input_ns + t.compute_infer_ns + t.compute_output_ns);
    }
  };
  // The slot frees before the completions run, so the batcher forms the next batch meanwhile;
  // an instance that must recover first (Backend::needs_recovery) stays busy until it has.
  const bool recover = !failure.is_ok() && inst.backend->needs_recovery();
  if (!recover) free_slot();
  // Before the completions: a caller may reuse its input arrays once its request completes.
  if (drift) drift->observe(batch.requests);
  for (size_t i = 0; i < batch.requests.size(); ++i) batch.requests[i]->complete(std::move(responses[i]));
  batch.requests.clear();
  if (recover && std::this_thread::get_id() == inst.thread.get_id()) {
    inst.backend->recover();
    free_slot();
  } else if (recover) {
    // A caller's thread (Note [Caller runs]) returns its error now; the instance's own thread
    // recovers, holding the slot until it has.
    std::lock_guard<std::mutex> lock(mutex_);
    inst.recover_pending = true;
    inst.cv.notify_all();
  }
}

void Executor::record_failure(StatusCode code) {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.failure_count += 1;
  stats_.failures[status_code_name(code)] += 1;
}

void Executor::set_drift_monitor(std::shared_ptr<DriftMonitor> monitor) {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  drift_ = std::move(monitor);
}

ModelStats Executor::stats() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return stats_;
}

}  // namespace modelserve
