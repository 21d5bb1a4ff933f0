// Torch-facing argument checks of bsr_pack / bsr_linear, shared by the CPU and CUDA wrappers. Each failure raises TypeError (dtype), ValueError (shape/value) or IndexError (index) with a
// message that starts with the op's name and names the argument.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "bsr.h"
#include "sparseflow/checks.h"

namespace sparseflow::bsr {

inline constexpr const char* kPackOp = "sparseflow.bsr_pack";
inline constexpr const char* kLinearOp = "sparseflow.bsr_linear";

inline DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kF32;
    case at::kBFloat16: return DType::kBF16;
    case at::kChar: return DType::kS8;
    default: return DType::kS32;
  }
}

inline at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::kF32: return at::kFloat;
    case DType::kBF16: return at::kBFloat16;
    case DType::kS8: return at::kChar;
    case DType::kS32: return at::kInt;
  }
  return at::kFloat;
}

inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kInt8_4x1: return "4x1";
    case Layout::kInt8_16x1: return "int8 16x1";
    case Layout::kFloat4x1: return "float 4x1";
    case Layout::kF16x1: return "16x1";
    case Layout::kF1x16: return "1x16";
  }
  return "?";
}

// ------------------------------------------------------------------------------------------------ pack

struct PackRequest {
  CanonicalBsr w;
  Layout layout = Layout::kF16x1;
};

// Shapes and sizes of the canonical arrays (after the dtype checks, which differ per device).
inline void check_canonical_shapes(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                   const at::Tensor& values, int64_t out_features, int64_t in_features) {
  check_dim(op, "crow", crow, 1, "[out_features/R + 1]");
  check_dim(op, "col", col, 1, "[nnz_blocks]");
  check_dim(op, "values", values, 3, "[nnz_blocks, R, C]");
  check_same_device(op, "crow", crow, "col", col);
  check_same_device(op, "crow", crow, "values", values);
  TORCH_CHECK_VALUE(out_features >= 0, op, ": out_features must be >= 0, got ", out_features);
  TORCH_CHECK_VALUE(in_features >= 0 && in_features <= kMaxInFeatures, op, ": in_features must be in [0, ",
                    kMaxInFeatures, "] (indices are 16-bit), got ", in_features);
  const int64_t R = values.size(1), C = values.size(2);
  TORCH_CHECK_VALUE(R >= 1 && C >= 1, op, ": values must hold R x C blocks with R, C >= 1, got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(crow.numel() == ceil_div(out_features, R) + 1, op, ": crow must have ceil(out_features/R) + 1 = ",
                    ceil_div(out_features, R) + 1, " entries for out_features=", out_features, ", R=", R, ", got ",
                    crow.numel());
  TORCH_CHECK_VALUE(col.numel() == values.size(0), op, ": col and values must describe the same blocks, got ",
                    col.numel(), " column indices and ", values.size(0), " blocks");
}

inline PackRequest check_pack_args(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                                   int64_t out_features, int64_t in_features, const std::string& kernel) {
  constexpr const char* op = kPackOp;
  check_dtype(op, "crow", crow, {at::kInt});
  check_dtype(op, "col", col, {at::kInt});
  check_dtype(op, "values", values, {at::kFloat, at::kBFloat16, at::kChar});
  check_canonical_shapes(op, crow, col, values, out_features, in_features);
  const int64_t R = values.size(1), C = values.size(2);
  PackRequest req;
  req.w.dtype = dtype_code(values.scalar_type());
  req.w.R = R;
  req.w.C = C;
  req.w.out_features = out_features;
  req.w.in_features = in_features;
  req.w.nnz = col.numel();
  const bool is_int8 = req.w.dtype == DType::kS8;
  if (kernel == "4x1") {
    req.layout = is_int8 ? Layout::kInt8_4x1 : Layout::kFloat4x1;
  } else if (kernel == "16x1") {
    req.layout = is_int8 ? Layout::kInt8_16x1 : Layout::kF16x1;
  } else if (kernel == "1x16") {
    TORCH_CHECK_VALUE(!is_int8, op, ": int8 weights use kernel '4x1' or '16x1' (or 'auto'), got '", kernel, "'");
    req.layout = Layout::kF1x16;
  } else if (kernel == "auto") {
    // Cut so that native blocks store as few zeros as possible. int8: 16x1 when canonical block-rows are whole
    // 16x1 block-rows (R a multiple of 16), else the finer 4x1. Float: 1x16 for wide blocks (C > R); else 16x1
    // when R is a multiple of 16, else float 4x1.
    if (is_int8) {
      req.layout = R % 16 == 0 ? Layout::kInt8_16x1 : Layout::kInt8_4x1;
    } else if (C > R) {
      req.layout = Layout::kF1x16;
    } else {
      req.layout = R % 16 != 0 ? Layout::kFloat4x1 : Layout::kF16x1;
    }
  } else {
    TORCH_CHECK_VALUE(false, op, ": kernel must be 'auto', '4x1', '16x1' or '1x16', got '", kernel, "'");
  }
  return req;
}

