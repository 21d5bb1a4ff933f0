// Small-M 2:4 linear (nm_linear with tokens <= kDecodeMaxTokens), both packed layouts. Design and index
// math: nm_linear_decode.h. Torch-free; built for every CUDA arch (sm80 and later: mma.sync bf16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "nm_linear_decode.h"

namespace sparseflow::nm::cutlass2x {
namespace {

constexpr int kThreads = kDecodeWarps * 32;
static_assert(kDecodeMaxTokens <= 16, "the kernel has instantiations for 1 and 2 n-tiles of 8 tokens");
static_assert(kDecodeRows == 16 && kDecodeChunkCols == 64, "one mma M tile per CTA; 4 lanes x 16 columns per chunk");
constexpr int64_t kSliceStep = int64_t{kDecodeWarps} * kDecodeChunkCols / 16;  // slices between a lane's chunks

// The formulas of the CUTLASS epilogues (nm_linear_sm80.cuh / nm_linear_sm90.cuh), so both paths agree.
__device__ __forceinline__ float activate(float v, int activation) {
  switch (activation) {
    case int(Activation::kRelu): return v < 0.f ? 0.f : v;  // keeps NaN, like torch.relu
    case int(Activation::kGelu): return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));  // exact (erf) GELU
    case int(Activation::kSilu): return v / (1.f + expf(-v));
    default: return v;
  }
}

// Weights are read once: keep them out of L1, which holds x (re-read by every CTA) and the metadata lines
// (shared by the two 16-row halves of a 32-row block).
__device__ __forceinline__ uint4 load_streaming(const uint16_t* ptr) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
}

// d += a (16 x 16, row-major fragment) * b (16 x 8, column-major fragment), fp32 accumulation.
template <bool kBf16>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(d[0]), "f"(d[1]), "f"(d[2]),
          "f"(d[3]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(d[0]), "f"(d[1]), "f"(d[2]),
          "f"(d[3]));
  }
#else
  __trap();  // never built: SPARSEFLOW_CUDA_ARCHS starts at 80
#endif
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // i is a compile-time constant after unrolling
}

template <bool kBf16>
__device__ __forceinline__ float to_float(uint16_t bits) {
  if constexpr (kBf16) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

// kNTiles: tokens in n-tiles of 8 (1: tokens <= 8, 2: <= 16).
template <bool kBf16, int kNTiles>
__global__ void __launch_bounds__(kThreads, 2) linear_decode_kernel(const LinearParams p, const MetaLayout layout) {
  constexpr int kTokens = kNTiles * 8;
  constexpr int kUnroll = kNTiles == 1 ? kDecodeUnroll1Tile : kDecodeUnroll2Tiles;
  // perm[code] = (byte-permute selectors of dense positions {0, 1}, {2, 3}) for a group's 32-bit value pair
  // (first value in the low half): 0x10 picks the first value, 0x32 the second, 0x54 the zero operand.
  __shared__ uint2 perm[16];
  __shared__ float partial[kDecodeWarps][kDecodeRows][kTokens + 1];  // +1: fewer bank conflicts on the sum

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  if (threadIdx.x < 16) {
    const int i0 = threadIdx.x & 3, i1 = threadIdx.x >> 2;
    const auto sel = [&](int pos) -> uint32_t { return pos == i0 ? 0x10u : pos == i1 ? 0x32u : 0x54u; };
    perm[threadIdx.x] = make_uint2(sel(0) | sel(1) << 8, sel(2) | sel(3) << 8);
  }

  const int64_t slices = p.in_features / 16;  // 16-column slices of a row (in_features % 16 == 0)
  const int64_t chunks = (p.in_features + kDecodeChunkCols - 1) / kDecodeChunkCols;
  const int64_t steps = warp < chunks ? (chunks - warp + kDecodeWarps - 1) / kDecodeWarps : 0;  // warp-uniform
  const int64_t slice0 = int64_t{warp} * 4 + t;  // this lane's slice in its first chunk

  // Rows g and g + 8 of this CTA: always < rows_p (a multiple of 32 >= out_features), so they are loaded
  // unconditionally; the padding rows are zeros and are not stored.
  const uint16_t* values[2];
  const uint8_t* meta[2];
  int64_t meta_step[2];
  for (int r = 0; r < 2; ++r) {
    const int64_t row = int64_t{blockIdx.x} * kDecodeRows + g + 8 * r;
    values[r] = static_cast<const uint16_t*>(p.values) + row * (p.in_features / 2) + slice0 * 8;
    const int64_t first = decode_code_word_offset(layout, row, slice0, p.rows_p);
    meta[r] = static_cast<const uint8_t*>(p.meta) + first;
    meta_step[r] = decode_code_word_offset(layout, row, slice0 + kSliceStep, p.rows_p) - first;
  }
  const uint16_t* x[kNTiles];
  bool token_ok[kNTiles];
  for (int n = 0; n < kNTiles; ++n) {
    const int token = n * 8 + g;
    token_ok[n] = token < p.tokens;
    x[n] = static_cast<const uint16_t*>(p.x) + (token_ok[n] ? token * p.x_stride : 0) + slice0 * 16;
  }

  float acc[kNTiles][4] = {};
  __syncthreads();  // perm

  for (int64_t j0 = 0; j0 < steps; j0 += kUnroll) {
    uint4 w[kUnroll][2];
    uint32_t code[kUnroll][2];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u;
      const bool ok = slice0 + j * kSliceStep < slices;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        w[u][r] = ok ? load_streaming(values[r] + j * (kSliceStep * 8)) : make_uint4(0, 0, 0, 0);
        code[u][r] = ok ? __ldg(reinterpret_cast<const unsigned short*>(meta[r] + j * meta_step[r])) : 0u;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u;
      const bool ok = slice0 + j * kSliceStep < slices;
      uint4 xv[kNTiles][2];  // x[token][16 columns of the slice]
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        const bool load = ok && token_ok[n];
        const uint4* src = reinterpret_cast<const uint4*>(x[n] + j * (kSliceStep * 16));
        xv[n][0] = load ? __ldg(src) : make_uint4(0, 0, 0, 0);
        xv[n][1] = load ? __ldg(src + 1) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // group q of the slice = k-step q
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint2 s = perm[(code[u][r] >> (4 * q)) & 0xF];
          const uint32_t pair = word(w[u][r], q);
          a[r] = __byte_perm(pair, 0u, s.x);      // row g + 8r, dense positions 0, 1: k slots 2t, 2t+1
          a[r + 2] = __byte_perm(pair, 0u, s.y);  // positions 2, 3: k slots 2t+8, 2t+9
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          // x columns 4q + {0, 1} and 4q + {2, 3} of the slice, matching the slots above
          mma_16x8x16<kBf16>(acc[n], a, word(xv[n][q / 2], 2 * (q % 2)), word(xv[n][q / 2], 2 * (q % 2) + 1));
        }
      }
    }
  }

  // Accumulator fragment: acc[n][2h + e] is row g + 8h, token n * 8 + 2t + e.
