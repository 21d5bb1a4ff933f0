// CPU kernels of nm_compress / nm_decompress.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "nm_pack_common.h"
#include "nm_prune.h"
#include "sparseflow/cpu_features.h"

namespace sparseflow::nm {
namespace {

// Rows per task: about 16k elements.
int64_t row_grain(const PackParams& p) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(p.cols, 1)); }

// Runs `pass` over row ranges in parallel and returns the lowest invalid group, or kAllGroupsValid.
template <typename Pass>
int64_t parallel_rows(const PackParams& p, Pass pass) {
  std::atomic<int64_t> first_bad{INT64_MAX};
  at::parallel_for(0, p.rows, row_grain(p), [&](int64_t begin, int64_t end) {
    const int64_t bad = pass(p, begin, end);
    if (bad == kAllGroupsValid) return;
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  const int64_t bad = first_bad.load();
  return bad == INT64_MAX ? kAllGroupsValid : bad;
}

std::tuple<at::Tensor, at::Tensor> nm_compress_cpu(const at::Tensor& dense_in, int64_t n, int64_t m, bool prune) {
  PackParams p = compress_params(dense_in, n, m);
  const at::Tensor dense = dense_in.contiguous();
  at::Tensor values = at::empty({p.rows, p.cols / p.m * p.n}, dense.options());
  at::Tensor indices = at::empty({p.rows, p.cols / p.m * p.n}, dense.options().dtype(at::kByte));
  p.dense = dense.data_ptr();
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  if (prune) {  // every input is valid: nothing to check or report
    const PruneDtype dtype = prune_dtype(dense.scalar_type());
    const bool simd = (p.m == 4 || p.m == 8) && selected_cpu_isa() >= CpuIsa::kAvx512;
    const auto pass = simd ? prune_compress_avx512 : prune_compress_cpu;
    at::parallel_for(0, p.rows, row_grain(p), [&](int64_t begin, int64_t end) { pass(p, dtype, begin, end); });
    return {values, indices};
  }
  const int64_t bad = parallel_rows(p, compress_cpu);
  if (bad != kAllGroupsValid) {
    const int64_t groups = p.cols / p.m;
    fail_compress(p, bad, dense[bad / groups].narrow(0, (bad % groups) * p.m, p.m));
  }
  return {values, indices};
}

at::Tensor nm_decompress_cpu(const at::Tensor& values_in, const at::Tensor& indices_in, int64_t n,
                             int64_t m) {
  PackParams p = decompress_params(values_in, indices_in, n, m);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  at::Tensor dense = at::empty({p.rows, p.cols}, values.options());
  p.dense = dense.data_ptr();
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  const int64_t bad = parallel_rows(p, decompress_cpu);
  if (bad != kAllGroupsValid) {
    const int64_t groups = p.cols / p.m;
    fail_decompress(p, bad, indices[bad / groups].narrow(0, (bad % groups) * p.n, p.n));
  }
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseflow, CPU, m) {
  m.impl("nm_compress", &nm_compress_cpu);
  m.impl("nm_decompress", &nm_decompress_cpu);
}

}  // namespace sparseflow::nm
