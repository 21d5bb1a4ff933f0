// bsr_pack on the host: validation of the canonical BSR arrays and re-cutting them into native blocks
// (torch-free; the wrapper in bsr_cpu.cpp parallelises over native block-rows).
#include <algorithm>
#include <cstring>
#include <vector>

#include "bsr.h"

namespace sparseflow::bsr {
namespace {

// Visits every non-zero entry (row, k, value bits) of the canonical blocks that cover output rows
// [row0, row1), clipped to the matrix. Bits are compared without the sign bit for floats, so -0.0 is zero.
template <typename Bits, typename Fn>
void for_each_nonzero(const CanonicalBsr& w, int64_t row0, int64_t row1, Fn&& fn) {
  constexpr Bits kValueMask = sizeof(Bits) == 4 ? Bits(0x7fffffffu) : sizeof(Bits) == 2 ? Bits(0x7fff) : Bits(0xff);
  const auto* values = static_cast<const Bits*>(w.values);
  const int64_t R = w.R, C = w.C;
  for (int64_t b = row0 / R; b <= (row1 - 1) / R; ++b) {
    const int64_t r_lo = std::max(row0, b * R), r_hi = std::min(row1, b * R + R);
    for (int64_t j = w.crow[b]; j < w.crow[b + 1]; ++j) {
      const int64_t k0 = int64_t(w.col[j]) * C;
      const int64_t k_hi = std::min(w.in_features, k0 + C);
      for (int64_t r = r_lo; r < r_hi; ++r) {
        const Bits* v = values + (j * R + (r - b * R)) * C;
        for (int64_t k = k0; k < k_hi; ++k) {
          if (v[k - k0] & kValueMask) fn(r, k, v[k - k0]);
        }
      }
    }
  }
}

// Per-thread scratch: the native block-columns touched by one native block-row, and where each went.
struct Columns {
  std::vector<int32_t> slot;  // native block-column -> -1 if absent; fill_rows sets its block's position
  std::vector<int32_t> list;  // touched block-columns, ascending after collect()

  explicit Columns(int64_t n) : slot(n, -1) {}

  template <typename Bits>
  void collect(const CanonicalBsr& w, const NativeBlock& nb, int64_t row0, int64_t row1) {
    list.clear();
    for_each_nonzero<Bits>(w, row0, row1, [&](int64_t, int64_t k, Bits) {
      const int64_t kc = k / nb.cols;
      if (slot[kc] < 0) {
        slot[kc] = 0;
        list.push_back(static_cast<int32_t>(kc));
      }
    });
    std::sort(list.begin(), list.end());
  }

  void reset() {
    for (int32_t kc : list) slot[kc] = -1;
  }
};

// The tiles of one block-row's ascending block-columns: runs of up to nb.group of them, a run also ending
// before a block-column `span` or more input channels after its first one (span 0: no limit). Calls
// fn(first, count) with positions in `list`; returns the number of tiles.
template <typename Fn>
int64_t for_each_tile(const std::vector<int32_t>& list, const NativeBlock& nb, int span, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(list.size());
  int64_t tiles = 0;
  for (int64_t i = 0; i < n; ++tiles) {
    int64_t j = i + 1;
    while (j < n && j - i < nb.group && (span == 0 || int64_t(list[j] - list[i]) * nb.cols < span)) ++j;
    fn(i, j - i);
    i = j;
  }
  return tiles;
}

template <typename Bits>
void count_rows(const CanonicalBsr& w, Layout layout, int64_t begin, int64_t end, int32_t* counts,
                int32_t* span_counts) {
  const NativeBlock nb = native_block(layout);
  Columns cols(ceil_div(w.in_features, nb.cols));
  auto blocks = [&](int span) {
    return static_cast<int32_t>(for_each_tile(cols.list, nb, span, [](int64_t, int64_t) {}) * nb.group);
  };
  for (int64_t r = begin; r < end; ++r) {
    const int64_t row0 = r * nb.rows, row1 = std::min(w.out_features, row0 + nb.rows);
    cols.collect<Bits>(w, nb, row0, row1);
    counts[r - begin] = blocks(0);
    if (span_counts != nullptr) span_counts[r - begin] = blocks(kTileSpan);
    cols.reset();
  }
}

template <typename Bits>
void fill_rows(const CanonicalBsr& w, Layout layout, int span, int64_t begin, int64_t end, const int32_t* rowptr,
               uint16_t* indices, void* values_out, int32_t* compensation) {
  const NativeBlock nb = native_block(layout);
  auto* values = static_cast<Bits*>(values_out);
  const int64_t block_elems = nb.rows * nb.cols;
  Columns cols(ceil_div(w.in_features, nb.cols));
  for (int64_t r = begin; r < end; ++r) {
    const int64_t row0 = r * nb.rows, row1 = std::min(w.out_features, row0 + nb.rows);
    const int64_t first = rowptr[r], count = rowptr[r + 1] - rowptr[r];
    if (count > 0) std::memset(values + first * block_elems, 0, count * block_elems * sizeof(Bits));  // values may be null
    if (row0 >= row1) continue;
    cols.collect<Bits>(w, nb, row0, row1);
    int64_t b = first;
    for_each_tile(cols.list, nb, span, [&](int64_t i, int64_t n) {
      for (int64_t j = 0; j < nb.group; ++j, ++b) {
        // Padding blocks repeat the tile's last index: a valid address whose zero weights add nothing.
        indices[b] = static_cast<uint16_t>(cols.list[i + std::min(j, n - 1)] * nb.cols);
        if (j < n) cols.slot[cols.list[i + j]] = static_cast<int32_t>(b - first);
      }
    });
    for_each_nonzero<Bits>(w, row0, row1, [&](int64_t row, int64_t k, Bits v) {
      const int64_t b = first + cols.slot[k / nb.cols];
      switch (layout) {
        case Layout::kInt8_4x1:
        case Layout::kInt8_16x1:
        case Layout::kFloat4x1: values[tile_element(b, nb.rows, row - row0)] = v; break;
        case Layout::kF16x1: values[b * 16 + (row - row0)] = v; break;
        case Layout::kF1x16: values[b * 16 + (k % 16)] = v; break;
      }
    });
    if (compensation != nullptr) {
      for (int64_t row = row0; row < row1; ++row) compensation[row] = 0;
      for_each_nonzero<Bits>(w, row0, row1, [&](int64_t row, int64_t, Bits v) {
        compensation[row] += static_cast<int8_t>(v);
      });
    }
    cols.reset();
  }
}

}  // namespace

void pack_count(const CanonicalBsr& w, Layout layout, int64_t begin, int64_t end, int32_t* counts,
                int32_t* span_counts) {
  switch (w.dtype) {
    case DType::kF32: return count_rows<uint32_t>(w, layout, begin, end, counts, span_counts);
    case DType::kBF16: return count_rows<uint16_t>(w, layout, begin, end, counts, span_counts);
    default: return count_rows<uint8_t>(w, layout, begin, end, counts, span_counts);
  }
}

void pack_fill(const CanonicalBsr& w, Layout layout, int span, int64_t begin, int64_t end, const int32_t* rowptr,
               uint16_t* indices, void* values, int32_t* compensation) {
  switch (w.dtype) {
    case DType::kF32: return fill_rows<uint32_t>(w, layout, span, begin, end, rowptr, indices, values, nullptr);
    case DType::kBF16: return fill_rows<uint16_t>(w, layout, span, begin, end, rowptr, indices, values, nullptr);
    default: return fill_rows<uint8_t>(w, layout, span, begin, end, rowptr, indices, values, compensation);
  }
}

}  // namespace sparseflow::bsr
