// AVX-512F bsr_linear kernels for fp32/bf16 weights (torch-free; built with AVX-512 flags, called only
// when selected_cpu_isa() >= kAvx512), plus the vectorized per-token quantization of the int8 path.
//
// 16x1 (lanes = 16 output channels): per block, one weight vector (fp32, or bf16 widened by a shift) and,
// per token, vfmadd231ps with the token's activation broadcast from the transposed panel, where the 16
// tokens of a panel share one cache line per input channel. 1x16 (lanes = 16 input channels): per block and
// token one contiguous activation load and FMA into a per-token accumulator, reduced across lanes once per
// output row. float 4x1 (4x4 tiles of 4 blocks; bf16 weights widened, for CPUs without AVX512_BF16): with a
// panel of tokens, lanes = tokens and each weight is broadcast from memory; for a few tokens (decode), lanes =
// the tile and the 4 activations are picked per token (one permute of a 16-float window of x for span-16 tiles).
#include <algorithm>
#include <type_traits>

#include "bsr.h"
#include "bsr_avx512_math.h"
#include "bsr_scalar.h"

namespace sparseflow::bsr {
namespace {

template <bool kBf16>
inline __m512 load_weights(const void* values, int64_t b) {
  if constexpr (kBf16) {
    return load_bf16(static_cast<const uint16_t*>(values) + b * 16);
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(values) + b * 16);
  }
}

// One block-row of the 16x1 layout against one panel of MT tokens. The panel's line for a block's input
// channel is a random line of an L2-resident panel: prefetching it kPrefetchBlocks blocks ahead took
// 4096x4096 fp32 at 90 % and M = 128 from 8.0 to 6.5-6.8 ms and bf16 from 7.5 to 5.9 ms (2 threads, same
// machine). One token reads x itself (L1-resident), where the prefetch only cost time.
template <int MT, bool kBf16>
void row_16x1(const FloatArgs& a, int64_t r, const float* panel, int64_t m0) {
  const Weight& w = a.w;
  __m512 acc[MT], sum[MT];
  for (int t = 0; t < MT; ++t) sum[t] = _mm512_setzero_ps();
  const int64_t last = w.rowptr[r + 1] - 1;
  for (int64_t b0 = w.rowptr[r]; b0 < w.rowptr[r + 1]; b0 += kSumChunkBlocks) {
    const int64_t b1 = std::min<int64_t>(w.rowptr[r + 1], b0 + kSumChunkBlocks);
    for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; ++b) {
      const float* xk = panel + int64_t(w.indices[b]) * MT;
      if constexpr (MT > 1) prefetch_l1(panel + int64_t(w.indices[std::min(b + kPrefetchBlocks, last)]) * MT);
      const __m512 wv = load_weights<kBf16>(w.values, b);
#pragma GCC unroll 16
      for (int t = 0; t < MT; ++t) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(xk[t]), wv, acc[t]);
    }
    for (int t = 0; t < MT; ++t) sum[t] = _mm512_add_ps(sum[t], acc[t]);
  }
  store_16x1<MT>(a, r, m0, sum);
}

template <bool kBf16>
uint32_t rows_16x1(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a](auto mt, int64_t r, int64_t m0) {
    row_16x1<mt, kBf16>(a, r, a.xt + m0 * a.w.K, m0);
  });
}

// Sums each of 16 vectors: lane t of the result is the sum of a[t]'s lanes (30 shuffles, 15 adds).
inline __m512 reduce16(const __m512 a[16]) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i) {
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // lane L of c[i]: partial sums of a[4i + L]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  }
  for (int i = 0; i < 2; ++i) {
    d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
  }
  // element 4L + e of e_: the sum of a[4e + L]
  const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, e);
}

// One output row of the 1x16 layout against the MT tokens of a k-block panel starting at token m0.
template <int MT, bool kBf16>
void row_1x16(const FloatArgs& a, int64_t n, const float* panel, int64_t m0) {
  const Weight& w = a.w;
  __m512 acc[16];
  for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = w.rowptr[n]; b < w.rowptr[n + 1]; ++b) {
    const float* xk = panel + int64_t(w.indices[b]) * MT;  // block k0 = 16 kb starts at kb * MT * 16
    const __m512 wv = load_weights<kBf16>(w.values, b);
#pragma GCC unroll 16
    for (int t = 0; t < MT; ++t) acc[t] = _mm512_fmadd_ps(_mm512_load_ps(xk + 16 * t), wv, acc[t]);
  }
  __m512 v;
  if constexpr (MT == 1) {
    v = _mm512_set1_ps(_mm512_reduce_add_ps(acc[0]));
  } else {
    v = reduce16(acc);
  }
  store_channel_tokens<MT>(a, n, m0, v);
}

