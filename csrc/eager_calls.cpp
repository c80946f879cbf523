// The layer operators called from eager Python without the boxed call: qlayers._C.quaternion_linear
// and qlayers._C.quaternion_conv.
//
// torch.ops.qlayers.quaternion_conv(...) converts each of its 14 arguments to an IValue by the
// schema, checks every tensor for __torch_function__ and calls the operator boxed: about 5 us of a
// small convolution's forward, and more once the convolution has evicted that code from the caches
// (docs/performance.md, "Per call"). These entries take the plain case and make the same operator's
// unboxed call; anything else they decline, returning NotImplemented, and the caller then goes
// through torch.ops, which handles it. The operator is the one torch.compile and torch.export trace:
// only the calling convention differs, so eager and traced calls reach the same kernels and autograd.
//
// torch internals used here (CI builds this file against torch 2.9.0, 2.13.0 and 2.14.1, and its
// tests run on 2.9.0 and 2.14.1): THPVariable (torch's Python tensor object), torch's thread-local dispatch keys and torch
// function mode flag, and the forward-AD level registry; layers/onednn_linear.h has the others.
//
// The plain case: every tensor an exact torch.Tensor or torch.nn.Parameter (neither overrides
// __torch_function__), sizes as Python ints or tuples/lists of them, and no torch function mode,
// torch.func transform, forward-mode AD level or autocast active (the Python wrappers handle those:
// transforms and forward AD by a Python Function, autocast by a compute dtype).
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

#include "eager_calls.h"
#include "layers/qlayers_ops.h"

