// CPU kernel of nm_pack_cutlass: canonical 2:4 -> the CUTLASS layout a GPU kernel consumes, on the host
// (pack once, save, load on the GPU; and the layout is tested on machines without a GPU).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "nm_cutlass_common.h"

namespace sparseflow::nm {
namespace {

std::tuple<at::Tensor, at::Tensor> nm_pack_cutlass_cpu(const at::Tensor& values_in, const at::Tensor& indices_in,
                                                       int64_t n, int64_t m, int64_t target) {
  constexpr const char* op = "sparseflow.nm_pack_cutlass";
  check_cutlass_pack_args(op, values_in, indices_in, n, m, target);
  cutlass2x::PackParams p = cutlass_pack_params(target, values_in.size(0), values_in.size(1) * 2);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  auto [packed_values, packed_meta] = empty_cutlass_packed(target, p, values);
  p.values = reinterpret_cast<const uint16_t*>(values.data_ptr());
  p.indices = indices.data_ptr<uint8_t>();
  p.packed_values = reinterpret_cast<uint16_t*>(packed_values.data_ptr());
  p.packed_meta = packed_meta.data_ptr();
  std::atomic<int64_t> first_bad{INT64_MAX};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.cols_p, 1));
  at::parallel_for(0, p.rows_p, grain, [&](int64_t begin, int64_t end) {
    const int64_t bad = target == kTargetSm90 ? cutlass2x::sm90::pack_cpu(p, begin, end)
                                              : cutlass2x::pack_cpu(p, begin, end);
    if (bad < 0) return;
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  const int64_t bad = first_bad.load();
  if (bad != INT64_MAX) {
    const int64_t groups = p.cols / 4;
    fail_cutlass_pack(op, p, bad, indices[bad / groups].narrow(0, (bad % groups) * 2, 2));
  }
  return {packed_values, packed_meta};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseflow, CPU, m) {
  m.impl("nm_pack_cutlass", &nm_pack_cutlass_cpu);
}

}  // namespace sparseflow::nm
