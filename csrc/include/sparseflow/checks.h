// Argument checks shared by every op's CPU and CUDA wrappers. Each failure raises a Python exception of
// the matching type (TypeError for dtypes, ValueError for shapes/values, IndexError for indices) whose
// message names the op, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>

namespace sparseflow {

inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::string s;
  for (auto d : dtypes) {
    if (!s.empty()) s += ", ";
    s += c10::toString(d);
  }
  return s;
}

inline void check_dtype(const char* op, const char* arg, at::ScalarType dtype,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto d : allowed) {
    if (dtype == d) return;
  }
  TORCH_CHECK_TYPE(false, op, ": ", arg, " must have dtype ", dtype_list(allowed), ", got ", dtype);
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  check_dtype(op, arg, t.scalar_type(), allowed);
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", arg, " must be ", dim, "-D ", layout, ", got shape ",
                    t.sizes());
}

inline void check_same_device(const char* op, const char* arg_a, const at::Tensor& a,
                              const char* arg_b, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", arg_a, " and ", arg_b,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_shape(const char* op, const char* arg_a, const at::Tensor& a,
                             const char* arg_b, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": ", arg_a, " and ", arg_b,
                    " must have the same shape, got ", a.sizes(), " and ", b.sizes());
}

}  // namespace sparseflow
