// Host packing into the CUTLASS 2:4 layouts (nm_cutlass.h): the same per-word/per-byte functions as the
// CUDA kernels, so weights can be packed for a GPU on a machine without one, and the layouts are tested on CPU.
#include "nm_cutlass.h"

namespace sparseflow::nm::cutlass2x {

int64_t pack_cpu(const PackParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t words = p.cols_p / kColsPerWord;
  int64_t first_bad = -1;
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t word = 0; word < words; ++word) {
      const int64_t bad = pack_word(p, row, word);
      if (bad >= 0 && first_bad < 0) first_bad = bad;  // rows and words ascend: the first is the lowest
    }
  }
  return first_bad;
}

int64_t sm90::pack_cpu(const PackParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t bytes = p.cols_p / kColsPerByte;
  int64_t first_bad = -1;
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t byte = 0; byte < bytes; ++byte) {
      const int64_t bad = pack_byte(p, row, byte);
      if (bad >= 0 && first_bad < 0) first_bad = bad;
    }
  }
  return first_bad;
}

}  // namespace sparseflow::nm::cutlass2x