// One block-row of the float 4x1 layout against a panel of MT tokens (row_4x1_panel): per tile, the four
// blocks' activation lines (each shared by the tile's 4 output channels) and 16 FMAs with the weights broadcast
// from memory. At MT = 16 every lane is a useful product: the 16x1 kernel's FMAs per stored weight, without the
// zeros a 16x1 re-cut of 4x1 blocks stores. No software prefetch of the activation lines: with one per block
// (the 16x1 kernel's) it ran 10-25 % slower (Zen 4, 576x1536 and 1536x576, 50 %, 16-256 tokens).
template <int MT, bool kBf16>
void row_4x1(const FloatArgs& a, int64_t r, const float* panel, int64_t m0) {
  using Vec = TokenVec<MT>;
  const auto* values = static_cast<const std::conditional_t<kBf16, uint16_t, float>*>(a.w.values);
  row_4x1_panel<MT, Vec>(a, r, panel, m0, [values](auto& acc, int64_t b, const float* const* lines) {
    const auto* tile = values + b * 4;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const auto xj = Vec::load(MT, lines[j]);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const float wc = kBf16 ? bf16_to_float(tile[4 * c + j]) : tile[4 * c + j];
        acc[c][j & 1] = Vec::fmadd(wc, xj, acc[c][j & 1]);
      }
    }
  });
}

// Word 2L of the result is word L % 4 of the tile's four 16-bit indices (word 4, zero, fills the odd words):
// as dwords, lane 4c + j holds block j's index, which is what vpermps reads (its low 4 bits).
inline __m512i spread_tile_indices(const uint16_t* idx) {
  const __m512i order = _mm512_set_epi16(4, 3, 4, 2, 4, 1, 4, 0, 4, 3, 4, 2, 4, 1, 4, 0, 4, 3, 4, 2, 4, 1, 4, 0,
                                         4, 3, 4, 2, 4, 1, 4, 0);
  return _mm512_permutexvar_epi16(order, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i*)idx)));
}

// One block-row of the float 4x1 layout against MT <= kFloat4x1DecodeMaxTokens tokens of fp32 padded rows x (kTileSpan
// floats of slack, ldx apart): lanes = the tile, lane 4c + j = W[4r + c, k_j] * x[k_j]; each token's 4
// activations come from one permute of the 16 floats at k_0 (span-16 tiles) or from 4 scalar loads. Returns
// kTileSpanBroken if a span-16 tile's indices do not lie within 16 channels of its first (a corrupted weight; the
// permute stays in the window).
template <int MT, bool kSpan16, bool kBf16>
uint32_t row_4x1_decode(const FloatArgs& a, int64_t r, const float* x, int64_t ldx, int64_t m0) {
  const Weight& w = a.w;
  __m512 sum[MT];
  for (int t = 0; t < MT; ++t) sum[t] = _mm512_setzero_ps();
  __mmask32 broken = 0;
  const __m512i span = _mm512_set1_epi16(kTileSpan);
  const int64_t end = w.rowptr[r + 1];
  for (int64_t b0 = w.rowptr[r]; b0 < end; b0 += kSumChunkBlocks) {
    const int64_t b1 = std::min<int64_t>(end, b0 + kSumChunkBlocks);
    __m512 acc[MT];
    for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; b += 4) {
      const __m512 wv = load_weights<kBf16>(w.values, b / 4);  // a tile: 16 values
      const uint16_t* idx = w.indices + b;
      if constexpr (kSpan16) {
        const __m512i first = _mm512_set1_epi16(static_cast<int16_t>(idx[0]));
        const __m512i offsets = _mm512_sub_epi16(spread_tile_indices(idx), first);
        broken |= _mm512_mask_cmpge_epu16_mask(0x55555555u, offsets, span);
        for (int t = 0; t < MT; ++t) {
          const __m512 window = _mm512_loadu_ps(x + t * ldx + idx[0]);
          acc[t] = _mm512_fmadd_ps(wv, _mm512_permutexvar_ps(offsets, window), acc[t]);
        }
      } else {
        for (int t = 0; t < MT; ++t) {
          const float* xt = x + t * ldx;
          const __m512 xv = _mm512_broadcast_f32x4(_mm_setr_ps(xt[idx[0]], xt[idx[1]], xt[idx[2]], xt[idx[3]]));
          acc[t] = _mm512_fmadd_ps(wv, xv, acc[t]);
        }
      }
    }
    for (int t = 0; t < MT; ++t) sum[t] = _mm512_add_ps(sum[t], acc[t]);
  }
  if (broken != 0) return kTileSpanBroken;
  const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int t = 0; t < MT; ++t) {
    __m512 v = _mm512_add_ps(sum[t], _mm512_permute_ps(sum[t], 0xB1));  // pairs of blocks
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));                   // all 4 blocks: lane 4c = channel c
    store_row4(a, r, m0 + t, _mm512_permutexvar_ps(firsts, v));
  }
  return 0;
}

