// cuda_runtime.h for builds without CUDA: no devices; anything that needs one is UNAVAILABLE.
#include "common/status.h"
#include "cuda/cuda_runtime.h"

namespace modelserve::cuda {

namespace {
[[noreturn]] void unavailable(const char* what) {
  MS_FAIL(kUnavailable, what, ": modelserve was built without CUDA (MODELSERVE_CUDA=OFF or no nvcc)");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }
std::string device_name(int) { unavailable("device_name"); }
std::string runtime_version() { return ""; }
void set_device(int) { unavailable("set_device"); }
int current_device() { unavailable("current_device"); }
void* stream_create(int) { unavailable("stream_create"); }
void stream_destroy(void*) {}
void stream_synchronize(void*) {}
void stream_wait_event(void*, void*) { unavailable("stream_wait_event"); }
void* event_create(int) { unavailable("event_create"); }
void event_destroy(void*) {}
void event_record(void*, void*) { unavailable("event_record"); }
bool event_query(void*) { return true; }
void event_synchronize(void*) {}
void* device_malloc(size_t, int) { unavailable("device_malloc"); }
void device_free(void*, int) {}
void* host_malloc_pinned(size_t) { unavailable("host_malloc_pinned"); }
void host_free_pinned(void*) {}
void memcpy_async(void*, const void*, size_t, void*) { unavailable("memcpy_async"); }
void memcpy(void*, const void*, size_t) { unavailable("memcpy"); }

}  // namespace modelserve::cuda
