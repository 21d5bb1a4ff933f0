// AVX512_VNNI int8 bsr_linear kernels on the 4x1 layout (torch-free; called only when
// selected_cpu_isa() >= kAvx512Vnni). u8 activations x s8 weights -> s32 with vpdpbusd.
//
// Panel kernel (many tokens; lanes = tokens): a 4x4 tile holds 4 output channels x 4 input channels
// (k0..k3). The four activation rows k0..k3 of a 64-token panel (64 bytes each) are interleaved with two
// rounds of unpacks into four registers whose dword j is (x[t, k0], x[t, k1], x[t, k2], x[t, k3]) for 16
// tokens t, and each output channel's weight dword is broadcast against them: 4 loads + 8 unpacks +
// 4 broadcasts feed 16 vpdpbusd (1024 multiply-adds).
//
// Decode kernel (few tokens; lanes = 4 tiles x 4 output channels): one zmm load brings the weights of
// 4 tiles; one vpgatherdd fetches, for 4 tokens at once, the 16 activation dwords of their 16 input
// channels, and a vpshufb per token turns them into each tile's (x[k0], x[k1], x[k2], x[k3]) dword. Weight
// bytes streamed per non-zero: 1 + 2/4 (16-bit index per 4x1 block).
#include <algorithm>
#include <vector>

#include "bsr.h"
#include "bsr_avx512_math.h"
#include "bsr_scalar.h"

namespace sparseflow::bsr {
namespace {

inline int32_t weight_dword(const int8_t* tile, int c) {
  int32_t v;
  __builtin_memcpy(&v, tile + 4 * c, 4);
  return v;
}

// Dequantizes 16 accumulators of output channel n for 16 tokens (lanes) and returns them as fp32 bits
// (or the compensated int32 itself for int32 output).
inline __m512 dequant_tokens(const Int8Args& a, __m512i acc, int64_t n, __m512i zp, __m512 sx) {
  acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zp, _mm512_set1_epi32(a.w.compensation[n])));
  if (a.ep.out == DType::kS32) return _mm512_castsi512_ps(acc);
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sx, _mm512_set1_ps(a.w.scale[n])));
  if (a.ep.bias != nullptr) v = _mm512_add_ps(v, _mm512_set1_ps(a.ep.bias[n]));
  return activate_ps(v, a.ep.act);
}

// Stores 4 channels (c[0..3], lanes = 16 tokens from m0) into y[m0 + j, n0 .. n0 + rows).
inline void store_4x16(const Int8Args& a, const __m512 c[4], int64_t m0, int64_t tokens, int64_t n0, int64_t rows) {
  const __m512 u0 = _mm512_unpacklo_ps(c[0], c[1]), u1 = _mm512_unpackhi_ps(c[0], c[1]);
  const __m512 u2 = _mm512_unpacklo_ps(c[2], c[3]), u3 = _mm512_unpackhi_ps(c[2], c[3]);
  // lane L of t[e]: channels 0..3 of token 4L + e
  const __m512 t[4] = {_mm512_shuffle_ps(u0, u2, 0x44), _mm512_shuffle_ps(u0, u2, 0xEE),
                       _mm512_shuffle_ps(u1, u3, 0x44), _mm512_shuffle_ps(u1, u3, 0xEE)};
  const __mmask8 m4 = __mmask8((1u << rows) - 1);
  if (a.ep.out == DType::kBF16) {
    auto* y = static_cast<uint16_t*>(a.ep.y);
    for (int e = 0; e < 4; ++e) {
      const __m256i h = cvt_bf16(t[e]);  // lane L's 4 values are 16-bit elements 4L..4L+3
      alignas(32) uint16_t buf[16];
      _mm256_store_si256((__m256i*)buf, h);
      for (int L = 0; L < 4; ++L) {
        const int64_t j = 4 * L + e;
        if (j < tokens) _mm_mask_storeu_epi16(y + (m0 + j) * a.ep.ldy + n0, m4, _mm_loadl_epi64((const __m128i*)(buf + 4 * L)));
      }
    }
    return;
  }
  auto* y = static_cast<float*>(a.ep.y);  // int32 output is stored through the same bits
  for (int e = 0; e < 4; ++e) {
    const __m128 l[4] = {_mm512_castps512_ps128(t[e]), _mm512_extractf32x4_ps(t[e], 1),
                         _mm512_extractf32x4_ps(t[e], 2), _mm512_extractf32x4_ps(t[e], 3)};
    for (int L = 0; L < 4; ++L) {
      const int64_t j = 4 * L + e;
      if (j < tokens) _mm_mask_storeu_ps(y + (m0 + j) * a.ep.ldy + n0, m4, l[L]);
    }
  }
}

