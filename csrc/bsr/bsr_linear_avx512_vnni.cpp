// AVX512_VNNI int8 bsr_linear kernels on the 4x1 layout (torch-free; called only when
// selected_cpu_isa() >= kAvx512Vnni). u8 activations x s8 weights -> s32 with vpdpbusd.
//
// Panel kernel (many tokens; lanes = tokens): a 4x4 tile holds 4 output channels x 4 input channels
// (k0..k3). The four activation rows k0..k3 of a 64-token panel (64 bytes each) are interleaved with two
// rounds of unpacks into four registers whose dword j is (x[t, k0], x[t, k1], x[t, k2], x[t, k3]) for 16
// tokens t, and each output channel's weight dword is broadcast against them: 4 loads + 8 unpacks +
// 4 broadcasts feed 16 vpdpbusd (1024 multiply-adds). Block-rows are processed 16 at a time against each
// panel, so their weights stay in L1/L2 while the panels (at most 4, 256 KiB each for K=4096) sit in L2.
//
// Decode kernel (few tokens; lanes = 4 tiles x 4 output channels): one zmm load brings the weights of
// 4 tiles; 16 dword loads fetch, for 4 tokens at once, the activations of their 16 input channels, and a
// vpshufb per token turns them into each tile's (x[k0], x[k1], x[k2], x[k3]) dword. Weight bytes streamed
// per non-zero: 1 + 2/4 (16-bit index per 4x1 block). One token reads its bytes from x itself. On span-16
// weights (each tile within 16 input channels, bsr.h) and up to kSpan16DecodeMaxTokens tokens it skips the
// gathers: the 16-byte window of x at each tile's first index goes into
// that tile's lane and one vpshufb, whose control is the indices minus the first, picks the four activations.
//
// The 16x1 layout (16x4 tiles) runs the same panel kernel in passes of up to 16 channels. Its decode kernel
// has lanes = the tile's 16 output channels: one zmm load per tile, and per token one dword of the tile's 4
// activations broadcast to every lane (4 gathered bytes per 64 weight bytes instead of 16). Bytes per
// non-zero: 1 + 2/16.
#include <algorithm>
#include <vector>

#include "bsr.h"
#include "bsr_avx512_math.h"
#include "bsr_int8_panel.h"
#include "bsr_scalar.h"

