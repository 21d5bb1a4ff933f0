// nm_linear for fp32 / bf16 / fp16 weights, AVX-512F/BW (torch-free; built with this ISA's flags).
//
// Each row of W streams once per tile of up to 8 tokens as (16-bit mask, kept values) per 16 columns:
// vexpandps puts the kept values back in their lanes (zeros elsewhere) and one FMA per token follows, so the
// bytes read per weight shrink with the sparsity (2:4 fp32: 2.125 bytes per dense element; bf16/fp16: 1.125) and
// the expansion is shared by the tokens of a tile. Rows are worked in panels small enough to stay in L2
// while the token tiles pass over them.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "nm.h"
#include "nm_lanes.h"
#include "nm_linear_scalar.h"
#include "nm_linear_simd.h"

namespace sparseflow::nm {
namespace {

constexpr int kMaxTokens = 8;
constexpr int64_t kPanelBytes = 192 * 1024;

// Rows per tile for T tokens: R*T accumulators + R expanded rows + 1 activation fit in 32 zmm registers.
constexpr int rows_for(int tokens) { return tokens == 1 ? 8 : tokens == 2 ? 6 : tokens <= 4 ? 4 : 3; }

struct Tile {
  int64_t j0;       // first row
  int64_t t0;       // first token
  float* out;       // out[t * ld + r]
  int64_t ld;
  bool over_read;   // 16-bit values may be loaded 16 past a row's kept ones (false for the last rows)
};

// The 16-column mask straight from memory into a mask register (a load, where kmovw from a GPR costs a
// port-5 uop that the expand needs).
SF_ALWAYS_INLINE __mmask16 load_mask(const uint8_t* p) {
  __mmask16 k;
  asm("kmovw %1, %0" : "=Yk"(k) : "m"(*reinterpret_cast<const uint16_t*>(p)));
  return k;
}

// One 16-column step of a tile: expand R rows, FMA them into T tokens' accumulators.
template <Scalar kW, int R, int T, bool kFullX, bool kOverRead, typename Value>
SF_ALWAYS_INLINE void step(__m512 (&acc)[R][T], const uint8_t* const (&meta)[R], const Value* (&val)[R],
                           const float* const (&x)[T], int64_t c, int const_count, __mmask16 xmask) {
  __m512 w[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __mmask16 bits = load_mask(meta[r] + c / 8);
    int count = const_count;
    if (count < 0) {  // m does not divide 16: the count varies from chunk to chunk
      uint16_t raw;
      std::memcpy(&raw, meta[r] + c / 8, 2);
      count = __builtin_popcount(raw);
    }
    if constexpr (kW != Scalar::kFloat32) {
      __m256i raw;
      if constexpr (kOverRead) {
        raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(val[r]));
      } else {
        raw = _mm256_maskz_loadu_epi16(tail_mask16(count), val[r]);
      }
      w[r] = _mm512_maskz_expand_ps(bits, widen16<kW>(raw));
    } else {
      w[r] = _mm512_maskz_expandloadu_ps(bits, val[r]);
    }
    val[r] += count;
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    const __m512 xv = kFullX ? _mm512_loadu_ps(x[t] + c) : _mm512_maskz_loadu_ps(xmask, x[t] + c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
  }
}

template <Scalar kW, int R, int T>
void tile(const LinearParams& p, const Tile& tl) {
  using Value = ValueOf<kW>;
  const int64_t k = p.in_features;
  const int64_t packed_cols = k / p.m * p.n;
  const int64_t meta_bytes = meta_row_bytes(k);
  // Rows hold exactly n kept values per group, so when m divides 16 every full chunk holds 16n/m.
  const int const_count = 16 % p.m == 0 ? 16 / p.m * p.n : -1;
  const uint8_t* meta[R];
  const Value* val[R];
  for (int r = 0; r < R; ++r) {
    meta[r] = p.meta + (tl.j0 + r) * meta_bytes;
    val[r] = static_cast<const Value*>(p.values) + (tl.j0 + r) * packed_cols;
  }
  const float* x[T];
  for (int t = 0; t < T; ++t) x[t] = p.x + (tl.t0 + t) * p.x_stride;
  __m512 acc[R][T];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t c = 0;
  if (tl.over_read) {
    for (; c + 16 <= k; c += 16) step<kW, R, T, true, true>(acc, meta, val, x, c, const_count, 0xffff);
  } else {
    for (; c + 16 <= k; c += 16) step<kW, R, T, true, false>(acc, meta, val, x, c, const_count, 0xffff);
  }
  // The last, partial chunk: its count is whatever its mask says.
  if (c < k) step<kW, R, T, false, false>(acc, meta, val, x, c, -1, tail_mask16(k - c));
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) tl.out[t * tl.ld + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// rows = R or fewer (the panel's last tile).
template <Scalar kW, int T, int R = rows_for(T)>
void tile_rows(const LinearParams& p, const Tile& tl, int rows) {
  if constexpr (R > 0) {
    if (rows == R) return tile<kW, R, T>(p, tl);
    tile_rows<kW, T, R - 1>(p, tl, rows);
  }
}

template <Scalar kW, int T>
void panel(const LinearParams& p, int64_t j0, int64_t rows, int64_t t0, float* out, int64_t ld) {
  constexpr int R = rows_for(T);
  for (int64_t r = 0; r < rows; r += R) {
    const int n = static_cast<int>(std::min<int64_t>(R, rows - r));
    // A 16-bit load may reach 16 values past the tile's last kept value: fine while later rows hold that many.
    const bool over_read = (p.out_features - (j0 + r + n)) * (p.in_features / p.m * p.n) >= 16;
    tile_rows<kW, T>(p, Tile{j0 + r, t0, out + r, ld, over_read}, n);
  }
}

template <Scalar kW>
void run(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using PanelFn = void (*)(const LinearParams&, int64_t, int64_t, int64_t, float*, int64_t);
  static constexpr PanelFn kPanels[kMaxTokens] = {panel<kW, 1>, panel<kW, 2>, panel<kW, 3>, panel<kW, 4>,
                                                  panel<kW, 5>, panel<kW, 6>, panel<kW, 7>, panel<kW, 8>};
  const int64_t k = p.in_features;
  const int64_t row_bytes = k / p.m * p.n * static_cast<int64_t>(sizeof(ValueOf<kW>)) + meta_row_bytes(k);
  const int64_t panel_rows = std::clamp<int64_t>(kPanelBytes / std::max<int64_t>(row_bytes, 1), 24, 1024);
  std::vector<float> out(kMaxTokens * panel_rows);
  for (int64_t j0 = row_begin; j0 < row_end; j0 += panel_rows) {
    const int64_t rows = std::min(panel_rows, row_end - j0);
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      kPanels[tokens - 1](p, j0, rows, t0, out.data(), panel_rows);
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, j0, rows, out.data() + t * panel_rows, nullptr);
    }
  }
}

// ---------------------------------------------------------------------------------------------- many tokens
// Each kept weight is broadcast and multiplied into B blocks of 16 tokens (token-interleaved activations: a
// column's B blocks are B adjacent 64-byte lines), so only the kept products are computed: at 2:4 half the FMAs
// of dense. Columns go in spans whose B blocks stay in L1 while a panel of rows passes over them (each row
// walks its span's mask bits; partial sums per row live in L2), so the activations are read from memory once
// per panel and the weights once per token pass.
constexpr int kMaxBlocks = 8;
constexpr int64_t kWidePanelRows = 512;  // rows whose partial sums (512 B each) share L2

struct WideSpan {
  const float* xt;       // the span's first column, first block of this pass
  int64_t column_floats;  // distance between two columns in xt (blocks * 16)
  int64_t c0;             // first column of the span
  int width;              // columns in the span (<= 64)
};

// One row over one span: acc[b] (16 tokens each) += w[c] * xt[c][b] for the kept columns c.
template <int B, Scalar kW>
SF_ALWAYS_INLINE void wide_row_span(const LinearParams& p, const WideSpan& sp, int64_t j, int64_t& next, float* partial,
                                    bool first) {
  using Value = ValueOf<kW>;
  // Spans never cross a 64-column meta word (the span width divides 64): one aligned word, shifted. (An
  // 8-byte load at byte c0 / 8 read 4 bytes past the last row's meta for spans at c0 % 64 == 32.)
  uint64_t word = load_u64(p.meta + j * meta_row_bytes(p.in_features) + sp.c0 / 64 * 8) >> (sp.c0 % 64);
  if (sp.width < 64) word &= (uint64_t{1} << sp.width) - 1;
  const int count = __builtin_popcountll(word);
  const Value* src = static_cast<const Value*>(p.values) + j * (p.in_features / p.m * p.n) + next;
  next += count;
  const float* v;
  alignas(64) float widened[64];
  if constexpr (kW != Scalar::kFloat32) {
    for (int i = 0; i < count; i += 16) {
      _mm512_store_ps(widened + i, widen16<kW>(_mm256_maskz_loadu_epi16(tail_mask16(count - i), src + i)));
    }
    v = widened;
  } else {
    v = src;
  }
  // Two accumulator sets (even / odd kept values) keep >= 8 FMA chains in flight when B is small.
  constexpr int S = B >= 8 ? 1 : 2;
  __m512 acc[S][B];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) acc[s][b] = _mm512_setzero_ps();
  int i = 0;
  for (; i + S <= count; i += S) {
#pragma GCC unroll 2
    for (int s = 0; s < S; ++s) {
      const float* x = sp.xt + __builtin_ctzll(word) * sp.column_floats;
      word &= word - 1;
      const __m512 w = _mm512_set1_ps(v[i + s]);
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b) acc[s][b] = _mm512_fmadd_ps(w, _mm512_load_ps(x + b * 16), acc[s][b]);
    }
  }
  if (i < count) {  // S == 2 and an odd count
    const float* x = sp.xt + __builtin_ctzll(word) * sp.column_floats;
    const __m512 w = _mm512_set1_ps(v[i]);
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b) acc[0][b] = _mm512_fmadd_ps(w, _mm512_load_ps(x + b * 16), acc[0][b]);
  }
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b) {
    __m512 sum = acc[0][b];
    if constexpr (S == 2) sum = _mm512_add_ps(sum, acc[1][b]);
    if (!first) sum = _mm512_add_ps(_mm512_loadu_ps(partial + b * 16), sum);
    _mm512_storeu_ps(partial + b * 16, sum);
  }
}