inline void fail_canonical(const CanonicalCheck& c, const at::Tensor& crow, const at::Tensor& col,
                           const CanonicalBsr& w) {
  constexpr const char* op = kPackOp;
  const auto* cr = crow.data_ptr<int32_t>();
  const auto* cl = col.data_ptr<int32_t>();
  switch (c.error) {
    case CanonicalError::kNone: return;
    case CanonicalError::kCrowStart:
      TORCH_CHECK_INDEX(false, op, ": crow[0] must be 0, got ", cr[0]);
    case CanonicalError::kCrowDecreasing:
      TORCH_CHECK_INDEX(false, op, ": crow must be non-decreasing, but crow[", c.entry, "] = ", cr[c.entry],
                        " < crow[", c.entry - 1, "] = ", cr[c.entry - 1]);
    case CanonicalError::kCrowEnd:
      TORCH_CHECK_INDEX(false, op, ": crow[-1] must equal the number of blocks (", w.nnz, "), got ", cr[c.entry]);
    case CanonicalError::kColRange:
      TORCH_CHECK_INDEX(false, op, ": col[", c.entry, "] = ", cl[c.entry], " (block-row ", c.block_row,
                        ") is out of range [0, ", ceil_div(w.in_features, w.C), ") for in_features=",
                        w.in_features, ", C=", w.C);
    case CanonicalError::kColOrder:
      TORCH_CHECK_INDEX(false, op, ": col must be strictly ascending within each block-row, but block-row ",
                        c.block_row, " has col[", c.entry - 1, "] = ", cl[c.entry - 1], " then col[", c.entry,
                        "] = ", cl[c.entry]);
  }
}

// ------------------------------------------------------------------------------------------------ linear

