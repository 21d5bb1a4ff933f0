// CUDA nm_compress(prune=True): one pass, no validation and so no flag to read back.
// Groups never straddle rows (cols % m == 0), so the tensor is one flat run of groups. For 1:4, 2:4 and
// 4:8 on a 16-byte aligned input each thread takes a tile of whole groups that is a whole number of
// 16-byte loads (8 fp16 = two 2:4 groups), keeps everything in registers and writes its values and
// positions with the widest aligned stores: a warp reads and writes contiguous bytes. Other patterns,
// misaligned inputs and the last partial tile take one thread per group.
// Torch-free: the wrapper in nm_pack_cuda.cpp allocates and checks.
#include <cuda_runtime.h>

#include <cstdint>

#include "nm_prune.h"

namespace sparseflow::nm {
namespace {

template <typename Key, int kM>
struct Tile {
  using Bits = typename Key::Bits;
  static constexpr int kSize = int(sizeof(Bits));
  static constexpr int kPerLoad = 16 / kSize;
  static constexpr int kElems = kPerLoad > kM ? kPerLoad : kM;  // both powers of two
  static constexpr int kLoads = kElems / kPerLoad;
  static constexpr int kGroups = kElems / kM;
};

// Element k of little-endian packed words (k is a compile-time constant after unrolling).
template <int kSize>
__host__ __device__ __forceinline__ uint32_t element(const uint32_t* words, int k) {
  const uint32_t w = words[k * kSize / 4] >> (8 * (k * kSize % 4));
  return kSize == 4 ? w : w & ((1u << (8 * kSize)) - 1);
}

// Stores kBytes of packed words to dst, which is aligned to the largest power of two <= 16 dividing kBytes
// (true for dst = base + tile * kBytes), with the widest stores that allows.
template <int kBytes>
__host__ __device__ __forceinline__ void store(void* dst, const uint32_t* w) {
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      static_cast<uint4*>(dst)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
    }
  } else if constexpr (kBytes % 8 == 0) {
    *static_cast<uint2*>(dst) = make_uint2(w[0], w[1]);  // kBytes == 8
  } else if constexpr (kBytes % 4 == 0) {
    *static_cast<uint32_t*>(dst) = w[0];  // kBytes == 4
  } else if constexpr (kBytes == 2) {
    *static_cast<uint16_t*>(dst) = static_cast<uint16_t>(w[0]);
  } else {
    static_assert(kBytes == 1, "tile outputs are 1, 2, 4, 8 or 16k bytes");
    *static_cast<uint8_t*>(dst) = static_cast<uint8_t>(w[0]);
  }
}

// One tile, all in registers: elements are read out of the loaded words and the outputs are OR-ed into
// words by shifts (no arrays whose address escapes, which would go to local memory). Host-callable so the
// exact tile logic can be checked without a GPU.
template <typename Key, int kM, int kN>
__host__ __device__ __forceinline__ void prune_tile(const uint4* __restrict__ dense,
                                                    typename Key::Bits* __restrict__ values,
                                                    uint8_t* __restrict__ indices, int64_t t) {
  using T = Tile<Key, kM>;
  constexpr int kS = T::kSize;
  constexpr int kOut = T::kGroups * kN;
  constexpr int kValueBytes = kOut * kS;
  uint32_t in[4 * T::kLoads];
#pragma unroll
  for (int l = 0; l < T::kLoads; ++l) {
#if defined(__CUDA_ARCH__)
    const uint4 v = __ldg(dense + t * T::kLoads + l);
#else
    const uint4 v = dense[t * T::kLoads + l];
#endif
    in[4 * l] = v.x, in[4 * l + 1] = v.y, in[4 * l + 2] = v.z, in[4 * l + 3] = v.w;
  }
  uint32_t out_values[(kValueBytes + 3) / 4] = {};
  uint32_t out_indices[(kOut + 3) / 4] = {};
#pragma unroll
  for (int g = 0; g < T::kGroups; ++g) {
    uint32_t keys[kM];
#pragma unroll
    for (int j = 0; j < kM; ++j) keys[j] = Key::key(static_cast<typename Key::Bits>(element<kS>(in, g * kM + j)));
    uint64_t keep = prune_keep_mask<kM>(keys, kN, kM);
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int j = lowest_bit(keep);
      keep &= keep - 1;
      uint32_t value = 0;  // kept zeros are written as +0 (nm_compress's padding)
#pragma unroll
      for (int k = 0; k < kM; ++k) value = k == j && keys[k] != 0 ? element<kS>(in, g * kM + k) : value;
      const int o = g * kN + i;
      out_values[o * kS / 4] |= value << (8 * (o * kS % 4));
      out_indices[o / 4] |= static_cast<uint32_t>(j) << (8 * (o % 4));
    }
  }
  store<kValueBytes>(values + t * kOut, out_values);
  store<kOut>(indices + t * kOut, out_indices);
}

