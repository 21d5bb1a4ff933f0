// Activation layout of nm_linear's int8 VNNI kernels (torch-free; kept out of nm.h, which the CUDA files
// include).
#pragma once

#include <cstdint>

namespace sparseflow::nm {

// The 4:8 VNNI kernel loads a full 64-column chunk of weights with one 32-byte broadcast, which
// leaves its 16-byte lanes in the order 0, 2, 1, 3 (nm_linear_avx512_vnni.cpp); this puts the full
// 64-column chunks of the quantized activation rows [begin, end) of xq (row stride `stride`, `cols`
// columns) in the same order, in place. A no-op for the other patterns. Call once per call, after
// quantization and before linear_avx512_vnni (not for the lane layout of 2:4, which reads columns in order).
void vnni_order_activations(int n, int m, int8_t* xq, int64_t stride, int64_t cols, int64_t begin, int64_t end);

}  // namespace sparseflow::nm
