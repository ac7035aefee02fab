#include "python/py_backend.h"

#include <pybind11/numpy.h>

#include <algorithm>

#include "common/status.h"
#include "python/py_tensor.h"

namespace modelserve::python {

namespace {

// Note [Instance thread states]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A core thread that takes the GIL needs a PyThreadState. gil_scoped_acquire creates one when the
// thread has none and deletes it again on release: two allocations and interpreter-list updates
// per batch. An instance thread instead keeps the state it got on its first batch (one extra
// reference) until the thread exits, when the thread_local below drops it, taking the GIL to do so.
// Only a thread that had no state of its own does: a Python thread running its own request (Note
// [Caller runs] in csrc/exec/executor.h) has the state Python made for it, which Python deletes
// when the thread ends; keeping a reference to it would outlive it.
struct KeptThreadState {
  bool kept = false;
  ~KeptThreadState() {
    if (kept && Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      gil.dec_ref();  // the reference taken in keep_thread_state(); the state goes with `gil`
    }
  }
};

void keep_thread_state(py::gil_scoped_acquire& gil) {
  thread_local KeptThreadState kept;
  if (!kept.kept) {
    gil.inc_ref();
    kept.kept = true;
  }
}

// A modelserve error raised by Python code (modelserve.errors.ModelserveError) keeps its status
// code: an onnxruntime InvalidArgument is the caller's fault, not the server's. Anything else is
// INTERNAL. Returns kInternal when `e` is not a modelserve error.
StatusCode status_code_of(py::error_already_set& e) {
  // Leaked on purpose: a static py::object would be destroyed after the interpreter is gone.
  static py::object* base = new py::object(py::module_::import("modelserve.errors").attr("ModelserveError"));
  if (!e.matches(*base)) return StatusCode::kInternal;
  const int code = py::getattr(e.value(), "code", py::int_(-1)).cast<int>();
  const bool known = code > static_cast<int>(StatusCode::kOk) && code <= static_cast<int>(StatusCode::kUnimplemented);
  return known ? static_cast<StatusCode>(code) : StatusCode::kInternal;
}

std::string describe(py::error_already_set& e) {
  std::string type = py::str(e.type().attr("__name__")).cast<std::string>();
  std::string message = py::str(e.value()).cast<std::string>();
  return type + (message.empty() ? "" : ": " + message);
}

class PyBackend final : public Backend {
 public:
  explicit PyBackend(py::object model) : model_(std::move(model)) {}

  TensorList execute(const ExecuteContext& ctx) override {
    const bool core_thread = PyGILState_GetThisThreadState() == nullptr;  // no GIL needed to ask
    py::gil_scoped_acquire gil;
    if (core_thread) keep_thread_state(gil);
    try {
      py::dict inputs;
      for (const auto& in : ctx.inputs) inputs[py::str(in.name)] = tensor_to_numpy(in.tensor);
      py::object result = model_.get().attr("execute")(inputs);
      MS_EXPECTS(PyDict_Check(result.ptr()) || py::hasattr(result, "items"), kInternal,
                 "execute() must return a dict of output name to numpy array, got ",
                 Py_TYPE(result.ptr())->tp_name);
      TensorList outputs;
      for (auto item : result.attr("items")()) {
        auto pair = item.cast<py::tuple>();
        std::string name = py::str(pair[0]).cast<std::string>();
        if (!ctx.requested_outputs.empty() &&
            std::find(ctx.requested_outputs.begin(), ctx.requested_outputs.end(), name) ==
                ctx.requested_outputs.end()) {
          continue;  // not asked for by anyone in this batch: skip the conversion
        }
        py::array array = py::array::ensure(pair[1]);
        MS_EXPECTS(array, kInternal, "output '", name, "' is a ", Py_TYPE(pair[1].ptr())->tp_name,
                   ", not convertible to a numpy array");
        try {
          outputs.push_back({name, tensor_from_numpy(array)});
        } catch (const Error& e) {
          MS_FAIL(kInternal, "output '", name, "': ", e.what());
        }
      }
      return outputs;
    } catch (py::error_already_set& e) {
      const StatusCode code = status_code_of(e);
      if (code != StatusCode::kInternal) throw Error(code, py::str(e.value()).cast<std::string>());
      MS_FAIL(kInternal, "execute() raised ", describe(e));
    }
  }

 private:
  GilObject model_;
};

}  // namespace

BackendFactory python_backend_factory(py::object factory) {
  auto shared = std::make_shared<GilObject>(std::move(factory));
  return [shared](const InstanceInfo& info) -> std::unique_ptr<Backend> {
    py::gil_scoped_acquire gil;
    try {
      py::object model = shared->get()(info.index, info.device.str());
      MS_EXPECTS(py::hasattr(model, "execute"), kInvalidArgument, "the backend factory returned a ",
                 Py_TYPE(model.ptr())->tp_name, " with no execute() method");
      return std::make_unique<PyBackend>(std::move(model));
    } catch (py::error_already_set& e) {
      MS_FAIL(kInternal, "creating instance ", info.index, " raised ", describe(e));
    }
  };
}

}  // namespace modelserve::python
