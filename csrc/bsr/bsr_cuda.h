// Block-sparse (BSR) linear on CUDA tensor cores: torch-free declarations shared by the CUDA wrapper
// (bsr_cuda.cpp) and the kernels (bsr_linear_sm80.cu, built for every arch: mma.sync runs on sm80 and later).
//
// CUDA packed layout ("TxT", meta layout id kCudaSquare): square T x T tiles, T in {16, 32, 64, 128}, fp16/bf16:
//   meta          int64 [8] on the CPU: version, layout id 4, dtype code, out, in, nnz, T (slot 6), 0
//   rowptr        int32 [ceil(out/T) + 1]   tile-row pointers
//   indices       int16 [nnz]               first input channel of each tile (tile column * T, read as uint16)
//   packed_values [nnz, T, T]               the tiles, row-major, entries outside [out, in] zeroed
//   compensation  int32 [0]                 (int8 weights only; none on CUDA)
// Two ways in (bsr_pack's `kernel`):
//   kept as they are: canonical blocks that already are T x T (kernel "auto" or "TxT" with that T). rowptr is the
//     canonical crow and all-zero blocks are kept (a block is one tensor-core tile: skipping it needs no re-cut).
//   re-cut: any other R x C blocks ("auto": T = 16, the least fill-in; "TxT": that T). Every non-zero entry goes to
//     tile (row / T, k / T); tiles without a non-zero (-0.0 counts as zero) are not stored. On the device:
//     recut_mark_cuda flags the tiles that hold a non-zero, the wrapper numbers the flagged tiles in row-major
//     order (a prefix sum; reading the count back syncs, as the validation of crow/col on host copies does),
//     recut_fill_cuda scatters the entries.
#pragma once

#include <cstdint>

namespace sparseflow::bsr::cuda {

constexpr int64_t kFormatVersion = 1;  // the same slots as the CPU layouts (csrc/bsr/bsr.h on the CPU branch)
constexpr int64_t kLayoutCudaSquare = 4;
constexpr int64_t kDtypeBF16 = 1;  // CPU codes: F32 0, BF16 1, S8 2, S32 3
constexpr int64_t kDtypeF16 = 4;
constexpr int kMetaSlots = 8;
constexpr int kMetaVersion = 0, kMetaLayout = 1, kMetaDtype = 2, kMetaOut = 3, kMetaIn = 4, kMetaNnz = 5,
              kMetaBlock = 6;

enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kSilu = 3 };

// ------------------------------------------------------------------------------------------------ pack
struct PackParams {
  int64_t out_features = 0, in_features = 0;
  int block = 16;  // T
  int64_t block_rows = 0, nnz = 0;
  const int32_t* crow = nullptr;  // [block_rows + 1], device
  const int32_t* col = nullptr;   // [nnz], device
  const uint16_t* values = nullptr;  // [nnz, T, T], 16-bit elements (bits only)
  int16_t* indices = nullptr;        // [nnz]
  uint16_t* packed_values = nullptr;  // [nnz, T, T]
};

// Copies the blocks, zeroing entries outside [out, in], and turns block columns into first input channels.
// Asynchronous on `stream`; the arrays must be valid (bsr::validate_canonical, bsr.h).
void pack_cuda(const PackParams& p, void* stream);

// Re-cut of canonical R x C blocks into T x T tiles (see the layout above). Both passes visit every entry of the
// canonical blocks that lies inside [out, in] and is non-zero; asynchronous on `stream`, arrays valid.
struct RecutParams {
  int64_t out_features = 0, in_features = 0;
  int64_t R = 1, C = 1;  // canonical block
  int block = 16;        // T
  int64_t nnz = 0;       // canonical blocks
  int64_t tile_cols = 0;             // ceil(in / T)
  const int32_t* block_row = nullptr;  // [nnz] canonical block-row of each block, device
  const int32_t* col = nullptr;        // [nnz] canonical block-column, device
  const uint16_t* values = nullptr;    // [nnz, R, C], 16-bit elements (bits only), contiguous
  int32_t* tile_flag = nullptr;        // mark: [ceil(out/T) * tile_cols], zeroed; set to 1 per tile with a non-zero
  const int32_t* tile_slot = nullptr;  // fill: inclusive prefix sum of tile_flag (tile t is stored at slot[t] - 1)
  uint16_t* packed_values = nullptr;   // fill: [tiles, T, T], zeroed
};
void recut_mark_cuda(const RecutParams& p, void* stream);
void recut_fill_cuda(const RecutParams& p, void* stream);

// ------------------------------------------------------------------------------------------------ linear
struct LinearParams {
  int64_t tokens = 0;  // M
  int64_t out_features = 0, in_features = 0;
  int block = 16;
  int64_t block_rows = 0;
  const void* x = nullptr;  // [tokens, in], unit inner stride, row stride x_stride (a multiple of 8)
  int64_t x_stride = 0;
  const int32_t* rowptr = nullptr;
  const int16_t* indices = nullptr;
  const void* values = nullptr;
  const void* bias = nullptr;  // [out], x's dtype or float32 (bias_fp32), or null
  bool bias_fp32 = false;
  bool bf16 = false;     // x / values dtype: bf16, else fp16
  bool out_fp32 = false;  // y dtype: float32, else x's dtype
  Activation activation = Activation::kNone;
  void* y = nullptr;  // [tokens, out] row-major
};

// Tokens per CTA: decode-sized problems take 16-token tiles (more CTAs, nothing computed twice), others 64.
// TO BE MEASURED (no GPU where this was written).
constexpr int64_t kSmallTileMaxTokens = 16;

// nullptr on success, else a static message (launch error).
const char* linear_cuda(const LinearParams& p, void* stream);

}  // namespace sparseflow::bsr::cuda
