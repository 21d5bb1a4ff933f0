"""``cpu-linear``: block-sparse linear layers on CPU (``bsr_linear``, and packing them with ``bsr_pack``).

Weights are random patterns of the kernels' native blocks: int8 4x1 (the paper's VNNI kernel) and 16x1
(16x4 tiles), fp32 and bf16 4x1 (4x4 tiles), fp32 and bf16 16x1 and 1x16 (AVX-512, AVX512_BF16). Baselines,
measured in the same run:
- dense at the same dtype: fp32 ``F.linear`` (MKL), bf16 ``F.linear`` (oneDNN), int8 ``torch._int_mm`` on
  pre-quantized int8 operands (it neither quantizes x nor dequantizes, which ``bsr_linear`` does);
- torch CSR (``torch.sparse.mm``) for fp32; torch has no bf16/int8 CSR kernel on CPU and its CPU BSR rejects
  non-square blocks such as 16x1 or 4x1 (both listed as skipped).
``bsr_pack`` rows compare the one-time pack with ``Tensor.to_sparse_csr`` of the dense weight.

Caches: at small M the packed weights of the 4096x4096 cases fit in the last-level cache while the dense
ones do not; ``--cold-cache`` evicts both before every call.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import ops
from ..testing import reference as ref
from ..testing.op_db import assert_bitwise_equal, random_bsr
from .registry import Case, Prepared, SuiteContext, suite

# (dtype, canonical block = the kernel's native block)
KERNELS = (("int8", (4, 1)), ("int8", (16, 1)), ("bf16", (16, 1)), ("bf16", (4, 1)), ("fp32", (4, 1)),
           ("fp32", (16, 1)), ("fp32", (1, 16)))
TORCH_DTYPE = {"int8": torch.int8, "bf16": torch.bfloat16, "fp32": torch.float32}
ELEMENT_BYTES = {"int8": 1, "bf16": 2, "fp32": 4}


@functools.lru_cache(maxsize=1)  # the cases of one weight run one after another
def _weight(dtype: str, block: tuple[int, int], N: int, K: int, sparsity: float):
    crow, col, values = random_bsr(N, K, *block, 1 - sparsity, TORCH_DTYPE[dtype], seed=N + K + int(sparsity * 100))
    packed = ops.bsr_pack(crow, col, values, N, K, _kernel(block))
    dense = ref.bsr_to_dense(crow, col, values, N, K)
    scale = torch.rand(N, generator=torch.Generator().manual_seed(1)) * 0.01 + 1e-3 if dtype == "int8" else None
    return (crow, col, values), packed, dense, scale


def _kernel(block: tuple[int, int]) -> str:
    return f"{block[0]}x{block[1]}"


def _packed_bytes(packed) -> int:
    return sum(t.numel() * t.element_size() for t in packed[1:])


def _linear_setup(dtype: str, block, N: int, K: int, M: int, sparsity: float) -> Prepared:
    _, packed, dense, scale = _weight(dtype, block, N, K, sparsity)
    g = torch.Generator().manual_seed(M)
    x = torch.randn(M, K, generator=g).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    baselines, skipped = {}, {}
    if dtype == "int8":
        xq = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        wt = dense.t()
        baselines["torch._int_mm"] = lambda: torch._int_mm(xq, wt)
        skipped["torch CSR"] = "no int8 CSR matmul on CPU"
    else:
        w = dense.to(x.dtype)
        baselines[f"F.linear {dtype}"] = lambda: F.linear(x, w)
        if dtype == "fp32":
            csr = w.to_sparse_csr()
            xt = x.t().contiguous()
            baselines["torch CSR"] = lambda: torch.sparse.mm(csr, xt)
        else:
            skipped["torch CSR"] = "no bf16 CSR matmul on CPU"
    skipped["torch BSR"] = f"CPU BSR needs square blocks, not {block[0]}x{block[1]}"

    def check():
        if dtype == "int8":  # exact int32 accumulator (float64 holds it exactly), then the dequantized output
            xq8, sx, zp = ref.quantize_per_token_u8(x)
            acc = ((xq8.double() - zp.double()[:, None]) @ dense.double().t()).to(torch.int32)
            assert torch.equal(ops.bsr_linear(x, *packed, N, K, out_dtype=torch.int32), acc), "int32 accumulators differ"
            y64 = acc.double() * (sx.double()[:, None] * scale.double()[None, :])
            lowp = acc.float() * (sx[:, None] * scale[None, :])
        else:
            y64 = x.double() @ dense.double().t()
            lowp = F.linear(x, dense.to(x.dtype))
        y = ops.bsr_linear(x, *packed, N, K, None, scale)
        err, lowp_err = (y.double() - y64).abs().max().item(), (lowp.double() - y64).abs().max().item()
        atol = (1e-6 if y.dtype == torch.float32 else 2e-3) * (y64.abs().max().item() + 1e-3)
        assert err <= 2 * lowp_err + atol, f"max error {err:.3g} > 2 x {lowp_err:.3g} + {atol:.3g}"

    return Prepared(lambda: ops.bsr_linear(x, *packed, N, K, None, scale), baselines, check, skipped,
                    kernel=ops.bsr_linear_cpu_kernel(packed[0], M))


def _pack_setup(dtype: str, block, N: int, K: int, sparsity: float) -> Prepared:
    canonical, _, dense, _ = _weight(dtype, block, N, K, sparsity)
    kernel = _kernel(block)

    def check():
        assert_bitwise_equal(ops.bsr_pack(*canonical, N, K, kernel), ref.bsr_pack(*canonical, N, K, kernel))

    return Prepared(lambda: ops.bsr_pack(*canonical, N, K, kernel), {"to_sparse_csr": dense.to_sparse_csr}, check)


@suite("cpu-linear", ops=("bsr_pack", "bsr_linear"), devices=("cpu",), sparsity_axis=True)
def cpu_linear(ctx: SuiteContext):
    """Block-sparse linear (int8 4x1 / 16x1 VNNI, fp32/bf16 4x1, fp32/bf16 16x1 and 1x16 AVX-512) vs dense
    F.linear / _int_mm / CSR."""
    shapes = ctx.pick(full=[(768, 3072), (3072, 768), (4096, 4096), (11008, 4096), (4096, 11008)], quick=[(4096, 4096)], tiny=[(40, 70)])
    tokens = ctx.pick(full=(1, 8, 32, 128), quick=(1, 32, 128), tiny=(1, 17))
    sparsities = ctx.pick(full=(0.5, 0.7, 0.8, 0.9, 0.95), quick=(0.5, 0.9), tiny=(0.5,))
    for dtype, block in KERNELS:
        tag = f"{dtype} {block[0]}x{block[1]}"
        for N, K in shapes:
            for sparsity in sparsities:
                nnz = round((1 - sparsity) * N * K)
                weight_bytes = nnz * ELEMENT_BYTES[dtype] + nnz // (block[0] * block[1]) * 2
                if sparsity == 0.9 or len(sparsities) == 1:
                    yield Case(f"bsr_pack {tag} {N}x{K} sp={sparsity}", "bsr_pack",
                               {"N": N, "K": K, "block": f"{block[0]}x{block[1]}"}, TORCH_DTYPE[dtype],
                               setup=functools.partial(_pack_setup, dtype, block, N, K, sparsity), sparsity=sparsity,
                               bytes=nnz * ELEMENT_BYTES[dtype] + weight_bytes, family=f"bsr_pack {tag} {N}x{K}")
                for M in tokens:
                    x_bytes = M * K * (2 if dtype == "bf16" else 4)
                    y_bytes = M * N * (2 if dtype == "bf16" else 4)
                    yield Case(f"bsr_linear {tag} {N}x{K} M={M} sp={sparsity}", "bsr_linear",
                               {"M": M, "N": N, "K": K, "block": f"{block[0]}x{block[1]}"}, TORCH_DTYPE[dtype],
                               setup=functools.partial(_linear_setup, dtype, block, N, K, M, sparsity),
                               sparsity=sparsity, flops=2 * M * N * K, bytes=weight_bytes + x_bytes + y_bytes,
                               family=f"bsr_linear {tag} {N}x{K} M={M}")