// Rows [j0, j0 + rows) against token blocks [block0, block0 + B): partial[r * kMaxBlocks * 16 + token].
// Blocked so that a column block's activations (<= 256 KiB) and the rows' partial sums (<= 256 KiB) stay in
// L2, and a span's activations (16 KiB) with a panel's column-block sums (8 KiB) in L1. Sums go in three
// levels (span, column block, row), like a blocked GEMM's: one chain over every kept weight of a long row
// would be several times less accurate than torch's sgemm at K = 11008.
template <int B, Scalar kW>
void wide_pass(const LinearParams& p, int64_t j0, int64_t rows, int64_t block0, float* partial, int64_t* next) {
  constexpr int kSpan = B > 4 ? 32 : 64;
  constexpr int64_t kBlockCols = 512, kPanelRows = 16, kRowFloats = kMaxBlocks * 16;
  static_assert(64 % kSpan == 0 && kBlockCols % 64 == 0, "wide_row_span reads a span from one meta word");
  alignas(64) float block_sum[kPanelRows * kRowFloats];
  const int64_t k = p.in_features;
  const int64_t blocks = (p.tokens + 15) / 16;
  std::fill(next, next + rows, int64_t{0});
  for (int64_t kc = 0; kc < k; kc += kBlockCols) {
    const int64_t kc_end = std::min(k, kc + kBlockCols);
    for (int64_t r0 = 0; r0 < rows; r0 += kPanelRows) {
      const int64_t r_end = std::min(rows, r0 + kPanelRows);
      for (int64_t c0 = kc; c0 < kc_end; c0 += kSpan) {
        const WideSpan sp{p.xt + (c0 * blocks + block0) * 16, blocks * 16, c0,
                          static_cast<int>(std::min<int64_t>(kSpan, k - c0))};
        for (int64_t r = r0; r < r_end; ++r) {
          wide_row_span<B, kW>(p, sp, j0 + r, next[r], block_sum + (r - r0) * kRowFloats, c0 == kc);
        }
      }
      for (int64_t r = r0; r < r_end; ++r) {
        float* total = partial + r * kRowFloats;
        const float* sum = block_sum + (r - r0) * kRowFloats;
#pragma GCC unroll 16
        for (int b = 0; b < B; ++b) {
          const __m512 v = _mm512_load_ps(sum + b * 16);
          _mm512_storeu_ps(total + b * 16, kc == 0 ? v : _mm512_add_ps(_mm512_loadu_ps(total + b * 16), v));
        }
      }
    }
  }
}

