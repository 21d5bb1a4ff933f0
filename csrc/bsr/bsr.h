// Block-sparse (BSR) family: torch-free declarations shared by the pack step and the linear kernels.
//
// Canonical format (python/sparseflow/formats.py, BlockSparseWeight) of a weight W [out, in]:
//   crow   int32 [ceil(out/R) + 1]  block-row pointers into col/values
//   col    int32 [nnz]              block-column of each stored block, strictly ascending per block-row
//   values [nnz, R, C]              fp32, bf16 or int8 (then with per-output-channel fp32 scales)
// Blocks may overhang the matrix when out % R or in % C != 0; entries outside [out, in] are ignored.
//
// Packed (kernel) layouts, chosen once by bsr_pack. Every layout stores "native" blocks that are
// re-cut from the canonical ones (all-zero native blocks are dropped), with uint16 input-channel indices:
//   kInt8_4x1   4 output channels x 1 input channel (the paper's VNNI pattern). The blocks of a block-row
//               are concatenated in groups of 4 into 4x4 tiles (rows with a block count that is not a
//               multiple of 4 are padded with zero blocks that repeat the last index):
//               indices[b] = input channel k of block b; values (int8) tile t = blocks 4t..4t+3 of a row,
//               16 bytes: byte 4c + j = W[4*row + c, k of block 4t + j], so each output channel's four
//               weights form one dword for vpdpbusd. compensation[n] = sum_k W[n, k] (int32).
//               Tiles of span 16 (meta[kMetaTileSpan] = 16): a tile also ends before a block 16 or more
//               input channels after its first one (padded like a row end), so one 16-byte window of x
//               holds a tile's four activations and the decode kernel picks them with one vpshufb instead
//               of four scalar gathers. bsr_pack uses them when they add at most 1/4 more blocks (about
//               up to 80 % sparsity for uniformly spread blocks: +0.1 % at 50 %, +4 % at 70 %, +17 % at 80 %).
//   kInt8_16x1  the same with 16 output channels per block: 16x4 tiles of 64 bytes, byte 4c + j =
//               W[16*row + c, k of block 4t + j]. One zmm holds a tile and all 16 channels share the tile's
//               four activations, so a one-token decode gathers 4 activation bytes per 64 weight bytes
//               (4x1: 16), and the 16-bit index costs 1/8 byte per weight instead of 1/2.
//   kFloat4x1   fp32 or bf16 4x1 blocks in 4x4 tiles of 4 blocks, as kInt8_4x1 (also with span-16 tiles):
//               tile t holds 16 values, value 4c + j = W[4*row + c, k of block 4t + j], so one zmm holds an fp32
//               tile, and a bf16 tile pairs (k0, k1) and (k2, k3) of each channel for vdpbf16ps. For canonical
//               blocks of fewer than 16 rows it stores ~4x fewer zeros than 16x1 (50 % random 4x1 blocks fill
//               ~94 % of the 16x1 blocks).
//   kF16x1      16 output channels x 1 input channel: indices[b] = k, values[b][c] = W[16*row + c, k].
//   kF1x16      1 output channel x 16 input channels (aligned to 16): indices[b] = first k (a multiple of
//               16), values[b][c] = W[row, k + c] (zero beyond in_features).
// The layout is the same for every CPU ISA level (portable, AVX-512, VNNI), so a weight packed once runs on
// any of them; `meta` records the layout and sizes and bsr_linear checks it.
#pragma once

#include <cstdint>

namespace sparseflow::bsr {

constexpr int64_t kFormatVersion = 1;
constexpr int64_t kMaxInFeatures = 65536;  // input-channel indices are uint16

// Id 4 is the CUDA layout (bsr_cuda.h).
enum class Layout : int64_t { kInt8_4x1 = 1, kF16x1 = 2, kF1x16 = 3, kInt8_16x1 = 5, kFloat4x1 = 6 };
enum class DType : int64_t { kF32 = 0, kBF16 = 1, kS8 = 2, kS32 = 3 };
enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kSilu = 3 };

// Slots of the int64 `meta` tensor returned by bsr_pack.
enum MetaSlot : int {
  kMetaVersion = 0, kMetaLayout, kMetaDtype, kMetaOut, kMetaIn, kMetaNnz, kMetaTileSpan, kMetaSize = 8
};

