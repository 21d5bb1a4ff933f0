// nm_linear for int8 2:4 and 4:8 weights in the lane layout (nm_lanes.h), AVX512_VNNI (torch-free; built
// with this ISA's flags).
//
// A zmm lane is an output row. Per 8 columns a lane holds its row's 4 kept weights; two vpermd turn the two
// 4-column masks into the vpshufb control that picks, from the 8 activations broadcast to every 128-bit
// lane, the 4 that those weights multiply; one vpdpbusd then does 16 rows x 4 real multiply-adds. The
// controls are made once per unit and serve every token. Activations are u8 (s8 + 128);
// the +128 is taken back with 128 * sum(w), which a vpdpbusd against ones accumulates per lane.
#include <immintrin.h>

#include <cstring>

#include "nm_lanes.h"
#include "nm_linear_simd.h"

namespace sparseflow::nm {
namespace {

constexpr int kMaxTokens = 8;
// Units (8 columns, 64 bytes of weights per 16 rows) fetched ahead into L1: 768x3072 at one token went
// 41 -> 38 us (2 threads, three alternating runs); large weights unchanged (bandwidth-bound either way).
constexpr int64_t kPrefetchUnits = 16;

struct LaneConsts {
  __m512i lut_lo;  // mask of columns 0-3 -> their indices, from control byte 0 on
  __m512i lut_hi;  // mask of columns 4-7 -> their indices (4-7), ending at control byte 3
  __m512i ones;

