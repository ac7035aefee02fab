// modelserve._core: the bindings. Private; modelserve/_native.py is its only importer.
//
// GIL rules: every call that can block (waits, resizing, shutdown, model construction) releases
// the GIL; core threads take it only inside the Python backend adapter (py_backend.cc).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "cuda/cuda_runtime.h"
#include "exec/gather.h"
#include "exec/model.h"
#include "exec/native_backends.h"
#include "exec/process_backend.h"
#include "memory/cuda_resources.h"
#include "memory/default_resources.h"
#include "memory/host_resource.h"
#include "memory/pool_resource.h"
#include "memory/shm_resource.h"
#include "monitor/drift_monitor.h"
#include "protocol/infer_codec.h"
#include "python/completion_queue.h"
#include "python/dlpack.h"
#include "python/py_backend.h"
#include "python/py_protocol.h"
#include "python/py_tensor.h"

namespace py = pybind11;
using namespace modelserve;
using namespace modelserve::python;

namespace modelserve::python {
void bind_bench(py::module_& m);
void bind_protocol(py::module_& m);  // py_protocol.cc
void bind_gen(py::module_& m);       // py_gen.cc
}

namespace {

py::object* error_factory = nullptr;  // modelserve.errors.from_status, set at import

[[noreturn]] void raise_status(const Status& s) { throw Error(s.code, s.message); }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda" || s == "gpu") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return Device::cuda(std::stoi(s.substr(5)));
    } catch (const std::exception&) {
    }
  }
  MS_FAIL(kInvalidArgument, "device '", s, "' is not one of 'cpu', 'cuda', 'cuda:N'");
}

py::dict pool_stats_dict(const PoolStats& s) {
  py::dict d;
  d["bytes_in_use"] = s.bytes_in_use;
  d["peak_bytes_in_use"] = s.peak_bytes_in_use;
  d["bytes_held"] = s.bytes_held;
  d["bytes_idle"] = s.bytes_idle;
  d["limit"] = s.limit;
  d["allocations"] = s.allocations;
  d["deallocations"] = s.deallocations;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["hit_rate"] = s.hit_rate();
  d["upstream_allocations"] = s.upstream_allocations;
  d["upstream_deallocations"] = s.upstream_deallocations;
  return d;
}

py::dict timings_dict(const RequestTimings& t) {
  py::dict d;
  d["queue_ns"] = t.queue_ns;
  d["compute_input_ns"] = t.compute_input_ns;
  d["compute_infer_ns"] = t.compute_infer_ns;
  d["compute_output_ns"] = t.compute_output_ns;
  return d;
}

std::vector<TensorSpec> parse_specs(const std::vector<std::tuple<std::string, std::string, Shape>>& specs) {
  std::vector<TensorSpec> out;
  for (const auto& [name, dtype, dims] : specs) out.push_back({name, parse_datatype(dtype), dims});
  return out;
}

void apply_batching_kwargs(BatcherConfig& b, const py::kwargs& kw) {
  for (auto item : kw) {
    const std::string key = py::str(item.first).cast<std::string>();
    py::handle v = item.second;
    if (key == "max_batch_size") b.max_batch_size = v.cast<int64_t>();
    else if (key == "preferred_batch_sizes") b.preferred_batch_sizes = v.cast<std::vector<int64_t>>();
    else if (key == "max_queue_delay_us") b.max_queue_delay_us = v.cast<int64_t>();
    else if (key == "latency_target_us") b.latency_target_us = v.is_none() ? 0 : v.cast<int64_t>();
    else if (key == "max_queue_size") b.max_queue_size = v.cast<size_t>();
    else if (key == "max_queue_bytes") b.max_queue_bytes = v.cast<size_t>();
    else if (key == "default_timeout_us") b.default_timeout_us = v.cast<int64_t>();
    else if (key == "priority_levels") b.priority_levels = v.cast<uint32_t>();
    else if (key == "default_priority_level") b.default_priority_level = v.cast<uint32_t>();
    else MS_FAIL(kInvalidArgument, "unknown batching setting '", key, "'");
  }
}

py::dict batching_dict(const BatcherConfig& b) {
  py::dict d;
  d["max_batch_size"] = b.max_batch_size;
  d["preferred_batch_sizes"] = b.preferred_batch_sizes;
  d["max_queue_delay_us"] = b.max_queue_delay_us;
  d["latency_target_us"] = b.latency_target_us > 0 ? py::object(py::int_(b.latency_target_us)) : py::none();
  d["max_queue_size"] = b.max_queue_size;
  d["max_queue_bytes"] = b.max_queue_bytes;
  d["default_timeout_us"] = b.default_timeout_us;
  d["priority_levels"] = b.priority_levels;
  d["default_priority_level"] = b.effective_default_level();
  return d;
}

