// Scalar pieces of the BSR kernels: activations, bf16 rounding, the output store. Used by the portable
// kernels and by the AVX-512 kernels for their ragged edges; header-only and torch-free. Everything has
// internal linkage: the ISA-flagged files include it too, and a shared inline copy compiled with AVX-512
// flags must never be what the portable path calls.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "bsr.h"

namespace sparseflow::bsr {
namespace {

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN -> quiet NaN: the same rule as c10::BFloat16.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float activate(float v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    case Activation::kRelu: return v > 0.f ? v : (v == v ? 0.f : v);
    case Activation::kGelu: return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
    case Activation::kSilu: return v / (1.f + std::exp(-v));
  }
  return v;
}

// y[m, n] = act(v + bias[n]) in the output dtype.
inline void store_float(const Epilogue& ep, int64_t m, int64_t n, float v) {
  if (ep.bias != nullptr) v += ep.bias[n];
  v = activate(v, ep.act);
  if (ep.out == DType::kBF16) {
    static_cast<uint16_t*>(ep.y)[m * ep.ldy + n] = float_to_bf16(v);
  } else {
    static_cast<float*>(ep.y)[m * ep.ldy + n] = v;
  }
}

// Dequantizes an int8 accumulator (already compensated for the zero point) and stores it.
inline void store_int8(const Int8Args& a, int64_t m, int64_t n, int32_t acc) {
  if (a.ep.out == DType::kS32) {
    static_cast<int32_t*>(a.ep.y)[m * a.ep.ldy + n] = acc;
    return;
  }
  store_float(a.ep, m, n, static_cast<float>(acc) * (a.x_scale[m] * a.w.scale[n]));
}

// The per-token quantization rule of bsr.h (Int8Args), for a row whose range is [lo, hi].
struct TokenQuant {
  float scale, inv_scale, zp;
};

inline TokenQuant token_quant(float lo, float hi) {
  lo = std::min(lo, 0.f);
  hi = std::max(hi, 0.f);
  float scale = (hi - lo) / 255.f;
  if (scale == 0.f) scale = 1.f;
  const float zp = std::min(std::max(std::nearbyint(-lo / scale), 0.f), 255.f);
  return {scale, 1.f / scale, zp};
}

inline uint8_t quantize_u8(float v, const TokenQuant& q) {
  return static_cast<uint8_t>(std::min(std::max(std::nearbyint(v * q.inv_scale) + q.zp, 0.f), 255.f));
}

}  // namespace
}  // namespace sparseflow::bsr
