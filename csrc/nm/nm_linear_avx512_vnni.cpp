// nm_linear for int8 weights with AVX512_VNNI (torch-free; built with this ISA's flags): 1:4, 2:8 and 1:8.
// 2:4 and 4:8 pack into the lane layout, which has its own kernel (nm_linear_lanes_avx512_vnni.cpp).
//
// The weight is re-densified 64 columns (one zmm of bytes) at a time from its compressed form, inside
// registers: the meta word's 16 nibbles (one 4-bit mask per group of 4 columns) land in the 16 dword lanes
// after a broadcast and vpsrlvd; vpermd through a 16-entry table turns each mask into a vpshufb control that
// places the group's kept bytes (spread next to their lane by vpmovzx) at their columns and zeros the rest.
// Then one vpdpbusd per token (u8 activations = s8 + 128) does 64 multiply-adds; the +128 is taken back with
// 128 * sum(w), which a vpdpbusd against ones accumulates once per row. Bytes per dense weight: 1:4 and 2:8
// 0.375, 1:8 0.25 (values + 1 bit of mask per column).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "nm.h"
#include "nm_linear_simd.h"

namespace sparseflow::nm {

bool vnni_supports(int n, int m) {
  return (m == 4 && (n == 1 || n == 2)) || (m == 8 && (n == 1 || n == 2 || n == 4));
}

namespace {

constexpr int kMaxTokens = 8;
constexpr int64_t kPanelBytes = 192 * 1024;

// Rows per tile for T tokens: R*T + R accumulators (>= 8 for vpdpbusd's latency) and the constants in 32 zmm.
constexpr int rows_for(int tokens) { return tokens <= 4 ? 4 : 2; }

struct Consts {
  __m512i shifts;    // lanes 2i and 2i+1 shift by 4i: nibble i -> lane 2i, nibble 8+i -> lane 2i+1
  __m512i rank_lut;  // mask -> control: byte i = rank of column i among the kept ones, or 0x80 (zero)
  __m512i pop_lut;   // mask -> popcount in every byte
  __m512i base;        // byte offset (within the 128-bit lane) of the dword's group's spread values
  __m512i base_bcast;  // the same for full chunks brought in by lane broadcasts (spread_bcast)
  __m512i ones;

  Consts(int n, int m) {
    alignas(64) int32_t shift[16], rank[16], pop[16], lane_base[16], bcast_base[16];
    for (int l = 0; l < 16; ++l) {
      shift[l] = 4 * (l / 2);
      uint32_t control = 0;
      int kept = 0;
      for (int i = 0; i < 4; ++i) {
        const uint32_t byte = (l >> i) & 1 ? uint32_t(kept++) : 0x80u;
        control |= byte << (8 * i);
      }
      rank[l] = static_cast<int32_t>(control);
      pop[l] = kept * 0x01010101;
      const int b = m == 4 ? 4 * (l % 4) : 8 * ((l / 2) % 2);
      lane_base[l] = b * 0x01010101;
      // Where spread_bcast (every 128-bit lane holds chunk bytes 0-15) leaves a group's kept bytes: group g
      // starts at chunk byte n * g.
      bcast_base[l] = n * (m == 4 ? l : l / 2) * 0x01010101;
    }
    shifts = _mm512_load_si512(shift);
    rank_lut = _mm512_load_si512(rank);
    pop_lut = _mm512_load_si512(pop);
    base = _mm512_load_si512(lane_base);
    base_bcast = _mm512_load_si512(bcast_base);
    ones = _mm512_set1_epi8(1);
  }
};

// The kept bytes of 64 columns, each group's next to its dword lane (64/m*n bytes; `bytes` in a tail chunk).
template <int N, int M, bool kFull>
SF_ALWAYS_INLINE __m512i spread(const int8_t* v, int bytes) {
  if constexpr (M == 4 && N == 1) {
    const __m128i raw = kFull ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(v))
                              : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1), v);
    return _mm512_cvtepu8_epi32(raw);
  } else if constexpr (M == 8 && N == 2) {
    const __m128i raw = kFull ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(v))
                              : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1), v);
    return _mm512_cvtepu16_epi64(raw);
  } else {
    static_assert(M == 8 && N == 1);
    const __m128i raw = kFull ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v))
                              : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1), v);
    return _mm512_cvtepu8_epi64(raw);
  }
}

// Whether full chunks of N:M load their kept bytes with one lane broadcast (load port only) instead of a
// vpmovzx (shuffle port, the kernel's bottleneck): the patterns with 16 bytes per 64 columns (1:4, 2:8).
template <int N, int M>
constexpr bool kBroadcastSpread = 64 / M * N == 16;

// The 16 kept bytes of a full 64-column chunk in every 128-bit lane.
SF_ALWAYS_INLINE __m512i spread_bcast(const int8_t* v) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
}

// 64 dense int8 weights of one row from its meta word and kept bytes.
template <int N, int M, bool kFull>
SF_ALWAYS_INLINE __m512i densify(const Consts& k, const uint8_t* meta, const int8_t* values, int bytes) {
  long long word;
  std::memcpy(&word, meta, 8);
  constexpr bool kBcast = kFull && kBroadcastSpread<N, M>;
  const __m512i nibbles = _mm512_srlv_epi32(_mm512_set1_epi64(word), k.shifts);
  __m512i control = _mm512_add_epi32(_mm512_permutexvar_epi32(nibbles, k.rank_lut), kBcast ? k.base_bcast : k.base);
  if constexpr (M == 8) {
    // The upper half of a group of 8 starts after the kept bytes of its lower half.
    control = _mm512_add_epi32(control, _mm512_slli_epi64(_mm512_permutexvar_epi32(nibbles, k.pop_lut), 32));
  }
  if constexpr (kBcast) {
    return _mm512_shuffle_epi8(spread_bcast(values), control);
  } else {
    return _mm512_shuffle_epi8(spread<N, M, kFull>(values, bytes), control);
  }
}