// The tile span of 4x1 weights (int8 or float) whose tiles each lie within 16 input channels (else meta holds 0).
constexpr int kTileSpan = 16;
// What a kernel returns (when no index is >= K) if such a weight has a tile that spans
// further (a corrupted weight): above every 16-bit index, so it survives the max over threads.
constexpr uint32_t kTileSpanBroken = 1u << 16;

struct NativeBlock {
  int rows;   // output channels per block
  int cols;   // input channels per block
  int group;  // blocks per tile; block-rows hold a multiple of this many blocks
};

constexpr NativeBlock native_block(Layout l) {
  switch (l) {
    case Layout::kInt8_4x1: return {4, 1, 4};
    case Layout::kInt8_16x1: return {16, 1, 4};
    case Layout::kFloat4x1: return {4, 1, 4};
    case Layout::kF16x1: return {16, 1, 1};
    case Layout::kF1x16: return {1, 16, 1};
  }
  return {1, 1, 1};
}

constexpr bool is_int8_layout(Layout l) { return l == Layout::kInt8_4x1 || l == Layout::kInt8_16x1; }
// Layouts of 4-block tiles ([blocks / 4, rows, 4] values, float or byte 4c + j = W[rows*row + c, k of block 4t + j]).
constexpr bool is_tiled_layout(Layout l) { return native_block(l).group == 4; }
// Where channel c of block b lies in a tiled layout's values (tile b / 4, element 4c + b % 4).
constexpr int64_t tile_element(int64_t b, int64_t rows, int64_t c) { return (b / 4) * 4 * rows + 4 * c + b % 4; }
// Layouts whose pack may cut span-16 tiles (meta[kMetaTileSpan]).
constexpr bool has_tile_span(Layout l) { return l == Layout::kInt8_4x1 || l == Layout::kFloat4x1; }

// ------------------------------------------------------------------------------------------------ pack

struct CanonicalBsr {
  const int32_t* crow = nullptr;
  const int32_t* col = nullptr;
  const void* values = nullptr;  // [nnz, R, C], contiguous
  DType dtype = DType::kF32;
  int64_t R = 1, C = 1;
  int64_t out_features = 0, in_features = 0;
  int64_t nnz = 0;
};

// Problems bsr_pack reports, with the first offending block-row / entry.
enum class CanonicalError : int { kNone = 0, kCrowStart, kCrowEnd, kCrowDecreasing, kColRange, kColOrder };
struct CanonicalCheck {
  CanonicalError error = CanonicalError::kNone;
  int64_t block_row = -1;
  int64_t entry = -1;  // index into crow (crow errors) or col (col errors)
};
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The first problem of the canonical arrays, in this order: crow start, crow non-decreasing, crow end, then
// each block-row's columns (in range, strictly ascending). Reads crow/col only (host memory).
inline CanonicalCheck validate_canonical(const CanonicalBsr& w) {
  const int64_t block_rows = ceil_div(w.out_features, w.R);
  const int64_t block_cols = ceil_div(w.in_features, w.C);
  if (w.crow[0] != 0) return {CanonicalError::kCrowStart, 0, 0};
  for (int64_t b = 0; b < block_rows; ++b) {
    if (w.crow[b + 1] < w.crow[b]) return {CanonicalError::kCrowDecreasing, b, b + 1};
  }
  if (w.crow[block_rows] != w.nnz) return {CanonicalError::kCrowEnd, block_rows, block_rows};
  for (int64_t b = 0; b < block_rows; ++b) {
    for (int64_t j = w.crow[b]; j < w.crow[b + 1]; ++j) {
      if (w.col[j] < 0 || w.col[j] >= block_cols) return {CanonicalError::kColRange, b, j};
      if (j > w.crow[b] && w.col[j] <= w.col[j - 1]) return {CanonicalError::kColOrder, b, j};
    }
  }
  return {};
}

// Pass 1: the number of native blocks (padded to whole tiles) of native block-rows [begin, end), and, when
// span_counts is not null, the same for tiles of at most kTileSpan input channels.
void pack_count(const CanonicalBsr& w, Layout layout, int64_t begin, int64_t end, int32_t* counts,
                int32_t* span_counts);
