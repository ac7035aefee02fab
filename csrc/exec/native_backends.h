// Backends implemented in C++: used by tests and benchmarks to measure the core without Python.
#pragma once

#include <string>
#include <vector>

#include "exec/backend.h"

namespace modelserve {

struct NativeBackendOptions {
  // "noop": returns no outputs. "identity": returns a copy of every input, renamed by
  // `output_names` (same order as the inputs; empty = same names).
  std::string kind = "identity";
  int64_t delay_us = 0;            // sleeps this long per batch, standing in for compute
  std::vector<std::string> output_names;
  bool device_memory = true;       // on a GPU instance, take and return device memory
};

BackendFactory native_backend_factory(NativeBackendOptions options);

}  // namespace modelserve
