// AMX tile kernels of bsr_linear on the 16x1 layouts (int8 and bf16), written once over a tile backend:
// HardwareTiles (bsr_linear_amx.cpp, the AMX instructions) or EmulatedTiles (bsr_amx_tiles.h, software; how the
// kernels are tested on CPUs without AMX). AVX-512 for everything around the tile products; internal linkage.
//
// int8. One TDPBSUD multiplies A = 16 output channels x 64 input channels of weights (s8) by B = the same 64 input
// channels x 16 tokens of activations (u8) into C = 16 channels x 16 tokens (int32): 16 tiles of a 16x1 block-row
// per instruction, against 16 x 16 vpdpbusd for the VNNI kernel.
//   A: a 16x1 block-row stores each 16x4 tile as 64 bytes, byte 4c + j = W[c, k_j] (bsr.h), i.e. dword (tile t,
//      channel c). A wants dword (channel c, tile t): the tiles of each group of 16 are transposed once per
//      block-row and call, and reused for every token panel (zero weights pad the last group).
//   B: row t = the 4 activations of tile t's input channels for each of 16 tokens, which is exactly what the VNNI
//      kernel's unpacks of four 64-token panel rows produce (bsr_linear_avx512_vnni.cpp): one 64-byte store per
//      tile and 16 tokens.
//   C: channel-major, stored straight into the VNNI kernel's staging area; the same finishing pass dequantizes.
//
// bf16. One TDPBF16PS multiplies A = 16 output channels x 32 input channels (bf16 pairs) by B = those 32 input
// channels x 16 tokens into C = 16 x 16 fp32: 32 blocks of a kF16x1 block-row per instruction.
//   A: per pair of blocks, (W[c, k_2i], W[c, k_2i+1]) dwords for the 16 channels (as the AVX512_BF16 kernel
//      builds them), transposed per group of 16 pairs.
//   B: row i = (x[t, k_2i], x[t, k_2i+1]) for the panel's 16 tokens, from the AVX512_BF16 kernel's [K][16] panels.
//   Up to 4 token panels share each A operand (C in tmm0..3), and C is added into fp32 sums in memory every
//   kSumChunkBlocks blocks, as the other float kernels sum their chunks (bsr.h).
#pragma once

#include <algorithm>
#include <vector>

#include "bsr.h"
#include "bsr_amx_tiles.h"
#include "bsr_avx512_math.h"
#include "bsr_int8_panel.h"

