// Tensor arguments the CPU wrappers hand to torch-free kernels as fp32 arrays.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/MaybeOwned.h>

namespace sparseflow {

// t as a contiguous fp32 tensor: borrowed when it already is one (no dispatcher call), else a converted copy.
inline c10::MaybeOwned<at::Tensor> contiguous_float(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return t.expect_contiguous();
  return c10::MaybeOwned<at::Tensor>::owned(t.to(at::kFloat).contiguous());
}

}  // namespace sparseflow
