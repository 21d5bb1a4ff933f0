// CPU kernels of nm_pack / nm_linear: checks, buffers, the kernel choice (ISA level and pattern), threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>

#include "nm_lanes.h"
#include "nm_linear_common.h"
#include "sparseflow/bit_count.h"
#include "sparseflow/cpu_features.h"
#include "sparseflow/float_args.h"

namespace sparseflow::nm {
namespace {

std::tuple<at::Tensor, at::Tensor> nm_pack_cpu(const at::Tensor& values_in, const at::Tensor& indices_in, int64_t n,
                                               int64_t m) {
  check_pack_args(values_in, indices_in, n, m);
  const at::Tensor indices = indices_in.contiguous();
  MetaParams p;
  p.rows = values_in.size(0);
  p.cols = values_in.size(1) / n * m;
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.int8_layout = values_in.scalar_type() == at::kChar;
  p.indices = indices.data_ptr<uint8_t>();
  at::Tensor meta = at::empty({p.rows, meta_row_bytes(p.cols)}, indices.options());
  p.meta = meta.data_ptr<uint8_t>();
  std::atomic<int64_t> first_bad{INT64_MAX};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.cols, 1));
  const Scalar weight = to_scalar(values_in.scalar_type());
  const bool lanes = uses_lane_layout(weight, p.n, p.m);
  const at::Tensor values = values_in.contiguous();
  // A copy even when values is contiguous: the packed weight owns its storage (no alias of the input).
  at::Tensor packed = lanes ? at::empty_like(values) : values.clone();
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    int64_t bad;
    if (lanes && weight != Scalar::kInt8) {
      bad = pack_float_lanes(p, values.const_data_ptr(), static_cast<int>(values.element_size()),
                             packed.mutable_data_ptr(), begin, end);
    } else {
      bad = build_meta_cpu(p, begin, end);
      if (lanes) pack_lane_values(values.data_ptr<int8_t>(), p.rows, p.cols, packed.data_ptr<int8_t>(), begin, end);
    }
    if (bad == kAllGroupsValid) return;
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  if (const int64_t bad = first_bad.load(); bad != INT64_MAX) {
    const int64_t groups = p.cols / m;
    const int64_t row = bad / groups, group = bad % groups;
    std::ostringstream got;
    const uint8_t* pos = p.indices + row * (groups * n) + group * n;
    for (int64_t i = 0; i < n; ++i) got << (i ? ", " : "") << int(pos[i]);
    TORCH_CHECK_INDEX(false, "sparseflow.nm_pack: indices of row ", row, ", group ", group, " are [", got.str(),
                      "]; expected strictly ascending positions in [0, ", m, ")");
  }
  return {packed, meta};
}

// Whether packed_meta row r (row-major layout) keeps exactly in_features / m * n columns and sets no bit past
// in_features.
bool meta_row_ok(const LinearParams& p, int64_t r) {
  const int64_t k = p.in_features, words = meta_row_bytes(k) / 8;
  uint64_t allowed = ~uint64_t{0};
  if (k % kMetaChunk != 0) {
    allowed = 0;
    for (int c = 0; c < k % kMetaChunk; ++c) allowed |= uint64_t{1} << meta_bit(c, p.weight == Scalar::kInt8);
  }
  int64_t count = 0;
  uint64_t word = 0;
  for (int64_t w = 0; w < words; ++w) {
    std::memcpy(&word, p.meta + (r * words + w) * 8, 8);
    count += popcount_u64(word);
  }
  return count == k / p.m * p.n && (word & ~allowed) == 0;
}

// The kernel nm_linear runs for a weight and token count at an ISA level. nm_linear_cpu follows it and
// cpu_kernel_name reports it (sparseflow.info, the bench), so the report is the dispatch itself.
enum class CpuPath { kPortable, kLanesAvx512, kLanesAvx512Bf16, kRowsAvx512, kRowsWideAvx512, kLanesVnni, kRowsVnni };

