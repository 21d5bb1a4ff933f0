// Portable nm_linear kernels and the packed-meta builder (torch-free, any CPU). The fallback for every
// case the AVX-512 kernels do not take, and what SPARSEFLOW_CPU_ISA=portable runs.
#include <algorithm>
#include <cstring>
#include <vector>

#include "nm.h"
#include "nm_lanes.h"
#include "nm_linear_scalar.h"

namespace sparseflow::nm {
namespace {

// Calls keep(column) for each kept column of row r, after checking the row's positions; returns the flat
// index of its first bad group or kAllGroupsValid.
template <typename Keep>
int64_t walk_row(const MetaParams& p, int64_t r, Keep keep) {
  const int64_t groups = p.cols / p.m;
  const uint8_t* idx = p.indices + r * groups * p.n;
  for (int64_t g = 0; g < groups; ++g) {
    int previous = -1;
    for (int i = 0; i < p.n; ++i) {
      const int pos = idx[g * p.n + i];
      if (pos >= p.m || pos <= previous) return r * groups + g;
      previous = pos;
      keep(g * p.m + pos);
    }
  }
  return kAllGroupsValid;
}

// The lane layout's meta (nm_lanes.h): a row's 4-column masks, 8 to a dword, at its lane of each unit.
int64_t build_lane_meta(const MetaParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t words = meta_row_bytes(p.cols) / 4;  // ceil(cols / 32), rounded up to even
  std::vector<uint32_t> row_words(words);
  for (int64_t r = row_begin; r < row_end; ++r) {
    std::fill(row_words.begin(), row_words.end(), 0u);
    // nibble j of word v = columns 32 v + 4 j .. +3
    const int64_t bad = walk_row(p, r, [&](int64_t col) { row_words[col / 32] |= 1u << (col % 32); });
    if (bad != kAllGroupsValid) return bad;
    for (int64_t v = 0; v < words; ++v) store_u32(p.meta + lane_meta_offset(p.rows, p.cols, r, v), row_words[v]);
  }
  return kAllGroupsValid;
}

}  // namespace

int64_t build_meta_cpu(const MetaParams& p, int64_t row_begin, int64_t row_end) {
  if (p.int8_layout && uses_lane_layout(Scalar::kInt8, p.n, p.m)) return build_lane_meta(p, row_begin, row_end);
  const int64_t row_bytes = meta_row_bytes(p.cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint8_t* meta = p.meta + r * row_bytes;
    std::fill(meta, meta + row_bytes, uint8_t{0});
    const int64_t bad = walk_row(p, r, [&](int64_t col) {
      const int bit = meta_bit(static_cast<int>(col % kMetaChunk), p.int8_layout);
      meta[col / kMetaChunk * 8 + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    });
    if (bad != kAllGroupsValid) return bad;
  }
  return kAllGroupsValid;
}

void pack_lane_values(const int8_t* values, int64_t rows, int64_t cols, int8_t* packed, int64_t row_begin,
                      int64_t row_end) {
  const int64_t units = cols / 8;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int8_t* row = values + r * (cols / 2);
    for (int64_t u = 0; u < units; ++u) std::memcpy(packed + lane_value_offset(rows, cols, r, u), row + 4 * u, 4);
    if (cols % 8 == 4) std::memcpy(packed + lane_half_value_offset(rows, cols, r), row + 4 * units, 2);
  }
}

int64_t pack_float_lanes(const MetaParams& p, const void* values, int value_bytes, void* packed, int64_t row_begin,
                         int64_t row_end) {
  const int64_t words = meta_row_bytes(p.cols) / 4, row_bytes = p.cols / 2 * value_bytes;
  const auto* in = static_cast<const uint8_t*>(values);
  auto* out = static_cast<uint8_t*>(packed);
  std::vector<uint32_t> row_words(words);
  for (int64_t r = row_begin; r < row_end; ++r) {
    std::fill(row_words.begin(), row_words.end(), 0u);
    // nibble j of word v = the positions in group 8 v + j: the first kept column's at bits 0-1, the second's at 2-3
    int64_t kept = 0;
    const int64_t bad = walk_row(p, r, [&](int64_t col) {
      const int64_t g = col / 4;
      row_words[g / 8] |= static_cast<uint32_t>(col % 4) << (4 * (g % 8) + 2 * (kept++ % 2));
    });
    if (bad != kAllGroupsValid) return bad;
    for (int64_t v = 0; v < words; ++v) store_u32(p.meta + lane_meta_offset(p.rows, p.cols, r, v), row_words[v]);
    // bf16: a group's 2 values are one dword unit; fp32: each value is one.
    for (int64_t u = 0; u < row_bytes / 4; ++u) {
      std::memcpy(out + lane_dword_offset(p.rows, row_bytes, r, u), in + r * row_bytes + 4 * u, 4);
    }
  }
  return kAllGroupsValid;
}

namespace {

// Expands one packed row into dense[in_features] (zeros where nothing is kept).
template <typename Value, typename Dense, typename Convert>
void expand_row(const LinearParams& p, int64_t row, Dense* dense, Convert convert) {
  const int64_t k = p.in_features;
  const int64_t packed_cols = k / p.m * p.n;
  const auto* values = static_cast<const Value*>(p.values) + row * packed_cols;
  const uint8_t* meta = p.meta + row * meta_row_bytes(k);
  const bool int8_layout = p.weight == Scalar::kInt8;
  int64_t next = 0;
  for (int64_t c0 = 0; c0 < k; c0 += kMetaChunk) {
    const uint64_t word = load_u64(meta + c0 / 8);
    const int64_t width = std::min<int64_t>(kMetaChunk, k - c0);
    for (int c = 0; c < width; ++c) {
      const bool kept = (word >> meta_bit(c, int8_layout)) & 1;
      dense[c0 + c] = kept ? convert(values[next++]) : Dense(0);
    }
  }
}

// Expands row `row` of an int8 weight in the lane layout: the kept columns of each 8-column unit, in order,
// take its values in order (what the VNNI kernel's tables do when a unit keeps 4, as nm_pack's always do).
void expand_lane_row(const LinearParams& p, int64_t row, int32_t* dense) {
  const int64_t k = p.in_features, rows = p.out_features;
  const auto* values = static_cast<const int8_t*>(p.values);
  for (int64_t u = 0; 8 * u < k; ++u) {
    const bool half = 8 * u + 8 > k;  // cols % 8 == 4: the last unit has 4 columns and 2 values
    const uint32_t mask = (load_u32(p.meta + lane_meta_offset(rows, k, row, u / 4)) >> (8 * (u % 4))) & 0xFF;
    const int8_t* v = half ? values + lane_half_value_offset(rows, k, row) : values + lane_value_offset(rows, k, row, u);
    const int width = half ? 4 : 8;
    for (int c = 0, kept = 0; c < width; ++c) {
      const bool take = (mask >> c) & 1 && kept < width / 2;
      dense[8 * u + c] = take ? int32_t{v[kept++]} : 0;
    }
  }
}

// Expands row `row` of a bf16 / fp32 2:4 weight in the lane layout: each group's 2 values added at their
// positions (what the AVX-512 kernel computes, also for a corrupted meta that names one position twice).
template <typename Value, typename Convert>
void expand_float_lane_row(const LinearParams& p, int64_t row, float* dense, Convert convert) {
  const int64_t k = p.in_features, rows = p.out_features, row_bytes = k / 2 * int64_t{sizeof(Value)};
  const auto* values = static_cast<const uint8_t*>(p.values);
  std::fill(dense, dense + k, 0.0f);
  for (int64_t g = 0; g < k / 4; ++g) {
    const uint32_t at = load_u32(p.meta + lane_meta_offset(rows, k, row, g / 8)) >> (4 * (g % 8));
    Value pair[2];
    for (int s = 0; s < 2; ++s) {  // value 2g + s of the row-major row: in its dword unit, at its byte
      const int64_t byte = (2 * g + s) * int64_t{sizeof(Value)};
      std::memcpy(&pair[s], values + lane_dword_offset(rows, row_bytes, row, byte / 4) + byte % 4, sizeof(Value));
    }
    dense[4 * g + (at & 3)] += convert(pair[0]);
    dense[4 * g + (at >> 2 & 3)] += convert(pair[1]);
  }
}

// Dot product with 16 independent partial sums so the compiler can vectorize it without reassociating.
inline float dot_f32(const float* a, const float* b, int64_t k) {
  float partial[16] = {};
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    for (int l = 0; l < 16; ++l) partial[l] += a[i + l] * b[i + l];
  }
  for (; i < k; ++i) partial[i % 16] += a[i] * b[i];
  float s = 0.0f;
  for (float v : partial) s += v;
  return s;
}

inline int32_t dot_i8(const int8_t* a, const int32_t* b, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += int32_t{a[i]} * b[i];
  return s;
}

inline void store(const LinearParams& p, int64_t t, int64_t j, float v) {
  v = activate(v, p.act);
  if (p.out == Scalar::kFloat32) {
    static_cast<float*>(p.y)[t * p.y_stride + j] = v;
  } else {
    static_cast<uint16_t*>(p.y)[t * p.y_stride + j] = p.out == Scalar::kBFloat16 ? float_to_bf16(v) : float_to_half(v);
  }
}

}  // namespace

