// AVX-512F helpers of the BSR kernels: vector exp/erfc for the activations, bf16 rounding, register
// transposes. Included only by files built with AVX-512 flags (bsr_*_avx512*.cpp); internal linkage so no
// AVX-512 copy of an inline function can be picked up by portable code.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "bsr.h"
#include "sparseflow/avx512_math.h"

namespace sparseflow::bsr {
namespace {

// exp(x), clamped to +-88.376 (~1 ulp).
inline __m512 exp_ps(__m512 x) {
  return exp_clamped_ps(
      _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.3762626647949f)), _mm512_set1_ps(88.3762626647949f)));
}

// erfc(z) for z >= 0 (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
inline __m512 erfc_nonneg_ps(__m512 z) {
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.f)));
  __m512 p = _mm512_set1_ps(0.17087277f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
  p = _mm512_fnmadd_ps(z, z, p);
  return _mm512_mul_ps(t, exp_ps(p));
}

inline __m512 activate_ps(__m512 v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    case Activation::kRelu: return _mm512_max_ps(_mm512_setzero_ps(), v);  // NaN stays NaN
    case Activation::kGelu: {
      // 0.5 v (1 + erf(v / sqrt 2)) = v (1 - erfc(z) / 2) for v >= 0 and v erfc(z) / 2 for v < 0, z = |v| / sqrt 2
      const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678118654752f));
      const __m512 half_ec = _mm512_mul_ps(erfc_nonneg_ps(z), _mm512_set1_ps(0.5f));
      const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
      const __m512 f = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.f), half_ec), half_ec);
      return _mm512_mul_ps(v, f);
    }
    case Activation::kSilu:
      return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v))));
  }
  return v;
}

// fp32 -> bf16, round to nearest even, NaN -> 0x7fc0 (c10::BFloat16's rule).
inline __m256i cvt_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

inline __m512 load_bf16(const uint16_t* p) { return bf16_to_ps(_mm256_loadu_si256((const __m256i*)p)); }

inline __m512 maskz_load_bf16(__mmask16 m, const uint16_t* p) { return bf16_to_ps(_mm256_maskz_loadu_epi16(m, p)); }

// (lo[i], hi[i]) 16-bit pairs in each 32-bit lane: the operand of vdpbf16ps and of AMX bf16 tiles.
inline __m512i pair16(__m256i lo, __m256i hi) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

// How far ahead (in blocks) the panel kernels prefetch the activation line of a block: the lines are random
// lines of L2-resident panels, too irregular for the hardware prefetchers. 4-8 measured best on AVX-512.
constexpr int64_t kPrefetchBlocks = 8;
inline void prefetch_l1(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// The kernels check a block-row's indices before using them as addresses. Returns the largest of the n
// indices at p if it is >= K (the caller skips the block-row and reports that index), else 0. One compare
// per row, and the horizontal reduction only for a corrupted one: block-rows are short at high sparsity
// (38 blocks at 3072x768, 95 %), where a reduction per row took ~13 % of a one-token call.
inline uint32_t index_out_of_range(const uint16_t* p, int64_t n, int64_t K) {
  __m512i m = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 32) {
    const __mmask32 k = n - i >= 32 ? ~__mmask32(0) : (__mmask32(1) << (n - i)) - 1;
    m = _mm512_max_epu16(m, _mm512_maskz_loadu_epi16(k, p + i));
  }
  if (K > 0xffff || !_mm512_cmpge_epu16_mask(m, _mm512_set1_epi16(static_cast<int16_t>(K)))) return 0;
  const __m512i lo = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(m));
  const __m512i hi = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(m, 1));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(lo, hi));
}

inline __mmask16 lanes16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// Stores n <= 16 lanes of v (fp32 or bf16 by `out`) at y.
inline void store_lanes(__m512 v, DType out, void* y, int64_t n) {
  const __mmask16 m = lanes16(n);
  if (out == DType::kBF16) {
    _mm256_mask_storeu_epi16(y, m, cvt_bf16(v));
  } else {
    _mm512_mask_storeu_ps(y, m, v);
  }
}

// Epilogue of the 16x1 float kernels: y[m0 + t, 16 r ..] = act(sum[t] + bias) for the `tokens` tokens of a
// panel (fewer than 16 channels in the last block-row).
inline void store_16x1_tokens(const FloatArgs& a, int64_t r, int64_t m0, int64_t tokens, const __m512* sum) {
  const int64_t n0 = r * 16, rows = std::min<int64_t>(16, a.w.N - n0);
  const __m512 bias = a.ep.bias != nullptr ? _mm512_maskz_loadu_ps(lanes16(rows), a.ep.bias + n0) : _mm512_setzero_ps();
  const int64_t esize = a.ep.out == DType::kBF16 ? 2 : 4;
  for (int64_t t = 0; t < tokens; ++t) {
    const __m512 v = activate_ps(_mm512_add_ps(sum[t], bias), a.ep.act);
    store_lanes(v, a.ep.out, static_cast<char*>(a.ep.y) + ((m0 + t) * a.ep.ldy + n0) * esize, rows);
  }
}
template <int MT>
inline void store_16x1(const FloatArgs& a, int64_t r, int64_t m0, const __m512 sum[MT]) {
  store_16x1_tokens(a, r, m0, MT, sum);
}

