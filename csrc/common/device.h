// Where memory lives. The enumerator values are DLPack's DLDeviceType codes, so a Device converts
// to a DLDevice without a table.
#pragma once

#include <cstdint>
#include <string>

namespace modelserve {

enum class DeviceKind : int32_t {
  kCpu = 1,       // kDLCPU: pageable host memory
  kCuda = 2,      // kDLCUDA: device memory
  kCudaHost = 3,  // kDLCUDAHost: pinned host memory, readable by the CPU
};

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int32_t id = 0;

  static Device cpu() { return {DeviceKind::kCpu, 0}; }
  static Device cuda(int id) { return {DeviceKind::kCuda, id}; }
  static Device cuda_host() { return {DeviceKind::kCudaHost, 0}; }

  // Host code may read and write this memory directly.
  bool host_accessible() const { return kind != DeviceKind::kCuda; }
  bool operator==(const Device& o) const { return kind == o.kind && id == o.id; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const {
    switch (kind) {
      case DeviceKind::kCpu: return "cpu";
      case DeviceKind::kCudaHost: return "cuda_host";
      case DeviceKind::kCuda: return "cuda:" + std::to_string(id);
    }
    return "unknown";
  }
};

}  // namespace modelserve
