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
#include <vector>

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

// The quantized rows of tokens [t0, t0 + T).
template <int T>
SF_ALWAYS_INLINE void token_rows(const LinearParams& p, int64_t t0, const uint8_t* (&x)[T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const uint8_t*>(p.xq) + (t0 + t) * p.xq_stride;
}

// The weights of the half unit of cols % 8 == 4 (2:4 only): h 16-bit words, the 2 kept values of each row.
SF_ALWAYS_INLINE __m512i half_unit_weights(const int8_t* values, int64_t full, int h, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, values + full * 4 * h));
}

// The tokens' products of one unit: x[t] columns col .. col+7 picked by `control`, times weights w.
template <int S, int T>
SF_ALWAYS_INLINE void multiply(__m512i w, __m512i control, const uint8_t* const (&x)[T], int64_t col,
                               __m512i (&acc)[2][T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[S][t] = dpbusd(acc[S][t], _mm512_shuffle_epi8(broadcast8(x[t] + col), control), w);
}

// One unit (8 columns) of a block: weights w (4 per lane), its meta word mw with the unit's two 4-column
// masks at bits 8q .. 8q+7. Accumulator set Q % 2 (units alternate between two sets for vpdpbusd's latency).
// kSave: also store the control at `save`, for later token passes over the same block (planned_block).
template <int T, int Q, bool kSave>
SF_ALWAYS_INLINE void unit(const LaneConsts& k, __m512i mw, __m512i w, const uint8_t* const (&x)[T], int64_t col,
                           __m512i (&acc)[2][T], __m512i (&wsum)[2], int32_t* save) {
  const __m512i lo = Q == 0 ? mw : _mm512_srli_epi32(mw, 8 * Q);
  const __m512i control = _mm512_or_si512(_mm512_permutexvar_epi32(lo, k.lut_lo),
                                          _mm512_permutexvar_epi32(_mm512_srli_epi32(mw, 8 * Q + 4), k.lut_hi));
  if constexpr (kSave) _mm512_storeu_si512(save, control);
  wsum[Q % 2] = dpbusd(wsum[Q % 2], k.ones, w);
  multiply<Q % 2>(w, control, x, col, acc);
}

template <int Q, int T, bool kSave>
SF_ALWAYS_INLINE void full_units(const LaneConsts& k, __m512i mw, const int8_t* values, int h, __mmask16 lanes,
                                 const uint8_t* const (&x)[T], int64_t u0, int count, __m512i (&acc)[2][T],
                                 __m512i (&wsum)[2], int32_t* controls) {
  if constexpr (Q < 4) {
    if (Q >= count) return;
    const __m512i w = _mm512_maskz_loadu_epi32(lanes, values + (u0 + Q) * 4 * h);
    unit<T, Q, kSave>(k, mw, w, x, 8 * (u0 + Q), acc, wsum, controls + kLaneRows * (u0 + Q));
    full_units<Q + 1, T, kSave>(k, mw, values, h, lanes, x, u0, count, acc, wsum, controls);
  }
}

// acc - correction of tokens [0, T) to out[t * 16 + lane].
template <int T>
SF_ALWAYS_INLINE void finish(const __m512i (&acc)[2][T], __m512i correction, int32_t* out) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    _mm512_storeu_si512(out + t * kLaneRows, _mm512_sub_epi32(_mm512_add_epi32(acc[0][t], acc[1][t]), correction));
  }
}

// Tokens [t0, t0 + T) of the block of h rows that starts at row `first`; int32 results to out[t * 16 + lane].
// kSave: also store every unit's control in controls[] and the block's 128 * sum(w) in *saved_correction.
template <int T, bool kSave>
void block(const LinearParams& p, const LaneConsts& k, int64_t first, int h, int64_t t0, int32_t* out,
           int32_t* controls, __m512i* saved_correction) {
  const int64_t cols = p.in_features, quads = cols / 4, full = quads / 2;  // 4-column pieces, full units
  const int8_t* values = static_cast<const int8_t*>(p.values) + first * (cols / 2);
  const uint8_t* meta = p.meta + first * meta_row_bytes(cols);
  const __mmask16 lanes = static_cast<__mmask16>((1u << h) - 1);
  const uint8_t* x[T];
  token_rows(p, t0, x);
  __m512i acc[2][T], wsum[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_si512();

  int64_t u0 = 0;
  for (; u0 + 4 <= full; u0 += 4) {
    const int8_t* ahead = values + (u0 + kPrefetchUnits) * 4 * h;
    for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(ahead) + 64 * l, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(meta + (u0 + kPrefetchUnits) * h), _MM_HINT_T0);
    const __m512i mw = _mm512_maskz_loadu_epi32(lanes, meta + u0 * h);  // meta word u0 / 4: 4 * h bytes each
    full_units<0, T, kSave>(k, mw, values, h, lanes, x, u0, 4, acc, wsum, controls);
  }
  if (u0 < (quads + 1) / 2) {  // the last meta word: up to 3 full units and the half unit of cols % 8 == 4
    const __m512i mw = _mm512_maskz_loadu_epi32(lanes, meta + u0 * h);
    const int count = static_cast<int>(full - u0);
    full_units<0, T, kSave>(k, mw, values, h, lanes, x, u0, count, acc, wsum, controls);
    if (quads % 2 == 1) {
      const __m512i w = half_unit_weights(values, full, h, lanes);
      int32_t* save = controls + kLaneRows * full;
      switch (count) {  // the half unit's mask sits at bits 8 * count; its second mask is 0 (no column)
        case 0: unit<T, 0, kSave>(k, mw, w, x, 8 * full, acc, wsum, save); break;
        case 1: unit<T, 1, kSave>(k, mw, w, x, 8 * full, acc, wsum, save); break;
        case 2: unit<T, 2, kSave>(k, mw, w, x, 8 * full, acc, wsum, save); break;
        default: unit<T, 3, kSave>(k, mw, w, x, 8 * full, acc, wsum, save); break;
      }
    }
  }
  // Modulo 2^32 like the row kernel: exact because the true sum fits in int32.
  const __m512i correction = _mm512_slli_epi32(_mm512_add_epi32(wsum[0], wsum[1]), 7);
  if constexpr (kSave) *saved_correction = correction;
  finish<T>(acc, correction, out);
}

