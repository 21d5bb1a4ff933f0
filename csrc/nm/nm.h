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

// CUDA: same contract, asynchronous on `stream`; the lowest bad group index is atomically min-ed into
// *first_bad_group (which the caller initialises to INT64_MAX).
void compress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);
void decompress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream);

}  // namespace sparseflow::nm
