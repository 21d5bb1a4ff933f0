// CUDA wrappers of the 2:4 tensor-core path: nm_pack_cutlass and nm_pack (canonical -> CUTLASS layout) and
// nm_linear (CUTLASS sparse GEMM with a fused epilogue; for few tokens a GEMV-style kernel, nm_linear_decode.h).
// Checks, device guard, current stream; nm_linear allocates only its output and never synchronises with the
// host (CUDA-graph safe). Packing validates the positions and reads one int64 back (a sync): it runs once per
// weight, never in a forward pass.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "nm_cutlass_common.h"
#include "nm_linear_decode.h"
#include "sparseflow/cuda_arch.h"

namespace sparseflow::nm {
namespace {

std::tuple<at::Tensor, at::Tensor> pack_on_device(const char* op, const at::Tensor& values_in,
                                                  const at::Tensor& indices_in, int64_t target) {
  cutlass2x::PackParams p = cutlass_pack_params(target, values_in.size(0), values_in.size(1) * 2);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  auto [packed_values, packed_meta] = empty_cutlass_packed(target, p, values);
  at::Tensor first_bad = at::full({1}, INT64_MAX, values.options().dtype(at::kLong));
  p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
  p.indices = indices.data_ptr<uint8_t>();
  p.packed_values = reinterpret_cast<uint16_t*>(packed_values.data_ptr());
  p.packed_meta = packed_meta.data_ptr();
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (target == kTargetSm90) {
    cutlass2x::sm90::pack_cuda(p, first_bad.data_ptr<int64_t>(), stream);
  } else {
    cutlass2x::pack_cuda(p, first_bad.data_ptr<int64_t>(), stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();
  if (bad != INT64_MAX) {
    const int64_t groups = p.cols / 4;
    fail_cutlass_pack(op, p, bad, indices[bad / groups].narrow(0, (bad % groups) * 2, 2).cpu());
  }
  return {packed_values, packed_meta};
}

std::tuple<at::Tensor, at::Tensor> nm_pack_cutlass_cuda(const at::Tensor& values, const at::Tensor& indices,
                                                        int64_t n, int64_t m, int64_t target) {
  constexpr const char* op = "sparseflow.nm_pack_cutlass";
  check_cutlass_pack_args(op, values, indices, n, m, target);
  return pack_on_device(op, values, indices, target);
}

bool sm90_kernels_built() { return SPARSEFLOW_HAS_SM90 != 0; }

// The layout nm_linear's fastest kernel for this GPU consumes: CUTLASS 3.x's on sm90 when the weight fits TMA's
// 16-byte alignment (rows % 8 for the output, cols % 16 for the compressed values), else CUTLASS 2.x's (whose
// mma.sp kernels run on sm80 and later, sm90 included).
int64_t cuda_pack_target(int device, int64_t rows, int64_t cols) {
  const bool sm90 = sm90_kernels_built() && device_sm(device) == 90;
  return sm90 && rows % 8 == 0 && cols % 16 == 0 ? kTargetSm90 : kTargetSm80;
}

std::tuple<at::Tensor, at::Tensor> nm_pack_cuda(const at::Tensor& values, const at::Tensor& indices, int64_t n,
                                                int64_t m) {
  constexpr const char* op = "sparseflow.nm_pack";
  TORCH_CHECK_VALUE(n == 2 && m == 4, op, ": on CUDA only 2:4 is supported (sparse tensor cores), got n:m = ",
                    n, ":", m, "; use the CPU kernels for other patterns");
  check_cutlass_pack_args(op, values, indices, n, m, std::nullopt);
  const int64_t target = cuda_pack_target(values.device().index(), values.size(0), values.size(1) * 2);
  return pack_on_device(op, values, indices, target);
}

cutlass2x::DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cutlass2x::DType::kFloat16;
    case at::kBFloat16: return cutlass2x::DType::kBFloat16;
    default: return cutlass2x::DType::kFloat32;
  }
}

cutlass2x::Activation parse_activation(const char* op, c10::string_view activation) {
  if (activation == "none") return cutlass2x::Activation::kNone;
  if (activation == "relu") return cutlass2x::Activation::kRelu;
  if (activation == "gelu") return cutlass2x::Activation::kGelu;
  if (activation == "silu") return cutlass2x::Activation::kSilu;
  TORCH_CHECK_VALUE(false, op, ": activation must be one of none, relu, gelu, silu, got '",
                    std::string(activation), "'");
  return cutlass2x::Activation::kNone;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

at::Tensor nm_linear_cuda(const at::Tensor& x_in, const at::Tensor& packed_values, const at::Tensor& packed_meta,
                          int64_t n, int64_t m, int64_t out_features, int64_t in_features,
                          const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& weight_scale,
                          c10::string_view activation, std::optional<at::ScalarType> out_dtype_in) {
  constexpr const char* op = "sparseflow.nm_linear";
  TORCH_CHECK_VALUE(n == 2 && m == 4, op, ": on CUDA only 2:4 is supported (sparse tensor cores), got n:m = ",
                    n, ":", m);
  TORCH_CHECK_VALUE(out_features >= 0 && in_features >= 0, op,
                    ": out_features and in_features must be >= 0, got ", out_features, " and ", in_features);
  check_dtype(op, "x", x_in, {at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(packed_values.scalar_type() == x_in.scalar_type(), op,
                   ": packed_values must have the dtype of x (", x_in.scalar_type(), "), got ",
                   packed_values.scalar_type());
  check_dtype(op, "packed_meta", packed_meta, {at::kShort, at::kByte});
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) == in_features, op,
                    ": x must be [..., in_features] with in_features=", in_features, ", got shape ", x_in.sizes());
  // The metadata dtype names the layout (nm_cutlass.h): int16 = target 80, uint8 = target 90.
  const int64_t target = packed_meta.scalar_type() == at::kByte ? kTargetSm90 : kTargetSm80;
  const auto packed = cutlass_pack_params(target, out_features, in_features);
  const int64_t meta_cols =
      packed.cols_p / (target == kTargetSm90 ? cutlass2x::sm90::kColsPerByte : cutlass2x::kColsPerWord);
  TORCH_CHECK_VALUE(packed_values.dim() == 2 && packed_values.size(0) == packed.rows_p &&
                        packed_values.size(1) == packed.values_cols / 2,
                    op, ": packed_values must be [", packed.rows_p, ", ", packed.values_cols / 2, "] (nm_pack's target-",
                    target, " layout for out_features=", out_features, ", in_features=", in_features, "), got ",
                    packed_values.sizes());
  TORCH_CHECK_VALUE(packed_meta.dim() == 2 && packed_meta.size(0) == packed.rows_p && packed_meta.size(1) == meta_cols,
                    op, ": packed_meta must be [", packed.rows_p, ", ", meta_cols, "] (nm_pack's target-", target,
                    " layout for out_features=", out_features, ", in_features=", in_features, "), got ",
                    packed_meta.sizes());
  if (target == kTargetSm80) {
    TORCH_CHECK_VALUE(in_features % cutlass2x::kColAlign == 0, op,
                      ": on CUDA in_features must be a multiple of ", cutlass2x::kColAlign,
                      " (the K tile of the sm80 2:4 kernels), got ", in_features);
  } else {
    TORCH_CHECK_VALUE(in_features % 16 == 0 && out_features % 8 == 0, op,
                      ": weights packed for sm90 (uint8 packed_meta) need in_features a multiple of 16 and "
                      "out_features of 8 (TMA), got ", in_features, " and ", out_features);
  }
  TORCH_CHECK_VALUE(packed_values.is_contiguous() && packed_meta.is_contiguous() &&
                        aligned16(packed_values.data_ptr()) && aligned16(packed_meta.data_ptr()),
                    op, ": packed_values and packed_meta must be contiguous and 16-byte aligned, as nm_pack returns them");
  check_same_device(op, "x", x_in, "packed_values", packed_values);
  check_same_device(op, "x", x_in, "packed_meta", packed_meta);

  const at::ScalarType out_dtype = out_dtype_in.value_or(x_in.scalar_type());
  TORCH_CHECK_TYPE(out_dtype == x_in.scalar_type() || out_dtype == at::kFloat, op,
                   ": out_dtype must be the dtype of x (", x_in.scalar_type(), ") or float32 on CUDA, got ",
                   out_dtype);
  const void* bias_ptr = nullptr;
  at::Tensor bias;
  if (bias_in.has_value()) {
    TORCH_CHECK_TYPE(bias_in->scalar_type() == x_in.scalar_type() || bias_in->scalar_type() == at::kFloat, op,
                     ": bias must have the dtype of x (", x_in.scalar_type(), ") or Float, got ",
                     bias_in->scalar_type());
    TORCH_CHECK_VALUE(bias_in->dim() == 1 && bias_in->size(0) == out_features, op, ": bias must be [",
                      out_features, "], got shape ", bias_in->sizes());
    check_same_device(op, "x", x_in, "bias", *bias_in);
    bias = bias_in->contiguous();
    bias_ptr = bias.data_ptr();
  }
  // As on CPU: weight_scale dequantizes int8 weights, and CUDA 2:4 weights are float16/bfloat16.
  TORCH_CHECK_VALUE(!weight_scale.has_value(), op, ": weight_scale is only for int8 packed_values");
  const cutlass2x::Activation act = parse_activation(op, activation);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const int sm = check_device_arch(op, x_in.device().index());
  TORCH_CHECK_VALUE(target == kTargetSm80 || (sm90_kernels_built() && sm == 90), op,
                    ": packed_meta is uint8, the layout of the sm90a kernels (nm_pack_cutlass target 90), but ",
                    sm90_kernels_built() ? "" : "this build has no sm90a kernels and ", "cuda:",
                    x_in.device().index(), " is sm_", sm,
                    "; re-pack with nm_pack on this GPU, or with nm_pack_cutlass(..., target=80)");
  int64_t tokens = 1;
  for (int64_t d = 0; d + 1 < x_in.dim(); ++d) tokens *= x_in.size(d);
  TORCH_CHECK_VALUE(tokens <= INT32_MAX && out_features <= INT32_MAX, op,
                    ": at most 2^31-1 tokens and output features, got ", tokens, " and ", out_features);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end() - 1);
  out_shape.push_back(out_features);
  at::Tensor y = at::empty(out_shape, x_in.options().dtype(out_dtype));
  if (tokens == 0 || out_features == 0) return y;
  if (in_features == 0) {  // no GEMM: y = act(bias) for every token
    at::Tensor b = bias_in.has_value() ? bias.to(at::kFloat) : at::zeros({out_features}, y.options().dtype(at::kFloat));
    switch (act) {
      case cutlass2x::Activation::kRelu: b = at::relu(b); break;
      case cutlass2x::Activation::kGelu: b = at::gelu(b); break;
      case cutlass2x::Activation::kSilu: b = at::silu(b); break;
      case cutlass2x::Activation::kNone: break;
    }
    y.copy_(b.expand_as(y));
    return y;
  }

  // x as [tokens, in] with unit inner stride, a row stride of whole 16-byte vectors and an aligned start:
  // views of that kind are used as they are; anything else is copied once.
  // (A small copy of bias above is made only for a strided one.)
  at::Tensor x = x_in.dim() == 2 ? x_in : x_in.reshape({tokens, in_features});
  const auto usable = [&](const at::Tensor& t) {
    return t.stride(1) == 1 && (tokens == 1 || t.stride(0) % 8 == 0) && aligned16(t.data_ptr());
  };
  if (!usable(x)) x = x.contiguous();
  if (!usable(x)) x = x.clone(at::MemoryFormat::Contiguous);

  cutlass2x::LinearParams p;
  p.tokens = tokens;
  p.out_features = out_features;
  p.in_features = in_features;
  p.rows_p = packed.rows_p;
  p.x = x.data_ptr();
  p.x_stride = tokens == 1 ? in_features : x.stride(0);  // a single token's stride is never used
  p.values = packed_values.data_ptr();
  p.meta = packed_meta.data_ptr();
  p.bias = bias_ptr;
  p.bias_fp32 = bias_ptr != nullptr && bias.scalar_type() == at::kFloat;
  p.y = y.data_ptr();
  p.in_dtype = to_kernel_dtype(x.scalar_type());
  p.out_dtype = to_kernel_dtype(out_dtype);
  p.activation = act;
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const char* error = nullptr;
  if (tokens <= cutlass2x::kDecodeMaxTokens) {  // decode: stream the weight once (either layout)
    error = cutlass2x::linear_decode(
        p, target == kTargetSm90 ? cutlass2x::MetaLayout::kSm90 : cutlass2x::MetaLayout::kSm80, stream);
  } else {
#if SPARSEFLOW_HAS_SM90
    error = target == kTargetSm90 ? cutlass2x::linear_sm90(p, stream) : cutlass2x::linear_sm80(p, stream);
#else
    error = cutlass2x::linear_sm80(p, stream);  // target 90 was refused above
#endif
  }
  TORCH_CHECK(error == nullptr, op, ": CUDA kernel launch failed: ", error);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseflow, CUDA, m) {
  m.impl("nm_pack_cutlass", &nm_pack_cutlass_cuda);
  m.impl("nm_pack", &nm_pack_cuda);
  m.impl("nm_linear", &nm_linear_cuda);
}

}  // namespace sparseflow::nm