#pragma unroll
  for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][g + 8 * (i / 2)][n * 8 + 2 * t + i % 2] = acc[n][i];
  }
  __syncthreads();

  for (int i = threadIdx.x; i < kDecodeRows * kTokens; i += kThreads) {
    const int r = i % kDecodeRows, token = i / kDecodeRows;  // consecutive threads: consecutive features
    const int64_t row = int64_t{blockIdx.x} * kDecodeRows + r;
    if (row >= p.out_features || token >= p.tokens) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < kDecodeWarps; ++k) v += partial[k][r][token];
    if (p.bias != nullptr) {
      v += p.bias_fp32 ? static_cast<const float*>(p.bias)[row]
                       : to_float<kBf16>(static_cast<const uint16_t*>(p.bias)[row]);
    }
    v = activate(v, int(p.activation));
    const int64_t at = int64_t{token} * p.out_features + row;  // y [tokens, out_features], dense
    if (p.out_dtype == DType::kFloat32) {
      static_cast<float*>(p.y)[at] = v;
    } else if constexpr (kBf16) {
      static_cast<__nv_bfloat16*>(p.y)[at] = __float2bfloat16_rn(v);
    } else {
      static_cast<__half*>(p.y)[at] = __float2half_rn(v);
    }
  }
}

template <bool kBf16>
void launch(const LinearParams& p, MetaLayout layout, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.out_features + kDecodeRows - 1) / kDecodeRows));
  if (p.tokens <= 8) {
    linear_decode_kernel<kBf16, 1><<<grid, kThreads, 0, stream>>>(p, layout);
  } else {
    linear_decode_kernel<kBf16, 2><<<grid, kThreads, 0, stream>>>(p, layout);
  }
}

}  // namespace

const char* linear_decode(const LinearParams& p, MetaLayout layout, void* stream) {
  if (p.tokens < 1 || p.tokens > kDecodeMaxTokens || p.in_features % 16 != 0) {
    return "sparseflow: the 2:4 decode kernel takes 1..16 tokens and in_features a multiple of 16";
  }
  const auto s = static_cast<cudaStream_t>(stream);
  if (p.in_dtype == DType::kBFloat16) {
    launch<true>(p, layout, s);
  } else {
    launch<false>(p, layout, s);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace sparseflow::nm::cutlass2x
