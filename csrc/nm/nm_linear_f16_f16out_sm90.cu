// sm90a 2:4 linear, f16 in, f16 out (fp32 accumulation). See nm_linear_sm90.cuh. One input/output pair per
// file: a CUTLASS 3.x instantiation set takes several GB of compiler memory.
#include "nm_linear_sm90.cuh"

namespace sparseflow::nm::cutlass2x {

const char* linear_sm90_f16_f16out(const LinearParams& p, void* stream) {
  return sm90::run_linear<cutlass::half_t, cutlass::half_t>(p, static_cast<cudaStream_t>(stream));
}

}  // namespace sparseflow::nm::cutlass2x
