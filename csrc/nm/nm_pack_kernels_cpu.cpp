// Host N:M pack/unpack loops (torch-free; the wrapper in nm_pack_cpu.cpp parallelises over rows).
#include "nm.h"
#include "nm_group.h"

namespace sparseflow::nm {
namespace {

template <typename Bits, bool kCompress, int kFixedM>
int64_t run_rows(const PackParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t groups = p.cols / p.m;
  const int64_t packed_cols = groups * p.n;
  auto* dense = static_cast<Bits*>(const_cast<void*>(p.dense));
  auto* values = static_cast<Bits*>(p.values);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      Bits* d = dense + r * p.cols + g * p.m;
      Bits* v = values + r * packed_cols + g * p.n;
      uint8_t* idx = p.indices + r * packed_cols + g * p.n;
      const bool ok = kCompress ? compress_group<Bits, kFixedM>(d, p.n, p.m, p.kind.value_mask, v, idx)
                                : decompress_group(v, idx, p.n, p.m, d);
      if (!ok) return r * groups + g;
    }
  }
  return kAllGroupsValid;
}

template <typename Bits, bool kCompress>
int64_t dispatch_m(const PackParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.m) {
    case 4: return run_rows<Bits, kCompress, 4>(p, row_begin, row_end);
    case 8: return run_rows<Bits, kCompress, 8>(p, row_begin, row_end);
    default: return run_rows<Bits, kCompress, 0>(p, row_begin, row_end);
  }
}

template <bool kCompress>
int64_t dispatch(const PackParams& p, int64_t row_begin, int64_t row_end) {
  switch (p.kind.bytes) {
    case 1: return dispatch_m<uint8_t, kCompress>(p, row_begin, row_end);
    case 2: return dispatch_m<uint16_t, kCompress>(p, row_begin, row_end);
    case 4: return dispatch_m<uint32_t, kCompress>(p, row_begin, row_end);
  }
  return 0;  // unreachable: the wrapper admits only 1/2/4-byte dtypes
}

}  // namespace

int64_t compress_cpu(const PackParams& p, int64_t row_begin, int64_t row_end) {
  return dispatch<true>(p, row_begin, row_end);
}

int64_t decompress_cpu(const PackParams& p, int64_t row_begin, int64_t row_end) {
  return dispatch<false>(p, row_begin, row_end);
}

}  // namespace sparseflow::nm
