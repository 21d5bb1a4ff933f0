// AVX512_BF16 bsr_linear kernels for bf16 weights in the 16x1 and float 4x1 layouts (torch-free; called only
// when selected_cpu_isa() >= kAvx512Bf16). Tested and measured on AMD Zen 4 (the CI machine since 2026-11-28).
//
// 16x1:
// vdpbf16ps adds two bf16 products per fp32 lane. Lanes are the 16 output channels; two consecutive blocks
// (input channels ka, kb) of a block-row are interleaved into one weight vector of (W[c, ka], W[c, kb])
// pairs, and each token's (x[t, ka], x[t, kb]) pair is put in every lane by two 16-bit broadcasts from the panel
// (the second one masked to the odd words): 16 vdpbf16ps per two blocks instead of 32 vfmadd231ps. The first
// version stored the panel's pairs as one vector and broadcast dwords back from it, which on Zen 4 was slower
// than the AVX-512F kernel (4096^2, 90 %, 2 threads: M = 32 703 vs 518 us, M = 128 2800 vs 2050 us); without that
// store and with the AVX-512F kernel's prefetch of the activation lines: 412 and 1630 us.
//
// float 4x1 (4x4 tiles, value 4c + j = W[4r + c, k_j], so each channel's (k0, k1) and (k2, k3) weights are
// adjacent pairs): with a panel of tokens, lanes = tokens on the AVX-512F kernels' fp32 panels of the bf16 x
// (each value is its bf16 bits << 16), where the pair (x[t, k0], x[t, k1]) is one shift and one or of two panel
// lines and each channel's weight pair a dword broadcast from memory: 8 vdpbf16ps per tile and 16 tokens, against
// 16 FMAs in the fp32 kernel. For a few tokens (decode), lanes = (tile, channel, pair) of two tiles, and each
// token's pairs come from one vpermw of the 16-value windows of x at the two tiles' first indices (span-16
// tiles) or from scalar loads.
#include <algorithm>
#include <type_traits>

#include "bsr.h"
#include "bsr_avx512_math.h"

namespace sparseflow::bsr {
namespace {

template <int MT>
void row_pairs(const FloatArgs& a, int64_t r, const uint16_t* panel, int64_t m0) {
  const Weight& w = a.w;
  const auto* values = static_cast<const uint16_t*>(w.values);
  __m512 acc[MT], sum[MT];
  for (int t = 0; t < MT; ++t) sum[t] = acc[t] = _mm512_setzero_ps();
  const int64_t last = w.rowptr[r + 1] - 1;
  static const uint16_t zero_token[16] = {};
  for (int64_t b = w.rowptr[r]; b < w.rowptr[r + 1]; b += 2) {
    if ((b - w.rowptr[r]) % kSumChunkBlocks == 0) {  // see kSumChunkBlocks (an even number)
      for (int t = 0; t < MT; ++t) {
        sum[t] = _mm512_add_ps(sum[t], acc[t]);
        acc[t] = _mm512_setzero_ps();
      }
    }
    const bool single = b + 1 == w.rowptr[r + 1];  // an odd last block pairs with zeros
    const __m256i w_hi = single ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i*)(values + (b + 1) * 16));
    const __m512i wv = pair16(_mm256_loadu_si256((const __m256i*)(values + b * 16)), w_hi);
    const uint16_t* x_lo = panel + int64_t(w.indices[b]) * MT;
    const uint16_t* x_hi = single ? zero_token : panel + int64_t(w.indices[b + 1]) * MT;
    if constexpr (MT > 1) {
      prefetch_l1(panel + int64_t(w.indices[std::min(b + kPrefetchBlocks, last)]) * MT);
      prefetch_l1(panel + int64_t(w.indices[std::min(b + 1 + kPrefetchBlocks, last)]) * MT);
    }
#pragma GCC unroll 16
    for (int t = 0; t < MT; ++t) {  // (x[t, k_b], x[t, k_b+1]) in every dword: two 16-bit broadcasts from memory
      const __m512i xt = _mm512_mask_set1_epi16(_mm512_set1_epi16(short(x_lo[t])), 0xAAAAAAAA, short(x_hi[t]));
      acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)xt, (__m512bh)wv);
    }
  }
  for (int t = 0; t < MT; ++t) sum[t] = _mm512_add_ps(sum[t], acc[t]);
  store_16x1<MT>(a, r, m0, sum);
}