// The Python face of a Model: shuts it down with the GIL released, so instance threads blocked
// on the GIL (Python backends) can finish.
class PyModel {
 public:
  explicit PyModel(std::shared_ptr<Model> model) : model_(std::move(model)) {}
  ~PyModel() {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      model_->shutdown(false);
    } else {
      model_->shutdown(false);
    }
  }
  const std::shared_ptr<Model>& get() const { return model_; }

 private:
  std::shared_ptr<Model> model_;
};

py::object outputs_of(const RequestState& s, bool as_numpy) {
  const Response& r = s.response();
  if (!r.status.is_ok()) raise_status(r.status);
  py::dict out;
  for (const auto& o : r.outputs) {
    out[py::str(o.name)] = as_numpy ? py::object(tensor_to_numpy(o.tensor)) : py::cast(o.tensor);
  }
  return out;
}

// A request for {name: tensor-like} `inputs` asking for `outputs` (empty: all).
RequestPtr request_of(const py::dict& inputs, std::vector<std::string> outputs) {
  auto request = std::make_unique<Request>();
  request->inputs.reserve(inputs.size());
  for (auto item : inputs) {
    request->inputs.push_back({py::str(item.first).cast<std::string>(), as_tensor(item.second)});
  }
  request->requested_outputs = std::move(outputs);
  return request;
}

// Enqueues `request` on `model` with a RequestState that the completion fills (and, when given,
// `queue` is told of, with `tag`); Model::submit's checks apply. Returns the state (Pending).
// `caller_runs`: the caller waits for it and may run it (Note [Caller runs]); needs no GIL.
// `observe`: kTraced and/or kKeepInputs (Note [Request spans]).
enum Observe : int { kTraced = 1, kKeepInputs = 2 };

std::shared_ptr<RequestState> submit_request(const std::shared_ptr<Model>& model, RequestPtr request,
                                             uint32_t priority, int64_t timeout_us,
                                             std::shared_ptr<CompletionQueue> queue, int64_t tag,
                                             bool caller_runs = false, int observe = 0) {
  request->priority = priority;
  request->timeout_us = timeout_us;
  request->caller_runs = caller_runs;
  request->traced = (observe & kTraced) != 0;
  request->keep_inputs = (observe & kKeepInputs) != 0;
  auto state = std::make_shared<RequestState>();
  state->tag = tag;
  state->queue = std::move(queue);
  state->model = model;
  request->completion = [state](Response&& r) { state->complete(std::move(r)); };
  state->id = model->submit(request);
  return state;
}

