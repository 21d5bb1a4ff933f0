// nm_linear for bf16 2:4 weights in the lane layout (nm_lanes.h), AVX512_BF16 (torch-free; called only when
// selected_cpu_isa() >= kAvx512Bf16).
//
// A zmm lane is an output row, and the layout's dword per row and group is already the (first, second) pair of
// kept bf16 weights that vdpbf16ps multiplies. One zmm load brings a token's 32 activations of a meta unit (8
// groups), and per group one vpermw puts each row's two activations in its lane: word 2l <- column 4J + first
// position, word 2l + 1 <- 4J + second, the control built from the meta nibble once for every token of a pass.
// Per 16 rows, group and token that is one shuffle and one vdpbf16ps (32 products), where the AVX-512F kernel
// widens to fp32 and spends two vpermilps and two FMAs. Dense bf16 computes every product with vdpbf16ps, so 2:4
// can beat it by as much as the shuffle costs less than the skipped vdpbf16ps: Zen 4, 2 threads, 128 tokens,
// ~0.57 vdpbf16ps per cycle and core, 1.3-1.4x F.linear bf16 (2.0-2.6x the AVX-512F kernel at 8-128 tokens).
#include <immintrin.h>

#include <vector>

#include "nm_lanes.h"
#include "nm_linear_simd.h"

namespace sparseflow::nm {
namespace {

constexpr int kMaxTokens = 8;
constexpr int64_t kPrefetchGroups = 32;  // as the AVX-512F lane kernel: 2 KiB of weights per 16 rows ahead
constexpr int64_t kBlockGroups = 128;    // 512 columns per first-level sum (a multiple of 8: whole meta units)
// Accumulator sets for alternate groups: few tokens need more independent vdpbf16ps chains than one per token.
template <int T>
constexpr int kSets = T == 1 ? 4 : T <= 5 ? 2 : 1;

// vpermw's control for group J of a meta unit whose nibble J (per lane) holds the row's two positions (bits
// 0-1 and 2-3): word 2l = 4J + first, word 2l + 1 = 4J + second. vpermw reads bits 0-4 of each word only.
template <int J>
SF_ALWAYS_INLINE __m512i pair_control(__m512i mw) {
  const __m512i s = J == 0 ? mw : _mm512_srli_epi32(mw, 4 * J);
  // bits 0-1 from s (the first position), the rest from s << 14 (bits 16-17: the second)
  const __m512i both = _mm512_ternarylogic_epi32(_mm512_set1_epi32(3), s, _mm512_slli_epi32(s, 14), 0xCA);
  // (both & 0x00030003) | (4J in both words)
  return _mm512_ternarylogic_epi32(both, _mm512_set1_epi32(0x00030003), _mm512_set1_epi32(0x00010001 * 4 * J), 0xEA);
}

// Where a pass gets its vpermw controls: made from the meta; made and saved for the later passes over the
// same block (more than kMaxTokens tokens); loaded from what the first pass saved.
enum class Controls { kMake, kMakeAndSave, kLoad };

// Groups g0 + J .. g0 + count - 1 of one meta unit (count <= 8) for T tokens whose unit of x is xv[t];
// controls[g] is group g's control (kMakeAndSave, kLoad).
template <int J, int T, Controls kC>
SF_ALWAYS_INLINE void groups(const LaneBlock& b, __m512i mw, const __m512i (&xv)[T], int64_t g0, int count,
                             __m512 (&acc)[kSets<T>][T], int32_t* controls) {
  if constexpr (J < 8) {
    if (J >= count) return;
    const __m512i w = _mm512_maskz_loadu_epi32(b.lanes, b.values + (g0 + J) * b.h);
    __m512i control;
    if constexpr (kC == Controls::kLoad) {
      control = _mm512_loadu_si512(controls + (g0 + J) * kLaneRows);
    } else {
      control = pair_control<J>(mw);
    }
    if constexpr (kC == Controls::kMakeAndSave) _mm512_storeu_si512(controls + (g0 + J) * kLaneRows, control);
    constexpr int s = J % kSets<T>;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[s][t] = _mm512_dpbf16_ps(acc[s][t], (__m512bh)_mm512_permutexvar_epi16(control, xv[t]), (__m512bh)w);
    }
    groups<J + 1, T, kC>(b, mw, xv, g0, count, acc, controls);
  }
}

// Tokens [t0, t0 + T) of block b: pre-bias sums to out[t * 16 + lane] (64-byte aligned).
template <int T, Controls kC>
void block(const LinearParams& p, const LaneBlock& b, int64_t t0, float* out, int32_t* controls) {
  const int64_t group_count = p.in_features / 4;
  const uint16_t* x[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) x[t] = p.x_bf16 + (t0 + t) * p.x_stride;
  __m512 acc[kSets<T>][T];
  // Sums in two levels, per column block and over the blocks, as in the AVX-512F lane kernel.
  for (int64_t block0 = 0; block0 < std::max<int64_t>(group_count, 1); block0 += kBlockGroups) {  // once at K = 0
#pragma GCC unroll 4
    for (int s = 0; s < kSets<T>; ++s)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[s][t] = _mm512_setzero_ps();
    const int64_t block_end = std::min(group_count, block0 + kBlockGroups);
    for (int64_t g0 = block0; g0 < block_end; g0 += 8) {
      const char* ahead = reinterpret_cast<const char*>(b.values + (g0 + kPrefetchGroups) * b.h);
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
      const int count = static_cast<int>(std::min<int64_t>(8, block_end - g0));
      const __mmask32 columns = count == 8 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (4 * count)) - 1);
      __m512i xv[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_epi16(columns, x[t] + 4 * g0);
      const __m512i mw = kC == Controls::kLoad ? _mm512_setzero_si512()
                                               : _mm512_maskz_loadu_epi32(b.lanes, b.meta + g0 / 8 * 4 * b.h);
      groups<0, T, kC>(b, mw, xv, g0, count, acc, controls);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m512 sum = acc[0][t];
#pragma GCC unroll 4
      for (int s = 1; s < kSets<T>; ++s) sum = _mm512_add_ps(sum, acc[s][t]);
      if (block0 > 0) sum = _mm512_add_ps(_mm512_load_ps(out + t * kLaneRows), sum);
      _mm512_store_ps(out + t * kLaneRows, sum);
    }
  }
}

}  // namespace