// block() for a later token pass over a block whose controls and correction block<8, true> saved: per unit
// and token one vpshufb and one vpdpbusd, nothing else.
template <int T>
void planned_block(const LinearParams& p, int64_t first, int h, int64_t t0, const int32_t* controls,
                   __m512i correction, int32_t* out) {
  const int64_t cols = p.in_features, full = cols / 8;
  const int8_t* values = static_cast<const int8_t*>(p.values) + first * (cols / 2);
  const __mmask16 lanes = static_cast<__mmask16>((1u << h) - 1);
  const uint8_t* x[T];
  token_rows(p, t0, x);
  __m512i acc[2][T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_si512();
  const auto control = [&](int64_t u) { return _mm512_loadu_si512(controls + kLaneRows * u); };
  const auto weights = [&](int64_t u) { return _mm512_maskz_loadu_epi32(lanes, values + u * 4 * h); };
  int64_t u = 0;
  for (; u + 2 <= full; u += 2) {
    multiply<0>(weights(u), control(u), x, 8 * u, acc);
    multiply<1>(weights(u + 1), control(u + 1), x, 8 * u + 8, acc);
  }
  if (u < full) multiply<0>(weights(u), control(u), x, 8 * u, acc);
  if (cols % 8 == 4) {
    const __m512i w = half_unit_weights(values, full, h, lanes);
    multiply<1>(w, control(full), x, 8 * full, acc);
  }
  finish<T>(acc, correction, out);
}

}  // namespace

void linear_lanes_avx512_vnni(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using BlockFn = void (*)(const LinearParams&, const LaneConsts&, int64_t, int, int64_t, int32_t*, int32_t*,
                           __m512i*);
  static constexpr BlockFn kBlocks[kMaxTokens] = {block<1, false>, block<2, false>, block<3, false>,
                                                  block<4, false>, block<5, false>, block<6, false>,
                                                  block<7, false>, block<8, false>};
  using PlannedFn = void (*)(const LinearParams&, int64_t, int, int64_t, const int32_t*, __m512i, int32_t*);
  static constexpr PlannedFn kPlanned[kMaxTokens] = {planned_block<1>, planned_block<2>, planned_block<3>,
                                                     planned_block<4>, planned_block<5>, planned_block<6>,
                                                     planned_block<7>, planned_block<8>};
  const LaneConsts consts;
  alignas(64) int32_t out[kMaxTokens * kLaneRows];
  // More than one token pass: the first saves each unit's control (64 bytes per 8 columns, L1/L2-resident
  // while the block is worked on) and the later ones reuse them.
  std::vector<int32_t> controls(p.tokens > kMaxTokens ? (p.in_features + 7) / 8 * kLaneRows : 0);
  __m512i correction;
  for (int64_t first = row_begin; first < row_end; first += kLaneRows) {
    const int h = lane_block_height(p.out_features, first);
    // Token groups inside the block loop: the block's weights (16 rows) stay in L1/L2 between groups.
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      if (p.tokens <= kMaxTokens) {
        kBlocks[tokens - 1](p, consts, first, h, t0, out, nullptr, nullptr);
      } else if (t0 == 0) {
        block<kMaxTokens, true>(p, consts, first, h, t0, out, controls.data(), &correction);
      } else {
        kPlanned[tokens - 1](p, first, h, t0, controls.data(), correction, out);
      }
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, first, h, nullptr, out + t * kLaneRows);
    }
  }
}

}  // namespace sparseflow::nm
