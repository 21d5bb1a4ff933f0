// AVX512_BF16 bsr_linear kernel for bf16 weights in the 16x1 layout (torch-free; called only when
// selected_cpu_isa() >= kAvx512Bf16). Tested and measured on AMD Zen 4 (the CI machine since 2026-11-28).
//
// vdpbf16ps adds two bf16 products per fp32 lane. Lanes are the 16 output channels; two consecutive blocks
// (input channels ka, kb) of a block-row are interleaved into one weight vector of (W[c, ka], W[c, kb])
// pairs, and each token's (x[t, ka], x[t, kb]) pair is put in every lane by two 16-bit broadcasts from the panel
// (the second one masked to the odd words): 16 vdpbf16ps per two blocks instead of 32 vfmadd231ps. The first
// version stored the panel's pairs as one vector and broadcast dwords back from it, which on Zen 4 was slower
// than the AVX-512F kernel (4096^2, 90 %, 2 threads: M = 32 703 vs 518 us, M = 128 2800 vs 2050 us); without that
// store and with the AVX-512F kernel's prefetch of the activation lines: 412 and 1630 us.
#include <algorithm>

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

}  // namespace

uint32_t linear_bf16_16x1_avx512bf16(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                     int64_t p_begin, int64_t p_end) {
  return for_block_rows(a, br_begin, br_end, p_begin, p_end, [&a, panels](auto mt, int64_t r, int64_t m0) {
    row_pairs<mt>(a, r, panels + m0 * a.w.K, m0);
  });
}

}  // namespace sparseflow::bsr