namespace sparseflow::bsr {
namespace {

inline int32_t weight_dword(const int8_t* tile, int c) {
  int32_t v;
  __builtin_memcpy(&v, tile + 4 * c, 4);
  return v;
}

// Channels [c0, c0 + kCh) of one block-row (tiles of kRows channels) against one 64-token panel, of which
// Q groups of 16 tokens are in use; raw accumulators go to stage[c - c0][16q .. 16q + 15]. kCh x Q <= 16
// accumulators, so a 16x1 tile's activation dwords are interleaved once for all its 16 channels when
// Q = 1 and once per 8 when Q = 2. The caller has checked the block-row's indices.
template <int kRows, int kCh, int Q>
void row_panel(const Weight& w, int64_t r, int c0, const uint8_t* panel, int32_t* stage) {
  static_assert(kCh * Q <= 16 && kRows % kCh == 0);
  const auto* values = static_cast<const int8_t*>(w.values);
  __m512i acc[kCh][Q];
  for (int c = 0; c < kCh; ++c)
    for (int q = 0; q < Q; ++q) acc[c][q] = _mm512_setzero_si512();
  for (int64_t b = w.rowptr[r]; b < w.rowptr[r + 1]; b += 4) {
    __m512i x[4];
    tile_activations(panel, w.indices + b, Q, x);
    const int8_t* tile = values + b * kRows;  // tile b / 4 holds 4 * kRows bytes
#pragma GCC unroll 16
    for (int c = 0; c < kCh; ++c) {
      const __m512i wc = _mm512_set1_epi32(weight_dword(tile, c0 + c));
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) acc[c][q] = dpbusd(acc[c][q], x[q], wc);
    }
  }
  for (int c = 0; c < kCh; ++c)
    for (int q = 0; q < Q; ++q) _mm512_store_si512(stage + c * kVnniPanelTokens + 16 * q, acc[c][q]);
}

// A whole block-row against a panel with q groups of 16 tokens in use, in passes of as many channels as
// the accumulators allow.
template <int kRows>
void row_panels(const Weight& w, int64_t r, int q, const uint8_t* panel, int32_t* stage) {
  auto passes = [&]<int kCh, int Q>() {
    for (int c0 = 0; c0 < kRows; c0 += kCh) row_panel<kRows, kCh, Q>(w, r, c0, panel, stage + c0 * kVnniPanelTokens);
  };
  constexpr int kCh1 = kRows, kCh2 = kRows < 8 ? kRows : 8;
  switch (q) {
    case 1: return passes.template operator()<kCh1, 1>();
    case 2: return passes.template operator()<kCh2, 2>();
    case 3: return passes.template operator()<4, 3>();
    default: return passes.template operator()<4, 4>();
  }
}

// The activation dwords x4[k[0..3]] of one tile's four blocks (4 tokens each): explicit loads and inserts,
// because vpgatherdd is several times slower on the CPUs measured.
__attribute__((always_inline)) inline __m128i gather_tile(const int* x4, const uint16_t* k) {
  __m128i v = _mm_cvtsi32_si128(x4[k[0]]);
  v = _mm_insert_epi32(v, x4[k[1]], 1);
  v = _mm_insert_epi32(v, x4[k[2]], 2);
  return _mm_insert_epi32(v, x4[k[3]], 3);
}

// The same for up to 16 blocks (4 tiles) as one vector, lane 4t + j = block 4t + j.
template <bool kFull>
__attribute__((always_inline)) inline __m512i gather_quad(const int* x4, const uint16_t* k, int64_t blocks) {
  // A ragged last quad leaves the lanes of missing tiles undefined: their weights are zero.
  __m512i r = _mm512_castsi128_si512(gather_tile(x4, k));
  if (kFull || blocks > 4) r = _mm512_inserti32x4(r, gather_tile(x4, k + 4), 1);
  if (kFull || blocks > 8) r = _mm512_inserti32x4(r, gather_tile(x4, k + 8), 2);
  if (kFull || blocks > 12) r = _mm512_inserti32x4(r, gather_tile(x4, k + 12), 3);
  return r;
}

// One token: the activation bytes x[k[0..15]] of up to 16 blocks (4 tiles), lane t = tile t's four bytes in
// every dword. Scalar byte loads packed into dwords (integer ALU work, 4 ports) and one vpermd, instead of the
// 4-token groups' 16 dword loads and 15 inserts that all queue for the vector shuffle unit, and no groups to
// build. Zen 4, 2 threads, 90 %: 4096x11008 257 -> 194 us, 4096^2 80 us either way (vpgatherdd: 106 us).
template <bool kFull>
__attribute__((always_inline)) inline __m512i gather_bytes(const uint8_t* x, const uint16_t* k, int64_t blocks) {
  uint64_t d[4];  // tile t's four bytes; a ragged last quad's missing tiles are not read (zero weights)
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) {
    d[t] = 0;
    if (!kFull && blocks <= 4 * t) continue;  // past the row (and maybe the index array): not even the indices
    uint64_t k4;  // the tile's four 16-bit indices in one load
    __builtin_memcpy(&k4, k + 4 * t, 8);
    d[t] = x[k4 & 0xffff] | uint32_t(x[(k4 >> 16) & 0xffff]) << 8 | uint32_t(x[(k4 >> 32) & 0xffff]) << 16 |
           uint32_t(x[k4 >> 48]) << 24;
  }
  const __m512i tile_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m128i tiles = _mm_set_epi64x(int64_t(d[2] | d[3] << 32), int64_t(d[0] | d[1] << 32));
  return _mm512_permutexvar_epi32(tile_of_lane, _mm512_castsi128_si512(tiles));
}

