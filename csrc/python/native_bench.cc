// modelserve._core._bench: native measurement loops for bench/micro. They run without the GIL so
// that Python's own overhead does not hide what the core costs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "exec/model.h"
#include "exec/native_backends.h"
#include "memory/default_resources.h"
#include "sched/latency_target.h"

namespace py = pybind11;

namespace modelserve::python {

namespace {
using ns = std::chrono::nanoseconds;

// ns per allocate+deallocate pair of `bytes`, one figure per round.
std::vector<double> allocate_free(const std::shared_ptr<MemoryResource>& r, size_t bytes, int iterations, int rounds) {
  std::vector<double> out;
  r->deallocate(r->allocate(bytes), bytes);  // warm: a pool now holds the block
  for (int k = 0; k < rounds; ++k) {
    const auto t0 = Clock::now();
    for (int i = 0; i < iterations; ++i) {
      void* p = r->allocate(bytes);
      // Keep the compiler from eliding the pair.
      asm volatile("" : : "r"(p) : "memory");
      r->deallocate(p, bytes);
    }
    out.push_back(double(std::chrono::duration_cast<ns>(Clock::now() - t0).count()) / iterations);
  }
  return out;
}

// Threads allocate random sizes, stamp every block, keep a few alive and check the stamps before
// freeing: overlapping (non-distinct) blocks or misalignment show up as errors.
py::dict stress(const std::shared_ptr<MemoryResource>& r, int threads, int iterations, size_t max_bytes, uint64_t seed) {
  std::atomic<uint64_t> misaligned{0}, corrupted{0}, allocations{0};
  const bool host = r->device().host_accessible();
  auto body = [&](int tid) {
    std::mt19937_64 rng(seed * 1000003 + tid);
    struct Live {
      uint8_t* p;
      size_t bytes;
      uint64_t stamp;
    };
    std::vector<Live> live;
    auto check_and_free = [&](const Live& l) {
      if (host && l.bytes >= 16) {
        uint64_t a, b;
        std::memcpy(&a, l.p, 8);
        std::memcpy(&b, l.p + l.bytes - 8, 8);
        if (a != l.stamp || b != l.stamp) corrupted++;
      }
      r->deallocate(l.p, l.bytes);
    };
    for (int i = 0; i < iterations; ++i) {
      size_t bytes = rng() % (max_bytes + 1);
      auto* p = static_cast<uint8_t*>(r->allocate(bytes));
      allocations++;
      if (reinterpret_cast<uintptr_t>(p) % r->alignment() != 0) misaligned++;
      uint64_t stamp = (uint64_t(tid) << 40) | uint64_t(i);
      if (host && bytes >= 16) {
        std::memcpy(p, &stamp, 8);
        std::memcpy(p + bytes - 8, &stamp, 8);
      }
      live.push_back({p, bytes, stamp});
      if (live.size() > 8) {
        size_t k = rng() % live.size();
        check_and_free(live[k]);
        live[k] = live.back();
        live.pop_back();
      }
    }
    for (const auto& l : live) check_and_free(l);
  };
  {
    py::gil_scoped_release release;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) ts.emplace_back(body, t);
    for (auto& t : ts) t.join();
  }
  py::dict d;
  d["allocations"] = allocations.load();
  d["misaligned"] = misaligned.load();
  d["corrupted"] = corrupted.load();
  return d;
}

// Closed-loop submitters against a model with the no-op native backend. With sample_stats, one
// more thread reads the model's statistics in a loop meanwhile and reports the largest queued and
// in-flight counts it saw (a closed loop bounds both by the number of submitters).
py::dict scheduler_overhead(int submitters, int requests_per_submitter, int64_t max_batch_size,
                            int64_t max_queue_delay_us, int instances, bool sample_stats) {
  ModelConfig c;
  c.name = "bench_noop";
  c.batching.max_batch_size = max_batch_size;
  c.batching.max_queue_delay_us = max_queue_delay_us;
  c.instance_count = instances;
  NativeBackendOptions o;
  o.kind = "noop";
  Tensor input = Tensor::empty(DataType::kFp32, max_batch_size > 0 ? Shape{1, 16} : Shape{16}, host_pool());
  std::vector<std::vector<int64_t>> latencies(submitters);
  double elapsed_s = 0;
  uint64_t batches = 0;
  uint64_t max_in_flight = 0, max_queued = 0, samples = 0;
  {
    py::gil_scoped_release release;
    Model model(c, native_backend_factory(o));
    auto body = [&](int tid) {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
      auto& lat = latencies[tid];
      lat.reserve(requests_per_submitter);
      for (int i = 0; i < requests_per_submitter; ++i) {
        auto r = std::make_unique<Request>();
        r->inputs.push_back({"INPUT0", input});
        done = false;
        r->completion = [&](Response&&) {
          std::lock_guard<std::mutex> lock(m);
          done = true;
          cv.notify_one();
        };
        const auto t0 = Clock::now();
        model.submit(r);
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return done; });
        lat.push_back(std::chrono::duration_cast<ns>(Clock::now() - t0).count());
      }
    };
    std::atomic<bool> submitting{true};
    std::thread sampler;
    if (sample_stats) {
      sampler = std::thread([&] {
        while (submitting.load(std::memory_order_relaxed)) {
          const ModelStats s = model.stats();
          max_in_flight = std::max(max_in_flight, s.in_flight);
          max_queued = std::max(max_queued, s.queued);
          ++samples;
        }
      });
    }
    const auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < submitters; ++t) ts.emplace_back(body, t);
    for (auto& t : ts) t.join();
    elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();
    submitting = false;
    if (sampler.joinable()) sampler.join();
    batches = model.stats().execution_count;
    model.shutdown(true);
  }
  std::vector<int64_t> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  py::dict d;
  d["latencies_ns"] = all;
  d["elapsed_s"] = elapsed_s;
  d["batches"] = batches;
  d["max_in_flight"] = max_in_flight;
  d["max_queued"] = max_queued;
  d["samples"] = samples;
  return d;
}
}  // namespace

