// AVX-512F vector math shared by the BSR and N:M CPU kernels. Include only from files built with AVX-512
// flags; internal linkage so no AVX-512 copy of an inline function can be picked up by portable code.
#pragma once

#include <immintrin.h>

namespace sparseflow {
namespace {

// vpdpbusd acc += x (u8) . w (s8) per dword. Inline asm because GCC 12's intrinsic restricts the
// accumulator to zmm0-15 and then copies 16 accumulators in and out of zmm16-31 every iteration (2x slower).
__attribute__((always_inline)) inline __m512i dpbusd(__m512i acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
  return acc;
}

// exp(x) for x already clamped by the caller to a range where 2^n stays finite: Cephes' single-precision
// polynomial on r = x - n*ln2 (relative error ~1e-7), with 2^n applied by vscalefps.
__attribute__((always_inline)) inline __m512 exp_clamped_ps(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// 16 bf16 values -> fp32, exactly (a bf16 is the high half of an fp32).
__attribute__((always_inline)) inline __m512 bf16_to_ps(__m256i raw) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

}  // namespace
}  // namespace sparseflow
