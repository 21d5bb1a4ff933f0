// Tensor-core BSR linear: y[M, out] = act(x[M, in] @ W^T + bias), W in T x T blocks (bsr_cuda.h).
//
// One CTA computes a BM x T tile of y: BM tokens times the T outputs of one block-row. It walks that block-row's
// blocks; for each it stages x[m0:m0+BM, k0:k0+T] and the T x T block in shared memory with cp.async (double
// buffered: the next block loads while this one multiplies) and runs mma.sync m16n8k16 (fp16/bf16 in, fp32
// accumulate). x tiles are the row-major A operand; a W block stored [out][in] is exactly the "col" B operand,
// so y comes out row-major with no transposition. Empty block-rows still write act(bias).
// Built for every arch (mma.sync m16n8k16 and ldmatrix exist from sm80 on). Torch-free.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "bsr_cuda.h"

namespace sparseflow::bsr::cuda {
namespace {

// ------------------------------------------------------------------------------------------------ pack

__global__ void pack_kernel(PackParams p) {
  const int T = p.block;
  const int chunks_per_block = T * T / 8;
  const int64_t total = p.nnz * chunks_per_block;
  const int64_t last_row_begin = p.block_rows > 0 ? p.crow[p.block_rows - 1] : 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / chunks_per_block;
    const int e = int(i - b * chunks_per_block) * 8;  // element index within the block
    const int r = e / T, c = e % T;
    if (c == 0 && r == 0) p.indices[b] = static_cast<int16_t>(static_cast<uint16_t>(p.col[b] * T));
    const int64_t k = int64_t(p.col[b]) * T + c;
    const bool row_in = b < last_row_begin || (p.block_rows - 1) * int64_t(T) + r < p.out_features;
    const uint16_t* src = p.values + b * T * T + e;
    uint16_t* dst = p.packed_values + b * T * T + e;
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = (row_in && k + j < p.in_features) ? src[j] : uint16_t(0);
  }
}

// One thread per canonical entry: (row, k) and its bits, or false for entries outside [out, in] and zeros.
__device__ __forceinline__ bool recut_entry(const RecutParams& p, int64_t i, int64_t& row, int64_t& k,
                                            uint16_t& bits) {
  const int64_t per_block = p.R * p.C;
  const int64_t b = i / per_block, e = i - b * per_block;
  const int64_t r = e / p.C, c = e - r * p.C;
  row = int64_t(p.block_row[b]) * p.R + r;
  k = int64_t(p.col[b]) * p.C + c;
  bits = p.values[i];
  return row < p.out_features && k < p.in_features && (bits & 0x7fff) != 0;  // sign bit off: -0.0 is zero
}

__global__ void recut_mark_kernel(RecutParams p) {
  const int64_t total = p.nnz * p.R * p.C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t row, k;
    uint16_t bits;
    if (recut_entry(p, i, row, k, bits)) p.tile_flag[(row / p.block) * p.tile_cols + k / p.block] = 1;
  }
}

// Canonical blocks do not overlap, so every tile element is written by at most one thread.
__global__ void recut_fill_kernel(RecutParams p) {
  const int64_t total = p.nnz * p.R * p.C;
  const int64_t T = p.block;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t row, k;
    uint16_t bits;
    if (!recut_entry(p, i, row, k, bits)) continue;
    const int64_t slot = p.tile_slot[(row / T) * p.tile_cols + k / T] - 1;
    p.packed_values[(slot * T + row % T) * T + k % T] = bits;
  }
}

// ------------------------------------------------------------------------------------------------ linear

template <int T, int BM>
struct Tiling {
  static constexpr int kWarpsM = BM == 16 ? 1 : (T == 16 ? 4 : 2);
  static constexpr int kWarpsN = BM == 16 ? T / 16 : (T == 128 ? 4 : (T == 16 ? 1 : 2));
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpM = BM / kWarpsM;  // tokens per warp
  static constexpr int kWarpN = T / kWarpsN;   // outputs per warp
  static constexpr int kMI = kWarpM / 16;      // m16 tiles per warp
  static constexpr int kNI = kWarpN / 8;       // n8 tiles per warp (pairs are loaded by one ldmatrix.x4)
  static constexpr int kLd = T + 8;            // smem row stride in elements: +16 B keeps ldmatrix conflict-free
  static constexpr int kStage = BM * kLd + T * kLd;
  static constexpr int kSmemBytes = 2 * kStage * 2;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole m16 x (2 x n8) tiles");
};