// acc_out[t * 4 + c] = the sum of the four 128-bit lanes of acc[t] (lane = tile, dword c = channel c).
template <int MT>
inline void store_row_sums(const __m512i* acc, int32_t* acc_out) {
  for (int t = 0; t < MT; ++t) {
    __m512i s = _mm512_add_epi32(acc[t], _mm512_shuffle_i32x4(acc[t], acc[t], 0x4E));
    s = _mm512_add_epi32(s, _mm512_shuffle_i32x4(s, s, 0xB1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(acc_out + 4 * t), _mm512_castsi512_si128(s));
  }
}

// Decode: one block-row for MT <= 8 tokens (groups of 4 in xp; one token: its row xq); writes the raw int32
// sums of the block-row's 4 channels to acc_out[t * 4 + c]. The caller has checked the block-row's indices.
template <int MT>
void row_decode(const Int8Args& a, int64_t r, int32_t* acc_out) {
  constexpr int G = (MT + 3) / 4;
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  const auto* x4 = reinterpret_cast<const int*>(a.xp);
  __m512i acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_si512();
  __m512i ctl[4];
  for (int t = 0; t < 4; ++t) {  // dword c of each lane gathers byte t of that lane's 4 dwords
    ctl[t] = _mm512_set1_epi32(t | (4 + t) << 8 | (8 + t) << 16 | (12 + t) << 24);
  }
  const int64_t end = w.rowptr[r + 1];
  auto quad = [&]<bool kFull>(int64_t b) {
    const __m512i wv = kFull ? _mm512_loadu_si512(values + b * 4) : _mm512_maskz_loadu_epi32(lanes16(end - b), values + b * 4);
    if constexpr (MT == 1) {  // the token's row a.xq
      acc[0] = dpbusd(acc[0], gather_bytes<kFull>(a.xq, w.indices + b, end - b), wv);
      return;
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m512i xg = gather_quad<kFull>(x4 + g * w.K, w.indices + b, end - b);
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        if (4 * g + t < MT) acc[4 * g + t] = dpbusd(acc[4 * g + t], _mm512_shuffle_epi8(xg, ctl[t]), wv);
      }
    }
  };
  int64_t b = w.rowptr[r];
  for (; b + 16 <= end; b += 16) quad.template operator()<true>(b);
  if (b < end) quad.template operator()<false>(b);
  store_row_sums<MT>(acc, acc_out);
}

// The span-16 decode fetches weights and indices 16 quads (1 KiB of weights) ahead: 11008x4096, M = 1,
// 2 threads, alternating runs: 50 % 2.13-2.38 -> 1.84-1.88 ms, 70 % 1.10-1.20 -> 0.87-1.10 ms (4096^2 within
// the noise).
constexpr int kSpan16PrefetchQuads = 16;

// Decode of one block-row of a span-16 weight (tiles within 16 input channels; bsr.h) for MT <= 8 tokens of
// xq: per 4 tiles and token, the 16-byte windows of x at the tiles' first indices go into the four lanes and
// one vpshufb picks each tile's (x[k0], x[k1], x[k2], x[k3]) dword, with the control (indices minus the tile's
// first) built once for all tokens. 7 shuffle-port operations per 16 blocks at one token, against 16 for the
// gather (single-thread loop over 4096^2 at 50 % / 70 %: 5.4 / 4.8 ns per 16 blocks against 10.4 / 8.8).
// Returns the row's largest index if that is >= K (its sums are then meaningless), else kTileSpanBroken if a tile
// spans further. The indices are checked on the way instead of in a pass before (which took the cache
// misses of the index stream, ~20 % of the time at 50 %): the windows' addresses are clamped to x's last
// channel, whose 16-byte window ends within xq's kTileSpan bytes of slack.
template <int MT>
uint32_t row_decode_span16(const Int8Args& a, int64_t r, int32_t* acc_out) {
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  const __m512i pick = _mm512_set1_epi32(0x0c080400);  // byte j of every dword <- byte 0 of its lane's dword j
  const uint32_t last = static_cast<uint32_t>(w.K - 1);
  __m512i acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_si512();
  __m512i spread = _mm512_setzero_si512();  // OR of all offsets: below kTileSpan unless corrupted
  __m512i largest = _mm512_setzero_si512();
  const int64_t end = w.rowptr[r + 1];
  auto quad = [&]<bool kFull>(int64_t b) {
    const __mmask16 live = lanes16(end - b);
    const uint16_t* k = w.indices + b;
    prefetch_l1(values + (b + 16 * kSpan16PrefetchQuads) * 4);
    prefetch_l1(w.indices + b + 16 * kSpan16PrefetchQuads);
    const __m512i wv = kFull ? _mm512_loadu_si512(values + b * 4) : _mm512_maskz_loadu_epi32(live, values + b * 4);
    const __m512i k32 = _mm512_cvtepu16_epi32(kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k))
                                                    : _mm256_maskz_loadu_epi16(live, k));
    const __m512i offsets = _mm512_sub_epi32(k32, _mm512_shuffle_epi32(k32, _MM_PERM_AAAA));
    spread = _mm512_or_si512(spread, offsets);
    largest = _mm512_max_epu32(largest, k32);
    const __m512i control = _mm512_shuffle_epi8(offsets, pick);
    uint32_t first[4];  // tiles past the row's end (ragged last quad) are not read
    for (int t = 0; t < 4; ++t) first[t] = kFull || end - b > 4 * t ? std::min<uint32_t>(k[4 * t], last) : 0;
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t) {  // a ragged last quad leaves missing tiles' lanes undefined: zero weights
      const uint8_t* x = a.xq + t * a.ldxq;
      auto window = [&](int tile) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + first[tile])); };
      __m512i xw = _mm512_castsi128_si512(window(0));
      if (kFull || end - b > 4) xw = _mm512_inserti32x4(xw, window(1), 1);
      if (kFull || end - b > 8) xw = _mm512_inserti32x4(xw, window(2), 2);
      if (kFull || end - b > 12) xw = _mm512_inserti32x4(xw, window(3), 3);
      acc[t] = dpbusd(acc[t], _mm512_shuffle_epi8(xw, control), wv);
    }
  };
  int64_t b = w.rowptr[r];
  for (; b + 16 <= end; b += 16) quad.template operator()<true>(b);
  if (b < end) quad.template operator()<false>(b);
  store_row_sums<MT>(acc, acc_out);
  if (_mm512_cmpge_epu32_mask(largest, _mm512_set1_epi32(static_cast<int32_t>(w.K)))) {
    return _mm512_reduce_max_epu32(largest);  // reported as an index out of range
  }
  return _mm512_test_epi32_mask(spread, _mm512_set1_epi32(~(kTileSpan - 1))) ? kTileSpanBroken : 0;
}