namespace sparseflow::bsr {
namespace {

constexpr int kTilesPerGroup = kTileBytesPerRow / 4;  // 16x4 tiles per A operand

// The A operand of up to 16 consecutive 16x4 tiles at `tiles` (count of them; zero weights for the rest).
inline void weight_operand(const int8_t* tiles, int64_t count, uint8_t* a) {
  __m512 v[16];
  for (int t = 0; t < 16; ++t) {
    v[t] = t < count ? _mm512_castsi512_ps(_mm512_loadu_si512(tiles + t * 64)) : _mm512_setzero_ps();
  }
  transpose16x16_ps(v);  // only moves bits: v[c], dword t = tile t's 4 weights of channel c
  for (int c = 0; c < 16; ++c) _mm512_storeu_si512(a + c * kTileBytesPerRow, _mm512_castps_si512(v[c]));
}

// One block-row against one 64-token panel of which q groups of 16 tokens are in use; raw int32 sums go to
// stage[c][16 q' + i]. `weights` holds the row's A operands; `acts` is room for q B operands.
template <class Tiles>
void row_panel_tiles(Tiles& tiles, const Weight& w, int64_t r, int q, const uint8_t* panel, const uint8_t* weights,
                     uint8_t (*acts)[kTileBytes], int32_t* stage) {
  for (int g = 0; g < q; ++g) tiles.zero_acc(g);
  const int64_t begin = w.rowptr[r], count = (w.rowptr[r + 1] - begin) / 4;
  for (int64_t t0 = 0; t0 < count; t0 += kTilesPerGroup) {
    const int64_t n = std::min<int64_t>(kTilesPerGroup, count - t0);
    // Rows of the B operands past n keep older activations: the padding weights are zero.
    for (int64_t t = 0; t < n; ++t) {
      __m512i x[4];
      tile_activations(panel, w.indices + begin + 4 * (t0 + t), q, x);
      for (int g = 0; g < q; ++g) _mm512_store_si512(acts[g] + t * kTileBytesPerRow, x[g]);
    }
    tiles.load_weights(weights + t0 / kTilesPerGroup * kTileBytes, kTileBytesPerRow);
    for (int g = 0; g < q; ++g) tiles.dot_i8(g, acts[g], kTileBytesPerRow);
  }
  for (int g = 0; g < q; ++g) tiles.store_acc(g, stage + 16 * g, kVnniPanelTokens * sizeof(int32_t));
}

// The kernel over block-rows [br_begin, br_end) and 64-token panels [p_begin, p_end) of a.xp (the VNNI panel
// layout), like linear_int8_vnni.
template <class Tiles>
uint32_t linear_int8_tiles(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  constexpr int64_t kStageRows = kStageChannels / 16;
  alignas(64) int32_t stage[kStageChannels * kVnniPanelTokens];
  alignas(64) uint8_t acts[kAccTiles][kTileBytes] = {};
  std::vector<uint8_t> weights;  // A operands of the staged block-rows
  int64_t offset[kStageRows + 1];
  Tiles tiles;
  uint32_t max_index = 0;
  for (int64_t r0 = br_begin; r0 < br_end; r0 += kStageRows) {
    const int64_t r1 = std::min(br_end, r0 + kStageRows);
    if (const uint32_t bad = index_out_of_range(w.indices + w.rowptr[r0], w.rowptr[r1] - w.rowptr[r0], w.K)) {
      max_index = std::max(max_index, bad);  // corrupted: reported by the caller, never read
      continue;
    }
    offset[0] = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t tiles_in_row = (w.rowptr[r + 1] - w.rowptr[r]) / 4;
      offset[r - r0 + 1] = offset[r - r0] + ceil_div(tiles_in_row, kTilesPerGroup) * kTileBytes;
    }
    weights.resize(offset[r1 - r0]);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t tiles_in_row = (w.rowptr[r + 1] - w.rowptr[r]) / 4;
      for (int64_t t0 = 0; t0 < tiles_in_row; t0 += kTilesPerGroup) {
        weight_operand(values + (w.rowptr[r] + 4 * t0) * 16, std::min<int64_t>(kTilesPerGroup, tiles_in_row - t0),
                       weights.data() + offset[r - r0] + t0 / kTilesPerGroup * kTileBytes);
      }
    }
    const int64_t n0 = r0 * 16, channels = std::min(w.N, r1 * 16) - n0;
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t m0 = p * kVnniPanelTokens, tokens = std::min<int64_t>(kVnniPanelTokens, a.M - m0);
      const uint8_t* panel = a.xp + m0 * w.K;
      for (int64_t r = r0; r < r1; ++r) {
        row_panel_tiles(tiles, w, r, int((tokens + 15) / 16), panel, weights.data() + offset[r - r0], acts,
                        stage + (r - r0) * 16 * kVnniPanelTokens);
      }
      finish_stage(a, stage, n0, channels, m0, tokens);
    }
  }
  return max_index;
}

constexpr int kBf16GroupBlocks = 2 * kTileRows;  // blocks per A operand (16 pairs)
static_assert(kSumChunkBlocks % kBf16GroupBlocks == 0);