void linear_portable(const LinearParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t k = p.in_features;
  if (p.weight == Scalar::kInt8) {
    std::vector<int32_t> dense(k);
    const bool lanes = uses_lane_layout(Scalar::kInt8, p.n, p.m);
    for (int64_t j = row_begin; j < row_end; ++j) {
      if (lanes) {
        expand_lane_row(p, j, dense.data());
      } else {
        expand_row<int8_t>(p, j, dense.data(), [](int8_t v) { return int32_t{v}; });
      }
      const float bias = p.bias ? p.bias[j] : 0.0f;
      for (int64_t t = 0; t < p.tokens; ++t) {
        const int32_t acc = dot_i8(p.xq + t * p.xq_stride, dense.data(), k);
        store(p, t, j, std::fma(static_cast<float>(acc), p.x_scale[t] * p.weight_scale[j], bias));
      }
    }
    return;
  }
  std::vector<float> dense(k);
  const bool lanes = uses_lane_layout(p.weight, p.n, p.m);
  for (int64_t j = row_begin; j < row_end; ++j) {
    if (p.weight == Scalar::kFloat32) {
      if (lanes) {
        expand_float_lane_row<float>(p, j, dense.data(), [](float v) { return v; });
      } else {
        expand_row<float>(p, j, dense.data(), [](float v) { return v; });
      }
    } else if (p.weight == Scalar::kBFloat16 && lanes) {
      expand_float_lane_row<uint16_t>(p, j, dense.data(), bf16_to_float);
    } else if (p.weight == Scalar::kBFloat16) {
      expand_row<uint16_t>(p, j, dense.data(), bf16_to_float);
    } else {
      expand_row<uint16_t>(p, j, dense.data(), half_to_float);
    }
    const float bias = p.bias ? p.bias[j] : 0.0f;
    for (int64_t t = 0; t < p.tokens; ++t) store(p, t, j, dot_f32(p.x + t * p.x_stride, dense.data(), k) + bias);
  }
}

void quantize_rows_portable(const QuantizeParams& q, int64_t t_begin, int64_t t_end) {
  const int8_t zero = q.biased ? int8_t(-128) : int8_t(0);  // the bits of 0 + 128 as uint8
  for (int64_t t = t_begin; t < t_end; ++t) {
    const float* row = q.x + t * q.x_stride;
    float amax = 0.0f;
    for (int64_t i = 0; i < q.cols; ++i) {
      const float a = std::fabs(row[i]);
      amax = a > amax ? a : amax;  // NaN ignored, like _mm512_max_ps(a, amax)
    }
    const float inv = quantize_inv_scale(amax);
    q.scale[t] = amax / 127.0f;
    int8_t* out = q.xq + t * q.xq_stride;
    for (int64_t i = 0; i < q.cols; ++i) {
      out[i] = static_cast<int8_t>(static_cast<uint8_t>(quantize_value(row[i], inv)) ^ (q.biased ? 0x80 : 0));
    }
    std::fill(out + q.cols, out + q.xq_stride, zero);
  }
}

}  // namespace sparseflow::nm
