// Scalar pieces of nm_linear shared by the portable kernel and the AVX-512 kernels' edges (torch-free).
// Internal linkage: files built with different ISA flags include this, and must not share one definition.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "nm.h"

namespace sparseflow::nm {
namespace {

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu, bits;
  if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as vcvtps2ph and torch's .half(); NaN becomes the quiet 0x7e00.
inline uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // |f| < 2^-14: a subnormal half m * 2^-24 (the scaling by 2^24 is exact)
    float magnitude;
    std::memcpy(&magnitude, &a, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * 16777216.0f));
  }
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1);  // the carry may bump the exponent: still right
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

inline float activate(float v, Activation act) {
  switch (act) {
    case Activation::kNone: return v;
    case Activation::kRelu: return v < 0.0f ? 0.0f : v;  // NaN passes through, as in torch
    case Activation::kGelu: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::kSilu: return v / (1.0f + std::exp(-v));
  }
  return v;
}

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

inline void store_u32(uint8_t* p, uint32_t w) { std::memcpy(p, &w, 4); }

// The int8 quantization of one value (see LinearParams); identical in every kernel.
inline int8_t quantize_value(float x, float inv_scale) {
  float v = x * inv_scale;
  v = v > -127.0f ? v : -127.0f;  // NaN -> -127, like _mm512_max_ps(v, -127) in the AVX-512 kernel
  v = v < 127.0f ? v : 127.0f;
  return static_cast<int8_t>(std::nearbyint(v));
}

inline float quantize_inv_scale(float amax) { return amax > 0.0f ? 127.0f / amax : 0.0f; }

}  // namespace
}  // namespace sparseflow::nm