// The completed request's outputs as one serialized ModelInferResponse (Note [Native request
// path]); raises the request's error. A response over `limit` bytes is RESOURCE_EXHAUSTED.
py::bytes encode_response(const RequestState& s, const std::string& where, const std::string& model_name,
                          const std::string& model_version, const std::string& id, bool streamed, size_t limit) {
  MS_EXPECTS(s.done(), kInvalidArgument, "request ", s.id, " has not completed; wait() first");
  const Response& r = s.response();
  if (!r.status.is_ok()) raise_status(r.status);
  const TensorList* outputs = &r.outputs;
  TensorList host;  // host copies of outputs a backend left in device memory
  for (const auto& o : r.outputs) {
    if (!o.tensor.device().host_accessible()) {
      for (const auto& p : r.outputs) {
        host.push_back({p.name, p.tensor.device().host_accessible() ? p.tensor : copy_to(p.tensor, host_pool())});
      }
      outputs = &host;
      break;
    }
  }
  const protocol::ResponseHead head{model_name, model_version, id, streamed, streamed};
  const size_t size = protocol::infer_response_size(head, *outputs);
  const size_t message = streamed ? protocol::infer_response_size({model_name, model_version, id, true, false}, *outputs)
                                  : size;
  MS_EXPECTS(message <= limit, kResourceExhausted, "the response of ", where, " is ", message,
             " bytes, more than the server's send limit of ", limit,
             " bytes; start the server with a larger --max-message-bytes, or ask for fewer outputs or a smaller batch");
  PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (!bytes) throw py::error_already_set();
  auto* out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(bytes));
  if (size > (size_t(64) << 10)) {  // large outputs: copy without the GIL (nothing else sees `bytes` yet)
    py::gil_scoped_release release;
    protocol::write_infer_response(head, *outputs, out);
  } else {
    protocol::write_infer_response(head, *outputs, out);
  }
  return py::reinterpret_steal<py::bytes>(bytes);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "modelserve native core (private: use the modelserve package)";
  m.attr("__version__") = MODELSERVE_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      if (error_factory) {
        py::object exc = (*error_factory)(static_cast<int>(e.code()), e.what());
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      } else {
        PyErr_SetString(PyExc_RuntimeError, e.what());
      }
    }
  });
  m.def("_set_error_factory", [](py::object f) {
    if (!error_factory) error_factory = new py::object();  // leaked: the translator may run at exit
    *error_factory = std::move(f);
  });

  // --- status codes and datatypes ---
  py::dict codes;
  for (int c = 0; c <= static_cast<int>(StatusCode::kUnimplemented); ++c) {
    codes[py::str(status_code_name(static_cast<StatusCode>(c)))] = c;
  }
  m.attr("STATUS_CODES") = codes;
  py::list datatypes;
  for (int i = 0; i < kNumDataTypes; ++i) datatypes.append(datatype_name(static_cast<DataType>(i)));
  m.attr("DATATYPES") = datatypes;
  m.def("element_size", [](const std::string& dt) { return element_size(parse_datatype(dt)); });

  // --- CUDA ---
  py::module_ cuda_m = m.def_submodule("cuda");
  cuda_m.def("compiled", &cuda::compiled);
  cuda_m.def("device_count", &cuda::device_count);
  cuda_m.def("is_available", &cuda::is_available);
  cuda_m.def("device_name", &cuda::device_name);
  cuda_m.def("runtime_version", &cuda::runtime_version);

  // --- memory ---
  py::class_<MemoryResource, std::shared_ptr<MemoryResource>>(m, "MemoryResource")
      .def("allocate", [](MemoryResource& r, size_t bytes) { return reinterpret_cast<uintptr_t>(r.allocate(bytes)); },
           py::arg("bytes"), py::call_guard<py::gil_scoped_release>())
      .def("deallocate",
           [](MemoryResource& r, uintptr_t ptr, size_t bytes) { r.deallocate(reinterpret_cast<void*>(ptr), bytes); },
           py::arg("ptr"), py::arg("bytes"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("name", &MemoryResource::name)
      .def_property_readonly("device", [](const MemoryResource& r) { return r.device().str(); })
      .def_property_readonly("alignment", &MemoryResource::alignment)
      .def("__repr__", [](const MemoryResource& r) { return "<MemoryResource " + r.name() + ">"; });
  py::class_<HostResource, MemoryResource, std::shared_ptr<HostResource>>(m, "HostResource").def(py::init<>());
  py::class_<PinnedResource, MemoryResource, std::shared_ptr<PinnedResource>>(m, "PinnedResource").def(py::init<>());
  py::class_<DeviceResource, MemoryResource, std::shared_ptr<DeviceResource>>(m, "DeviceResource")
      .def(py::init<int>(), py::arg("device") = 0);
  py::class_<PoolResource, MemoryResource, std::shared_ptr<PoolResource>>(m, "PoolResource")
      .def(py::init<std::shared_ptr<MemoryResource>, size_t, std::string>(), py::arg("upstream"),
           py::arg("limit") = 0, py::arg("name") = "")
      .def("stats", [](const PoolResource& p) { return pool_stats_dict(p.stats()); })
      .def("trim", &PoolResource::trim, py::call_guard<py::gil_scoped_release>())
      .def_property("limit", [](const PoolResource& p) { return p.stats().limit; }, &PoolResource::set_limit)
      .def_property_readonly("upstream", &PoolResource::upstream)
      .def_static("size_class_of", &PoolResource::size_class_of, py::arg("bytes"));
  m.def("host_pool", &host_pool);
  m.def("pinned_pool", &pinned_pool);
  m.def("device_pool", &device_pool, py::arg("device") = 0);
  m.def("shm_pool", &shm_pool, "the pool of shared-memory blocks process instances exchange tensors in");
  m.def("shm_segments", [] {
    const SharedMemoryResource& s = shm_segments();
    py::dict d;
    d["segments"] = s.segments();
    d["bytes_mapped"] = s.bytes_mapped();
    return d;
  });

  // --- tensors ---
  py::class_<Tensor>(m, "Tensor", py::buffer_protocol())
      .def_static(
          "from_numpy",
          [](const py::array& a, std::optional<std::string> datatype) {
            return tensor_from_numpy(a, datatype ? std::optional<DataType>(parse_datatype(*datatype)) : std::nullopt);
          },
          py::arg("array"), py::arg("datatype") = py::none())
      .def_static(
          "from_buffer",
          [](const py::buffer& b, const std::string& datatype, Shape shape) {
            return tensor_from_buffer(b, parse_datatype(datatype), std::move(shape));
          },
          py::arg("data"), py::arg("datatype"), py::arg("shape"))
      .def_static(
          "empty",
          [](const std::string& datatype, Shape shape, std::shared_ptr<MemoryResource> resource, size_t byte_size) {
            release_python_owners();
            if (!resource) resource = host_pool();
            return Tensor::empty(parse_datatype(datatype), std::move(shape), resource, {}, byte_size);
          },
          py::arg("datatype"), py::arg("shape"), py::arg("resource") = nullptr, py::arg("byte_size") = 0)
      .def_property_readonly("datatype", [](const Tensor& t) { return datatype_name(t.dtype()); })
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("nbytes", &Tensor::byte_size)
      .def_property_readonly("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()); })
      .def_property_readonly("read_only", [](const Tensor& t) { return t.buffer()->read_only(); })
      .def("numpy", &tensor_to_numpy)
      .def(
          "__array__",
          [](const Tensor& t, py::object dtype, py::object copy) {
            py::object a = tensor_to_numpy(t);
            if (!dtype.is_none()) a = a.attr("astype")(dtype);
            if (!copy.is_none() && copy.cast<bool>()) a = a.attr("copy")();
            return a;
          },
          py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def(
          "__dlpack__",
          [](const Tensor& t, py::object stream, py::object max_version, py::object dl_device, py::object copy) {
            MS_EXPECTS(copy.is_none() || !copy.cast<bool>(), kInvalidArgument,
                       "__dlpack__(copy=True) is not supported; the export is always zero-copy");
            bool versioned = !max_version.is_none() && max_version.cast<py::tuple>()[0].cast<int>() >= 1;
            return to_dlpack(t, versioned);
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const Tensor& t) { return py::make_tuple(dlpack_device(t).first, dlpack_device(t).second); })
      .def_buffer([](const Tensor& t) -> py::buffer_info {
        MS_EXPECTS(t.device().host_accessible(), kInvalidArgument, "tensor is in ", t.device().str(),
                   " memory; the buffer protocol needs host memory");
        if (t.dtype() == DataType::kBytes) {
          // The serialised form (4-byte length + bytes per element), as the wire carries it.
          return py::buffer_info(t.data(), 1, "B", 1, {static_cast<py::ssize_t>(t.byte_size())}, {1},
                                 t.buffer()->read_only());
        }
        static const char* formats[] = {"?", "B", "H", "I", "Q", "b", "h", "i", "q", "e", "H", "f", "d"};
        const auto item = static_cast<py::ssize_t>(element_size(t.dtype()));
        std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides(shape.size());
        py::ssize_t stride = item;
        for (size_t i = shape.size(); i-- > 0;) {
          strides[i] = stride;
          stride *= shape[i];
        }
        return py::buffer_info(t.data(), item, formats[static_cast<int>(t.dtype())],
                               static_cast<py::ssize_t>(shape.size()), shape, strides, t.buffer()->read_only());
      })
      .def("tobytes",
           [](const Tensor& t) {
             MS_EXPECTS(t.device().host_accessible(), kInvalidArgument, "tensor is in ", t.device().str(), " memory");
             return py::bytes(static_cast<const char*>(t.data()), t.byte_size());
           })
      .def("slice_rows", &Tensor::slice_rows, py::arg("begin"), py::arg("end"))
      .def("__len__", [](const Tensor& t) {
        MS_EXPECTS(!t.shape().empty(), kInvalidArgument, "len() of a scalar tensor");
        return t.shape()[0];
      })
      .def("__repr__", [](const Tensor& t) {
        return std::string("<Tensor ") + datatype_name(t.dtype()) + " " + shape_str(t.shape()) + " on " +
               t.device().str() + ">";
      });
  m.def(
      "gather",
      [](const std::vector<Tensor>& parts, std::shared_ptr<MemoryResource> resource) {
        release_python_owners();
        if (!resource) resource = host_pool();
        std::vector<const Tensor*> ptrs;
        ptrs.reserve(parts.size());
        for (const auto& t : parts) ptrs.push_back(&t);
        py::gil_scoped_release release;
        return gather(ptrs, resource);
      },
      py::arg("tensors"), py::arg("resource") = nullptr);
  m.def("release_python_owners", &release_python_owners);
  m.def("parked_python_owners", &parked_python_owners);

  // --- backends ---
  py::class_<NativeBackendOptions>(m, "NativeBackend")
      .def(py::init([](std::string kind, int64_t delay_us, std::vector<std::string> output_names, bool device_memory) {
             NativeBackendOptions o{std::move(kind), delay_us, std::move(output_names), device_memory};
             native_backend_factory(o);  // validates
             return o;
           }),
           py::arg("kind") = "identity", py::arg("delay_us") = 0, py::arg("output_names") = std::vector<std::string>{},
           py::arg("device_memory") = true)
      .def_readonly("kind", &NativeBackendOptions::kind)
      .def_readonly("delay_us", &NativeBackendOptions::delay_us);

  py::class_<ProcessInstances, std::shared_ptr<ProcessInstances>>(m, "ProcessInstances",
                                                                  "worker processes of one version (Note [Process instances])")
      .def(py::init([](std::string label, std::vector<std::string> argv, py::bytes init, double execute_timeout_s,
                       double stop_timeout_s, int64_t spin_us, int64_t max_batch_size,
                       std::vector<std::tuple<std::string, std::string, Shape>> outputs, int max_crashes,
                       double crash_window_s, py::object log, py::object on_failed) {
             WorkerOptions o;
             o.label = std::move(label);
             o.argv = std::move(argv);
             o.init = std::string(init);
             o.execute_timeout_s = execute_timeout_s;
             o.stop_timeout_s = stop_timeout_s;
             o.spin_us = spin_us;
             o.max_batch_size = max_batch_size;
             for (auto& [name, dtype, dims] : outputs) o.outputs.push_back({name, parse_datatype(dtype), dims});
             o.max_crashes = max_crashes;
             o.crash_window_s = crash_window_s;
             o.log = python_callback<int, const std::string&, bool>(std::move(log));
             o.on_failed = python_callback<const std::string&>(std::move(on_failed));
             return std::make_shared<ProcessInstances>(std::move(o));
           }),
           py::arg("label"), py::arg("argv"), py::kw_only(), py::arg("init") = py::bytes(),
           py::arg("execute_timeout_s") = 0.0, py::arg("stop_timeout_s") = 10.0, py::arg("spin_us") = 100,
           py::arg("max_batch_size") = 0,
           py::arg("outputs") = std::vector<std::tuple<std::string, std::string, Shape>>{}, py::arg("max_crashes") = 5,
           py::arg("crash_window_s") = 60.0, py::arg("log") = py::none(), py::arg("on_failed") = py::none())
      .def("workers",
           [](const ProcessInstances& p) {
             std::vector<WorkerInfo> ws;
             {
               py::gil_scoped_release release;
               ws = p.workers();
             }
             py::list out;
             for (const auto& w : ws) {
               py::dict d;
               d["instance"] = w.instance;
               d["pid"] = w.pid;
               d["starts"] = w.starts;
               d["pss_bytes"] = w.pss_bytes;
               out.append(d);
             }
             return out;
           })
      .def("stats", [](const ProcessInstances& p) {
        ProcessStats s = p.stats();
        py::dict d;
        d["batches"] = s.batches;
        d["control_messages"] = s.control_messages;
        d["control_bytes"] = s.control_bytes;
        d["starts"] = s.starts;
        d["crashes"] = s.crashes;
        d["failed"] = s.failed;
        return d;
      });

  // --- input drift (Note [Input drift]) ---
  py::class_<DriftMonitor, std::shared_ptr<DriftMonitor>>(m, "DriftMonitor")
      .def(py::init([](std::string model, std::vector<std::tuple<std::string, std::string, Shape>> inputs, bool batched,
                       int64_t reference_requests, int64_t window_requests, int64_t max_features,
                       int64_t rows_per_request) {
             std::vector<DriftInputSpec> specs;
             for (auto& [name, dtype, dims] : inputs) specs.push_back({name, parse_datatype(dtype), dims});
             DriftOptions o;
             o.reference_requests = reference_requests;
             o.window_requests = window_requests;
             o.max_features = max_features;
             o.rows_per_request = rows_per_request;
             return std::make_shared<DriftMonitor>(std::move(model), std::move(specs), batched, o);
           }),
           py::arg("model"), py::arg("inputs"), py::kw_only(), py::arg("batched"), py::arg("reference_requests") = 1000,
           py::arg("window_requests") = 1000, py::arg("max_features") = 64, py::arg("rows_per_request") = 8)
      .def("add_reference", &DriftMonitor::add_reference, py::arg("input"), py::arg("rows"),
           py::call_guard<py::gil_scoped_release>())
      .def("complete_reference", &DriftMonitor::complete_reference, py::call_guard<py::gil_scoped_release>())
      .def("snapshot", [](const DriftMonitor& d) {
        DriftMonitor::Snapshot s;
        {
          py::gil_scoped_release release;
          s = d.snapshot();
        }
        py::dict out;
        out["reference_complete"] = s.reference_complete;
        out["reference_from_data"] = s.reference_from_data;
        out["reference_requests"] = s.reference_requests;
        out["window_requests"] = s.window_requests;
        out["inputs"] = s.inputs;
        out["summarized"] = s.summarized;
        py::list features;
        for (const auto& f : s.features) {
          py::dict e;
          e["input"] = f.input;
          e["feature"] = f.feature;
          e["psi"] = f.psi;
          e["ks"] = f.continuous ? py::object(py::float_(f.ks)) : py::none();
          features.append(e);
        }
        out["features"] = features;
        return out;
      });

  // --- completions ---
  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init<>())
      .def("fileno", &CompletionQueue::fileno)
      .def("drain",
           [](CompletionQueue& q) {
             release_python_owners();
             return q.drain();
           })
      .def_property_readonly("wakeups", &CompletionQueue::wakeups);

  py::class_<RequestState, std::shared_ptr<RequestState>>(m, "Pending")
      .def_readonly("id", &RequestState::id)
      .def_readonly("tag", &RequestState::tag)
      .def("done", &RequestState::done)
      .def(
          "wait", [](RequestState& s, std::optional<double> timeout) { return s.wait(timeout.value_or(-1.0)); },
          py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("cancel",
           [](RequestState& s) {
             auto model = s.model.lock();
             if (!model) return false;
             py::gil_scoped_release release;
             return model->cancel(s.id);
           })
      .def(
          "outputs",
          [](RequestState& s, bool as_numpy) {
            MS_EXPECTS(s.done(), kInvalidArgument, "request ", s.id, " has not completed; wait() first");
            return outputs_of(s, as_numpy);
          },
          py::arg("as_numpy") = true)
      .def_property_readonly("status_code",
                             [](RequestState& s) { return static_cast<int>(s.response().status.code); })
      .def_property_readonly("message", [](RequestState& s) { return s.response().status.message; })
      .def_property_readonly("batch_size", [](RequestState& s) { return s.response().batch_size; })
      .def_property_readonly("timings", [](RequestState& s) { return timings_dict(s.response().timings); })
      .def_property_readonly(
          "trace",
          [](RequestState& s) {
            // Note [Request spans]: (batch_id, enqueue_ns, dispatch_ns, compute_start_ns, input_ns, infer_ns,
            // output_ns, batch_requests, batch_traced, batch_rows); steady-clock nanoseconds.
            const Response& r = s.response();
            const BatchTrace& t = r.trace;
            return py::make_tuple(t.batch_id, t.enqueue_ns, t.dispatch_ns, t.compute_start_ns,
                                  r.timings.compute_input_ns, r.timings.compute_infer_ns, r.timings.compute_output_ns,
                                  t.batch_requests, t.batch_traced, r.batch_size);
          })
      .def(
          "inputs",
          [](RequestState& s, bool as_numpy) {
            MS_EXPECTS(s.done(), kInvalidArgument, "request ", s.id, " has not completed; wait() first");
            py::dict out;
            for (const auto& in : s.response().inputs) {
              out[py::str(in.name)] = as_numpy ? py::object(tensor_to_numpy(in.tensor)) : py::cast(in.tensor);
            }
            return out;
          },
          py::arg("as_numpy") = false, "the request's inputs, when it was submitted with observe & 2 (keep inputs)")
      .def("encode_response", &encode_response, py::arg("where"), py::arg("model_name"), py::arg("model_version"),
           py::arg("id"), py::arg("streamed"), py::arg("limit"),
           "the outputs as a serialized ModelInferResponse (ModelStreamInferResponse when streamed)");

  // --- models ---
  py::class_<PyModel>(m, "Model")
      .def(py::init([](std::string name, int64_t version, py::object backend, int instance_count, std::string device,
                       std::vector<std::tuple<std::string, std::string, Shape>> inputs,
                       std::vector<std::tuple<std::string, std::string, Shape>> outputs, py::kwargs batching) {
             ModelConfig c;
             c.name = std::move(name);
             c.version = version;
             c.instance_count = instance_count;
             c.device = parse_device(device);
             c.inputs = parse_specs(inputs);
             c.outputs = parse_specs(outputs);
             apply_batching_kwargs(c.batching, batching);
             BackendFactory factory =
                 py::isinstance<NativeBackendOptions>(backend) ? native_backend_factory(backend.cast<NativeBackendOptions>())
                 : py::isinstance<ProcessInstances>(backend)   ? backend.cast<std::shared_ptr<ProcessInstances>>()->factory()
                                                               : python_backend_factory(backend);
             py::gil_scoped_release release;
             return std::make_unique<PyModel>(std::make_shared<Model>(std::move(c), std::move(factory)));
           }),
           py::arg("name"), py::arg("version") = 1, py::kw_only(), py::arg("backend"), py::arg("instance_count") = 1,
           py::arg("device") = "cpu",
           py::arg("inputs") = std::vector<std::tuple<std::string, std::string, Shape>>{},
           py::arg("outputs") = std::vector<std::tuple<std::string, std::string, Shape>>{})
      .def(
          "submit",
          [](PyModel& self, const py::dict& inputs, std::vector<std::string> outputs, uint32_t priority,
             int64_t timeout_us, std::shared_ptr<CompletionQueue> queue, int64_t tag, int observe) {
            release_python_owners();
            RequestPtr request = request_of(inputs, std::move(outputs));
            return submit_request(self.get(), std::move(request), priority, timeout_us, std::move(queue), tag, false,
                                  observe);
          },
          py::arg("inputs"), py::kw_only(), py::arg("outputs") = std::vector<std::string>{}, py::arg("priority") = 0,
          py::arg("timeout_us") = 0, py::arg("queue") = nullptr, py::arg("tag") = 0, py::arg("observe") = 0)
      .def(
          "run",
          [](PyModel& self, const py::dict& inputs, std::vector<std::string> outputs, uint32_t priority,
             int64_t timeout_us, int observe) {
            release_python_owners();
            RequestPtr request = request_of(inputs, std::move(outputs));
            py::gil_scoped_release release;  // a Python backend takes it back on this thread
            auto state = submit_request(self.get(), std::move(request), priority, timeout_us, nullptr, 0, true, observe);
            state->wait(-1.0);
            return state;
          },
          py::arg("inputs"), py::kw_only(), py::arg("outputs") = std::vector<std::string>{}, py::arg("priority") = 0,
          py::arg("timeout_us") = 0, py::arg("observe") = 0,
          "submits and waits: a completed Pending; an idle instance may run it on this thread (Note [Caller runs])")
      .def(
          "submit_parsed",
          [](PyModel& self, const py::handle& parsed, const std::string& where, uint32_t priority, int64_t timeout_us,
             std::shared_ptr<CompletionQueue> queue, int64_t tag, int observe) {
            release_python_owners();
            const ModelConfig& config = self.get()->config();
            auto [inputs, outputs] = decode_request(parsed, where, &config.inputs, config.batching.max_batch_size > 0);
            auto request = std::make_unique<Request>();
            request->inputs = std::move(inputs);
            request->requested_outputs = std::move(outputs);
            return submit_request(self.get(), std::move(request), priority, timeout_us, std::move(queue), tag, false,
                                  observe);
          },
          py::arg("request"), py::arg("where"), py::kw_only(), py::arg("priority") = 0, py::arg("timeout_us") = 0,
          py::arg("queue") = nullptr, py::arg("tag") = 0, py::arg("observe") = 0,
          "decodes, checks and enqueues a _core.protocol.ParsedInferRequest (Note [Native request path])")
      .def("set_instance_count", [](PyModel& self, int n) { self.get()->set_instance_count(n); },
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("instance_count", [](PyModel& self) { return self.get()->instance_count(); })
      .def("set_batching",
           [](PyModel& self, py::kwargs kw) {
             BatcherConfig b = self.get()->batching();
             apply_batching_kwargs(b, kw);
             self.get()->set_batching(b);
           })
      .def("batching", [](PyModel& self) { return batching_dict(self.get()->batching()); })
      .def(
          "set_drift_monitor",
          [](PyModel& self, std::shared_ptr<DriftMonitor> monitor) { self.get()->set_drift_monitor(std::move(monitor)); },
          py::arg("monitor"))
      .def(
          "shutdown",
          [](PyModel& self, bool drain, double drain_timeout_s) {
            MS_EXPECTS(drain_timeout_s >= 0 && drain_timeout_s == drain_timeout_s, kInvalidArgument,
                       self.get()->config().label(), ": drain timeout must be >= 0 seconds, got ", drain_timeout_s);
            // Past a year is no timeout (and keeps the nanosecond count in range).
            const double s = std::min(drain_timeout_s, 365.0 * 24 * 3600);
            self.get()->shutdown(drain, std::chrono::nanoseconds(static_cast<int64_t>(s * 1e9)));
          },
          py::arg("drain") = true, py::arg("drain_timeout_s") = 0.0, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("name", [](PyModel& self) { return self.get()->config().name; })
      .def_property_readonly("version", [](PyModel& self) { return self.get()->config().version; })
      .def_property_readonly("device", [](PyModel& self) { return self.get()->config().device.str(); })
      .def("stats", [](PyModel& self) {
        ModelStats s = self.get()->stats();
        py::dict d;
        d["success_count"] = s.success_count;
        d["failure_count"] = s.failure_count;
        d["failures"] = s.failures;
        d["execution_count"] = s.execution_count;
        d["inference_count"] = s.inference_count;
        d["queue_ns"] = s.queue_ns;
        d["compute_input_ns"] = s.compute_input_ns;
        d["compute_infer_ns"] = s.compute_infer_ns;
        d["compute_output_ns"] = s.compute_output_ns;
        py::dict batches;
        for (const auto& [size, b] : s.batch_stats) {
          py::dict e;
          e["count"] = b.count;
          e["compute_input_ns"] = b.compute_input_ns;
          e["compute_infer_ns"] = b.compute_infer_ns;
          e["compute_output_ns"] = b.compute_output_ns;
          batches[py::int_(size)] = e;
        }
        d["batch_stats"] = batches;
        auto hist = [](const LatencyHistogram& h) {
          py::dict e;
          py::list bounds, counts;
          for (int64_t b : LatencyHistogram::kBoundsNs) bounds.append(b);
          for (uint64_t c : h.counts) counts.append(c);
          e["bounds_ns"] = bounds;
          e["counts"] = counts;
          e["sum_ns"] = h.sum_ns;
          e["count"] = h.count;
          return e;
        };
        d["queue_hist"] = hist(s.queue_hist);
        d["compute_hist"] = hist(s.compute_hist);
        d["request_hist"] = hist(s.request_hist);
        d["queued"] = s.queued;
        d["in_flight"] = s.in_flight;
        d["instances"] = s.instances;
        d["batch_rows_planned"] = s.batch_rows_planned;
        d["batch_cap"] = s.batch_cap;
        d["batch_delay_us"] = s.batch_delay_us;
        d["lookahead_prepared"] = s.lookahead_prepared;
        d["lookahead_used"] = s.lookahead_used;
        d["lookahead_dropped"] = s.lookahead_dropped;
        return d;
      });

  bind_bench(m);
  bind_protocol(m);
  bind_gen(m);
  // What submit_parsed decodes and checks, as Python tensors: for requests that need them (a
  // shadow compares their outputs; Ray's ingress forwards them), with the same checks and messages.
  m.attr("protocol").cast<py::module_>().def(
      "decode",
      [](const py::handle& parsed, const std::string& where,
         const std::optional<std::vector<std::tuple<std::string, std::string, Shape>>>& model_inputs, bool batched) {
        release_python_owners();
        std::optional<std::vector<TensorSpec>> specs;
        if (model_inputs) specs = parse_specs(*model_inputs);
        auto [inputs, outputs] = decode_request(parsed, where, specs ? &*specs : nullptr, batched);
        py::dict tensors;
        for (auto& in : inputs) tensors[py::str(in.name)] = py::cast(std::move(in.tensor));
        return py::make_tuple(tensors, outputs);
      },
      py::arg("request"), py::arg("where"), py::kw_only(), py::arg("model_inputs") = std::nullopt,
      py::arg("batched") = false,
      "(inputs as {name: Tensor}, requested output names) of a ParsedInferRequest (Note [Native request path]); "
      "model_inputs ((name, datatype, dims) per input) and batched describe the model for a raw single-input "
      "HTTP request");
}
