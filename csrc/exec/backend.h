// Backend: how an instance runs a batch. The executor knows nothing about queues; the batcher
// nothing about backends. Backends know nothing about requests: they see one batch of inputs.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "memory/memory_resource.h"
#include "tensor/tensor.h"

namespace modelserve {

// Everything a backend gets for one batch.
struct ExecuteContext {
  const TensorList& inputs;                      // gathered: first dimension = batch_size if batching
  const std::vector<std::string>& requested_outputs;  // union over the batch; empty = all
  int64_t batch_size;                            // rows (1 for a model that does not batch)
  StreamView stream;                             // null on a CPU instance
  std::shared_ptr<MemoryResource> output_resource;  // where outputs should live (pooled)
  int instance;                                  // index of the running instance

  // A new output tensor from output_resource, released on this batch's stream.
  Tensor allocate(DataType dtype, Shape shape, size_t byte_size = 0) const {
    return Tensor::empty(dtype, std::move(shape), output_resource, stream, byte_size);
  }
};

// One instance's model. An instance calls execute from its own thread only, one batch at a time,
// so a Backend needs no locking of its own; instances of the same model have separate Backends.
// Exceptions from execute fail only the requests of that batch (INTERNAL with the message;
// modelserve::Error keeps its own code).
class Backend {
 public:
  virtual ~Backend() = default;
  // Where execute expects its inputs and returns its outputs: host memory (cpu) or the
  // instance's GPU. Host backends on GPU instances are fed from host memory.
  virtual bool wants_device_memory() const { return false; }
  // Outputs: the requested ones (all when none are requested), each with first dimension
  // batch_size when the model batches.
  virtual TensorList execute(const ExecuteContext& ctx) = 0;

  // Where the executor gathers this backend's host inputs: null for its host pool. A backend that
  // hands its inputs to another process names shared memory here (Note [Process instances]).
  virtual std::shared_ptr<MemoryResource> input_resource() const { return nullptr; }
  // True after a failed batch left this backend unable to run the next one (its worker process
  // died). The executor then calls recover() on the instance's thread once the batch's requests
  // have completed, while the instance still counts as busy, so that meanwhile the batcher gives
  // batches to the other instances. recover() must not throw; a backend it could not repair fails
  // its next batch with the reason.
  virtual bool needs_recovery() const { return false; }
  virtual void recover() {}
};

struct InstanceInfo {
  int index;
  Device device;  // cpu, or cuda:N for a GPU instance
};

// Creates one Backend per instance; called on the thread that adds instances.
using BackendFactory = std::function<std::unique_ptr<Backend>(const InstanceInfo&)>;

}  // namespace modelserve
