// AMX tiles for the BSR kernels: the tile configuration the kernels use, and a software copy of the tile
// registers that follows the Intel SDM's pseudo-code, so that the tile kernels (bsr_linear_amx.h) run and are
// tested on CPUs without AMX. The hardware backend (HardwareTiles, bsr_linear_amx.cpp) has the same methods.
//
// Register roles, fixed because the AMX intrinsics take register numbers as literals:
//   tmm0..tmm3  C: accumulators, 16 rows (output channels) x 16 columns (tokens), int32 or fp32
//   tmm4        A: weights, 16 rows (output channels) x 64 bytes (16 dwords of 4 int8 or 2 bf16 input channels)
//   tmm5, tmm6  B: activations, 16 rows (dwords of A's columns) x 16 tokens; alternated so that loading the next
//               B does not wait for the product that reads the last one
#pragma once

#include <cstdint>
#include <cstring>

namespace sparseflow::bsr {
namespace {

constexpr int kTileRows = 16;
constexpr int kTileBytesPerRow = 64;
constexpr int kTileBytes = kTileRows * kTileBytesPerRow;
constexpr int kAccTiles = 4;  // tmm0..3
constexpr int kWeightTile = 4;
constexpr int kActTiles[2] = {5, 6};

// The 64-byte operand of LDTILECFG (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tmm0..15
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Every register the kernels use is a full 16 x 64-byte tile: partial groups of input channels are padded
// with zero weights instead of reconfiguring (LDTILECFG zeroes all tiles).
inline TileConfig kernel_tile_config() {
  TileConfig c;
  for (int t = 0; t <= kActTiles[1]; ++t) {
    c.rows[t] = kTileRows;
    c.colsb[t] = kTileBytesPerRow;
  }
  return c;
}

// Tile registers in memory. dot_i8 is TDPBSUD (signed bytes of A x unsigned bytes of B, int32 sums) and
// dot_bf16 is TDPBF16PS (bf16 pairs, fp32 sums; each product is exact in fp32, the sums round to nearest
// even, like the hardware's; its flush of denormals is not modelled).
class EmulatedTiles {
 public:
  EmulatedTiles() : config_(kernel_tile_config()) { std::memset(tiles_, 0, sizeof(tiles_)); }

  void zero_acc(int q) { std::memset(tiles_[q], 0, kTileBytes); }
  void load_weights(const void* p, int64_t stride) { load(kWeightTile, p, stride); }
  void dot_i8(int q, const void* b, int64_t stride) {
    const int bt = kActTiles[q % 2];
    load(bt, b, stride);
    for (int m = 0; m < config_.rows[q]; ++m) {
      int32_t* c = reinterpret_cast<int32_t*>(tiles_[q] + m * kTileBytesPerRow);
      for (int k = 0; k < config_.colsb[kWeightTile] / 4; ++k) {
        const auto* a = reinterpret_cast<const int8_t*>(tiles_[kWeightTile] + m * kTileBytesPerRow + 4 * k);
        const uint8_t* brow = tiles_[bt] + k * kTileBytesPerRow;
        for (int n = 0; n < config_.colsb[q] / 4; ++n) {
          int32_t s = 0;
          for (int j = 0; j < 4; ++j) s += int32_t(a[j]) * int32_t(brow[4 * n + j]);
          c[n] = int32_t(uint32_t(c[n]) + uint32_t(s));  // wraps like the hardware
        }
      }
    }
  }
  void dot_bf16(int q, const void* b, int64_t stride) {
    const int bt = kActTiles[q % 2];
    load(bt, b, stride);
    for (int m = 0; m < config_.rows[q]; ++m) {
      float* c = reinterpret_cast<float*>(tiles_[q] + m * kTileBytesPerRow);
      for (int k = 0; k < config_.colsb[kWeightTile] / 4; ++k) {
        const auto* a = reinterpret_cast<const uint16_t*>(tiles_[kWeightTile] + m * kTileBytesPerRow + 4 * k);
        const auto* brow = reinterpret_cast<const uint16_t*>(tiles_[bt] + k * kTileBytesPerRow);
        for (int n = 0; n < config_.colsb[q] / 4; ++n) {
          c[n] += bf16_value(a[0]) * bf16_value(brow[2 * n]);
          c[n] += bf16_value(a[1]) * bf16_value(brow[2 * n + 1]);
        }
      }
    }
  }
  void store_acc(int q, void* p, int64_t stride) {
    for (int r = 0; r < config_.rows[q]; ++r) {
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, tiles_[q] + r * kTileBytesPerRow, config_.colsb[q]);
    }
  }

 private:
  static float bf16_value(uint16_t v) {
    const uint32_t bits = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  void load(int t, const void* p, int64_t stride) {
    std::memset(tiles_[t], 0, kTileBytes);
    for (int r = 0; r < config_.rows[t]; ++r) {
      std::memcpy(tiles_[t] + r * kTileBytesPerRow, static_cast<const uint8_t*>(p) + r * stride, config_.colsb[t]);
    }
  }

  TileConfig config_;
  uint8_t tiles_[8][kTileBytes];
};

}  // namespace
}  // namespace sparseflow::bsr
