// The one place where sparseflow's operator schemas live. Kernels register per dispatch key in their
// family folders (csrc/<family>/*_cpu.cpp, *_cuda.cpp); fakes (meta kernels) and autograd are in
// python/sparseflow/_meta.py, which the dispatcher imports on demand through set_python_module.
#include <torch/library.h>

TORCH_LIBRARY(sparseflow, m) {
  m.set_python_module("sparseflow._meta");

  // ---- N:M family (csrc/nm) ----
  // Dense [rows, cols] with <= n non-zeros per group of m columns -> (values, uint8 in-group positions).
  m.def("nm_compress(Tensor dense, int n, int m) -> (Tensor values, Tensor indices)");
  // Inverse of nm_compress: scatter values to their positions; validates every position.
  m.def("nm_decompress(Tensor values, Tensor indices, int n, int m) -> Tensor");
  // Canonical N:M -> this device's kernel layout (on CUDA: the CUTLASS 2:4 layout of nm_pack_cutlass).
  m.def("nm_pack(Tensor values, Tensor indices, int n, int m) -> (Tensor packed_values, Tensor packed_meta)");
  // y = act((x @ W^T) * weight_scale + bias) with W packed by nm_pack on x's device.
  m.def("nm_linear(Tensor x, Tensor packed_values, Tensor packed_meta, int n, int m, int out_features, "
        "int in_features, Tensor? bias=None, Tensor? weight_scale=None, str activation=\"none\", "
        "ScalarType? out_dtype=None) -> Tensor");
  // Canonical 2:4 -> the CUTLASS sparse-GEMM layout for `target` (80: CUTLASS 2.x SparseGemm), on any device.
  m.def("nm_pack_cutlass(Tensor values, Tensor indices, int n, int m, int target=80) -> "
        "(Tensor packed_values, Tensor packed_meta)");
}