template <typename Key, int kM, int kN>
__global__ void __launch_bounds__(256) prune_tiles_kernel(const uint4* __restrict__ dense,
                                                          typename Key::Bits* __restrict__ values,
                                                          uint8_t* __restrict__ indices, int64_t tiles) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < tiles;
       t += int64_t(gridDim.x) * blockDim.x) {
    prune_tile<Key, kM, kN>(dense, values, indices, t);
  }
}

// Any n:m, any alignment: groups [group_begin, group_end), one per thread.
template <typename Key>
__global__ void prune_groups_kernel(PackParams p, int64_t group_begin, int64_t group_end) {
  using Bits = typename Key::Bits;
  const auto* dense = static_cast<const Bits*>(p.dense);
  auto* values = static_cast<Bits*>(p.values);
  for (int64_t g = group_begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < group_end;
       g += int64_t(gridDim.x) * blockDim.x) {
    prune_group<Key, 0>(dense + g * p.m, p.n, p.m, values + g * p.n, p.indices + g * p.n);
  }
}

constexpr int kThreads = 256;

unsigned grid_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

// Launches the tile kernel over the whole tiles and returns how many groups it covers.
template <typename Key, int kM, int kN>
int64_t launch_tiles(const PackParams& p, int64_t groups, cudaStream_t s) {
  using T = Tile<Key, kM>;
  const int64_t tiles = groups / T::kGroups;
  if (tiles == 0) return 0;
  prune_tiles_kernel<Key, kM, kN><<<grid_for(tiles), kThreads, 0, s>>>(
      static_cast<const uint4*>(p.dense), static_cast<typename Key::Bits*>(p.values), p.indices, tiles);
  return tiles * T::kGroups;
}

template <typename Key>
void launch(const PackParams& p, cudaStream_t s) {
  const int64_t groups = p.rows * (p.cols / p.m);
  if (groups == 0) return;
  int64_t done = 0;
  if (reinterpret_cast<uintptr_t>(p.dense) % 16 == 0) {
    if (p.m == 4 && p.n == 2) done = launch_tiles<Key, 4, 2>(p, groups, s);
    else if (p.m == 4 && p.n == 1) done = launch_tiles<Key, 4, 1>(p, groups, s);
    else if (p.m == 8 && p.n == 4) done = launch_tiles<Key, 8, 4>(p, groups, s);
  }
  if (done < groups) prune_groups_kernel<Key><<<grid_for(groups - done), kThreads, 0, s>>>(p, done, groups);
}

}  // namespace

void prune_compress_cuda(const PackParams& p, PruneDtype dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case PruneDtype::kFloat32: return launch<KeyFloat32>(p, s);
    case PruneDtype::kFloat16: return launch<KeyFloat16>(p, s);
    case PruneDtype::kBFloat16: return launch<KeyBFloat16>(p, s);
    case PruneDtype::kFloat8E4M3: return launch<KeyFloat8E4M3>(p, s);
    case PruneDtype::kInt8: return launch<KeyInt8>(p, s);
  }
}

}  // namespace sparseflow::nm
