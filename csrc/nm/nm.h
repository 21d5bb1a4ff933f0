// N:M family: torch-free declarations shared by the CPU and CUDA kernels.
//
// Canonical format (python/sparseflow/formats.py, NMWeight): a dense [rows, cols] matrix whose every
// group of m consecutive columns holds at most n non-zeros is stored as
//   values  [rows, cols/m*n]  the kept entries, in column order
//   indices [rows, cols/m*n]  uint8, the position of each kept entry inside its group, strictly ascending.
// A group with fewer than n non-zeros is padded with zeros at the lowest free positions, so every group
// has exactly n entries (what the tensor-core metadata needs).
#pragma once

#include <cstdint>

namespace sparseflow::nm {

constexpr int kMaxM = 64;  // groups are tracked in a 64-bit mask

// How an element's bits say "zero": float types ignore the sign bit so -0.0 counts as zero
// (a dense -0.0 must not be mistaken for a kept weight).
struct ElementKind {
  int bytes;          // 1, 2 or 4
  uint32_t value_mask;  // bits that must all be 0 for the element to be zero
};

struct PackParams {
  int64_t rows = 0;
  int64_t cols = 0;  // dense columns, a multiple of m
  int n = 0;
  int m = 0;
  ElementKind kind{};
  const void* dense = nullptr;  // [rows, cols], row-major contiguous
  void* values = nullptr;       // [rows, cols/m*n]
  uint8_t* indices = nullptr;   // [rows, cols/m*n]
};

// Result of a pack/unpack pass: -1 when every group was valid, else the lowest flat group index
// (row * cols/m + group) that was not, so the caller can name it.
constexpr int64_t kAllGroupsValid = -1;

int64_t compress_cpu(const PackParams& p, int64_t row_begin, int64_t row_end);
int64_t decompress_cpu(const PackParams& p, int64_t row_begin, int64_t row_end);

// ---------------------------------------------------------------------------------------------- nm_linear
// CPU packed layout (nm_pack on CPU; the same for every ISA level, so a weight packed under one level runs
// under any other):
//   packed_values  the canonical values, contiguous [rows, cols/m*n] (the kernels read them in order)
//   packed_meta    uint8 [rows, meta_row_bytes(cols)]: one bit per dense column, set where a value is kept
//                  (padding included, so a row has exactly cols/m*n set bits). Columns come in chunks of 64,
//                  one little-endian 64-bit word each, bits beyond `cols` are 0. Bit order inside a word:
//                  float weights: bit c is column c (so a 16-column piece is one 16-bit mask for vexpandps);
//                  int8 weights:  nibble j holds the 4 columns of group-of-4 `kInt8NibbleGroup[j]` (the order
//                                 vpsrlvd leaves the nibbles in after a 64-bit broadcast; see *_avx512_vnni.cpp).
// int8 2:4 / 4:8 and fp32 / bf16 2:4 weights use the lane layouts of nm_lanes.h instead (16 rows interleaved,
// one dword lane per row; build_meta_cpu writes the int8 meta when int8_layout is set and n:m is one of them,
// pack_float_lanes the float one).
constexpr int64_t kMetaChunk = 64;
inline int64_t meta_row_bytes(int64_t cols) { return (cols + kMetaChunk - 1) / kMetaChunk * 8; }

// Nibble j of an int8 meta word covers columns 4*kInt8NibbleGroup[j] .. +3 of its 64-column chunk.
constexpr int kInt8NibbleGroup[16] = {0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15};

// Bit index of chunk column c (0..63) inside its meta word.
inline int meta_bit(int c, bool int8_layout) {
  if (!int8_layout) return c;
  const int group = c / 4;
  const int nibble = group % 2 == 0 ? group / 2 : 8 + group / 2;
  return nibble * 4 + c % 4;
}

struct MetaParams {
  int64_t rows = 0;
  int64_t cols = 0;  // dense columns (in_features), a multiple of m
  int n = 0;
  int m = 0;
  bool int8_layout = false;
  const uint8_t* indices = nullptr;  // canonical [rows, cols/m*n]
  uint8_t* meta = nullptr;           // [rows, meta_row_bytes(cols)]
};

// Builds packed_meta rows; validates the positions like decompress_cpu (returns the lowest bad group).
int64_t build_meta_cpu(const MetaParams& p, int64_t row_begin, int64_t row_end);

enum class Scalar : int8_t { kFloat32, kBFloat16, kFloat16, kInt8 };
enum class Activation : int8_t { kNone, kRelu, kGelu, kSilu };

// y[t, j] = act(sum_k x[t, k] * W[j, k] + bias[j]) for W in the CPU packed layout.
// int8 weights: x is quantized per token (symmetric s8, scale = amax/127, q = round-half-even(x * (127/amax)),
// all in fp32) by quantize_rows_*; the int32 accumulator acc[t, j] = sum_k q[t, k] * W[j, k] is exact and
// y = act(fma(float(acc), x_scale[t] * weight_scale[j], bias[j])).
struct LinearParams {
  int64_t tokens = 0;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int n = 0;
  int m = 0;
  Scalar weight = Scalar::kFloat32;
  Scalar out = Scalar::kFloat32;
  Activation act = Activation::kNone;
  // float weights: fp32 activations [tokens, x_stride] (bf16 / fp16 input is widened by the caller)
  const float* x = nullptr;
  int64_t x_stride = 0;
  // bf16 2:4 weights at the AVX512_BF16 level instead: the bf16 activations [tokens, x_stride] as given
  const uint16_t* x_bf16 = nullptr;
  // float weights in the row-major layout with tokens >= kWideTokens at the AVX-512 level: the same
  // activations token-interleaved, [in_features][ceil(tokens/16)][16] (a column's token blocks adjacent), zero
  // past `tokens` (interleave_tokens_avx512), else null.
  const float* xt = nullptr;
  // int8 weights: quantized activations [tokens, xq_stride], xq_stride a multiple of 64, zero past
  // in_features (stored +128 as uint8 for the VNNI kernel, which needs u8 x s8; plain s8 for the portable
  // one); per-token scales
  const int8_t* xq = nullptr;
  int64_t xq_stride = 0;
  const float* x_scale = nullptr;
  const void* values = nullptr;  // packed_values
  const uint8_t* meta = nullptr;  // packed_meta
  const float* bias = nullptr;          // [out_features] or null
  const float* weight_scale = nullptr;  // [out_features], int8 only
  void* y = nullptr;  // [tokens, y_stride] of `out`
  int64_t y_stride = 0;
};

// Each computes output columns [row_begin, row_end) for every token.
void linear_portable(const LinearParams& p, int64_t row_begin, int64_t row_end);
void linear_avx512(const LinearParams& p, int64_t row_begin, int64_t row_end);       // float weights
void linear_avx512_vnni(const LinearParams& p, int64_t row_begin, int64_t row_end);  // int8 weights
// From this many tokens linear_avx512 broadcasts each kept weight against 16 tokens at a time (only the
// kept products are computed) instead of expanding rows against a token's 16 columns.
constexpr int64_t kWideTokens = 32;
// Fills token blocks [block_begin, block_end) of LinearParams::xt from x [tokens, x_stride].
void interleave_tokens_avx512(const float* x, int64_t x_stride, int64_t tokens, int64_t cols, float* xt,
                              int64_t block_begin, int64_t block_end);

// Patterns the VNNI kernel handles (others run portable): m in {4, 8}, n in {1, 2, 4}, n < m.
bool vnni_supports(int n, int m);

// Per-token quantization of rows [t_begin, t_end) (see LinearParams); columns past `cols` hold q = 0. With
// `biased`, q + 128 is stored (as the uint8 bit pattern), for linear_avx512_vnni.
struct QuantizeParams {
  const float* x = nullptr;
  int64_t x_stride = 0;
  int64_t cols = 0;
  int8_t* xq = nullptr;
  int64_t xq_stride = 0;
  float* scale = nullptr;
  bool biased = false;
};
void quantize_rows_portable(const QuantizeParams& q, int64_t t_begin, int64_t t_end);
void quantize_rows_avx512(const QuantizeParams& q, int64_t t_begin, int64_t t_end);

// CUDA: same contract, asynchronous on `stream`; the lowest bad group index is atomically min-ed into
// *first_bad_group (which the caller initialises to INT64_MAX).
void compress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);
void decompress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);

}  // namespace sparseflow::nm