// One block-row against one 64-token panel, of which Q groups of 16 tokens are in use.
template <int Q>
uint32_t row_panel(const Int8Args& a, int64_t r, const uint8_t* panel, int64_t m0) {
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  __m512i acc[4][Q];
  for (int c = 0; c < 4; ++c)
    for (int q = 0; q < Q; ++q) acc[c][q] = _mm512_setzero_si512();
  uint32_t max_index = 0;
  const uint32_t kmax = static_cast<uint32_t>(w.K - 1);
  for (int64_t b = w.rowptr[r]; b < w.rowptr[r + 1]; b += 4) {
    uint32_t k[4];
    for (int j = 0; j < 4; ++j) {
      k[j] = w.indices[b + j];
      max_index = std::max(max_index, k[j]);
      k[j] = std::min(k[j], kmax);
    }
    const __m512i r0 = _mm512_loadu_si512(panel + k[0] * kVnniPanelTokens);
    const __m512i r1 = _mm512_loadu_si512(panel + k[1] * kVnniPanelTokens);
    const __m512i r2 = _mm512_loadu_si512(panel + k[2] * kVnniPanelTokens);
    const __m512i r3 = _mm512_loadu_si512(panel + k[3] * kVnniPanelTokens);
    __m512i x[4];
    const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t2 = _mm512_unpacklo_epi8(r2, r3);
    x[0] = _mm512_unpacklo_epi16(t0, t2);
    if constexpr (Q > 1) x[1] = _mm512_unpackhi_epi16(t0, t2);
    if constexpr (Q > 2) {
      const __m512i t1 = _mm512_unpackhi_epi8(r0, r1), t3 = _mm512_unpackhi_epi8(r2, r3);
      x[2] = _mm512_unpacklo_epi16(t1, t3);
      if constexpr (Q > 3) x[3] = _mm512_unpackhi_epi16(t1, t3);
    }
    const int8_t* tile = values + b * 4;
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512i wc = _mm512_set1_epi32(weight_dword(tile, c));
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) acc[c][q] = _mm512_dpbusd_epi32(acc[c][q], x[q], wc);
    }
  }
  const int64_t n0 = r * 4, rows = std::min<int64_t>(4, w.N - n0);
  for (int q = 0; q < Q; ++q) {
    const int64_t mq = m0 + 16 * q, tokens = std::min<int64_t>(16, a.M - mq);
    if (tokens <= 0) break;
    const __mmask16 valid = lanes16(tokens);
    const __m512i zp = _mm512_maskz_loadu_epi32(valid, a.x_zp + mq);
    const __m512 sx = _mm512_maskz_loadu_ps(valid, a.x_scale + mq);
    __m512 c[4];
    for (int ch = 0; ch < 4; ++ch) {
      c[ch] = ch < rows ? dequant_tokens(a, acc[ch][q], n0 + ch, zp, sx) : _mm512_setzero_ps();
    }
    store_4x16(a, c, mq, tokens, n0, rows);
  }
  return max_index;
}

