// CUDA packing of canonical 2:4 weights into the CUTLASS 2.x layout (nm_cutlass.h): one thread per
// metadata word (16 dense columns of one row), so every thread writes its 8 values and one int16 word.
#include <cuda_runtime.h>

#include <cstdint>

#include "nm_cutlass.h"

namespace sparseflow::nm::cutlass2x {
namespace {

__global__ void pack_kernel(PackParams p, int64_t* first_bad_group) {
  const int64_t words = p.cols_p / kColsPerWord;
  const int64_t total = p.rows_p * words;
  for (int64_t flat = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; flat < total;
       flat += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = flat / words;
    const int64_t bad = pack_word(p, row, flat - row * words);
    if (bad >= 0) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad_group), static_cast<unsigned long long>(bad));
    }
  }
}

}  // namespace

void pack_cuda(const PackParams& p, int64_t* first_bad_group, void* stream) {
  const int64_t total = p.rows_p * (p.cols_p / kColsPerWord);
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  pack_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, first_bad_group);
}

}  // namespace sparseflow::nm::cutlass2x
