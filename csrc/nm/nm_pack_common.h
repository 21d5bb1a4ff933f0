// Torch-facing pieces of nm_compress / nm_decompress shared by the CPU and CUDA wrappers.
#pragma once

#include <ATen/ATen.h>

#include <sstream>

#include "nm.h"
#include "nm_prune.h"
#include "sparseflow/checks.h"

namespace sparseflow::nm {

inline constexpr std::initializer_list<at::ScalarType> kPackDtypes = {
    at::kFloat, at::kHalf, at::kBFloat16, at::kChar, at::kFloat8_e4m3fn};

inline ElementKind element_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return {4, 0x7fffffffu};
    case at::kHalf:
    case at::kBFloat16: return {2, 0x7fffu};
    case at::kFloat8_e4m3fn: return {1, 0x7fu};
    default: return {1, 0xffu};  // int8: every bit counts
  }
}

inline PruneDtype prune_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return PruneDtype::kFloat32;
    case at::kHalf: return PruneDtype::kFloat16;
    case at::kBFloat16: return PruneDtype::kBFloat16;
    case at::kFloat8_e4m3fn: return PruneDtype::kFloat8E4M3;
    default: return PruneDtype::kInt8;  // kPackDtypes admits nothing else
  }
}

inline void check_n_m(const char* op, int64_t n, int64_t m) {
  TORCH_CHECK_VALUE(m >= 1 && m <= kMaxM, op, ": m must be in [1, ", kMaxM, "], got m=", m);
  TORCH_CHECK_VALUE(n >= 1 && n <= m, op, ": n must be in [1, m] (n:m keeps n of every m), got n=", n,
                    ", m=", m);
}

// Checks nm_compress's arguments and returns the params with the dense pointer filled in.
inline PackParams compress_params(const at::Tensor& dense, int64_t n, int64_t m) {
  constexpr const char* op = "sparseflow.nm_compress";
  check_n_m(op, n, m);
  check_dtype(op, "dense", dense, kPackDtypes);
  check_dim(op, "dense", dense, 2, "[rows, cols]");
  TORCH_CHECK_VALUE(dense.size(1) % m == 0, op, ": the column count of dense (", dense.size(1),
                    ") must be a multiple of m=", m);
  PackParams p;
  p.rows = dense.size(0);
  p.cols = dense.size(1);
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.kind = element_kind(dense.scalar_type());
  return p;
}

// The checks of a compressed (values, indices, n, m) argument set, shared by nm_decompress and nm_pack.
inline void check_compressed_args(const char* op, const at::Tensor& values, const at::Tensor& indices, int64_t n,
                                  int64_t m, std::initializer_list<at::ScalarType> value_dtypes,
                                  const char* values_shape) {
  check_n_m(op, n, m);
  check_dtype(op, "values", values, value_dtypes);
  check_dtype(op, "indices", indices, {at::kByte});
  check_dim(op, "values", values, 2, values_shape);
  check_same_shape(op, "values", values, "indices", indices);
  check_same_device(op, "values", values, "indices", indices);
  TORCH_CHECK_VALUE(values.size(1) % n == 0, op, ": the column count of values (", values.size(1),
                    ") must be a multiple of n=", n);
}

inline PackParams decompress_params(const at::Tensor& values, const at::Tensor& indices, int64_t n,
                                    int64_t m) {
  check_compressed_args("sparseflow.nm_decompress", values, indices, n, m, kPackDtypes, "[rows, cols/m*n]");
  PackParams p;
  p.rows = values.size(0);
  p.cols = values.size(1) / n * m;
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.kind = element_kind(values.scalar_type());
  return p;
}

// The message for the first invalid group. `dense_group` / `positions` are host copies of that group.
inline void fail_compress(const PackParams& p, int64_t bad, const at::Tensor& dense_group_cpu) {
  const int64_t groups = p.cols / p.m;
  const int64_t row = bad / groups, group = bad % groups;
  const int64_t nonzeros = dense_group_cpu.to(at::kFloat).ne(0).sum().item<int64_t>();
  TORCH_CHECK_VALUE(false, "sparseflow.nm_compress: dense is not ", p.n, ":", p.m, " sparse: row ", row,
                    ", group ", group, " (columns ", group * p.m, "..", group * p.m + p.m - 1, ") has ",
                    nonzeros, " non-zeros, at most ", p.n, " allowed");
}

inline void fail_decompress(const PackParams& p, int64_t bad, const at::Tensor& positions_cpu) {
  const int64_t groups = p.cols / p.m;
  const int64_t row = bad / groups, group = bad % groups;
  std::ostringstream got;
  const uint8_t* pos = positions_cpu.data_ptr<uint8_t>();
  for (int i = 0; i < p.n; ++i) got << (i ? ", " : "") << int(pos[i]);
  TORCH_CHECK_INDEX(false, "sparseflow.nm_decompress: indices of row ", row, ", group ", group,
                    " (columns ", group * p.n, "..", group * p.n + p.n - 1, ") are [", got.str(),
                    "]; expected strictly ascending positions in [0, ", p.m, ")");
}

}  // namespace sparseflow::nm
