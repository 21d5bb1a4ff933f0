// sm80 2:4 linear for bf16 inputs (fp32 accumulation; bf16 or fp32 output). See nm_linear_sm80.cuh.
#include "nm_linear_sm80.cuh"

namespace sparseflow::nm::cutlass2x {

const char* linear_sm80_bf16(const LinearParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return p.out_dtype == DType::kFloat32 ? run_linear<cutlass::bfloat16_t, float>(p, s)
                                        : run_linear<cutlass::bfloat16_t, cutlass::bfloat16_t>(p, s);
}

}  // namespace sparseflow::nm::cutlass2x