template <Scalar kW>
void run_wide(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using PassFn = void (*)(const LinearParams&, int64_t, int64_t, int64_t, float*, int64_t*);
  static constexpr PassFn kPasses[kMaxBlocks] = {
      wide_pass<1, kW>, wide_pass<2, kW>, wide_pass<3, kW>, wide_pass<4, kW>,
      wide_pass<5, kW>, wide_pass<6, kW>, wide_pass<7, kW>, wide_pass<8, kW>};
  const int64_t blocks = (p.tokens + 15) / 16;
  std::vector<float> partial(kWidePanelRows * kMaxBlocks * 16), out(kMaxBlocks * 16 * kWidePanelRows);
  std::vector<int64_t> next(kWidePanelRows);
  for (int64_t j0 = row_begin; j0 < row_end; j0 += kWidePanelRows) {
    const int64_t rows = std::min(kWidePanelRows, row_end - j0);
    for (int64_t b0 = 0; b0 < blocks; b0 += kMaxBlocks) {
      const int nb = static_cast<int>(std::min<int64_t>(kMaxBlocks, blocks - b0));
      kPasses[nb - 1](p, j0, rows, b0, partial.data(), next.data());
      const int64_t tokens = std::min<int64_t>(nb * 16, p.tokens - b0 * 16);
      for (int64_t r = 0; r < rows; ++r)  // [row][token] -> [token][row] for the epilogue
        for (int64_t t = 0; t < tokens; ++t) out[t * rows + r] = partial[r * kMaxBlocks * 16 + t];
      for (int64_t t = 0; t < tokens; ++t) store_epilogue(p, b0 * 16 + t, j0, rows, out.data() + t * rows, nullptr);
    }
  }
}

}  // namespace