template <int MT>
uint32_t rows_decode(const Int8Args& a, int64_t br_begin, int64_t br_end) {
  const int64_t n_begin = br_begin * 4, n_end = std::min(a.w.N, br_end * 4);
  std::vector<int32_t> sums(MT * (n_end - n_begin) + 4 * MT);  // [token][channel], + room for a ragged last row
  std::vector<int32_t> row(4 * MT);
  uint32_t max_index = 0;
  const int64_t width = n_end - n_begin;
  for (int64_t r = br_begin; r < br_end; ++r) {
    if (span16_decode(a.w, MT)) {
      max_index = std::max(max_index, row_decode_span16<MT>(a, r, row.data()));
    } else {
      const uint32_t bad = index_out_of_range(a.w.indices + a.w.rowptr[r], a.w.rowptr[r + 1] - a.w.rowptr[r], a.w.K);
      if (bad) {  // corrupted: reported by the caller, never read
        max_index = std::max(max_index, bad);
        continue;
      }
      row_decode<MT>(a, r, row.data());
    }
    const int64_t c0 = r * 4 - n_begin, rows = std::min<int64_t>(4, a.w.N - r * 4);
    for (int t = 0; t < MT; ++t) {
      for (int64_t c = 0; c < rows; ++c) sums[t * width + c0 + c] = row[4 * t + c];
    }
  }
  for (int64_t n = n_begin; n < n_end; n += 16) {
    const ChannelEpilogue epilogue(a, n, std::min<int64_t>(16, n_end - n));
    for (int t = 0; t < MT; ++t) {
      epilogue.store(a, t, _mm512_maskz_loadu_epi32(epilogue.mask, sums.data() + t * width + (n - n_begin)));
    }
  }
  return max_index;
}

// The 16x1 decode kernel streams weights from the LLC or DRAM faster than the hardware prefetcher alone
// keeps up with: prefetching 24 tiles ahead gave 1.1-1.3x (4096^2 and 11008x4096, M = 1, 2 threads, A/B).
constexpr int kDecodePrefetchTiles = 24;

