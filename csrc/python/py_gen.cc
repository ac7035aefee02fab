// modelserve._core.gen: the generation scheduler and its KV blocks (csrc/gen/), for the Python
// generation engine (modelserve/generation/).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>

#include "common/status.h"
#include "gen/scheduler.h"

namespace py = pybind11;

namespace modelserve::python {

namespace {

using gen::GenScheduler;
using gen::KvBlocks;

std::vector<int32_t> tokens_of(const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& a) {
  MS_EXPECTS(a.ndim() == 1, kInvalidArgument, "token ids must be one-dimensional, got ", a.ndim(), " dimensions");
  return std::vector<int32_t>(a.data(), a.data() + a.size());
}

py::dict block_stats_dict(const gen::KvBlockStats& b) {
  py::dict d;
  d["num_blocks"] = b.num_blocks;
  d["in_use"] = b.in_use;
  d["cached"] = b.cached;
  d["free"] = b.free;
  d["prefix_hits"] = b.prefix_hits;
  d["prefix_misses"] = b.prefix_misses;
  d["evictions"] = b.evictions;
  return d;
}

template <typename T, typename U>
py::array_t<T> array_of(const std::vector<U>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::dict step_dict(const gen::Step& step) {
  const size_t n = step.seqs.size();
  size_t width = 1;
  for (const auto& s : step.seqs) width = std::max(width, s.blocks.size());
  py::array_t<uint64_t> ids(static_cast<py::ssize_t>(n));
  py::array_t<int64_t> starts(static_cast<py::ssize_t>(n)), counts(static_cast<py::ssize_t>(n));
  py::array_t<bool> sample(static_cast<py::ssize_t>(n));
  py::array_t<int64_t> tables({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(width)});
  auto t = tables.mutable_unchecked<2>();
  for (size_t i = 0; i < n; ++i) {
    const auto& s = step.seqs[i];
    ids.mutable_data()[i] = s.id;
    starts.mutable_data()[i] = s.start;
    counts.mutable_data()[i] = s.count;
    sample.mutable_data()[i] = s.sample;
    for (size_t j = 0; j < width; ++j) t(i, j) = j < s.blocks.size() ? s.blocks[j] : -1;
  }
  py::dict d;
  d["ids"] = ids;
  d["starts"] = starts;
  d["counts"] = counts;
  d["sample"] = sample;
  d["block_tables"] = tables;
  d["tokens"] = array_of<int64_t>(step.tokens);
  d["positions"] = array_of<int64_t>(step.positions);
  d["slots"] = array_of<int64_t>(step.slots);
  d["expired"] = step.expired;
  d["preempted"] = step.preempted;
  return d;
}

}  // namespace

void bind_gen(py::module_& m) {
  py::module_ g = m.def_submodule("gen", "continuous batching over a paged KV cache (Note [Generation scheduling])");
  g.def(
      "block_hash",
      [](uint64_t parent, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens) {
        auto v = tokens_of(tokens);
        return gen::block_hash(parent, v.data(), static_cast<int>(v.size()));
      },
      py::arg("parent"), py::arg("tokens"));

  py::class_<KvBlocks>(g, "KvBlocks", "KV-cache blocks with reference counts and a prefix cache (Note [KV blocks])")
      .def(py::init<int, int>(), py::arg("num_blocks"), py::arg("block_size"))
      .def_property_readonly("available", &KvBlocks::available)
      .def("allocate", &KvBlocks::allocate)
      .def("retain", &KvBlocks::retain)
      .def("release", &KvBlocks::release)
      .def("lookup",
           [](KvBlocks& b, uint64_t hash, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& t) {
             auto v = tokens_of(t);
             MS_EXPECTS(static_cast<int>(v.size()) == b.block_size(), kInvalidArgument, "a block holds ",
                        b.block_size(), " tokens, got ", v.size());
             return b.lookup(hash, v.data());
           })
      .def("publish",
           [](KvBlocks& b, int block, uint64_t hash,
              const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& t) {
             auto v = tokens_of(t);
             MS_EXPECTS(static_cast<int>(v.size()) == b.block_size(), kInvalidArgument, "a block holds ",
                        b.block_size(), " tokens, got ", v.size());
             b.publish(block, hash, v.data());
           })
      .def("stats", [](const KvBlocks& b) { return block_stats_dict(b.stats()); });

  py::class_<GenScheduler>(g, "Scheduler", "one iteration at a time (Note [Generation scheduling])")
      .def(py::init([](int block_size, int num_blocks, int max_num_seqs, int max_num_batched_tokens, int max_model_len,
                       bool prefix_caching) {
             gen::GenConfig c;
             c.block_size = block_size;
             c.num_blocks = num_blocks;
             c.max_num_seqs = max_num_seqs;
             c.max_num_batched_tokens = max_num_batched_tokens;
             c.max_model_len = max_model_len;
             c.prefix_caching = prefix_caching;
             return std::make_unique<GenScheduler>(c);
           }),
           py::kw_only(), py::arg("block_size") = 16, py::arg("num_blocks"), py::arg("max_num_seqs") = 64,
           py::arg("max_num_batched_tokens") = 2048, py::arg("max_model_len") = 1024, py::arg("prefix_caching") = true)
      .def(
          "add",
          [](GenScheduler& s, uint64_t id, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& prompt,
             uint32_t priority, std::optional<double> timeout_s) {
            auto deadline = std::chrono::steady_clock::time_point::max();
            if (timeout_s) {
              MS_EXPECTS(*timeout_s > 0, kInvalidArgument, "a generation timeout must be > 0 seconds, got ", *timeout_s);
              deadline = std::chrono::steady_clock::now() +
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                             std::chrono::duration<double>(*timeout_s));
            }
            s.add(id, tokens_of(prompt), priority, deadline);
          },
          py::arg("id"), py::arg("prompt"), py::kw_only(), py::arg("priority") = 0, py::arg("timeout_s") = py::none())
      .def("abort", &GenScheduler::abort, py::arg("id"))
      .def("has_work", &GenScheduler::has_work)
      .def("schedule", [](GenScheduler& s) { return step_dict(s.schedule()); })
      .def("complete", &GenScheduler::complete, py::arg("sampled"), py::arg("finished"))
      .def("stats", [](const GenScheduler& s) {
        gen::GenStats st = s.stats();
        py::dict d;
        d["waiting"] = st.waiting;
        d["running"] = st.running;
        d["iterations"] = st.iterations;
        d["preemptions"] = st.preemptions;
        d["prefill_tokens"] = st.prefill_tokens;
        d["decode_tokens"] = st.decode_tokens;
        d["prefix_cached_tokens"] = st.prefix_cached_tokens;
        d["tokens_stored"] = st.tokens_stored;
        d["blocks"] = block_stats_dict(st.blocks);
        return d;
      });
}

}  // namespace modelserve::python