template <bool kBf16>
uint32_t rows_1x16(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  const int64_t k16 = (a.w.K + 15) / 16 * 16;
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a, k16](auto mt, int64_t n, int64_t m0) {
    row_1x16<mt, kBf16>(a, n, a.xt + m0 * k16, m0);
  });
}

inline __m512 load_x(const void* row, bool bf16, int64_t k, __mmask16 m) {
  return bf16 ? maskz_load_bf16(m, static_cast<const uint16_t*>(row) + k)
              : _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + k);
}

}  // namespace

uint32_t linear_f16x1_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                             int64_t p_end) {
  return a.w.dtype == DType::kBF16 ? rows_16x1<true>(a, br_begin, br_end, p_begin, p_end)
                                   : rows_16x1<false>(a, br_begin, br_end, p_begin, p_end);
}

uint32_t linear_f1x16_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                             int64_t p_end) {
  return a.w.dtype == DType::kBF16 ? rows_1x16<true>(a, br_begin, br_end, p_begin, p_end)
                                   : rows_1x16<false>(a, br_begin, br_end, p_begin, p_end);
}

uint32_t linear_f4x1_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  const bool bf16 = a.w.dtype == DType::kBF16;
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a, bf16](auto mt, int64_t r, int64_t m0) {
    if (bf16) {
      row_4x1<mt, true>(a, r, a.xt + m0 * a.w.K, m0);
    } else {
      row_4x1<mt, false>(a, r, a.xt + m0 * a.w.K, m0);
    }
  });
}

uint32_t linear_f4x1_decode_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                   int64_t m_end) {
  const bool span16 = a.w.tile_span == kTileSpan, bf16 = a.w.dtype == DType::kBF16;
  return for_decode_passes(a, br_begin, br_end, m_begin, m_end, [&a, span16, bf16](auto mt, int64_t r, int64_t m0) {
    const float* x = a.xt + m0 * a.ldx;
    if (span16) {
      return bf16 ? row_4x1_decode<mt, true, true>(a, r, x, a.ldx, m0)
                  : row_4x1_decode<mt, true, false>(a, r, x, a.ldx, m0);
    }
    return bf16 ? row_4x1_decode<mt, false, true>(a, r, x, a.ldx, m0)
                : row_4x1_decode<mt, false, false>(a, r, x, a.ldx, m0);
  });
}

void transpose_panels_f32_avx512(const void* x, bool x_bf16, int64_t ldx, int64_t M, int64_t K, bool float4x1_lines,
                                 float* xt, int64_t p_begin, int64_t p_end) {
  const int64_t esize = x_bf16 ? 2 : 4;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t m0 = p * kF32PanelTokens;
    const int64_t tokens = std::min<int64_t>(kF32PanelTokens, M - m0);
    const int64_t width = float4x1_lines ? float4x1_panel_line(tokens, K) : tokens;
    float* panel = xt + m0 * K;
    const __mmask16 store_mask = lanes16(width);
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 load_mask = lanes16(K - k);
      __m512 r[16];
      for (int t = 0; t < 16; ++t) {
        r[t] = t < tokens ? load_x(static_cast<const char*>(x) + (m0 + t) * ldx * esize, x_bf16, k, load_mask)
                          : _mm512_setzero_ps();
      }
      transpose16x16_ps(r);
      const int64_t kn = std::min<int64_t>(16, K - k);
      for (int64_t j = 0; j < kn; ++j) _mm512_mask_storeu_ps(panel + (k + j) * width, store_mask, r[j]);
    }
  }
}

