// Portable bsr_linear kernels (plain C++, any CPU): the fallback of every layout and dtype, and the
// per-token activation quantization of the int8 path. Integer results are bit-identical to the VNNI
// kernels; float results differ only by summation order.
#include <algorithm>

#include "bsr.h"
#include "bsr_scalar.h"

namespace sparseflow::bsr {
namespace {

template <DType kW>
float weight_at(const void* values, int64_t i) {
  if constexpr (kW == DType::kBF16) {
    return bf16_to_float(static_cast<const uint16_t*>(values)[i]);
  } else {
    return static_cast<const float*>(values)[i];
  }
}

template <DType kW>
uint32_t float_rows(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin, int64_t m_end) {
  const Weight& w = a.w;
  const NativeBlock nb = native_block(w.layout);
  const bool lanes_are_channels = w.layout == Layout::kF16x1;
  const bool tiled = is_tiled_layout(w.layout);  // float 4x1 (fp32 or bf16): value tile_element(b, 4, c)
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    const int64_t row0 = r * nb.rows;
    const int64_t rows = std::min<int64_t>(nb.rows, w.N - row0);
    for (int64_t m = m_begin; m < m_end; ++m) {
      const float* x = a.x + m * a.ldx;
      float sum[16] = {};
      for (int64_t b0 = w.rowptr[r]; b0 < w.rowptr[r + 1]; b0 += kSumChunkBlocks) {
        float acc[16] = {};
        for (int64_t b = b0; b < std::min<int64_t>(w.rowptr[r + 1], b0 + kSumChunkBlocks); ++b) {
          const uint32_t k = w.indices[b];
          max_index = std::max(max_index, k);
          const int64_t kc = std::min<int64_t>(k, w.K - 1);
          if (tiled) {
            for (int c = 0; c < 4; ++c) acc[c] += weight_at<kW>(w.values, tile_element(b, 4, c)) * x[kc];
          } else if (lanes_are_channels) {
            for (int c = 0; c < 16; ++c) acc[c] += weight_at<kW>(w.values, b * 16 + c) * x[kc];
          } else {
            const int64_t width = std::min<int64_t>(16, w.K - kc);
            for (int64_t c = 0; c < width; ++c) acc[0] += weight_at<kW>(w.values, b * 16 + c) * x[kc + c];
          }
        }
        for (int c = 0; c < 16; ++c) sum[c] += acc[c];
      }
      for (int64_t c = 0; c < rows; ++c) store_float(a.ep, m, row0 + c, sum[c]);
    }
  }
  return max_index;
}

}  // namespace

uint32_t linear_float_portable(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                               int64_t m_end) {
  return a.w.dtype == DType::kBF16 ? float_rows<DType::kBF16>(a, br_begin, br_end, m_begin, m_end)
                                   : float_rows<DType::kF32>(a, br_begin, br_end, m_begin, m_end);
}

uint32_t linear_int8_portable(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                              int64_t m_end) {
  const Weight& w = a.w;
  const auto* values = static_cast<const int8_t*>(w.values);
  const int64_t tile_rows = native_block(w.layout).rows;  // 4x1 or 16x1: tiles of tile_rows x 4 blocks
  uint32_t max_index = 0;
  for (int64_t r = br_begin; r < br_end; ++r) {
    const int64_t row0 = r * tile_rows;
    const int64_t rows = std::min<int64_t>(tile_rows, w.N - row0);
    for (int64_t m = m_begin; m < m_end; ++m) {
      const uint8_t* xq = a.xq + m * a.ldxq;
      int64_t acc[16] = {};
      for (int64_t b = w.rowptr[r]; b < w.rowptr[r + 1]; ++b) {
        const uint32_t k = w.indices[b];
        max_index = std::max(max_index, k);
        const int64_t xv = xq[std::min<int64_t>(k, w.K - 1)];
        for (int64_t c = 0; c < tile_rows; ++c) acc[c] += xv * values[tile_element(b, tile_rows, c)];
      }
      for (int64_t c = 0; c < rows; ++c) {
        const int64_t comp = int64_t(a.x_zp[m]) * w.compensation[row0 + c];
        store_int8(a, m, row0 + c, static_cast<int32_t>(acc[c] - comp));
      }
    }
  }
  return max_index;
}

void quantize_rows_portable(const QuantArgs& q, int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    auto at = [&](int64_t k) {
      return q.x_bf16 ? bf16_to_float(static_cast<const uint16_t*>(q.x)[m * q.ldx + k])
                      : static_cast<const float*>(q.x)[m * q.ldx + k];
    };
    float lo = 0.f, hi = 0.f;
    for (int64_t k = 0; k < q.K; ++k) {
      lo = std::min(lo, at(k));
      hi = std::max(hi, at(k));
    }
    const TokenQuant tq = token_quant(lo, hi);
    q.scale[m] = tq.scale;
    q.zp[m] = static_cast<int32_t>(tq.zp);
    for (int64_t k = 0; k < q.K; ++k) q.xq[m * q.ldxq + k] = quantize_u8(at(k), tq);
  }
}

}  // namespace sparseflow::bsr
