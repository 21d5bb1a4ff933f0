// CUDA N:M pack/unpack: one thread per group (packing is memory-bound; a group is at most 64 elements).
// Torch-free: the wrapper in nm_pack_cuda.cpp allocates, checks and reports.
#include <cuda_runtime.h>

#include <cstdint>

#include "nm.h"
#include "nm_group.h"

namespace sparseflow::nm {
namespace {

template <typename Bits, bool kCompress>
__global__ void pack_kernel(PackParams p, int64_t* first_bad_group) {
  const int64_t groups = p.cols / p.m;
  const int64_t total = p.rows * groups;
  for (int64_t flat = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; flat < total;
       flat += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = flat / groups;
    const int64_t g = flat - r * groups;
    Bits* d = static_cast<Bits*>(const_cast<void*>(p.dense)) + r * p.cols + g * p.m;
    Bits* v = static_cast<Bits*>(p.values) + flat * p.n;
    uint8_t* idx = p.indices + flat * p.n;
    const bool ok = kCompress ? compress_group(d, p.n, p.m, p.kind.value_mask, v, idx)
                              : decompress_group(v, idx, p.n, p.m, d);
    if (!ok) atomicMin(reinterpret_cast<unsigned long long*>(first_bad_group),
                       static_cast<unsigned long long>(flat));
  }
}

template <bool kCompress>
void launch(const PackParams& p, int64_t* first_bad_group, void* stream) {
  const int64_t total = p.rows * (p.cols / p.m);
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.kind.bytes) {
    case 1: pack_kernel<uint8_t, kCompress><<<grid, kThreads, 0, s>>>(p, first_bad_group); break;
    case 2: pack_kernel<uint16_t, kCompress><<<grid, kThreads, 0, s>>>(p, first_bad_group); break;
    case 4: pack_kernel<uint32_t, kCompress><<<grid, kThreads, 0, s>>>(p, first_bad_group); break;
  }
}

}  // namespace

void compress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream) {
  launch<true>(p, first_bad_group, stream);
}

void decompress_cuda(const PackParams& p, int64_t* first_bad_group, void* stream) {
  launch<false>(p, first_bad_group, stream);
}

}  // namespace sparseflow::nm
