// Gathering request tensors into one batch tensor, and the inverse view.
#pragma once

#include <vector>

#include "tensor/tensor.h"

namespace modelserve {

// Concatenates `parts` along the first dimension into one tensor from `resource`. All parts share
// datatype and non-batch dimensions (the batcher guarantees it; checked here too). A single part
// is returned as is, with no copy. Copies go through cudaMemcpyAsync on `stream` when either side
// is device memory; host-to-host copies are memcpy.
Tensor gather(const std::vector<const Tensor*>& parts, const std::shared_ptr<MemoryResource>& resource,
              StreamView stream = {});

// Copies `src` into new memory from `resource` (cross-device moves), asynchronously on `stream`.
Tensor copy_to(const Tensor& src, const std::shared_ptr<MemoryResource>& resource, StreamView stream = {});

}  // namespace modelserve