// Pass 2: fills indices/values of native block-rows [begin, end) at the offsets in rowptr, with tiles of at
// most `span` input channels (kTileSpan; 0: no limit), and, for int8, compensation[n] of their output channels.
void pack_fill(const CanonicalBsr& w, Layout layout, int span, int64_t begin, int64_t end, const int32_t* rowptr,
               uint16_t* indices, void* values, int32_t* compensation);

// ------------------------------------------------------------------------------------------------ linear

// Output stage shared by every kernel: y = act(acc (* scales) + bias) stored as fp32/bf16, or the int32
// accumulator itself (int8 weights with out_dtype=int32; no bias, scales or activation then).
struct Epilogue {
  const float* bias = nullptr;  // [N] or null
  Activation act = Activation::kNone;
  DType out = DType::kF32;      // kF32, kBF16 or kS32
  void* y = nullptr;            // [M, ldy]
  int64_t ldy = 0;
};

struct Weight {
  Layout layout = Layout::kF16x1;
  DType dtype = DType::kF32;
  int64_t N = 0, K = 0;
  int64_t block_rows = 0;
  int tile_span = 0;                   // kTileSpan or 0 (meta[kMetaTileSpan])
  const int32_t* rowptr = nullptr;     // [block_rows + 1]
  const uint16_t* indices = nullptr;   // [nnz]
  const void* values = nullptr;
  const int32_t* compensation = nullptr;  // int8: [N]
  const float* scale = nullptr;           // int8: [N] per-output-channel weight scales (null for int32 out)
};

// Float weights (fp32/bf16), fp32 activations.
struct FloatArgs {
  Weight w;
  Epilogue ep;
  int64_t M = 0;
  const float* x = nullptr;  // portable kernel: row-major [M, ldx]
  int64_t ldx = 0;            // (also the float 4x1 decodes' padded rows)
  const float* xt = nullptr;  // AVX-512 kernels: token panels, see below
};

// Float kernels that sum a block-row's blocks sequentially into one accumulator per output add them in
// chunks of this many blocks and then sum the chunks: a single chain over K/2 = 2048 terms was several
// times less accurate than MKL's blocked GEMM.
constexpr int64_t kSumChunkBlocks = 64;

// The float 4x1 decode kernels run up to this many tokens in one pass over the weight; the panel kernel, whose
// lanes are tokens, takes over from there (Zen 4, 2 threads, 50 %: 576x576 / 1536x576 / 576x1536, M = 6 decode
// 26 / 62 / 63 us against panels 40 / 77 / 83; M = 8 33-36 / 75-107 / 77-103 against 34 / 75 / 77). bf16 (AVX512_BF16),
// same shapes: M = 6 decode 20 / 46 / 45 us against panels 40 / 64 / 105; at M = 7-8 each wins one shape.
constexpr int64_t kFloat4x1DecodeMaxTokens = 6;

// Token panels of the AVX-512 float kernels; panel p holds tokens [16p, 16p + w), w = min(16, M - 16p).
// 16x1: [K][w] at offset 16p * K (float 4x1: [K][float4x1_panel_line(w, K)], zeros past the w tokens), so one
// cache line serves all the panel's tokens for one input channel.
// 1x16: [K16 / 16][w][16] at offset 16p * K16 (K16 = K rounded up to 16, zero-padded), so a block's 16
// input channels are one aligned line per token and the tokens' lines are adjacent (rows of x itself are
// a multiple of 4 KiB apart for typical K and would fight over the same L1 sets).
constexpr int kF32PanelTokens = 16;
// The float 4x1 panel kernels' line (floats per input channel) of a panel of w tokens: 8 (an aligned ymm) up to 8
// tokens; 16 (a cache line) for 9-15 tokens when K <= 3072, else w. Lines of w floats straddle cache lines: 9
// tokens ran 1.1-1.2x slower than on 16-float lines at K = 576-3072 (fp32, 2 threads); at K = 4096 the padded
// panel (256 KiB) ran 1.05-1.1x slower instead. 16-float lines for 8 tokens ran 1.3x slower (768x3072 50 %).
constexpr int64_t float4x1_panel_line(int64_t w, int64_t K) { return w <= 8 ? 8 : K <= 3072 ? kF32PanelTokens : w; }

