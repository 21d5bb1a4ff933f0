// CUDA wrappers of bsr_pack / bsr_linear (tensor-core BSR, bsr_cuda.h). Packing validates crow/col on host
// copies and, when it re-cuts blocks into tiles, reads the tile count back (syncs, once per weight); bsr_linear
// allocates only its output and never synchronises (meta is a CPU tensor, read without touching the GPU), so it
// can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bsr_common.h"
#include "bsr_cuda.h"
#include "sparseflow/checks.h"
#include "sparseflow/cuda_arch.h"

namespace sparseflow::bsr::cuda {
namespace {

bool supported_block(int64_t t) { return t == 16 || t == 32 || t == 64 || t == 128; }
bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The tile size of `kernel` for R x C canonical blocks, and whether they are re-cut ("auto": square supported
// blocks are kept, others cut into 16 x 16 tiles, the least fill-in; "TxT": that tile, kept when it is R x C).
std::pair<int64_t, bool> cuda_tile(c10::string_view kernel, int64_t R, int64_t C) {
  const bool square = R == C && supported_block(R);
  if (kernel == "auto") return {square ? R : 16, !square};
  for (const int64_t t : {16, 32, 64, 128}) {
    if (kernel == std::to_string(t) + "x" + std::to_string(t)) return {t, !(R == t && C == t)};
  }
  TORCH_CHECK_VALUE(false, kPackOp, ": kernel '", std::string(kernel),
                    "' is not a CUDA layout; on CUDA use 'auto', '16x16', '32x32', '64x64' or '128x128' (the "
                    "tensor-core tile the blocks are re-cut into)");
  return {0, false};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bsr_pack_cuda(
    const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in, int64_t out_features,
    int64_t in_features, c10::string_view kernel) {
  constexpr const char* op = kPackOp;
  check_dtype(op, "crow", crow_in, {at::kInt});
  check_dtype(op, "col", col_in, {at::kInt});
  TORCH_CHECK_TYPE(values_in.scalar_type() == at::kHalf || values_in.scalar_type() == at::kBFloat16, op,
                   ": values must have dtype Half or BFloat16 on CUDA (the tensor-core kernel's), got ",
                   values_in.scalar_type(), "; float32 and int8 block weights run on the CPU kernels (bsr_pack on a "
                   "CPU tensor)");
  check_canonical_shapes(op, crow_in, col_in, values_in, out_features, in_features);
  const int64_t R = values_in.size(1), C = values_in.size(2);
  const auto [T, recut] = cuda_tile(kernel, R, C);

  const int64_t block_rows = ceil_div(out_features, R);
  const int64_t nnz = col_in.numel();
  // Validation on host copies of the (small) index arrays, in the CPU pack's order and words.
  const at::Tensor crow_h = crow_in.to(at::kCPU).contiguous();
  const at::Tensor col_h = col_in.to(at::kCPU).contiguous();
  CanonicalBsr canonical;
  canonical.crow = crow_h.data_ptr<int32_t>();
  canonical.col = col_h.data_ptr<int32_t>();
  canonical.R = R;
  canonical.C = C;
  canonical.out_features = out_features;
  canonical.in_features = in_features;
  canonical.nnz = nnz;
  fail_canonical(validate_canonical(canonical), crow_h, col_h, canonical);

  const c10::cuda::CUDAGuard guard(values_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor col = col_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  at::Tensor meta = at::zeros({kMetaSlots}, at::TensorOptions().dtype(at::kLong));
  int64_t* mp = meta.data_ptr<int64_t>();
  mp[kMetaVersion] = kFormatVersion;
  mp[kMetaLayout] = kLayoutCudaSquare;
  mp[kMetaDtype] = values.scalar_type() == at::kBFloat16 ? kDtypeBF16 : kDtypeF16;
  mp[kMetaOut] = out_features;
  mp[kMetaIn] = in_features;
  mp[kMetaBlock] = T;
  at::Tensor compensation = at::empty({0}, col.options());

  if (!recut) {  // the blocks are tiles already: copied as they are, overhang zeroed
    const at::Tensor crow = crow_in.contiguous();
    mp[kMetaNnz] = nnz;
    at::Tensor rowptr = crow.clone();
    at::Tensor indices = at::empty({nnz}, crow.options().dtype(at::kShort));
    at::Tensor packed_values = at::empty_like(values, at::MemoryFormat::Contiguous);
    PackParams p;
    p.out_features = out_features;
    p.in_features = in_features;
    p.block = static_cast<int>(T);
    p.block_rows = block_rows;
    p.nnz = nnz;
    p.crow = crow.data_ptr<int32_t>();
    p.col = col.data_ptr<int32_t>();
    p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
    p.indices = indices.data_ptr<int16_t>();
    p.packed_values = reinterpret_cast<uint16_t*>(packed_values.data_ptr());
    pack_cuda(p, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {meta, rowptr, indices, packed_values, compensation};
  }

  // Re-cut into T x T tiles (bsr_cuda.h): flag the tiles holding a non-zero, number them, scatter the entries.
  const int64_t tile_rows = ceil_div(out_features, T), tile_cols = ceil_div(in_features, T);
  TORCH_CHECK_VALUE(tile_rows * tile_cols <= INT32_MAX, op, ": [", out_features, ", ", in_features,
                    "] has more than 2^31 tiles of ", T, "x", T);
  at::Tensor block_row_h = at::empty({nnz}, crow_h.options());
  {
    const int32_t* cr = crow_h.data_ptr<int32_t>();
    int32_t* br = block_row_h.data_ptr<int32_t>();
    for (int64_t b = 0; b < block_rows; ++b) std::fill(br + cr[b], br + cr[b + 1], static_cast<int32_t>(b));
  }
  const at::Tensor block_row = block_row_h.to(values.device());
  at::Tensor flags = at::zeros({tile_rows * tile_cols}, col.options());
  RecutParams p;
  p.out_features = out_features;
  p.in_features = in_features;
  p.R = R;
  p.C = C;
  p.block = static_cast<int>(T);
  p.nnz = nnz;
  p.tile_cols = tile_cols;
  p.block_row = block_row.data_ptr<int32_t>();
  p.col = col.data_ptr<int32_t>();
  p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
  p.tile_flag = flags.data_ptr<int32_t>();
  recut_mark_cuda(p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor kept = at::nonzero(flags).squeeze(1);  // tile numbers in row-major order; syncs for the count
  const int64_t tiles = kept.numel();
  mp[kMetaNnz] = tiles;
  const at::Tensor slot = flags.cumsum(0, at::kInt);
  at::Tensor rowptr = at::zeros({tile_rows + 1}, col.options());
  if (tile_rows > 0 && tile_cols > 0) {
    rowptr.slice(0, 1).copy_(slot.view({tile_rows, tile_cols}).select(1, tile_cols - 1));
  }
  at::Tensor indices = tiles > 0 ? (kept.remainder(tile_cols) * T).to(at::kShort)  // < 65536: read as uint16
                                 : at::empty({0}, col.options().dtype(at::kShort));
  at::Tensor packed_values = at::zeros({tiles, T, T}, values.options());
  p.tile_slot = slot.data_ptr<int32_t>();
  p.packed_values = reinterpret_cast<uint16_t*>(packed_values.data_ptr());
  recut_fill_cuda(p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {meta, rowptr, indices, packed_values, compensation};
}

Activation parse_activation(const char* op, c10::string_view s) {
  if (s == "none") return Activation::kNone;
  if (s == "relu") return Activation::kRelu;
  if (s == "gelu") return Activation::kGelu;
  if (s == "silu") return Activation::kSilu;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu', 'gelu' or 'silu', got '", std::string(s), "'");
  return Activation::kNone;
}

at::Tensor bsr_linear_cuda(const at::Tensor& x_in, const at::Tensor& meta, const at::Tensor& rowptr,
                           const at::Tensor& indices, const at::Tensor& packed_values, const at::Tensor& compensation,
                           int64_t out_features, int64_t in_features, const std::optional<at::Tensor>& bias_in,
                           const std::optional<at::Tensor>& weight_scale, c10::string_view activation,
                           std::optional<at::ScalarType> out_dtype_in) {
  constexpr const char* op = kLinearOp;
  check_dtype(op, "meta", meta, {at::kLong});
  TORCH_CHECK_VALUE(meta.dim() == 1 && meta.numel() == kMetaSlots && meta.device().is_cpu(), op,
                    ": meta must be the 1-D int64 CPU tensor of ", kMetaSlots, " entries returned by bsr_pack, got shape ",
                    meta.sizes(), " on ", meta.device());
  const at::Tensor m = meta.contiguous();
  const int64_t* mp = m.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(mp[kMetaVersion] == kFormatVersion, op, ": meta says packed-format version ", mp[kMetaVersion],
                    "; this build reads version ", kFormatVersion, " (re-pack the weight)");
  TORCH_CHECK_VALUE(mp[kMetaLayout] == kLayoutCudaSquare, op, ": meta holds layout id ", mp[kMetaLayout],
                    ", a CPU layout; on CUDA pack the weight with bsr_pack on a CUDA tensor (layout id ",
                    kLayoutCudaSquare, ")");
  TORCH_CHECK_VALUE(mp[kMetaOut] == out_features && mp[kMetaIn] == in_features, op, ": the weight was packed for [",
                    mp[kMetaOut], ", ", mp[kMetaIn], "] but out_features=", out_features,
                    ", in_features=", in_features, " were passed");
  const int64_t T = mp[kMetaBlock], nnz = mp[kMetaNnz];
  TORCH_CHECK_VALUE(supported_block(T) && (mp[kMetaDtype] == kDtypeF16 || mp[kMetaDtype] == kDtypeBF16), op,
                    ": meta holds block size ", T, " and dtype code ", mp[kMetaDtype],
                    ", not a CUDA layout of this build");
  const at::ScalarType wdtype = mp[kMetaDtype] == kDtypeBF16 ? at::kBFloat16 : at::kHalf;

  check_dtype(op, "x", x_in, {at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(x_in.dim() >= 1, op, ": x must have shape [..., in_features], got a 0-D tensor");
  TORCH_CHECK_VALUE(x_in.size(-1) == in_features, op, ": x has ", x_in.size(-1), " input features (last dim of shape ",
                    x_in.sizes(), ") but the weight has in_features=", in_features);
  check_dtype(op, "packed_values", packed_values, {wdtype});
  TORCH_CHECK_TYPE(x_in.scalar_type() == wdtype, op, ": x must have the weight's dtype ", wdtype, ", got ",
                   x_in.scalar_type());
  check_dtype(op, "rowptr", rowptr, {at::kInt});
  check_dtype(op, "indices", indices, {at::kShort});
  check_dtype(op, "compensation", compensation, {at::kInt});
  const int64_t block_rows = ceil_div(out_features, T);
  TORCH_CHECK_VALUE(rowptr.dim() == 1 && rowptr.numel() == block_rows + 1, op, ": rowptr must be 1-D with ",
                    block_rows + 1, " entries for out_features=", out_features, " and ", T, "x", T, " blocks, got shape ",
                    rowptr.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.numel() == nnz, op, ": indices must be 1-D with the ", nnz,
                    " blocks recorded in meta, got shape ", indices.sizes());
  TORCH_CHECK_VALUE(packed_values.dim() == 3 && packed_values.size(0) == nnz && packed_values.size(1) == T &&
                        packed_values.size(2) == T,
                    op, ": packed_values must be [", nnz, ", ", T, ", ", T, "] as meta records, got ",
                    packed_values.sizes());
  TORCH_CHECK_VALUE(compensation.numel() == 0, op, ": compensation must be empty for float weights, got shape ",
                    compensation.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"rowptr", &rowptr}, {"indices", &indices},
                                {"packed_values", &packed_values}, {"compensation", &compensation}}) {
    check_same_device(op, "x", x_in, name, *t);
  }
  TORCH_CHECK_VALUE(rowptr.is_contiguous() && indices.is_contiguous() && packed_values.is_contiguous() &&
                        aligned16(packed_values.data_ptr()),
                    op, ": rowptr, indices and packed_values must be contiguous (as bsr_pack returns them)");
  TORCH_CHECK_VALUE(in_features % 8 == 0, op, ": on CUDA in_features must be a multiple of 8 (16-byte loads of x), got ",
                    in_features);

  const at::ScalarType out_dtype = out_dtype_in.value_or(x_in.scalar_type());
  TORCH_CHECK_TYPE(out_dtype == x_in.scalar_type() || out_dtype == at::kFloat, op,
                   ": out_dtype must be the dtype of x (", x_in.scalar_type(), ") or float32 on CUDA, got ", out_dtype);
  const Activation act = parse_activation(op, activation);
  at::Tensor bias;
  if (bias_in.has_value()) {
    check_dtype(op, "bias", *bias_in, {at::kFloat, x_in.scalar_type()});
    TORCH_CHECK_VALUE(bias_in->dim() == 1 && bias_in->size(0) == out_features, op, ": bias must have shape [",
                      out_features, "], got ", bias_in->sizes());
    check_same_device(op, "x", x_in, "bias", *bias_in);
    bias = bias_in->contiguous();  // a copy only for a strided bias
  }
  TORCH_CHECK_VALUE(!weight_scale.has_value(), op, ": weight_scale applies to int8 weights only");

  const c10::cuda::CUDAGuard guard(x_in.device());
  check_device_arch(op, x_in.device().index());
  int64_t tokens = 1;
  for (int64_t d = 0; d + 1 < x_in.dim(); ++d) tokens *= x_in.size(d);
  TORCH_CHECK_VALUE(ceil_div(tokens, 16) <= 65535 && block_rows <= INT32_MAX, op,
                    ": too many tokens (", tokens, ") for one call; split the batch");
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end() - 1);
  out_shape.push_back(out_features);
  at::Tensor y = at::empty(out_shape, x_in.options().dtype(out_dtype));
  if (tokens == 0 || out_features == 0) return y;

  // x as [tokens, in] with unit inner stride, 16-byte aligned rows: such views are used in place.
  at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({tokens, in_features});
  const auto usable = [&](const at::Tensor& t) {
    return in_features == 0 || (t.stride(1) == 1 && (tokens == 1 || t.stride(0) % 8 == 0) && aligned16(t.data_ptr()));
  };
  if (!usable(x)) x = x.contiguous();
  if (!usable(x)) x = x.clone(at::MemoryFormat::Contiguous);

  LinearParams p;
  p.tokens = tokens;
  p.out_features = out_features;
  p.in_features = in_features;
  p.block = static_cast<int>(T);
  p.block_rows = block_rows;
  p.x = x.data_ptr();
  p.x_stride = tokens == 1 ? in_features : x.stride(0);
  p.rowptr = rowptr.data_ptr<int32_t>();
  p.indices = indices.data_ptr<int16_t>();
  p.values = packed_values.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.bias_fp32 = bias.defined() && bias.scalar_type() == at::kFloat;
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.out_fp32 = out_dtype == at::kFloat;
  p.activation = act;
  p.y = y.data_ptr();
  const char* error = linear_cuda(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(error == nullptr, op, ": CUDA kernel launch failed: ", error);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseflow, CUDA, m) {
  m.impl("bsr_pack", &bsr_pack_cuda);
  m.impl("bsr_linear", &bsr_linear_cuda);
}

}  // namespace sparseflow::bsr::cuda
