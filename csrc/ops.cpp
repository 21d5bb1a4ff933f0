// The one place where sparseflow's operator schemas live. Kernels register per dispatch key in their
// family folders (csrc/<family>/*_cpu.cpp, *_cuda.cpp); fakes (meta kernels) and autograd are in
// python/sparseflow/_meta.py, which the dispatcher imports on demand through set_python_module.
#include <torch/library.h>

TORCH_LIBRARY(sparseflow, m) {
  m.set_python_module("sparseflow._meta");

  // ---- N:M family (csrc/nm) ----
  // Dense [rows, cols] with <= n non-zeros per group of m columns -> (values, uint8 in-group positions);
  // prune=True keeps the n largest magnitudes of each group instead (any dense; see csrc/nm/nm_prune.h).
  m.def("nm_compress(Tensor dense, int n, int m, bool prune=False) -> (Tensor values, Tensor indices)");
  // Inverse of nm_compress: scatter values to their positions; validates every position.
  m.def("nm_decompress(Tensor values, Tensor indices, int n, int m) -> Tensor");

  // ---- block-sparse family (csrc/bsr) ----
  // Canonical BSR (crow, col, values [nnz, R, C]) -> this device's kernel layout (see csrc/bsr/bsr.h).
  m.def("bsr_pack(Tensor crow, Tensor col, Tensor values, int out_features, int in_features, "
        "str kernel=\"auto\") -> (Tensor meta, Tensor rowptr, Tensor indices, Tensor packed_values, "
        "Tensor compensation)");
  // y = act(x @ W^T + bias) with W packed by bsr_pack; int8 W: x quantized per token inside, dequantized out.
  m.def("bsr_linear(Tensor x, Tensor meta, Tensor rowptr, Tensor indices, Tensor packed_values, "
        "Tensor compensation, int out_features, int in_features, Tensor? bias=None, Tensor? weight_scale=None, "
        "str activation=\"none\", ScalarType? out_dtype=None) -> Tensor");
  // Canonical (values, indices) -> this device's kernel layout, once per weight (CPU: values + column bitmask).
  m.def("nm_pack(Tensor values, Tensor indices, int n, int m) -> (Tensor packed_values, Tensor packed_meta)");
  // y = act(x @ W^T + bias) for a packed N:M weight; int8 weights quantize x per token and dequantize into y.
  m.def("nm_linear(Tensor x, Tensor packed_values, Tensor packed_meta, int n, int m, int out_features, "
        "int in_features, Tensor? bias=None, Tensor? weight_scale=None, str activation=\"none\", "
        "ScalarType? out_dtype=None) -> Tensor");
  // Canonical 2:4 -> CUTLASS's sparse-GEMM operands for `target` (80: 2.x SparseGemm; 90: 3.x sm90a), any device.
  m.def("nm_pack_cutlass(Tensor values, Tensor indices, int n, int m, int target=80) -> "
        "(Tensor packed_values, Tensor packed_meta)");
}