  LaneConsts() {
    // Each table sets only the bytes its half fills and leaves the others 0, so one vpord merges them. A byte
    // neither fills (only the half unit of 2:4, whose weights there are 0) picks column 0: a product of 0.
    alignas(64) uint32_t lo[16], hi[16];
    for (int mask = 0; mask < 16; ++mask) {
      lo[mask] = hi[mask] = 0;
      for (int i = 0, lo_byte = 0, hi_byte = 4 - __builtin_popcount(mask); i < 4; ++i) {
        if (!((mask >> i) & 1)) continue;
        lo[mask] |= static_cast<uint32_t>(i) << (8 * lo_byte++);
        hi[mask] |= static_cast<uint32_t>(4 + i) << (8 * hi_byte++);
      }
    }
    lut_lo = _mm512_load_si512(lo);
    lut_hi = _mm512_load_si512(hi);
    ones = _mm512_set1_epi8(1);
  }
};

inline __m512i broadcast8(const uint8_t* p) {
  long long v;
  std::memcpy(&v, p, 8);
  return _mm512_set1_epi64(v);
}

// One unit (8 columns) of a block: weights w (4 per lane), its meta word mw with the unit's two 4-column
// masks at bits 8q .. 8q+7. Accumulator set S (units alternate between two sets for vpdpbusd's latency).
template <int T, int Q>
SF_ALWAYS_INLINE void unit(const LaneConsts& k, __m512i mw, __m512i w, const uint8_t* const (&x)[T], int64_t col,
                           __m512i (&acc)[2][T], __m512i (&wsum)[2]) {
  constexpr int S = Q % 2;
  const __m512i lo = Q == 0 ? mw : _mm512_srli_epi32(mw, 8 * Q);
  const __m512i control = _mm512_or_si512(_mm512_permutexvar_epi32(lo, k.lut_lo),
                                          _mm512_permutexvar_epi32(_mm512_srli_epi32(mw, 8 * Q + 4), k.lut_hi));
  wsum[S] = dpbusd(wsum[S], k.ones, w);
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[S][t] = dpbusd(acc[S][t], _mm512_shuffle_epi8(broadcast8(x[t] + col), control), w);
}

template <int Q, int T>
SF_ALWAYS_INLINE void full_units(const LaneConsts& k, __m512i mw, const int8_t* values, int h, __mmask16 lanes,
                                 const uint8_t* const (&x)[T], int64_t u0, int count, __m512i (&acc)[2][T],
                                 __m512i (&wsum)[2]) {
  if constexpr (Q < 4) {
    if (Q >= count) return;
    const __m512i w = _mm512_maskz_loadu_epi32(lanes, values + (u0 + Q) * 4 * h);
    unit<T, Q>(k, mw, w, x, 8 * (u0 + Q), acc, wsum);
    full_units<Q + 1, T>(k, mw, values, h, lanes, x, u0, count, acc, wsum);
  }
}

// Tokens [t0, t0 + T) of the block of h rows that starts at row `first`; int32 results to out[t * 16 + lane].
template <int T>
void block(const LinearParams& p, const LaneConsts& k, int64_t first, int h, int64_t t0, int32_t* out) {
  const int64_t cols = p.in_features, quads = cols / 4, full = quads / 2;  // 4-column pieces, full units
  const int8_t* values = static_cast<const int8_t*>(p.values) + first * (cols / 2);
  const uint8_t* meta = p.meta + first * meta_row_bytes(cols);
  const __mmask16 lanes = static_cast<__mmask16>((1u << h) - 1);
  const uint8_t* x[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const uint8_t*>(p.xq) + (t0 + t) * p.xq_stride;
  __m512i acc[2][T], wsum[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_si512();

  int64_t u0 = 0;
  for (; u0 + 4 <= full; u0 += 4) {
    const int8_t* ahead = values + (u0 + kPrefetchUnits) * 4 * h;
    for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(ahead) + 64 * l, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(meta + (u0 + kPrefetchUnits) * h), _MM_HINT_T0);
    const __m512i mw = _mm512_maskz_loadu_epi32(lanes, meta + u0 * h);  // meta word u0 / 4: 4 * h bytes each
    full_units<0, T>(k, mw, values, h, lanes, x, u0, 4, acc, wsum);
  }
  if (u0 < (quads + 1) / 2) {  // the last meta word: up to 3 full units and the half unit of cols % 8 == 4
    const __m512i mw = _mm512_maskz_loadu_epi32(lanes, meta + u0 * h);
    const int count = static_cast<int>(full - u0);
    full_units<0, T>(k, mw, values, h, lanes, x, u0, count, acc, wsum);
    if (quads % 2 == 1) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, values + full * 4 * h));
      switch (count) {  // the half unit's mask sits at bits 8 * count; its second mask is 0 (no column)
        case 0: unit<T, 0>(k, mw, w, x, 8 * full, acc, wsum); break;
        case 1: unit<T, 1>(k, mw, w, x, 8 * full, acc, wsum); break;
        case 2: unit<T, 2>(k, mw, w, x, 8 * full, acc, wsum); break;
        default: unit<T, 3>(k, mw, w, x, 8 * full, acc, wsum); break;
      }
    }
  }
  // Modulo 2^32 like the row kernel: exact because the true sum fits in int32.
  const __m512i correction = _mm512_slli_epi32(_mm512_add_epi32(wsum[0], wsum[1]), 7);
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    _mm512_storeu_si512(out + t * kLaneRows,
                        _mm512_sub_epi32(_mm512_add_epi32(acc[0][t], acc[1][t]), correction));
  }
}

}  // namespace

void linear_lanes_avx512_vnni(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using BlockFn = void (*)(const LinearParams&, const LaneConsts&, int64_t, int, int64_t, int32_t*);
  static constexpr BlockFn kBlocks[kMaxTokens] = {block<1>, block<2>, block<3>, block<4>,
                                                  block<5>, block<6>, block<7>, block<8>};
  const LaneConsts consts;
  alignas(64) int32_t out[kMaxTokens * kLaneRows];
  for (int64_t first = row_begin; first < row_end; first += kLaneRows) {
    const int h = lane_block_height(p.out_features, first);
    // Token groups inside the block loop: the block's weights (16 rows) stay in L1/L2 between groups.
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      kBlocks[tokens - 1](p, consts, first, h, t0, out);
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, first, h, nullptr, out + t * kLaneRows);
    }
  }
}

}  // namespace sparseflow::nm
