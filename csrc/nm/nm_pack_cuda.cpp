// CUDA wrappers of nm_compress / nm_decompress. Packing validates the pattern, so it reads one int64
// back from the device (a sync): it runs once when a weight is packed, never in a forward pass.
// nm_compress(prune=True) has nothing to validate and stays asynchronous.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nm_pack_common.h"

namespace sparseflow::nm {
namespace {

int64_t read_first_bad(const at::Tensor& first_bad) {
  const int64_t bad = first_bad.item<int64_t>();
  return bad == INT64_MAX ? kAllGroupsValid : bad;
}

std::tuple<at::Tensor, at::Tensor> nm_compress_cuda(const at::Tensor& dense_in, int64_t n, int64_t m, bool prune) {
  PackParams p = compress_params(dense_in, n, m);
  const c10::cuda::CUDAGuard guard(dense_in.device());
  const at::Tensor dense = dense_in.contiguous();
  at::Tensor values = at::empty({p.rows, p.cols / p.m * p.n}, dense.options());
  at::Tensor indices = at::empty({p.rows, p.cols / p.m * p.n}, dense.options().dtype(at::kByte));
  p.dense = dense.data_ptr();
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  if (prune) {  // every input is valid: no flag to read back, so no sync
    prune_compress_cuda(p, prune_dtype(dense.scalar_type()), c10::cuda::getCurrentCUDAStream().stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {values, indices};
  }
  at::Tensor first_bad = at::full({1}, INT64_MAX, dense.options().dtype(at::kLong));
  compress_cuda(p, first_bad.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = read_first_bad(first_bad);
  if (bad != kAllGroupsValid) {
    const int64_t groups = p.cols / p.m;
    fail_compress(p, bad, dense[bad / groups].narrow(0, (bad % groups) * p.m, p.m).cpu());
  }
  return {values, indices};
}

at::Tensor nm_decompress_cuda(const at::Tensor& values_in, const at::Tensor& indices_in, int64_t n,
                              int64_t m) {
  PackParams p = decompress_params(values_in, indices_in, n, m);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  at::Tensor dense = at::empty({p.rows, p.cols}, values.options());
  at::Tensor first_bad = at::full({1}, INT64_MAX, values.options().dtype(at::kLong));
  p.dense = dense.data_ptr();
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  decompress_cuda(p, first_bad.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = read_first_bad(first_bad);
  if (bad != kAllGroupsValid) {
    const int64_t groups = p.cols / p.m;
    fail_decompress(p, bad, indices[bad / groups].narrow(0, (bad % groups) * p.n, p.n).cpu());
  }
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseflow, CUDA, m) {
  m.impl("nm_compress", &nm_compress_cuda);
  m.impl("nm_decompress", &nm_decompress_cuda);
}

}  // namespace sparseflow::nm
