// Prints where CUTLASS itself puts 2:4 metadata, for tests/test_cuda_linear.py to compare with sparseflow's
// closed forms (csrc/nm/nm_cutlass.h, sparseflow.testing.reference). Host code only: no GPU needed.
//   meta_layouts 80 M K   -> for every metadata word (row, word) of an [M, K] fp16 weight: "row word offset",
//                            offset = its int16 index after cutlass::reorder_meta (tools/util host_reorder.h)
//                            into ColumnMajorInterleaved<2>, the layout CUTLASS 2.x SparseGemm reads
//   meta_layouts 90 M K   -> for every group (row, col): "row col offset", offset = the logical metadata offset
//                            of Sm90GemmSparseConfig::fill_layoutE (fp16, K tile 128), the sm90a layout
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/builders/sm90_sparse_config.inl"
#include "cutlass/layout/matrix.h"
#include "cutlass/util/host_reorder.h"

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const int target = atoi(argv[1]), M = atoi(argv[2]), K = atoi(argv[3]);
  if (target == 80) {
    const int words = K / 16;
    std::vector<uint16_t> src(M * words), dst(M * words);
    for (int i = 0; i < M * words; ++i) src[i] = uint16_t(i);
    cutlass::TensorRef<uint16_t, cutlass::layout::RowMajor> src_ref(src.data(), cutlass::layout::RowMajor(words));
    cutlass::TensorRef<uint16_t, cutlass::layout::ColumnMajorInterleaved<2>> dst_ref(
        dst.data(), cutlass::layout::ColumnMajorInterleaved<2>::packed({M, words}));
    cutlass::reorder_meta(dst_ref, src_ref, {M, 0, words});
    for (int offset = 0; offset < M * words; ++offset) printf("%d %d %d\n", dst[offset] / words, dst[offset] % words, offset);
  } else {
    using Config = cutlass::Sm90GemmSparseConfig<cute::sparse_elem<2, cutlass::half_t>, cute::GMMA::Major::K,
                                                 cute::sparse_elem<8, uint8_t>, cute::Int<128>>;
    const auto layout = Config::fill_layoutE(cute::make_tuple(M, 8, K, 1));
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < K; k += 4) printf("%d %d %ld\n", m, k, long(layout(m, k, 0)));
  }
  return 0;
}
