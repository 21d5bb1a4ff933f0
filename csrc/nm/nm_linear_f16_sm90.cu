// sm90a 2:4 linear for f16 inputs (fp32 accumulation; f16 or fp32 output). See nm_linear_sm90.cuh.
#include "nm_linear_sm90.cuh"

namespace sparseflow::nm::cutlass2x {

const char* linear_sm90_f16(const LinearParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return p.out_dtype == DType::kFloat32 ? sm90::run_linear<cutlass::half_t, float>(p, s)
                                        : sm90::run_linear<cutlass::half_t, cutlass::half_t>(p, s);
}

}  // namespace sparseflow::nm::cutlass2x
