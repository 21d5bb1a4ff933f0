// nm_compress(prune=True) for m = 4 and 8, AVX-512F/BW/VL (torch-free; built with this ISA's flags).
//
// 16 elements at a time, widened to 32-bit lanes (so one kernel serves every dtype): the magnitude keys are
// compared with their m-1 rotations inside each group (vpermd), a lane's rank is how many group mates beat
// it (the rule of prune_keep_mask), the lanes of rank < n are kept, and vpcompressd packs the kept values
// and positions in ascending order; they are narrowed back and stored with a mask.
#include <immintrin.h>

#include "nm_prune.h"

namespace sparseflow::nm {
namespace {

constexpr int kLanes = 16;

// Raw bits (zero-extended) and magnitude keys of 16 elements.
template <PruneDtype kDtype>
inline void load16(const void* src, __m512i& raw, __m512i& key) {
  if constexpr (kDtype == PruneDtype::kFloat32) {
    raw = _mm512_loadu_si512(src);
    key = _mm512_min_epu32(_mm512_and_si512(raw, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800001));
  } else if constexpr (kDtype == PruneDtype::kFloat16 || kDtype == PruneDtype::kBFloat16) {
    raw = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(src)));
    const int nan = kDtype == PruneDtype::kFloat16 ? 0x7c01 : 0x7f81;
    key = _mm512_min_epu32(_mm512_and_si512(raw, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(nan));
  } else if constexpr (kDtype == PruneDtype::kFloat8E4M3) {
    raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(src)));
    key = _mm512_and_si512(raw, _mm512_set1_epi32(0x7f));
  } else {
    const __m128i bytes = _mm_loadu_si128(static_cast<const __m128i*>(src));
    raw = _mm512_cvtepu8_epi32(bytes);
    key = _mm512_abs_epi32(_mm512_cvtepi8_epi32(bytes));
  }
}

// Stores the low `count` lanes, narrowed to the element size.
template <PruneDtype kDtype>
inline void store(void* dst, __mmask16 lanes, __m512i v) {
  if constexpr (kDtype == PruneDtype::kFloat32) {
    _mm512_mask_storeu_epi32(dst, lanes, v);
  } else if constexpr (kDtype == PruneDtype::kFloat16 || kDtype == PruneDtype::kBFloat16) {
    _mm256_mask_storeu_epi16(dst, lanes, _mm512_cvtepi32_epi16(v));
  } else {
    _mm_mask_storeu_epi8(dst, lanes, _mm512_cvtepi32_epi8(v));
  }
}

template <PruneDtype kDtype, typename Key, int kM>
void run(const PackParams& p, int64_t row_begin, int64_t row_end) {
  using Bits = typename Key::Bits;
  const auto* dense = static_cast<const Bits*>(p.dense) + row_begin * p.cols;
  auto* values = static_cast<Bits*>(p.values) + row_begin * p.cols / kM * p.n;
  uint8_t* indices = p.indices + row_begin * p.cols / kM * p.n;
  const int64_t elems = (row_end - row_begin) * p.cols;  // whole groups: cols % m == 0

  // Rotation r: lane j looks at lane (j + r) mod m of its group, which comes first when j % m + r >= m.
  __m512i rotation[kM - 1];
  __mmask16 mate_first[kM - 1];
  for (int r = 1; r < kM; ++r) {
    alignas(64) int idx[kLanes];
    int first = 0;
    for (int j = 0; j < kLanes; ++j) {
      idx[j] = (j & ~(kM - 1)) | ((j + r) & (kM - 1));
      first |= (j % kM + r >= kM) << j;
    }
    rotation[r - 1] = _mm512_load_si512(idx);
    mate_first[r - 1] = static_cast<__mmask16>(first);
  }
  alignas(64) int lane_position[kLanes];
  for (int j = 0; j < kLanes; ++j) lane_position[j] = j % kM;
  const __m512i position = _mm512_load_si512(lane_position);
  const __m512i n = _mm512_set1_epi32(p.n);
  const __m512i one = _mm512_set1_epi32(1);
  const int out = kLanes / kM * p.n;
  const __mmask16 out_lanes = static_cast<__mmask16>((1u << out) - 1);

  int64_t e = 0;
  for (; e + kLanes <= elems; e += kLanes) {
    __m512i raw, key;
    load16<kDtype>(dense + e, raw, key);
    __m512i rank = _mm512_setzero_si512();
    for (int r = 0; r < kM - 1; ++r) {
      const __m512i mate = _mm512_permutexvar_epi32(rotation[r], key);
      const __mmask16 beats = (_mm512_cmpge_epu32_mask(mate, key) & mate_first[r]) |
                              (_mm512_cmpgt_epu32_mask(mate, key) & ~mate_first[r]);
      rank = _mm512_mask_add_epi32(rank, beats, rank, one);
    }
    const __mmask16 keep = _mm512_cmplt_epu32_mask(rank, n);
    const __mmask16 nonzero = _mm512_test_epi32_mask(key, key);  // kept zeros are written as +0
    const __m512i kept = _mm512_maskz_compress_epi32(keep, _mm512_maskz_mov_epi32(nonzero, raw));
    const int64_t o = e / kM * p.n;
    store<kDtype>(values + o, out_lanes, kept);
    _mm_mask_storeu_epi8(indices + o, out_lanes, _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(keep, position)));
  }
  for (; e < elems; e += kM) prune_group<Key, kM>(dense + e, p.n, kM, values + e / kM * p.n, indices + e / kM * p.n);
}

template <PruneDtype kDtype, typename Key>
void dispatch_m(const PackParams& p, int64_t row_begin, int64_t row_end) {
  if (p.m == 4) return run<kDtype, Key, 4>(p, row_begin, row_end);
  return run<kDtype, Key, 8>(p, row_begin, row_end);
}

}  // namespace

void prune_compress_avx512(const PackParams& p, PruneDtype dtype, int64_t row_begin, int64_t row_end) {
  switch (dtype) {
    case PruneDtype::kFloat32: return dispatch_m<PruneDtype::kFloat32, KeyFloat32>(p, row_begin, row_end);
    case PruneDtype::kFloat16: return dispatch_m<PruneDtype::kFloat16, KeyFloat16>(p, row_begin, row_end);
    case PruneDtype::kBFloat16: return dispatch_m<PruneDtype::kBFloat16, KeyBFloat16>(p, row_begin, row_end);
    case PruneDtype::kFloat8E4M3: return dispatch_m<PruneDtype::kFloat8E4M3, KeyFloat8E4M3>(p, row_begin, row_end);
    case PruneDtype::kInt8: return dispatch_m<PruneDtype::kInt8, KeyInt8>(p, row_begin, row_end);
  }
}

}  // namespace sparseflow::nm