// Epilogue of the kernels whose lanes are tokens: y[m0 + t, n] = act(v[t] + bias[n]) for the panel's MT tokens.
template <int MT>
void store_channel_tokens(const FloatArgs& a, int64_t n, int64_t m0, __m512 v) {
  if (a.ep.bias != nullptr) v = _mm512_add_ps(v, _mm512_set1_ps(a.ep.bias[n]));
  v = activate_ps(v, a.ep.act);
  alignas(64) float out[16];
  alignas(64) uint16_t out16[16];
  if (a.ep.out == DType::kBF16) {
    _mm256_store_si256((__m256i*)out16, cvt_bf16(v));
    for (int t = 0; t < MT; ++t) static_cast<uint16_t*>(a.ep.y)[(m0 + t) * a.ep.ldy + n] = out16[t];
  } else {
    _mm512_store_ps(out, v);
    for (int t = 0; t < MT; ++t) static_cast<float*>(a.ep.y)[(m0 + t) * a.ep.ldy + n] = out[t];
  }
}

// Epilogue of the float 4x1 decode kernels: y[m, 4r + c] = act(v[c] + bias) for the block-row's (up to) 4 channels
// in lanes 0-3 of v.
inline void store_row4(const FloatArgs& a, int64_t r, int64_t m, __m512 v) {
  const int64_t n0 = r * 4, rows = std::min<int64_t>(4, a.w.N - n0);
  if (a.ep.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes16(rows), a.ep.bias + n0));
  const int64_t esize = a.ep.out == DType::kBF16 ? 2 : 4;
  store_lanes(activate_ps(v, a.ep.act), a.ep.out, static_cast<char*>(a.ep.y) + (m * a.ep.ldy + n0) * esize, rows);
}

// Vectors of the float 4x1 panel kernels: 16 tokens in a zmm, or up to 8 in a ymm, which on CPUs that split
// 512-bit operations in two halves (Zen 4) runs a panel of 8 or fewer tokens in half the time.
struct Zmm {
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(int n, const float* p) { return _mm512_maskz_loadu_ps(lanes16(n), p); }
  static V fmadd(float w, V x, V acc) { return _mm512_fmadd_ps(_mm512_set1_ps(w), x, acc); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static __m512 wide(V v) { return v; }
};
struct Ymm {
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(int n, const float* p) { return _mm256_maskz_loadu_ps(static_cast<__mmask8>(lanes16(n)), p); }
  static V fmadd(float w, V x, V acc) { return _mm256_fmadd_ps(_mm256_set1_ps(w), x, acc); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static __m512 wide(V v) { return _mm512_zextps256_ps512(v); }
};
template <int MT>
using TokenVec = std::conditional_t<(MT <= 8), Ymm, Zmm>;

// One block-row of the float 4x1 layout against a panel of MT tokens (lanes = tokens, in Vec; lines of
// float4x1_panel_line(MT, K) floats), for the fp32 and bf16 kernels: tile(acc, b, lines) adds the products of the
// tile of blocks b..b+3, whose activation lines are lines[0..3], into acc[channel][chain] (two chains per output
// channel); the sums of each kSumChunkBlocks blocks are added apart, then the epilogue stores the 4 channels.
template <int MT, class Vec, class Tile>
inline void row_4x1_panel(const FloatArgs& a, int64_t r, const float* panel, int64_t m0, Tile tile) {
  using V = typename Vec::V;
  const Weight& w = a.w;
  const int64_t line = float4x1_panel_line(MT, w.K);
  V sum[4];
  for (int c = 0; c < 4; ++c) sum[c] = Vec::zero();
  const int64_t end = w.rowptr[r + 1];
  for (int64_t b0 = w.rowptr[r]; b0 < end; b0 += kSumChunkBlocks) {  // rows hold whole tiles; 64 = 16 tiles
    const int64_t b1 = std::min<int64_t>(end, b0 + kSumChunkBlocks);
    V acc[4][2];
    for (int c = 0; c < 4; ++c) acc[c][0] = acc[c][1] = Vec::zero();
    for (int64_t b = b0; b < b1; b += 4) {
      const float* lines[4];
      for (int j = 0; j < 4; ++j) lines[j] = panel + int64_t(w.indices[b + j]) * line;
      tile(acc, b, lines);
    }
    for (int c = 0; c < 4; ++c) sum[c] = Vec::add(sum[c], Vec::add(acc[c][0], acc[c][1]));
  }
  const int64_t n0 = r * 4, rows = std::min<int64_t>(4, w.N - n0);
  for (int64_t c = 0; c < rows; ++c) store_channel_tokens<MT>(a, n0 + c, m0, Vec::wide(sum[c]));
}

// Calls row(std::integral_constant<int, MT>, r, m0) for each block-row r in [br_begin, br_end) and each
// token panel p in [p_begin, p_end) (m0 = first token, MT = its token count), skipping block-rows with an
// index >= K (corrupted: never read). Returns the largest index of a skipped block-row (0 if none), which the caller
// reports.
template <class Row>
inline uint32_t for_block_rows(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end,
                               Row row) {
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    if (const uint32_t bad = index_out_of_range(a.w.indices + a.w.rowptr[r], a.w.rowptr[r + 1] - a.w.rowptr[r], a.w.K)) {
      max_index = std::max(max_index, bad);
      continue;
    }
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t m0 = p * kF32PanelTokens;
      switch (std::min<int64_t>(kF32PanelTokens, a.M - m0)) {
#define SPARSEFLOW_CASE(n) \
  case n: row(std::integral_constant<int, n>(), r, m0); break;
        SPARSEFLOW_CASE(1) SPARSEFLOW_CASE(2) SPARSEFLOW_CASE(3) SPARSEFLOW_CASE(4) SPARSEFLOW_CASE(5)
        SPARSEFLOW_CASE(6) SPARSEFLOW_CASE(7) SPARSEFLOW_CASE(8) SPARSEFLOW_CASE(9) SPARSEFLOW_CASE(10)
        SPARSEFLOW_CASE(11) SPARSEFLOW_CASE(12) SPARSEFLOW_CASE(13) SPARSEFLOW_CASE(14) SPARSEFLOW_CASE(15)
        SPARSEFLOW_CASE(16)
#undef SPARSEFLOW_CASE
      }
    }
  }
  return max_index;
}

