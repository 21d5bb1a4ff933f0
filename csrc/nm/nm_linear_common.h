// Torch-facing argument checks of nm_pack / nm_linear, shared by the CPU and CUDA wrappers.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <string_view>

#include "nm.h"
#include "nm_pack_common.h"
#include "sparseflow/checks.h"

namespace sparseflow::nm {

inline constexpr std::initializer_list<at::ScalarType> kLinearWeightDtypes = {at::kFloat, at::kBFloat16, at::kHalf,
                                                                               at::kChar};
inline constexpr std::initializer_list<at::ScalarType> kLinearFloatDtypes = {at::kFloat, at::kBFloat16, at::kHalf};
// int8: |sum of in_features products of s8 x s8| must fit in int32 (127 * 128 * 131072 < 2^31).
inline constexpr int64_t kInt8MaxInFeatures = 131072;

inline void check_pack_args(const at::Tensor& values, const at::Tensor& indices, int64_t n, int64_t m) {
  check_compressed_args("sparseflow.nm_pack", values, indices, n, m, kLinearWeightDtypes,
                        "[out_features, in_features/m*n]");
}

inline Activation parse_activation(std::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, "sparseflow.nm_linear: activation must be one of none, relu, gelu, silu, got '", name, "'");
}

// The kernel nm_linear runs on CPU, at the selected ISA level, for weights of weight_dtype with pattern n:m and
// a contiguous x of `tokens` rows, e.g. "avx512_vnni:lanes" (sparseflow.info, the bench). In nm_linear_cpu.cpp.
std::string cpu_kernel_name(at::ScalarType weight_dtype, int64_t n, int64_t m, int64_t tokens);

inline Scalar to_scalar(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Scalar::kFloat32;
    case at::kBFloat16: return Scalar::kBFloat16;
    case at::kHalf: return Scalar::kFloat16;
    default: return Scalar::kInt8;
  }
}

// Checks nm_linear's arguments; returns the output dtype.
inline at::ScalarType check_linear_args(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                        int64_t n, int64_t m, int64_t out_features, int64_t in_features,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& weight_scale,
                                        std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "sparseflow.nm_linear";
  check_n_m(op, n, m);
  check_dtype(op, "packed_values", values, kLinearWeightDtypes);
  check_dtype(op, "packed_meta", meta, {at::kByte});
  check_dtype(op, "x", x, kLinearFloatDtypes);
  const bool int8 = values.scalar_type() == at::kChar;
  TORCH_CHECK_TYPE(int8 || x.scalar_type() == values.scalar_type(), op, ": x (", x.scalar_type(),
                   ") must have the dtype of packed_values (", values.scalar_type(), ")");
  TORCH_CHECK_VALUE(out_features >= 0 && in_features >= 0, op, ": out_features and in_features must be >= 0, got ",
                    out_features, " and ", in_features);
  TORCH_CHECK_VALUE(in_features % m == 0, op, ": in_features (", in_features, ") must be a multiple of m=", m);
  TORCH_CHECK_VALUE(!int8 || in_features <= kInt8MaxInFeatures, op, ": int8 weights support in_features <= ",
                    kInt8MaxInFeatures, " (int32 accumulation), got ", in_features);
  const std::vector<int64_t> values_shape{out_features, in_features / m * n};
  TORCH_CHECK_VALUE(values.sizes() == at::IntArrayRef(values_shape), op, ": packed_values must have shape ",
                    at::IntArrayRef(values_shape), " for ", n, ":", m, " with out_features=", out_features,
                    ", in_features=", in_features, ", got ", values.sizes());
  const std::vector<int64_t> meta_shape{out_features, meta_row_bytes(in_features)};
  TORCH_CHECK_VALUE(meta.sizes() == at::IntArrayRef(meta_shape), op, ": packed_meta must have shape ",
                    at::IntArrayRef(meta_shape), " (the output of sparseflow.nm_pack), got ", meta.sizes());
  TORCH_CHECK_VALUE(values.is_contiguous() && meta.is_contiguous(), op,
                    ": packed_values and packed_meta must be contiguous (as nm_pack returns them)");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == in_features, op, ": x must be [..., in_features=", in_features,
                    "], got shape ", x.sizes());
  check_same_device(op, "x", x, "packed_values", values);
  check_same_device(op, "x", x, "packed_meta", meta);
  if (bias) {
    check_dtype(op, "bias", *bias, {at::kFloat, x.scalar_type()});
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_features, op, ": bias must be [out_features=",
                      out_features, "], got shape ", bias->sizes());
    check_same_device(op, "x", x, "bias", *bias);
  }
  if (int8) {
    TORCH_CHECK_VALUE(weight_scale.has_value(), op, ": int8 packed_values need weight_scale [out_features]");
    check_dtype(op, "weight_scale", *weight_scale, {at::kFloat});
    TORCH_CHECK_VALUE(weight_scale->dim() == 1 && weight_scale->size(0) == out_features, op,
                      ": weight_scale must be [out_features=", out_features, "], got shape ", weight_scale->sizes());
    check_same_device(op, "x", x, "weight_scale", *weight_scale);
  } else {
    TORCH_CHECK_VALUE(!weight_scale.has_value(), op, ": weight_scale is only for int8 packed_values, got ",
                      values.scalar_type(), " values");
  }
  const at::ScalarType out = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK_TYPE(out == at::kFloat || out == at::kBFloat16 || out == at::kHalf, op,
                   ": out_dtype must be float32, bfloat16 or float16, got ", out);
  return out;
}

}  // namespace sparseflow::nm