CpuPath choose_cpu_path(Scalar weight, int n, int m, int64_t tokens, int64_t in_features, CpuIsa isa) {
  const bool lanes = uses_lane_layout(weight, n, m);
  if (weight == Scalar::kInt8) {
    if (isa < CpuIsa::kAvx512Vnni || !vnni_supports(n, m)) return CpuPath::kPortable;
    return lanes ? CpuPath::kLanesVnni : CpuPath::kRowsVnni;
  }
  if (lanes && weight == Scalar::kBFloat16 && isa >= CpuIsa::kAvx512Bf16) return CpuPath::kLanesAvx512Bf16;
  if (isa < CpuIsa::kAvx512) return CpuPath::kPortable;
  if (lanes) return CpuPath::kLanesAvx512;
  // The lane layout (bf16 / fp32 2:4) has no wide kernel: its own is faster at every token count.
  return tokens >= kWideTokens && in_features > 0 ? CpuPath::kRowsWideAvx512 : CpuPath::kRowsAvx512;
}

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::kPortable: return "portable";
    case CpuPath::kLanesAvx512: return "avx512:lanes";
    case CpuPath::kLanesAvx512Bf16: return "avx512_bf16:lanes";
    case CpuPath::kRowsAvx512: return "avx512:rows";
    case CpuPath::kRowsWideAvx512: return "avx512:rows_wide";
    case CpuPath::kLanesVnni: return "avx512_vnni:lanes";
    case CpuPath::kRowsVnni: return "avx512_vnni:rows";
  }
  return "?";
}

