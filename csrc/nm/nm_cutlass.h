// 2:4 layouts and kernels of the CUDA N:M path (CUTLASS sparse tensor-core GEMMs). Torch-free: the layout
// math is written once for the host (CPU packing, tests) and the device (the CUDA packing kernel).
//
// Canonical 2:4 input (nm.h): values [rows, cols/2] and uint8 in-group positions [rows, cols/2].
//
// Target 80: the layout of CUTLASS 2.x SparseGemm (mma.sp m16n8k32, fp16/bf16), used on sm80..sm90:
//   packed_values [rows_p, cols_p/2]  row-major: the canonical values, zero-padded (the compressed A operand)
//   packed_meta   [rows_p, cols_p/16] int16 words, each holding the 4-bit codes (idx0 | idx1 << 2) of 4
//                 consecutive groups (lowest group in the lowest bits), stored in the order of CUTLASS's
//                 reorder_meta (tools/util/include/cutlass/util/host_reorder.h): rows interleaved in blocks
//                 of 32, 2x2 blocks swizzled, then ColumnMajorInterleaved<2>.
//   rows_p = rows rounded up to 32 (the metadata row reordering works on 32-row blocks),
//   cols_p = cols rounded up to 64 (the threadblock K of every sm80 kernel configuration).
//   Padding groups hold zero values at positions (0, 1): code 0x4, a valid code (0 is not).
//
// Target 90: the layout of CUTLASS 3.x's sm90a sparse GEMM (wgmma.sp; Sm90GemmSparseConfig with a K tile of
// 128), used on sm90 when out_features is a multiple of 8 and in_features of 16 (TMA alignment):
//   packed_values [rows_p, cols_a/2]  as for target 80, with rows_p = rows rounded up to 64 and cols_a = cols
//                                     rounded up to 16 (CUTLASS's fill_layoutA row stride)
//   packed_meta   [rows_p, cols_p/8]  uint8, cols_p = cols rounded up to 128: byte b holds the codes of dense columns [k, k+8) with k the
//                 column of logical offset 8b in Sm90GemmSparseConfig::fill_layoutE: (64 x 128) atoms, each
//                 ordered ((8,2,4),(16,2,4)):((128,16,2048),(1,1024,32)), atoms column-major over M then K.
//                 The lower nibble is the group at k, the upper the group at k + 4.
//   (This closed form is checked against CUTLASS's own fill_layoutE in tests/test_cuda_linear.py.)
// The metadata dtype tells the layouts apart (int16: 80, uint8: 90), so nm_linear never misreads one.
#pragma once

#include <cstdint>

#include "nm_group.h"  // SF_HOST_DEVICE

