// The per-group logic of N:M packing, written once for the host and the device.
#pragma once

#include <cstdint>

#include "nm.h"

#if defined(__CUDACC__)
#define SF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SF_HOST_DEVICE inline
#endif

namespace sparseflow::nm {

template <typename Bits>
SF_HOST_DEVICE bool is_nonzero(Bits v, uint32_t value_mask) {
  return (static_cast<uint32_t>(v) & value_mask) != 0;
}

SF_HOST_DEVICE int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

SF_HOST_DEVICE int lowest_bit(uint64_t x) {  // x != 0
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

// Packs one group of m dense elements into n (value, position) pairs. Returns false when the group
// holds more than n non-zeros. Branch-light: the group becomes a bitmask, padding takes the lowest free
// positions, and positions come out ascending by walking the kept bits.
// kFixedM != 0 lets the compiler unroll the common group sizes (4, 8).
template <typename Bits, int kFixedM = 0>
SF_HOST_DEVICE bool compress_group(const Bits* dense, int n, int m_runtime, uint32_t value_mask,
                                   Bits* values, uint8_t* positions) {
  const int m = kFixedM ? kFixedM : m_runtime;
  uint64_t nonzero = 0;
  for (int j = 0; j < m; ++j) {
    nonzero |= uint64_t{is_nonzero(dense[j], value_mask)} << j;
  }
  const int count = popcount64(nonzero);
  if (count > n) return false;
  uint64_t kept = nonzero;
  uint64_t free = ~nonzero & (m == 64 ? ~uint64_t{0} : (uint64_t{1} << m) - 1);
  for (int pad = count; pad < n; ++pad) {
    kept |= free & (~free + 1);  // the lowest free position
    free &= free - 1;
  }
  for (int i = 0; i < n; ++i) {
    const int j = lowest_bit(kept);
    kept &= kept - 1;
    values[i] = ((nonzero >> j) & 1) ? dense[j] : Bits(0);
    positions[i] = static_cast<uint8_t>(j);
  }
  return true;
}

// Scatters n (value, position) pairs into a zeroed group of m. Returns false when a position is out of
// range or the positions are not strictly ascending.
template <typename Bits>
SF_HOST_DEVICE bool decompress_group(const Bits* values, const uint8_t* positions, int n, int m,
                                     Bits* dense) {
  int previous = -1;
  for (int i = 0; i < n; ++i) {
    const int pos = positions[i];
    if (pos >= m || pos <= previous) return false;
    previous = pos;
  }
  for (int j = 0; j < m; ++j) dense[j] = Bits(0);
  for (int i = 0; i < n; ++i) dense[positions[i]] = values[i];
  return true;
}

}  // namespace sparseflow::nm