// Decode: one block-row for MT <= 16 tokens (groups of 4 in xp); writes the compensated int32 sums of the
// block-row's 4 channels to acc_out[t * 4 + c].
template <int MT>
uint32_t row_decode(const Int8Args& a, int64_t r, int32_t* acc_out) {
  constexpr int G = (MT + 3) / 4;
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  const auto* x4 = reinterpret_cast<const int*>(a.xp);
  __m512i acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_si512();
  __m512i ctl[4];
  for (int t = 0; t < 4; ++t) {  // dword c of each lane gathers byte t of that lane's 4 dwords
    ctl[t] = _mm512_set1_epi32(t | (4 + t) << 8 | (8 + t) << 16 | (12 + t) << 24);
  }
  const __m512i kmax = _mm512_set1_epi32(static_cast<int>(w.K - 1));
  __m512i seen = _mm512_setzero_si512();
  const int64_t end = w.rowptr[r + 1];
  for (int64_t b = w.rowptr[r]; b < end; b += 16) {
    const __mmask16 m = lanes16(end - b);
    __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w.indices + b));
    seen = _mm512_max_epu32(seen, idx);
    idx = _mm512_min_epu32(idx, kmax);
    const __m512i wv = _mm512_maskz_loadu_epi32(m, values + b * 4);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m512i xg = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, x4 + g * w.K, 4);
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        if (4 * g + t < MT) acc[4 * g + t] = _mm512_dpbusd_epi32(acc[4 * g + t], _mm512_shuffle_epi8(xg, ctl[t]), wv);
      }
    }
  }
  const int64_t n0 = r * 4, rows = std::min<int64_t>(4, w.N - n0);
  alignas(16) int32_t comp[4] = {};
  for (int64_t c = 0; c < rows; ++c) comp[c] = w.compensation[n0 + c];
  const __m128i compv = _mm_load_si128((const __m128i*)comp);
  for (int t = 0; t < MT; ++t) {
    __m512i s = _mm512_add_epi32(acc[t], _mm512_shuffle_i32x4(acc[t], acc[t], 0x4E));
    s = _mm512_add_epi32(s, _mm512_shuffle_i32x4(s, s, 0xB1));
    const __m128i zp = _mm_set1_epi32(a.x_zp[t]);
    _mm_storeu_si128((__m128i*)(acc_out + 4 * t),
                     _mm_sub_epi32(_mm512_castsi512_si128(s), _mm_mullo_epi32(zp, compv)));
  }
  return _mm512_reduce_max_epu32(seen);
}

// Dequantizes and stores y[m, n0 .. n1) from compensated int32 sums.
void store_row_decode(const Int8Args& a, int64_t m, int64_t n0, int64_t n1, const int32_t* acc) {
  const int64_t esize = a.ep.out == DType::kBF16 ? 2 : 4;
  char* y = static_cast<char*>(a.ep.y) + m * a.ep.ldy * esize;
  const __m512 sx = _mm512_set1_ps(a.x_scale[m]);
  for (int64_t n = n0; n < n1; n += 16) {
    const __mmask16 mk = lanes16(n1 - n);
    const __m512i v = _mm512_maskz_loadu_epi32(mk, acc + (n - n0));
    if (a.ep.out == DType::kS32) {
      _mm512_mask_storeu_epi32(y + n * 4, mk, v);
      continue;
    }
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(sx, _mm512_maskz_loadu_ps(mk, a.w.scale + n)));
    if (a.ep.bias != nullptr) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(mk, a.ep.bias + n));
    store_lanes(activate_ps(f, a.ep.act), a.ep.out, y + n * esize, n1 - n);
  }
}

template <int MT>
uint32_t rows_decode(const Int8Args& a, int64_t br_begin, int64_t br_end) {
  const int64_t n_begin = br_begin * 4, n_end = std::min(a.w.N, br_end * 4);
  std::vector<int32_t> sums(MT * (n_end - n_begin) + 4 * MT);  // [token][channel], + room for a ragged last row
  std::vector<int32_t> row(4 * MT);
  uint32_t max_index = 0;
  const int64_t width = n_end - n_begin;
  for (int64_t r = br_begin; r < br_end; ++r) {
    max_index = std::max(max_index, row_decode<MT>(a, r, row.data()));
    const int64_t c0 = r * 4 - n_begin, rows = std::min<int64_t>(4, a.w.N - r * 4);
    for (int t = 0; t < MT; ++t) {
      for (int64_t c = 0; c < rows; ++c) sums[t * width + c0 + c] = row[4 * t + c];
    }
  }
  for (int t = 0; t < MT; ++t) store_row_decode(a, t, n_begin, n_end, sums.data() + t * width);
  return max_index;
}

}  // namespace

uint32_t linear_int8_vnni(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t m0 = p * kVnniPanelTokens;
      const uint8_t* panel = a.xp + m0 * a.w.K;
      uint32_t mi = 0;
      switch ((std::min<int64_t>(kVnniPanelTokens, a.M - m0) + 15) / 16) {
        case 1: mi = row_panel<1>(a, r, panel, m0); break;
        case 2: mi = row_panel<2>(a, r, panel, m0); break;
        case 3: mi = row_panel<3>(a, r, panel, m0); break;
        default: mi = row_panel<4>(a, r, panel, m0); break;
      }
      max_index = std::max(max_index, mi);
    }
  }
  return max_index;
}

