// The CUDA prune kernel's tile logic run on the host (no GPU needed): prune_tile, exactly as the kernel
// calls it, over every tile of random bit patterns (ties of both signs, zeros, NaNs) against prune_group,
// the per-group rule the CPU kernels use (checked against the torch reference in tests/test_nm_prune.py).
// Built and run by tests/test_nm_prune.py (nvcc -I csrc); prints one line per case and exits non-zero on
// a mismatch.
#include "nm/nm_prune_sm80.cu"

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
using namespace sparseflow::nm;

template <typename Key, int kM, int kN>
int check(const char* name, std::mt19937& rng) {
  using Bits = typename Key::Bits;
  using T = Tile<Key, kM>;
  const int64_t tiles = 997;
  const int64_t elems = tiles * T::kElems, groups = elems / kM;
  std::vector<uint4> buf((elems * sizeof(Bits) + 15) / 16);
  Bits* dense = reinterpret_cast<Bits*>(buf.data());
  std::uniform_int_distribution<uint32_t> any(0, 0xffffffffu);
  std::vector<uint32_t> pool;  // few distinct bit patterns to force ties, plus random ones
  for (int i = 0; i < 6; ++i) pool.push_back(any(rng));
  for (int64_t e = 0; e < elems; ++e) {
    uint32_t r = any(rng);
    uint32_t b = (r % 4 == 0) ? pool[r % 6] : (r % 4 == 1) ? (r & 0x80000000u ? 0x80000000u : 0) : any(rng);
    if (sizeof(Bits) == 2) b = (r % 4 == 1) ? (b >> 16) : (b ^ (b >> 16));
    if (sizeof(Bits) == 1) b = (r % 4 == 1) ? (b >> 24) : (b ^ (b >> 8) ^ (b >> 16));
    if (r % 4 == 0 && (r >> 8) % 2) b ^= sizeof(Bits) == 4 ? 0x80000000u : sizeof(Bits) == 2 ? 0x8000u : 0x80u;  // same magnitude, other sign
    dense[e] = static_cast<Bits>(b);
  }
  std::vector<Bits> v1(groups * kN), v2(groups * kN);
  std::vector<uint8_t> i1(groups * kN), i2(groups * kN);
  for (int64_t t = 0; t < tiles; ++t) prune_tile<Key, kM, kN>(buf.data(), v1.data(), i1.data(), t);
  for (int64_t g = 0; g < groups; ++g) prune_group<Key, kM>(dense + g * kM, kN, kM, v2.data() + g * kN, i2.data() + g * kN);
  const bool ok = std::memcmp(v1.data(), v2.data(), v1.size() * sizeof(Bits)) == 0 && i1 == i2;
  std::printf("%-10s %d:%d tiles=%lld %s\n", name, kN, kM, (long long)tiles, ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}

template <typename Key>
int all(const char* name, std::mt19937& rng) {
  return check<Key, 4, 2>(name, rng) + check<Key, 4, 1>(name, rng) + check<Key, 8, 4>(name, rng);
}

int main() {
  std::mt19937 rng(7);
  int bad = all<KeyFloat32>("float32", rng) + all<KeyFloat16>("float16", rng) + all<KeyBFloat16>("bfloat16", rng) +
            all<KeyFloat8E4M3>("float8", rng) + all<KeyInt8>("int8", rng);
  std::printf(bad ? "FAILED\n" : "all tiles match\n");
  return bad;
}