at::Tensor nm_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta, int64_t n,
                         int64_t m, int64_t out_features, int64_t in_features, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& weight_scale, c10::string_view activation,
                         std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType out = check_linear_args(x, values, meta, n, m, out_features, in_features, bias, weight_scale,
                                               out_dtype);
  LinearParams p;
  p.act = parse_activation(std::string_view(activation.data(), activation.size()));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x.options().dtype(out));
  p.tokens = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  if (y.numel() == 0) return y;

  p.out_features = out_features;
  p.in_features = in_features;
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.weight = to_scalar(values.scalar_type());
  p.out = to_scalar(out);
  p.values = values.data_ptr();
  p.meta = meta.data_ptr<uint8_t>();
  p.y = y.data_ptr();
  p.y_stride = out_features;

  const CpuIsa isa = selected_cpu_isa();
  const bool lanes = uses_lane_layout(p.weight, p.n, p.m);
  CpuPath path = choose_cpu_path(p.weight, p.n, p.m, p.tokens, in_features, isa);
  // Activations as rows with unit column stride: fp32 (bf16 is widened once here, never per weight), except for
  // the bf16 2:4 AVX512_BF16 kernel, which multiplies bf16 activations as they are. A contiguous x of the
  // kernel's dtype is used in place: no view or copy, which costs a microsecond per call at one token.
  const at::ScalarType x_dtype = path == CpuPath::kLanesAvx512Bf16 ? at::kBFloat16 : at::kFloat;
  at::Tensor x2 = x;
  int64_t x_stride = in_features;
  if (x.scalar_type() != x_dtype || !x.is_contiguous()) {
    x2 = x.reshape({p.tokens, in_features});
    if (x2.scalar_type() != x_dtype || (in_features > 1 && x2.stride(1) != 1)) x2 = x2.to(x_dtype).contiguous();
    x_stride = x2.stride(0);
  }
  const c10::MaybeOwned<at::Tensor> bias32 =
      bias ? contiguous_float(*bias) : c10::MaybeOwned<at::Tensor>::owned(at::Tensor());
  p.bias = bias ? bias32->data_ptr<float>() : nullptr;

  // interleave_tokens_avx512 gathers 16 rows with 32-bit offsets: rows of a strided x lying further apart take
  // the row kernel.
  if (path == CpuPath::kRowsWideAvx512 && x_stride >= INT32_MAX / 16) path = CpuPath::kRowsAvx512;
  void (*kernel)(const LinearParams&, int64_t, int64_t) = linear_portable;
  at::Tensor xq, xt;
  const c10::MaybeOwned<at::Tensor> w_scale =
      weight_scale ? weight_scale->expect_contiguous() : c10::MaybeOwned<at::Tensor>::owned(at::Tensor());
  if (path == CpuPath::kLanesAvx512Bf16) {
    kernel = linear_lanes_bf16_avx512bf16;
    p.x_bf16 = reinterpret_cast<const uint16_t*>(x2.const_data_ptr<at::BFloat16>());
    p.x_stride = x_stride;
  } else if (p.weight == Scalar::kInt8) {
    const bool vnni = path != CpuPath::kPortable;
    if (vnni) kernel = path == CpuPath::kLanesVnni ? linear_lanes_avx512_vnni : linear_avx512_vnni;
    QuantizeParams q;
    q.x = x2.data_ptr<float>();
    q.x_stride = x_stride;
    q.cols = in_features;
    q.xq_stride = std::max<int64_t>(64, (in_features + 63) / 64 * 64);
    // One buffer: the quantized rows (64-byte multiples), then the per-token scales.
    xq = at::empty({p.tokens * (q.xq_stride + 4)}, x.options().dtype(at::kChar));
    q.xq = xq.data_ptr<int8_t>();
    q.scale = reinterpret_cast<float*>(q.xq + p.tokens * q.xq_stride);
    q.biased = vnni;
    auto quantize = isa >= CpuIsa::kAvx512 ? quantize_rows_avx512 : quantize_rows_portable;
    at::parallel_for(0, p.tokens, std::max<int64_t>(1, 65536 / std::max<int64_t>(in_features, 1)),
                     [&](int64_t begin, int64_t end) { quantize(q, begin, end); });
    p.xq = q.xq;
    p.xq_stride = q.xq_stride;
    p.x_scale = q.scale;
    p.weight_scale = w_scale->data_ptr<float>();
  } else {
    p.x = x2.data_ptr<float>();
    p.x_stride = x_stride;
    if (path != CpuPath::kPortable) {
      kernel = linear_avx512;
      const int64_t blocks = (p.tokens + 15) / 16;
      if (path == CpuPath::kRowsWideAvx512) {
        xt = at::empty({in_features, blocks, 16}, x2.options());
        float* dst = xt.data_ptr<float>();
        at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
          interleave_tokens_avx512(p.x, p.x_stride, p.tokens, in_features, dst, begin, end);
        });
        p.xt = dst;
      }
    }
  }
  // The row-major kernels step through a row's values by the meta's popcount, so a corrupted row reads into
  // the next one; only the last m / n rows can reach past the buffer, and those are checked here (a full
  // check per call cost ~10 % at one token). Corrupted earlier rows give wrong numbers, like corrupted values;
  // nm_pack always writes valid meta. The lane layout keeps its values at fixed places whatever the meta
  // says, so it needs no check (it cost ~1 us per call at in_features 3072).
  const int64_t checked_from = lanes ? out_features : std::max<int64_t>(0, out_features - m / n - 1);
  for (int64_t r = checked_from; r < out_features && in_features > 0; ++r) {
    TORCH_CHECK_INDEX(meta_row_ok(p, r), "sparseflow.nm_linear: packed_meta row ", r, " does not keep exactly ",
                      in_features / m * n, " of its ", in_features, " columns (corrupted packed weight? pack it with",
                      " nm_pack)");
  }
  // Threads split the output features (in whole 16-row blocks for the lane layout); each row's sum is
  // computed the same way whatever the split.
  const int64_t step = lanes ? kLaneRows : 1;
  const int64_t work_per_step = std::max<int64_t>(1, in_features * p.tokens * step);
  const int64_t grain = std::max<int64_t>(1, 262144 / work_per_step);
  at::parallel_for(0, (out_features + step - 1) / step, grain, [&](int64_t begin, int64_t end) {
    kernel(p, begin * step, std::min(end * step, out_features));
  });
  return y;
}

}  // namespace

std::string cpu_kernel_name(at::ScalarType weight_dtype, int64_t n, int64_t m, int64_t tokens) {
  constexpr const char* op = "sparseflow.nm_linear_cpu_kernel";
  check_n_m(op, n, m);
  check_dtype(op, "weight_dtype", weight_dtype, kLinearWeightDtypes);
  TORCH_CHECK_VALUE(tokens >= 0, op, ": tokens must be >= 0, got ", tokens);
  const CpuPath path = choose_cpu_path(to_scalar(weight_dtype), static_cast<int>(n), static_cast<int>(m), tokens,
                                       /*in_features=*/m, selected_cpu_isa());
  return cpu_path_name(path);
}

TORCH_LIBRARY_IMPL(sparseflow, CPU, m) {
  m.impl("nm_pack", &nm_pack_cpu);
  m.impl("nm_linear", &nm_linear_cpu);
}

}  // namespace sparseflow::nm
