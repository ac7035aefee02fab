#include "exec/native_backends.h"

#include <chrono>
#include <algorithm>
#include <cstring>
#include <thread>

#include "common/status.h"
#include "cuda/cuda_runtime.h"

namespace modelserve {

namespace {

class NativeBackend final : public Backend {
 public:
  NativeBackend(NativeBackendOptions options, Device device) : options_(std::move(options)), device_(device) {}

  bool wants_device_memory() const override { return options_.device_memory; }

  TensorList execute(const ExecuteContext& ctx) override {
    if (options_.delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(options_.delay_us));
    TensorList outputs;
    if (options_.kind == "noop") return outputs;
    for (size_t i = 0; i < ctx.inputs.size(); ++i) {
      const auto& in = ctx.inputs[i];
      std::string name = i < options_.output_names.size() ? options_.output_names[i] : in.name;
      if (!ctx.requested_outputs.empty() &&
          std::find(ctx.requested_outputs.begin(), ctx.requested_outputs.end(), name) ==
              ctx.requested_outputs.end()) {
        continue;
      }
      Tensor out = ctx.allocate(in.tensor.dtype(), in.tensor.shape(), in.tensor.byte_size());
      if (in.tensor.byte_size() == 0) {
      } else if (out.device().host_accessible() && in.tensor.device().host_accessible()) {
        std::memcpy(out.data(), in.tensor.data(), in.tensor.byte_size());
      } else {
        cuda::memcpy_async(out.data(), in.tensor.data(), in.tensor.byte_size(), ctx.stream.handle);
      }
      outputs.push_back({std::move(name), std::move(out)});
    }
    return outputs;
  }

 private:
  NativeBackendOptions options_;
  Device device_;
};

}  // namespace

BackendFactory native_backend_factory(NativeBackendOptions options) {
  MS_EXPECTS(options.kind == "noop" || options.kind == "identity", kInvalidArgument, "native backend kind '",
             options.kind, "' is unknown; expected 'noop' or 'identity'");
  MS_EXPECTS(options.delay_us >= 0, kInvalidArgument, "native backend delay_us must be >= 0, got ",
             options.delay_us);
  return [options](const InstanceInfo& info) { return std::make_unique<NativeBackend>(options, info.device); };
}

}  // namespace modelserve