inline Activation parse_activation(const char* op, const std::string& s) {
  if (s == "none") return Activation::kNone;
  if (s == "relu") return Activation::kRelu;
  if (s == "gelu") return Activation::kGelu;
  if (s == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu', 'gelu' or 'silu', got '", s, "'");
}

struct LinearRequest {
  Weight w;
  Activation act = Activation::kNone;
  DType out = DType::kF32;
};

// The packed weight's description in `meta` (bsr_pack on CPU): layout, dtype, shape, block-rows, tile span.
// Sets *nnz to the blocks it records.
inline Weight read_cpu_meta(const char* op, const at::Tensor& meta, int64_t* nnz) {
  check_dtype(op, "meta", meta, {at::kLong});
  TORCH_CHECK_VALUE(meta.dim() == 1 && meta.numel() == kMetaSize && meta.device().is_cpu(), op,
                    ": meta must be the 1-D int64 CPU tensor of ", int(kMetaSize), " entries returned by bsr_pack, got shape ",
                    meta.sizes(), " on ", meta.device());
  const at::Tensor m = meta.contiguous();
  const int64_t* mp = m.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(mp[kMetaVersion] == kFormatVersion, op, ": meta says packed-format version ", mp[kMetaVersion],
                    "; this build reads version ", kFormatVersion, " (re-pack the weight)");
  const int64_t layout = mp[kMetaLayout];
  TORCH_CHECK_VALUE(layout != 4, op, ": meta holds layout id 4, the CUDA layout; for the CPU pack the weight with "
                    "bsr_pack on CPU tensors");
  TORCH_CHECK_VALUE((layout >= 1 && layout <= 3) || layout == 5 || layout == 6, op, ": meta holds an unknown layout id ",
                    layout);
  const int64_t dcode = mp[kMetaDtype];
  TORCH_CHECK_VALUE(dcode >= 0 && dcode <= 2, op, ": meta holds an unknown dtype code ", dcode);
  Weight w;
  w.layout = static_cast<Layout>(layout);
  w.dtype = static_cast<DType>(dcode);
  w.N = mp[kMetaOut];
  w.K = mp[kMetaIn];
  w.block_rows = ceil_div(w.N, native_block(w.layout).rows);
  *nnz = mp[kMetaNnz];
  TORCH_CHECK_VALUE(mp[kMetaTileSpan] == 0 || (mp[kMetaTileSpan] == kTileSpan && has_tile_span(w.layout)), op,
                    ": meta holds tile span ", mp[kMetaTileSpan], " (0, or ", kTileSpan, " for the 4x1 layouts)");
  w.tile_span = static_cast<int>(mp[kMetaTileSpan]);
  TORCH_CHECK_VALUE((w.dtype == DType::kS8) == is_int8_layout(w.layout), op, ": meta pairs layout ",
                    layout_name(w.layout), " with dtype ", scalar_type(w.dtype),
                    " (int8 layouts: 4x1, int8 16x1; float: 16x1, 1x16, float 4x1)");
  return w;
}

// The kernel bsr_linear runs on CPU, at the selected ISA level, for the weight packed with `meta` and an x of
// `tokens` rows, e.g. "avx512_vnni:decode_16x1" (sparseflow.info, the bench). Defined in bsr_cpu.cpp.
std::string cpu_kernel_name(const at::Tensor& meta, int64_t tokens);

// Everything bsr_linear can check without reading tensor data except `meta` (a CPU tensor): dtypes,
// shapes, devices and the consistency of the packed tensors with each other and with x.
inline LinearRequest check_linear_args(const at::Tensor& x, const at::Tensor& meta, const at::Tensor& rowptr,
                                       const at::Tensor& indices, const at::Tensor& values,
                                       const at::Tensor& compensation, int64_t out_features, int64_t in_features,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& weight_scale, const std::string& activation,
                                       std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = kLinearOp;
  LinearRequest req;
  int64_t nnz = 0;
  req.w = read_cpu_meta(op, meta, &nnz);
  Weight& w = req.w;
  TORCH_CHECK_VALUE(w.N == out_features && w.K == in_features, op, ": the weight was packed for [", w.N, ", ", w.K,
                    "] but out_features=", out_features, ", in_features=", in_features, " were passed");
  const NativeBlock nb = native_block(w.layout);
  const bool is_int8 = w.dtype == DType::kS8;

  check_dtype(op, "x", x, {at::kFloat, at::kBFloat16});
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape [..., in_features], got a 0-D tensor");
  TORCH_CHECK_VALUE(x.size(-1) == in_features, op, ": x has ", x.size(-1), " input features (last dim of shape ",
                    x.sizes(), ") but the weight has in_features=", in_features);
  check_dtype(op, "values", values, {scalar_type(w.dtype)});
  if (!is_int8) {
    TORCH_CHECK_TYPE(x.scalar_type() == values.scalar_type(), op, ": x must have the weight's dtype ",
                     values.scalar_type(), ", got ", x.scalar_type());
  }
  check_dtype(op, "rowptr", rowptr, {at::kInt});
  check_dtype(op, "indices", indices, {at::kShort});
  check_dtype(op, "compensation", compensation, {at::kInt});
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() == w.block_rows + 1, op, ": rowptr must be 1-D with ",
                    w.block_rows + 1, " entries for out_features=", w.N, " and ", layout_name(w.layout),
                    " blocks, got shape ", rowptr.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.numel() == nnz, op, ": indices must be 1-D with the ", nnz,
                    " blocks recorded in meta, got shape ", indices.sizes());
  const bool tiled = is_tiled_layout(w.layout);
  const std::vector<int64_t> vshape =
      tiled ? std::vector<int64_t>{nnz / 4, nb.rows, 4} : std::vector<int64_t>{nnz, 16};
  TORCH_CHECK_VALUE(values.sizes() == at::IntArrayRef(vshape) && (!tiled || nnz % 4 == 0), op,
                    ": values must have shape ", at::IntArrayRef(vshape), ", got ", values.sizes());
  TORCH_CHECK_VALUE(compensation.dim() == 1 && compensation.numel() == (is_int8 ? w.N : 0), op,
                    ": compensation must be 1-D with ", is_int8 ? w.N : 0, " entries, got shape ",
                    compensation.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"rowptr", &rowptr},
                                {"indices", &indices}, {"values", &values}, {"compensation", &compensation}}) {
    check_same_device(op, "x", x, name, *t);
  }

  if (out_dtype.has_value()) {
    const at::ScalarType o = *out_dtype;
    TORCH_CHECK_TYPE(o == at::kFloat || o == at::kBFloat16 || (is_int8 && o == at::kInt), op,
                     ": out_dtype must be float32 or bfloat16", is_int8 ? " (or int32 for the raw accumulator)" : "",
                     ", got ", o);
    req.out = dtype_code(o);
  } else {
    req.out = dtype_code(x.scalar_type());
  }
  req.act = parse_activation(op, activation);
  if (req.out == DType::kS32) {
    TORCH_CHECK_VALUE(!bias.has_value() && req.act == Activation::kNone, op,
                      ": out_dtype=int32 returns the raw int32 accumulator; bias and activation must be unset");
  }
  if (bias.has_value()) {
    check_dtype(op, "bias", *bias, {at::kFloat, x.scalar_type()});
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == w.N, op, ": bias must have shape [", w.N,
                      "], got ", bias->sizes());
    check_same_device(op, "x", x, "bias", *bias);
  }
  if (is_int8) {
    if (req.out != DType::kS32) {
      TORCH_CHECK_VALUE(weight_scale.has_value(), op,
                        ": int8 weights need weight_scale (per-output-channel fp32 scales) to dequantize");
    }
    if (weight_scale.has_value()) {
      check_dtype(op, "weight_scale", *weight_scale, {at::kFloat});
      TORCH_CHECK_VALUE(weight_scale->dim() == 1 && weight_scale->numel() == w.N, op,
                        ": weight_scale must have shape [", w.N, "], got ", weight_scale->sizes());
      check_same_device(op, "x", x, "weight_scale", *weight_scale);
    }
  } else {
    TORCH_CHECK_VALUE(!weight_scale.has_value(), op, ": weight_scale applies to int8 weights only; these are ",
                      scalar_type(w.dtype));
  }
  return req;
}

}  // namespace sparseflow::bsr
