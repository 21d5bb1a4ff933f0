// CUDA wrappers of the 2:4 tensor-core path: nm_pack_cutlass and nm_pack (canonical -> CUTLASS layout) and
// nm_linear (CUTLASS sparse GEMM with a fused epilogue). Checks, device guard, current stream; nm_linear
// allocates only its output and never synchronises with the host (CUDA-graph safe). Packing validates
// the positions and reads one int64 back (a sync): it runs once per weight, never in a forward pass.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "nm_cutlass_common.h"
#include "sparseflow/cuda_arch.h"

namespace sparseflow::nm {
namespace {

std::tuple<at::Tensor, at::Tensor> pack_on_device(const char* op, const at::Tensor& values_in,
                                                  const at::Tensor& indices_in, int64_t n, int64_t m,
                                                  std::optional<int64_t> target) {
  cutlass2x::PackParams p = cutlass_pack_params(op, values_in, indices_in, n, m, target);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  auto [packed_values, packed_meta] = empty_cutlass_packed(p, values);
  at::Tensor first_bad = at::full({1}, INT64_MAX, values.options().dtype(at::kLong));
  p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
  p.indices = indices.data_ptr<uint8_t>();
  p.packed_values = reinterpret_cast<uint16_t*>(packed_values.data_ptr());
  p.packed_meta = packed_meta.data_ptr<int16_t>();
  cutlass2x::pack_cuda(p, first_bad.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream());
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
  return pack_on_device("sparseflow.nm_pack_cutlass", values, indices, n, m, target);
}

// On CUDA, nm_pack produces the layout nm_linear's kernel for this GPU consumes: CUTLASS 2.x's (target 80)
// on every supported GPU, sm90 included (its mma.sp kernels are built for sm_90a too).
std::tuple<at::Tensor, at::Tensor> nm_pack_cuda(const at::Tensor& values, const at::Tensor& indices, int64_t n,
                                                int64_t m) {
  constexpr const char* op = "sparseflow.nm_pack";
  TORCH_CHECK_VALUE(n == 2 && m == 4, op, ": on CUDA only 2:4 is supported (sparse tensor cores), got n:m = ",
                    n, ":", m, "; use the CPU kernels for other patterns");
  return pack_on_device(op, values, indices, n, m, std::nullopt);
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
  check_dtype(op, "packed_meta", packed_meta, {at::kShort});
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) == in_features, op,
                    ": x must be [..., in_features] with in_features=", in_features, ", got shape ", x_in.sizes());
  const auto cutlass = cutlass2x::make_pack_params(out_features, in_features);
  TORCH_CHECK_VALUE(packed_values.dim() == 2 && packed_values.size(0) == cutlass.rows_p &&
                        packed_values.size(1) == cutlass.cols_p / 2,
                    op, ": packed_values must be [", cutlass.rows_p, ", ", cutlass.cols_p / 2,
                    "] (nm_pack's CUDA layout for out_features=", out_features, ", in_features=", in_features,
                    "), got ", packed_values.sizes());
  TORCH_CHECK_VALUE(packed_meta.dim() == 2 && packed_meta.size(0) == cutlass.rows_p &&
                        packed_meta.size(1) == cutlass.cols_p / cutlass2x::kColsPerWord,
                    op, ": packed_meta must be [", cutlass.rows_p, ", ", cutlass.cols_p / cutlass2x::kColsPerWord,
                    "] (nm_pack's CUDA layout for out_features=", out_features, ", in_features=", in_features,
                    "), got ", packed_meta.sizes());
  TORCH_CHECK_VALUE(in_features % cutlass2x::kColAlign == 0, op, ": on CUDA in_features must be a multiple of ",
                    cutlass2x::kColAlign, " (the K tile of the 2:4 tensor-core kernels), got ", in_features);
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
  check_device_arch(op, x_in.device().index());
  int64_t tokens = 1;
  for (int64_t d = 0; d + 1 < x_in.dim(); ++d) tokens *= x_in.size(d);
  TORCH_CHECK_VALUE(tokens <= INT32_MAX && out_features <= INT32_MAX, op,
                    ": at most 2^31-1 tokens and output features, got ", tokens, " and ", out_features);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end() - 1);
  out_shape.push_back(out_features);
  at::Tensor y = at::empty(out_shape, x_in.options().dtype(out_dtype));
  if (tokens == 0 || out_features == 0) return y;

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
  p.rows_p = cutlass.rows_p;
  p.x = x.data_ptr();
  p.x_stride = tokens == 1 ? in_features : x.stride(0);  // a single token's stride is never used
  p.values = packed_values.data_ptr();
  p.meta = packed_meta.data_ptr<int16_t>();
  p.bias = bias_ptr;
  p.bias_fp32 = bias_ptr != nullptr && bias.scalar_type() == at::kFloat;
  p.y = y.data_ptr();
  p.in_dtype = to_kernel_dtype(x.scalar_type());
  p.out_dtype = to_kernel_dtype(out_dtype);
  p.activation = act;
  const char* error = cutlass2x::linear_sm80(p, c10::cuda::getCurrentCUDAStream().stream());
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