// The token vectors with bf16 pairs: a pair (x[t, ka], x[t, kb]) from two panel lines of fp32 values of bf16 x
// (bits << 16) is one shift and one or, and vdpbf16ps adds it times a channel's weight pair broadcast to each lane.
struct ZmmPairs : Zmm {
  using I = __m512i;
  static I pair(V lo, V hi) {
    return _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(lo), 16), _mm512_castps_si512(hi));
  }
  static V dot(V acc, I x, uint32_t w) {
    return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)_mm512_set1_epi32(static_cast<int>(w)));
  }
};
struct YmmPairs : Ymm {
  using I = __m256i;
  static I pair(V lo, V hi) {
    return _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(lo), 16), _mm256_castps_si256(hi));
  }
  static V dot(V acc, I x, uint32_t w) {
    return _mm256_dpbf16_ps(acc, (__m256bh)x, (__m256bh)_mm256_set1_epi32(static_cast<int>(w)));
  }
};

// Channel c's weights for the pair p of a tile: (W[c, k_2p], W[c, k_2p+1]) as one dword.
inline uint32_t weight_pair(const uint16_t* tile, int c, int p) {
  uint32_t v;
  __builtin_memcpy(&v, tile + 4 * c + 2 * p, 4);
  return v;
}

// One block-row of float 4x1 bf16 weights against a panel of MT tokens (row_4x1_panel): per tile, 2 pairs of
// activation lines and 8 vdpbf16ps.
template <int MT>
void row_4x1(const FloatArgs& a, int64_t r, const float* panel, int64_t m0) {
  using Vec = std::conditional_t<(MT <= 8), YmmPairs, ZmmPairs>;
  const auto* values = static_cast<const uint16_t*>(a.w.values);
  row_4x1_panel<MT, Vec>(a, r, panel, m0, [values](auto& acc, int64_t b, const float* const* lines) {
    const uint16_t* tile = values + b * 4;
#pragma GCC unroll 2
    for (int p = 0; p < 2; ++p) {
      const auto x = Vec::pair(Vec::load(MT, lines[2 * p]), Vec::load(MT, lines[2 * p + 1]));
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[c][p] = Vec::dot(acc[c][p], x, weight_pair(tile, c, p));
    }
  });
}

