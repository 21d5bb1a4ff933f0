// AVX-512 helpers shared by nm_linear's AVX-512 kernels (torch-free; include only from files built with
// AVX-512 flags). Internal linkage, for the same reason as nm_linear_scalar.h.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "nm.h"
#include "nm_lanes.h"
#include "sparseflow/avx512_math.h"

#define SF_ALWAYS_INLINE inline __attribute__((always_inline))

namespace sparseflow::nm {
namespace {

inline __mmask16 tail_mask16(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// exp, clamped so that scalef handles overflow to inf and underflow to 0.
inline __m512 exp_ps(__m512 x) {
  return exp_clamped_ps(_mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0f)), _mm512_set1_ps(-104.0f)));
}

// gelu(x) = x/2 * (1 + erf(x/sqrt2)), with erfc(z) = t*P(t)*exp(-z^2), t = 1/(1 + 0.3275911 z) (Abramowitz &
// Stegun 7.1.26, |error| <= 1.5e-7): for x < 0, 1 + erf = erfc(|z|) is computed directly, without cancellation.
inline __m512 gelu_ps(__m512 x) {
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f),
                                                                        _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  const __m512 erfc = _mm512_mul_ps(_mm512_mul_ps(p, t), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z))));
  const __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  // x >= 0: x - x/2*erfc; x < 0: x/2*erfc. NaN takes the first branch and stays NaN.
  return _mm512_mask_mul_ps(_mm512_fnmadd_ps(half_x, erfc, x), negative, half_x, erfc);
}

inline __m512 silu_ps(__m512 x) {
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

inline __m512 activate_ps(__m512 v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    // max(v, 0) returns the second operand on NaN: keep NaN as torch.relu does.
    case Activation::kRelu: return _mm512_mask_mov_ps(_mm512_max_ps(v, _mm512_setzero_ps()),
                                                      _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    case Activation::kGelu: return gelu_ps(v);
    case Activation::kSilu: return silu_ps(v);
  }
  return v;
}

// fp32 -> bf16, round to nearest even, NaN kept quiet (as float_to_bf16 in nm_linear_scalar.h).
inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x00400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// The 16-row block of a bf16 / fp32 2:4 weight in the lane layout (nm_lanes.h) that starts at row `first`.
struct LaneBlock {
  const uint32_t* values;  // the block's first dword unit: h dwords per unit
  const uint8_t* meta;     // the block's first meta unit: h dwords per 32 columns
  __mmask16 lanes;         // the block's h rows
  int h;

  LaneBlock(const LinearParams& p, int64_t first)
      : values(reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(p.values) +
                                                 first * (p.in_features / 2) * (p.weight == Scalar::kFloat32 ? 4 : 2))),
        meta(p.meta + first * meta_row_bytes(p.in_features)),
        h(lane_block_height(p.out_features, first)) {
    lanes = static_cast<__mmask16>((1u << h) - 1);
  }
};

template <Scalar kW>
using ValueOf = std::conditional_t<kW == Scalar::kFloat32, float, uint16_t>;

// 16 bf16 / fp16 values (as loaded) -> fp32, exactly.
template <Scalar kW>
SF_ALWAYS_INLINE __m512 widen16(__m256i raw) {
  if constexpr (kW == Scalar::kBFloat16) {
    return bf16_to_ps(raw);
  } else {
    static_assert(kW == Scalar::kFloat16);
    return _mm512_cvtph_ps(raw);
  }
}

// y[t, j0 .. j0+count) = act(values + bias) where values are pre-activation sums (bias not yet added) or, with
// `scale`, int32 accumulators dequantized as fma(acc, x_scale * scale[j], bias[j]).
inline void store_epilogue(const LinearParams& p, int64_t t, int64_t j0, int64_t count, const float* values,
                           const int32_t* acc) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = tail_mask16(count - i);
    const int64_t j = j0 + i;
    const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(mask, p.bias + j) : _mm512_setzero_ps();
    __m512 v;
    if (acc) {
      const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(p.x_scale[t]), _mm512_maskz_loadu_ps(mask, p.weight_scale + j));
      v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, acc + i)), scale, bias);
    } else {
      v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, values + i), bias);
    }
    v = activate_ps(v, p.act);
    if (p.out == Scalar::kFloat32) {
      _mm512_mask_storeu_ps(static_cast<float*>(p.y) + t * p.y_stride + j, mask, v);
    } else {
      const __m256i half = p.out == Scalar::kBFloat16 ? to_bf16(v)
                                                       : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.y) + t * p.y_stride + j, mask, half);
    }
  }
}

}  // namespace
}  // namespace sparseflow::nm