void transpose_panels_bf16_avx512(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint16_t* xt,
                                  int64_t p_begin, int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t m0 = p * kF32PanelTokens;
    const int64_t width = std::min<int64_t>(kF32PanelTokens, M - m0);
    uint16_t* panel = xt + m0 * K;
    const __mmask16 store_mask = lanes16(width);
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 load_mask = lanes16(K - k);
      __m512 r[16];  // bf16 bit patterns widened to 32-bit lanes, transposed as such
      for (int t = 0; t < 16; ++t) {
        r[t] = t < width ? _mm512_castsi512_ps(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(load_mask, x + (m0 + t) * ldx + k)))
                         : _mm512_setzero_ps();
      }
      transpose16x16_ps(r);
      const int64_t kn = std::min<int64_t>(16, K - k);
      for (int64_t j = 0; j < kn; ++j) {
        _mm512_mask_cvtepi32_storeu_epi16(panel + (k + j) * width, store_mask, _mm512_castps_si512(r[j]));
      }
    }
  }
}

void kblock_panels_f32_avx512(const void* x, bool x_bf16, int64_t ldx, int64_t M, int64_t K, float* xt,
                              int64_t p_begin, int64_t p_end) {
  const int64_t esize = x_bf16 ? 2 : 4, k16 = (K + 15) / 16 * 16;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t m0 = p * kF32PanelTokens;
    const int64_t width = std::min<int64_t>(kF32PanelTokens, M - m0);
    float* panel = xt + m0 * k16;
    for (int64_t t = 0; t < width; ++t) {
      const void* row = static_cast<const char*>(x) + (m0 + t) * ldx * esize;
      for (int64_t k = 0; k < K; k += 16) {
        _mm512_store_ps(panel + (k / 16 * width + t) * 16, load_x(row, x_bf16, k, lanes16(K - k)));
      }
    }
  }
}

namespace {

// One token row: min / max over 4 independent chains (vminps has 4 cycles of latency), then round, shift
// by the zero point, clamp and narrow. Full vectors in the loops and one masked tail: with a masked
// load, a per-vector dtype branch and K reloaded after every store (it may alias), 32 x 3072 fp32 took
// ~35 us, a quarter of a 32-token 768x3072 int8 call.
template <class T>
void quantize_row(const T* row, int64_t K, uint8_t* out, float* scale, int32_t* zp) {
  auto load = [&](int64_t k) {
    if constexpr (sizeof(T) == 2) return load_bf16(row + k);
    else return _mm512_loadu_ps(row + k);
  };
  auto load_tail = [&](int64_t k, __mmask16 m) {  // masked-off lanes read 0, which min / max with 0 ignore
    if constexpr (sizeof(T) == 2) return maskz_load_bf16(m, row + k);
    else return _mm512_maskz_loadu_ps(m, row + k);
  };
  const int64_t full = K & ~int64_t(15);
  const __mmask16 tail = lanes16(K - full);
  __m512 lo[4], hi[4];
  for (int i = 0; i < 4; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= full; k += 64) {
    for (int i = 0; i < 4; ++i) {
      const __m512 v = load(k + 16 * i);
      lo[i] = _mm512_min_ps(lo[i], v);
      hi[i] = _mm512_max_ps(hi[i], v);
    }
  }
  for (; k < full; k += 16) {
    const __m512 v = load(k);
    lo[0] = _mm512_min_ps(lo[0], v);
    hi[0] = _mm512_max_ps(hi[0], v);
  }
  if (tail) {
    const __m512 v = load_tail(full, tail);
    lo[1] = _mm512_min_ps(lo[1], v);
    hi[1] = _mm512_max_ps(hi[1], v);
  }
  const __m512 lo_all = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
  const __m512 hi_all = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
  const TokenQuant tq = token_quant(_mm512_reduce_min_ps(lo_all), _mm512_reduce_max_ps(hi_all));
  *scale = tq.scale;
  *zp = static_cast<int32_t>(tq.zp);
  const __m512 inv = _mm512_set1_ps(tq.inv_scale), shift = _mm512_set1_ps(tq.zp);
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.f);
  auto quantize = [&](__m512 v) {
    const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, shift), zero), top)));
  };
  for (k = 0; k < full; k += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), quantize(load(k)));
  if (tail) _mm_mask_storeu_epi8(out + full, tail, quantize(load_tail(full, tail)));
}

}  // namespace

void quantize_rows_avx512(const QuantArgs& q, int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    if (q.x_bf16) {
      quantize_row(static_cast<const uint16_t*>(q.x) + m * q.ldx, q.K, q.xq + m * q.ldxq, q.scale + m, q.zp + m);
    } else {
      quantize_row(static_cast<const float*>(q.x) + m * q.ldx, q.K, q.xq + m * q.ldxq, q.scale + m, q.zp + m);
    }
  }
}

}  // namespace sparseflow::bsr