// Decode on the 16x1 layout for MT <= 8 tokens (one token: the row xq; more: 4-token groups in xp): per
// block-row, MT accumulators whose lanes are its 16 channels, U independent chains per token to hide the
// vpdpbusd latency when MT is small. Per tile and token, one broadcast dword of the tile's 4 activations.
// Building it from 4-token groups (4 loads, 3 inserts, one vpshufb per group) instead of 4 byte loads per
// token took 4096^2 M = 2-8 from 0.37-0.99 to 0.30-0.76 ms (50 %) and 0.23-0.62 to 0.19-0.46 ms (70 %).
template <int MT>
uint32_t rows_decode_16x1(const Int8Args& a, int64_t br_begin, int64_t br_end) {
  constexpr int U = MT >= 4 ? 1 : 4 / MT;
  const __m128i kTranspose4x4 = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    const int64_t begin = w.rowptr[r], end = w.rowptr[r + 1];
    if (const uint32_t bad = index_out_of_range(w.indices + begin, end - begin, w.K)) {  // corrupted: never read
      max_index = std::max(max_index, bad);
      continue;
    }
    __m512i acc[MT][U];
    for (int t = 0; t < MT; ++t)
      for (int u = 0; u < U; ++u) acc[t][u] = _mm512_setzero_si512();
    auto tile = [&](int64_t b, int u) {
      prefetch_l1(values + (b + 4 * kDecodePrefetchTiles) * 16);
      const __m512i wv = _mm512_loadu_si512(values + b * 16);
      if constexpr (MT == 1) {  // the dword from 4 byte loads, shifts and ors
        uint64_t k4;  // the tile's four 16-bit indices in one load
        __builtin_memcpy(&k4, w.indices + b, 8);
        const uint32_t k0 = k4 & 0xffff, k1 = (k4 >> 16) & 0xffff, k2 = (k4 >> 32) & 0xffff, k3 = k4 >> 48;
        const uint8_t* x = a.xq;
        const uint32_t d = x[k0] | uint32_t(x[k1]) << 8 | uint32_t(x[k2]) << 16 | uint32_t(x[k3]) << 24;
        acc[0][u] = dpbusd(acc[0][u], _mm512_set1_epi32(int(d)), wv);
      } else {  // per 4-token group: 4 dword loads and one 4x4 byte transpose give the 4 tokens' dwords
        const auto* x4 = reinterpret_cast<const int*>(a.xp);
#pragma GCC unroll 2
        for (int g = 0; g < (MT + 3) / 4; ++g) {
          alignas(16) int32_t d[4];
          _mm_store_si128(reinterpret_cast<__m128i*>(d),
                          _mm_shuffle_epi8(gather_tile(x4 + g * w.K, w.indices + b), kTranspose4x4));
#pragma GCC unroll 4
          for (int t = 0; t < 4; ++t) {
            if (4 * g + t < MT) acc[4 * g + t][u] = dpbusd(acc[4 * g + t][u], _mm512_set1_epi32(d[t]), wv);
          }
        }
      }
    };
    int64_t b = begin;
    for (; b + 4 * U <= end; b += 4 * U) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) tile(b + 4 * u, u);
    }
    for (; b < end; b += 4) tile(b, 0);

    const ChannelEpilogue epilogue(a, r * 16, std::min<int64_t>(16, w.N - r * 16));
    for (int t = 0; t < MT; ++t) {
      __m512i v = acc[t][0];
      for (int u = 1; u < U; ++u) v = _mm512_add_epi32(v, acc[t][u]);
      epilogue.store(a, t, v);
    }
  }
  return max_index;
}

template <int MT>
uint32_t decode_rows(const Int8Args& a, int64_t br_begin, int64_t br_end) {
  return a.w.layout == Layout::kInt8_16x1 ? rows_decode_16x1<MT>(a, br_begin, br_end)
                                          : rows_decode<MT>(a, br_begin, br_end);
}

}  // namespace

uint32_t linear_int8_vnni(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  const Weight& w = a.w;
  alignas(64) int32_t stage[kStageChannels * kVnniPanelTokens];
  uint32_t max_index = 0;
  const bool wide = w.layout == Layout::kInt8_16x1;
  const int tile_rows = native_block(w.layout).rows;
  const int64_t stage_rows = kStageChannels / tile_rows;
  for (int64_t r0 = br_begin; r0 < br_end; r0 += stage_rows) {
    const int64_t r1 = std::min(br_end, r0 + stage_rows);
    if (const uint32_t bad = index_out_of_range(w.indices + w.rowptr[r0], w.rowptr[r1] - w.rowptr[r0], w.K)) {
      max_index = std::max(max_index, bad);  // corrupted: reported by the caller, never read
      continue;
    }
    const int64_t n0 = r0 * tile_rows, channels = std::min(w.N, r1 * tile_rows) - n0;
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t m0 = p * kVnniPanelTokens, tokens = std::min<int64_t>(kVnniPanelTokens, a.M - m0);
      const uint8_t* panel = a.xp + m0 * w.K;
      const int q = int((tokens + 15) / 16);
      for (int64_t r = r0; r < r1; ++r) {
        int32_t* st = stage + (r - r0) * tile_rows * kVnniPanelTokens;
        if (wide) {
          row_panels<16>(w, r, q, panel, st);
        } else {
          row_panels<4>(w, r, q, panel, st);
        }
      }
      finish_stage(a, stage, n0, channels, m0, tokens);
    }
  }
  return max_index;
}

