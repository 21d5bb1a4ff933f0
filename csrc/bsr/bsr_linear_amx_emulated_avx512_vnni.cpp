// The AMX int8 kernel with tiles emulated in software (bsr_amx_tiles.h), and the self-check that compares an
// int8 panel kernel against the VNNI one. Torch-free; needs AVX512_VNNI (for the reference kernel).
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "bsr_linear_amx.h"

namespace sparseflow::bsr {

uint32_t linear_int8_amx_emulated(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                  int64_t p_end) {
  return linear_int8_tiles<EmulatedTiles>(a, br_begin, br_end, p_begin, p_end);
}

int64_t int8_panel_kernel_mismatches(Int8PanelKernel kernel) {
  constexpr int64_t N = 40, K = 300, M = 99;  // 3 block-rows (the last one partial), 2 panels (4 and 3 groups)
  constexpr int64_t kTilesPerRow[3] = {21, 0, 35};
  uint32_t state = 12345;
  auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  std::vector<int32_t> rowptr = {0};
  std::vector<uint16_t> indices;
  for (int64_t tiles : kTilesPerRow) {
    std::vector<uint16_t> row(K);  // 4 * tiles distinct channels, ascending
    std::iota(row.begin(), row.end(), uint16_t(0));
    for (int64_t i = 0; i < 4 * tiles; ++i) std::swap(row[i], row[i + next() % (K - i)]);
    row.resize(4 * tiles);
    std::sort(row.begin(), row.end());
    indices.insert(indices.end(), row.begin(), row.end());
    rowptr.push_back(int32_t(indices.size()));
  }
  std::vector<int8_t> values(indices.size() * 16);
  for (size_t i = 0; i < values.size(); ++i) values[i] = int8_t(i % 97 == 0 ? -128 : i % 89 == 0 ? 127 : next() >> 24);
  std::vector<uint8_t> xq(M * K);
  for (size_t i = 0; i < xq.size(); ++i) xq[i] = uint8_t(i % 83 == 0 ? 255 : next() >> 24);
  const int64_t panels = ceil_div(M, kVnniPanelTokens);
  std::vector<uint8_t> xp(panels * kVnniPanelTokens * K);
  for (int64_t p = 0; p < panels; ++p) build_panel_u8_avx512(xq.data(), M, K, xp.data(), p, 0, K);
  std::vector<int32_t> zeros(N, 0), zp(M, 0), y_kernel(M * N), y_vnni(M * N);
  std::vector<float> x_scale(M, 1.f);

  Int8Args a;
  a.w.layout = Layout::kInt8_16x1;
  a.w.dtype = DType::kS8;
  a.w.N = N;
  a.w.K = K;
  a.w.block_rows = 3;
  a.w.rowptr = rowptr.data();
  a.w.indices = indices.data();
  a.w.values = values.data();
  a.w.compensation = zeros.data();
  a.ep.out = DType::kS32;
  a.ep.ldy = N;
  a.M = M;
  a.xq = xq.data();
  a.ldxq = K;
  a.xp = xp.data();
  a.x_scale = x_scale.data();
  a.x_zp = zp.data();
  a.ep.y = y_kernel.data();
  kernel(a, 0, 3, 0, panels);
  a.ep.y = y_vnni.data();
  linear_int8_vnni(a, 0, 3, 0, panels);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < M * N; ++i) mismatches += y_kernel[i] != y_vnni[i];
  return mismatches;
}

}  // namespace sparseflow::bsr
