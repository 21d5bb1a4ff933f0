// Population count for host code built without ISA flags (torch-free).
#pragma once

#include <cstdint>

namespace sparseflow {

// One POPCNT where the file's flags allow it; elsewhere the branch-free bit trick, because GCC's
// __builtin_popcountll without -mpopcnt is a libgcc call (nm_linear's per-call meta check spent ~5 % of a
// one-token call in it).
inline int popcount_u64(uint64_t x) {
#if defined(__POPCNT__)
  return __builtin_popcountll(x);
#else
  x -= (x >> 1) & 0x5555555555555555ull;
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int>((x * 0x0101010101010101ull) >> 56);
#endif
}

}  // namespace sparseflow