void interleave_tokens_avx512(const float* x, int64_t x_stride, int64_t tokens, int64_t cols, float* xt,
                              int64_t block_begin, int64_t block_end) {
  const int64_t blocks = (tokens + 15) / 16;
  for (int64_t b = block_begin; b < block_end; ++b) {
    float* dst = xt + b * 16;
    const int64_t t0 = b * 16, count = std::min<int64_t>(16, tokens - t0);
    // Gather 16 tokens' value of one column per store: the column's line of the block.
    const __m512i index = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int32_t>(x_stride)));
    const __mmask16 live = tail_mask16(count);
    const float* src = x + t0 * x_stride;
    for (int64_t c = 0; c < cols; ++c) {
      _mm512_storeu_ps(dst + c * blocks * 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, index, src + c, 4));
    }
  }
}

void quantize_rows_avx512(const QuantizeParams& q, int64_t t_begin, int64_t t_end) {
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  const __m128i bias = _mm_set1_epi8(q.biased ? char(0x80) : char(0));
  for (int64_t t = t_begin; t < t_end; ++t) {
    const float* row = q.x + t * q.x_stride;
    // Four running maxima (vmaxps latency); max(a, amax) returns amax for a NaN a: NaN is ignored, as in
    // quantize_rows_portable.
    __m512 amax[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= q.cols; i += 64) {
      for (int j = 0; j < 4; ++j) amax[j] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(row + i + 16 * j)), amax[j]);
    }
    for (; i < q.cols; i += 16) {
      amax[0] = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask16(q.cols - i), row + i)), amax[0]);
    }
    const float m =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(amax[0], amax[1]), _mm512_max_ps(amax[2], amax[3])));
    const __m512 inv = _mm512_set1_ps(quantize_inv_scale(m));
    q.scale[t] = m / 127.0f;
    int8_t* out = q.xq + t * q.xq_stride;
    for (i = 0; i < q.xq_stride; i += 16) {
      const __mmask16 mask = tail_mask16(q.cols - i);  // zero past cols: q = 0 there
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + i), inv);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);  // max returns lo on NaN, like quantize_value
      const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));  // round half to even
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_xor_si128(b, bias));
    }
  }
}

void linear_avx512(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  if (p.weight != Scalar::kInt8 && uses_lane_layout(p.weight, p.n, p.m)) {
    return linear_lanes_float_avx512(p, row_begin, row_end);  // bf16 / fp32 2:4
  }
  switch (p.weight) {
    case Scalar::kFloat32:
      return p.xt ? run_wide<Scalar::kFloat32>(p, row_begin, row_end) : run<Scalar::kFloat32>(p, row_begin, row_end);
    case Scalar::kBFloat16:
      return p.xt ? run_wide<Scalar::kBFloat16>(p, row_begin, row_end) : run<Scalar::kBFloat16>(p, row_begin, row_end);
    case Scalar::kFloat16:
      return p.xt ? run_wide<Scalar::kFloat16>(p, row_begin, row_end) : run<Scalar::kFloat16>(p, row_begin, row_end);
    case Scalar::kInt8:
      return;  // linear_avx512_vnni or linear_portable
  }
}

}  // namespace sparseflow::nm