uint32_t linear_int8_vnni_decode(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                 int64_t m_end) {
  Int8Args s = a;  // the decode kernels index tokens from 0
  s.xp = a.xp + m_begin * a.w.K;
  s.xq = a.xq + m_begin * a.ldxq;
  s.x_scale = a.x_scale + m_begin;
  s.x_zp = a.x_zp + m_begin;
  s.ep.y = static_cast<char*>(a.ep.y) + m_begin * a.ep.ldy * (a.ep.out == DType::kBF16 ? 2 : 4);
  switch (m_end - m_begin) {  // up to kInt8DecodeMaxTokens (bsr_cpu.cpp)
#define SPARSEFLOW_CASE(n) \
  case n: return decode_rows<n>(s, br_begin, br_end);
    SPARSEFLOW_CASE(1) SPARSEFLOW_CASE(2) SPARSEFLOW_CASE(3) SPARSEFLOW_CASE(4) SPARSEFLOW_CASE(5)
    SPARSEFLOW_CASE(6) SPARSEFLOW_CASE(7) SPARSEFLOW_CASE(8)
#undef SPARSEFLOW_CASE
  }
  return 0;
}

void build_panel_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t p, int64_t k_begin,
                           int64_t k_end) {
  const int64_t m0 = p * kVnniPanelTokens;
  uint8_t* panel = xp + m0 * K;
  for (int64_t k = k_begin; k < k_end; k += 16) {
    const __mmask16 mk = lanes16(K - k);
    // Register R, lane L: the 16 bytes of token 16q + 4L + d with 4q + d = bitrev4(R), so that after the
    // transpose byte 4q + d of lane L of column j is that token's x[., k + j].
    __m512i r[16];
    for (int R = 0; R < 16; ++R) {
      const int i = bitrev4(R), q = i / 4, d = i % 4;
      __m128i lane[4];
      for (int L = 0; L < 4; ++L) {
        const int64_t m = m0 + 16 * q + 4 * L + d;
        lane[L] = m < M ? _mm_maskz_loadu_epi8(mk, xq + m * K + k) : _mm_setzero_si128();
      }
      r[R] = _mm512_inserti32x4(_mm512_castsi128_si512(lane[0]), lane[1], 1);
      r[R] = _mm512_inserti32x4(r[R], lane[2], 2);
      r[R] = _mm512_inserti32x4(r[R], lane[3], 3);
    }
    transpose16x16_epi8_lanes(r);
    const int64_t kn = std::min<int64_t>(16, K - k);
    for (int64_t j = 0; j < kn; ++j) _mm512_storeu_si512(panel + (k + j) * kVnniPanelTokens, r[j]);
  }
}

void build_groups_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t g_begin, int64_t g_end) {
  for (int64_t g = g_begin; g < g_end; ++g) {
    uint8_t* out = xp + g * K * kVnniGroupTokens;
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 mk = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
      __m512i r[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t m = g * kVnniGroupTokens + t;
        r[t] = m < M ? _mm512_maskz_loadu_epi8(mk, xq + m * K + k) : _mm512_setzero_si512();
      }
      const __m512i t0 = _mm512_unpacklo_epi8(r[0], r[1]), t1 = _mm512_unpackhi_epi8(r[0], r[1]);
      const __m512i t2 = _mm512_unpacklo_epi8(r[2], r[3]), t3 = _mm512_unpackhi_epi8(r[2], r[3]);
      // a[i], lane L: dwords for k + 16L + 4i .. + 3
      const __m512i a0 = _mm512_unpacklo_epi16(t0, t2), a1 = _mm512_unpackhi_epi16(t0, t2);
      const __m512i a2 = _mm512_unpacklo_epi16(t1, t3), a3 = _mm512_unpackhi_epi16(t1, t3);
      const __m512i v0 = _mm512_shuffle_i32x4(a0, a1, 0x44), v1 = _mm512_shuffle_i32x4(a0, a1, 0xEE);
      const __m512i v2 = _mm512_shuffle_i32x4(a2, a3, 0x44), v3 = _mm512_shuffle_i32x4(a2, a3, 0xEE);
      const __m512i o[4] = {_mm512_shuffle_i32x4(v0, v2, 0x88), _mm512_shuffle_i32x4(v0, v2, 0xDD),
                            _mm512_shuffle_i32x4(v1, v3, 0x88), _mm512_shuffle_i32x4(v1, v3, 0xDD)};
      for (int L = 0; L < 4; ++L) {
        const int64_t kk = k + 16 * L;
        if (kk < K) _mm512_mask_storeu_epi32(out + kk * 4, lanes16(K - kk), o[L]);
      }
    }
  }
}

}  // namespace sparseflow::bsr
