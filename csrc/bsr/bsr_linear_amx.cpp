// AMX bsr_linear kernels, int8 and bf16 (torch-free; bsr_linear_amx.h with the hardware tiles). Called only when
// selected_cpu_isa() >= kAmx and their self-check passed in this process.
//
// NOT RUN on the development machine (Cascade Lake: no AMX). The same kernel with emulated tiles is tested
// there; on an AMX CPU the first call compares this build against the VNNI (int8) and AVX-512F (bf16) kernels and turns AMX off on a
// mismatch (bsr_cpu.cpp).
#include "bsr_linear_amx.h"

namespace sparseflow::bsr {
namespace {

// The AMX instructions as inline asm with memory clobbers: GCC 12's _tile_loadd/_tile_stored macros do not
// tell the compiler that they read or write memory, so the stores that build an operand could be moved
// past the load that reads it.
#define SPARSEFLOW_TILE_LOAD(tmm, base, stride) \
  asm volatile("tileloadd (%0,%1,1), %%tmm" #tmm ::"r"(base), "r"(int64_t(stride)) : "memory")
#define SPARSEFLOW_TILE_STORE(tmm, base, stride) \
  asm volatile("tilestored %%tmm" #tmm ", (%0,%1,1)" ::"r"(base), "r"(int64_t(stride)) : "memory")
#define SPARSEFLOW_TILE_OP(op, c, a, b) asm volatile(#op " %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

class HardwareTiles {
 public:
  HardwareTiles() {
    static const TileConfig config = kernel_tile_config();
    asm volatile("ldtilecfg %0" ::"m"(config));
  }
  ~HardwareTiles() { asm volatile("tilerelease" ::); }
  HardwareTiles(const HardwareTiles&) = delete;
  HardwareTiles& operator=(const HardwareTiles&) = delete;

  void zero_acc(int q) {
    switch (q) {
      case 0: asm volatile("tilezero %%tmm0" ::); break;
      case 1: asm volatile("tilezero %%tmm1" ::); break;
      case 2: asm volatile("tilezero %%tmm2" ::); break;
      default: asm volatile("tilezero %%tmm3" ::); break;
    }
  }
  void load_weights(const void* p, int64_t stride) { SPARSEFLOW_TILE_LOAD(4, p, stride); }
  void dot_i8(int q, const void* b, int64_t stride) {
    switch (q) {  // B in tmm5 for even q, tmm6 for odd q (bsr_amx_tiles.h)
      case 0: SPARSEFLOW_TILE_LOAD(5, b, stride); SPARSEFLOW_TILE_OP(tdpbsud, 0, 4, 5); break;
      case 1: SPARSEFLOW_TILE_LOAD(6, b, stride); SPARSEFLOW_TILE_OP(tdpbsud, 1, 4, 6); break;
      case 2: SPARSEFLOW_TILE_LOAD(5, b, stride); SPARSEFLOW_TILE_OP(tdpbsud, 2, 4, 5); break;
      default: SPARSEFLOW_TILE_LOAD(6, b, stride); SPARSEFLOW_TILE_OP(tdpbsud, 3, 4, 6); break;
    }
  }
  void dot_bf16(int q, const void* b, int64_t stride) {
    switch (q) {
      case 0: SPARSEFLOW_TILE_LOAD(5, b, stride); SPARSEFLOW_TILE_OP(tdpbf16ps, 0, 4, 5); break;
      case 1: SPARSEFLOW_TILE_LOAD(6, b, stride); SPARSEFLOW_TILE_OP(tdpbf16ps, 1, 4, 6); break;
      case 2: SPARSEFLOW_TILE_LOAD(5, b, stride); SPARSEFLOW_TILE_OP(tdpbf16ps, 2, 4, 5); break;
      default: SPARSEFLOW_TILE_LOAD(6, b, stride); SPARSEFLOW_TILE_OP(tdpbf16ps, 3, 4, 6); break;
    }
  }
  void store_acc(int q, void* p, int64_t stride) {
    switch (q) {
      case 0: SPARSEFLOW_TILE_STORE(0, p, stride); break;
      case 1: SPARSEFLOW_TILE_STORE(1, p, stride); break;
      case 2: SPARSEFLOW_TILE_STORE(2, p, stride); break;
      default: SPARSEFLOW_TILE_STORE(3, p, stride); break;
    }
  }
};

#undef SPARSEFLOW_TILE_LOAD
#undef SPARSEFLOW_TILE_STORE
#undef SPARSEFLOW_TILE_OP

}  // namespace

uint32_t linear_int8_amx(const Int8Args& a, int64_t br_begin, int64_t br_end, int64_t p_begin, int64_t p_end) {
  return linear_int8_tiles<HardwareTiles>(a, br_begin, br_end, p_begin, p_end);
}

uint32_t linear_bf16_amx(const FloatArgs& a, const uint16_t* panels, int64_t br_begin, int64_t br_end,
                         int64_t p_begin, int64_t p_end) {
  return linear_bf16_tiles<HardwareTiles>(a, panels, br_begin, br_end, p_begin, p_end);
}

}  // namespace sparseflow::bsr