// The float 4x1 decodes: calls pass(std::integral_constant<int, MT>, r, m0) for each block-row r in [br_begin,
// br_end) and each pass of MT <= kFloat4x1DecodeMaxTokens tokens from m0 over [m_begin, m_end), skipping block-rows
// with an index >= K (never read). Returns the largest of their indices and of the passes' results (0 if none).
template <class Pass>
inline uint32_t for_decode_passes(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                  int64_t m_end, Pass pass) {
  static_assert(kFloat4x1DecodeMaxTokens == 6, "one case per token count");
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    const int64_t begin = a.w.rowptr[r], blocks = a.w.rowptr[r + 1] - begin;
    if (const uint32_t bad = index_out_of_range(a.w.indices + begin, blocks, a.w.K)) {
      max_index = std::max(max_index, bad);
      continue;
    }
    for (int64_t m0 = m_begin; m0 < m_end; m0 += kFloat4x1DecodeMaxTokens) {
      uint32_t result = 0;
      switch (std::min<int64_t>(kFloat4x1DecodeMaxTokens, m_end - m0)) {
#define SPARSEFLOW_CASE(n) \
  case n: result = pass(std::integral_constant<int, n>(), r, m0); break;
        SPARSEFLOW_CASE(1) SPARSEFLOW_CASE(2) SPARSEFLOW_CASE(3) SPARSEFLOW_CASE(4) SPARSEFLOW_CASE(5)
        SPARSEFLOW_CASE(6)
#undef SPARSEFLOW_CASE
      }
      max_index = std::max(max_index, result);
    }
  }
  return max_index;
}

// In-place transpose of 16 rows of 16 floats.
inline void transpose16x16_ps(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3
  __m512 u[16];
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// Per 128-bit lane, a 16x16 byte transpose: on entry r[R] holds (in each lane) row bitrev4(R) of the
// block; on exit r[c] holds column c (byte i = row i). Four rounds of unpacks of 8/16/32/64-bit elements,
// each pairing register i with i + 8.
inline void transpose16x16_epi8_lanes(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi8(r[i], r[i + 8]);
    t[2 * i + 1] = _mm512_unpackhi_epi8(r[i], r[i + 8]);
  }
  for (int i = 0; i < 8; ++i) {
    r[2 * i] = _mm512_unpacklo_epi16(t[i], t[i + 8]);
    r[2 * i + 1] = _mm512_unpackhi_epi16(t[i], t[i + 8]);
  }
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[i], r[i + 8]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 8]);
  }
  for (int i = 0; i < 8; ++i) {
    r[2 * i] = _mm512_unpacklo_epi64(t[i], t[i + 8]);
    r[2 * i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 8]);
  }
}

constexpr int bitrev4(int i) { return ((i & 1) << 3) | ((i & 2) << 1) | ((i & 4) >> 1) | ((i & 8) >> 3); }

}  // namespace
}  // namespace sparseflow::bsr
