// CUDA packing of canonical 2:4 weights into the CUTLASS layouts (nm_cutlass.h): one thread per metadata
// word (target 80: 16 dense columns of one row, 8 values) or byte (target 90: 8 columns, 4 values). Built
// for every arch: packing for sm90 also runs anywhere.
#include <cuda_runtime.h>

#include <cstdint>

#include "nm_cutlass.h"

namespace sparseflow::nm::cutlass2x {
namespace {

template <bool kSm90>
__global__ void pack_kernel(PackParams p, int64_t* first_bad_group) {
  const int64_t units = p.cols_p / (kSm90 ? sm90::kColsPerByte : kColsPerWord);
  const int64_t total = p.rows_p * units;
  for (int64_t flat = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; flat < total;
       flat += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = flat / units;
    const int64_t unit = flat - row * units;
    const int64_t bad = kSm90 ? sm90::pack_byte(p, row, unit) : pack_word(p, row, unit);
    if (bad >= 0) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad_group), static_cast<unsigned long long>(bad));
    }
  }
}

template <bool kSm90>
void launch(const PackParams& p, int64_t* first_bad_group, void* stream) {
  const int64_t total = p.rows_p * (p.cols_p / (kSm90 ? sm90::kColsPerByte : kColsPerWord));
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  pack_kernel<kSm90><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, first_bad_group);
}

}  // namespace

void pack_cuda(const PackParams& p, int64_t* first_bad_group, void* stream) {
  launch<false>(p, first_bad_group, stream);
}

void sm90::pack_cuda(const PackParams& p, int64_t* first_bad_group, void* stream) {
  launch<true>(p, first_bad_group, stream);
}

}  // namespace sparseflow::nm::cutlass2x