// Rows [0, count) of v hold the (blocks b, b + 1) pairs lo/hi loaded by pair(i, &lo, &hi); rows past count are 0.
template <class PairLoader>
inline void bf16_pair_rows(int64_t blocks, PairLoader load, uint8_t* dst, bool transpose) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) {
    const __m256i lo = 2 * i < blocks ? load(2 * i) : _mm256_setzero_si256();
    const __m256i hi = 2 * i + 1 < blocks ? load(2 * i + 1) : _mm256_setzero_si256();
    v[i] = _mm512_castsi512_ps(pair16(lo, hi));
  }
  if (transpose) transpose16x16_ps(v);  // only moves bits
  for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + i * kTileBytesPerRow, _mm512_castps_si512(v[i]));
}

// bf16 weights in the 16x1 layout against the AVX512_BF16 kernel's bf16 panels, block-rows [br_begin, br_end)
// and 16-token panels [p_begin, p_end).
template <class Tiles>
uint32_t linear_bf16_tiles(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                           int64_t p_begin, int64_t p_end) {
  const Weight& w = a.w;
  const auto* values = static_cast<const uint16_t*>(w.values);
  alignas(64) uint8_t weights[kTileBytes];
  alignas(64) uint8_t acts[kTileBytes];
  alignas(64) float chunk[kTileRows * 16];
  alignas(64) float sums[kAccTiles][kTileRows * 16];
  Tiles tiles;
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    const int64_t begin = w.rowptr[r], end = w.rowptr[r + 1];
    if (const uint32_t bad = index_out_of_range(w.indices + begin, end - begin, w.K)) {
      max_index = std::max(max_index, bad);  // corrupted: reported by the caller, never read
      continue;
    }
    for (int64_t p0 = p_begin; p0 < p_end; p0 += kAccTiles) {
      const int np = int(std::min<int64_t>(kAccTiles, p_end - p0));
      for (int i = 0; i < np; ++i) {
        tiles.zero_acc(i);
        std::fill_n(sums[i], kTileRows * 16, 0.f);
      }
      for (int64_t b0 = begin; b0 < end; b0 += kBf16GroupBlocks) {
        const int64_t blocks = std::min<int64_t>(kBf16GroupBlocks, end - b0);
        bf16_pair_rows(blocks, [&](int64_t j) { return _mm256_loadu_si256((const __m256i*)(values + (b0 + j) * 16)); },
                       weights, true);
        tiles.load_weights(weights, kTileBytesPerRow);
        for (int i = 0; i < np; ++i) {
          const int64_t m0 = (p0 + i) * kF32PanelTokens, width = std::min<int64_t>(kF32PanelTokens, a.M - m0);
          const uint16_t* panel = panels + m0 * w.K;
          const __mmask16 tokens = lanes16(width);
          bf16_pair_rows(blocks, [&](int64_t j) {
            return _mm256_maskz_loadu_epi16(tokens, panel + int64_t(w.indices[b0 + j]) * width);
          }, acts, false);
          tiles.dot_bf16(i, acts, kTileBytesPerRow);
        }
        if ((b0 - begin + kBf16GroupBlocks) % kSumChunkBlocks == 0 || b0 + kBf16GroupBlocks >= end) {
          for (int i = 0; i < np; ++i) {
            tiles.store_acc(i, chunk, 16 * sizeof(float));
            for (int c = 0; c < kTileRows; ++c) {
              float* s = sums[i] + c * 16;
              _mm512_store_ps(s, _mm512_add_ps(_mm512_load_ps(s), _mm512_load_ps(chunk + c * 16)));
            }
            tiles.zero_acc(i);
          }
        }
      }
      for (int i = 0; i < np; ++i) {  // sums[i]: [channel][token] -> per token, lanes = channels
        const int64_t m0 = (p0 + i) * kF32PanelTokens, width = std::min<int64_t>(kF32PanelTokens, a.M - m0);
        __m512 t[16];
        for (int c = 0; c < 16; ++c) t[c] = _mm512_load_ps(sums[i] + c * 16);
        transpose16x16_ps(t);
        store_16x1_tokens(a, r, m0, width, t);
      }
    }
  }
  return max_index;
}

}  // namespace
}  // namespace sparseflow::bsr
