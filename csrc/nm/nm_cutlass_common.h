// Torch-facing checks of the CUTLASS 2:4 packing (nm_pack_cutlass on CPU and CUDA, nm_pack on CUDA).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "nm_cutlass.h"
#include "sparseflow/checks.h"

namespace sparseflow::nm {

// The CUTLASS layouts this build can produce (nm_pack_cutlass's `target`).
inline constexpr int64_t kCutlassTargetSm80 = 80;

inline void check_cutlass_target(const char* op, int64_t target) {
  TORCH_CHECK_VALUE(target == kCutlassTargetSm80, op, ": target must be ", kCutlassTargetSm80,
                    " (the CUTLASS 2.x SparseGemm layout, used on sm80..sm90), got ", target);
}

// Checks canonical 2:4 input (and nm_pack_cutlass's target, when given) and returns the packing params
// (pointers left for the caller).
inline cutlass2x::PackParams cutlass_pack_params(const char* op, const at::Tensor& values,
                                                 const at::Tensor& indices, int64_t n, int64_t m,
                                                 std::optional<int64_t> target) {
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
  return cutlass2x::make_pack_params(values.size(0), values.size(1) * 2);
}

inline std::tuple<at::Tensor, at::Tensor> empty_cutlass_packed(const cutlass2x::PackParams& p,
                                                               const at::Tensor& values) {
  return {at::empty({p.rows_p, p.cols_p / 2}, values.options()),
          at::empty({p.rows_p, p.cols_p / cutlass2x::kColsPerWord}, values.options().dtype(at::kShort))};
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
