// The lane layouts of int8 2:4 / 4:8 and bf16 / fp32 2:4 weights on the CPU (torch-free; CPU files only, so nm.h and
// the CUDA files that include it stay untouched).
//
// int8 2:4 and 4:8: both patterns keep 4 of every 8 columns. nm_linear's VNNI kernel gives each of 16 output
// rows one dword lane of a zmm holding its 4 kept weights of 8 columns; a vpshufb picks the 4 activations they
// multiply from the 8 broadcast ones (its control comes from the two 4-column masks through two 16-entry vpermd
// tables: the first half's kept columns fill the control from byte 0, the second half's end at byte 3, which
// is where they go when the 8 columns keep exactly 4). One vpdpbusd then does 16 rows x 4 real multiply-adds
// (the row-major kernel re-densifies and does 2 real ones in 4), and the weights stream as one contiguous run
// per 16 rows.
//
// Both: rows come in blocks of kLaneRows (the last block holds the rest, h = rows - 16 * block rows); a block
// occupies the bytes its rows have in the row-major tensors, so the tensor shapes do not change:
// int8:
//   packed_values  [rows, cols/2]: for each 8-column unit u of the block, h dwords; lane l = the 4 kept
//                  values of row l in columns 8u .. 8u+7, in column order. When cols % 8 == 4 (2:4 only), a
//                  last half unit of h 16-bit words (the 2 kept values of the last group of 4).
//   packed_meta    [rows, meta_row_bytes(cols)]: for each 32-column unit v, h dwords; nibble j of lane l =
//                  the kept mask of row l's columns 4 (8v + j) .. +3 (bit i = column 4 (8v + j) + i), 0 past
//                  cols. When ceil(cols / 32) is odd, h zero dwords fill the rest of the block.
//
// bf16 and fp32 2:4: a zmm lane is again an output row. Per group of 4 columns, a load gives the 16 rows' kept
// weights in their lanes (bf16: both in one dword, which a vpslld / vpandd pair, no shuffle, makes fp32; fp32:
// one load each), and two vpermilps pick each row's 2 activations from the group's 4 broadcast to every 128-bit
// lane, with the positions straight from the meta as control. Per 16 rows and 4 columns that is 6-8 uops and no
// horizontal sum, where the row-major kernel spends a widen and a vexpandps (both on the shuffle port) per row
// and 16 columns:
//   packed_values  [rows, cols/2]: dword units of h dwords, lane l = row l. bf16: unit g = group g, bits 0-15
//                  the first kept value, 16-31 the second (column order). fp32: units 2g and 2g + 1 = group
//                  g's first and second kept values.
//   packed_meta    [rows, meta_row_bytes(cols)]: for each 32-column unit v, h dwords; nibble j of lane l = the
//                  positions of row l's 2 kept values in group 8v + j (bits 0-1 the first, 2-3 the second), 0
//                  past cols. When ceil(cols / 32) is odd, h zero dwords fill the rest of the block.
//
// Values sit at fixed places whatever the meta says, and a position is 2 bits, so a corrupted meta gives wrong
// numbers, never a read outside the weight or the activations.
#pragma once

#include <algorithm>
#include <cstdint>

#include "nm.h"

namespace sparseflow::nm {

constexpr int kLaneRows = 16;

inline bool uses_lane_layout(Scalar weight, int n, int m) {
  if (weight == Scalar::kInt8) return (n == 2 && m == 4) || (n == 4 && m == 8);
  return (weight == Scalar::kBFloat16 || weight == Scalar::kFloat32) && n == 2 && m == 4;
}

// Rows in the block that starts at row `first` (a multiple of kLaneRows).
inline int lane_block_height(int64_t rows, int64_t first) {
  return static_cast<int>(std::min<int64_t>(kLaneRows, rows - first));
}

// Byte offset, from the start of a tensor of `row_bytes` per row, of row `row`'s dword in unit u of its block:
// every lane-layout tensor holds its blocks' units this way.
inline int64_t lane_dword_offset(int64_t rows, int64_t row_bytes, int64_t row, int64_t u) {
  const int64_t first = row / kLaneRows * kLaneRows;
  return first * row_bytes + (u * lane_block_height(rows, first) + row - first) * 4;
}
// int8 values (unit u: 8 columns) and meta of either layout (unit v: 32 columns).
inline int64_t lane_value_offset(int64_t rows, int64_t cols, int64_t row, int64_t u) {
  return lane_dword_offset(rows, cols / 2, row, u);
}
inline int64_t lane_meta_offset(int64_t rows, int64_t cols, int64_t row, int64_t v) {
  return lane_dword_offset(rows, meta_row_bytes(cols), row, v);
}
// The last half unit's 16-bit word of an int8 row (cols % 8 == 4).
inline int64_t lane_half_value_offset(int64_t rows, int64_t cols, int64_t row) {
  const int64_t first = row / kLaneRows * kLaneRows;
  const int h = lane_block_height(rows, first);
  return first * (cols / 2) + (cols / 8) * 4 * h + (row - first) * 2;
}

// int8: packed_values of rows [row_begin, row_end) (whole blocks) from the canonical values [rows, cols/2].
void pack_lane_values(const int8_t* values, int64_t rows, int64_t cols, int8_t* packed, int64_t row_begin,
                      int64_t row_end);

// nm_linear for int8 weights in the lane layout, AVX512_VNNI; row_begin a multiple of kLaneRows and
// row_end one too or out_features. Activations xq as for linear_avx512_vnni (biased, natural column order).
void linear_lanes_avx512_vnni(const LinearParams& p, int64_t row_begin, int64_t row_end);

// bf16 / fp32 2:4: packed_values and packed_meta of rows [row_begin, row_end) from the canonical values
// (`value_bytes` 2 or 4 each) and indices; returns the lowest bad group like build_meta_cpu (the rows' meta is
// then incomplete).
int64_t pack_float_lanes(const MetaParams& p, const void* values, int value_bytes, void* packed, int64_t row_begin,
                         int64_t row_end);

// nm_linear for bf16 / fp32 2:4 weights in the lane layout, AVX-512F, any token count (passes of up to 8 tokens;
// it beats the broadcast-based wide kernel of the row-major layout from 1 to 128 tokens); rows as for
// linear_lanes_avx512_vnni.
void linear_lanes_float_avx512(const LinearParams& p, int64_t row_begin, int64_t row_end);

// The same for bf16 2:4 at the AVX512_BF16 level: vdpbf16ps on the layout's weight pairs, activations from
// LinearParams::x_bf16.
void linear_lanes_bf16_avx512bf16(const LinearParams& p, int64_t row_begin, int64_t row_end);

}  // namespace sparseflow::nm