// int8 weights: activations quantized per token to u8 with a zero point (asymmetric), computed as
//   lo = min(0, min_k x), hi = max(0, max_k x), scale = (hi - lo) / 255 (1 if that is 0),
//   zp = clamp(round(-lo / scale), 0, 255), xq = clamp(round(x * (1 / scale)) + zp, 0, 255)
// (round = half to even, fp32 throughout), so that x ~= scale * (xq - zp). The kernels accumulate
// acc = sum_k (xq - zp) * W = sum_k xq * W - zp * compensation exactly in int32 (K <= 65536 keeps it in
// range) and dequantize y = acc * (scale_x * scale_w) (+ bias).
struct Int8Args {
  Weight w;
  Epilogue ep;
  int64_t M = 0;
  const uint8_t* xq = nullptr;  // M rows of K + kTileSpan bytes (portable kernel, one-token 16x1 and span-16 decode)
  int64_t ldxq = 0;              // xq's row stride: K, or more for the span-16 decode (rows off 4 KiB multiples)
  const uint8_t* xp = nullptr;  // VNNI kernels: panels (kVnniPanel...) or 4-token groups (decode)
  const float* x_scale = nullptr;  // [M]
  const int32_t* x_zp = nullptr;   // [M]
};

// The span-16 decode loads x's 16-byte windows once per token; from 4 tokens on, the plain-tile decode's 4-token
// groups (which read span-16 weights too) win: Zen 4, 2 threads, 4096^2 and 3072x768 at 50-70 %, M = 4 1.1-1.2x,
// M = 8 1.2x; M = 2 is 1.6x faster on span-16 windows.
constexpr int kSpan16DecodeMaxTokens = 3;

// Whether the int8 decode of `tokens` tokens (at most kInt8DecodeMaxTokens, bsr_cpu.cpp) takes the span-16
// windows: run_int8 lays out xq for it and the decode kernel takes that path, so both ask here.
inline bool span16_decode(const Weight& w, int64_t tokens) {
  return w.tile_span == kTileSpan && tokens <= kSpan16DecodeMaxTokens;
}

// The VNNI 4x1 kernel's token panels: 64 tokens per panel, [K][64] bytes, token 16q + 4L + d stored at
// byte 16L + 4q + d so that the unpack sequence in the kernel yields accumulators in token order.
constexpr int kVnniPanelTokens = 64;
// The decode kernel's groups: 4 tokens per group, [K] dwords whose byte t is token 4g + t.
constexpr int kVnniGroupTokens = 4;

// Quantization (per token rows [begin, end) of x [M, ldx], fp32 or bf16 by x_bf16).
struct QuantArgs {
  const void* x = nullptr;
  bool x_bf16 = false;
  int64_t ldx = 0;
  int64_t K = 0;
  uint8_t* xq = nullptr;  // [M, K] rows, ldxq bytes apart
  int64_t ldxq = 0;
  float* scale = nullptr;
  int32_t* zp = nullptr;
};

// ---- portable kernels (bsr_linear_kernels_cpu.cpp); every function works on native block-rows
// [br_begin, br_end) and tokens [m_begin, m_end). Like every bsr_linear kernel, it returns the largest stored
// index >= K it met, or a value below K if none (the wrapper reports such an index as a corrupted weight; the
// kernels clamp or skip them so they never read out of bounds).
uint32_t linear_float_portable(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                               int64_t m_end);
uint32_t linear_int8_portable(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                              int64_t m_end);
void quantize_rows_portable(const QuantArgs& q, int64_t m_begin, int64_t m_end);

// ---- AVX-512F (bsr_linear_avx512.cpp)
void quantize_rows_avx512(const QuantArgs& q, int64_t m_begin, int64_t m_end);
// Writes panels [p_begin, p_end) of xt from x rows (fp32 or bf16); with float4x1_lines, the last panel's lines are
// float4x1_panel_line(w, K) floats (zeros past its w tokens) instead of w.
void transpose_panels_f32_avx512(const void* x, bool x_bf16, int64_t ldx, int64_t M, int64_t K, bool float4x1_lines,
                                 float* xt, int64_t p_begin, int64_t p_end);
// bf16 x rows -> [K][w] bf16 panels (the AVX512_BF16 kernel's layout, same offsets as the fp32 16x1 one).
void transpose_panels_bf16_avx512(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint16_t* xt,
                                  int64_t p_begin, int64_t p_end);
