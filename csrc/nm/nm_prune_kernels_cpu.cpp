// Host loop of nm_compress(prune=True) (torch-free; nm_pack_cpu.cpp parallelises over rows). Groups never
// straddle rows, so a row range is one flat run of groups.
#include "nm_prune.h"

namespace sparseflow::nm {
namespace {

template <typename Key, int kFixedM>
void run_rows(const PackParams& p, int64_t row_begin, int64_t row_end) {
  using Bits = typename Key::Bits;
  const int64_t groups_per_row = p.cols / p.m;
  const auto* dense = static_cast<const Bits*>(p.dense) + row_begin * p.cols;
  auto* values = static_cast<Bits*>(p.values) + row_begin * groups_per_row * p.n;
  uint8_t* indices = p.indices + row_begin * groups_per_row * p.n;
  const int64_t groups = (row_end - row_begin) * groups_per_row;
  for (int64_t g = 0; g < groups; ++g) {
    prune_group<Key, kFixedM>(dense + g * p.m, p.n, p.m, values + g * p.n, indices + g * p.n);
  }
}

template <typename Key>
void dispatch_m(const PackParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.m) {
    case 4: return run_rows<Key, 4>(p, row_begin, row_end);
    case 8: return run_rows<Key, 8>(p, row_begin, row_end);
    default: return run_rows<Key, 0>(p, row_begin, row_end);
  }
}

}  // namespace

void prune_compress_cpu(const PackParams& p, PruneDtype dtype, int64_t row_begin, int64_t row_end) {
  switch (dtype) {
    case PruneDtype::kFloat32: return dispatch_m<KeyFloat32>(p, row_begin, row_end);
    case PruneDtype::kFloat16: return dispatch_m<KeyFloat16>(p, row_begin, row_end);
    case PruneDtype::kBFloat16: return dispatch_m<KeyBFloat16>(p, row_begin, row_end);
    case PruneDtype::kFloat8E4M3: return dispatch_m<KeyFloat8E4M3>(p, row_begin, row_end);
    case PruneDtype::kInt8: return dispatch_m<KeyInt8>(p, row_begin, row_end);
  }
}

}  // namespace sparseflow::nm
