// Tile configurations of the 2:4 linear kernels (sm80: CUTLASS 2.x; sm90a: CUTLASS 3.x), and which problem
// gets which. Data, not code: the
// kernels are instantiated from kSm80Tiles, and choose_linear_config() walks kSm80Choices.
//
// TO BE MEASURED: nothing here has been timed yet (no GPU where this was written). The tiles are shapes
// that CUTLASS's own sparse unit tests run (test/unit/gemm/device/gemm_f16t_f16n_f32t_tensor_op_f32_sparse_sm80.cu);
// the limits in kSm80Choices are first guesses to replace with measurements (python -m sparseflow.bench).
#pragma once

#include <cstdint>

namespace sparseflow::nm::cutlass2x {

struct TileConfig {
  int tb_m, tb_n, tb_k;        // threadblock tile: GEMM M = output features, N = tokens, K = input features
  int warp_m, warp_n, warp_k;  // warp tile
  int stages;                  // cp.async pipeline depth
};

inline constexpr TileConfig kSm80Tiles[] = {
    // 0: small N. Tokens are GEMM N and CUTLASS pads N to the tile, so decode (<= 16 tokens) wants the
    //    smallest N tile CUTLASS's sparse GEMM supports (64); deep pipeline to keep weight loads in flight.
    {64, 64, 64, 32, 32, 64, 10},
    // 1: large problems (prefill, training-size batches).
    {128, 128, 64, 64, 64, 64, 4},
};
inline constexpr int kNumSm80Tiles = sizeof(kSm80Tiles) / sizeof(kSm80Tiles[0]);

struct ConfigChoice {
  int64_t max_tokens;        // the row applies when tokens <= max_tokens
  int64_t max_out_features;  // ... and out_features <= max_out_features
  int config;                // index into kSm80Tiles
};

inline constexpr ConfigChoice kSm80Choices[] = {
    {64, INT64_MAX, 0},          // decode and small batches
    {INT64_MAX, 1024, 0},        // few output features: 64-row tiles give 4x the CTAs
    {INT64_MAX, INT64_MAX, 1},
};

// The first row of kSm80Choices that fits the problem.
constexpr int choose_linear_config(int64_t tokens, int64_t out_features) {
  for (const ConfigChoice& c : kSm80Choices) {
    if (tokens <= c.max_tokens && out_features <= c.max_out_features) return c.config;
  }
  return kNumSm80Tiles - 1;
}

// ------------------------------------------------------------------------------------------------- sm90a
// CUTLASS 3.x tiles (TMA + wgmma.sp). The K tile is 128 in every one: the target-90 metadata layout
// (nm_cutlass.h) is built for it. TO BE MEASURED, as above.
struct Sm90Tile {
  int m, n, k;
  bool cooperative;  // two consumer warpgroups (tile M 128) instead of one (tile M 64)
};

inline constexpr Sm90Tile kSm90Tiles[] = {
    // 0: decode and small batches. wgmma.sp takes N down to 8, so decode pays for 32 token columns
    //    instead of the 64 of the sm80 kernel.
    {64, 32, 128, false},
    // 1: large problems.
    {128, 128, 128, true},
};
inline constexpr int kNumSm90Tiles = sizeof(kSm90Tiles) / sizeof(kSm90Tiles[0]);

inline constexpr ConfigChoice kSm90Choices[] = {
    {64, INT64_MAX, 0},
    {INT64_MAX, 1024, 0},
    {INT64_MAX, INT64_MAX, 1},
};

constexpr int choose_sm90_config(int64_t tokens, int64_t out_features) {
  for (const ConfigChoice& c : kSm90Choices) {
    if (tokens <= c.max_tokens && out_features <= c.max_out_features) return c.config;
  }
  return kNumSm90Tiles - 1;
}

}  // namespace sparseflow::nm::cutlass2x
