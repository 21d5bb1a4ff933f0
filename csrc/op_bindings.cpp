// Direct Python bindings of the per-call ops (sparseflow._C.nm_linear / bsr_linear), for sparseflow.ops.
//
// torch.ops.sparseflow.<op> converts every argument through the op's schema in Python-facing generic code:
// ~5 us per call with these ops' 11-12 arguments, as much as the whole one-token kernel on a small weight
// (nm_linear int8 2:4 768x3072, 2 threads: 34 us through torch.ops, 28 us here). These bindings convert
// the arguments with pybind11 and call the same op through the dispatcher's typed handle, so every
// registered kernel, the autograd fallback (when a tensor requires grad), fake/meta tensors and dispatch
// modes behave exactly as through torch.ops. What they skip - __torch_function__ overrides and modes, and
// torch.compile tracing - is checked in sparseflow/ops.py, which routes those calls through torch.ops.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <string>

#include "bsr/bsr_common.h"
#include "nm/nm_linear_common.h"

namespace py = pybind11;

namespace sparseflow {
namespace {

using OptTensor = std::optional<at::Tensor>;
using NmLinear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                            int64_t, const OptTensor&, const OptTensor&, c10::string_view,
                            std::optional<at::ScalarType>);
using BsrLinear = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&,
                             const OptTensor&, c10::string_view, std::optional<at::ScalarType>);

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t.has_value() && requires_grad(*t); }
template <typename T>
bool requires_grad(const T&) {
  return false;
}

// Calls the op; when no tensor argument requires grad, below the autograd keys. No autograd kernel is
// registered, so those keys reach the boxed autograd fallback, which boxes every argument only to find
// that nothing requires grad (~0.5 us of a ~5 us call). With a tensor that requires grad, the fallback runs
// as through torch.ops.
template <typename Signature, typename... Args>
at::Tensor call_op(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  if ((requires_grad(args) || ...)) return op.call(args...);
  c10::impl::ExcludeDispatchKeyGuard below_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  return op.call(args...);
}

template <typename Signature>
const c10::TypedOperatorHandle<Signature>& op_handle(const char* name) {
  // One lookup per op and process; handles stay valid while the library is loaded.
  static const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return handle;
}

at::Tensor nm_linear(const at::Tensor& x, const at::Tensor& packed_values, const at::Tensor& packed_meta, int64_t n,
                     int64_t m, int64_t out_features, int64_t in_features, const OptTensor& bias,
                     const OptTensor& weight_scale, const std::string& activation,
                     std::optional<at::ScalarType> out_dtype) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;  // as torch.ops does: other Python threads run meanwhile
  return call_op(op_handle<NmLinear>("sparseflow::nm_linear"), x, packed_values, packed_meta, n, m, out_features,
                 in_features, bias, weight_scale, c10::string_view(activation), out_dtype);
  END_HANDLE_TH_ERRORS_PYBIND
}

at::Tensor bsr_linear(const at::Tensor& x, const at::Tensor& meta, const at::Tensor& rowptr,
                      const at::Tensor& indices, const at::Tensor& packed_values, const at::Tensor& compensation,
                      int64_t out_features, int64_t in_features, const OptTensor& bias, const OptTensor& weight_scale,
                      const std::string& activation, std::optional<at::ScalarType> out_dtype) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  return call_op(op_handle<BsrLinear>("sparseflow::bsr_linear"), x, meta, rowptr, indices, packed_values,
                 compensation, out_features, in_features, bias, weight_scale, c10::string_view(activation),
                 out_dtype);
  END_HANDLE_TH_ERRORS_PYBIND
}

std::string bsr_linear_cpu_kernel(const at::Tensor& meta, int64_t tokens) {
  HANDLE_TH_ERRORS
  return bsr::cpu_kernel_name(meta, tokens);
  END_HANDLE_TH_ERRORS_PYBIND
}

std::string nm_linear_cpu_kernel(at::ScalarType weight_dtype, int64_t n, int64_t m, int64_t tokens) {
  HANDLE_TH_ERRORS
  return nm::cpu_kernel_name(weight_dtype, n, m, tokens);
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

void bind_ops(py::module_& m) {
  // Names and defaults as in the schemas (csrc/ops.cpp).
  m.def("nm_linear", &nm_linear, "torch.ops.sparseflow.nm_linear without the generic argument conversion.",
        py::arg("x"), py::arg("packed_values"), py::arg("packed_meta"), py::arg("n"), py::arg("m"),
        py::arg("out_features"), py::arg("in_features"), py::arg("bias") = py::none(),
        py::arg("weight_scale") = py::none(), py::arg("activation") = "none", py::arg("out_dtype") = py::none());
  m.def("bsr_linear", &bsr_linear, "torch.ops.sparseflow.bsr_linear without the generic argument conversion.",
        py::arg("x"), py::arg("meta"), py::arg("rowptr"), py::arg("indices"), py::arg("packed_values"),
        py::arg("compensation"), py::arg("out_features"), py::arg("in_features"), py::arg("bias") = py::none(),
        py::arg("weight_scale") = py::none(), py::arg("activation") = "none", py::arg("out_dtype") = py::none());
  m.def("bsr_linear_cpu_kernel", &bsr_linear_cpu_kernel,
        "The kernel bsr_linear runs on CPU for this packed meta and x of `tokens` rows.", py::arg("meta"),
        py::arg("tokens"));
  m.def("nm_linear_cpu_kernel", &nm_linear_cpu_kernel,
        "The kernel nm_linear runs on CPU for n:m weights of weight_dtype and x of `tokens` rows.",
        py::arg("weight_dtype"), py::arg("n"), py::arg("m"), py::arg("tokens"));
}

}  // namespace sparseflow