// One 64-column chunk of a tile.
template <int N, int M, int R, int T, bool kFull>
SF_ALWAYS_INLINE void chunk(const Consts& consts, __m512i (&acc)[R][T], __m512i (&wsum)[R],
                            const uint8_t* const (&meta)[R], const int8_t* const (&values)[R],
                            const uint8_t* const (&x)[T], int64_t c, int bytes) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512i w = densify<N, M, kFull>(consts, meta[r] + c / 8, values[r] + c / M * N, bytes);
    wsum[r] = dpbusd(wsum[r], consts.ones, w);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = dpbusd(acc[r][t], _mm512_loadu_si512(x[t] + c), w);
  }
}

struct Tile {
  int64_t j0;
  int64_t t0;
  int32_t* out;  // out[t * ld + r]
  int64_t ld;
};

template <int N, int M, int R, int T>
void tile(const LinearParams& p, const Consts& consts, const Tile& tl) {
  const int64_t k = p.in_features;
  const int64_t packed_cols = k / M * N;
  const int64_t meta_bytes = meta_row_bytes(k);
  constexpr int kChunkBytes = 64 / M * N;
  __m512i acc[R][T], wsum[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    wsum[r] = _mm512_setzero_si512();
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
  }
  const uint8_t* meta[R];
  const int8_t* values[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    meta[r] = p.meta + (tl.j0 + r) * meta_bytes;
    values[r] = static_cast<const int8_t*>(p.values) + (tl.j0 + r) * packed_cols;
  }
  const uint8_t* x[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const uint8_t*>(p.xq) + (tl.t0 + t) * p.xq_stride;
  int64_t c = 0;
  for (; c + 64 <= k; c += 64) chunk<N, M, R, T, true>(consts, acc, wsum, meta, values, x, c, kChunkBytes);
  if (c < k) chunk<N, M, R, T, false>(consts, acc, wsum, meta, values, x, c, static_cast<int>((k - c) / M * N));
  // Modulo 2^32 (the lane sums may wrap); exact because the true sum fits in int32 (in_features is bounded).
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const uint32_t correction = 128u * static_cast<uint32_t>(_mm512_reduce_add_epi32(wsum[r]));
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      tl.out[t * tl.ld + r] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[r][t])) - correction);
    }
  }
}

template <int N, int M, int T, int R = rows_for(T)>
void tile_rows(const LinearParams& p, const Consts& consts, const Tile& tl, int rows) {
  if constexpr (R > 0) {
    if (rows == R) return tile<N, M, R, T>(p, consts, tl);
    tile_rows<N, M, T, R - 1>(p, consts, tl, rows);
  }
}

template <int N, int M, int T>
void panel(const LinearParams& p, const Consts& consts, int64_t j0, int64_t rows, int64_t t0, int32_t* out,
           int64_t ld) {
  constexpr int R = rows_for(T);
  for (int64_t r = 0; r < rows; r += R) {
    tile_rows<N, M, T>(p, consts, Tile{j0 + r, t0, out + r, ld}, static_cast<int>(std::min<int64_t>(R, rows - r)));
  }
}

template <int N, int M>
void run(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  using PanelFn = void (*)(const LinearParams&, const Consts&, int64_t, int64_t, int64_t, int32_t*, int64_t);
  static constexpr PanelFn kPanels[kMaxTokens] = {panel<N, M, 1>, panel<N, M, 2>, panel<N, M, 3>,
                                                  panel<N, M, 4>, panel<N, M, 5>, panel<N, M, 6>,
                                                  panel<N, M, 7>, panel<N, M, 8>};
  const Consts consts(N, M);
  const int64_t k = p.in_features;
  const int64_t row_bytes = k / M * N + meta_row_bytes(k);
  const int64_t panel_rows = std::clamp<int64_t>(kPanelBytes / std::max<int64_t>(row_bytes, 1), 24, 1024);
  std::vector<int32_t> out(kMaxTokens * panel_rows);
  for (int64_t j0 = row_begin; j0 < row_end; j0 += panel_rows) {
    const int64_t rows = std::min(panel_rows, row_end - j0);
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kMaxTokens) {
      const int tokens = static_cast<int>(std::min<int64_t>(kMaxTokens, p.tokens - t0));
      kPanels[tokens - 1](p, consts, j0, rows, t0, out.data(), panel_rows);
      for (int t = 0; t < tokens; ++t) store_epilogue(p, t0 + t, j0, rows, nullptr, out.data() + t * panel_rows);
    }
  }
}

}  // namespace

void linear_avx512_vnni(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.m * 16 + p.n) {
    case 4 * 16 + 1: return run<1, 4>(p, row_begin, row_end);
    case 8 * 16 + 1: return run<1, 8>(p, row_begin, row_end);
    case 8 * 16 + 2: return run<2, 8>(p, row_begin, row_end);
  }
  // The wrapper sends 2:4 and 4:8 to linear_lanes_avx512_vnni and checks vnni_supports() first.
}

}  // namespace sparseflow::nm