void linear_lanes_bf16_avx512bf16(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using BlockFn = void (*)(const LinearParams&, const LaneBlock&, int64_t, float*, int32_t*);
  static constexpr BlockFn kBlocks[kMaxTokens] = {
      block<1, Controls::kMake>, block<2, Controls::kMake>, block<3, Controls::kMake>, block<4, Controls::kMake>,
      block<5, Controls::kMake>, block<6, Controls::kMake>, block<7, Controls::kMake>, block<8, Controls::kMake>};
  static constexpr BlockFn kPlanned[kMaxTokens] = {
      block<1, Controls::kLoad>, block<2, Controls::kLoad>, block<3, Controls::kLoad>, block<4, Controls::kLoad>,
      block<5, Controls::kLoad>, block<6, Controls::kLoad>, block<7, Controls::kLoad>, block<8, Controls::kLoad>};
  alignas(64) float out[kMaxTokens * kLaneRows];
  // More than one token pass: the first saves each group's control (64 bytes per 4 columns, L2-resident while
  // the block is worked on) and the later ones load them instead of making them again.
  std::vector<int32_t> controls(p.tokens > kMaxTokens ? p.in_features / 4 * kLaneRows : 0);
  for (int64_t first = row_begin; first < row_end; first += kLaneRows) {
    const LaneBlock b(p, first);
    // Token passes inside the block loop: the block's weights (16 rows) stay in L1/L2 between passes.
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      if (p.tokens <= kMaxTokens) {
        kBlocks[tokens - 1](p, b, t0, out, nullptr);
      } else if (t0 == 0) {
        block<kMaxTokens, Controls::kMakeAndSave>(p, b, t0, out, controls.data());
      } else {
        kPlanned[tokens - 1](p, b, t0, out, controls.data());
      }
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, first, b.h, out + t * kLaneRows, nullptr);
    }
  }
}

}  // namespace sparseflow::nm