void kblock_panels_f32_avx512(const void* x, bool x_bf16, int64_t ldx, int64_t M, int64_t K, float* xt,
                              int64_t p_begin, int64_t p_end);
uint32_t linear_f16x1_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                             int64_t p_end);
uint32_t linear_f1x16_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                             int64_t p_end);
// float 4x1 tiles (fp32, or bf16 widened) on the 16x1 kernel's token panels (a.xt), and the decode of tokens
// [m_begin, m_end) on padded fp32 rows (a.xt, a.ldx apart, kTileSpan floats of slack each) in passes of up to
// kFloat4x1DecodeMaxTokens tokens.
uint32_t linear_f4x1_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end);
uint32_t linear_f4x1_decode_avx512(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                   int64_t m_end);

// ---- AVX512_BF16 (bsr_linear_avx512_bf16.cpp): bf16 weights, vdpbf16ps. 16x1 on bf16 panels; float 4x1 on the
// AVX-512F kernels' fp32 panels of bf16 x (a.xt), and its decode of tokens [m_begin, m_end) on padded bf16 rows x
// (a.ldx apart, kTileSpan zeros of slack each) in passes of up to kFloat4x1DecodeMaxTokens tokens.
uint32_t linear_bf16_16x1_avx512bf16(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                     int64_t p_begin, int64_t p_end);
uint32_t linear_bf16_4x1_avx512bf16(const FloatArgs& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                    int64_t p_end);
uint32_t linear_bf16_4x1_decode_avx512bf16(const FloatArgs& a, const uint16_t* x, int64_t br_begin, int64_t br_end,
                                           int64_t m_begin, int64_t m_end);

// ---- AVX512_VNNI (bsr_linear_avx512_vnni.cpp)
// Builds columns [k_begin, k_end) (multiples of 16, or K) of panel p (main kernel), or groups [g_begin, g_end)
// (decode), from xq [M, K].
void build_panel_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t p, int64_t k_begin,
                           int64_t k_end);
void build_groups_u8_avx512(const uint8_t* xq, int64_t M, int64_t K, uint8_t* xp, int64_t g_begin,
                            int64_t g_end);
uint32_t linear_int8_vnni(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                          int64_t p_end);
uint32_t linear_int8_vnni_decode(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t m_begin,
                                 int64_t m_end);

// ---- AMX (bsr_linear_amx.cpp): 16x1 weights, one tile product per 16 int8 tiles (on the VNNI kernel's panels and
// arguments) or per 32 bf16 blocks (on the AVX512_BF16 kernel's panels). The *_emulated kernels
// (bsr_linear_amx_emulated_avx512_vnni.cpp) are the same with the tiles emulated in software: what the tests run
// on CPUs without AMX (they need AVX512_VNNI).
using Int8PanelKernel = uint32_t (*)(const Int8Args&, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                     int64_t p_end);
using Bf16PanelKernel = uint32_t (*)(const FloatArgs&, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                     int64_t p_begin, int64_t p_end);
uint32_t linear_int8_amx(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end);
uint32_t linear_int8_amx_emulated(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin,
                                  int64_t p_end);
uint32_t linear_bf16_amx(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                         int64_t p_begin, int64_t p_end);
uint32_t linear_bf16_amx_emulated(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                                  int64_t p_begin, int64_t p_end);
// Self-checks on built-in 16x1 problems (a partial tile group, an empty block-row, a partial last block-row, and
// for int8 3 and 4 groups of 16 tokens and the extreme int8/u8 values; for bf16 a partial 4-panel pass, a 3-token
// panel, an odd block count and sums over more than kSumChunkBlocks blocks): the number of outputs that differ
// from linear_int8_vnni / linear_f16x1_avx512 (0: the kernel agrees). The bf16 problem holds small integers, whose
// sums are exact in any order, so both compare exactly.
int64_t int8_panel_kernel_mismatches(Int8PanelKernel kernel);
int64_t bf16_panel_kernel_mismatches(Bf16PanelKernel kernel);
// Whether the AMX kernels run in this process: "unavailable" (no AMX, or selected_cpu_isa() below it),
// "emulated" (set_amx_emulation), "active" (their self-checks passed; run here if no call has run them yet), or
// "off: self-check failed". Defined in bsr_cpu.cpp.
const char* amx_status();

}  // namespace sparseflow::bsr
