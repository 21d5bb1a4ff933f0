// nm_compress(prune=True): keep the n largest-magnitude entries of every group of m, then pack them like
// nm_compress. Torch-free, shared by the CPU and CUDA kernels. (A separate header: nm.h / nm_group.h are
// included by the CUTLASS translation units, and editing them recompiles those.)
//
// Rule, the same on every device and dtype:
//   * magnitude |x|; int8 -128 has magnitude 128;
//   * NaN counts as larger than every number, inf included (as in torch.sort / torch.topk); NaNs tie;
//   * equal magnitudes: the lower position wins (so -0.0 and +0.0 tie, and 3 vs -3 keeps the first);
//   * kept zeros (+-0.0) are written as +0 and, being the lowest-positioned zeros, are exactly the padding
//     nm_compress would add: the result is bit-identical to nm_compress(dense * keep_mask, n, m).
#pragma once

#include <cstdint>

#include "nm.h"
#include "nm_group.h"  // SF_HOST_DEVICE, lowest_bit

namespace sparseflow::nm {

// Magnitude keys: unsigned integers ordered like the magnitudes (with NaN on top), compared exactly.
// For IEEE-style floats the bits without the sign are monotone in |x|; every NaN is clamped to one
// value just above inf so that NaNs tie whatever their payload.
struct KeyFloat32 {
  using Bits = uint32_t;
  SF_HOST_DEVICE static uint32_t key(uint32_t b) {
    const uint32_t mag = b & 0x7fffffffu;
    return mag < 0x7f800001u ? mag : 0x7f800001u;
  }
};
struct KeyFloat16 {
  using Bits = uint16_t;
  SF_HOST_DEVICE static uint32_t key(uint16_t b) {
    const uint32_t mag = b & 0x7fffu;
    return mag < 0x7c01u ? mag : 0x7c01u;
  }
};
struct KeyBFloat16 {
  using Bits = uint16_t;
  SF_HOST_DEVICE static uint32_t key(uint16_t b) {
    const uint32_t mag = b & 0x7fffu;
    return mag < 0x7f81u ? mag : 0x7f81u;
  }
};
struct KeyFloat8E4M3 {  // no inf; 0x7f / 0xff are the NaNs and already the largest magnitude code
  using Bits = uint8_t;
  SF_HOST_DEVICE static uint32_t key(uint8_t b) { return b & 0x7fu; }
};
struct KeyInt8 {
  using Bits = uint8_t;
  SF_HOST_DEVICE static uint32_t key(uint8_t b) {
    const int v = static_cast<int8_t>(b);
    return static_cast<uint32_t>(v < 0 ? -v : v);
  }
};

enum class PruneDtype : int8_t { kFloat32, kFloat16, kBFloat16, kFloat8E4M3, kInt8 };

// Bitmask of the kept positions of one group of m keys: element j is kept when fewer than n elements
// beat it, where i beats j if key_i > key_j, or key_i == key_j and i < j (a strict total order, so exactly
// n bits are set). O(m^2) compares, branch-free; kFixedM != 0 unrolls the common m.
template <int kFixedM = 0>
SF_HOST_DEVICE uint64_t prune_keep_mask(const uint32_t* keys, int n, int m_runtime) {
  const int m = kFixedM ? kFixedM : m_runtime;
  uint64_t keep = 0;
  for (int j = 0; j < m; ++j) {
    int beaten = 0;
    for (int i = 0; i < m; ++i) {
      beaten += i < j ? keys[i] >= keys[j] : keys[i] > keys[j];
    }
    keep |= uint64_t{beaten < n} << j;
  }
  return keep;
}

// Prunes and packs one group: n (value, position) pairs, positions ascending; kept zeros become +0.
template <typename Key, int kFixedM = 0>
SF_HOST_DEVICE void prune_group(const typename Key::Bits* dense, int n, int m_runtime,
                                typename Key::Bits* values, uint8_t* positions) {
  using Bits = typename Key::Bits;
  const int m = kFixedM ? kFixedM : m_runtime;
  uint32_t keys[kFixedM ? kFixedM : kMaxM];
  for (int j = 0; j < m; ++j) keys[j] = Key::key(dense[j]);
  uint64_t keep = prune_keep_mask<kFixedM>(keys, n, m);
  for (int i = 0; i < n; ++i) {
    const int j = lowest_bit(keep);
    keep &= keep - 1;
    Bits value = Bits(0);
    if constexpr (kFixedM != 0) {
      // Constant indices only: on the device a dynamic index would move the group to local memory.
      for (int k = 0; k < kFixedM; ++k) value = k == j && keys[k] != 0 ? dense[k] : value;
    } else {
      value = keys[j] != 0 ? dense[j] : Bits(0);
    }
    values[i] = value;
    positions[i] = static_cast<uint8_t>(j);
  }
}

// CPU: prunes and packs rows [row_begin, row_end) of p (p.kind is not used; `dtype` picks the key).
void prune_compress_cpu(const PackParams& p, PruneDtype dtype, int64_t row_begin, int64_t row_end);
// The same for m = 4 or 8 only, AVX-512F/BW/VL (CpuIsa::kAvx512); bit-identical.
void prune_compress_avx512(const PackParams& p, PruneDtype dtype, int64_t row_begin, int64_t row_end);

// CUDA: the whole tensor in one asynchronous pass on `stream` (every input is valid: nothing to report).
void prune_compress_cuda(const PackParams& p, PruneDtype dtype, void* stream);

}  // namespace sparseflow::nm
