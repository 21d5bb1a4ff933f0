// Portable nm_linear kernels and the packed-meta builder (torch-free, any CPU). The fallback for every
// case the AVX-512 kernels do not take, and what SPARSEFLOW_CPU_ISA=portable runs.
#include <algorithm>
#include <vector>

#include "nm.h"
#include "nm_linear_scalar.h"

namespace sparseflow::nm {

int64_t build_meta_cpu(const MetaParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t groups = p.cols / p.m;
  const int64_t packed_cols = groups * p.n;
  const int64_t row_bytes = meta_row_bytes(p.cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint8_t* meta = p.meta + r * row_bytes;
    std::fill(meta, meta + row_bytes, uint8_t{0});
    const uint8_t* idx = p.indices + r * packed_cols;
    for (int64_t g = 0; g < groups; ++g) {
      int previous = -1;
      for (int i = 0; i < p.n; ++i) {
        const int pos = idx[g * p.n + i];
        if (pos >= p.m || pos <= previous) return r * groups + g;
        previous = pos;
        const int64_t col = g * p.m + pos;
        const int bit = meta_bit(static_cast<int>(col % kMetaChunk), p.int8_layout);
        meta[col / kMetaChunk * 8 + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
      }
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
    for (int64_t j = row_begin; j < row_end; ++j) {
      expand_row<int8_t>(p, j, dense.data(), [](int8_t v) { return int32_t{v}; });
      const float bias = p.bias ? p.bias[j] : 0.0f;
      for (int64_t t = 0; t < p.tokens; ++t) {
        const int32_t acc = dot_i8(p.xq + t * p.xq_stride, dense.data(), k);
        store(p, t, j, std::fma(static_cast<float>(acc), p.x_scale[t] * p.weight_scale[j], bias));
      }
    }
    return;
  }
  std::vector<float> dense(k);
  for (int64_t j = row_begin; j < row_end; ++j) {
    if (p.weight == Scalar::kFloat32) {
      expand_row<float>(p, j, dense.data(), [](float v) { return v; });
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
