// Torch-facing checks of the CUTLASS 2:4 packing (nm_pack_cutlass on CPU and CUDA, nm_pack on CUDA).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "nm_cutlass.h"
#include "sparseflow/checks.h"

namespace sparseflow::nm {

// The CUTLASS layouts nm_pack_cutlass produces (its `target`; nm_cutlass.h describes both).
inline constexpr int64_t kTargetSm80 = 80;
inline constexpr int64_t kTargetSm90 = 90;

inline void check_cutlass_target(const char* op, int64_t target) {
  TORCH_CHECK_VALUE(target == kTargetSm80 || target == kTargetSm90, op,
                    ": target must be 80 (CUTLASS 2.x SparseGemm, sm80 and later) or 90 (CUTLASS 3.x, sm90a), got ",
                    target);
}

// Checks canonical 2:4 input (and nm_pack_cutlass's target, when given).
inline void check_cutlass_pack_args(const char* op, const at::Tensor& values, const at::Tensor& indices, int64_t n,
                                    int64_t m, std::optional<int64_t> target) {
  TORCH_CHECK_VALUE(n == 2 && m == 4, op, ": the CUTLASS sparse tensor-core layout is 2:4 only, got n:m = ", n,
                    ":", m);
  if (target.has_value()) check_cutlass_target(op, *target);
  check_dtype(op, "values", values, {at::kHalf, at::kBFloat16});
  check_dtype(op, "indices", indices, {at::kByte});
  check_dim(op, "values", values, 2, "[rows, cols/2]");
  check_same_shape(op, "values", values, "indices", indices);
  check_same_device(op, "values", values, "indices", indices);
  TORCH_CHECK_VALUE(values.size(1) % 2 == 0, op, ": the column count of values (", values.size(1),
                    ") must be a multiple of n=2");
}

inline cutlass2x::PackParams cutlass_pack_params(int64_t target, int64_t rows, int64_t cols) {
  return target == kTargetSm90 ? cutlass2x::sm90::make_pack_params(rows, cols)
                               : cutlass2x::make_pack_params(rows, cols);
}

// Target 80: int16 metadata words; target 90: metadata bytes (the dtype tells nm_linear the layout).
inline std::tuple<at::Tensor, at::Tensor> empty_cutlass_packed(int64_t target, const cutlass2x::PackParams& p,
                                                               const at::Tensor& values) {
  at::Tensor packed_values = at::empty({p.rows_p, p.values_cols / 2}, values.options());
  if (target == kTargetSm90) {
    return {packed_values,
            at::empty({p.rows_p, p.cols_p / cutlass2x::sm90::kColsPerByte}, values.options().dtype(at::kByte))};
  }
  return {packed_values, at::empty({p.rows_p, p.cols_p / cutlass2x::kColsPerWord}, values.options().dtype(at::kShort))};
}

// `positions` is a host copy of the bad group's two positions.
inline void fail_cutlass_pack(const char* op, const cutlass2x::PackParams& p, int64_t bad,
                                           const at::Tensor& positions) {
  const int64_t groups = p.cols / 4;
  const int64_t row = bad / groups, group = bad % groups;
  const uint8_t* pos = positions.data_ptr<uint8_t>();
  TORCH_CHECK_INDEX(false, op, ": indices of row ", row, ", group ", group, " (columns ", group * 2, "..",
                    group * 2 + 1, ") are [", int(pos[0]), ", ", int(pos[1]),
                    "]; expected strictly ascending positions in [0, 4)");
}

}  // namespace sparseflow::nm
