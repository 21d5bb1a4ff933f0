// Small-M ("decode") 2:4 linear on CUDA: a GEMV-style kernel that streams the packed weight once, for
// either packed layout (nm_cutlass.h), used by nm_linear when tokens <= kDecodeMaxTokens. Torch-free; the
// kernel is nm_linear_decode_sm80.cu (built for every CUDA arch), the host side nm_cutlass_cuda.cpp.
//
// Why not the CUTLASS GEMMs: they pad tokens (GEMM N) to a tile of 32/64 and keep weight tiles in shared
// memory; at a handful of tokens the work is reading the weight (values 0.5x + metadata 0.125x of the dense
// bytes), so this kernel does nothing else: every weight byte is loaded once, straight into registers.
//
// Work split: a CTA owns kDecodeRows output rows and all of K; its kDecodeWarps warps take interleaved
// 64-column chunks and are summed in shared memory at the end (split-K inside the CTA, no workspace).
// Inside a warp, lane (g, t) = (lane / 4, lane % 4) loads, for rows g and g + 8 of the CTA, the 8 values
// (16 bytes) and the 16-bit code word of dense columns [64 c + 16 t, + 16) of chunk c: 4 groups of 4. Both
// layouts give that word with group q in nibble q (target 80: one int16 metadata word; target 90: two
// consecutive metadata bytes). Each group is expanded to 4 dense values in registers (byte permutes
// through a 16-entry table), and mma.sync m16n8k16 (dense) multiplies it with x: the sum over K does not
// care which K slot holds which column, so slot pair (2t, 2t+1) / (2t+8, 2t+9) of k-step q takes dense
// columns 64 c + 16 t + 4 q + {0, 1} / {2, 3} in both the weight (A) and x (B) fragments. Tokens are the
// mma's N (8 per n-tile, 1 or 2 n-tiles); padded tokens are zeros and never stored.
//
// Metadata addresses come from the packers' own index math (cutlass2x::meta_offset, sm90::meta_offset),
// evaluated for a lane's first two chunks; both layouts are affine in the chunk for a fixed column
// residue mod 128, and a warp's chunks are kDecodeWarps (even) apart, i.e. 512 columns, so later chunks
// are reached by adding the difference.
#pragma once

#include <cstdint>

#include "nm_cutlass.h"

namespace sparseflow::nm::cutlass2x {

// nm_linear takes this kernel for tokens <= kDecodeMaxTokens and the CUTLASS GEMMs above. TO BE MEASURED
// on a GPU (python -m sparseflow.bench gpu-linear): 16 is the largest count the kernel handles (2 n-tiles);
// the crossover with the sparse tensor-core GEMMs may be lower.
inline constexpr int64_t kDecodeMaxTokens = 16;

inline constexpr int kDecodeWarps = 8;   // warps per CTA, splitting K (even: see above)
inline constexpr int kDecodeRows = 16;   // output rows per CTA (one mma M tile)
inline constexpr int kDecodeChunkCols = 64;  // dense columns a warp covers per step (4 lanes x 16)
// Chunks a lane loads before using them (bytes in flight), by n-tiles of tokens: 2 n-tiles need twice the
// registers for x, and 4 chunks would spill at the 128 registers that let 2 CTAs share an SM.
inline constexpr int kDecodeUnroll1Tile = 4;
inline constexpr int kDecodeUnroll2Tiles = 2;
static_assert(kDecodeWarps % 2 == 0, "chunk strides must be a multiple of 128 columns (metadata period)");

enum class MetaLayout : int { kSm80 = 0, kSm90 = 1 };  // int16 packed_meta (target 80) / uint8 (target 90)

// Byte offset of the 16-bit code word of dense columns [16 slice, 16 slice + 16) of `row` (group q of the
// slice in nibble q), in either packed layout, for `row` < rows_p. Plain arithmetic, so also defined past the
// last slice (the layout continued periodically): the kernel takes its chunk step from there.
SF_HOST_DEVICE int64_t decode_code_word_offset(MetaLayout layout, int64_t row, int64_t slice, int64_t rows_p) {
  if (layout == MetaLayout::kSm80) return 2 * meta_offset(row, slice, rows_p);  // int16 word `slice`
  // Bytes for columns 16 s and 16 s + 8 are adjacent (the layout's innermost mode is 16 columns).
  return sm90::meta_offset(row, slice * 16, rows_p) / 8;
}

// p as for the CUTLASS kernels (tokens <= kDecodeMaxTokens; in_features a multiple of 16; packed_values rows of
// in_features / 2 elements). Launches on `stream`; returns nullptr or a static error message.
const char* linear_decode(const LinearParams& p, MetaLayout layout, void* stream);

}  // namespace sparseflow::nm::cutlass2x
