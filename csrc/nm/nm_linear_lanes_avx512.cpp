// nm_linear for bf16 / fp32 2:4 weights in the lane layout (nm_lanes.h), AVX-512F, any token count (torch-free;
// built with this ISA's flags).
//
// A zmm lane is an output row. Per group of 4 columns: the 16 rows' first and second kept weights as fp32 (bf16:
// one load, a shift and an and; fp32: two loads), and per token the group's 4 activations broadcast to every
// 128-bit lane and two vpermilps, controlled by the meta's positions (bits 0-1 of each lane, after a shift),
// pick each row's 2. The shifts and the weights serve every token of a pass; the sums end in their lanes, so
// there is no horizontal add.
#include <immintrin.h>

#include "nm_lanes.h"
#include "nm_linear_simd.h"

namespace sparseflow::nm {
namespace {

constexpr int kMaxTokens = 8;
// Groups of weights fetched ahead into L1 (2 KiB bf16, 4 KiB fp32 per 16 rows): 4096x11008 at one token went
// 1.51-1.66x -> 1.71-1.77x F.linear (fp32) and 2.47-2.50x -> 2.96-3.00x (bf16), two alternating runs; 16 and 64
// landed in the same range, 768x3072 unchanged.
constexpr int64_t kPrefetchGroups = 32;
constexpr int64_t kBlockGroups = 128;  // 512 columns per first-level sum (and a multiple of 8: whole meta units)
// Accumulator sets for alternate groups: one and two tokens need more independent FMA chains than 2 per token
// to cover the FMA latency.
template <int T>
constexpr int kSets = T <= 2 ? 2 : 1;

// The 16 rows' first and second kept weights of group g, as fp32.
template <Scalar kW>
SF_ALWAYS_INLINE void weights(const LaneBlock& b, int64_t g, __m512& first, __m512& second) {
  if constexpr (kW == Scalar::kBFloat16) {
    const __m512i v = _mm512_maskz_loadu_epi32(b.lanes, b.values + g * b.h);
    first = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    second = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int32_t(0xffff0000u))));
  } else {
    static_assert(kW == Scalar::kFloat32);
    first = _mm512_maskz_loadu_ps(b.lanes, b.values + 2 * g * b.h);
    second = _mm512_maskz_loadu_ps(b.lanes, b.values + (2 * g + 1) * b.h);
  }
}

// Groups g0 + J .. g0 + count - 1 of the meta unit mw (count <= 8; nibble J of each lane holds group g0 + J).
template <Scalar kW, int J, int T>
SF_ALWAYS_INLINE void groups(const LaneBlock& b, __m512i mw, const float* const (&x)[T], int64_t g0, int count,
                             __m512 (&acc)[kSets<T>][2][T]) {
  if constexpr (J < 8) {
    if (J >= count) return;
    const int64_t g = g0 + J;
    __m512 first, second;
    weights<kW>(b, g, first, second);
    // vpermilps reads bits 0-1 of each lane's control: the position, once shifted down.
    const __m512i first_at = J == 0 ? mw : _mm512_srli_epi32(mw, 4 * J);
    const __m512i second_at = _mm512_srli_epi32(mw, 4 * J + 2);
    constexpr int s = J % kSets<T>;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512 xg = _mm512_broadcast_f32x4(_mm_loadu_ps(x[t] + 4 * g));
      acc[s][0][t] = _mm512_fmadd_ps(first, _mm512_permutevar_ps(xg, first_at), acc[s][0][t]);
      acc[s][1][t] = _mm512_fmadd_ps(second, _mm512_permutevar_ps(xg, second_at), acc[s][1][t]);
    }
    groups<kW, J + 1, T>(b, mw, x, g0, count, acc);
  }
}

// Tokens [t0, t0 + T) of block b: pre-bias sums to out[t * 16 + lane] (64-byte aligned).
template <Scalar kW, int T>
void block(const LinearParams& p, const LaneBlock& b, int64_t t0, float* out) {
  constexpr int kUnits = kW == Scalar::kFloat32 ? 2 : 1;  // dword units per group
  const int64_t group_count = p.in_features / 4;
  const float* x[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) x[t] = p.x + (t0 + t) * p.x_stride;
  __m512 acc[kSets<T>][2][T];
  // Sums in two levels, per column block and over the blocks, like a blocked GEMM's: one chain over every
  // group of a long row is several times less accurate than torch's sgemm at K = 11008.
  for (int64_t block0 = 0; block0 < std::max<int64_t>(group_count, 1); block0 += kBlockGroups) {  // once at K = 0
#pragma GCC unroll 8
    for (int s = 0; s < kSets<T>; ++s)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[s][0][t] = acc[s][1][t] = _mm512_setzero_ps();
    const int64_t block_end = std::min(group_count, block0 + kBlockGroups);
    for (int64_t g0 = block0; g0 < block_end; g0 += 8) {
      const char* ahead = reinterpret_cast<const char*>(b.values + (g0 + kPrefetchGroups) * kUnits * b.h);
#pragma GCC unroll 16
      for (int l = 0; l < 8 * kUnits; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
      const __m512i mw = _mm512_maskz_loadu_epi32(b.lanes, b.meta + g0 / 8 * 4 * b.h);
      groups<kW, 0, T>(b, mw, x, g0, static_cast<int>(std::min<int64_t>(8, block_end - g0)), acc);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m512 sum = _mm512_add_ps(acc[0][0][t], acc[0][1][t]);
      if constexpr (kSets<T> == 2) sum = _mm512_add_ps(sum, _mm512_add_ps(acc[1][0][t], acc[1][1][t]));
      if (block0 > 0) sum = _mm512_add_ps(_mm512_load_ps(out + t * kLaneRows), sum);
      _mm512_store_ps(out + t * kLaneRows, sum);
    }
  }
}

template <Scalar kW>
void run(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using BlockFn = void (*)(const LinearParams&, const LaneBlock&, int64_t, float*);
  static constexpr BlockFn kBlocks[kMaxTokens] = {block<kW, 1>, block<kW, 2>, block<kW, 3>, block<kW, 4>,
                                                  block<kW, 5>, block<kW, 6>, block<kW, 7>, block<kW, 8>};
  alignas(64) float out[kMaxTokens * kLaneRows];
  for (int64_t first = row_begin; first < row_end; first += kLaneRows) {
    const LaneBlock b(p, first);
    // Token passes inside the block loop: the block's weights (16 rows) stay in L1/L2 between passes.
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      kBlocks[tokens - 1](p, b, t0, out);
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, first, b.h, out + t * kLaneRows, nullptr);
    }
  }
}

}  // namespace

void linear_lanes_float_avx512(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  if (p.weight == Scalar::kFloat32) return run<Scalar::kFloat32>(p, row_begin, row_end);
  run<Scalar::kBFloat16>(p, row_begin, row_end);
}

}  // namespace sparseflow::nm