namespace qlayers {
namespace eager {
namespace {

// torch.nn.Parameter, looked up at the first call (importing torch.nn from the module init would
// run before torch has finished importing).
PyTypeObject* parameter_type() {
  static PyTypeObject* const type = [] {
    PyObject* module = PyImport_ImportModule("torch.nn.parameter");
    PyObject* found = module ? PyObject_GetAttrString(module, "Parameter") : nullptr;
    Py_XDECREF(module);
    if (found == nullptr) PyErr_Clear();
    return reinterpret_cast<PyTypeObject*>(found);  // kept for the process's life
  }();
  return type;
}

// Nothing that the Python wrappers must see: no torch function mode, torch.func transform,
// forward-mode AD level or autocast. Autocast keys are excluded from the dispatch unless enabled.
bool plain_state() {
  if (at::impl::torch_function_mode_enabled()) return false;
  const c10::impl::LocalDispatchKeySet keys = c10::impl::tls_local_dispatch_key_set();
  if (keys.included_.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
      keys.included_.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode)) {
    return false;
  }
  if ((keys.excluded_ & c10::autocast_dispatch_keyset) != c10::autocast_dispatch_keyset) return false;
  return torch::autograd::ForwardADLevel::try_get_by_idx(0) == nullptr;
}

// An exact torch.Tensor or torch.nn.Parameter; `optional` also takes None (out stays nullopt).
bool read_tensor(PyObject* object, std::optional<at::Tensor>& out, bool optional = false) {
  if (optional && object == Py_None) return true;
  PyTypeObject* type = Py_TYPE(object);
  if (type != reinterpret_cast<PyTypeObject*>(THPVariableClass) && type != parameter_type()) return false;
  out = THPVariable_Unpack(object);
  return true;
}

// A Python int (not a bool) that fits in int64.
bool read_int(PyObject* object, int64_t& out) {
  if (!PyLong_CheckExact(object)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(object, &overflow);
  if (overflow != 0 || (out == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  return true;
}

using Sizes = c10::SmallVector<int64_t, 3>;

// One int per spatial dim: an int repeated `dims` times, or a tuple or list of ints as it is (the
// operator checks its length), as qlayers.functional.quaternion_conv reads them.
bool read_sizes(PyObject* object, int64_t dims, Sizes& out) {
  int64_t value = 0;
  if (read_int(object, value)) {
    out.assign(static_cast<size_t>(dims), value);
    return true;
  }
  if (!PyTuple_Check(object) && !PyList_Check(object)) return false;
  const Py_ssize_t length = PySequence_Fast_GET_SIZE(object);
  PyObject** items = PySequence_Fast_ITEMS(object);
  out.clear();
  for (Py_ssize_t index = 0; index < length; ++index) {
    if (!read_int(items[index], value)) return false;
    out.push_back(value);
  }
  return true;
}

bool read_bool(PyObject* object, bool& out) {
  if (!PyBool_Check(object)) return false;
  out = object == Py_True;
  return true;
}

bool read_string(PyObject* object, c10::string_view& out) {
  if (!PyUnicode_CheckExact(object)) return false;
  Py_ssize_t length = 0;
  const char* text = PyUnicode_AsUTF8AndSize(object, &length);
  if (text == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = c10::string_view(text, static_cast<size_t>(length));
  return true;
}

PyObject* declined() { Py_RETURN_NOTIMPLEMENTED; }

// The operator's call with the GIL released, as torch's own bindings make it; kernels registered in
// Python (fake kernels, saved-tensor hooks) take it again.
template <typename Call>
PyObject* call_released(Call&& call) {
  at::Tensor result;
  {
    PyThreadState* saved = PyEval_SaveThread();
    struct Restore {
      PyThreadState* state;
      ~Restore() { PyEval_RestoreThread(state); }
    } restore{saved};
    result = call();
  }
  return THPVariable_Wrap(std::move(result));
}

// quaternion_linear(input, r, i, j, k, bias, algorithm): the operator with no compute dtype.
PyObject* quaternion_linear(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7 || !plain_state()) return declined();
  std::optional<at::Tensor> input, r, i, j, k, bias;
  c10::string_view algorithm;
  if (!read_tensor(args[0], input) || !read_tensor(args[1], r) || !read_tensor(args[2], i) ||
      !read_tensor(args[3], j) || !read_tensor(args[4], k) || !read_tensor(args[5], bias, /*optional=*/true) ||
      !read_string(args[6], algorithm)) {
    return declined();
  }
  return call_released(
      [&] { return ops::quaternion_linear(*input, *r, *i, *j, *k, bias, std::nullopt, algorithm); });
  END_HANDLE_TH_ERRORS
}

// quaternion_conv(input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding,
// groups, algorithm): the operator with no compute dtype. Declines an input whose rank is not the
// components' (an unbatched input, which the modules batch first).
PyObject* quaternion_conv(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 13 || !plain_state()) return declined();
  std::optional<at::Tensor> input, r, i, j, k, bias;
  if (!read_tensor(args[0], input) || !read_tensor(args[1], r) || !read_tensor(args[2], i) ||
      !read_tensor(args[3], j) || !read_tensor(args[4], k) || !read_tensor(args[5], bias, /*optional=*/true) ||
      input->dim() != r->dim() || r->dim() < 3) {
    return declined();
  }
  const int64_t dims = r->dim() - 2;
  Sizes stride, padding, dilation, output_padding;
  bool transposed = false;
  int64_t groups = 1;
  c10::string_view algorithm;
  if (!read_sizes(args[6], dims, stride) || !read_sizes(args[7], dims, padding) ||
      !read_sizes(args[8], dims, dilation) || !read_bool(args[9], transposed) ||
      !read_sizes(args[10], dims, output_padding) || !read_int(args[11], groups) ||
      !read_string(args[12], algorithm)) {
    return declined();
  }
  return call_released([&] {
    return ops::quaternion_conv(*input, *r, *i, *j, *k, bias, stride, padding, dilation, transposed, output_padding,
                                groups, std::nullopt, algorithm);
  });
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"quaternion_linear", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&quaternion_linear)),
     METH_FASTCALL,
     "quaternion_linear(input, r, i, j, k, bias, algorithm): torch.ops.qlayers.quaternion_linear without the boxed "
     "call, or NotImplemented where that must serve."},
    {"quaternion_conv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&quaternion_conv)), METH_FASTCALL,
     "quaternion_conv(input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding, groups, "
     "algorithm): torch.ops.qlayers.quaternion_conv without the boxed call, or NotImplemented where that must serve."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* module_methods() { return methods; }

}  // namespace eager
}  // namespace qlayers