__device__ __forceinline__ void cp_async16(void* smem, const void* global, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: fill with zeros (tokens past M, channels past in_features)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <bool kBF16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBF16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <bool kBF16>
__device__ __forceinline__ float to_float(uint16_t bits) {
  if constexpr (kBF16) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

template <bool kBF16>
__device__ __forceinline__ uint16_t from_float(float v) {
  if constexpr (kBF16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  } else {
    return __half_as_ushort(__float2half_rn(v));
  }
}

__device__ __forceinline__ float activate(float v, Activation act) {
  switch (act) {
    case Activation::kRelu: return v < 0.f ? 0.f : v;  // keeps NaN, like torch.relu
    case Activation::kGelu: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));  // exact (erf) GELU
    case Activation::kSilu: return v / (1.f + expf(-v));
    default: return v;
  }
}

// Two adjacent outputs (col, col + 1) of one token: bias, activation, conversion, bounds.
template <bool kBF16>
__device__ __forceinline__ void store_pair(const LinearParams& p, int64_t row, int64_t col, float v0, float v1) {
  if (row >= p.tokens) return;
  float v[2] = {v0, v1};
  const int64_t N = p.out_features;
  const bool pair = col + 1 < N && N % 2 == 0;  // both exist and the pair is 4/8-byte aligned
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    float b = 0.f;
    if (p.bias != nullptr && col + j < N) {
      b = p.bias_fp32 ? static_cast<const float*>(p.bias)[col + j]
                      : to_float<kBF16>(static_cast<const uint16_t*>(p.bias)[col + j]);
    }
    v[j] = activate(v[j] + b, p.activation);
  }
  const int64_t at = row * N + col;
  if (p.out_fp32) {
    float* y = static_cast<float*>(p.y) + at;
    if (pair) {
      *reinterpret_cast<float2*>(y) = make_float2(v[0], v[1]);
    } else {
      if (col < N) y[0] = v[0];
      if (col + 1 < N) y[1] = v[1];
    }
  } else {
    uint16_t* y = static_cast<uint16_t*>(p.y) + at;
    const uint16_t h0 = from_float<kBF16>(v[0]), h1 = from_float<kBF16>(v[1]);
    if (pair) {
      *reinterpret_cast<uint32_t*>(y) = uint32_t(h0) | (uint32_t(h1) << 16);
    } else {
      if (col < N) y[0] = h0;
      if (col + 1 < N) y[1] = h1;
    }
  }
}

