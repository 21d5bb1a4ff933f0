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

// Packs one group of m dense elements into n (value, position) pairs. Returns false when the group
// holds more than n non-zeros.
template <typename Bits>
SF_HOST_DEVICE bool compress_group(const Bits* dense, int n, int m, uint32_t value_mask, Bits* values,
                                   uint8_t* positions) {
  uint64_t nonzero = 0;
  int count = 0;
  for (int j = 0; j < m; ++j) {
    if (is_nonzero(dense[j], value_mask)) {
      nonzero |= uint64_t{1} << j;
      ++count;
    }
  }
  if (count > n) return false;
  int taken = 0;
  int nonzero_left = count;  // non-zeros at positions >= j
  for (int j = 0; j < m && taken < n; ++j) {
    const bool nz = (nonzero >> j) & 1;
    // Take every non-zero; take a zero as padding only while the non-zeros left cannot fill the rest.
    if (nz || n - taken > nonzero_left) {
      values[taken] = nz ? dense[j] : Bits(0);
      positions[taken] = static_cast<uint8_t>(j);
      ++taken;
    }
    nonzero_left -= nz;
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