namespace sparseflow::nm::cutlass2x {

constexpr int kRowAlign = 32;
constexpr int kColAlign = 64;
constexpr int kColsPerWord = 16;       // dense columns covered by one int16 metadata word
constexpr uint16_t kPadCode = 0x4;     // positions (0, 1)
constexpr uint16_t kPadWord = 0x4444;  // four padding groups

SF_HOST_DEVICE int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Element offset of metadata word (row, word) in the reordered int16 buffer of a matrix with rows_p rows.
SF_HOST_DEVICE int64_t meta_offset(int64_t row, int64_t word, int64_t rows_p) {
  // Rows: within each block of 32, row r goes to (r % 8) * 4 + r / 8, so that one ldmatrix
  // brings every thread of a warp the metadata of its mma.sp rows.
  int64_t r = row / 32 * 32 + (row % 8) * 4 + (row % 32) / 8;
  int64_t c = word;
  // Swap the off-diagonal elements of every 2x2 block (Z order to N order).
  if (r % 2 == 0 && c % 2 == 1) {
    ++r;
    --c;
  } else if (r % 2 == 1 && c % 2 == 0) {
    --r;
    ++c;
  }
  // ColumnMajorInterleaved<2>: pairs of columns stored column-major, the pair interleaved per row.
  return (c / 2) * rows_p * 2 + r * 2 + (c % 2);
}

struct PackParams {
  int64_t rows = 0;    // canonical rows (out_features)
  int64_t cols = 0;    // dense columns (in_features), a multiple of 4
  int64_t rows_p = 0;  // padded, see above
  int64_t cols_p = 0;  // dense columns the metadata covers
  int64_t values_cols = 0;  // dense columns of a packed_values row (target 80: cols_p; 90: cols rounded to 16)
  const uint16_t* values = nullptr;  // [rows, cols/2], 16-bit elements (bits only)
  const uint8_t* indices = nullptr;  // [rows, cols/2]
  uint16_t* packed_values = nullptr;  // [rows_p, cols_p/2]
  void* packed_meta = nullptr;        // target 80: rows_p * cols_p/16 int16 words; 90: rows_p * cols_p/8 bytes
};

inline PackParams make_pack_params(int64_t rows, int64_t cols) {
  PackParams p;
  p.rows = rows;
  p.cols = cols;
  p.rows_p = round_up(rows, kRowAlign);
  p.cols_p = round_up(cols, kColAlign);
  p.values_cols = p.cols_p;
  return p;
}

// Packs metadata word (row, word) and its 8 values. Returns the lowest canonical group (row * cols/4 +
// group) of this word whose positions are invalid (not ascending or >= 4), or -1.
SF_HOST_DEVICE int64_t pack_word(const PackParams& p, int64_t row, int64_t word) {
  const int64_t groups = p.cols / 4;
  uint16_t* out_values = p.packed_values + row * (p.values_cols / 2) + word * 8;
  uint32_t bits = 0;
  int64_t bad = -1;
  for (int g = 0; g < 4; ++g) {
    const int64_t group = word * 4 + g;
    uint32_t code = kPadCode;
    uint16_t v0 = 0, v1 = 0;
    if (row < p.rows && group < groups) {
      const int64_t at = row * (p.cols / 2) + group * 2;
      const uint32_t i0 = p.indices[at], i1 = p.indices[at + 1];
      if (!(i0 < i1 && i1 < 4) && bad < 0) bad = row * groups + group;
      code = (i0 & 3u) | ((i1 & 3u) << 2);
      v0 = p.values[at];
      v1 = p.values[at + 1];
    }
    bits |= code << (4 * g);
    out_values[2 * g] = v0;
    out_values[2 * g + 1] = v1;
  }
  static_cast<int16_t*>(p.packed_meta)[meta_offset(row, word, p.rows_p)] =
      static_cast<int16_t>(static_cast<uint16_t>(bits));
  return bad;
}

// Host (CPU) packing of rows [row_begin, row_end) of the padded matrix; returns the lowest bad group or -1.
int64_t pack_cpu(const PackParams& p, int64_t row_begin, int64_t row_end);

// CUDA packing, asynchronous on `stream`; the lowest bad group is atomically min-ed into *first_bad_group
// (initialised by the caller to INT64_MAX).
void pack_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);

// ------------------------------------------------------------------------------------- target 90 (sm90a)
namespace sm90 {

constexpr int kRowAlign = 64;   // metadata atom rows
constexpr int kColAlign = 128;  // metadata atom columns (the K tile)
constexpr int kValuesColAlign = 16;  // Sm90GemmSparseConfig::TensorAAlignmentK for 16-bit types
constexpr int kColsPerByte = 8;

// Logical offset of dense element (row, col) in CUTLASS's sm90 16-bit metadata layout; the metadata byte is
// offset / 8 and the nibble (offset / 4) % 2.
SF_HOST_DEVICE int64_t meta_offset(int64_t row, int64_t col, int64_t rows_p) {
  const int64_t m = row % 64, k = col % 128;
  const int64_t atom = (k % 16) + ((m / 8) % 2) * 16 + (k / 32) * 32 + (m % 8) * 128 + ((k / 16) % 2) * 1024 +
                       (m / 16) * 2048;
  return atom + (row / 64) * (64 * 128) + (col / 128) * rows_p * 128;
}

inline PackParams make_pack_params(int64_t rows, int64_t cols) {
  PackParams p;
  p.rows = rows;
  p.cols = cols;
  p.rows_p = round_up(rows, kRowAlign);
  p.cols_p = round_up(cols, kColAlign);
  p.values_cols = round_up(cols, kValuesColAlign);
  return p;
}

// Packs metadata byte (row, byte) (dense columns [8 byte, 8 byte + 8)) and its 4 values; returns the lowest
// bad canonical group or -1, as pack_word. packed_meta is read as bytes.
SF_HOST_DEVICE int64_t pack_byte(const PackParams& p, int64_t row, int64_t byte) {
  const int64_t groups = p.cols / 4;
  // values_cols is a multiple of 16: a byte's 8 columns are all in the values row or all past it
  const bool has_values = byte * kColsPerByte < p.values_cols;
  uint16_t* out_values = p.packed_values + row * (p.values_cols / 2) + byte * 4;
  uint32_t bits = 0;
  int64_t bad = -1;
  for (int g = 0; g < 2; ++g) {
    const int64_t group = byte * 2 + g;
    uint32_t code = kPadCode;
    uint16_t v0 = 0, v1 = 0;
    if (row < p.rows && group < groups) {
      const int64_t at = row * (p.cols / 2) + group * 2;
      const uint32_t i0 = p.indices[at], i1 = p.indices[at + 1];
      if (!(i0 < i1 && i1 < 4) && bad < 0) bad = row * groups + group;
      code = (i0 & 3u) | ((i1 & 3u) << 2);
      v0 = p.values[at];
      v1 = p.values[at + 1];
    }
    bits |= code << (4 * g);
    if (has_values) {
      out_values[2 * g] = v0;
      out_values[2 * g + 1] = v1;
    }
  }
  static_cast<uint8_t*>(p.packed_meta)[meta_offset(row, byte * kColsPerByte, p.rows_p) / 8] =
      static_cast<uint8_t>(bits);
  return bad;
}

int64_t pack_cpu(const PackParams& p, int64_t row_begin, int64_t row_end);
void pack_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);

}  // namespace sm90