template <int T, int BM, bool kBF16>
__global__ void __launch_bounds__(Tiling<T, BM>::kThreads) linear_kernel(const LinearParams p) {
  using Tl = Tiling<T, BM>;
  extern __shared__ __align__(16) uint16_t smem[];
  const int block_row = blockIdx.x;
  const int64_t m0 = int64_t(blockIdx.y) * BM;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / Tl::kWarpsN, warp_n = warp % Tl::kWarpsN;
  const int begin = p.rowptr[block_row], end = p.rowptr[block_row + 1];
  const auto* x = static_cast<const uint16_t*>(p.x);
  const auto* w = static_cast<const uint16_t*>(p.values);

  float acc[Tl::kMI][Tl::kNI][4];
#pragma unroll
  for (int mi = 0; mi < Tl::kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Tl::kNI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.f;

  constexpr int kChunks = T / 8;  // 16-byte chunks per tile row
  auto load = [&](int stage, int blk) {
    uint16_t* sx = smem + stage * Tl::kStage;
    uint16_t* sw = sx + BM * Tl::kLd;
    const int64_t k0 = static_cast<uint16_t>(p.indices[blk]);
    for (int i = tid; i < BM * kChunks; i += Tl::kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t m = m0 + r, k = k0 + c * 8;
      const bool valid = m < p.tokens && k < p.in_features;  // in_features % 8 == 0: chunks are all in or out
      cp_async16(sx + r * Tl::kLd + c * 8, valid ? x + m * p.x_stride + k : x, valid);
    }
    const uint16_t* wb = w + int64_t(blk) * T * T;
    for (int i = tid; i < T * kChunks; i += Tl::kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      cp_async16(sw + r * Tl::kLd + c * 8, wb + r * T + c * 8, true);
    }
    cp_async_commit();
  };

  const int blocks = end - begin;
  if (blocks > 0) load(0, begin);
  for (int i = 0; i < blocks; ++i) {
    if (i + 1 < blocks) {
      load((i + 1) & 1, begin + i + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* sx = smem + (i & 1) * Tl::kStage;
    const uint16_t* sw = sx + BM * Tl::kLd;
#pragma unroll
    for (int kk = 0; kk < T; kk += 16) {
      uint32_t a[Tl::kMI][4];
#pragma unroll
      for (int mi = 0; mi < Tl::kMI; ++mi) {
        const int row = warp_m * Tl::kWarpM + mi * 16 + (lane % 16);
        ldmatrix_x4(a[mi], sx + row * Tl::kLd + kk + (lane / 16) * 8);
      }
#pragma unroll
      for (int nj = 0; nj < Tl::kNI / 2; ++nj) {
        uint32_t b[4];  // n-tile 2nj: b[0], b[1]; n-tile 2nj + 1: b[2], b[3]
        const int n = warp_n * Tl::kWarpN + nj * 16 + (lane / 16) * 8 + (lane % 8);
        ldmatrix_x4(b, sw + n * Tl::kLd + kk + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mi = 0; mi < Tl::kMI; ++mi) {
          mma_16816<kBF16>(acc[mi][2 * nj], a[mi], b[0], b[1]);
          mma_16816<kBF16>(acc[mi][2 * nj + 1], a[mi], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }

#pragma unroll
  for (int mi = 0; mi < Tl::kMI; ++mi) {
    const int64_t row = m0 + warp_m * Tl::kWarpM + mi * 16 + lane / 4;
#pragma unroll
    for (int ni = 0; ni < Tl::kNI; ++ni) {
      const int64_t col = int64_t(block_row) * T + warp_n * Tl::kWarpN + ni * 8 + (lane % 4) * 2;
      store_pair<kBF16>(p, row, col, acc[mi][ni][0], acc[mi][ni][1]);
      store_pair<kBF16>(p, row + 8, col, acc[mi][ni][2], acc[mi][ni][3]);
    }
  }
}

template <int T, int BM, bool kBF16>
const char* launch(const LinearParams& p, cudaStream_t stream) {
  using Tl = Tiling<T, BM>;
  auto kernel = linear_kernel<T, BM, kBF16>;
  if constexpr (Tl::kSmemBytes >= (48 << 10)) {
    // Once per device (a function attribute per context; not stream work, so harmless under graph capture).
    static std::atomic<uint64_t> done_mask{0};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return "cudaGetDevice failed";
    const uint64_t bit = uint64_t{1} << (device & 63);
    if (!(done_mask.load() & bit)) {
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tl::kSmemBytes) != cudaSuccess) {
        return "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed for the BSR kernel";
      }
      done_mask.fetch_or(bit);
    }
  }
  const dim3 grid(static_cast<unsigned>(p.block_rows), static_cast<unsigned>((p.tokens + BM - 1) / BM));
  kernel<<<grid, Tl::kThreads, Tl::kSmemBytes, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <int T, bool kBF16>
const char* launch_tokens(const LinearParams& p, cudaStream_t stream) {
  return p.tokens <= kSmallTileMaxTokens ? launch<T, 16, kBF16>(p, stream) : launch<T, 64, kBF16>(p, stream);
}

template <bool kBF16>
const char* launch_block(const LinearParams& p, cudaStream_t stream) {
  switch (p.block) {
    case 16: return launch_tokens<16, kBF16>(p, stream);
    case 32: return launch_tokens<32, kBF16>(p, stream);
    case 64: return launch_tokens<64, kBF16>(p, stream);
    case 128: return launch_tokens<128, kBF16>(p, stream);
    default: return "sparseflow: BSR blocks on CUDA are 16, 32, 64 or 128 square";
  }
}

template <typename Kernel>
void launch_recut(Kernel kernel, const RecutParams& p, void* stream) {
  const int64_t total = p.nnz * p.R * p.C;
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace

void pack_cuda(const PackParams& p, void* stream) {
  const int64_t total = p.nnz * p.block * p.block / 8;
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
  pack_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

void recut_mark_cuda(const RecutParams& p, void* stream) { launch_recut(recut_mark_kernel, p, stream); }
void recut_fill_cuda(const RecutParams& p, void* stream) { launch_recut(recut_fill_kernel, p, stream); }

const char* linear_cuda(const LinearParams& p, void* stream) {
  if (p.tokens == 0 || p.block_rows == 0) return nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  return p.bf16 ? launch_block<true>(p, s) : launch_block<false>(p, s);
}

}  // namespace sparseflow::bsr::cuda
