// A thin, CUDA-free header over the CUDA runtime: device queries, streams, events, memory.
//
// Nothing outside csrc/cuda/ includes <cuda_runtime.h>. When the module is built without CUDA
// (MODELSERVE_CUDA=OFF or no nvcc), cuda_runtime_stub.cc implements the queries (no devices) and
// every other call throws Error(kUnavailable). When it is built with CUDA but runs where there is
// no driver or no GPU, device_count() is 0: cudaGetDeviceCount's error code is checked and
// cleared, never turned into an abort.
#pragma once

#include <cstddef>
#include <string>

namespace modelserve {

// A non-owning handle to a stream. A null handle means "no stream": the work is ordered by the
// calling thread (CPU instances use this; memory freed on it may be reused at once).
struct StreamView {
  void* handle = nullptr;  // cudaStream_t
  int device = -1;
  bool is_null() const { return handle == nullptr; }
};

namespace cuda {

bool compiled();              // the module was built with CUDA support
int device_count();           // 0 without a driver or GPU; never throws
inline bool is_available() { return device_count() > 0; }
std::string device_name(int device);
std::string runtime_version();  // e.g. "13.0"; "" without CUDA

void set_device(int device);
int current_device();

void* stream_create(int device);  // non-blocking stream on `device`
void stream_destroy(void* stream);
void stream_synchronize(void* stream);
void stream_wait_event(void* stream, void* event);

void* event_create(int device);  // timing disabled
void event_destroy(void* event);
void event_record(void* event, void* stream);
bool event_query(void* event);  // true once the work before the record has completed
void event_synchronize(void* event);

void* device_malloc(size_t bytes, int device);  // throws Error(kResourceExhausted) on OOM
void device_free(void* ptr, int device);
void* host_malloc_pinned(size_t bytes);
void host_free_pinned(void* ptr);
// cudaMemcpyDefault in both forms: direction from the pointers (unified addressing).
void memcpy_async(void* dst, const void* src, size_t bytes, void* stream);
void memcpy(void* dst, const void* src, size_t bytes);

// RAII owners for an instance's streams and events.
class Stream {
 public:
  explicit Stream(int device) : view_{stream_create(device), device} {}
  ~Stream() { stream_destroy(view_.handle); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  StreamView view() const { return view_; }
  void synchronize() const { stream_synchronize(view_.handle); }

 private:
  StreamView view_;
};

class Event {
 public:
  explicit Event(int device) : handle_(event_create(device)) {}
  ~Event() { event_destroy(handle_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(StreamView stream) { event_record(handle_, stream.handle); }
  bool query() const { return event_query(handle_); }
  void synchronize() const { event_synchronize(handle_); }
  // Work later enqueued on `stream` waits for this event (no host synchronisation).
  void block(StreamView stream) const { stream_wait_event(stream.handle, handle_); }
  void* handle() const { return handle_; }

 private:
  void* handle_;
};

}  // namespace cuda
}  // namespace modelserve