// ---------------------------------------------------------------------------------------------- linear
enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kSilu = 3 };
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

// y[tokens, out] = act(x[tokens, in] @ W[out, in]^T + bias[out]), computed as the
// transposed problem D[out, tokens] = W x^T (only the first operand of mma.sp can be sparse), written
// straight into y's row-major storage (D column-major).
struct LinearParams {
  int64_t tokens = 0;        // GEMM N
  int64_t out_features = 0;  // rows of W that exist (GEMM M is rows_p)
  int64_t in_features = 0;   // GEMM K (target 80: a multiple of kColAlign; 90: of 16)
  int64_t rows_p = 0;        // padded rows of the packed weight (target 80: the GEMM M)
  const void* x = nullptr;   // [tokens, in], unit inner stride
  int64_t x_stride = 0;      // elements between tokens, a multiple of 8
  const void* values = nullptr;     // packed_values [rows_p, in/2]
  const void* meta = nullptr;       // packed_meta (target 80: int16 words; 90: bytes)
  const void* bias = nullptr;       // [out], the dtype of x or float32 (bias_fp32), or null
  bool bias_fp32 = false;
  void* y = nullptr;                // [tokens, out] row-major, dense
  DType in_dtype = DType::kFloat16;
  DType out_dtype = DType::kFloat16;
  Activation activation = Activation::kNone;
};

// Launch on `stream` (one instantiation set per input dtype, in nm_linear_<dtype>_sm80.cu). Return nullptr
// on success, else a static message (a CUDA launch error string).
const char* linear_sm80_f16(const LinearParams& p, void* stream);
const char* linear_sm80_bf16(const LinearParams& p, void* stream);

inline const char* linear_sm80(const LinearParams& p, void* stream) {
  return p.in_dtype == DType::kBFloat16 ? linear_sm80_bf16(p, stream) : linear_sm80_f16(p, stream);
}

// The same for packed weights of target 90 (sm_90a only; nm_linear_<in>_<out>out_sm90.cu). Only in builds with
// sm90a (SPARSEFLOW_HAS_SM90).
const char* linear_sm90_f16_f16out(const LinearParams& p, void* stream);
const char* linear_sm90_f16_f32out(const LinearParams& p, void* stream);
const char* linear_sm90_bf16_bf16out(const LinearParams& p, void* stream);
const char* linear_sm90_bf16_f32out(const LinearParams& p, void* stream);

inline const char* linear_sm90(const LinearParams& p, void* stream) {
  const bool f32 = p.out_dtype == DType::kFloat32;
  if (p.in_dtype == DType::kBFloat16) {
    return f32 ? linear_sm90_bf16_f32out(p, stream) : linear_sm90_bf16_bf16out(p, stream);
  }
  return f32 ? linear_sm90_f16_f32out(p, stream) : linear_sm90_f16_f16out(p, stream);
}

}  // namespace sparseflow::nm::cutlass2x