// Decode of one block-row of float 4x1 bf16 weights for MT <= kFloat4x1DecodeMaxTokens tokens of padded bf16 rows x
// (kTileSpan values of slack, ldx apart). Two tiles per step: lane 8h + 2c + p (h = which tile) sums
// W[c, k_2p] x[k_2p] + W[c, k_2p+1] x[k_2p+1] of tile h, whose 16 weights are the step's zmm half h. Returns
// kTileSpanBroken if a span-16 tile's indices do not lie within 16 channels of its first (a corrupted weight; the
// permute stays in the window).
template <int MT, bool kSpan16>
uint32_t row_4x1_decode(const FloatArgs& a, int64_t r, const uint16_t* x, int64_t ldx, int64_t m0) {
  const Weight& w = a.w;
  const auto* values = static_cast<const uint16_t*>(w.values);
  // Word 16h + 4c + j of a step's x operand is x[k_j] of tile h; these pick tile h's index j, and its first.
  const __m512i spread = _mm512_set_epi16(7, 6, 5, 4, 7, 6, 5, 4, 7, 6, 5, 4, 7, 6, 5, 4,
                                          3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
  const __m512i firsts = _mm512_set_epi16(4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i upper = _mm512_set_epi16(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16,
                                         0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i span = _mm512_set1_epi16(kTileSpan);
  __mmask32 broken = 0;
  __m512 sum[MT];
  for (int t = 0; t < MT; ++t) sum[t] = _mm512_setzero_ps();
  const int64_t end = w.rowptr[r + 1];
  for (int64_t b0 = w.rowptr[r]; b0 < end; b0 += kSumChunkBlocks) {
    const int64_t b1 = std::min<int64_t>(end, b0 + kSumChunkBlocks);
    __m512 acc[MT];
    for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; b += 8) {
      const bool two = b + 4 < b1;  // an odd last tile runs with zero weights in the upper half
      const uint16_t* idx = w.indices + b;
      const __m512i wz = two ? _mm512_loadu_si512(values + b * 4)
                             : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(values + b * 4)));
      if constexpr (kSpan16) {
        const __m128i k4 = _mm_loadl_epi64((const __m128i*)idx);
        const __m128i k8 = two ? _mm_loadu_si128((const __m128i*)idx) : _mm_unpacklo_epi64(k4, k4);
        const __m512i k = _mm512_castsi128_si512(k8);
        const __m512i offsets =
            _mm512_sub_epi16(_mm512_permutexvar_epi16(spread, k), _mm512_permutexvar_epi16(firsts, k));
        broken |= _mm512_cmpge_epu16_mask(offsets, span);
        const __m512i control = _mm512_add_epi16(offsets, upper);
        const uint16_t k_lo = idx[0], k_hi = two ? idx[4] : idx[0];
        for (int t = 0; t < MT; ++t) {
          const uint16_t* xt = x + t * ldx;
          const __m512i window = _mm512_inserti64x4(
              _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(xt + k_lo))),
              _mm256_loadu_si256((const __m256i*)(xt + k_hi)), 1);
          acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)_mm512_permutexvar_epi16(control, window), (__m512bh)wz);
        }
      } else {
        for (int t = 0; t < MT; ++t) {
          const uint16_t* xt = x + t * ldx;
          auto pairs = [&](const uint16_t* k) {  // (x[k0], x[k1], x[k2], x[k3]) as one qword
            return uint64_t(xt[k[0]]) | uint64_t(xt[k[1]]) << 16 | uint64_t(xt[k[2]]) << 32 | uint64_t(xt[k[3]]) << 48;
          };
          const __m128i q = _mm_set_epi64x(two ? int64_t(pairs(idx + 4)) : 0, int64_t(pairs(idx)));
          const __m512i tile_of_qword = _mm512_set_epi64(1, 1, 1, 1, 0, 0, 0, 0);
          const __m512i xv = _mm512_permutexvar_epi64(tile_of_qword, _mm512_castsi128_si512(q));
          acc[t] = _mm512_dpbf16_ps(acc[t], (__m512bh)xv, (__m512bh)wz);
        }
      }
    }
    for (int t = 0; t < MT; ++t) sum[t] = _mm512_add_ps(sum[t], acc[t]);
  }
  if (broken != 0) return kTileSpanBroken;
  const __m512i channels = _mm512_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int t = 0; t < MT; ++t) {
    __m512 v = _mm512_add_ps(sum[t], _mm512_shuffle_f32x4(sum[t], sum[t], 0x4E));  // both tiles
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));                              // both pairs: lane 2c
    store_row4(a, r, m0 + t, _mm512_permutexvar_ps(channels, v));
  }
  return 0;
}

}  // namespace

uint32_t linear_bf16_4x1_avx512bf16(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                    int64_t p_end) {
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a](auto mt, int64_t r, int64_t m0) {
    row_4x1<mt>(a, r, a.xt + m0 * a.w.K, m0);
  });
}

uint32_t linear_bf16_4x1_decode_avx512bf16(const FloatArgs& a, const uint16_t* x, int64_t br_begin, int64_t br_end,
                                           int64_t m_begin, int64_t m_end) {
  const bool span16 = a.w.tile_span == kTileSpan;
  return for_decode_passes(a, br_begin, br_end, m_begin, m_end, [&a, x, span16](auto mt, int64_t r, int64_t m0) {
    return span16 ? row_4x1_decode<mt, true>(a, r, x + m0 * a.ldx, a.ldx, m0)
                  : row_4x1_decode<mt, false>(a, r, x + m0 * a.ldx, a.ldx, m0);
  });
}

uint32_t linear_bf16_16x1_avx512bf16(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                     int64_t p_begin, int64_t p_end) {
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a, panels](auto mt, int64_t r, int64_t m0) {
    row_pairs<mt>(a, r, panels + m0 * a.w.K, m0);
  });
}

}  // namespace sparseflow::bsr
