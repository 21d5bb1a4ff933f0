// The AMX kernels with tiles emulated in software (bsr_amx_tiles.h), and the self-checks that compare a tile
// kernel against the VNNI (int8) or AVX-512F (bf16) one. Torch-free; needs AVX512_VNNI.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "bsr_linear_amx.h"

namespace sparseflow::bsr {

uint32_t linear_int8_amx_emulated(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                  int64_t p_end) {
  return linear_int8_tiles<EmulatedTiles>(a, br_begin, br_end, p_begin, p_end);
}

uint32_t linear_bf16_amx_emulated(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                  int64_t p_begin, int64_t p_end) {
  return linear_bf16_tiles<EmulatedTiles>(a, panels, br_begin, br_end, p_begin, p_end);
}

namespace {

uint32_t lcg(uint32_t& state) { return state = state * 1664525u + 1013904223u; }

// Block-rows of 16x1 blocks: `count` distinct ascending input channels of [0, K) per row.
std::vector<uint16_t> random_rows(const std::vector<int64_t>& counts, int64_t K, uint32_t& state,
                                  std::vector<int32_t>& rowptr) {
  std::vector<uint16_t> indices;
  rowptr.assign(1, 0);
  for (int64_t count : counts) {
    std::vector<uint16_t> row(K);
    std::iota(row.begin(), row.end(), uint16_t(0));
    for (int64_t i = 0; i < count; ++i) std::swap(row[i], row[i + lcg(state) % (K - i)]);
    row.resize(count);
    std::sort(row.begin(), row.end());
    indices.insert(indices.end(), row.begin(), row.end());
    rowptr.push_back(int32_t(indices.size()));
  }
  return indices;
}

// The self-checks' 16x1 weights.
Weight check_weight(Layout layout, DType dtype, int64_t N, int64_t K, const std::vector<int32_t>& rowptr,
                    const std::vector<uint16_t>& indices, const void* values) {
  Weight w;
  w.layout = layout;
  w.dtype = dtype;
  w.N = N;
  w.K = K;
  w.block_rows = int64_t(rowptr.size()) - 1;
  w.rowptr = rowptr.data();
  w.indices = indices.data();
  w.values = values;
  return w;
}

}  // namespace

int64_t bf16_panel_kernel_mismatches(Bf16PanelKernel kernel) {
  constexpr int64_t N = 40, K = 300, M = 83;  // 3 block-rows (the last one partial), 6 panels (the last of 3 tokens)
  uint32_t state = 777;
  std::vector<int32_t> rowptr;
  const std::vector<uint16_t> indices = random_rows({45, 0, 133}, K, state, rowptr);
  auto small_bf16 = [&state](int range) {  // an integer in [-range, range] as bf16 (exact)
    const float v = float(int(lcg(state) >> 8) % (2 * range + 1) - range);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    return uint16_t(bits >> 16);
  };
  std::vector<uint16_t> values(indices.size() * 16), x(M * K);
  for (auto& v : values) v = small_bf16(3);
  for (auto& v : x) v = small_bf16(4);
  const int64_t panels = ceil_div(M, kF32PanelTokens);
  std::vector<uint16_t> xt(M * K);
  std::vector<float> xt_f32(M * K), y_kernel(M * N), y_ref(M * N);
  transpose_panels_bf16_avx512(x.data(), K, M, K, xt.data(), 0, panels);
  transpose_panels_f32_avx512(x.data(), true, K, M, K, false, xt_f32.data(), 0, panels);

  FloatArgs a;
  a.w = check_weight(Layout::kF16x1, DType::kBF16, N, K, rowptr, indices, values.data());
  a.ep.out = DType::kF32;
  a.ep.ldy = N;
  a.M = M;
  a.xt = xt_f32.data();
  a.ep.y = y_kernel.data();
  kernel(a, xt.data(), 0, 3, 0, panels);
  a.ep.y = y_ref.data();
  linear_f16x1_avx512(a, 0, 3, 0, panels);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < M * N; ++i) mismatches += y_kernel[i] != y_ref[i];
  return mismatches;
}

int64_t int8_panel_kernel_mismatches(Int8PanelKernel kernel) {
  constexpr int64_t N = 40, K = 300, M = 99;  // 3 block-rows (the last one partial), 2 panels (4 and 3 groups)
  uint32_t state = 12345;
  auto next = [&state] { return lcg(state); };
  std::vector<int32_t> rowptr;
  const std::vector<uint16_t> indices = random_rows({4 * 21, 0, 4 * 35}, K, state, rowptr);  // 21 and 35 tiles
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
  a.w = check_weight(Layout::kInt8_16x1, DType::kS8, N, K, rowptr, indices, values.data());
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
