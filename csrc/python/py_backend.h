// The Python backend adapter: the only code on core threads that takes the GIL.
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <memory>

#include "exec/backend.h"

namespace modelserve::python {

namespace py = pybind11;

// Holds a Python object on the C++ side; takes the GIL to drop it (from any thread).
class GilObject {
 public:
  explicit GilObject(py::object obj) : obj_(std::move(obj)) {}
  ~GilObject() {
    if (!Py_IsInitialized()) {
      obj_.release();  // the interpreter is gone; so is the object
      return;
    }
    py::gil_scoped_acquire gil;
    obj_ = py::object();
  }
  GilObject(const GilObject&) = delete;
  GilObject& operator=(const GilObject&) = delete;
  const py::object& get() const { return obj_; }

 private:
  py::object obj_;
};

// A Python callable as a std::function that any thread may call: it takes the GIL for the call
// (and to drop the callable). What the callable raises goes to sys.unraisablehook, not to the
// C++ caller. None gives an empty function.
template <typename... Args>
std::function<void(Args...)> python_callback(py::object fn) {
  if (fn.is_none()) return {};
  auto held = std::make_shared<GilObject>(std::move(fn));
  return [held](Args... args) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      held->get()(args...);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("a modelserve callback");
    }
  };
}

// Makes a BackendFactory from a Python callable `factory(instance_index, device_str) -> model`,
// where `model.execute(inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]`. Inputs are
// zero-copy views of the gathered batch (BYTES inputs are object arrays of bytes); outputs are
// taken zero-copy when C-contiguous. Exceptions raised by execute fail only that batch, with
// INTERNAL and the exception's type and message.
BackendFactory python_backend_factory(pybind11::object factory);

}  // namespace modelserve::python