uint32_t linear_int8_vnni_decode(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                 int64_t m_end) {
  Int8Args s = a;  // the decode kernel indexes tokens from 0
  s.xp = a.xp + m_begin * a.w.K;
  s.x_scale = a.x_scale + m_begin;
  s.x_zp = a.x_zp + m_begin;
  s.ep.y = static_cast<char*>(a.ep.y) + m_begin * a.ep.ldy * (a.ep.out == DType::kBF16 ? 2 : 4);
  switch (m_end - m_begin) {
#define SPARSEFLOW_CASE(n) \
  case n: return rows_decode<n>(s, br_begin, br_end);
    SPARSEFLOW_CASE(1) SPARSEFLOW_CASE(2) SPARSEFLOW_CASE(3) SPARSEFLOW_CASE(4) SPARSEFLOW_CASE(5)
    SPARSEFLOW_CASE(6) SPARSEFLOW_CASE(7) SPARSEFLOW_CASE(8) SPARSEFLOW_CASE(9) SPARSEFLOW_CASE(10)
    SPARSEFLOW_CASE(11) SPARSEFLOW_CASE(12) SPARSEFLOW_CASE(13) SPARSEFLOW_CASE(14) SPARSEFLOW_CASE(15)
    SPARSEFLOW_CASE(16)
#undef SPARSEFLOW_CASE
  }
  return 0;
}

void build_panels_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t p_begin,
                            int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t m0 = p * kVnniPanelTokens;
    uint8_t* panel = xp + m0 * K;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 mk = lanes16(K - k);
      // Register R, lane L: the 16 bytes of token 16q + 4L + d with 4q + d = bitrev4(R), so that after the
      // transpose byte 4q + d of lane L of column j is that token's x[., k + j].
      __m512i r[16];
      for (int R = 0; R < 16; ++R) {
        const int i = bitrev4(R), q = i / 4, d = i % 4;
        __m128i lane[4];
        for (int L = 0; L < 4; ++L) {
          const int64_t m = m0 + 16 * q + 4 * L + d;
          lane[L] = m < M ? _mm_maskz_loadu_epi8(mk, xq + m * K + k) : _mm_setzero_si128();
        }
        r[R] = _mm512_inserti32x4(_mm512_castsi128_si512(lane[0]), lane[1], 1);
        r[R] = _mm512_inserti32x4(r[R], lane[2], 2);
        r[R] = _mm512_inserti32x4(r[R], lane[3], 3);
      }
      transpose16x16_epi8_lanes(r);
      const int64_t kn = std::min<int64_t>(16, K - k);
      for (int64_t j = 0; j < kn; ++j) _mm512_storeu_si512(panel + (k + j) * kVnniPanelTokens, r[j]);
    }
  }
}

void build_groups_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t g_begin, int64_t g_end) {
  for (int64_t g = g_begin; g < g_end; ++g) {
    uint8_t* out = xp + g * K * kVnniGroupTokens;
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 mk = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
      __m512i r[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t m = g * kVnniGroupTokens + t;
        r[t] = m < M ? _mm512_maskz_loadu_epi8(mk, xq + m * K + k) : _mm512_setzero_si512();
      }
      const __m512i t0 = _mm512_unpacklo_epi8(r[0], r[1]), t1 = _mm512_unpackhi_epi8(r[0], r[1]);
      const __m512i t2 = _mm512_unpacklo_epi8(r[2], r[3]), t3 = _mm512_unpackhi_epi8(r[2], r[3]);
      // a[i], lane L: dwords for k + 16L + 4i .. + 3
      const __m512i a0 = _mm512_unpacklo_epi16(t0, t2), a1 = _mm512_unpackhi_epi16(t0, t2);
      const __m512i a2 = _mm512_unpacklo_epi16(t1, t3), a3 = _mm512_unpackhi_epi16(t1, t3);
      const __m512i v0 = _mm512_shuffle_i32x4(a0, a1, 0x44), v1 = _mm512_shuffle_i32x4(a0, a1, 0xEE);
      const __m512i v2 = _mm512_shuffle_i32x4(a2, a3, 0x44), v3 = _mm512_shuffle_i32x4(a2, a3, 0xEE);
      const __m512i o[4] = {_mm512_shuffle_i32x4(v0, v2, 0x88), _mm512_shuffle_i32x4(v0, v2, 0xDD),
                            _mm512_shuffle_i32x4(v1, v3, 0x88), _mm512_shuffle_i32x4(v1, v3, 0xDD)};
      for (int L = 0; L < 4; ++L) {
        const int64_t kk = k + 16 * L;
        if (kk < K) _mm512_mask_storeu_epi32(out + kk * 4, lanes16(K - kk), o[L]);
      }
    }
  }
}

}  // namespace sparseflow::bsr