void bind_bench(py::module_& m) {
  py::module_ b = m.def_submodule("_bench", "native measurement loops for bench/micro");
  // The batcher's latency planner on its own, for deterministic tests (times in microseconds
  // from an arbitrary epoch).
  auto at = [](double t_us) { return Clock::time_point(std::chrono::microseconds(static_cast<int64_t>(t_us))); };
  py::class_<LatencyTarget>(b, "LatencyTarget")
      .def(py::init<>())
      .def("on_arrival", [at](LatencyTarget& l, int64_t rows, double t_us) { l.on_arrival(rows, at(t_us)); },
           py::arg("rows"), py::arg("t_us"))
      .def("on_batch", &LatencyTarget::on_batch, py::arg("rows"), py::arg("compute_ns"))
      .def("compute_us", &LatencyTarget::compute_us, py::arg("rows"))
      .def("compute_p99_us", &LatencyTarget::compute_p99_us, py::arg("rows"))
      .def(
          "plan",
          [at](const LatencyTarget& l, int64_t target_us, int64_t max_batch_size, int64_t instances, double now_us) {
            const LatencyTarget::Plan p = l.plan(target_us, max_batch_size, instances, at(now_us));
            py::dict d;
            d["rows"] = p.rows;
            d["cap"] = p.cap;
            d["delay_us"] = p.delay_us;
            return d;
          },
          py::arg("target_us"), py::arg("max_batch_size"), py::arg("instances"), py::arg("now_us"));
  b.def(
      "allocate_free",
      [](const std::shared_ptr<MemoryResource>& r, size_t bytes, int iterations, int rounds) {
        py::gil_scoped_release release;
        return allocate_free(r, bytes, iterations, rounds);
      },
      py::arg("resource"), py::arg("bytes"), py::arg("iterations") = 100000, py::arg("rounds") = 11);
  b.def("stress", &stress, py::arg("resource"), py::arg("threads") = 4, py::arg("iterations") = 2000,
        py::arg("max_bytes") = 65536, py::arg("seed") = 0);
  b.def("scheduler_overhead", &scheduler_overhead, py::arg("submitters"), py::arg("requests_per_submitter"),
        py::arg("max_batch_size") = 64, py::arg("max_queue_delay_us") = 0, py::arg("instances") = 1,
        py::arg("sample_stats") = false);
}

}  // namespace modelserve::python
