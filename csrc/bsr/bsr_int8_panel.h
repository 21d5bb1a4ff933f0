// What the int8 panel kernels (VNNI and AMX) share: the activation dwords of a tile from the 64-token panels, and
// the output stage (raw int32 accumulators of up to kStageChannels output channels x one panel, dequantized and
// stored token-major). AVX-512F; internal linkage (see bsr_avx512_math.h).
#pragma once

#include <algorithm>

#include "bsr.h"
#include "bsr_avx512_math.h"

namespace sparseflow::bsr {
namespace {

// The four activation rows k[0..3] of one tile in a 64-token panel, interleaved by two rounds of unpacks into
// x[q] for the first `groups` groups of 16 tokens: dword i of x[q] = (x[t, k0], x[t, k1], x[t, k2], x[t, k3]) for
// token t = 16q + i (the panel's token order, bsr.h, makes the unpacks come out in token order).
__attribute__((always_inline)) inline void tile_activations(const uint8_t* panel, const uint16_t* k, int groups,
                                                            __m512i x[4]) {
  const __m512i r0 = _mm512_loadu_si512(panel + k[0] * kVnniPanelTokens);
  const __m512i r1 = _mm512_loadu_si512(panel + k[1] * kVnniPanelTokens);
  const __m512i r2 = _mm512_loadu_si512(panel + k[2] * kVnniPanelTokens);
  const __m512i r3 = _mm512_loadu_si512(panel + k[3] * kVnniPanelTokens);
  const __m512i lo01 = _mm512_unpacklo_epi8(r0, r1), lo23 = _mm512_unpacklo_epi8(r2, r3);
  x[0] = _mm512_unpacklo_epi16(lo01, lo23);
  if (groups > 1) x[1] = _mm512_unpackhi_epi16(lo01, lo23);
  if (groups > 2) {
    const __m512i hi01 = _mm512_unpackhi_epi8(r0, r1), hi23 = _mm512_unpackhi_epi8(r2, r3);
    x[2] = _mm512_unpacklo_epi16(hi01, hi23);
    if (groups > 3) x[3] = _mm512_unpackhi_epi16(hi01, hi23);
  }
}

// Block-rows whose raw accumulators are staged before one finishing pass: the pass transposes them to
// token-major order and writes 64 contiguous channels per token, instead of 16 bytes into each of 64 token
// rows per block-row (which thrashed the TLB: output rows are out_features * 4 bytes apart).
constexpr int kStageChannels = 64;

// The int8 epilogue of output channels [n, n + count), count <= 16, one token at a time: raw accumulators
// (sum of xq * W) in; the zero point is removed with the weights' compensation, then y gets the int32 itself
// or act(acc * (scale_x * scale_w) + bias) in the output dtype.
struct ChannelEpilogue {
  int64_t n, count;
  __mmask16 mask;
  __m512i comp;
  __m512 scale, bias;

  ChannelEpilogue(const Int8Args& a, int64_t n, int64_t count) : n(n), count(count), mask(lanes16(count)) {
    comp = _mm512_maskz_loadu_epi32(mask, a.w.compensation + n);
    scale = a.ep.out == DType::kS32 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, a.w.scale + n);
    bias = a.ep.bias != nullptr ? _mm512_maskz_loadu_ps(mask, a.ep.bias + n) : _mm512_setzero_ps();
  }

  void store(const Int8Args& a, int64_t m, __m512i acc) const {
    acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(a.x_zp[m]), comp));
    char* y = static_cast<char*>(a.ep.y) + (m * a.ep.ldy + n) * (a.ep.out == DType::kBF16 ? 2 : 4);
    if (a.ep.out == DType::kS32) {
      _mm512_mask_storeu_epi32(y, mask, acc);
      return;
    }
    const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(_mm512_set1_ps(a.x_scale[m]), scale), bias);
    store_lanes(activate_ps(v, a.ep.act), a.ep.out, y, count);
  }
};

// Dequantizes the staged accumulators of channels [n0, n0 + channels) and tokens [m0, m0 + tokens) and
// stores them to y: per 16x16 (channel, token) block, a register transpose, then lanes = channels.
void finish_stage(const Int8Args& a, const int32_t* stage, int64_t n0, int64_t channels, int64_t m0,
                  int64_t tokens) {
  for (int64_t g = 0; g < channels; g += 16) {
    const ChannelEpilogue epilogue(a, n0 + g, std::min<int64_t>(16, channels - g));
    for (int64_t q = 0; q < tokens; q += 16) {
      __m512 t[16];
      for (int i = 0; i < 16; ++i) {
        t[i] = _mm512_castsi512_ps(_mm512_load_si512(stage + (g + i) * kVnniPanelTokens + q));
      }
      transpose16x16_ps(t);  // t[j]: token m0 + q + j, lanes = channels n0 + g ..
      const int64_t count = std::min<int64_t>(16, tokens - q);
      for (int64_t j = 0; j < count; ++j) epilogue.store(a, m0 + q + j, _mm512_castps_si512(t[j]));
    }
  }
}

}  // namespace
}  // namespace sparseflow::bsr
